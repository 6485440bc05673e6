"""The HTTP edge of gateway.app: the route index in front of the router, the one middleware layer
(request ids, login limit, metrics by route, body limit), and the routes it serves directly."""

import dataclasses
import errno
import json
import logging
import re

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from starlette.routing import Match, Route

from adapters import http_api
from gateway import bundles, clearance, logs, tables
from gateway.app import RouteIndex, create_app
from tests.factories import record

SAMPLE = "123456789012"  # a value for every path parameter


def _scope(method, path):
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def _scanned(routes, scope):
    """The route the router's own scan would pick: the first that matches fully."""
    for route in routes:
        if isinstance(route, RouteIndex):
            continue
        match, _child = route.matches(dict(scope))
        if match is Match.FULL:
            return route
    return None


def test_the_route_index_finds_the_route_the_routers_scan_finds(gw):
    app = create_app(gw)
    index = app.router.routes[0]
    assert isinstance(index, RouteIndex)
    paths = {re.sub(r"{[^}]+}", SAMPLE, r.path_format) for r in app.routes if isinstance(r, Route)}
    paths |= {p + "/extra" for p in paths} | {"/api/v1/nothing", "/", ""}
    checked = 0
    for path in sorted(paths):
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            scope = _scope(method, path)
            expected = _scanned(app.router.routes, scope)
            match, child = index.matches(dict(scope))
            if expected is None:
                assert match is Match.NONE, (method, path)
            else:
                assert match is Match.FULL, (method, path)
                assert child[RouteIndex.FOUND] is expected, (method, path)
                checked += 1
    assert checked > 100


def test_a_route_added_after_the_app_is_made_is_found_and_earlier_routes_still_win(gw):
    app = create_app(gw)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200  # the index is built

        @app.get("/late/{anything}")
        async def late(anything: str) -> dict[str, str]:
            return {"late": anything}

        @app.get("/late/fixed")  # after the pattern that also matches it: never reached
        async def fixed() -> dict[str, str]:
            return {"fixed": "yes"}

        @app.get("/healthz")  # a second route on a path already served: the first one still answers
        async def shadowed() -> dict[str, str]:
            return {"status": "shadowed"}

        assert client.get("/late/x").json() == {"late": "x"}
        assert client.get("/late/fixed").json() == {"late": "fixed"}
        assert client.get("/healthz").json() == {"status": "ok"}


def test_errors_of_routing_keep_their_codes_and_the_slash_redirect(client_factory):
    client, auth = client_factory()
    r = client.get("/api/v1/nothing", headers=auth)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND"
    r = client.patch("/api/v1/bundles", headers=auth)
    assert r.status_code == 405 and r.json()["errors"][0]["code"] == "METHOD_NOT_ALLOWED"
    r = client.get("/api/v1/consignments/", headers=auth, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith("/api/v1/consignments")


def test_a_chunked_body_over_the_limit_is_413_with_the_request_id(gw, party):
    _actor, key = party.add()
    small = dataclasses.replace(
        gw,
        config=dataclasses.replace(
            gw.config, server=dataclasses.replace(gw.config.server, max_body_bytes=100)
        ),
    )
    with TestClient(create_app(small)) as client:

        def chunks():
            yield b'{"submitter_reference": "'
            yield b"x" * 200
            yield b'"}'

        r = client.post(
            "/api/v1/consignments",
            content=chunks(),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "X-Request-ID": "big-1",
            },
        )
        assert r.status_code == 413 and r.json()["errors"][0]["code"] == "TOO_LARGE"
        assert r.headers["x-request-id"] == "big-1"
        metrics = client.get("/metrics").text
        assert 'roadcargo_http_requests_total{method="POST",route="unmatched",status="413"} 1.0' in metrics


