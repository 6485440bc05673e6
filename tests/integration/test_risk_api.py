"""Risk management over the JSON API (design sections 7 and 9), profiling along the lifecycle, no
tipping off, and the done-when story of issue 7 end to end over HTTP."""

import dataclasses
import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy import text as sql

from gateway import consignments, risk_admin, tables
from gateway.app import create_app
from gateway.config import ImmigrationConfig
from gateway.consignments import Submission
from tests.border_support import FakeImmigration, border
from tests.factories import record, wait_for_a_lock_wait

EXPIRES = "2026-12-09T00:00:00+08:00"
TOBACCO = {
    "name": "tobacco-smuggling-route-7",
    "weight": 100,
    "conditions": [{"field": "items.hs_code", "op": "prefix", "values": ["2402"]}],
}


@pytest.fixture
def b(gw, party):
    return border(gw, party)


@pytest.fixture
def client(gw):
    with TestClient(create_app(gw), raise_server_exceptions=False) as c:
        yield c


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def cigarettes(ref):
    data = record(submitter_reference=ref)
    data["items"][0].update(hs_code="240220", description="cigarettes")
    return data


def results(gw, ccrn):
    with gw.engine.connect() as conn:
        return conn.execute(
            select(tables.risk_results)
            .where(tables.risk_results.c.ccrn == ccrn)
            .order_by(tables.risk_results.c.version)
        ).all()


# -- profiles and targets -----------------------------------------------------------------------------


def test_officers_create_change_and_retire_profiles_each_audited(b, gw, client):
    officer = bearer(b.officer_key)
    r = client.post("/api/v1/risk/profiles", json=TOBACCO, headers=officer)
    assert r.status_code == 201, r.text
    pid = r.json()["profile_id"]
    assert r.json()["version"] == 1 and r.json()["status"] == "ACTIVE"
    changed = {**TOBACCO, "weight": 60}
    r = client.put(f"/api/v1/risk/profiles/{pid}", json=changed, headers=officer)
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["weight"] == 60
    assert client.get("/api/v1/risk/profiles", headers=officer).json()["profiles"][0]["weight"] == 60
    r = client.delete(f"/api/v1/risk/profiles/{pid}", headers=officer)
    assert r.status_code == 200 and r.json()["status"] == "RETIRED"
    assert client.get("/api/v1/risk/profiles", headers=officer).json()["profiles"] == []
    history = client.get(f"/api/v1/risk/profiles/{pid}", headers=officer).json()["versions"]
    assert [(v["version"], v["weight"], v["status"]) for v in history] == [
        (1, 100, "ACTIVE"),
        (2, 60, "ACTIVE"),
        (3, 60, "RETIRED"),
    ]
    assert client.put(f"/api/v1/risk/profiles/{pid}", json=TOBACCO, headers=officer).status_code == 409
    with gw.engine.connect() as conn:
        actions = conn.scalars(
            select(tables.audit_log.c.action)
            .where(tables.audit_log.c.entity == "risk_profile")
            .order_by(tables.audit_log.c.audit_id)
        ).all()
    assert actions == ["risk_profile.create", "risk_profile.change", "risk_profile.retire"]
    # The name is free again once retired.
    assert client.post("/api/v1/risk/profiles", json=TOBACCO, headers=officer).status_code == 201
    r = client.post("/api/v1/risk/profiles", json=TOBACCO, headers=officer)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "name"


def test_a_bad_profile_gets_every_problem_named(b, client):
    body = {
        "name": "x",
        "weight": 10,
        "conditions": [
            {"field": "items.colour", "op": "eq", "values": ["red"]},
            {"field": "vehicle", "op": "~"},
        ],
    }
    r = client.post("/api/v1/risk/profiles", json=body, headers=bearer(b.officer_key))
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {
        "conditions[0].field",
        "conditions[1].op",
        "conditions[1].values",
    }


@pytest.mark.parametrize("who", ["filer", "driver", "kiosk"])
def test_only_officers_touch_risk(b, client, who):
    key = bearer(getattr(b, f"{who}_key"))
    for method, url, body in [
        ("POST", "/api/v1/risk/profiles", TOBACCO),
        ("GET", "/api/v1/risk/profiles", None),
        ("POST", "/api/v1/risk/profiles/dry-run", TOBACCO),
        ("GET", "/api/v1/risk/targets", None),
        ("POST", "/api/v1/risk/targets", {}),
        ("GET", "/api/v1/inspections", None),
        ("POST", "/api/v1/offences", {"kind": "OTHER", "vehicle": "AB1"}),
        ("GET", "/api/v1/kiosk/clearances", None),
        ("GET", "/api/v1/transhipments/overdue", None),
    ]:
        r = client.request(method, url, json=body, headers=key)
        assert r.status_code == 403, (method, url, r.text)


