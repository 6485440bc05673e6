"""POST /api/v1/xml on SQLite and PostgreSQL: good, partly good and hostile documents."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import func, select, text
from starlette.testclient import TestClient

from adapters.xml_channel import ingest_xml, parse_xml, schema
from gateway import consignments, tables
from gateway.app import create_app
from gateway.context import Gateway
from gateway.errors import GatewayError
from gateway.identifiers import damm_digit
from mappings import xml_eci
from mappings.xml_eci import consignment_to_xml, q
from tests.factories import Parties, record, wait_for_a_lock_wait

ECI = "urn:roadcargo:eci:1"


@pytest.fixture
def client(gw: Gateway) -> TestClient:
    return TestClient(create_app(gw))


@pytest.fixture
def filer(party: Parties) -> tuple[Any, dict[str, str]]:
    actor, key = party.add(role="forwarder", name="ACME Freight")
    return actor, {"Authorization": f"Bearer {key}", "Content-Type": "application/xml"}


def document(*consignment_elements: etree._Element) -> bytes:
    return xml_eci.to_bytes(xml_eci.cargo_information(consignment_elements), pretty=True)


def lodge(reference: str, **overrides: Any) -> etree._Element:
    return consignment_to_xml("lodge", record(submitter_reference=reference, **overrides))


def acknowledged(response: Any) -> tuple[etree._Element, list[dict[str, Any]]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    root = parse_xml(response.content, 10**8)
    assert schema().validate(root), schema().error_log
    return root, xml_eci.read_acknowledgement(root)


def stored(gw: Gateway) -> int:
    with gw.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(tables.consignments)) or 0)


def line_of(body: bytes, needle: bytes) -> int:
    return body[: body.index(needle)].count(b"\n") + 1


def test_a_good_document_lodges_every_consignment_and_keeps_the_raw_document(gw, client, filer):
    actor, headers = filer
    body = document(lodge("CMR-1"), lodge("CMR-2", direction="EXPORT", control_point="HZM"))
    root, entries = acknowledged(client.post("/api/v1/xml", content=body, headers=headers))
    assert (root.get("accepted"), root.get("rejected")) == ("2", "0")
    assert [(e["index"], e["result"], e["SubmitterReference"]) for e in entries] == [
        ("1", "accepted", "CMR-1"),
        ("2", "accepted", "CMR-2"),
    ]
    for entry in entries:
        assert len(entry["Ccrn"]) == 12 and damm_digit(entry["Ccrn"]) == 0
        assert (entry["Version"], entry["Status"], entry["StatusVersion"]) == ("1", "LODGED", "1")
        view = consignments.get(gw, actor, entry["Ccrn"])
        assert view["submitter_reference"] == entry["SubmitterReference"]
    assert view["record"]["direction"] == "EXPORT" and view["record"]["control_point"] == "HZM"
    with gw.engine.connect() as conn:
        raw = conn.execute(select(tables.raw_messages)).one()
    assert raw.sha256 == hashlib.sha256(body).hexdigest() and raw.channel == "xml"


def test_amend_and_cancel_by_the_action_attribute(gw, client, filer):
    actor, headers = filer
    _root, (first,) = acknowledged(
        client.post("/api/v1/xml", content=document(lodge("CMR-1")), headers=headers)
    )
    ccrn = first["Ccrn"]
    changed = record(submitter_reference="CMR-1", control_point="MKT")
    body = document(consignment_to_xml("amend", changed, ccrn=ccrn))
    _root, (amended,) = acknowledged(client.post("/api/v1/xml", content=body, headers=headers))
    assert (amended["result"], amended["Ccrn"], amended["Version"], amended["StatusVersion"]) == (
        "accepted",
        ccrn,
        "2",
        "2",
    )
    # The same amendment again changes nothing.
    _root, (again,) = acknowledged(client.post("/api/v1/xml", content=body, headers=headers))
    assert (again["result"], again["Version"]) == ("unchanged", "2")
    cancel = document(consignment_to_xml("cancel", ccrn=ccrn))
    _root, (cancelled,) = acknowledged(client.post("/api/v1/xml", content=cancel, headers=headers))
    assert (cancelled["result"], cancelled["Status"], cancelled["SubmitterReference"]) == (
        "accepted",
        "CANCELLED",
        "CMR-1",
    )
    assert consignments.get(gw, actor, ccrn)["status"] == "CANCELLED"


def test_a_partly_good_document_reports_each_bad_consignment_and_keeps_the_good_ones(gw, client, filer):
    bad_value = record(submitter_reference="CMR-3")
    bad_value["items"][0]["value"]["currency"] = "ZZZ"
    body = document(
        lodge("CMR-1"),
        lodge("CMR-2"),
        consignment_to_xml("lodge", bad_value),
        lodge("CMR-4", consignee=None),
        lodge("CMR-5"),
    )
    body = body.replace(b"<PackageCount>40</PackageCount>", b"<PackageCount>forty</PackageCount>", 2)
    body = body.replace(b"<PackageCount>forty</PackageCount>", b"<PackageCount>40</PackageCount>", 1)
    root, entries = acknowledged(client.post("/api/v1/xml", content=body, headers=filer[1]))
    assert [e["result"] for e in entries] == ["accepted", "rejected", "rejected", "rejected", "accepted"]
    assert (root.get("accepted"), root.get("rejected")) == ("2", "3")

    (schema_error,) = entries[1]["errors"]
    assert schema_error["code"] == "INVALID_VALUE"
    assert schema_error["field"] == "items[0].package_count"
    assert schema_error["line"] == str(line_of(body, b"forty"))
    assert schema_error["path"] == "/CargoInformation/Consignment[2]/Record/Item[1]/PackageCount"
    assert "'forty'" in schema_error["message"] and "1 to 99999999" in schema_error["message"]

    (code_error,) = entries[2]["errors"]
    assert (code_error["code"], code_error["field"]) == ("INVALID_CODE", "items[0].value.currency")
    assert code_error["line"] == str(line_of(body, b"ZZZ"))
    assert code_error["path"] == "/CargoInformation/Consignment[3]/Record/Item[1]/Value/Currency"

    (missing,) = entries[3]["errors"]
    assert (missing["code"], missing["field"]) == ("MISSING_FIELD", "consignee")
    assert entries[3]["SubmitterReference"] == "CMR-4"
    assert stored(gw) == 2


def test_errors_outside_any_consignment_are_listed_and_the_consignments_still_processed(gw, client, filer):
    body = document(lodge("CMR-1"), lodge("CMR-2"))
    body = body.replace(b"  <Consignment", b"  <Remark>hello</Remark>\n  <Consignment", 1)
    root, entries = acknowledged(client.post("/api/v1/xml", content=body, headers=filer[1]))
    (error,) = root.find(q("Errors"))
    assert error.get("code") == "SCHEMA_INVALID"
    assert error.get("path") == "/CargoInformation/Remark" and error.get("line") == str(
        line_of(body, b"<Remark")
    )
    assert [e["result"] for e in entries] == ["accepted", "accepted"]
    assert stored(gw) == 2


def test_the_rules_xsd_1_0_cannot_state_are_checked_per_consignment(gw, client, filer):
    body = document(
        consignment_to_xml("lodge", record(submitter_reference="CMR-1"), ccrn="504127796023"),
        consignment_to_xml("amend", record(submitter_reference="CMR-2")),
        consignment_to_xml("cancel"),
        consignment_to_xml("amend", ccrn="504127796023"),
    )
    _root, entries = acknowledged(client.post("/api/v1/xml", content=body, headers=filer[1]))
    assert [(e["errors"][0]["code"], e["errors"][0].get("field")) for e in entries] == [
        ("INVALID_VALUE", "ccrn"),
        ("MISSING_FIELD", "ccrn"),
        ("MISSING_FIELD", "ccrn"),
        ("MISSING_FIELD", None),
    ]
    assert "amend" in entries[0]["errors"][0]["message"]
    assert stored(gw) == 0


def test_a_ccrn_with_a_wrong_check_digit_is_refused_before_any_lookup(gw, client, filer):
    _root, (first,) = acknowledged(
        client.post("/api/v1/xml", content=document(lodge("CMR-1")), headers=filer[1])
    )
    ccrn = first["Ccrn"]
    wrong = ccrn[:-1] + str((int(ccrn[-1]) + 1) % 10)
    body = document(consignment_to_xml("cancel", ccrn=wrong))
    _root, (entry,) = acknowledged(client.post("/api/v1/xml", content=body, headers=filer[1]))
    (error,) = entry["errors"]
    assert (error["code"], error["field"]) == ("CCRN_CHECK_DIGIT", "ccrn")
    assert error["path"] == "/CargoInformation/Consignment[1]/Ccrn"
    assert consignments.get(gw, filer[0], ccrn)["status"] == "LODGED"


def test_another_filers_ccrn_is_not_found_exactly_like_an_unknown_one(gw, client, filer, party):
    _root, (theirs,) = acknowledged(
        client.post("/api/v1/xml", content=document(lodge("CMR-1")), headers=filer[1])
    )
    _other, other_key = party.add(role="forwarder", name="Other Freight")
    headers = {"Authorization": f"Bearer {other_key}", "Content-Type": "application/xml"}
    unknown = "12345678901"
    unknown += str(damm_digit(unknown))
    answers = []
    for ccrn in (theirs["Ccrn"], unknown):
        body = document(
            consignment_to_xml("amend", record(control_point="MKT"), ccrn=ccrn),
            consignment_to_xml("cancel", ccrn=ccrn),
        )
        _root, entries = acknowledged(client.post("/api/v1/xml", content=body, headers=headers))
        answers.append(
            [[(e["code"], e["field"], e["message"].replace(ccrn, "N")) for e in x["errors"]] for x in entries]
        )
    assert answers[0] == answers[1]
    assert answers[0][0][0][0] == "NOT_FOUND"
    view = consignments.get(gw, filer[0], theirs["Ccrn"])
    assert (view["status"], view["version"], view["record"]["control_point"]) == ("LODGED", 1, "LMC")


def test_a_thousand_consignment_document_is_accepted(gw, client, filer):
    body = document(*(lodge(f"CMR-{i:04d}") for i in range(1000)))
    root, entries = acknowledged(client.post("/api/v1/xml", content=body, headers=filer[1]))
    assert (root.get("accepted"), root.get("rejected")) == ("1000", "0")
    assert len({e["Ccrn"] for e in entries}) == 1000
    assert [e["SubmitterReference"] for e in entries] == [f"CMR-{i:04d}" for i in range(1000)]
    assert stored(gw) == 1000


# -- documents that cannot be read -----------------------------------------------------------------

_PROBE_HITS: list[str] = []


@pytest.fixture
def probe_url() -> Iterator[str]:
    """A local HTTP server that records every request: an external entity must never reach it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            _PROBE_HITS.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"leaked")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _PROBE_HITS.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _with_reference(reference: str) -> bytes:
    return document(lodge("REF")).replace(
        b"<SubmitterReference>REF<", f"<SubmitterReference>{reference}<".encode()
    )


