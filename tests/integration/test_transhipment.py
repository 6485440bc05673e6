"""Intermodal transhipment both ways (design section 5), over the JSON API where partners use it."""

import threading
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from gateway import clearance, risk_admin, tables
from gateway.app import create_app
from tests.border_support import border
from tests.factories import wait_for_a_lock_wait

EXPIRES = "2026-12-09T00:00:00+08:00"


@pytest.fixture
def b(gw, party):
    return border(gw, party)


@pytest.fixture
def client(gw):
    with TestClient(create_app(gw), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def airport(party):
    return party.add(role="agency", name="Airport Authority", scope="airport")


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def land_to_air(b):
    return b.lodge(transhipment={"mode": "LAND_TO_AIR", "air_waybill": "160-12345675", "flight": "CX880"})


def air_to_land(b, **kw):
    return b.lodge(
        direction="EXPORT",
        transhipment={"mode": "AIR_TO_LAND", "air_waybill": "160-99999990", "flight": "CX881"},
        **kw,
    )


def tranship(gw, ccrn):
    with gw.engine.connect() as conn:
        return conn.execute(select(tables.transhipments).where(tables.transhipments.c.ccrn == ccrn)).first()


def inspections(gw, officer):
    return clearance.list_inspections(gw, officer, status=None)


def last_event(gw, ccrn):
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(tables.events).where(tables.events.c.ccrn == ccrn).order_by(tables.events.c.cursor.desc())
        ).first()
    return row.type, row.status, row.status_version