def test_dry_run_lists_the_live_consignments_a_profile_would_select(b, gw, client):
    hit = consignments.lodge(gw, b.filer, cigarettes("C1")).view["ccrn"]
    consignments.lodge(gw, b.filer, record(submitter_reference="T1"))
    r = client.post("/api/v1/risk/profiles/dry-run", json=TOBACCO, headers=bearer(b.officer_key))
    assert r.status_code == 200, r.text
    assert r.json()["hits"] == 1 and r.json()["selected"] == 1
    assert r.json()["consignments"] == [{"ccrn": hit, "score": 100, "selected": True, "newly_selected": True}]
    assert client.get("/api/v1/risk/profiles", headers=bearer(b.officer_key)).json()["profiles"] == []


def test_targets_are_added_listed_and_revoked(b, gw, client):
    officer = bearer(b.officer_key)
    body = {
        "kind": "VEHICLE",
        "value": "ab 1234",
        "action": "INSPECT",
        "reason": "seen at STK",
        "expires_at": EXPIRES,
    }
    r = client.post("/api/v1/risk/targets", json=body, headers=officer)
    assert r.status_code == 201, r.text
    assert r.json()["value"] == "AB1234"
    (listed,) = client.get("/api/v1/risk/targets", headers=officer).json()["targets"]
    assert listed["reason"] == "seen at STK"
    assert client.delete(f"/api/v1/risk/targets/{listed['target_id']}", headers=officer).status_code == 200
    assert client.get("/api/v1/risk/targets", headers=officer).json()["targets"] == []
    bad = {"kind": "SHIP", "value": "", "action": "LOOK", "expires_at": "2020-01-01T00:00:00+08:00"}
    r = client.post("/api/v1/risk/targets", json=bad, headers=officer)
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"kind", "value", "action", "reason", "expires_at"}


def test_a_release_target_overrides_the_profile_at_the_kiosk(b, gw, client):
    officer = bearer(b.officer_key)
    pid = client.post("/api/v1/risk/profiles", json=TOBACCO, headers=officer).json()["profile_id"]
    body = {
        "kind": "PARTY",
        "value": b.filer.party_id,
        "action": "RELEASE",
        "profile_id": pid,
        "reason": "authorised economic operator",
        "expires_at": EXPIRES,
    }
    assert client.post("/api/v1/risk/targets", json=body, headers=officer).status_code == 201
    ccrn = consignments.lodge(gw, b.filer, cigarettes("C1")).view["ccrn"]
    b.bundle([ccrn])
    b.wait_lead_time()
    r = client.post("/api/v1/kiosk/clearances", json=b.arrive(), headers=bearer(b.kiosk_key))
    assert r.json()["decision"] == "RELEASE"


def test_a_kiosk_sending_its_request_again_after_a_lost_release_gets_it_again(b, gw, client, clock):
    ccrn = consignments.lodge(gw, b.filer, record(submitter_reference="R1")).view["ccrn"]
    b.bundle([ccrn])
    b.wait_lead_time()
    kiosk = bearer(b.kiosk_key)
    first = client.post("/api/v1/kiosk/clearances", json=b.arrive(), headers=kiosk)
    assert (first.status_code, first.json()["decision"]) == (200, "RELEASE")
    clock.advance(timedelta(seconds=5))
    again = client.post("/api/v1/kiosk/clearances", json=b.arrive(), headers=kiosk)
    assert (again.status_code, again.json()) == (200, first.json())
    seen = client.get("/api/v1/kiosk/clearances?vehicle=AB1234", headers=bearer(b.officer_key)).json()
    assert [c["decision"] for c in seen["clearances"]] == ["RELEASE"]  # decided once
    assert len(b.immigration.calls) == 1


