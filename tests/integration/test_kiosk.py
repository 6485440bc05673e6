"""The one-stop kiosk (design sections 5 and 7): decisions, status moves, inspections, offences, and
failing closed on every fault."""

import dataclasses
import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, select, text

from gateway import bundles, clearance, consignments, db, risk, risk_admin, tables
from gateway.config import ImmigrationConfig
from gateway.context import Gateway
from gateway.errors import GatewayError
from tests.border_support import FakeImmigration, border

TOBACCO = {
    "name": "tobacco",
    "weight": 100,
    "conditions": [{"field": "items.hs_code", "op": "prefix", "values": ["2402"]}],
}


@pytest.fixture
def b(gw, party):
    return border(gw, party)


def tobacco_record():
    from tests.factories import record

    data = record()
    data["items"][0]["hs_code"] = "240220"
    data["items"][0]["description"] = "cigarettes"
    return data["items"]


def events(gw, ccrn):
    with gw.engine.connect() as conn:
        return [
            (r.type, r.status, r.status_version, json.loads(r.data))
            for r in conn.execute(
                select(tables.events).where(tables.events.c.ccrn == ccrn).order_by(tables.events.c.cursor)
            )
        ]


def status(gw, ccrn):
    with gw.engine.connect() as conn:
        return conn.scalar(select(tables.consignments.c.status).where(tables.consignments.c.ccrn == ccrn))


def offences(gw, kind=None):
    with gw.engine.connect() as conn:
        query = select(tables.offences)
        if kind:
            query = query.where(tables.offences.c.kind == kind)
        return conn.execute(query).all()


def test_a_clean_truck_is_released_and_its_consignments_cross(b, gw):
    ccrns = [b.lodge(), b.lodge()]
    made = b.bundle(ccrns)
    b.wait_lead_time()
    out = clearance.decide(gw, b.kiosk, b.arrive(vehicle="ab 1234"))
    assert out == {"decision": "RELEASE", "reasons": [], "ccrns": sorted(ccrns)}
    assert len(b.immigration.calls) == 1 and b.immigration.calls[0].travel_document == "K1234567"
    assert b.immigration.calls[0].driver == b.driver.party_id
    for ccrn in ccrns:
        assert status(gw, ccrn) == "CROSSED"
        kinds = [(e[0], e[1], e[2]) for e in events(gw, ccrn)]
        assert kinds[-2:] == [("ARRIVED", "ARRIVED", 3), ("CROSSED", "CROSSED", 4)]
        assert events(gw, ccrn)[-2][3]["decision"] == "RELEASE"
    assert bundles.get(gw, b.driver, made["bundle_id"])["status"] == "CROSSED"
    # The vehicle is free again: a new load can be bundled on it.
    assert b.bundle([b.lodge()])["status"] == "LIVE"


def test_arrived_consignments_are_frozen(b, gw):
    ccrn = b.lodge()
    b.bundle([ccrn])
    b.wait_lead_time()
    b.immigration.answer = "REFUSED"
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "REFUSE"
    assert status(gw, ccrn) == "ARRIVED"
    with pytest.raises(GatewayError) as err:
        consignments.cancel(gw, b.filer, ccrn)
    assert err.value.problems[0].code == "INVALID_STATE"


def test_a_selected_consignment_goes_to_inspection_and_the_officer_releases_it(b, gw):
    risk_admin.create_profile(gw, b.officer, TOBACCO)
    clean, dirty = b.lodge(), b.lodge(items=tobacco_record())
    b.bundle([clean, dirty])
    b.wait_lead_time()
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert out["decision"] == "INSPECT" and out["reasons"] == ["SELECTED_FOR_INSPECTION"]
    assert set(out) == {"decision", "reasons", "ccrns"}
    assert {status(gw, c) for c in (clean, dirty)} == {"ARRIVED"}
    assert events(gw, dirty)[-1][0] == "INSPECTION_OPENED"
    (case,) = clearance.list_inspections(gw, b.officer)
    assert case["selection"]["consignments"][dirty]["hits"][0]["name"] == "tobacco"
    assert case["selection"]["consignments"][dirty]["why"] == ["SCORE"]
    # The same truck asking again is told the same, and nothing new is opened.
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "INSPECT"
    assert len(clearance.list_inspections(gw, b.officer)) == 1
    done = clearance.close_inspection(
        gw, b.officer, case["inspection_id"], "RELEASED", {"findings": "as declared"}
    )
    assert done["status"] == "RELEASED" and done["findings"]["findings"] == "as declared"
    assert {status(gw, c) for c in (clean, dirty)} == {"CROSSED"}
    with pytest.raises(GatewayError):
        clearance.close_inspection(gw, b.officer, case["inspection_id"], "HELD", {"findings": "again"})


