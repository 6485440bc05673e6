"""Operations on SQLite and PostgreSQL: rate limits on every channel, key rotation and expiry, portal
sessions that end with their key, request ids in the audit trail, metrics, retention and the audit
export, and 503 when the database cannot be reached."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from adapters.portal import accounts
from gateway import consignments, db, parties, retention, tables
from gateway.app import create_app
from gateway.config import Config, LimitsConfig, RetentionConfig
from gateway.context import SYSTEM, Gateway, store_raw
from gateway.errors import GatewayError
from tests.border_support import border
from tests.factories import record
from tests.integration.test_portal import Browser

ROADCARGO = str(Path(sys.executable).with_name("roadcargo"))
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
ECI = "urn:hk:customs:roadcargo:eci:1"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def limited(gw: Gateway, **limits: Any) -> None:
    """Set ``[limits]`` before any party has been counted (the buckets are made on first use)."""
    gw.config = dataclasses.replace(gw.config, limits=LimitsConfig(**limits))


def codes(response: Any) -> list[str]:
    return [e["code"] for e in response.json()["errors"]]


def retry_after(response: Any) -> int:
    value = response.headers["retry-after"]
    assert value.isdigit() and int(value) >= 1, value
    return int(value)


def soap_status(client: TestClient, party_id: str, key: str) -> Any:
    envelope = (
        f'<soap:Envelope xmlns:soap="{SOAP}"><soap:Header><wsse:Security xmlns:wsse="{WSSE}">'
        f"<wsse:UsernameToken><wsse:Username>{party_id}</wsse:Username>"
        f"<wsse:Password>{key}</wsse:Password></wsse:UsernameToken></wsse:Security></soap:Header>"
        f'<soap:Body><GetConsignmentStatus xmlns="{ECI}"><Ccrn>000000000000</Ccrn>'
        "</GetConsignmentStatus></soap:Body></soap:Envelope>"
    )
    return client.post("/soap/cargo", content=envelope, headers={"Content-Type": "text/xml"})


# -- rate limits -----------------------------------------------------------------------------------------


def test_a_party_over_its_limit_gets_429_with_retry_after_on_every_channel(gw, party):
    # One request in a thousand seconds after a burst of 4: the bucket never refills during the test.
    limited(gw, requests_per_second=0.001, burst=4)
    a, a_key = party.add(name="Busy Freight")  # registering counts one request (authenticate)
    b, b_key = party.add(name="Quiet Freight")
    client = TestClient(create_app(gw))
    for _ in range(3):
        assert client.get("/api/v1/consignments", headers=bearer(a_key)).status_code == 200
    over = client.get("/api/v1/consignments", headers=bearer(a_key))
    assert over.status_code == 429 and codes(over) == ["RATE_LIMITED"]
    assert retry_after(over) > 60
    assert a.party_id in over.json()["errors"][0]["message"]
    # The same party on the other channels: the same bucket.
    edifact = client.post(
        "/api/v1/edifact",
        content=b"UNA:+.? '",
        headers={**bearer(a_key), "Content-Type": "application/edifact"},
    )
    assert edifact.status_code == 429 and retry_after(edifact)
    xml = client.post(
        "/api/v1/xml", content=b"<x/>", headers={**bearer(a_key), "Content-Type": "application/xml"}
    )
    assert xml.status_code == 429 and retry_after(xml)
    soap = soap_status(client, str(a.party_id), a_key)
    assert soap.status_code == 429 and retry_after(soap)
    assert b"RATE_LIMITED" in soap.content and b"Fault" in soap.content
    # Another party is not affected, and a wrong key is still 401, not 429.
    assert client.get("/api/v1/consignments", headers=bearer(b_key)).status_code == 200
    assert client.get("/api/v1/consignments", headers=bearer("rcg_wrong")).status_code == 401
    assert soap_status(client, str(b.party_id), b_key).status_code == 500  # NOT_FOUND fault, not 429


def test_portal_pages_and_the_phone_dialog_count_towards_the_limit(gw, party):
    limited(gw, requests_per_second=0.001, burst=3)
    filer, key = party.add(name="Portal Freight")  # 1
    browser = Browser(gw)
    assert browser.login(str(filer.party_id), key).status_code == 303  # 2
    assert browser.get("/consignments").status_code == 200  # 3
    page = browser.get("/consignments")
    assert page.status_code == 429 and retry_after(page)
    assert "limit" in page.text and "<html" in page.text.lower()

    new = parties.add_party(gw, SYSTEM, "driver", "Phone Driver")
    client = TestClient(create_app(gw))
    for _ in range(3):
        said = client.get("/ivr/login", params={"party": new.party_id, "pin": new.pin})
        assert "busy" not in said.text
    said = client.get("/ivr/login", params={"party": new.party_id, "pin": new.pin})
    assert "busy for this party number" in said.text


def test_login_and_registration_are_limited_per_client_address(gw, party):
    limited(gw, login_per_minute=0.01, login_burst=2)
    filer, key = party.add(name="Guessed Freight")
    browser = Browser(gw)
    browser.get("/login")
    assert browser.post("/login", {"party_id": filer.party_id, "secret": "wrong guess 1"}).status_code == 401
    assert browser.post("/login", {"party_id": filer.party_id, "secret": "wrong guess 2"}).status_code == 401
    third = browser.post("/login", {"party_id": filer.party_id, "secret": key})
    assert third.status_code == 429 and retry_after(third) > 60
    assert "Too many attempts" in third.text
    api = browser.client.post("/api/v1/registrations", json={"role": "shipper", "name": "X"})
    assert api.status_code == 429 and codes(api) == ["RATE_LIMITED"] and retry_after(api)
    # Only the forms anyone may post are limited by address; pages and the API are not.
    assert browser.get("/login").status_code == 200
    assert browser.client.get("/api/v1/consignments", headers=bearer(key)).status_code == 200


def test_a_limit_of_zero_is_off(gw, party):
    limited(gw, requests_per_second=0, burst=1, login_per_minute=0, login_burst=1)
    _, key = party.add()
    client = TestClient(create_app(gw))
    assert {client.get("/api/v1/consignments", headers=bearer(key)).status_code for _ in range(12)} == {200}


# -- keys: rotation without downtime, expiry -------------------------------------------------------------


def test_rotation_two_live_keys_then_the_old_one_revoked(gw, party):
    filer, old_key = party.add(name="Rotating Freight")
    client = TestClient(create_app(gw))
    pid = str(filer.party_id)
    new = parties.add_key(gw, SYSTEM, pid)
    assert new["expires_at"] is None
    for key in (old_key, new["api_key"]):  # both work while clients switch over
        assert client.get("/api/v1/consignments", headers=bearer(key)).status_code == 200
    with pytest.raises(GatewayError) as third:
        parties.add_key(gw, SYSTEM, pid)
    assert third.value.problems[0].code == "KEY_LIMIT"
    old_id = next(k["key_id"] for k in parties.list_keys(gw, SYSTEM, pid) if k["key_id"] != new["key_id"])
    parties.revoke_key(gw, SYSTEM, pid, old_id)
    gone = client.get("/api/v1/consignments", headers=bearer(old_key))
    assert gone.status_code == 401 and codes(gone) == ["UNAUTHORIZED"]
    assert client.get("/api/v1/consignments", headers=bearer(new["api_key"])).status_code == 200


def test_a_key_with_an_expiry_stops_working_by_itself(gw, party, clock):
    filer, _ = party.add(name="Temporary Freight")
    pid = str(filer.party_id)
    temp = parties.add_key(gw, SYSTEM, pid, expires_in_days=2)
    assert temp["expires_at"].startswith((clock.now() + timedelta(days=2)).date().isoformat())
    client = TestClient(create_app(gw))
    assert client.get("/api/v1/consignments", headers=bearer(temp["api_key"])).status_code == 200
    clock.advance(timedelta(days=2, minutes=1))
    expired = client.get("/api/v1/consignments", headers=bearer(temp["api_key"]))
    assert expired.status_code == 401 and "expired" in expired.json()["errors"][0]["message"]
    listed = {k["key_id"]: k for k in parties.list_keys(gw, SYSTEM, pid)}
    assert listed[temp["key_id"]]["live"] is False
    parties.add_key(gw, SYSTEM, pid)  # an expired key does not count towards the two live keys
    for days in (0, -1, 100000):
        with pytest.raises(GatewayError) as bad:
            parties.add_key(gw, SYSTEM, pid, expires_in_days=days)
        assert bad.value.problems[0].code == "INVALID_VALUE"


def test_cli_key_add_with_an_expiry(db_url, party):
    filer, _ = party.add(name="CLI Freight")
    done = subprocess.run(
        [
            ROADCARGO,
            "party",
            "key",
            "add",
            str(filer.party_id),
            "--expires-in-days",
            "30",
            "--json",
            "--db",
            db_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout)
    assert key["api_key"].startswith("rcg_") and key["expires_at"]
    bad = subprocess.run(
        [ROADCARGO, "party", "key", "add", str(filer.party_id), "--expires-in-days", "0", "--db", db_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "INVALID_VALUE" in bad.stderr and "expires" in bad.stderr


# -- portal sessions end with their key ------------------------------------------------------------------


def test_a_portal_session_opened_with_a_key_ends_when_the_key_is_revoked(gw, party):
    filer, key = party.add(name="Session Freight")
    pid = str(filer.party_id)
    second = parties.add_key(gw, SYSTEM, pid)
    with_old, with_new = Browser(gw), Browser(gw)
    assert with_old.login(pid, key).status_code == 303
    assert with_new.login(pid, second["api_key"]).status_code == 303
    old_id = next(k["key_id"] for k in parties.list_keys(gw, SYSTEM, pid) if k["key_id"] != second["key_id"])
    parties.revoke_key(gw, SYSTEM, pid, old_id)
    assert with_old.get("/consignments").headers["location"].startswith("/login")
    assert with_new.get("/consignments").status_code == 200  # the other key's session lives on


def test_a_password_session_survives_key_revocation(gw, party):
    filer, key = party.add(name="Password Freight")
    pid = str(filer.party_id)
    accounts.set_password(gw, filer, key, "correct horse battery", "correct horse battery")
    by_password, by_key = Browser(gw), Browser(gw)
    assert by_password.login(pid, "correct horse battery").status_code == 303
    assert by_key.login(pid, key).status_code == 303
    parties.revoke_key(gw, SYSTEM, pid, parties.list_keys(gw, SYSTEM, pid)[0]["key_id"])
    assert by_password.get("/consignments").status_code == 200
    assert by_key.get("/consignments").headers["location"].startswith("/login")


def test_a_kiosk_screen_logged_in_with_an_expiring_key_is_logged_out_when_it_expires(gw, party, clock):
    kiosk, _ = party.add(role="kiosk", name="LMC lane 1", control_point="LMC")
    pid = str(kiosk.party_id)
    temp = parties.add_key(gw, SYSTEM, pid, expires_in_days=2)  # kiosk sessions last 30 days
    screen = Browser(gw)
    assert screen.login(pid, temp["api_key"]).status_code == 303
    assert screen.get("/kiosk/LMC/1").status_code == 200
    clock.advance(timedelta(days=2, minutes=1))
    assert screen.get("/kiosk/LMC/1").headers["location"].startswith("/login")


# -- request ids -----------------------------------------------------------------------------------------


def test_the_request_id_comes_back_and_is_kept_with_the_audit_row_and_the_raw_message(gw, party):
    _, key = party.add(name="Traced Freight")
    client = TestClient(create_app(gw))
    r = client.post(
        "/api/v1/consignments", json=record(), headers={**bearer(key), "X-Request-ID": "trace-abc.123"}
    )
    assert r.status_code == 201 and r.headers["x-request-id"] == "trace-abc.123"
    ccrn = r.json()["ccrn"]
    with gw.engine.connect() as conn:
        audited = conn.scalars(
            select(tables.audit_log.c.request_id).where(tables.audit_log.c.entity_id == ccrn)
        ).all()
        raw = conn.scalars(select(tables.raw_messages.c.request_id)).all()
    assert audited == ["trace-abc.123"] and raw == ["trace-abc.123"]
    # A missing or unusable id is replaced by a fresh one, also on errors.
    for sent in ({}, {"X-Request-ID": 'has spaces; and=quotes"<>'}, {"X-Request-ID": "x" * 65}):
        answer = client.get("/api/v1/consignments/000000000000", headers={**bearer(key), **sent})
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"]), answer.headers
    assert client.get("/healthz").headers["x-request-id"]


# -- metrics ---------------------------------------------------------------------------------------------


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_ingest_by_channel_decisions_and_queue_depths(gw, party):
    b = border(gw, party)
    client = TestClient(create_app(gw))
    before = scrape(client)
    accepted = ("roadcargo_ingest_requests_total", (("channel", "json"), ("outcome", "accepted")))
    refused = ("roadcargo_ingest_requests_total", (("channel", "json"), ("outcome", "refused")))
    timed = ("roadcargo_ingest_seconds_count", (("channel", "json"),))
    released = ("roadcargo_kiosk_decisions_total", (("decision", "RELEASE"),))
    assert client.post("/api/v1/consignments", json=record(), headers=bearer(b.filer_key)).status_code == 201
    bad = client.post("/api/v1/consignments", json=record(items=None), headers=bearer(b.filer_key))
    assert bad.status_code == 422
    assert client.get("/api/v1/consignments", headers=bearer(b.filer_key)).status_code == 200  # not ingest
    ccrn = b.lodge(submitter_reference="REF-METRICS")
    b.bundle([ccrn])
    b.wait_lead_time()
    decision = client.post("/api/v1/kiosk/clearances", json=b.arrive(), headers=bearer(b.kiosk_key))
    assert decision.json()["decision"] == "RELEASE"
    after = scrape(client)
    assert after[accepted] - before.get(accepted, 0) == 1
    assert after[refused] - before.get(refused, 0) == 1
    assert after[timed] - before.get(timed, 0) == 2
    assert after[released] - before.get(released, 0) == 1
    with gw.engine.connect() as conn:
        waiting = conn.scalar(
            select(func.count())
            .select_from(tables.immigration_outbox)
            .where(tables.immigration_outbox.c.delivered_at.is_(None))
        )
    assert waiting and after[("roadcargo_advance_notices_waiting", ())] == waiting
    assert after[("roadcargo_inspections_open", ())] == 0
    assert after[("roadcargo_database_up", ())] == 1
    assert ("roadcargo_sftp_inbox_files_waiting", ()) in after
    for channel in ("json", "edifact", "xml", "soap", "sftp", "portal"):
        assert ("roadcargo_ingest_seconds_count", (("channel", channel),)) in after


# -- retention and the audit export ----------------------------------------------------------------------


def test_retention_empties_old_raw_messages_and_deletes_old_audit_rows(gw, party, clock):
    filer, _ = party.add(name="Old Freight")
    old_raw = store_raw(gw, filer, "application/json", b'{"old": true}')
    old_ccrn = consignments.lodge(gw, filer, record(submitter_reference="OLD"), old_raw).view["ccrn"]
    clock.advance(timedelta(days=31))
    new_raw = store_raw(gw, filer, "application/json", b'{"new": true}')
    consignments.lodge(gw, filer, record(submitter_reference="NEW", expected_crossing="2027-01-02"), new_raw)
    with gw.engine.connect() as conn:
        audit_before = conn.scalar(select(func.count()).select_from(tables.audit_log))
    assert retention.sweep(gw) == {"raw_messages": 0, "audit_rows": 0}  # 0 days: keep forever
    gw.config = dataclasses.replace(gw.config, retention=RetentionConfig(raw_messages_days=30, audit_days=30))
    done = retention.sweep(gw)
    assert done["raw_messages"] == 1 and 0 < done["audit_rows"] < audit_before
    with gw.engine.connect() as conn:
        rows = {
            r.message_id: r
            for r in conn.execute(select(tables.raw_messages).order_by(tables.raw_messages.c.message_id))
        }
        left = conn.execute(select(tables.audit_log.c.at)).scalars().all()
    assert rows[old_raw].body == b"" and rows[old_raw].size == len(b'{"old": true}') and rows[old_raw].sha256
    assert rows[new_raw].body == b'{"new": true}'
    assert left and all(at >= clock.now() - timedelta(days=30) for at in left)
    assert retention.sweep(gw) == {"raw_messages": 0, "audit_rows": 0}  # nothing twice
    assert consignments.get(gw, filer, old_ccrn)["ccrn"] == old_ccrn  # what pointed at it is intact


def test_audit_export_writes_json_lines_of_the_days_asked(db_url, gw, party, clock, tmp_path):
    party.add(name="Day One")
    clock.advance(timedelta(days=1))
    second, _ = party.add(name="Day Two")
    out = tmp_path / "audit.jsonl"
    day = clock.now().date().isoformat()
    done = subprocess.run(
        [ROADCARGO, "audit", "export", "--since", day, "--until", day, "--out", str(out), "--db", db_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["at"].startswith(day) for r in rows)
    assert {r["entity_id"] for r in rows if r["action"] == "party.add"} == {second.party_id}
    assert rows[0]["after"]["name"] == "Day Two"  # before/after come out as JSON, not strings
    for since, until, wanted in (("2026-13-01", day, "--since"), (day, "2026-01-01", "--until")):
        bad = subprocess.run(
            [
                ROADCARGO,
                "audit",
                "export",
                "--since",
                since,
                "--until",
                until,
                "--out",
                str(out),
                "--db",
                db_url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 1 and "INVALID_VALUE" in bad.stderr and wanted in bad.stderr


# -- the database down -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://postgres@127.0.0.1:1/gone", "sqlite:////proc/roadcargo-no-such-dir/gateway.db"],
    ids=["postgresql-closed-port", "sqlite-unopenable"],
)
def test_a_database_that_cannot_be_reached_answers_503_with_retry_after(url):
    engine = db.make_engine(url) if url.startswith("postgresql") else _unopenable(url)
    client = TestClient(create_app(Gateway(engine, Config())), raise_server_exceptions=False)
    r = client.get("/api/v1/consignments", headers=bearer("rcg_" + "x" * 43))
    assert r.status_code == 503 and codes(r) == ["UNAVAILABLE"] and r.headers["retry-after"] == "5"
    soap = soap_status(client, "12345678", "rcg_" + "x" * 43)
    assert soap.status_code == 503 and b"UNAVAILABLE" in soap.content and soap.headers["retry-after"] == "5"
    for path, content_type in (
        ("/api/v1/edifact", "application/edifact"),
        ("/api/v1/xml", "application/xml"),
    ):
        answer = client.post(
            path, content=b"x", headers={**bearer("rcg_" + "x" * 43), "Content-Type": content_type}
        )
        assert answer.status_code == 503 and codes(answer) == ["UNAVAILABLE"], (path, answer.text)
    assert client.get("/login").status_code == 503  # the portal too
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "roadcargo_database_up 0.0" in metrics.text


def _unopenable(url: str) -> Any:
    from sqlalchemy import create_engine

    return create_engine(url)  # /proc cannot hold a file: every connection fails, as a lost disk would