def test_officers_record_offences_which_feed_offences_last_90_days(b, gw, client, clock):
    officer = bearer(b.officer_key)
    client.post(
        "/api/v1/risk/profiles",
        json={
            "name": "repeat offender",
            "weight": 100,
            "conditions": [{"field": "offences_last_90_days", "op": "gt", "values": [0]}],
        },
        headers=officer,
    )
    r = client.post(
        "/api/v1/offences",
        json={"kind": "OTHER", "party_id": b.filer.party_id, "details": "false invoice"},
        headers=officer,
    )
    assert r.status_code == 201, r.text
    assert client.get("/api/v1/offences", headers=officer).json()["offences"][0]["details"] == "false invoice"
    ccrn = consignments.lodge(gw, b.filer, record(submitter_reference="X1")).view["ccrn"]
    assert results(gw, ccrn)[0].selected
    clock.advance(timedelta(days=91))
    other = consignments.lodge(
        gw, b.filer, record(submitter_reference="X2", expected_crossing="2027-03-03")
    ).view["ccrn"]
    assert not results(gw, other)[0].selected
    r = client.post("/api/v1/offences", json={"kind": "SPEEDING"}, headers=officer)
    assert r.status_code == 422 and {e["field"] for e in r.json()["errors"]} == {"kind", "party_id"}


# -- profiling along the lifecycle ---------------------------------------------------------------------


def test_profiling_runs_on_lodge_amend_bundle_and_profile_change(b, gw):
    ccrn = consignments.lodge(gw, b.filer, record(submitter_reference="L1")).view["ccrn"]
    (first,) = results(gw, ccrn)
    assert (first.version, first.trigger, first.selected, first.score) == (1, "LODGE", False, 0)
    pid = risk_admin.create_profile(gw, b.officer, TOBACCO)["profile_id"]
    consignments.amend(gw, b.filer, ccrn, cigarettes("L1"))
    amended = results(gw, ccrn)[-1]
    assert (amended.version, amended.trigger, amended.selected) == (2, "AMEND", True)
    assert json.loads(amended.hits)[0]["name"] == TOBACCO["name"]
    b.bundle([ccrn])
    bundled = results(gw, ccrn)[-1]
    assert (bundled.trigger, bundled.vehicle) == ("BUNDLE", "AB1234")
    view = risk_admin.change_profile(gw, b.officer, pid, {**TOBACCO, "weight": 10})
    assert view["reprofiled"] == 1
    changed = results(gw, ccrn)[-1]
    assert (changed.trigger, changed.selected, changed.score) == ("PROFILE", False, 10)
    # An amendment that changes nothing profiles nothing.
    consignments.amend(gw, b.filer, ccrn, cigarettes("L1"))
    assert results(gw, ccrn)[-1].trigger == "PROFILE"


def test_a_new_profile_reprofiles_only_the_live_consignments_it_concerns(b, gw):
    hit = consignments.lodge(gw, b.filer, cigarettes("C1")).view["ccrn"]
    miss = consignments.lodge(gw, b.filer, record(submitter_reference="T1")).view["ccrn"]
    gone = consignments.lodge(gw, b.filer, cigarettes("C2")).view["ccrn"]
    consignments.cancel(gw, b.filer, gone)
    assert risk_admin.create_profile(gw, b.officer, TOBACCO)["reprofiled"] == 1
    assert results(gw, hit)[-1].selected and results(gw, hit)[-1].trigger == "PROFILE"
    assert results(gw, miss)[-1].trigger == "LODGE"
    assert results(gw, gone)[-1].trigger == "LODGE"


def test_a_batch_lodge_profiles_every_consignment(b, gw):
    risk_admin.create_profile(gw, b.officer, TOBACCO)
    batch = [
        Submission("lodge", record=cigarettes(f"B{i}") if i % 3 == 0 else record(submitter_reference=f"B{i}"))
        for i in range(300)
    ]
    outcomes = consignments.submit(gw, b.filer, batch)
    with gw.engine.connect() as conn:
        rows = {r.ccrn: r for r in conn.execute(select(tables.risk_results))}
    assert len(rows) == 300
    for i, outcome in enumerate(outcomes):
        assert rows[outcome.view["ccrn"]].selected == (i % 3 == 0)


def test_first_time_filer_until_a_consignment_of_theirs_has_crossed(b, gw):
    risk_admin.create_profile(
        gw,
        b.officer,
        {
            "name": "newcomer",
            "weight": 100,
            "conditions": [{"field": "first_time_filer", "op": "eq", "values": [True]}],
        },
    )
    from gateway import clearance

    ccrn = consignments.lodge(gw, b.filer, record(submitter_reference="N1")).view["ccrn"]
    assert results(gw, ccrn)[-1].selected
    risk_admin.add_target(
        gw,
        b.officer,
        {
            "kind": "PARTY",
            "value": b.filer.party_id,
            "action": "RELEASE",
            "reason": "vetted",
            "expires_at": "2026-12-01T12:00:00+08:00",
        },
    )
    b.bundle([ccrn])
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "RELEASE"
    later = consignments.lodge(gw, b.filer, record(submitter_reference="N2")).view["ccrn"]
    assert not results(gw, later)[-1].selected