def hostile_documents(secret_file: str, url: str) -> dict[str, bytes]:
    def with_dtd(dtd: str, reference: str) -> bytes:
        body = _with_reference(reference)
        return body.replace(b"?>\n", f"?>\n{dtd}\n".encode(), 1)

    laughs = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    return {
        "xxe-local-file": with_dtd(
            f'<!DOCTYPE CargoInformation [<!ENTITY x SYSTEM "file://{secret_file}">]>', "&x;"
        ),
        "xxe-url": with_dtd(f'<!DOCTYPE CargoInformation [<!ENTITY x SYSTEM "{url}/xxe">]>', "&x;"),
        "parameter-entity-url": with_dtd(
            f'<!DOCTYPE CargoInformation [<!ENTITY % p SYSTEM "{url}/dtd"> %p;]>', "R"
        ),
        "billion-laughs": with_dtd(f"<!DOCTYPE CargoInformation [{laughs}]>", "&lol9;"),
        "external-dtd": with_dtd(f'<!DOCTYPE CargoInformation SYSTEM "{url}/eci.dtd">', "R"),
        "deep-nesting": (
            f'<CargoInformation xmlns="{ECI}"><Consignment action="lodge">'.encode()
            + b"<Record>" * 10_000
            + b"</Record>" * 10_000
            + b"</Consignment></CargoInformation>"
        ),
    }


