"""Bundling over the JSON API (design section 9)."""

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from gateway import bundles
from gateway.app import create_app
from tests.factories import record, wait_for_a_lock_wait


@pytest.fixture
def client(gw):
    with TestClient(create_app(gw), raise_server_exceptions=False) as c:
        yield c


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def lodge(client, filer_key, n):
    """CCRNs of ``n`` consignments lodged over the API (references R0, R1, ...)."""
    return [
        client.post(
            "/api/v1/consignments", json=record(submitter_reference=f"R{i}"), headers=bearer(filer_key)
        ).json()["ccrn"]
        for i in range(n)
    ]


def test_driver_bundles_unbundles_and_the_filer_sees_the_vehicle(client, party):
    _f, filer_key = party.add(name="Forwarder")
    _d, driver_key = party.add(role="driver", name="Driver")
    ccrns = lodge(client, filer_key, 2)
    r = client.post(
        "/api/v1/bundles",
        json={"vehicle": "ab 1234", "control_point": "LMC", "ccrns": ccrns},
        headers=bearer(driver_key),
    )
    assert r.status_code == 201, r.text
    b = r.json()
    assert set(b) >= {"bundle_id", "vehicle", "driver", "ccrns", "earliest_crossing", "slot"}
    assert b["ccrns"] == ccrns and b["vehicle"] == "AB1234"
    assert client.get(f"/api/v1/bundles/{b['bundle_id']}", headers=bearer(driver_key)).json() == b
    seen = client.get(f"/api/v1/consignments/{ccrns[0]}", headers=bearer(filer_key)).json()
    assert seen["status"] == "BUNDLED" and seen["bundle"]["vehicle"] == "AB1234"
    assert client.get(f"/api/v1/bundles/{b['bundle_id']}", headers=bearer(filer_key)).status_code == 404

    r = client.delete(f"/api/v1/bundles/{b['bundle_id']}/ccrns/{ccrns[1]}", headers=bearer(driver_key))
    assert r.status_code == 200 and r.json()["ccrns"] == [ccrns[0]]
    r = client.post(
        f"/api/v1/bundles/{b['bundle_id']}/ccrns", json={"ccrns": [ccrns[1]]}, headers=bearer(driver_key)
    )
    assert r.status_code == 200 and r.json()["ccrns"] == ccrns
    r = client.delete(f"/api/v1/bundles/{b['bundle_id']}", headers=bearer(driver_key))
    assert r.status_code == 200 and r.json()["status"] == "UNBUNDLED"
    assert (
        client.get(f"/api/v1/consignments/{ccrns[0]}", headers=bearer(filer_key)).json()["status"] == "LODGED"
    )


