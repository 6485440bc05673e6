"""The JSON API as a client sees it, on SQLite and PostgreSQL."""

import dataclasses
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gateway import tables
from gateway.app import create_app
from tests.factories import record


@pytest.fixture
def client(gw):
    with TestClient(create_app(gw), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def forwarder(party):
    actor, key = party.add()
    return actor, {"Authorization": f"Bearer {key}"}


def count(gw, table):
    with gw.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def errors(response):
    return [(e["code"], e["field"]) for e in response.json()["errors"]]


def test_lodge_get_amend_cancel(client, forwarder):
    _actor, auth = forwarder
    r = client.post("/api/v1/consignments", json=record(), headers=auth)
    assert r.status_code == 201, r.text
    ccrn = r.json()["ccrn"]
    assert client.get(f"/api/v1/consignments/{ccrn}", headers=auth).json()["version"] == 1
    spaced = f"{ccrn[:4]} {ccrn[4:8]} {ccrn[8:]}"
    assert client.get(f"/api/v1/consignments/{spaced}", headers=auth).json()["ccrn"] == ccrn

    again = client.post("/api/v1/consignments", json=record(), headers=auth)
    assert again.status_code == 200 and again.json()["ccrn"] == ccrn

    changed = record()
    changed["items"][0]["description"] = "wooden toy building blocks"
    r = client.put(f"/api/v1/consignments/{ccrn}", json=changed, headers=auth)
    assert r.status_code == 200 and r.json()["version"] == 2
    versions = client.get(f"/api/v1/consignments/{ccrn}/versions", headers=auth).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]

    r = client.delete(f"/api/v1/consignments/{ccrn}", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    listed = client.get("/api/v1/consignments?status=cancelled", headers=auth).json()["consignments"]
    assert [c["ccrn"] for c in listed] == [ccrn]


def test_validation_errors_are_all_listed_with_fields(client, forwarder):
    _actor, auth = forwarder
    bad = record(direction="SIDEWAYS", colour="red")
    bad["items"][0]["package_count"] = -1
    bad["equipment"][0]["number"] = "CSQU3054384"
    r = client.post("/api/v1/consignments", json=bad, headers=auth)
    assert r.status_code == 422
    assert set(errors(r)) == {
        ("INVALID_VALUE", "direction"),
        ("INVALID_VALUE", "colour"),
        ("INVALID_VALUE", "items[0].package_count"),
        ("CHECK_DIGIT", "equipment[0].number"),
    }
    assert all(e["message"] for e in r.json()["errors"])


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"direction": ', "application/json", 400, "MALFORMED"),
        (b"\xff\xfe{}", "application/json", 400, "MALFORMED"),
        (b"", "application/json", 400, "MALFORMED"),
        (b"[1,2]", "application/json", 422, "INVALID_VALUE"),
        (b"direction=IMPORT", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
def test_unreadable_bodies_get_a_clear_4xx(client, forwarder, gw, body, content_type, status, code):
    _actor, auth = forwarder
    r = client.post("/api/v1/consignments", content=body, headers={**auth, "Content-Type": content_type})
    assert r.status_code == status
    assert r.json()["errors"][0]["code"] == code
    assert count(gw, tables.consignments) == 0


def test_oversized_body_is_413_and_nothing_is_stored(gw, forwarder):
    _actor, auth = forwarder
    small = dataclasses.replace(
        gw,
        config=dataclasses.replace(
            gw.config, server=dataclasses.replace(gw.config.server, max_body_bytes=2000)
        ),
    )
    with TestClient(create_app(small)) as c:
        big = record()
        big["items"][0]["marks"] = "M" * 300
        big["items"] = big["items"] * 10
        r = c.post("/api/v1/consignments", json=big, headers=auth)
        assert r.status_code == 413
        assert r.json()["errors"][0]["code"] == "TOO_LARGE"
        assert c.post("/api/v1/consignments", json=record(), headers=auth).status_code == 201
    assert count(gw, tables.consignments) == 1


def test_wrong_check_digit_and_unknown_ccrn(client, forwarder):
    _actor, auth = forwarder
    r = client.get("/api/v1/consignments/123456789012", headers=auth)
    assert r.status_code == 422 and errors(r) == [("CCRN_CHECK_DIGIT", "ccrn")]
    r = client.get("/api/v1/consignments/000000000000", headers=auth)
    assert r.status_code == 404 and errors(r) == [("NOT_FOUND", "ccrn")]


def test_another_filers_ccrn_is_404_like_unknown(client, forwarder, party):
    _actor, auth = forwarder
    _other, other_key = party.add(name="Other")
    ccrn = client.post("/api/v1/consignments", json=record(), headers=auth).json()["ccrn"]
    other = {"Authorization": f"Bearer {other_key}"}
    for method in ("get", "delete"):
        r = getattr(client, method)(f"/api/v1/consignments/{ccrn}", headers=other)
        assert r.status_code == 404 and errors(r) == [("NOT_FOUND", "ccrn")]
    r = client.put(f"/api/v1/consignments/{ccrn}", json=record(), headers=other)
    assert r.status_code == 404
    assert client.get(f"/api/v1/consignments/{ccrn}", headers=auth).json()["status"] == "LODGED"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc", "Bearer rcg_" + "x" * 43])
def test_missing_or_unknown_keys_are_401(client, header):
    headers = {"Authorization": header} if header else {}
    r = client.post("/api/v1/consignments", json=record(), headers=headers)
    assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_key_rotation_two_live_keys_then_revoke(client, forwarder, gw):
    actor, auth = forwarder
    keys = client.get(f"/api/v1/parties/{actor.party_id}/keys", headers=auth).json()["keys"]
    assert len(keys) == 1 and keys[0]["hint"].startswith("rcg_")
    second = client.post(f"/api/v1/parties/{actor.party_id}/keys", headers=auth)
    assert second.status_code == 201
    new_auth = {"Authorization": f"Bearer {second.json()['api_key']}"}
    third = client.post(f"/api/v1/parties/{actor.party_id}/keys", headers=auth)
    assert third.status_code == 409 and third.json()["errors"][0]["code"] == "KEY_LIMIT"
    r = client.delete(f"/api/v1/parties/{actor.party_id}/keys/{keys[0]['key_id']}", headers=new_auth)
    assert r.status_code == 204
    assert client.post("/api/v1/consignments", json=record(), headers=auth).status_code == 401
    assert client.post("/api/v1/consignments", json=record(), headers=new_auth).status_code == 201


def test_officer_suspends_and_reinstates(client, forwarder, party):
    actor, auth = forwarder
    _officer, officer_key = party.add(role="officer", name="Officer")
    officer = {"Authorization": f"Bearer {officer_key}"}
    r = client.post(f"/api/v1/parties/{actor.party_id}/suspend", headers=auth)
    assert r.status_code == 403
    r = client.post(f"/api/v1/parties/{actor.party_id}/suspend", headers=officer)
    assert r.status_code == 200 and r.json()["status"] == "SUSPENDED"
    r = client.post("/api/v1/consignments", json=record(), headers=auth)
    assert r.status_code == 403 and "suspended" in r.json()["errors"][0]["message"]
    client.post(f"/api/v1/parties/{actor.party_id}/reinstate", headers=officer)
    assert client.post("/api/v1/consignments", json=record(), headers=auth).status_code == 201


def test_officer_registers_a_party_over_the_api(client, party):
    _officer, officer_key = party.add(role="officer", name="Officer")
    officer = {"Authorization": f"Bearer {officer_key}"}
    r = client.post("/api/v1/parties", json={"role": "driver", "name": "Chan Tai Man"}, headers=officer)
    assert r.status_code == 201
    body = r.json()
    assert len(body["party_id"]) == 8 and len(body["pin"]) == 6
    r = client.post("/api/v1/parties", json={"role": "kiosk", "name": "Kiosk"}, headers=officer)
    assert r.status_code == 422 and errors(r) == [("INVALID_CODE", "control_point")]


def test_only_filers_lodge(client, party):
    _driver, key = party.add(role="driver", name="Driver")
    r = client.post("/api/v1/consignments", json=record(), headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "FORBIDDEN"


def test_unknown_route_and_method_use_the_error_vocabulary(client, forwarder):
    _actor, auth = forwarder
    r = client.get("/api/v1/nothing", headers=auth)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND"
    r = client.patch("/api/v1/consignments", headers=auth)
    assert r.status_code == 405 and r.json()["errors"][0]["code"] == "METHOD_NOT_ALLOWED"


def test_raw_bodies_are_stored_before_processing_even_when_refused(client, forwarder, gw):
    _actor, auth = forwarder
    client.post(
        "/api/v1/consignments", content=b'{"oops"', headers={**auth, "Content-Type": "application/json"}
    )
    client.post("/api/v1/consignments", json=record(), headers=auth)
    with gw.engine.connect() as conn:
        bodies = [
            bytes(b)
            for b in conn.scalars(
                select(tables.raw_messages.c.body).order_by(tables.raw_messages.c.message_id)
            )
        ]
    assert bodies[0] == b'{"oops"'
    assert json.loads(bodies[1]) == record()


def test_health_ready_metrics_openapi(client, forwarder):
    _actor, auth = forwarder
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.post("/api/v1/consignments", json=record(), headers=auth)
    metrics = client.get("/metrics").text
    assert (
        'roadcargo_http_requests_total{method="POST",route="/api/v1/consignments",status="201"} 1.0'
        in metrics
    )
    assert 'roadcargo_consignment_changes_total{action="lodge",channel="http"} 1.0' in metrics
    spec = client.get("/openapi.json").json()
    record_schema = spec["components"]["schemas"]["CargoRecord"]
    assert "submitter_reference" in record_schema["required"]
    body = spec["paths"]["/api/v1/consignments"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert body == {"$ref": "#/components/schemas/CargoRecord"}


def test_database_down_is_503_with_retry_after_not_500(tmp_path):
    from gateway import db
    from gateway.context import Gateway

    down = Gateway(db.make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"))
    with TestClient(create_app(down), raise_server_exceptions=False) as c:
        r = c.post("/api/v1/consignments", json=record(), headers={"Authorization": "Bearer rcg_x"})
        assert r.status_code == 503
        assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert r.headers["Retry-After"].isdigit()
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200


def test_amending_to_another_live_reference_is_duplicate_reference(client, forwarder):
    _actor, auth = forwarder
    client.post("/api/v1/consignments", json=record(submitter_reference="A"), headers=auth)
    ccrn_b = client.post("/api/v1/consignments", json=record(submitter_reference="B"), headers=auth).json()[
        "ccrn"
    ]
    r = client.put(f"/api/v1/consignments/{ccrn_b}", json=record(submitter_reference="A"), headers=auth)
    assert r.status_code == 409 and errors(r) == [("DUPLICATE_REFERENCE", "submitter_reference")]
    assert client.get(f"/api/v1/consignments/{ccrn_b}", headers=auth).json()["submitter_reference"] == "B"


def test_a_process_with_every_database_connection_in_use_answers_503_with_retry_after(gw, db_url, forwarder):
    """A process whose connections are all held (``db.POOL_MOST``: its threads, kiosk decisions and
    background work at once) makes the next request wait for one, at most ``pool_wait``, and then answers
    503 UNAVAILABLE with Retry-After, not a 500; once one is free, the same request goes through."""
    from gateway import db
    from gateway.context import Gateway

    busy = Gateway(db.make_engine(db_url, pool_wait=0.2), gw.config, gw.clock)
    _actor, auth = forwarder
    held = []
    try:
        with TestClient(create_app(busy), raise_server_exceptions=False) as c:
            held = [busy.engine.connect() for _ in range(db.POOL_MOST)]
            r = c.post("/api/v1/consignments", json=record(), headers=auth)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
            (error,) = r.json()["errors"]
            assert error["code"] == "UNAVAILABLE" and "too busy" in error["message"]
            assert count(gw, tables.consignments) == 0
            held.pop().close()
            assert c.post("/api/v1/consignments", json=record(), headers=auth).status_code == 201
    finally:
        for conn in held:
            conn.close()
        busy.engine.dispose()