def test_land_to_air_is_released_with_its_elock_and_confirmed_at_the_airport(b, gw, client, airport):
    _agency, agency_key = airport
    ccrn = land_to_air(b)
    b.bundle([ccrn])
    b.wait_lead_time()
    out = clearance.decide(gw, b.kiosk, b.arrive(elock_id="EL-0001"))
    assert out["decision"] == "RELEASE"
    leg = tranship(gw, ccrn)
    assert (leg.first_point, leg.second_point, leg.elock_id, leg.first_decision, leg.status) == (
        "LMC",
        "HKHKG",
        "EL-0001",
        "RELEASED",
        "IN_TRANSIT",
    )
    before = last_event(gw, ccrn)
    r = client.post(
        f"/api/v1/transhipments/{ccrn}/arrival",
        json={"elock_id": "EL-0001", "intact": True},
        headers=bearer(agency_key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "CONFIRMED" and r.json()["inspection"] is False
    assert last_event(gw, ccrn) == ("TRANSHIPMENT_CONFIRMED", "CROSSED", before[2] + 1)
    assert inspections(gw, b.officer) == []
    # The same confirmation again changes nothing.
    again = client.post(
        f"/api/v1/transhipments/{ccrn}/arrival",
        json={"elock_id": "EL-0001", "intact": True},
        headers=bearer(agency_key),
    )
    assert again.status_code == 200 and last_event(gw, ccrn) == (
        "TRANSHIPMENT_CONFIRMED",
        "CROSSED",
        before[2] + 1,
    )


def test_land_to_air_needs_the_elock_at_the_kiosk(b, gw):
    b.bundle([land_to_air(b)])
    b.wait_lead_time()
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert out["decision"] == "NOT_READY" and out["reasons"] == ["ELOCK_REQUIRED"]


def test_land_to_air_inspected_at_the_land_point_is_inspected_once(b, gw, client, airport):
    _agency, agency_key = airport
    ccrn = land_to_air(b)
    risk_admin.add_target(
        gw,
        b.officer,
        {"kind": "CCRN", "value": ccrn, "action": "INSPECT", "reason": "x", "expires_at": EXPIRES},
    )
    b.bundle([ccrn])
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive(elock_id="EL-7"))["decision"] == "INSPECT"
    assert tranship(gw, ccrn) is None  # not on its way until it has crossed
    (case,) = inspections(gw, b.officer)
    clearance.close_inspection(gw, b.officer, case["inspection_id"], "RELEASED", None)
    leg = tranship(gw, ccrn)
    assert (leg.first_decision, leg.elock_id, leg.status) == ("INSPECTED", "EL-7", "IN_TRANSIT")
    r = client.post(
        f"/api/v1/transhipments/{ccrn}/arrival",
        json={"elock_id": "EL-7", "intact": True},
        headers=bearer(agency_key),
    )
    assert r.json()["status"] == "CONFIRMED"
    assert len(inspections(gw, b.officer)) == 1


@pytest.mark.parametrize(
    ("elock", "intact"), [("EL-0001", False), ("EL-0002", True)], ids=["broken", "mismatch"]
)
def test_a_broken_or_mismatched_elock_at_the_airport_opens_an_inspection_and_an_offence(
    b, gw, client, airport, elock, intact
):
    _agency, agency_key = airport
    ccrn = land_to_air(b)
    b.bundle([ccrn])
    b.wait_lead_time()
    clearance.decide(gw, b.kiosk, b.arrive(elock_id="EL-0001"))
    r = client.post(
        f"/api/v1/transhipments/{ccrn}/arrival",
        json={"elock_id": elock, "intact": intact},
        headers=bearer(agency_key),
    )
    assert r.status_code == 200 and r.json()["inspection"] is True and r.json()["status"] == "INSPECTION"
    (case,) = inspections(gw, b.officer)
    assert case["origin"] == "ELOCK" and case["control_point"] == "HKHKG" and case["ccrns"] == [ccrn]
    with gw.engine.connect() as conn:
        (offence,) = conn.execute(select(tables.offences)).all()
    assert (offence.kind, offence.party_id, offence.vehicle) == ("ELOCK_BROKEN", b.filer.party_id, "AB1234")
    clearance.close_inspection(
        gw, b.officer, case["inspection_id"], "HELD", {"findings": "seal cut, goods missing"}
    )
    assert last_event(gw, ccrn)[:2] == ("HELD", "HELD")
    assert tranship(gw, ccrn).status == "HELD"


def test_air_to_land_is_recorded_at_the_airport_first_then_cleared_without_a_second_selection(
    b, gw, client, airport
):
    _agency, agency_key = airport
    risk_admin.create_profile(
        gw,
        b.officer,
        {
            "name": "toys",
            "weight": 100,
            "conditions": [{"field": "items.hs_code", "op": "prefix", "values": ["95"]}],
        },
    )
    ccrn = air_to_land(b)
    b.bundle([ccrn])
    b.wait_lead_time()
    out = clearance.decide(gw, b.kiosk, b.arrive(elock_id="EL-9"))
    assert out["decision"] == "NOT_READY" and out["reasons"] == ["TRANSHIPMENT_NOT_RECORDED"]

    r = client.post(
        f"/api/v1/transhipments/{ccrn}/airport",
        json={"decision": "INSPECTED", "elock_id": "EL-9"},
        headers=bearer(agency_key),
    )
    assert r.status_code == 200, r.text
    assert r.json()["first_point"] == "HKHKG" and r.json()["status"] == "IN_TRANSIT"
    out = clearance.decide(gw, b.kiosk, b.arrive(elock_id="EL-9"))
    assert out["decision"] == "RELEASE"
    assert inspections(gw, b.officer) == []
    leg = tranship(gw, ccrn)
    assert (leg.status, leg.intact, leg.second_point) == ("CONFIRMED", True, "LMC")
    assert last_event(gw, ccrn)[:2] == ("TRANSHIPMENT_CONFIRMED", "CROSSED")


def test_air_to_land_with_a_mismatched_elock_at_the_land_point_is_inspected(b, gw, client, airport):
    _agency, agency_key = airport
    ccrn = air_to_land(b)
    client.post(
        f"/api/v1/transhipments/{ccrn}/airport",
        json={"decision": "RELEASED", "elock_id": "EL-9"},
        headers=bearer(agency_key),
    )
    b.bundle([ccrn])
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive(elock_id="EL-1"))["decision"] == "INSPECT"
    (case,) = inspections(gw, b.officer)
    assert case["selection"]["elock"][ccrn] == {"recorded": "EL-9", "presented": "EL-1"}
    with gw.engine.connect() as conn:
        assert conn.scalar(select(tables.offences.c.kind)) == "ELOCK_BROKEN"
    clearance.close_inspection(gw, b.officer, case["inspection_id"], "RELEASED", {"findings": "resealed"})
    assert tranship(gw, ccrn).status == "CLEARED"