def test_a_bundle_request_sent_again_gets_the_same_bundle_and_changes_nothing(client, party):
    """A driver whose answer was lost sends the same request again: 200 with the bundle made the first
    time, not ALREADY_BUNDLED about its own bundle; any other request for those CCRNs is still refused."""
    _f, filer_key = party.add(name="Forwarder")
    _d, driver_key = party.add(role="driver", name="Driver")
    _o, other_key = party.add(role="driver", name="Relief driver")
    ccrns = lodge(client, filer_key, 3)
    body = {
        "vehicle": "ab 1234",
        "control_point": "LMC",
        "ccrns": ccrns[:2],
        "expected_arrival": "2026-12-01T12:00:00+08:00",
    }
    first = client.post("/api/v1/bundles", json=body, headers=bearer(driver_key))
    assert first.status_code == 201, first.text
    again = client.post("/api/v1/bundles", json={**body, "ccrns": ccrns[1::-1]}, headers=bearer(driver_key))
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    seen = client.get(f"/api/v1/consignments/{ccrns[0]}", headers=bearer(filer_key)).json()
    assert (seen["status"], seen["status_version"]) == ("BUNDLED", 2)

    refused = [
        (driver_key, {**body, "ccrns": ccrns}),  # one more CCRN
        (driver_key, {**body, "ccrns": ccrns[:1]}),  # one fewer
        (driver_key, {**body, "control_point": "SBC"}),
        (driver_key, {**body, "expected_arrival": "2026-12-01T13:00:00+08:00"}),
        (other_key, body),  # another driver
    ]
    for key, changed in refused:
        r = client.post("/api/v1/bundles", json=changed, headers=bearer(key))
        assert r.status_code in (409, 422), (changed, r.text)
        assert r.json()["errors"][0]["code"] in ("ALREADY_BUNDLED", "BUNDLE_MISMATCH"), r.text
    live = client.get(f"/api/v1/bundles/{first.json()['bundle_id']}", headers=bearer(driver_key)).json()
    assert live == first.json()


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"vehicle": "AB1", "control_point": "LMC", "ccrns": []}, 422, [("MISSING_FIELD", "ccrns")]),
        (
            {"vehicle": "AB1", "control_point": "LMC", "ccrns": ["123456789012"]},
            422,
            [("CCRN_CHECK_DIGIT", "ccrns[0]")],
        ),
        (
            {"vehicle": "AB1", "control_point": "LMC", "ccrns": ["000000000000"]},
            404,
            [("NOT_FOUND", "ccrns[0]")],
        ),
        (
            {"vehicle": "AB1", "control_point": "NOPE", "ccrns": ["000000000000"]},
            422,
            [("INVALID_CODE", "control_point")],
        ),
        (
            {"vehicle": "AB1", "control_point": "LMC", "ccrns": ["000000000000"], "lorry": 1},
            422,
            [("INVALID_VALUE", "lorry")],
        ),
        ([], 422, [("INVALID_VALUE", None)]),
    ],
)
def test_bad_bundle_requests(client, party, body, status, expected):
    _d, driver_key = party.add(role="driver", name="Driver")
    r = client.post("/api/v1/bundles", json=body, headers=bearer(driver_key))
    assert r.status_code == status
    assert [(e["code"], e["field"]) for e in r.json()["errors"]] == expected


def raw_messages(gw, party_id):
    import hashlib

    from sqlalchemy import select

    from gateway import tables

    t = tables.raw_messages
    with gw.engine.connect() as conn:
        rows = conn.execute(select(t.c.sha256, t.c.body, t.c.size).where(t.c.party_id == party_id)).all()
    for row in rows:
        assert hashlib.sha256(bytes(row.body)).hexdigest() == row.sha256 and len(row.body) == row.size
    return [bytes(r.body) for r in rows]


@pytest.mark.parametrize(
    "how",
    ["bundled", "refused on its face", "refused by the store", "not JSON"],
)
def test_every_bundle_request_is_kept_raw_once_whatever_its_answer(client, gw, party, how):
    """On PostgreSQL a bundle's raw message goes with its first round trip to the database, committed
    before the bundling runs (context.store_raw_ahead); a request that never reaches the database is kept
    too. Each exactly once, with its SHA-256."""
    _f, filer_key = party.add(name="Forwarder")
    driver, driver_key = party.add(role="driver", name="Driver")
    ccrns = lodge(client, filer_key, 2)
    body = {"vehicle": "AB1234", "control_point": "LMC", "ccrns": ccrns[:1]}
    expected = {"bundled": 201, "refused on its face": 422, "refused by the store": 409, "not JSON": 400}
    if how == "refused on its face":
        body["vehicle"] = "NOT A PLATE!"
    elif how == "refused by the store":  # the vehicle is in another driver's live bundle already
        _other, other_key = party.add(role="driver", name="Relief")
        first = {"vehicle": "AB1234", "control_point": "LMC", "ccrns": ccrns[1:]}
        assert client.post("/api/v1/bundles", json=first, headers=bearer(other_key)).status_code == 201
    sent = b"{not json" if how == "not JSON" else __import__("json").dumps(body).encode()
    r = client.post(
        "/api/v1/bundles",
        content=sent,
        headers={**bearer(driver_key), "Content-Type": "application/json"},
    )
    assert r.status_code == expected[how], r.text
    assert raw_messages(gw, driver.party_id) == [sent]
    # The next request of the same thread carries nothing of this one.
    r = client.get("/api/v1/bundles/B0000000000", headers=bearer(driver_key))
    assert raw_messages(gw, driver.party_id) == [sent]