def test_an_inspection_held_with_undeclared_cargo_records_offences(b, gw):
    ccrn = b.lodge()
    risk_admin.add_target(
        gw,
        b.officer,
        {
            "kind": "CCRN",
            "value": ccrn,
            "action": "INSPECT",
            "reason": "tip",
            "expires_at": "2026-12-09T00:00:00+08:00",
        },
    )
    made = b.bundle([ccrn])
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "INSPECT"
    (case,) = clearance.list_inspections(gw, b.officer)
    with pytest.raises(GatewayError) as err:
        clearance.close_inspection(gw, b.officer, case["inspection_id"], "HELD", {})
    assert err.value.problems[0].field == "findings"
    clearance.close_inspection(
        gw,
        b.officer,
        case["inspection_id"],
        "HELD",
        {"findings": "200 cartons of cigarettes", "undeclared_cargo": True},
    )
    assert status(gw, ccrn) == "HELD"
    assert events(gw, ccrn)[-1][0] == "HELD"
    assert bundles.get(gw, b.driver, made["bundle_id"])["status"] == "HELD"
    found = offences(gw, "UNDECLARED_CARGO")
    assert {o.party_id for o in found} == {b.filer.party_id, b.driver.party_id}
    assert {o.vehicle for o in found} == {"AB1234"}


def test_a_targeted_vehicle_is_inspected(b, gw):
    risk_admin.add_target(
        gw,
        b.officer,
        {
            "kind": "VEHICLE",
            "value": "AB 1234",
            "action": "INSPECT",
            "reason": "watch",
            "expires_at": "2026-12-09T00:00:00+08:00",
        },
    )
    b.bundle([b.lodge()])
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "INSPECT"
    (case,) = clearance.list_inspections(gw, b.officer)
    (ccrn,) = case["ccrns"]
    assert case["selection"]["consignments"][ccrn]["targets"][0]["kind"] == "VEHICLE"


class AddsToTheBundle(FakeImmigration):
    """Clears the driver; meanwhile the driver adds a consignment of another filer to the bundle, and
    its lead time passes."""

    def __init__(self, gw, driver, bundle_id, ccrn):
        super().__init__("CLEARED")
        self.gw, self.driver, self.bundle_id, self.ccrn = gw, driver, bundle_id, ccrn

    def clear(self, query):
        bundles.add_ccrns(self.gw, self.driver, self.bundle_id, [self.ccrn])
        self.gw.clock.advance(timedelta(minutes=self.gw.config.rules.bundle_lead_minutes + 1))
        return super().clear(query)


def _a_bundle_and_a_targeted_filers_consignment(b, gw, party):
    """A bundle of one consignment, its lead time passed, and a consignment of another filer, whom a
    target selects: (that filer, the bundled CCRN, the other CCRN, the bundle)."""
    from tests.factories import record

    other, _key = party.add(name="Other forwarder")
    late = str(consignments.lodge(gw, other, record(submitter_reference="LATE-1")).view["ccrn"])
    risk_admin.add_target(
        gw,
        b.officer,
        {
            "kind": "PARTY",
            "value": other.party_id,
            "action": "INSPECT",
            "reason": "watch",
            "expires_at": "2026-12-09T00:00:00+08:00",
        },
    )
    first = b.lodge()
    made = b.bundle([first])
    b.wait_lead_time()
    return other, first, late, made