def test_a_login_over_its_limit_is_429_with_the_request_id_and_not_counted_by_route(gw):
    strict = dataclasses.replace(
        gw, config=dataclasses.replace(gw.config, limits=dataclasses.replace(gw.config.limits, login_burst=1))
    )
    with TestClient(create_app(strict)) as client:
        client.post("/api/v1/registrations", json={"role": "shipper", "name": "X"})
        r = client.post(
            "/api/v1/registrations", json={"role": "shipper", "name": "X"}, headers={"X-Request-ID": "l-2"}
        )
        assert (
            r.status_code == 429 and r.headers["x-request-id"] == "l-2" and int(r.headers["retry-after"]) > 0
        )
        assert r.json()["errors"][0]["code"] == "RATE_LIMITED"
        metrics = client.get("/metrics").text
        assert 'route="/api/v1/registrations",status="429"' not in metrics


def test_requests_are_counted_by_route_template(client_factory):
    client, auth = client_factory()
    ccrn = client.post("/api/v1/consignments", json=record(), headers=auth).json()["ccrn"]
    for _ in range(2):
        assert client.get(f"/api/v1/consignments/{ccrn}", headers=auth).status_code == 200
    metrics = client.get("/metrics").text
    assert (
        'roadcargo_http_requests_total{method="GET",route="/api/v1/consignments/{ccrn}",status="200"} 2.0'
        in metrics
    )
    assert (
        'roadcargo_http_request_seconds_count{method="GET",route="/api/v1/consignments/{ccrn}"} 2.0'
        in metrics
    )


@pytest.fixture
def client_factory(gw, party):
    clients = []

    def make():
        _actor, key = party.add()
        client = TestClient(create_app(gw)).__enter__()
        clients.append(client)
        return client, {"Authorization": f"Bearer {key}"}

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.mark.parametrize(
    "line",
    [
        "GET /api/v1/consignments/123456789012 200 1.2 ms",
        "POST /login 303 4.0 ms",
        "GET /x/Bearer abcdef 404 0.3 ms",
        "GET /x/BASIC\tabcdef 404 0.3 ms",
        "GET /x/baſic abcdef 404 0.3 ms",  # non-ASCII: the patterns' own case folding decides
        "GET /x/rcg_abcdefghijk 404 0.3 ms",
        "GET /x/token=abc 404 0.3 ms",
        "bearer",
        "2026-11-27 03:37:18,123 INFO roadcargo.access [0a1b2c]: POST /api/v1/bundles 201 3.2 ms",
        "2026-11-27 03:37:18,123 INFO roadcargo.access [token:abc]: POST /x 200 1.0 ms",
        "12:00 PIN:1234",
        "12:00 passwd='x y'",
        "12:00 Secret = s3",
        "12:00 apikey:abc",
        "12:00 TOKEN:abc",
        "12:00 authorization:abc",
        "12:00 Bearer abc",
        "12:00 Basic abc",
    ],
)
def test_the_quick_redaction_of_access_lines_blanks_what_the_patterns_blank(line):
    expected = line
    for pattern, replacement in logs._SECRETS:
        expected = pattern.sub(replacement, expected)
    assert logs.redact(line) == expected


# -- the routes served directly (http_api.direct): the same answers without FastAPI's layers ----------------

HOT = ["/api/v1/kiosk/clearances", "/api/v1/bundles"]
WELL_FORMED = {  # a request the forwarder may not make
    HOT[0]: b'{"control_point": "LMC", "lane": "1", "vehicle": "AB1", "driver_document": "K1"}',
    HOT[1]: b'{"vehicle": "AB1", "control_point": "LMC", "ccrns": ["123456789012"]}',
}


def test_the_hot_routes_are_served_directly_and_nothing_else_on_their_paths(gw):
    index = create_app(gw).router.routes[0]
    for path in [*HOT, "/api/v1/consignments"]:
        route = index.direct(_scope("POST", path))
        assert isinstance(route, APIRoute) and route.endpoint in http_api.DIRECT
        assert index.matches(_scope("POST", path))[1][RouteIndex.FOUND] is route  # the router's own pick
    assert index.direct(_scope("GET", "/api/v1/kiosk/clearances")) is None  # takes a query parameter
    assert index.direct(_scope("GET", "/api/v1/bundles")) is None  # 405 from the router
    assert index.direct(_scope("POST", "/api/v1/bundles/")) is None  # the router's slash redirect
    assert index.direct({**_scope("POST", "/gw/api/v1/bundles"), "root_path": "/gw"}) is None