def test_hours_from_amendment_to_crossing_is_measured_at_the_kiosk(b, gw, clock):
    risk_admin.create_profile(
        gw,
        b.officer,
        {
            "name": "late change",
            "weight": 100,
            "conditions": [{"field": "hours_from_amendment_to_crossing", "op": "lt", "values": [1]}],
        },
    )
    ccrn = consignments.lodge(gw, b.filer, record(submitter_reference="H1")).view["ccrn"]
    b.bundle([ccrn])
    clock.advance(timedelta(hours=2))
    consignments.amend(gw, b.filer, ccrn, record(submitter_reference="H1", vehicle_hint="AB1234"))
    b.wait_lead_time()
    from gateway import clearance

    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "INSPECT"


# -- no tipping off ------------------------------------------------------------------------------------

SECRET_WORDS = (
    "tobacco-smuggling-route-7",
    "informant said so",
    "score",
    "draw",
    "hits",
    "target",
    "RANDOM",
    "SCORE",
    "profile",
)


def assert_no_risk(text):
    lowered = text.lower()
    for word in SECRET_WORDS:
        assert word.lower() not in lowered, (word, text)


def test_no_tipping_off_to_filers_drivers_kiosks_or_the_feed(b, gw, client):
    officer = bearer(b.officer_key)
    client.post("/api/v1/risk/profiles", json=TOBACCO, headers=officer)
    r = client.post("/api/v1/consignments", json=cigarettes("S1"), headers=bearer(b.filer_key))
    ccrn = r.json()["ccrn"]
    seen = [r.text]
    client.post(
        "/api/v1/risk/targets",
        json={
            "kind": "CCRN",
            "value": ccrn,
            "action": "INSPECT",
            "reason": "informant said so",
            "expires_at": EXPIRES,
        },
        headers=officer,
    )
    r = client.post(
        "/api/v1/bundles",
        json={"vehicle": "AB1234", "control_point": "LMC", "ccrns": [ccrn]},
        headers=bearer(b.driver_key),
    )
    seen.append(r.text)
    bundle_id = r.json()["bundle_id"]
    b.wait_lead_time()
    r = client.post("/api/v1/kiosk/clearances", json=b.arrive(), headers=bearer(b.kiosk_key))
    assert r.json() == {"decision": "INSPECT", "reasons": ["SELECTED_FOR_INSPECTION"], "ccrns": [ccrn]}
    seen.append(r.text)
    for url, key in [
        (f"/api/v1/consignments/{ccrn}", b.filer_key),
        (f"/api/v1/consignments/{ccrn}/versions", b.filer_key),
        ("/api/v1/consignments", b.filer_key),
        (f"/api/v1/bundles/{bundle_id}", b.driver_key),
    ]:
        r = client.get(url, headers=bearer(key))
        assert r.status_code == 200, (url, r.text)
        seen.append(r.text)
    for text in seen:
        assert_no_risk(text)
    with gw.engine.connect() as conn:
        for data in conn.scalars(select(tables.events.c.data)):
            assert_no_risk(data)
    # Officers see all of it.
    (case,) = client.get("/api/v1/inspections", headers=officer).json()["inspections"]
    picked = case["selection"]["consignments"][ccrn]
    assert (
        picked["hits"][0]["name"] == TOBACCO["name"] and picked["targets"][0]["reason"] == "informant said so"
    )
    assert "draw" in picked and picked["score"] == 100


# -- the done-when story of issue 7 --------------------------------------------------------------------