def test_a_consignment_added_while_immigration_is_asked_is_decided_with_its_targets(b, gw, party):
    """The decision is made on the bundle as it is under lock, and the targets of its members then, not
    of the members first seen (SQLite, where nothing is locked while Immigration answers)."""
    if gw.engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL holds the bundle's rows while Immigration answers: the next test")
    other, first, late, made = _a_bundle_and_a_targeted_filers_consignment(b, gw, party)
    gw.immigration = AddsToTheBundle(gw, b.driver, made["bundle_id"], late)
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert out["decision"] == "INSPECT" and out["ccrns"] == sorted([first, late])
    (case,) = clearance.list_inspections(gw, b.officer)
    assert case["selection"]["consignments"][late]["targets"][0]["value"] == other.party_id
    assert not case["selection"]["consignments"][first]["targets"]
    assert {status(gw, c) for c in (first, late)} == {"ARRIVED"}


class AddsToTheBundleMeanwhile(FakeImmigration):
    """Clears the driver; meanwhile, on another thread, the driver tries to add a consignment to the
    bundle, and is still waiting when the answer is given."""

    def __init__(self, gw, driver, bundle_id, ccrn):
        super().__init__("CLEARED")
        self.gw, self.driver, self.bundle_id, self.ccrn = gw, driver, bundle_id, ccrn
        self.outcome: list[object] = []
        self.adder = threading.Thread(target=self._add)

    def _add(self):
        try:
            self.outcome.append(bundles.add_ccrns(self.gw, self.driver, self.bundle_id, [self.ccrn]))
        except GatewayError as exc:
            self.outcome.append(exc)

    def clear(self, query):
        self.adder.start()
        self.adder.join(0.5)
        assert self.adder.is_alive()  # waiting for the bundle the decision holds
        return super().clear(query)


def test_a_consignment_added_while_immigration_is_asked_waits_for_the_decision(b, gw, party):
    """PostgreSQL: the decision holds the bundle's rows from its first look until it is recorded, so a
    consignment added meanwhile waits, the decision is made on the bundle as it was (its targets not
    applying), and the addition then finds the bundle crossed and is refused with a clear error."""
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("SQLite locks nothing while Immigration answers: the test before")
    _other, first, late, made = _a_bundle_and_a_targeted_filers_consignment(b, gw, party)
    gw.immigration = meanwhile = AddsToTheBundleMeanwhile(gw, b.driver, made["bundle_id"], late)
    out = clearance.decide(gw, b.kiosk, b.arrive())
    meanwhile.adder.join(10)
    assert (out["decision"], out["ccrns"]) == ("RELEASE", [first])
    (refused,) = meanwhile.outcome
    assert isinstance(refused, GatewayError), refused
    assert [(p.code, p.message) for p in refused.problems] == [
        ("INVALID_STATE", f"bundle {made['bundle_id']} is CROSSED")
    ]
    assert status(gw, first) == "CROSSED" and status(gw, late) == "LODGED"


def test_an_expired_target_selects_nothing(b, gw, clock):
    risk_admin.add_target(
        gw,
        b.officer,
        {
            "kind": "VEHICLE",
            "value": "AB1234",
            "action": "INSPECT",
            "reason": "watch",
            "expires_at": "2026-12-01T10:20:00+08:00",
        },
    )
    b.bundle([b.lodge()])
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "RELEASE"


def test_a_refused_driver_is_refused_even_when_the_cargo_is_selected(b, gw):
    risk_admin.add_target(
        gw,
        b.officer,
        {
            "kind": "VEHICLE",
            "value": "AB1234",
            "action": "INSPECT",
            "reason": "watch",
            "expires_at": "2026-12-09T00:00:00+08:00",
        },
    )
    b.bundle([b.lodge()])
    b.wait_lead_time()
    b.immigration.answer = "REFUSED"
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert out["decision"] == "REFUSE" and out["reasons"] == ["IMMIGRATION_REFUSED"]
    assert clearance.list_inspections(gw, b.officer) == []


