"""Bundling (design sections 4, 5 and 6) through the service layer, on SQLite and PostgreSQL."""

import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from gateway import bundles, consignments, parties, risk_admin, slots, tables
from gateway.clock import HONG_KONG
from gateway.context import SYSTEM
from gateway.errors import GatewayError
from tests.conftest import NOW
from tests.factories import record


@pytest.fixture
def filer(party):
    return party.add(name="Forwarder")[0]


@pytest.fixture
def driver(party):
    return party.add(role="driver", name="Driver One")[0]


def lodge(gw, filer, n=1, **overrides):
    return [
        consignments.lodge(
            gw, filer, record(submitter_reference=f"REF{i}-{overrides.get('direction', 'I')}", **overrides)
        ).view["ccrn"]
        for i in range(n)
    ]


def codes(err):
    return [(p.code, p.field) for p in err.value.problems]


def test_bundle_gives_earliest_crossing_and_slot(gw, filer, driver):
    ccrns = lodge(gw, filer, 2)
    b = bundles.bundle(gw, driver, "ab 1234", "LMC", ccrns)
    assert b["vehicle"] == "AB1234" and b["driver"] == driver.party_id
    assert b["ccrns"] == ccrns and b["status"] == "LIVE"
    earliest = datetime.fromisoformat(b["earliest_crossing"])
    assert earliest == NOW + timedelta(minutes=30)
    start = datetime.fromisoformat(b["slot"]["start"])
    end = datetime.fromisoformat(b["slot"]["end"])
    assert start <= earliest < end and end - start == timedelta(minutes=15)
    view = consignments.get(gw, filer, ccrns[0])
    assert (view["status"], view["status_version"]) == ("BUNDLED", 2)
    assert view["bundle"]["vehicle"] == "AB1234"
    assert view["bundle"]["earliest_crossing"] == b["earliest_crossing"]


def test_amending_after_bundling_moves_the_earliest_crossing(gw, filer, driver, clock):
    ccrns = lodge(gw, filer, 2)
    b = bundles.bundle(gw, driver, "AB1234", "LMC", ccrns)
    clock.advance(timedelta(minutes=20))
    changed = record(submitter_reference="REF0-I")
    changed["items"][0]["package_count"] = 39
    consignments.amend(gw, filer, ccrns[0], changed)
    after = bundles.get(gw, driver, b["bundle_id"])
    assert datetime.fromisoformat(after["earliest_crossing"]) == NOW + timedelta(minutes=50)
    assert datetime.fromisoformat(after["slot"]["end"]) > datetime.fromisoformat(after["earliest_crossing"])
    identical = consignments.amend(gw, filer, ccrns[1], record(submitter_reference="REF1-I"))
    assert not identical.changed
    assert bundles.get(gw, driver, b["bundle_id"])["earliest_crossing"] == after["earliest_crossing"]


def test_amendment_cannot_move_a_bundled_consignment_elsewhere(gw, filer, driver):
    (ccrn,) = lodge(gw, filer)
    bundles.bundle(gw, driver, "AB1234", "LMC", [ccrn])
    with pytest.raises(GatewayError) as err:
        consignments.amend(gw, filer, ccrn, record(submitter_reference="REF0-I", control_point="MKT"))
    assert codes(err) == [("BUNDLE_MISMATCH", "control_point")]


def test_double_bundling_is_refused_and_changes_nothing(gw, filer, driver, party):
    ccrns = lodge(gw, filer, 3)
    bundles.bundle(gw, driver, "AB1234", "LMC", ccrns[:2])
    other, _ = party.add(role="driver", name="Driver Two")
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, other, "CD5678", "LMC", [ccrns[2], ccrns[1]])
    assert codes(err) == [("ALREADY_BUNDLED", "ccrns[1]")]
    assert consignments.get(gw, filer, ccrns[2])["status"] == "LODGED"
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, other, "ab1234", "LMC", [ccrns[2]])
    assert codes(err) == [("ALREADY_BUNDLED", "vehicle")]
    assert consignments.get(gw, filer, ccrns[2])["status"] == "LODGED"