def test_the_airport_side_is_for_the_airport_agency_and_air_to_land_only(b, gw, client, airport, party):
    _agency, agency_key = airport
    _imm, imm_key = party.add(role="agency", name="Immigration", scope="immigration")
    ccrn = air_to_land(b)
    body = {"decision": "RELEASED", "elock_id": "EL-1"}
    for key in (imm_key, b.filer_key, b.kiosk_key):
        r = client.post(f"/api/v1/transhipments/{ccrn}/airport", json=body, headers=bearer(key))
        assert r.status_code == 403, r.text
    plain = b.lodge()
    r = client.post(f"/api/v1/transhipments/{plain}/airport", json=body, headers=bearer(agency_key))
    assert r.status_code == 404
    r = client.post(
        f"/api/v1/transhipments/{ccrn}/airport", json={"decision": "MAYBE"}, headers=bearer(agency_key)
    )
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"decision", "elock_id"}
    assert (
        client.post(
            f"/api/v1/transhipments/{ccrn}/airport", json=body, headers=bearer(agency_key)
        ).status_code
        == 200
    )
    assert (
        client.post(
            f"/api/v1/transhipments/{ccrn}/airport", json=body, headers=bearer(agency_key)
        ).status_code
        == 200
    )
    other = {"decision": "INSPECTED", "elock_id": "EL-1"}
    assert (
        client.post(
            f"/api/v1/transhipments/{ccrn}/airport", json=other, headers=bearer(agency_key)
        ).status_code
        == 409
    )


def test_overdue_arrivals_are_listed_for_officers(b, gw, client, clock, airport):
    _agency, agency_key = airport
    ccrn = land_to_air(b)
    b.bundle([ccrn])
    b.wait_lead_time()
    clearance.decide(gw, b.kiosk, b.arrive(elock_id="EL-1"))
    url = "/api/v1/transhipments/overdue"
    assert client.get(url, headers=bearer(b.officer_key)).json() == {"transhipments": []}
    clock.advance(timedelta(hours=6))
    (late,) = client.get(url, headers=bearer(b.officer_key)).json()["transhipments"]
    assert late["ccrn"] == ccrn and late["elock_id"] == "EL-1"
    assert client.get(url, headers=bearer(agency_key)).status_code == 403
    client.post(
        f"/api/v1/transhipments/{ccrn}/arrival",
        json={"elock_id": "EL-1", "intact": True},
        headers=bearer(agency_key),
    )
    assert client.get(url, headers=bearer(b.officer_key)).json() == {"transhipments": []}


def test_an_arrival_waits_for_a_transaction_holding_the_consignment_holding_nothing_itself(
    b, gw, client, airport
):
    """Confirming an arrival locks the consignment, then its transhipment, as a kiosk decision that
    records an e-lock does (the consignments, then their transhipments): while another transaction holds
    the consignment, the confirmation waits without holding the transhipment, the other can take it and
    finish, and the confirmation then goes through. In the other order the two could deadlock."""
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's row locks (SQLite takes one writer at a time)")
    _agency, agency_key = airport
    ccrn = land_to_air(b)
    b.bundle([ccrn])
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive(elock_id="EL-0001"))["decision"] == "RELEASE"
    answer: list[Any] = []

    def confirm() -> None:
        answer.append(
            client.post(
                f"/api/v1/transhipments/{ccrn}/arrival",
                json={"elock_id": "EL-0001", "intact": True},
                headers=bearer(agency_key),
            )
        )

    with gw.engine.connect() as other:
        other.execute(text("SELECT 1 FROM consignments WHERE ccrn = :c FOR UPDATE"), {"c": ccrn})
        thread = threading.Thread(target=confirm)
        thread.start()
        wait_for_a_lock_wait(gw, "the confirmation")
        other.execute(text("SELECT 1 FROM transhipments WHERE ccrn = :c FOR UPDATE NOWAIT"), {"c": ccrn})
        assert not answer  # still waiting
        other.rollback()
    thread.join(timeout=30)
    (r,) = answer
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "CONFIRMED" and r.json()["inspection"] is False
