"""The HTTP edge of gateway.app: the route index in front of the router, and the one middleware layer
(request ids, login limit, metrics by route, body limit)."""

import dataclasses
import re

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Match, Route

from gateway import logs
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
    ],
)
def test_the_quick_redaction_of_access_lines_blanks_what_the_patterns_blank(line):
    expected = line
    for pattern, replacement in logs._SECRETS:
        expected = pattern.sub(replacement, expected)
    assert logs.redact(line) == expected