def test_every_bad_ccrn_is_named_and_nothing_changes(gw, filer, driver, clock):
    good, cancelled = lodge(gw, filer, 2)
    consignments.cancel(gw, filer, cancelled)
    exported = consignments.lodge(gw, filer, record(submitter_reference="EXP", direction="EXPORT")).view[
        "ccrn"
    ]
    elsewhere = consignments.lodge(gw, filer, record(submitter_reference="MKT", control_point="MKT")).view[
        "ccrn"
    ]
    mistyped = good[:11] + str((int(good[11]) + 1) % 10)
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, driver, "AB1234", "LMC", [good, cancelled, "000000000000", mistyped])
    assert codes(err) == [("CCRN_CHECK_DIGIT", "ccrns[3]")]  # check digits first, before any lookup
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, driver, "AB1234", "LMC", [good, cancelled, "000000000000", exported, elsewhere])
    assert codes(err) == [
        ("INVALID_STATE", "ccrns[1]"),
        ("NOT_FOUND", "ccrns[2]"),
        ("BUNDLE_MISMATCH", "ccrns[3]"),
        ("BUNDLE_MISMATCH", "ccrns[4]"),
    ]
    assert consignments.get(gw, filer, good)["status"] == "LODGED"
    with gw.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tables.bundles)) == 0
        assert conn.scalar(select(func.sum(tables.slot_bookings.c.booked))) in (None, 0)


def test_expired_consignment_cannot_be_bundled(gw, filer, driver, clock):
    (ccrn,) = lodge(gw, filer)
    clock.advance(timedelta(days=9))
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, driver, "AB1234", "LMC", [ccrn])
    assert codes(err) == [("EXPIRED", "ccrns[0]")]


@pytest.mark.parametrize(
    ("vehicle", "cp", "ccrns", "expected"),
    [
        ("AB1234", "LMC", [], [("MISSING_FIELD", "ccrns")]),
        ("AB1234", "LMC", ["000000000000"] * 1000, [("INVALID_VALUE", "ccrns")]),
        ("IO1234", "LMC", None, [("INVALID_VALUE", "vehicle")]),
        ("", "LMC", None, [("INVALID_VALUE", "vehicle")]),
        ("AB1234", "XXX", None, [("INVALID_CODE", "control_point")]),
    ],
)
def test_bad_requests(gw, filer, driver, vehicle, cp, ccrns, expected):
    good = lodge(gw, filer)
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, driver, vehicle, cp, good if ccrns is None else ccrns)
    assert codes(err) == expected


def test_only_drivers_and_service_providers_bundle(gw, filer, party, driver):
    ccrns = lodge(gw, filer)
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, filer, "AB1234", "LMC", ccrns)
    assert codes(err)[0][0] == "FORBIDDEN"
    provider, _ = party.add(role="service_provider", name="Provider")
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, provider, "AB1234", "LMC", ccrns)
    assert codes(err) == [("MISSING_FIELD", "driver")]
    b = bundles.bundle(gw, provider, "AB1234", "LMC", ccrns, driver=driver.party_id)
    assert b["driver"] == driver.party_id
    assert bundles.get(gw, driver, b["bundle_id"])["bundle_id"] == b["bundle_id"]
    assert bundles.get(gw, provider, b["bundle_id"])["bundle_id"] == b["bundle_id"]
    with pytest.raises(GatewayError) as err:
        bundles.get(gw, filer, b["bundle_id"])
    assert codes(err) == [("NOT_FOUND", "bundle_id")]


def test_suspended_driver_cannot_bundle(gw, filer, party):
    driver, key = party.add(role="driver", name="D")
    parties.suspend(gw, SYSTEM, driver.party_id)
    with pytest.raises(GatewayError) as err:
        bundles.bundle(gw, parties.authenticate(gw, key, "http"), "AB1234", "LMC", lodge(gw, filer))
    assert codes(err)[0][0] == "FORBIDDEN"


def test_unbundle_frees_consignments_vehicle_and_slot(gw, filer, driver):
    ccrns = lodge(gw, filer, 2)
    b = bundles.bundle(gw, driver, "AB1234", "LMC", ccrns)
    out = bundles.unbundle(gw, driver, b["bundle_id"])
    assert out["status"] == "UNBUNDLED"
    view = consignments.get(gw, filer, ccrns[0])
    assert (view["status"], view["status_version"], view["bundle"]) == ("LODGED", 3, None)
    with gw.engine.connect() as conn:
        assert conn.scalar(select(func.sum(tables.slot_bookings.c.booked))) == 0
    again = bundles.bundle(gw, driver, "AB1234", "LMC", ccrns)
    assert again["bundle_id"] != b["bundle_id"]
    with pytest.raises(GatewayError) as err:
        bundles.unbundle(gw, driver, b["bundle_id"])
    assert codes(err) == [("INVALID_STATE", "bundle_id")]