class Garbage:
    def __str__(self):
        return "CLEARED"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: FakeImmigration("REFER"), "IMMIGRATION_REFER"),
        (lambda: FakeImmigration(None), "IMMIGRATION_UNAVAILABLE"),
        (lambda: FakeImmigration("cleared"), "IMMIGRATION_UNAVAILABLE"),
        (lambda: FakeImmigration("<html>502 Bad Gateway</html>"), "IMMIGRATION_UNAVAILABLE"),
        (lambda: FakeImmigration(Garbage()), "IMMIGRATION_UNAVAILABLE"),
        (lambda: FakeImmigration(error=ConnectionError("refused")), "IMMIGRATION_UNAVAILABLE"),
        (lambda: FakeImmigration(error=RuntimeError("bug in the client")), "IMMIGRATION_UNAVAILABLE"),
        (lambda: FakeImmigration("CLEARED", delay=1.0), "IMMIGRATION_UNAVAILABLE"),
        (lambda: None, "IMMIGRATION_UNAVAILABLE"),
    ],
    ids=["refer", "none", "lowercase", "html", "object", "down", "raising", "slow", "no-link"],
)
def test_immigration_not_clearing_is_not_ready_and_moves_nothing(b, gw, make, reason):
    fake = make()
    gw.config = dataclasses.replace(gw.config, immigration=ImmigrationConfig(timeout_ms=100))
    gw.immigration = fake
    ccrn = b.lodge()
    b.bundle([ccrn])
    b.wait_lead_time()
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert out["decision"] == "NOT_READY" and out["reasons"] == [reason]
    assert status(gw, ccrn) == "BUNDLED"
    if fake is not None:
        assert len(fake.calls) == 1


def test_early_arrival_is_not_ready_with_the_time_to_come_back_and_one_offence(b, gw, clock):
    ccrn = b.lodge()
    made = b.bundle([ccrn])
    for _ in range(2):
        out = clearance.decide(gw, b.kiosk, b.arrive())
        assert out["decision"] == "NOT_READY" and out["reasons"] == ["EARLY"]
        assert out["come_back_at"] == made["earliest_crossing"]
    assert b.immigration.calls == []
    assert status(gw, ccrn) == "BUNDLED"
    (offence,) = offences(gw, "EARLY_ARRIVAL")
    assert (offence.party_id, offence.vehicle) == (b.driver.party_id, "AB1234")
    clock.advance(timedelta(minutes=30))
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "RELEASE"


def test_a_late_arrival_is_cleared_and_the_lateness_recorded(b, gw, clock):
    ccrn = b.lodge()
    b.bundle([ccrn])
    clock.advance(timedelta(hours=3))
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert out["decision"] == "RELEASE" and out["reasons"] == ["LATE"]
    (row,) = clearance.list_clearances(gw, b.officer)
    assert row["late"] is True
    assert next(e for e in events(gw, ccrn) if e[0] == "ARRIVED")[3]["late"] is True


@pytest.mark.parametrize("vehicle", ["ZZ999", "AB1234"])
def test_no_bundle_or_the_wrong_control_point_is_not_ready(b, gw, vehicle):
    b.bundle([b.lodge(control_point="MKT")], control_point="MKT")
    b.wait_lead_time()
    out = clearance.decide(gw, b.kiosk, b.arrive(vehicle=vehicle))
    assert out["decision"] == "NOT_READY"
    assert out["reasons"] == (["NO_BUNDLE"] if vehicle == "ZZ999" else ["WRONG_CONTROL_POINT"])
    assert b.immigration.calls == []


def test_an_empty_vehicle_is_cleared_without_ccrns(b, gw):
    out = clearance.decide(gw, b.kiosk, b.arrive(vehicle="EM1", empty=True))
    assert out == {"decision": "RELEASE", "reasons": [], "ccrns": []}
    assert len(b.immigration.calls) == 1


def test_a_vehicle_with_a_live_bundle_cannot_declare_itself_empty(b, gw):
    b.bundle([b.lodge()])
    b.wait_lead_time()
    out = clearance.decide(gw, b.kiosk, b.arrive(empty=True))
    assert out["decision"] == "NOT_READY" and out["reasons"] == ["EMPTY_WITH_BUNDLE"]


