"""The composition root of the HTTP side: one FastAPI application with every channel mounted on it,
errors turned into the catalogue's vocabulary at one edge, and health and metrics at the root."""

from __future__ import annotations

import errno
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette._utils import get_route_path
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request as StarletteRequest
from starlette.routing import BaseRoute, Match, NoMatchFound, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters import (
    edifact_channel,
    http_agency,
    http_api,
    http_border,
    http_crossings,
    http_declarations,
    ivr,
    portal,
    sftp_http,
    soap,
    xml_channel,
)
from gateway import db, logs, ratelimit
from gateway import metrics as operations_metrics
from gateway.config import LimitsConfig
from gateway.context import Gateway
from gateway.errors import GatewayError, Problem
from gateway.record import record_json_schema

log = logging.getLogger("roadcargo")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "roadcargo_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "roadcargo_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.consignments = Counter(
            "roadcargo_consignment_changes",
            "consignments lodged, amended and cancelled",
            ["channel", "action"],
            registry=self.registry,
        )


def _error_response(error: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.as_body(), status_code=error.http_status, headers=headers)


class Edge:
    """Every HTTP request passes this one ASGI layer (one layer, not four: each costs a call and a
    wrapped ``send`` a request). In order:

    - its request id (``X-Request-ID`` in and out, every log line, the raw and audit rows; ``logs``);
    - the login limit on the forms anyone may post (429 before any work; ``ratelimit.login_buckets``);
    - counting and timing by route template (``roadcargo_http_requests``, ``..._request_seconds``);
    - bodies over ``[server] max_body_bytes`` refused with 413 before the application reads them;
    - then the application: a request for a route the ``index`` names direct (``http_api.direct``)
      straight to its endpoint, within the application's error ``handlers`` as FastAPI's
      ExceptionMiddleware calls them; any other through FastAPI's layers (``app``); a fault that escapes
      either, before an answer began, answered by the handler of last resort;
    - then, the request done, ``observe`` (the ingest channels' metrics) and the access line.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        limit: int,
        limits: LimitsConfig,
        index: RouteIndex,
        handlers: dict[Any, Any],
        observe: Callable[[Scope, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limit = limit
        self.login = ratelimit.login_buckets(limits)
        self.observe = observe
        self.index = index
        # The handlers FastAPI gives its ExceptionMiddleware: all but the one of Exception (or 500), which
        # Starlette leaves to ServerErrorMiddleware, outside this layer. Made when the application is
        # first called, as FastAPI makes its own, so both see the same handlers.
        inner = {key: h for key, h in handlers.items() if key not in (500, Exception)}
        self._endpoint = ExceptionMiddleware(_endpoint, handlers=inner)
        # That one is called here, for what escapes the application before its answer began, so that the
        # answer (and the log line of the fault) carry the request id: outside this layer they had none.
        self._last_resort = handlers.get(Exception) or handlers.get(500)
        # Children of the labelled metrics by their labels: ``labels()`` checks and locks every time.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = declared = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
            elif name == logs.HEADER:
                if given is None:
                    given = value
            elif name == b"transfer-encoding":
                chunked = True
        rid = logs.incoming_id(given)
        token = logs.enter(rid)
        started = time.perf_counter()
        status = 500

        answered = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = message["status"]
                answered = True
                message["headers"] = [*message.get("headers", ()), (logs.HEADER, rid.encode("ascii"))]
            await send(message)

        try:
            if scope["method"] == "POST" and scope["path"] in ratelimit.LIMITED_PATHS and self.login.on:
                client = scope.get("client")
                wait = self.login.take(str(client[0]) if client else "unknown")
                if wait:  # refused before it is counted by route, as it has none
                    await ratelimit.refuse_login(scope, send_with_id, wait)
                    return
            try:
                if declared is not None and declared.isdigit():
                    if int(declared) > self.limit:
                        await self._too_large(scope, receive, send_with_id)
                    elif chunked:
                        await self._counted_body(scope, receive, send_with_id)
                    else:  # the server reads exactly Content-Length bytes, no more: nothing to count
                        await self._application(scope, receive, send_with_id)
                else:
                    await self._counted_body(scope, receive, send_with_id)
            except Exception as exc:
                if answered or self._last_resort is None:
                    raise  # half an answer is out: the server closes the connection
                response = self._last_resort(StarletteRequest(scope, receive), exc)
                if inspect.isawaitable(response):
                    response = await response
                await response(scope, receive, send_with_id)
            finally:
                self._measure(scope, status, time.perf_counter() - started)
        finally:
            elapsed = time.perf_counter() - started
            if self.observe is not None:
                self.observe(scope, status, elapsed)
            logs.access(scope, status, elapsed)
            logs.leave(token)

    def _measure(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"]
        path = getattr(scope.get("route"), "path", "unmatched")
        counted = self._counted.get((method, path, status))
        if counted is None:
            counted = self._counted[method, path, status] = self.metrics.requests.labels(
                method, path, str(status)
            )
        counted.inc()
        timed = self._timed.get((method, path))
        if timed is None:
            timed = self._timed[method, path] = self.metrics.latency.labels(method, path)
        timed.observe(seconds)

    async def _counted_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No usable Content-Length (chunked): read the body, counting, and replay it."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._application(scope, replay, send)

    async def _application(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.index.direct(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        # What the router's match puts in the scope (the route labels the metrics), then the endpoint.
        scope["endpoint"] = route.endpoint
        scope["path_params"] = {}
        scope["route"] = route
        if "router" not in scope:
            scope["router"] = self.index.router
        await self._endpoint(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = GatewayError.one("TOO_LARGE", f"the request is over the limit of {self.limit} bytes")
        await _error_response(error, {"Connection": "close"})(scope, receive, send)


async def _endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """A route's endpoint called straight (``http_api.direct``): it takes the request, gives a Response."""
    response = await scope["endpoint"](StarletteRequest(scope, receive, send))
    await response(scope, receive, send)


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(
        title="Road Cargo Gateway",
        version="0.1.0",
        description="Electronic cargo information for road cargo: lodge, amend, cancel; CCRNs.",
        docs_url="/docs",
        redoc_url=None,
        # No OpenTelemetry here: off, FastAPI skips asking the providers on every request (~4 µs).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.gateway = gw
    app.state.metrics = metrics = Metrics()

    # Routes are matched in the order they were added, each at some cost: the health check comes first.
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    for router in (
        http_api.router,
        http_border.router,
        http_agency.router,
        edifact_channel.router,
        xml_channel.router,
        soap.router,
        ivr.router,
        sftp_http.router,
        portal.router,
        http_crossings.router,  # contingency crossings
        http_declarations.router,  # declaration reuse
    ):
        _include(app, router)

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(exc, getattr(exc, "headers", None))  # RATE_LIMITED: Retry-After

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            Problem(
                "INVALID_VALUE",
                ".".join(str(p) for p in e.get("loc", ())[1:]) or None,
                e.get("msg", "invalid"),
            )
            for e in exc.errors()
        ]
        return _error_response(GatewayError(problems or [Problem("INVALID_VALUE", None, "invalid request")]))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "TOO_LARGE"}.get(
            exc.status_code, "INVALID_VALUE"
        )
        return _error_response(GatewayError.one(code, str(exc.detail)))

    @app.exception_handler(PoolTimeout)
    async def _pool_busy(_request: Request, exc: PoolTimeout) -> JSONResponse:
        error = db.unavailable(exc)
        return _error_response(error, error.headers)

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        if _disk_full(exc):  # SQLite says "database or disk is full" as an OperationalError
            return _error_response(_STORAGE_FULL)
        error = db.unavailable(exc)
        return _error_response(error, error.headers)

    @app.exception_handler(DBAPIError)
    async def _db_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        if "No space left" in str(exc.orig) or "disk is full" in str(exc.orig):
            return _error_response(
                GatewayError.one("STORAGE_FULL", "the data directory is full; nothing accepted")
            )
        log.exception("database error")
        return _error_response(
            GatewayError.one("INTERNAL", "an unexpected database fault; nothing was accepted")
        )

    @app.exception_handler(OSError)
    async def _os_error(_request: Request, exc: OSError) -> JSONResponse:
        if _disk_full(exc):
            log.error("the data directory is full: %s", exc)
            return _error_response(_STORAGE_FULL)
        log.exception("unexpected error")
        return _error_response(GatewayError.one("INTERNAL", "an unexpected fault; nothing was accepted"))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error_response(GatewayError.one("INTERNAL", "an unexpected fault; nothing was accepted"))

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        def check() -> tuple[bool, str]:
            try:
                with gw.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                if not db.schema_is_current(gw.engine):
                    return False, "migrations are not current: run roadcargo db upgrade"
                return True, "ready"
            except OperationalError as exc:
                return False, f"database unreachable: {exc.orig}"

        ok, detail = await run_in_threadpool(check)
        return JSONResponse(
            {"status": "ready" if ok else "unavailable", "detail": detail}, 200 if ok else 503
        )

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> PlainTextResponse:
        body = await run_in_threadpool(operations_metrics.exposition, metrics.registry)  # queue depths: DB
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components["CargoRecord"] = record_json_schema()
            components["Errors"] = _ERRORS_SCHEMA
            components["Consignment"] = _CONSIGNMENT_SCHEMA
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    index = RouteIndex(app.router)
    app.router.routes.insert(0, index)
    index._build()  # a handler marked direct that cannot be fails here, not at the first request
    operations_metrics.install(metrics.registry, gw)  # metrics of the ingest channels, queue depths
    app.add_middleware(
        Edge,
        metrics=metrics,
        limit=gw.config.server.max_body_bytes,
        limits=gw.config.limits,
        observe=operations_metrics.observe_http,
        index=index,
        handlers=app.exception_handlers,
    )
    return app


