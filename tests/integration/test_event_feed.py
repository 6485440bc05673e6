"""The partner agencies' event feed (design sections 9 and 10) over HTTP, on SQLite and PostgreSQL:
order, resuming from a cursor, scopes, and writers committing out of order."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import pytest
from sqlalchemy import insert, select
from starlette.testclient import TestClient

from gateway import bundles, consignments, tables
from gateway.app import create_app
from tests.factories import record

TRANSHIPMENT = {"mode": "LAND_TO_AIR", "airport": "HKHKG", "air_waybill": "160-12345675", "flight": "CX880"}
# What the kiosk decision of part A might carry for officers: none of it may reach an agency.
RISKY = {"score": 150, "profiles": ["tobacco"], "risk": {"draw": 0.0123}, "reasons": ["PROFILE:tobacco"]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def world(gw, party) -> dict[str, Any]:
    """A filer's two consignments (one a land-to-air transhipment), amended, bundled and arrived."""
    filer, filer_key = party.add(name="Forwarder")
    driver, driver_key = party.add(role="driver", name="Driver One")
    keys = {
        "filer": filer_key,
        "driver": driver_key,
        "immigration": party.add(role="agency", name="Immigration Dept", scope="immigration")[1],
        "airport": party.add(role="agency", name="Airport Authority", scope="airport")[1],
        "officer": party.add(role="officer", name="Officer")[1],
        "kiosk": party.add(role="kiosk", name="Kiosk LMC 3", control_point="LMC")[1],
    }
    plain = consignments.lodge(gw, filer, record(submitter_reference="PLAIN")).view["ccrn"]
    air = record(submitter_reference="AIR", transhipment=TRANSHIPMENT)
    tranship = consignments.lodge(gw, filer, air).view["ccrn"]
    changed = record(submitter_reference="PLAIN")
    changed["items"][0]["description"] = "plastic toy building blocks and wooden puzzles"
    consignments.amend(gw, filer, plain, changed)
    made = bundles.bundle(gw, driver, "AB1234", "LMC", [plain, tranship])
    with gw.engine.begin() as conn:  # the kiosk's decision, as part A writes it, with officer-only extras
        for ccrn in (plain, tranship):
            conn.execute(
                insert(tables.events).values(
                    at=gw.now(),
                    type="ARRIVED",
                    ccrn=ccrn,
                    vehicle="AB1234",
                    status="ARRIVED",
                    status_version=4,
                    data=json.dumps(
                        {
                            "decision": "INSPECT",
                            "control_point": "LMC",
                            "lane": "3",
                            "bundle_id": made["bundle_id"],
                            "driver": driver.party_id,
                            "late": False,
                            **RISKY,
                        }
                    ),
                )
            )
    return {"keys": keys, "plain": plain, "tranship": tranship, "bundle": made, "driver": driver.party_id}