def test_an_empty_vehicle_on_the_watchlist_is_inspected_and_found_loaded_is_an_offence(b, gw):
    risk_admin.add_target(
        gw,
        b.officer,
        {
            "kind": "VEHICLE",
            "value": "EM1",
            "action": "INSPECT",
            "reason": "watch",
            "expires_at": "2026-12-09T00:00:00+08:00",
        },
    )
    out = clearance.decide(gw, b.kiosk, b.arrive(vehicle="EM1", empty=True))
    assert out == {"decision": "INSPECT", "reasons": ["SELECTED_FOR_INSPECTION"], "ccrns": []}
    (case,) = clearance.list_inspections(gw, b.officer)
    assert case["empty"] and case["selection"]["vehicle_targets"][0]["value"] == "EM1"
    clearance.close_inspection(
        gw, b.officer, case["inspection_id"], "HELD", {"findings": "40 cartons", "loaded": True}
    )
    (offence,) = offences(gw, "EMPTY_NOT_EMPTY")
    assert offence.vehicle == "EM1"


def test_contingency_is_not_ready_until_switched_back(b, gw):
    b.bundle([b.lodge()])
    b.wait_lead_time()
    clearance.set_contingency(gw, b.officer, "LMC", True)
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert out["decision"] == "NOT_READY" and out["reasons"] == ["CONTINGENCY"]
    assert b.immigration.calls == []
    clearance.set_contingency(gw, b.officer, "LMC", False)
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "RELEASE"


class Sabotage(FakeImmigration):
    """Clears the driver, and meanwhile breaks the store the decision is about to write to."""

    def __init__(self, url):
        super().__init__("CLEARED")
        self.url = url

    def clear(self, query):
        engine = create_engine(self.url)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE clearances RENAME TO clearances_gone"))
        engine.dispose()
        return super().clear(query)


def test_a_database_fault_inside_the_decision_is_not_ready(b, gw, db_url):
    ccrn = b.lodge()
    b.bundle([ccrn])
    b.wait_lead_time()
    gw.immigration = Sabotage(db_url)
    try:
        out = clearance.decide(gw, b.kiosk, b.arrive())
    finally:
        with gw.engine.begin() as conn:
            conn.execute(text("ALTER TABLE clearances_gone RENAME TO clearances"))
    assert out == {"decision": "NOT_READY", "reasons": ["SYSTEM_FAULT"], "ccrns": []}
    assert status(gw, ccrn) == "BUNDLED"


def test_no_fault_path_yields_release(b, gw, db_url, clock):
    """Every way the decision can go wrong, one after another, on a truck that would be released."""
    gw.config = dataclasses.replace(gw.config, immigration=ImmigrationConfig(timeout_ms=100))
    ccrn = b.lodge()
    b.bundle([ccrn])
    faults = [
        lambda: None,  # early
        lambda: clock.advance(timedelta(minutes=31)),
        lambda: setattr(gw, "immigration", None),
        lambda: setattr(gw, "immigration", FakeImmigration("REFER")),
        lambda: setattr(gw, "immigration", FakeImmigration("MAYBE")),
        lambda: setattr(gw, "immigration", FakeImmigration(error=TimeoutError())),
        lambda: setattr(gw, "immigration", FakeImmigration("CLEARED", delay=0.5)),
        lambda: clearance.set_contingency(gw, b.officer, "LMC", True),
    ]
    decisions = []
    for step in faults:
        step()
        if step is faults[1]:
            gw.immigration = None
        decisions.append(clearance.decide(gw, b.kiosk, b.arrive())["decision"])
    decisions.append(clearance.decide(gw, b.kiosk, b.arrive(vehicle="ZZ9999"))["decision"])
    assert "RELEASE" not in decisions and set(decisions) == {"NOT_READY"}
    assert status(gw, ccrn) == "BUNDLED"