def _include(app: FastAPI, router: APIRouter) -> None:
    """Add a router's routes to the application's own list, as ``include_router`` did before FastAPI
    kept included routers as branches: a branch is searched, and its version re-counted, on every
    request that passes it, which cost ~0.4 ms of CPU a request on the routes near the end (the
    kiosk, 404s twice over with the trailing-slash retry). Our routers carry their prefix in each
    route's path and nothing else to inherit, so the routes are the same objects either way."""
    for route in router.routes:
        branch = getattr(route, "original_router", None)  # a router included in this one (the portal)
        if branch is None:
            app.router.routes.append(route)
            continue
        context: Any = getattr(route, "include_context", None)
        if context != type(context)(included_router=branch):
            raise ValueError(f"include options on {branch!r}: include it with app.include_router")
        _include(app, branch)


class RouteIndex(BaseRoute):
    """The first route of the application: finds the route a request matches by its path's literal
    prefix instead of trying every route's pattern in turn (2-3 µs each; the kiosk's route is the 35th,
    ~90 µs a request). Candidates are tried in the application's order, so the route found is the one
    the router's own scan would find; when none matches fully, the index does not match and the router
    scans as usual (405, trailing-slash redirects, 404). Rebuilt when routes are added.

    It also names, for ``Edge``, the routes it may serve directly (``direct``)."""

    FOUND = "roadcargo.route"  # the scope key that carries the route found from matches to handle

    def __init__(self, router: Router) -> None:
        self.router = router
        self._size = -1
        self._exact: dict[str, list[tuple[int, BaseRoute]]] = {}
        self._prefixed: dict[str, list[tuple[int, BaseRoute]]] = {}
        self._always: list[tuple[int, BaseRoute]] = []
        self._direct: dict[tuple[str, str], APIRoute] = {}

    def _build(self) -> None:
        exact: dict[str, list[tuple[int, BaseRoute]]] = {}
        prefixed: dict[str, list[tuple[int, BaseRoute]]] = {}
        always: list[tuple[int, BaseRoute]] = []
        for i, route in enumerate(self.router.routes):
            if route is self:
                continue
            if not isinstance(route, Route) or type(route) not in (Route, APIRoute):
                always.append((i, route))  # mounts, hosts, websockets: asked every time
                continue
            literal = route.path_format.split("{", 1)[0]
            if not literal.startswith("/"):
                always.append((i, route))
            elif literal == route.path_format:  # no parameters: the pattern is the path itself
                exact.setdefault(literal, []).append((i, route))
            elif literal.endswith("/"):
                prefixed.setdefault(literal, []).append((i, route))
            else:
                always.append((i, route))
        self._exact, self._prefixed, self._always = exact, prefixed, always
        self._direct = {}
        for i, route in enumerate(self.router.routes):
            if isinstance(route, APIRoute) and route.endpoint in http_api.DIRECT:
                _check_direct(route)
                for method in route.methods or ():
                    if self._first_match(method, route.path, i):
                        self._direct[method, route.path] = route
        self._size = len(self.router.routes)

    def _first_match(self, method: str, path: str, at: int) -> bool:
        """Every request with this method and path matches the route at ``at`` first: none before it
        matches, and each of those is a plain route, whose match depends on the method and path only."""
        scope = {"type": "http", "method": method, "path": path, "root_path": ""}
        for i, route in self._candidates(path):
            if i >= at:
                return i == at
            if type(route) not in (Route, APIRoute) or route.matches(scope)[0] is Match.FULL:
                return False
        return False

    def direct(self, scope: Scope) -> APIRoute | None:
        """The route of this HTTP request when its endpoint may be called straight (see Edge)."""
        if self._size != len(self.router.routes):
            self._build()
        if scope.get("root_path"):
            return None
        return self._direct.get((scope["method"], scope["path"]))

    def _candidates(self, path: str) -> list[tuple[int, BaseRoute]]:
        candidates = [*self._exact.get(path, ()), *self._always]
        prefixed = self._prefixed
        at = path.find("/")
        while at != -1:
            candidates.extend(prefixed.get(path[: at + 1], ()))
            at = path.find("/", at + 1)
        candidates.sort(key=_first)
        return candidates

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        if self._size != len(self.router.routes):
            self._build()
        for _i, route in self._candidates(get_route_path(scope)):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return Match.FULL, {**child_scope, RouteIndex.FOUND: route}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope.pop(RouteIndex.FOUND).handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)


