"""Contingency crossings (design section 5): officers record the trucks they cleared by hand while a
control point was in contingency (``POST /api/v1/crossings``), and the consignments, the bundle, the
agency feed and the audit trail catch up exactly as after a kiosk release."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gateway import bundles, clearance, consignments, crossings, event_feed, tables
from gateway.app import create_app
from gateway.clock import HONG_KONG
from gateway.errors import GatewayError
from gateway.identifiers import damm_digit
from tests.border_support import border


@pytest.fixture
def b(gw, party):
    return border(gw, party)


@pytest.fixture
def client(gw):
    with TestClient(create_app(gw), raise_server_exceptions=False) as c:
        yield c


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def hk(moment):
    return moment.astimezone(HONG_KONG).isoformat()


def row(gw, ccrn):
    with gw.engine.connect() as conn:
        return conn.execute(select(tables.consignments).where(tables.consignments.c.ccrn == ccrn)).one()


def events(gw, ccrn=None, kind=None):
    e = tables.events
    query = select(e).order_by(e.c.cursor)
    if ccrn:
        query = query.where(e.c.ccrn == ccrn)
    if kind:
        query = query.where(e.c.type == kind)
    with gw.engine.connect() as conn:
        return conn.execute(query).all()


def switch(b, client, active, control_point="LMC"):
    answer = client.post(
        f"/api/v1/control-points/{control_point}/contingency",
        json={"active": active},
        headers=bearer(b.officer_key),
    )
    assert answer.status_code == 200, answer.text


def wrong_digit(ccrn):
    return ccrn[:11] + str((damm_digit(ccrn[:11]) + 1) % 10)


def test_a_bundle_cleared_by_hand_crosses_as_at_the_kiosk(gw, b, client, party):
    first, second = b.lodge(), b.lodge()
    made = b.bundle([first, second])
    b.wait_lead_time()
    switch(b, client, True)
    kiosk = client.post("/api/v1/kiosk/clearances", json=b.arrive(), headers=bearer(b.kiosk_key))
    assert kiosk.json()["decision"] == "NOT_READY" and kiosk.json()["reasons"] == ["CONTINGENCY"]
    crossed_at = gw.now() + timedelta(minutes=2)
    gw.clock.advance(timedelta(minutes=40))  # recorded later, from the barcodes
    before = {c: row(gw, c).status_version for c in (first, second)}

    body = {
        "control_point": "LMC",
        "vehicle": "ab 1234",
        "ccrns": [f"{second[:4]} {second[4:8]} {second[8:]}", first],  # as people key them
        "crossed_at": hk(crossed_at),
        "lane": "3",
        "notes": "links down, cleared at booth 3",
    }
    answer = client.post("/api/v1/crossings", json=body, headers=bearer(b.officer_key))
    assert answer.status_code == 201, answer.text
    view = answer.json()
    assert view["vehicle"] == "AB1234" and view["bundle_id"] == made["bundle_id"]
    assert view["ccrns"] == sorted([first, second]) and view["recorded_by"] == b.officer.party_id
    assert view["crossed_at"] == hk(crossed_at) and view["recorded_at"] == hk(gw.now())
    for ccrn in (first, second):
        now = row(gw, ccrn)
        assert now.status == "CROSSED" and now.status_version == before[ccrn] + 1
        (crossed,) = events(gw, ccrn, "CROSSED")
        assert crossed.at == crossed_at and crossed.vehicle == "AB1234"
        assert crossed.status_version == now.status_version
        # the same data as a kiosk release writes
        assert json.loads(crossed.data) == {"control_point": "LMC", "bundle_id": made["bundle_id"]}
    assert {c["status"] for c in view["consignments"]} == {"CROSSED"}
    with gw.engine.connect() as conn:
        assert (
            conn.scalar(
                select(tables.bundles.c.status).where(tables.bundles.c.bundle_id == made["bundle_id"])
            )
            == "CROSSED"
        )
        recorded = conn.execute(
            select(tables.audit_log).where(tables.audit_log.c.action == "crossing.contingency")
        ).one()
        assert recorded.actor == b.officer.party_id and recorded.entity_id == str(view["crossing_id"])
        moves = conn.scalar(
            select(func.count()).where(
                tables.audit_log.c.action == "consignment.crossed", tables.audit_log.c.entity_id == first
            )
        )
        assert moves == 1

    # The declaration is prefilled with this crossing: the vehicle, the control point, the time it crossed.
    declarations = pytest.importorskip("gateway.declarations")
    transport = declarations.prefill(gw, b.filer, first)["transport"]
    assert (transport["vehicle"], transport["control_point"]) == ("AB1234", "LMC")
    assert transport["crossed_at"] == hk(crossed_at)

    # Immigration's feed gets the crossings, in order, with no goods in them.
    agency, _key = party.add(role="agency", name="ImmD", scope="immigration")
    feed = event_feed.read(gw, agency, 0, 100)["events"]
    assert [(e["type"], e["ccrn"]) for e in feed if e["type"] == "CROSSED"] == sorted(
        [("CROSSED", first), ("CROSSED", second)]
    )
    # The vehicle is free again: it can bundle after the crossing.
    switch(b, client, False)
    assert bundles.bundle(gw, b.driver, "AB1234", "LMC", [b.lodge()])["vehicle"] == "AB1234"

    # The same crossing again (a retry after a lost answer): the recorded one, nothing new.
    count = len(events(gw))
    again = client.post("/api/v1/crossings", json=body, headers=bearer(b.officer_key))
    assert again.status_code == 200 and again.json()["crossing_id"] == view["crossing_id"]
    assert len(events(gw)) == count
    listed = client.get("/api/v1/crossings?control_point=LMC", headers=bearer(b.officer_key)).json()
    assert [c["crossing_id"] for c in listed] == [view["crossing_id"]]
    one = client.get(f"/api/v1/crossings/{view['crossing_id']}", headers=bearer(b.officer_key))
    assert one.json()["notes"] == "links down, cleared at booth 3"


def test_unbundled_and_expired_consignments_cross_too(gw, b, client):
    """The gateway was down when the driver would have bundled; and the sweep expired one meanwhile."""
    loose = b.lodge()
    late = b.lodge(expected_crossing="2026-12-01")
    switch(b, client, True)
    crossed_at = gw.now() + timedelta(minutes=5)
    gw.clock.advance(timedelta(days=gw.config.rules.consignment_expiry_days + 1))
    assert consignments.expire_due(gw) >= 1 and row(gw, late).status == "EXPIRED"
    answer = client.post(
        "/api/v1/crossings",
        json={
            "control_point": "LMC",
            "vehicle": "XY99",
            "ccrns": [loose, late],
            "crossed_at": hk(crossed_at),
        },
        headers=bearer(b.officer_key),
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["bundle_id"] is None
    for ccrn in (loose, late):
        assert row(gw, ccrn).status == "CROSSED"
        (crossed,) = events(gw, ccrn, "CROSSED")
        assert crossed.at == crossed_at and json.loads(crossed.data) == {"control_point": "LMC"}


def test_bad_crossings_are_refused_whole_with_clear_errors(gw, b, client, party):
    mine, other, cancelled = b.lodge(), b.lodge(), b.lodge()
    b.bundle([other], vehicle="ZZ1")
    consignments.cancel(gw, b.filer, cancelled)
    crossed_at = gw.now()
    switch(b, client, True)
    gw.clock.advance(timedelta(minutes=10))

    def post(key=b.officer_key, **changes):
        body = {"control_point": "LMC", "vehicle": "AB1234", "ccrns": [mine], "crossed_at": hk(gw.now())}
        body.update(changes)
        return client.post("/api/v1/crossings", json=body, headers=bearer(key))

    def codes(answer):
        return [(e["code"], e["field"]) for e in answer.json()["errors"]]

    unknown = "12345678901" + str(damm_digit("12345678901"))
    answer = post(ccrns=[mine, wrong_digit(other), unknown, other, cancelled])
    assert answer.status_code == 422
    assert codes(answer) == [
        ("CCRN_CHECK_DIGIT", "ccrns[1]"),
    ]
    answer = post(ccrns=[mine, unknown, other, cancelled])
    assert codes(answer) == [
        ("NOT_FOUND", "ccrns[1]"),
        ("ALREADY_BUNDLED", "ccrns[2]"),
        ("INVALID_STATE", "ccrns[3]"),
    ]
    assert "vehicle ZZ1" in answer.json()["errors"][1]["message"]
    assert row(gw, mine).status == "LODGED" and not events(gw, kind="CROSSED")  # all or nothing

    assert codes(post(crossed_at=hk(crossed_at - timedelta(minutes=1)))) == [
        ("INVALID_STATE", "crossed_at"),  # before contingency began
        ("INVALID_VALUE", "ccrns[0]"),  # and before the consignment was lodged
    ]
    future = post(crossed_at=hk(gw.now() + timedelta(hours=1)))
    assert future.status_code == 422 and codes(future) == [("INVALID_VALUE", "crossed_at")]
    assert codes(post(crossed_at="yesterday", ccrns=[], vehicle="IO1", lane="99", extra=1)) == [
        ("INVALID_VALUE", "extra"),
        ("INVALID_VALUE", "lane"),
        ("INVALID_VALUE", "vehicle"),
        ("MISSING_FIELD", "ccrns"),
        ("INVALID_VALUE", "crossed_at"),
    ]
    assert codes(post(control_point="XXX")) == [("INVALID_CODE", "control_point")]
    assert post(key=b.driver_key).status_code == 403
    assert post(key=b.kiosk_key).status_code == 403

    # A bundle crosses whole: its other CCRNs must be listed too.
    answer = post(vehicle="ZZ1", ccrns=[mine])
    assert codes(answer) == [("INVALID_VALUE", "ccrns")] and other in answer.json()["errors"][0]["message"]
    # After contingency ended, crossings from it are still recorded; from after it, not.
    switch(b, client, False)
    assert post().status_code == 409
    assert post(crossed_at=hk(crossed_at + timedelta(minutes=5))).status_code == 201


def test_a_crossing_needs_contingency_and_an_officer(gw, b):
    ccrn = b.lodge()
    body = {"control_point": "LMC", "vehicle": "AB1", "ccrns": [ccrn], "crossed_at": hk(gw.now())}
    with pytest.raises(GatewayError) as refused:
        crossings.record(gw, b.filer, body)
    assert refused.value.problems[0].code == "FORBIDDEN"
    with pytest.raises(GatewayError) as refused:
        crossings.record(gw, b.officer, body)
    assert "never been in contingency" in refused.value.problems[0].message
    clearance.set_contingency(gw, b.officer, "LMC", True)
    view, new = crossings.record(gw, b.officer, body)
    assert new and view["consignments"][0]["status"] == "CROSSED"


def test_the_same_crossing_sent_at_once_is_recorded_once(gw, b):
    ccrns = [b.lodge() for _ in range(3)]
    b.bundle(ccrns)
    clearance.set_contingency(gw, b.officer, "LMC", True)
    body = {"control_point": "LMC", "vehicle": "AB1234", "ccrns": ccrns, "crossed_at": hk(gw.now())}
    results: list = []

    def send():
        try:
            results.append(crossings.record(gw, b.officer, body))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, tuple) for r in results), results
    assert sorted(new for _view, new in results) == [False, False, False, True]
    assert len({view["crossing_id"] for view, _new in results}) == 1
    assert len(events(gw, kind="CROSSED")) == 3
    with gw.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tables.crossings)) == 1


def test_lodged_after_the_crossing_is_refused(gw, b):
    clearance.set_contingency(gw, b.officer, "LMC", True)
    crossed_at = gw.now()
    gw.clock.advance(timedelta(minutes=5))
    ccrn = b.lodge()
    body = {"control_point": "LMC", "vehicle": "AB1", "ccrns": [ccrn], "crossed_at": hk(crossed_at)}
    with pytest.raises(GatewayError) as refused:
        crossings.record(gw, b.officer, body)
    assert [p.code for p in refused.value.problems] == ["INVALID_VALUE"]
    assert "lodged" in refused.value.problems[0].message