@pytest.mark.parametrize("change", ["amend", "cancel"])
def test_a_filers_change_waits_for_a_driver_holding_the_bundle_instead_of_deadlocking(
    change, client, gw, party
):
    """A driver's change of a bundle (removing a CCRN, unbundling, as the kiosk's decision) locks the
    bundle, then its consignments. The filer's amendment or cancellation of a bundled consignment locks
    them in the same order: while the driver's transaction holds the bundle, the filer's waits without
    holding the consignment, the driver's takes it and finishes, and then the filer's goes through. In the
    other order the two deadlocked and PostgreSQL undid one of them."""
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's row locks (SQLite takes one writer at a time)")
    _f, filer_key = party.add(name="Forwarder")
    _d, driver_key = party.add(role="driver", name="Driver")
    (ccrn,) = lodge(client, filer_key, 1)
    made = client.post(
        "/api/v1/bundles",
        json={"vehicle": "AB1234", "control_point": "LMC", "ccrns": [ccrn]},
        headers=bearer(driver_key),
    ).json()
    changed = record(submitter_reference="R0")
    changed["items"][0]["description"] = "wooden toy building blocks"
    answer: list[Any] = []

    def filer() -> None:
        path, auth = f"/api/v1/consignments/{ccrn}", bearer(filer_key)
        if change == "amend":
            answer.append(client.put(path, json=changed, headers=auth))
        else:
            answer.append(client.delete(path, headers=auth))

    with gw.engine.connect() as driver:
        driver.execute(text("SET deadlock_timeout = '30s'"))  # in a deadlock, the filer's side undone
        driver.execute(
            text("SELECT 1 FROM bundles WHERE bundle_id = :b FOR UPDATE"), {"b": made["bundle_id"]}
        )
        thread = threading.Thread(target=filer)
        thread.start()
        wait_for_a_lock_wait(gw, f"the filer's {change}")
        # The filer's change holds nothing the driver's wants (in the other order it held the
        # consignment here, and then retried its whole batch after PostgreSQL undid it in a deadlock).
        driver.execute(text("SELECT 1 FROM consignments WHERE ccrn = :c FOR UPDATE NOWAIT"), {"c": ccrn})
        assert not answer  # the filer's change is still waiting
        driver.rollback()
    thread.join(timeout=30)
    (r,) = answer
    assert r.status_code == 200, r.text
    seen = client.get(f"/api/v1/consignments/{ccrn}", headers=bearer(filer_key)).json()
    if change == "amend":
        assert (seen["version"], seen["status"]) == (2, "BUNDLED")
    else:
        assert seen["status"] == "CANCELLED"
        gone = client.get(f"/api/v1/bundles/{made['bundle_id']}", headers=bearer(driver_key)).json()
        assert gone["status"] == "UNBUNDLED" and gone["ccrns"] == []


def test_a_bundle_id_drawn_taken_every_time_is_answered_503_with_retry_after(client, party, monkeypatch):
    """Should every bundle id drawn be taken already (five draws), the driver is told to send the same
    request again after Retry-After, with nothing accepted: the consignments stay unbundled."""
    _f, filer_key = party.add(name="Forwarder")
    _d, driver_key = party.add(role="driver", name="Driver")
    first, second = lodge(client, filer_key, 2)
    taken = client.post(
        "/api/v1/bundles",
        json={"vehicle": "AB1234", "control_point": "LMC", "ccrns": [first]},
        headers=bearer(driver_key),
    ).json()["bundle_id"]
    monkeypatch.setattr(bundles, "_new_bundle_id", lambda: taken)
    r = client.post(
        "/api/v1/bundles",
        json={"vehicle": "CD5678", "control_point": "LMC", "ccrns": [second]},
        headers=bearer(driver_key),
    )
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    (error,) = r.json()["errors"]
    assert error["code"] == "UNAVAILABLE" and "nothing was accepted" in error["message"]
    assert (
        client.get(f"/api/v1/consignments/{second}", headers=bearer(filer_key)).json()["status"] == "LODGED"
    )
    monkeypatch.undo()
    again = client.post(
        "/api/v1/bundles",
        json={"vehicle": "CD5678", "control_point": "LMC", "ccrns": [second]},
        headers=bearer(driver_key),
    )
    assert again.status_code == 201, again.text