def test_a_route_ahead_of_a_direct_one_on_its_path_still_answers(gw):
    app = create_app(gw)

    async def ahead(request: Request) -> JSONResponse:
        return JSONResponse({"ahead": True})

    app.router.routes.insert(1, Route("/api/v1/bundles", ahead, methods=["POST"]))
    with TestClient(app) as client:
        assert client.post("/api/v1/bundles", json={}).json() == {"ahead": True}
        r = client.post("/api/v1/kiosk/clearances", json={})
        assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    index = app.router.routes[0]
    assert index.direct(_scope("POST", "/api/v1/bundles")) is None
    assert index.direct(_scope("POST", "/api/v1/kiosk/clearances")) is not None


async def _with_a_query(request: Request, vehicle: str | None = None) -> JSONResponse:
    return JSONResponse({})


async def _on_a_path_with_a_parameter(request: Request) -> JSONResponse:
    return JSONResponse({})


def _sync(request: Request) -> JSONResponse:
    return JSONResponse({})


@pytest.mark.parametrize(
    "path, endpoint",
    [("/marked", _with_a_query), ("/marked/{x}", _on_a_path_with_a_parameter), ("/marked", _sync)],
)
def test_a_handler_marked_direct_that_needs_more_than_the_request_is_refused(path, endpoint):
    app = FastAPI()
    app.post(path)(http_api.direct(endpoint))
    try:
        with pytest.raises(TypeError, match="/marked"):
            RouteIndex(app.router).direct(_scope("POST", "/marked"))
    finally:
        http_api.DIRECT.discard(endpoint)


@pytest.fixture
def straight(gw, monkeypatch):
    """A client of the app whose router fails the POSTs it is given: the direct routes do not need it."""
    handle = RouteIndex.handle

    async def not_for_posts(self, scope, receive, send):
        assert scope["method"] != "POST", f"{scope['path']} went through the router"
        await handle(self, scope, receive, send)

    monkeypatch.setattr(RouteIndex, "handle", not_for_posts)
    with TestClient(create_app(gw), raise_server_exceptions=False) as client:
        yield client


def _keys(party):
    _f, forwarder = party.add(name="Forwarder")
    _d, driver = party.add(role="driver", name="Driver")
    _k, kiosk = party.add(role="kiosk", name="LMC kiosk", control_point="LMC")
    return {"forwarder": forwarder, "/api/v1/bundles": driver, "/api/v1/kiosk/clearances": kiosk}


def _sent(key=None, rid="rid-1", **headers):
    return {**({"Authorization": f"Bearer {key}"} if key else {}), "X-Request-ID": rid, **headers}


def _counted(client, path, status):
    line = f'roadcargo_http_requests_total{{method="POST",route="{path}",status="{status}"}} '
    return [float(x.split()[-1]) for x in client.get("/metrics").text.splitlines() if x.startswith(line)]