@pytest.mark.parametrize(
    "name",
    ["xxe-local-file", "xxe-url", "parameter-entity-url", "billion-laughs", "external-dtd", "deep-nesting"],
)
def test_hostile_xml_is_refused_and_nothing_is_stored(gw, client, filer, probe_url, tmp_path, name):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    body = hostile_documents(str(secret), probe_url)[name]
    response = client.post("/api/v1/xml", content=body, headers=filer[1])
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["code"] == "XML_FORBIDDEN"
    assert "TOP-SECRET" not in response.text and "leaked" not in response.text
    assert _PROBE_HITS == []
    assert stored(gw) == 0


def test_a_100_mb_document_is_too_large(gw, client, filer):
    body = _with_reference("R").replace(
        b"<Consignment", b"<!--" + b"x" * (100 * 1024 * 1024) + b"--><Consignment", 1
    )
    response = client.post("/api/v1/xml", content=body, headers=filer[1])
    assert response.status_code == 413
    assert response.json()["errors"][0]["code"] == "TOO_LARGE"
    assert stored(gw) == 0


def test_the_gateways_own_limit_applies_to_ingest_as_well(gw, filer):
    small = dataclasses.replace(
        gw,
        config=dataclasses.replace(
            gw.config, server=dataclasses.replace(gw.config.server, max_body_bytes=1000)
        ),
    )
    with pytest.raises(GatewayError) as caught:
        ingest_xml(small, filer[0], document(lodge("CMR-1")))
    assert caught.value.problems[0].code == "TOO_LARGE"
    assert stored(gw) == 0