def test_done_when_story_over_http(b, gw, client, party, clock):
    gw.config = dataclasses.replace(gw.config, immigration=ImmigrationConfig(timeout_ms=100))
    officer, kiosk = bearer(b.officer_key), bearer(b.kiosk_key)
    _air, air_key = party.add(role="agency", name="Airport Authority", scope="airport")

    def lodge(data):
        r = client.post("/api/v1/consignments", json=data, headers=bearer(b.filer_key))
        assert r.status_code == 201, r.text
        return r.json()["ccrn"]

    def bundle(vehicle, ccrns):
        r = client.post(
            "/api/v1/bundles",
            json={"vehicle": vehicle, "control_point": "LMC", "ccrns": ccrns},
            headers=bearer(b.driver_key),
        )
        assert r.status_code == 201, r.text

    def arrive(vehicle, key=kiosk, **extra):
        r = client.post("/api/v1/kiosk/clearances", json=b.arrive(vehicle=vehicle, **extra), headers=key)
        assert r.status_code == 200, r.text
        return r.json()

    assert client.post("/api/v1/risk/profiles", json=TOBACCO, headers=officer).status_code == 201
    client.post(
        "/api/v1/risk/targets",
        json={
            "kind": "VEHICLE",
            "value": "TG1",
            "action": "INSPECT",
            "reason": "watchlist",
            "expires_at": EXPIRES,
        },
        headers=officer,
    )
    clean = lodge(record(submitter_reference="CLEAN"))
    smokes = lodge(cigarettes("SMOKES"))
    targeted = lodge(record(submitter_reference="TGT"))
    refused = lodge(record(submitter_reference="REF"))
    referred = lodge(record(submitter_reference="RFR"))
    slow = lodge(record(submitter_reference="SLOW"))
    l2a = lodge(record(submitter_reference="L2A", transhipment={"mode": "LAND_TO_AIR", "flight": "CX880"}))
    a2l = lodge(record(submitter_reference="A2L", direction="EXPORT", transhipment={"mode": "AIR_TO_LAND"}))
    for vehicle, ccrn in [
        ("CL1", clean),
        ("SM1", smokes),
        ("TG1", targeted),
        ("RF1", refused),
        ("RR1", referred),
        ("SL1", slow),
        ("LA1", l2a),
    ]:
        bundle(vehicle, [ccrn])
    r = client.post(
        f"/api/v1/transhipments/{a2l}/airport",
        json={"decision": "INSPECTED", "elock_id": "EL-A"},
        headers=bearer(air_key),
    )
    assert r.status_code == 200, r.text
    bundle("AL1", [a2l])
    b.wait_lead_time()

    assert arrive("CL1") == {"decision": "RELEASE", "reasons": [], "ccrns": [clean]}
    out = arrive("SM1")
    assert out == {"decision": "INSPECT", "reasons": ["SELECTED_FOR_INSPECTION"], "ccrns": [smokes]}
    assert_no_risk(json.dumps(out))
    (case,) = client.get("/api/v1/inspections", headers=officer).json()["inspections"]
    assert case["selection"]["consignments"][smokes]["hits"][0]["name"] == TOBACCO["name"]
    assert arrive("TG1")["decision"] == "INSPECT"
    b.immigration.answer = "REFUSED"
    assert arrive("RF1")["decision"] == "REFUSE"
    b.immigration.answer = "REFER"
    assert arrive("RR1") == {"decision": "NOT_READY", "reasons": ["IMMIGRATION_REFER"], "ccrns": [referred]}
    gw.immigration = FakeImmigration("CLEARED", delay=0.5)
    assert arrive("SL1")["reasons"] == ["IMMIGRATION_UNAVAILABLE"]
    gw.immigration = b.immigration
    b.immigration.answer = "CLEARED"

    # Land to air: released here with its e-lock, confirmed at the airport, never inspected.
    assert arrive("LA1", elock_id="EL-L")["decision"] == "RELEASE"
    r = client.post(
        f"/api/v1/transhipments/{l2a}/arrival",
        json={"elock_id": "EL-L", "intact": True},
        headers=bearer(air_key),
    )
    assert r.json()["status"] == "CONFIRMED"
    # Air to land: inspected at the airport, so not selected again here (though the profile-free record
    # would pass anyway, a random rate of 1 would select anything profiled).
    gw.config = dataclasses.replace(gw.config, risk=dataclasses.replace(gw.config.risk, random_rate=1.0))
    assert arrive("AL1", elock_id="EL-A")["decision"] == "RELEASE"
    cases = client.get("/api/v1/inspections?status=ALL", headers=officer).json()["inspections"]
    inspected = [c for case in cases for c in case["ccrns"]]
    assert inspected.count(l2a) == 0 and inspected.count(a2l) == 0
    statuses = {
        c: client.get(f"/api/v1/consignments/{c}", headers=bearer(b.filer_key)).json()["status"]
        for c in (clean, smokes, targeted, refused, referred, slow, l2a, a2l)
    }
    assert statuses == {
        clean: "CROSSED",
        smokes: "ARRIVED",
        targeted: "ARRIVED",
        refused: "ARRIVED",
        referred: "BUNDLED",
        slow: "BUNDLED",
        l2a: "CROSSED",
        a2l: "CROSSED",
    }
    r = client.post(f"/api/v1/inspections/{case['inspection_id']}/release", headers=officer)
    assert r.status_code == 200, r.text
    assert (
        client.get(f"/api/v1/consignments/{smokes}", headers=bearer(b.filer_key)).json()["status"]
        == "CROSSED"
    )


