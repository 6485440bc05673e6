"""The declaration routes of the HTTP API on SQLite and PostgreSQL: the three formats of the prefill, grants,
lodging in JSON and XML, the overdue list, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
from lxml import etree
from starlette.testclient import TestClient

from gateway import declarations
from gateway.app import create_app
from mappings import declaration_xml
from mappings.edifact import structure, syntax
from tests.border_support import border
from tests.declaration_support import complete, cross


@pytest.fixture
def b(gw, party):
    return border(gw, party)


@pytest.fixture
def client(gw):
    return TestClient(create_app(gw))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_prefill_in_json_xml_and_edifact_says_the_same(b, client):
    ccrn = b.lodge()
    cross(b, [ccrn])
    url = f"/api/v1/consignments/{ccrn}/declaration"
    as_json = client.get(url, params={"kind": "import"}, headers=auth(b.filer_key))
    assert as_json.status_code == 200 and as_json.headers["content-type"].startswith("application/json")
    doc = as_json.json()
    as_xml = client.get(url, params={"kind": "import", "format": "xml"}, headers=auth(b.filer_key))
    assert as_xml.status_code == 200 and as_xml.headers["content-type"].startswith("application/xml")
    root = etree.fromstring(as_xml.content)
    read = declaration_xml.from_element(root)
    assert {k: v for k, v in read.items() if k != "prepared_at"} == {
        k: v for k, v in doc.items() if k != "prepared_at"
    }
    assert root.find(f".//{{{declaration_xml.NS}}}Id").get("missing") == "true"
    as_edi = client.get(url, params={"format": "edifact"}, headers=auth(b.filer_key))
    assert as_edi.status_code == 200
    assert structure.validate_interchange(as_edi.content) == []
    segments = [p.segment for p in syntax.tokenize(as_edi.content)]
    bgm = next(s for s in segments if s.tag == "BGM")
    assert bgm.elements[0] == "929" and bgm.elements[1] == ccrn
    notes = [s for s in segments if s.tag == "FTX" and s.elements[0] == "ACB"]
    assert len(notes) == len(doc["missing_fields"])
    bad = client.get(url, params={"format": "pdf"}, headers=auth(b.filer_key))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "format"
    assert client.get(url, params={"kind": "export"}, headers=auth(b.filer_key)).status_code == 422
    wrong = client.get("/api/v1/consignments/123456789010/declaration", headers=auth(b.filer_key))
    assert wrong.json()["errors"][0]["code"] == "CCRN_CHECK_DIGIT"


def test_other_filer_404_granted_agent_200_and_lodging_in_json_and_xml(b, client, party):
    ccrn = b.lodge()
    cross(b, [ccrn])
    _other, other_key = party.add(name="Other Forwarder")
    agent, agent_key = party.add(role="service_provider", name="Declaration Agent")
    url = f"/api/v1/consignments/{ccrn}/declaration"
    for key in (other_key, agent_key):
        answer = client.get(url, headers=auth(key))
        assert answer.status_code == 404 and answer.json()["errors"][0]["code"] == "NOT_FOUND"
    grants = f"/api/v1/consignments/{ccrn}/grants"
    assert client.post(grants, json={"party": agent.party_id}, headers=auth(other_key)).status_code == 404
    assert client.post(grants, json={"party": agent.party_id}, headers=auth(b.filer_key)).status_code == 201
    assert client.post(grants, json={"party": agent.party_id}, headers=auth(b.filer_key)).status_code == 200
    assert client.post(grants, json={"agent": "x"}, headers=auth(b.filer_key)).status_code == 422
    prefilled = client.get(url, headers=auth(agent_key)).json()
    assert prefilled["declarant"]["party_id"] == agent.party_id
    # The agent lodges half in XML; the filer lodges the rest as its own declarant, in JSON.
    half = complete(prefilled, packages=[20], mass=[240])
    answer = client.post(
        "/api/v1/declarations",
        content=declaration_xml.to_xml(half),
        headers={**auth(agent_key), "Content-Type": "application/xml"},
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["ledger"][0]["packages_declared"] == 20
    mine = complete(client.get(url, headers=auth(b.filer_key)).json(), packages=[20], mass=[240.5])
    answer = client.post("/api/v1/declarations", json=mine, headers=auth(b.filer_key))
    assert answer.status_code == 201 and answer.json()["status"] == "DECLARED"
    again = client.post("/api/v1/declarations", json=mine, headers=auth(b.filer_key))
    assert again.status_code == 409 and again.json()["errors"][0]["code"] == "OVER_DECLARATION"
    listed = client.get(f"/api/v1/consignments/{ccrn}/declarations", headers=auth(agent_key)).json()
    by = {d["declarant"]: d["declaration_number"] for d in listed["declarations"]}
    assert sorted(by) == sorted([agent.party_id, b.filer.party_id])
    number = by[agent.party_id]
    assert client.get(f"/api/v1/declarations/{number}", headers=auth(agent_key)).status_code == 200
    assert client.get(f"/api/v1/declarations/{number}", headers=auth(other_key)).status_code == 404


def test_bad_declarations_get_clear_errors_never_a_500(b, client):
    ccrn = b.lodge()
    cross(b, [ccrn])
    headers = auth(b.filer_key)
    prefilled = client.get(f"/api/v1/consignments/{ccrn}/declaration", headers=headers).json()
    post = "/api/v1/declarations"
    answer = client.post(post, json=prefilled, headers=headers)
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["errors"]] == [m["field"] for m in prefilled["missing_fields"]]
    assert (
        client.post(post, content=b"{", headers={**headers, "Content-Type": "application/json"}).json()[
            "errors"
        ][0]["code"]
        == "MALFORMED"
    )
    assert client.post(post, json=[1], headers=headers).status_code == 422
    xml_headers = {**headers, "Content-Type": "application/xml"}
    evil = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "y">]>'
        b'<Declaration xmlns="urn:roadcargo:declaration:1"/>'
    )
    assert client.post(post, content=evil, headers=xml_headers).json()["errors"][0]["code"] == "XML_FORBIDDEN"
    other = b'<CargoInformation xmlns="urn:roadcargo:eci:1"/>'
    assert (
        client.post(post, content=other, headers=xml_headers).json()["errors"][0]["code"] == "SCHEMA_INVALID"
    )
    document = declaration_xml.to_xml(complete(prefilled)).replace(b"<Mode>ROAD</Mode>", b"<Mode>SEA</Mode>")
    answer = client.post(post, content=document, headers=xml_headers)
    assert answer.status_code == 422 and answer.json()["errors"][0]["code"] == "SCHEMA_INVALID"
    assert "line" in answer.json()["errors"][0]["message"]
    assert client.post(post, content=b"<a", headers=xml_headers).json()["errors"][0]["code"] == "MALFORMED"
    assert client.post(post, json=complete(prefilled), headers=auth(b.driver_key)).status_code == 403
    assert client.get("/api/v1/declarations/overdue", headers=auth(b.kiosk_key)).status_code == 403
    assert client.get("/api/v1/declarations/TD0000", headers=headers).status_code == 404


def test_overdue_over_http_for_officers_and_filers(b, client, clock, party):
    from datetime import timedelta

    ccrn = b.lodge()
    cross(b, [ccrn])
    clock.advance(timedelta(days=14))
    officer = client.get("/api/v1/declarations/overdue", headers=auth(b.officer_key)).json()
    assert [e["ccrn"] for e in officer["overdue"]] == [ccrn] and officer["deadline_days"] == 14
    filer = client.get("/api/v1/declarations/overdue", headers=auth(b.filer_key)).json()
    assert [e["ccrn"] for e in filer["overdue"]] == [ccrn]
    _, stranger_key = party.add(name="Stranger")
    stranger = client.get("/api/v1/declarations/overdue", headers=auth(stranger_key)).json()
    assert stranger["overdue"] == [] and json.dumps(stranger).count(ccrn) == 0


def test_the_portal_offers_the_prefilled_declaration_to_its_filer_and_agents_only(b, gw, party):
    from tests.integration.test_portal import Browser

    ccrn = b.lodge()
    cross(b, [ccrn])
    browser = Browser(gw)
    assert browser.login(b.filer.party_id, b.filer_key).status_code == 303
    page = browser.get(f"/consignments/{ccrn}")
    assert f'href="/consignments/{ccrn}/declaration"' in page.text
    declaration = browser.get(f"/consignments/{ccrn}/declaration")
    assert declaration.status_code == 200
    assert "importer.id" in declaration.text and "business registration number" in declaration.text
    for form in ("json", "xml", "edifact"):
        assert f"/consignments/{ccrn}/declaration/download?format={form}" in declaration.text
    download = browser.get(f"/consignments/{ccrn}/declaration/download?format=edifact")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert structure.validate_interchange(download.content) == []
    as_json = browser.get(f"/consignments/{ccrn}/declaration/download?format=json").json()
    assert as_json["ccrn"] == ccrn and as_json["declarant"]["party_id"] == b.filer.party_id
    zh = browser.get(f"/consignments/{ccrn}/declaration", headers={"Accept-Language": "zh-HK"})
    assert "預填報關單" in zh.text or "尚待補充" in zh.text
    # Not yet crossed: no declaration link; another filer: not found.
    waiting = b.lodge()
    assert "/declaration" not in browser.get(f"/consignments/{waiting}").text.split("<main", 1)[-1]
    stranger, stranger_key = party.add(name="Stranger")
    other = Browser(gw)
    other.login(stranger.party_id, stranger_key)
    assert other.get(f"/consignments/{ccrn}/declaration").status_code == 404
    assert other.get(f"/consignments/{ccrn}/declaration/download?format=xml").status_code == 404
    declarations.grant(gw, b.filer, ccrn, stranger.party_id)
    assert other.get(f"/consignments/{ccrn}/declaration").status_code == 200