@pytest.mark.parametrize(
    ("root", "found"),
    [
        ('<CargoInformation xmlns="urn:roadcargo:eci:2">', "namespace urn:roadcargo:eci:2"),
        ("<CargoInformation>", "no namespace"),
        (f'<Acknowledgement xmlns="{ECI}">', "Acknowledgement"),
    ],
)
def test_a_document_of_another_namespace_or_root_is_refused(gw, client, filer, root, found):
    end = root[1:].split()[0].rstrip(">")
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n{root}<Consignment action="lodge"/></{end}>'
    response = client.post("/api/v1/xml", content=body.encode(), headers=filer[1])
    assert response.status_code == 422, response.text
    (error,) = response.json()["errors"]
    assert error["code"] == "SCHEMA_INVALID" and found in error["message"] and ECI in error["message"]
    assert stored(gw) == 0


def test_non_utf8_bytes_are_refused(gw, client, filer):
    body = document(lodge("CMR-1")).replace(b"Harbour Traders", "Harbour Tr\u00e4ders".encode("latin-1"))
    response = client.post("/api/v1/xml", content=body, headers=filer[1])
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["code"] == "MALFORMED" and "UTF-8" in error["message"]
    assert stored(gw) == 0


def test_not_well_formed_xml_is_malformed(gw, client, filer):
    response = client.post("/api/v1/xml", content=document(lodge("CMR-1"))[:-30], headers=filer[1])
    assert response.status_code == 400 and response.json()["errors"][0]["code"] == "MALFORMED"
    assert stored(gw) == 0