def test_a_kiosk_decides_only_for_its_own_control_point_and_drivers_not_at_all(b, gw, party):
    with pytest.raises(GatewayError) as err:
        clearance.decide(gw, b.kiosk, {**b.arrive(), "control_point": "MKT"})
    assert err.value.problems[0].code == "FORBIDDEN"
    with pytest.raises(GatewayError) as err:
        clearance.decide(gw, b.driver, b.arrive())
    assert err.value.problems[0].code == "FORBIDDEN"
    assert clearance.decide(gw, b.officer, b.arrive(vehicle="EM1", empty=True))["decision"] == "RELEASE"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"control_point": "LMC", "lane": "99", "vehicle": "AB1", "driver_document": "K1"}, "lane"),
        ({"control_point": "LMC", "lane": "1", "vehicle": "AB1"}, "driver_document"),
        ({"control_point": "LMC", "lane": "1", "vehicle": "IO1", "driver_document": "K1"}, "vehicle"),
        (
            {"control_point": "LMC", "lane": "1", "vehicle": "AB1", "driver_document": "K1", "empty": "yes"},
            "empty",
        ),
        ({"control_point": "XXX", "lane": "1", "vehicle": "AB1", "driver_document": "K1"}, "control_point"),
    ],
)
def test_a_bad_kiosk_request_is_an_error_naming_the_field(b, gw, body, field):
    with pytest.raises(GatewayError) as err:
        clearance.decide(gw, b.kiosk, body)
    assert field in [p.field for p in err.value.problems]


def test_offences_feed_the_profile_of_the_next_load(b, gw, clock):
    risk_admin.create_profile(
        gw,
        b.officer,
        {
            "name": "repeat",
            "weight": 100,
            "conditions": [{"field": "offences_last_90_days", "op": "gt", "values": [0]}],
        },
    )
    first = b.lodge()
    b.bundle([first])
    clearance.decide(gw, b.kiosk, b.arrive())  # early: an offence against the driver and the vehicle
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "INSPECT"


def test_a_kiosk_decision_replays_from_its_recorded_draw(b, gw):
    gw.config = dataclasses.replace(gw.config, risk=dataclasses.replace(gw.config.risk, random_rate=1.0))
    ccrn = b.lodge()
    b.bundle([ccrn])
    b.wait_lead_time()
    out = clearance.decide(gw, b.officer, b.arrive())
    assert out["decision"] == "INSPECT"
    recorded = out["detail"]["selection"]["consignments"][ccrn]
    assert recorded["why"] == ["RANDOM"]
    with gw.engine.begin() as conn:
        key = risk.secret(conn, gw)
    assert risk.draw(key, ccrn, 1) == recorded["draw"]
    replay = risk_admin.results_for(gw, b.officer, ccrn)["results"][0]
    assert replay["draw"] == replay["replayed_draw"] == recorded["draw"]


def test_the_secret_is_kept_in_the_database_and_shared(b, gw, db_url):
    with gw.engine.begin() as conn:
        first = risk.secret(conn, gw)
    other = Gateway(create_engine(db_url), gw.config, gw.clock)
    with other.engine.begin() as conn:
        assert risk.secret(conn, other) == first
    other.engine.dispose()


def test_the_secret_can_come_from_a_file(b, gw, tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"a secret held by customs only, long enough")
    gw.config = dataclasses.replace(
        gw.config, risk=dataclasses.replace(gw.config.risk, secret_file=str(path))
    )
    with gw.engine.begin() as conn:
        assert risk.secret(conn, gw) == b"a secret held by customs only, long enough"
        assert (
            conn.scalar(select(tables.settings.c.value).where(tables.settings.c.name == "risk.secret"))
            is None
        )


def test_an_expired_consignment_is_not_cleared(b, gw, clock):
    ccrn = b.lodge()
    b.bundle([ccrn])
    clock.advance(timedelta(days=9))
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert out["decision"] == "NOT_READY" and out["reasons"] == ["EXPIRED"]
    assert status(gw, ccrn) == "BUNDLED"


def test_two_processes_creating_the_secret_at_once_agree(gw, db_url):
    first, second = (Gateway(db.make_engine(db_url), gw.config, gw.clock) for _ in range(2))
    conn = first.engine.connect()
    transaction = conn.begin()
    mine = risk.secret(conn, first)  # created, not yet committed
    theirs = {}

    def other():
        with second.engine.begin() as c:
            theirs["secret"] = risk.secret(c, second)

    thread = threading.Thread(target=other)
    thread.start()
    time.sleep(0.3)  # the other one is now waiting on the first's insert (or its write lock)
    transaction.commit()
    conn.close()
    thread.join(30)
    assert theirs["secret"] == mine
    with second.engine.begin() as c:
        assert risk.secret(c, second) == mine
    first.engine.dispose()
    second.engine.dispose()