def _inspected(b: Any, gw: Any, client: Any) -> tuple[str, str, str]:
    """A bundled consignment of a profiled HS code, sent to inspection by the kiosk: its CCRN, its
    bundle and the inspection's release path (PostgreSQL, whose row locks the callers test)."""
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's row locks (SQLite takes one writer at a time)")
    risk_admin.create_profile(gw, b.officer, TOBACCO)
    ccrn = b.lodge(items=cigarettes("SMOKES")["items"])
    bundle_id = b.bundle([ccrn])["bundle_id"]
    b.wait_lead_time()
    kiosk = client.post("/api/v1/kiosk/clearances", json=b.arrive(), headers=bearer(b.kiosk_key))
    assert kiosk.json()["decision"] == "INSPECT", kiosk.text
    (case,) = client.get("/api/v1/inspections", headers=bearer(b.officer_key)).json()["inspections"]
    return ccrn, bundle_id, f"/api/v1/inspections/{case['inspection_id']}/release"


def test_an_officer_release_waits_for_a_kiosk_holding_the_bundle_instead_of_deadlocking(b, gw, client):
    """The release of an inspection locks the bundle before its consignments, as the kiosk does (the
    bundle, then its members): while another transaction holds the bundle, the release waits without
    holding a consignment, so that transaction can still take the consignments and finish, and then the
    release goes through. In the other order the two deadlocked and PostgreSQL undid one of them."""
    ccrn, bundle_id, release = _inspected(b, gw, client)
    officer = bearer(b.officer_key)
    answer: list[Any] = []
    with gw.engine.connect() as other:
        other.execute(sql("SET deadlock_timeout = '30s'"))  # in a deadlock, the release's side undone
        other.execute(sql("SELECT 1 FROM bundles WHERE bundle_id = :b FOR UPDATE"), {"b": bundle_id})
        officer_thread = threading.Thread(target=lambda: answer.append(client.post(release, headers=officer)))
        officer_thread.start()
        wait_for_a_lock_wait(gw, "the release")  # the release waits for the bundle
        other.execute(sql("SELECT 1 FROM consignments WHERE ccrn = :c FOR UPDATE"), {"c": ccrn})
        assert not answer  # the release is still waiting
        other.rollback()
    officer_thread.join(timeout=30)
    (r,) = answer
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "RELEASED"
    assert (
        client.get(f"/api/v1/consignments/{ccrn}", headers=bearer(b.filer_key)).json()["status"] == "CROSSED"
    )


def test_an_officer_whose_release_collides_with_another_change_is_told_so_and_can_retry(b, gw, client):
    """A transaction that holds a consignment and then wants its bundle (none of the gateway's: they all
    lock the bundle first) deadlocks with the release of its inspection; PostgreSQL undoes the release.
    The officer is told that, not that the database is down; nothing of the release is kept, and the same
    request again goes through."""
    ccrn, bundle_id, release = _inspected(b, gw, client)
    officer = bearer(b.officer_key)
    answer: list[Any] = []
    with gw.engine.connect() as other:
        other.execute(sql("SET deadlock_timeout = '30s'"))  # the release's side is the one undone
        other.execute(sql("SELECT 1 FROM consignments WHERE ccrn = :c FOR UPDATE"), {"c": ccrn})
        officer_thread = threading.Thread(target=lambda: answer.append(client.post(release, headers=officer)))
        officer_thread.start()
        wait_for_a_lock_wait(gw, "the release")  # the release holds the bundle and waits for the consignment
        other.execute(sql("SELECT 1 FROM bundles WHERE bundle_id = :b FOR UPDATE"), {"b": bundle_id})
        officer_thread.join(timeout=30)
        other.rollback()
    (r,) = answer
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    (error,) = r.json()["errors"]
    assert error["code"] == "UNAVAILABLE" and "collided" in error["message"], error
    inspection = release.removesuffix("/release")
    assert client.get(inspection, headers=officer).json()["status"] == "OPEN"
    assert client.post(release, headers=officer).status_code == 200
    assert (
        client.get(f"/api/v1/consignments/{ccrn}", headers=bearer(b.filer_key)).json()["status"] == "CROSSED"
    )