@pytest.mark.parametrize("path", HOT)
def test_errors_of_a_direct_route_keep_their_envelope_request_id_metrics_and_access_line(
    straight, party, path, caplog
):
    keys = _keys(party)
    caplog.set_level("INFO", logger="roadcargo.access")
    cases = [
        (_sent(rid="e-401"), b"{}", 401, "UNAUTHORIZED"),
        (
            _sent(keys["forwarder"], "e-403", **{"Content-Type": "application/json"}),
            WELL_FORMED[path],
            403,
            "FORBIDDEN",
        ),
        (_sent(keys[path], "e-400", **{"Content-Type": "application/json"}), b"{", 400, "MALFORMED"),
        (_sent(keys[path], "e-415", **{"Content-Type": "text/plain"}), b"{}", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (_sent(keys[path], "e-422", **{"Content-Type": "application/json"}), b'{"x": 1}', 422, None),
    ]
    for headers, body, status, code in cases:
        r = straight.post(path, content=body, headers=headers)
        assert r.status_code == status, r.text
        assert r.headers["x-request-id"] == headers["X-Request-ID"]
        errors = r.json()["errors"]
        assert errors and all(set(e) == {"code", "field", "message"} for e in errors)
        assert code is None or errors[0]["code"] == code
        assert _counted(straight, path, status) == [1.0]
    lines = [r.getMessage().rsplit(" ", 2)[0] for r in caplog.records if r.name == "roadcargo.access"]
    assert [line for line in lines if line.startswith("POST")] == [f"POST {path} {c[2]}" for c in cases]


@pytest.mark.parametrize("path", HOT)
def test_a_party_over_its_limit_on_a_direct_route_gets_429_with_retry_after(gw, party, path):
    gw.config = dataclasses.replace(
        gw.config, limits=dataclasses.replace(gw.config.limits, requests_per_second=0.001, burst=1)
    )
    key = _keys(party)[path]  # registering took the one request of the burst
    with TestClient(create_app(gw)) as client:
        r = client.post(path, json={}, headers=_sent(key, "busy-1"))
        assert r.status_code == 429 and r.json()["errors"][0]["code"] == "RATE_LIMITED"
        assert int(r.headers["retry-after"]) > 60 and r.headers["x-request-id"] == "busy-1"


FAULTS = [
    (OSError(errno.ENOSPC, "No space left on device"), 507, "STORAGE_FULL", None),
    (OperationalError("SELECT 1", {}, Exception("connection refused")), 503, "UNAVAILABLE", "5"),
    (RuntimeError("a bug"), 500, "INTERNAL", None),
]


@pytest.mark.parametrize("fault, status, code, retry_after", FAULTS)
@pytest.mark.parametrize(
    "path, module, work", [(HOT[0], clearance, "parse_request"), (HOT[1], bundles, "bundle_outcome")]
)
def test_faults_in_a_direct_route_are_answered_as_everywhere(
    straight, party, monkeypatch, path, module, work, fault, status, code, retry_after, caplog
):
    def failing(*args, **kwargs):
        raise fault

    class RequestIds(logging.Handler):  # the request id each line about the fault is written with
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str | None] = []

        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is fault:
                self.seen.append(logs.request_id())

    monkeypatch.setattr(module, work, failing)
    ids = RequestIds()
    logging.getLogger().addHandler(ids)
    try:
        r = straight.post(path, json={"control_point": "LMC"}, headers=_sent(_keys(party)[path], "f-1"))
    finally:
        logging.getLogger().removeHandler(ids)
    assert r.status_code == status and [e["code"] for e in r.json()["errors"]] == [code]
    assert r.headers.get("retry-after") == retry_after
    assert _counted(straight, path, status) == [1.0]
    assert r.headers["x-request-id"] == "f-1"
    if status == 500:  # the fault is logged with its traceback, under the request's id
        assert ids.seen == ["f-1"]


def test_a_direct_route_keeps_the_raw_body_and_audit_rows_with_the_request_id_also_chunked(straight, party):
    keys = _keys(party)
    filer = {"Authorization": f"Bearer {keys['forwarder']}"}
    ccrns = [
        straight.post("/api/v1/consignments", json=record(submitter_reference=f"R{i}"), headers=filer).json()[
            "ccrn"
        ]
        for i in range(2)
    ]
    body = json.dumps({"vehicle": "AB1234", "control_point": "LMC", "ccrns": ccrns}).encode()

    def chunks():  # no Content-Length: the edge counts the body and replays it
        yield body[:10]
        yield body[10:]

    headers = _sent(keys["/api/v1/bundles"], "bundle-7", **{"Content-Type": "application/json"})
    r = straight.post("/api/v1/bundles", content=chunks(), headers=headers)
    assert r.status_code == 201 and r.headers["x-request-id"] == "bundle-7", r.text
    with straight.app.state.gateway.engine.connect() as conn:
        raw = conn.execute(
            select(tables.raw_messages.c.body, tables.raw_messages.c.request_id).where(
                tables.raw_messages.c.request_id == "bundle-7"
            )
        ).all()
        audited = conn.scalars(
            select(tables.audit_log.c.action).where(tables.audit_log.c.request_id == "bundle-7")
        ).all()
    assert [bytes(row.body) for row in raw] == [body]
    assert "bundle.create" in audited
    assert _counted(straight, "/api/v1/bundles", 201) == [1.0]