def test_after_a_refused_driver_another_driver_may_take_the_truck_through(b, gw):
    ccrn = b.lodge()
    b.bundle([ccrn])
    b.wait_lead_time()
    b.immigration.answer = "REFUSED"
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "REFUSE"
    b.immigration.answer = "CLEARED"
    assert clearance.decide(gw, b.kiosk, b.arrive(driver_document="P7654321"))["decision"] == "RELEASE"
    seen = [(e[0], e[1], e[2]) for e in events(gw, ccrn)][-3:]
    assert seen == [("ARRIVED", "ARRIVED", 3), ("ARRIVED", "ARRIVED", 4), ("CROSSED", "CROSSED", 5)]
    assert [e[3]["decision"] for e in events(gw, ccrn) if e[0] == "ARRIVED"] == ["REFUSE", "RELEASE"]


def clearances_of(gw, vehicle):
    with gw.engine.connect() as conn:
        query = select(tables.clearances).where(tables.clearances.c.vehicle == vehicle)
        return conn.execute(query.order_by(tables.clearances.c.clearance_id)).all()


def test_a_kiosk_asking_again_after_losing_its_release_gets_the_same_release(b, gw, party):
    ccrns = [b.lodge(), b.lodge()]
    b.bundle(ccrns)
    b.wait_lead_time()
    first = clearance.decide(gw, b.kiosk, b.arrive())
    assert first == {"decision": "RELEASE", "reasons": [], "ccrns": sorted(ccrns)}
    crossed = events(gw, ccrns[0])
    gw.clock.advance(timedelta(seconds=20))  # the answer was lost; the kiosk asks again
    assert clearance.decide(gw, b.kiosk, b.arrive()) == first
    # Decided once: Immigration asked once, one clearance, no event after the crossing.
    assert len(b.immigration.calls) == 1
    assert [c.decision for c in clearances_of(gw, "AB1234")] == ["RELEASE"]
    assert events(gw, ccrns[0]) == crossed and status(gw, ccrns[0]) == "CROSSED"
    # Only the kiosk that was answered is answered again: an officer asking gets a fresh decision.
    officer_view = clearance.decide(gw, b.officer, b.arrive())
    assert (officer_view["decision"], officer_view["reasons"]) == ("NOT_READY", ["NO_BUNDLE"])


@pytest.mark.parametrize(
    "change",
    ["another kiosk", "another driver document", "another lane", "too late", "after a NOT_READY"],
)
def test_a_release_is_sent_again_only_to_the_same_kiosk_driver_and_lane_soon_after(b, gw, party, change):
    b.bundle([b.lodge()])
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "RELEASE"
    kiosk, request = b.kiosk, b.arrive()
    if change == "another kiosk":
        kiosk, _key = party.add(role="kiosk", name="LMC kiosk 2", control_point="LMC")
    elif change == "another driver document":
        request["driver_document"] = "K7654321"
    elif change == "another lane":
        request["lane"] = "2"
    elif change == "too late":
        gw.clock.advance(clearance.RESEND_WINDOW + timedelta(seconds=1))
    else:  # the vehicle's last clearance is no longer the release
        other, _key = party.add(role="kiosk", name="LMC kiosk 3", control_point="LMC")
        clearance.decide(gw, other, b.arrive())
    out = clearance.decide(gw, kiosk, request)
    assert (out["decision"], out["reasons"]) == ("NOT_READY", ["NO_BUNDLE"])
    assert len(b.immigration.calls) == 1


def test_a_release_since_held_by_an_officer_is_not_sent_again(b, gw):
    b.bundle([b.lodge()])
    b.wait_lead_time()
    made = clearance.decide(gw, b.kiosk, b.arrive())
    assert made["decision"] == "RELEASE"
    with gw.engine.begin() as conn:  # whatever ended the crossing since, the release no longer stands
        conn.execute(tables.bundles.update().values(status="HELD"))
    out = clearance.decide(gw, b.kiosk, b.arrive())
    assert (out["decision"], out["reasons"]) == ("NOT_READY", ["NO_BUNDLE"])