def test_add_and_remove_ccrns_before_crossing(gw, filer, driver, clock):
    a, b_, c = lodge(gw, filer, 3)
    b = bundles.bundle(gw, driver, "AB1234", "LMC", [a])
    clock.advance(timedelta(minutes=10))
    grown = bundles.add_ccrns(gw, driver, b["bundle_id"], [b_, c])
    assert grown["ccrns"] == [a, b_, c]
    assert datetime.fromisoformat(grown["earliest_crossing"]) == NOW + timedelta(minutes=40)
    shrunk = bundles.remove_ccrn(gw, driver, b["bundle_id"], b_)
    assert shrunk["ccrns"] == [a, c]
    assert consignments.get(gw, filer, b_)["status"] == "LODGED"
    bundles.remove_ccrn(gw, driver, b["bundle_id"], a)
    last = bundles.remove_ccrn(gw, driver, b["bundle_id"], c)
    assert last["status"] == "UNBUNDLED" and last["ccrns"] == []


def test_cancelling_a_bundled_consignment_takes_it_off_the_bundle(gw, filer, driver):
    a, b_ = lodge(gw, filer, 2)
    b = bundles.bundle(gw, driver, "AB1234", "LMC", [a, b_])
    consignments.cancel(gw, filer, a)
    assert bundles.get(gw, driver, b["bundle_id"])["ccrns"] == [b_]
    consignments.cancel(gw, filer, b_)
    assert bundles.get(gw, driver, b["bundle_id"])["status"] == "UNBUNDLED"


def test_expected_arrival_later_than_the_lead_time_picks_its_slot(gw, filer, driver):
    arrival = (NOW + timedelta(hours=5, minutes=7)).isoformat()
    b = bundles.bundle(gw, driver, "AB1234", "LMC", lodge(gw, filer), expected_arrival=arrival)
    assert b["slot"]["start"] == (NOW + timedelta(hours=5)).isoformat()


def with_control_point(gw, **changes):
    cp = dataclasses.replace(gw.config.control_points["LMC"], **changes)
    config = dataclasses.replace(gw.config, control_points={**gw.config.control_points, "LMC": cp})
    return dataclasses.replace(gw, config=config)


def test_full_slot_moves_to_the_next_and_a_full_day_is_slot_full(gw, filer, party):
    small = with_control_point(gw, slot_capacity=1, opens="10:00", closes="11:00")
    ccrns = lodge(small, filer, 3)
    starts = []
    for i, ccrn in enumerate(ccrns[:2]):
        d, _ = party.add(role="driver", name=f"D{i}")
        starts.append(bundles.bundle(small, d, f"AB{i}", "LMC", [ccrn])["slot"]["start"])
    # Earliest crossing 10:30: the 10:30 and 10:45 slots take one each, then 11:00 is closing time.
    assert [datetime.fromisoformat(s).astimezone(HONG_KONG).strftime("%H:%M") for s in starts] == [
        "10:30",
        "10:45",
    ]
    d, _ = party.add(role="driver", name="Late")
    with pytest.raises(GatewayError) as err:
        bundles.bundle(small, d, "ZZ1", "LMC", [ccrns[2]])
    assert codes(err) == [("SLOT_FULL", "control_point")]
    assert consignments.get(small, filer, ccrns[2])["status"] == "LODGED"


def test_a_hint_of_slots_all_taken_meanwhile_books_a_later_slot_of_the_day(gw):
    """with_room hands bundling the first few slots with room; when other bundlers take every one of
    them before the booking, the booking reads on and takes the next slot with room, and SLOT_FULL
    only when the day has none."""
    small = with_control_point(gw, slot_capacity=1, opens="10:00", closes="12:00")
    cp = small.config.control_points["LMC"]
    with small.engine.begin() as conn:
        hint = slots.with_room(conn, "LMC", cp, NOW)
        assert [s.astimezone(HONG_KONG).strftime("%H:%M") for s, _e in hint] == [
            "10:00",
            "10:15",
            "10:30",
            "10:45",
        ]
        for start, end in hint:  # taken by other bundlers meanwhile
            assert slots.book(conn, "LMC", cp, start, [(start, end)]) == (start, end)
        eleven = slots.book(conn, "LMC", cp, hint[-1][1])  # 11:00 taken by another too
        booked = slots.book(conn, "LMC", cp, NOW, hint)  # the stale hint: all four are full now
        assert booked[0].astimezone(HONG_KONG).strftime("%H:%M") == "11:15"
        assert eleven[0].astimezone(HONG_KONG).strftime("%H:%M") == "11:00"
        for _ in range(2):  # 11:30, 11:45, then the day is full
            slots.book(conn, "LMC", cp, NOW, hint)
        with pytest.raises(GatewayError) as err:
            slots.book(conn, "LMC", cp, NOW, hint)
    assert codes(err) == [("SLOT_FULL", "control_point")]