def test_callers_must_authenticate_and_be_filers(gw, client, filer, party):
    body = document(lodge("CMR-1"))
    response = client.post("/api/v1/xml", content=body, headers={"Content-Type": "application/xml"})
    assert response.status_code == 401 and response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    _driver, key = party.add(role="driver", name="D")
    response = client.post("/api/v1/xml", content=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403 and response.json()["errors"][0]["code"] == "FORBIDDEN"
    response = client.post(
        "/api/v1/xml", content=body, headers={**filer[1], "Content-Type": "application/json"}
    )
    assert response.status_code == 415
    assert stored(gw) == 0


def test_ingest_xml_answers_the_acknowledgement_bytes(gw, filer):
    ack = ingest_xml(gw, filer[0], document(lodge("CMR-1")))
    root = parse_xml(ack, 10**6)
    assert root.tag == q("Acknowledgement") and root.get("accepted") == "1"


# -- the same documents over SOAP, on both stores --------------------------------------------------

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"


def soap_call(client: TestClient, actor: Any, key: str, payload: bytes) -> etree._Element:
    body = parse_xml(soap_post(client, actor, key, payload).content, 10**8).find(f"{{{SOAP}}}Body")
    assert body is not None
    return body[0]


def soap_post(client: TestClient, actor: Any, key: str, payload: bytes) -> Any:
    header = (
        f'<soap:Header><wsse:Security xmlns:wsse="{WSSE}"><wsse:UsernameToken>'
        f"<wsse:Username>{actor.party_id}</wsse:Username><wsse:Password>{key}</wsse:Password>"
        "</wsse:UsernameToken></wsse:Security></soap:Header>"
    ).encode()
    payload = payload.split(b"?>", 1)[1] if payload.startswith(b"<?xml") else payload
    envelope = f'<soap:Envelope xmlns:soap="{SOAP}">'.encode() + header + b"<soap:Body>" + payload
    return client.post("/soap/cargo", content=envelope + b"</soap:Body></soap:Envelope>")


def test_soap_lodges_and_reads_the_status_on_either_store(gw, client, party):
    actor, key = party.add(role="forwarder", name="SOAP Freight")
    ack = soap_call(client, actor, key, document(lodge("CMR-1"), lodge("CMR-2")))
    assert schema().validate(ack) and ack.get("accepted") == "2"
    ccrn = xml_eci.read_acknowledgement(ack)[1]["Ccrn"]
    status = soap_call(
        client,
        actor,
        key,
        f'<GetConsignmentStatus xmlns="{ECI}"><Ccrn>{ccrn}</Ccrn></GetConsignmentStatus>'.encode(),
    )
    assert schema().validate(status)
    assert [status.findtext(q(n)) for n in ("Ccrn", "SubmitterReference", "Status")] == [
        ccrn,
        "CMR-2",
        "LODGED",
    ]
    assert stored(gw) == 2
    fault = soap_call(client, actor, "rcg_not_a_key", document(lodge("CMR-3")))
    assert fault.tag == f"{{{SOAP}}}Fault" and fault.findtext("faultcode") == "soap:Client"
    assert [e.get("code") for e in fault.iter(q("Error"))] == ["UNAUTHORIZED"]
    assert stored(gw) == 2
    with gw.engine.connect() as conn:
        kept = [bytes(r.body) for r in conn.execute(select(tables.raw_messages.c.body))]
    assert len(kept) == 1 and b"<wsse:Password>[redacted]</wsse:Password>" in kept[0]
    assert key.encode() not in kept[0]  # an API key is never stored in clear


def test_soap_bundles_on_either_store(gw, client, party):
    filer, filer_key = party.add(role="forwarder", name="SOAP Freight")
    ack = soap_call(client, filer, filer_key, document(lodge("CMR-1")))
    ccrn = xml_eci.read_acknowledgement(ack)[0]["Ccrn"]
    driver, driver_key = party.add(role="driver", name="Driver")
    request = (
        f'<BundleVehicle xmlns="{ECI}"><Vehicle>AB1234</Vehicle><ControlPoint>LMC</ControlPoint>'
        f"<Ccrn>{ccrn}</Ccrn></BundleVehicle>"
    )
    bundle = soap_call(client, driver, driver_key, request.encode())
    assert schema().validate(bundle), schema().error_log
    assert [bundle.findtext(q(n)) for n in ("Vehicle", "Driver", "Ccrn")] == ["AB1234", driver.party_id, ccrn]
    assert consignments.get(gw, filer, ccrn)["status"] == "BUNDLED"


def test_a_soap_request_the_database_undid_in_a_deadlock_is_told_so_and_can_be_sent_again(gw, client, party):
    """Bundling locks its consignments in CCRN order. A transaction that holds the second and then wants
    the first deadlocks with it, and PostgreSQL undoes the bundling: the SOAP fault says so, with
    Retry-After, nothing of it is kept, and the same request again goes through."""
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's row locks (SQLite takes one writer at a time)")
    filer, _key = party.add(role="forwarder", name="SOAP Freight")
    first, second = sorted(
        str(consignments.lodge(gw, filer, record(submitter_reference=f"CMR-{i}")).view["ccrn"])
        for i in (1, 2)
    )
    driver, driver_key = party.add(role="driver", name="Driver")
    request = (
        f'<BundleVehicle xmlns="{ECI}"><Vehicle>AB1234</Vehicle><ControlPoint>LMC</ControlPoint>'
        f"<Ccrn>{first}</Ccrn><Ccrn>{second}</Ccrn></BundleVehicle>"
    ).encode()
    answer: list[Any] = []
    lock = "SELECT 1 FROM consignments WHERE ccrn = :c FOR UPDATE"
    with gw.engine.connect() as other:
        other.execute(text("SET deadlock_timeout = '30s'"))  # the bundling's side is the one undone
        other.execute(text(lock), {"c": second})
        bundling = threading.Thread(
            target=lambda: answer.append(soap_post(client, driver, driver_key, request))
        )
        bundling.start()
        wait_for_a_lock_wait(gw, "the bundling")  # the bundling holds the first and waits for the second
        other.execute(text(lock), {"c": first})
        bundling.join(timeout=30)
        other.rollback()
    (response,) = answer
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    fault = parse_xml(response.content, 10**8).find(f"{{{SOAP}}}Body")[0]
    assert fault.findtext("faultcode") == "soap:Server"
    (error,) = fault.iter(q("Error"))
    assert error.get("code") == "UNAVAILABLE", etree.tostring(fault)
    assert "collided" in error.get("message", ""), etree.tostring(fault)
    assert {consignments.get(gw, filer, c)["status"] for c in (first, second)} == {"LODGED"}
    bundle = soap_call(client, driver, driver_key, request)
    assert [c.text for c in bundle.iter(q("Ccrn"))] == [first, second]
    assert {consignments.get(gw, filer, c)["status"] for c in (first, second)} == {"BUNDLED"}