def _first(candidate: tuple[int, BaseRoute]) -> int:
    return candidate[0]


def _check_direct(route: APIRoute) -> None:
    """A handler marked ``http_api.direct`` must be one the edge can call with the request alone."""
    needs = route.dependant
    if (
        type(route) is not APIRoute  # a subclass may match, or handle, otherwise
        or route.param_convertors  # a path with parameters
        or not inspect.iscoroutinefunction(route.endpoint)
        or needs.request_param_name is None
        or needs.path_params
        or needs.query_params
        or needs.header_params
        or needs.cookie_params
        or needs.body_params
        or needs.dependencies
        or len(inspect.signature(route.endpoint).parameters) != 1
    ):
        raise TypeError(
            f"{route.path}: a handler served directly takes the request only, is async, on an APIRoute"
        )


_STORAGE_FULL = GatewayError.one("STORAGE_FULL", "the data directory is full; nothing was accepted")


def _disk_full(exc: BaseException) -> bool:
    """No room left: ENOSPC from the file system, or the database saying so."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(getattr(exc, "orig", exc))
    return "No space left" in text or "disk is full" in text or "could not extend file" in text


_ERRORS_SCHEMA = {
    "type": "object",
    "required": ["errors"],
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "a name from the error catalogue"},
                    "field": {
                        "type": ["string", "null"],
                        "description": "path such as items[2].package_count",
                    },
                    "message": {"type": "string"},
                },
            },
        }
    },
}

_CONSIGNMENT_SCHEMA = {
    "type": "object",
    "properties": {
        "ccrn": {"type": "string", "pattern": "^[0-9]{12}$"},
        "version": {"type": "integer"},
        "status": {
            "type": "string",
            "enum": ["LODGED", "BUNDLED", "ARRIVED", "CROSSED", "HELD", "DECLARED", "CANCELLED", "EXPIRED"],
        },
        "status_version": {"type": "integer"},
        "filer": {"type": "string"},
        "submitter_reference": {"type": "string"},
        "lodged_at": {"type": "string", "format": "date-time"},
        "amended_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "record": {"$ref": "#/components/schemas/CargoRecord"},
    },
}