def test_closed_control_point_is_slot_full(gw, filer, driver):
    closed = with_control_point(gw, opens="06:00", closes="09:00")
    with pytest.raises(GatewayError) as err:
        bundles.bundle(closed, driver, "AB1234", "LMC", lodge(closed, filer))
    assert codes(err) == [("SLOT_FULL", "control_point")]


def test_two_drivers_bundling_the_same_ccrn_at_once_exactly_one_wins(gw, filer, party):
    (ccrn,) = lodge(gw, filer)
    drivers = [party.add(role="driver", name=f"D{i}")[0] for i in range(6)]
    barrier = threading.Barrier(len(drivers))

    def attempt(i):
        barrier.wait()
        try:
            return bundles.bundle(gw, drivers[i], f"CAR{i}", "LMC", [ccrn])
        except GatewayError as exc:
            return exc

    with ThreadPoolExecutor(len(drivers)) as pool:
        results = list(pool.map(attempt, range(len(drivers))))
    wins = [r for r in results if isinstance(r, dict)]
    assert len(wins) == 1
    assert {r.problems[0].code for r in results if isinstance(r, GatewayError)} == {"ALREADY_BUNDLED"}


def test_slot_capacity_holds_under_concurrent_bundling(gw, filer, party):
    tight = with_control_point(gw, slot_capacity=3, opens="10:00", closes="11:00")
    n = 16
    ccrns = lodge(tight, filer, n)
    drivers = [party.add(role="driver", name=f"D{i}")[0] for i in range(n)]
    barrier = threading.Barrier(n)

    def attempt(i):
        barrier.wait()
        try:
            return bundles.bundle(tight, drivers[i], f"V{i}", "LMC", [ccrns[i]])["slot"]["start"]
        except GatewayError as exc:
            return exc.problems[0].code

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(attempt, range(n)))
    booked = [r for r in results if r != "SLOT_FULL"]
    assert len(booked) == 6  # two slots left today (10:30, 10:45), three vehicles each
    assert all(booked.count(s) <= 3 for s in set(booked))
    with tight.engine.connect() as conn:
        assert conn.scalar(select(func.max(tables.slot_bookings.c.booked))) == 3
        assert conn.scalar(select(func.count()).select_from(tables.bundles)) == 6


def test_bundling_profiles_each_consignment_with_the_targets_on_its_filer_vehicle_and_driver(
    gw, filer, driver, party
):
    other = party.add(name="Other forwarder")[0]
    officer = party.add(role="officer", name="Officer")[0]
    for kind, value in (("PARTY", other.party_id), ("VEHICLE", "AB1234"), ("PARTY", driver.party_id)):
        target = {"kind": kind, "value": value, "action": "INSPECT", "reason": "watch"}
        risk_admin.add_target(gw, officer, {**target, "expires_at": "2026-12-09T00:00:00+08:00"})
    mine = lodge(gw, filer)[0]
    theirs = consignments.lodge(gw, other, record(submitter_reference="OTHER-1")).view["ccrn"]
    bundles.bundle(gw, driver, "AB1234", "LMC", [mine, theirs])
    with gw.engine.connect() as conn:
        found = {
            r.ccrn: (r.trigger, r.selected, sorted(json.loads(r.targets), key=lambda t: t["target_id"]))
            for r in conn.execute(
                select(tables.risk_results).where(tables.risk_results.c.ccrn.in_([mine, theirs]))
            )
        }
    assert {c: (t, s) for c, (t, s, _) in found.items()} == {mine: ("BUNDLE", True), theirs: ("BUNDLE", True)}
    assert [(t["kind"], t["value"]) for t in found[mine][2]] == [
        ("VEHICLE", "AB1234"),
        ("PARTY", driver.party_id),
    ]
    assert [(t["kind"], t["value"]) for t in found[theirs][2]] == [
        ("PARTY", other.party_id),
        ("VEHICLE", "AB1234"),
        ("PARTY", driver.party_id),
    ]