def read_all(
    client: TestClient, key: str, limit: int = 2, after: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Every event, page by page, resuming each time from the page's next_cursor."""
    events: list[dict[str, Any]] = []
    while True:
        reply = client.get(f"/api/v1/events?after={after}&limit={limit}", headers=bearer(key))
        assert reply.status_code == 200, reply.text
        page = reply.json()
        assert page["next_cursor"] >= after
        events.extend(page["events"])
        if page["next_cursor"] == after:
            return events, after
        after = page["next_cursor"]


def all_cursors(gw) -> list[int]:
    with gw.engine.connect() as conn:
        return [int(c) for c in conn.scalars(select(tables.events.c.cursor).order_by(tables.events.c.cursor))]


def test_officer_reads_every_event_in_order_and_resumes_without_gaps_or_repeats(gw, world):
    client = TestClient(create_app(gw))
    key = world["keys"]["officer"]
    whole = client.get("/api/v1/events?limit=1000", headers=bearer(key)).json()
    cursors = [e["cursor"] for e in whole["events"]]
    assert cursors == all_cursors(gw) and cursors == sorted(set(cursors))
    assert whole["next_cursor"] == cursors[-1]
    assert [e["type"] for e in whole["events"]] == [
        "LODGED",
        "LODGED",
        "AMENDED",
        "BUNDLED",
        "BUNDLED",
        "ARRIVED",
        "ARRIVED",
    ]
    for limit in (1, 2, 3):
        paged, last = read_all(client, key, limit)
        assert paged == whole["events"] and last == cursors[-1]
    resumed, _ = read_all(client, key, 2, after=cursors[2])  # a consumer that stopped after three
    assert resumed == whole["events"][3:]
    first = whole["events"][0]
    assert first["ccrn"] == world["plain"] and first["status"] == "LODGED" and first["status_version"] == 1
    assert first["at"] == "2026-12-01T10:00:00+08:00"


def test_immigration_sees_vehicles_drivers_and_decisions_never_goods_or_risk(gw, world):
    client = TestClient(create_app(gw))
    events, _ = read_all(client, world["keys"]["immigration"], limit=1)
    assert [e["type"] for e in events] == ["BUNDLED", "BUNDLED", "ARRIVED", "ARRIVED"]
    bundled, arrived = events[0], events[2]
    assert bundled["vehicle"] == "AB1234"
    assert bundled["data"]["driver"] == world["driver"] and bundled["data"]["control_point"] == "LMC"
    assert bundled["data"]["slot_start"] == world["bundle"]["slot"]["start"]
    assert arrived["data"] == {
        "bundle_id": world["bundle"]["bundle_id"],
        "control_point": "LMC",
        "driver": world["driver"],
        "lane": "3",
        "decision": "INSPECT",
        "late": False,
    }
    serialized = json.dumps(events)
    for secret in (
        "950300",  # HS code
        "12500",  # value
        "HKD",
        "480.5",  # mass
        "Shenzhen Bright Toys",  # consignor
        "Harbour Traders",  # consignee
        "plastic toy",  # description
        "cartons",
        "CSQU3054383",  # container
        "tobacco",  # a profile's name
        "score",
        "profiles",
        "risk",
        "0.0123",  # a draw
        "reasons",
        "CX880",  # the transhipment is the airport's business
        "LODGED",
        "AMENDED",
    ):
        assert secret not in serialized, secret


def test_airport_sees_only_transhipment_consignments(gw, world):
    client = TestClient(create_app(gw))
    events, _ = read_all(client, world["keys"]["airport"], limit=2)
    assert {e["ccrn"] for e in events} == {world["tranship"]}
    assert [e["type"] for e in events] == ["LODGED", "BUNDLED", "ARRIVED"]
    assert events[0]["data"]["transhipment"] == TRANSHIPMENT
    serialized = json.dumps(events)
    for secret in ("950300", "12500", "Shenzhen Bright Toys", "Harbour Traders", "plastic toy", "tobacco"):
        assert secret not in serialized, secret
    assert "score" not in serialized and "0.0123" not in serialized


def test_next_cursor_moves_past_events_the_scope_does_not_show(gw, world):
    client = TestClient(create_app(gw))
    page = client.get("/api/v1/events?limit=1", headers=bearer(world["keys"]["immigration"])).json()
    # The three lodgement and amendment events before the first bundling are passed over, not re-read.
    assert [e["type"] for e in page["events"]] == ["BUNDLED"]
    assert page["next_cursor"] == page["events"][0]["cursor"] == all_cursors(gw)[3]


@pytest.mark.parametrize("role", ["filer", "driver", "kiosk"])
def test_the_feed_is_for_agencies_and_officers_only(gw, world, role):
    client = TestClient(create_app(gw))
    reply = client.get("/api/v1/events", headers=bearer(world["keys"][role]))
    assert reply.status_code == 403
    assert reply.json()["errors"][0]["code"] == "FORBIDDEN"
    assert client.get("/api/v1/events").status_code == 401


@pytest.mark.parametrize(
    "query, field",
    [("after=abc", "after"), ("after=-1", "after"), ("limit=0", "limit"), ("limit=5000", "limit")],
)
def test_a_bad_cursor_or_limit_is_named(gw, world, query, field):
    client = TestClient(create_app(gw))
    reply = client.get(f"/api/v1/events?{query}", headers=bearer(world["keys"]["immigration"]))
    assert reply.status_code == 422
    assert [(e["code"], e["field"]) for e in reply.json()["errors"]] == [("INVALID_VALUE", field)]


def _write_event(gw, n: int, hold: float) -> int:
    """One event in a transaction that stays open ``hold`` seconds after drawing its cursor."""
    with gw.engine.begin() as conn:
        result = conn.execute(
            insert(tables.events).values(
                at=gw.now(),
                type="BUNDLED",
                ccrn=None,
                vehicle=f"TEST{n % 10000}",
                status="BUNDLED",
                status_version=1,
                data="{}",
            )
        )
        time.sleep(hold)
        return int(result.inserted_primary_key[0])  # type: ignore[index]


@pytest.mark.pg
def test_an_event_committing_late_is_not_skipped(gw, world):
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers: events commit in cursor order there")
    client = TestClient(create_app(gw))
    key = world["keys"]["officer"]
    _, last = read_all(client, key, limit=100)
    with gw.engine.connect() as slow:
        early = slow.execute(
            insert(tables.events).values(at=gw.now(), type="CROSSED", vehicle="AB1234", data="{}")
        ).inserted_primary_key[0]  # drawn first, committed last
        late = _write_event(gw, 1, 0)
        assert late > early
        try:
            page = client.get(f"/api/v1/events?after={last}", headers=bearer(key)).json()
        finally:
            slow.commit()
    assert page == {"events": [], "next_cursor": last}  # the later event waited for the earlier one
    page = client.get(f"/api/v1/events?after={last}", headers=bearer(key)).json()
    assert [e["cursor"] for e in page["events"]] == [early, late]


def test_concurrent_writers_never_make_a_resuming_consumer_miss_or_repeat(gw, world):
    client = TestClient(create_app(gw))
    key = world["keys"]["officer"]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(15):
                _write_event(gw, seed * 100 + n, rng.choice((0, 0, 0.002, 0.02)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(seed,)) for seed in range(6)]
    for thread in writers:
        thread.start()
    seen: list[int] = []
    after = 0
    while any(t.is_alive() for t in writers) or not stop.is_set():
        if not any(t.is_alive() for t in writers):
            stop.set()  # one more full read after the last writer is done
        page = client.get(f"/api/v1/events?after={after}&limit=7", headers=bearer(key)).json()
        seen.extend(e["cursor"] for e in page["events"])
        after = page["next_cursor"]
        while page["events"]:
            page = client.get(f"/api/v1/events?after={after}&limit=7", headers=bearer(key)).json()
            seen.extend(e["cursor"] for e in page["events"])
            after = page["next_cursor"]
        time.sleep(0.01)  # caught up: a consumer polls again a little later (and stays under its rate limit)
    assert errors == []
    assert seen == all_cursors(gw)  # every event once, in order
    assert len(seen) == 7 + 6 * 15


def test_end_to_end_an_immigration_agency_reads_the_kiosk_decisions_without_the_why(gw, party, tmp_path):
    """Lodge, profile, bundle, arrive with the real Immigration simulator behind the kiosk; the
    agency reads the decision from the feed, never the profile that selected the truck."""
    from adapters.immigration_client import ImmigrationClient
    from gateway import advance_notices, risk_admin
    from tests.border_support import border
    from tests.integration.test_immigration import notices, simulator

    b = border(gw, party)
    agency_key = party.add(role="agency", name="Immigration Dept", scope="immigration")[1]
    risk_admin.create_profile(
        gw,
        b.officer,
        {
            "name": "tobacco",
            "weight": 100,
            "conditions": [{"field": "items.hs_code", "op": "prefix", "values": ["2402"]}],
        },
    )
    items = record()["items"]
    items[0].update(hs_code="240220", description="cigarettes")
    ccrn = b.lodge(items=items)
    made = b.bundle([ccrn], vehicle="TB1234")
    b.wait_lead_time()
    client = TestClient(create_app(gw))
    with simulator(tmp_path) as url:
        gw.immigration = immigration = ImmigrationClient(url, 2000)
        decided = client.post(
            "/api/v1/kiosk/clearances",
            json=b.arrive(vehicle="TB1234"),
            headers=bearer(b.kiosk_key),
        )
        assert advance_notices.deliver_due(gw, immigration).delivered == 1
        listing = notices(url)
    assert decided.status_code == 200, decided.text
    assert decided.json()["decision"] == "INSPECT"
    assert [n["bundle_id"] for n in listing["notices"]] == [made["bundle_id"]]
    events, _ = read_all(client, agency_key, limit=5)
    arrived = [e for e in events if e["type"] == "ARRIVED"]
    assert [(e["ccrn"], e["vehicle"], e["data"]["decision"]) for e in arrived] == [
        (ccrn, "TB1234", "INSPECT")
    ]
    assert arrived[0]["data"]["driver"] == b.driver.party_id
    assert "INSPECTION_OPENED" in {e["type"] for e in events}
    serialized = json.dumps(events)
    for secret in ("tobacco", "240220", "cigarettes", "score", "hits", "draw", "SELECTED", "profile"):
        assert secret not in serialized, secret
