"""The composition root of the HTTP side: one FastAPI application with every channel mounted on it,
errors turned into the catalogue's vocabulary at one edge, and health and metrics at the root."""

from __future__ import annotations

import errno
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
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


class BodyLimit:
    """Refuse bodies over ``[server] max_body_bytes`` with 413 before the application reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.limit:
                await self._too_large(scope, receive, send)
                return
            if b"transfer-encoding" not in headers:
                # The server reads exactly Content-Length bytes, no more: nothing to count or buffer.
                await self.app(scope, receive, send)
                return
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

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = GatewayError.one("TOO_LARGE", f"the request is over the limit of {self.limit} bytes")
        await _error_response(error, {"Connection": "close"})(scope, receive, send)


class Measure:
    """Count requests and time them by route template (a plain ASGI middleware: cheaper than
    ``@app.middleware``, which runs every request through an extra task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - started)


def create_app(gw: Gateway) -> FastAPI:
    app = FastAPI(
        title="Road Cargo Gateway",
        version="0.1.0",
        description="Electronic cargo information for road cargo: lodge, amend, cancel; CCRNs.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.gateway = gw
    app.state.metrics = metrics = Metrics()

    # Routes are matched in the order they were added, each at some cost: the health check comes first.
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app.include_router(http_api.router)
    app.include_router(http_border.router)
    app.include_router(http_agency.router)
    app.include_router(edifact_channel.router)
    app.include_router(xml_channel.router)
    app.include_router(soap.router)
    app.include_router(ivr.router)
    app.include_router(sftp_http.router)
    app.include_router(portal.router)
    app.include_router(http_crossings.router)  # contingency crossings
    app.include_router(http_declarations.router)  # declaration reuse

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

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        if _disk_full(exc):  # SQLite says "database or disk is full" as an OperationalError
            return _error_response(_STORAGE_FULL)
        log.warning("database unavailable: %s", exc.orig)
        error = GatewayError.one("UNAVAILABLE", "the database is unavailable; nothing was accepted, retry")
        return _error_response(error, {"Retry-After": "5"})

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
    app.add_middleware(BodyLimit, limit=gw.config.server.max_body_bytes)
    app.add_middleware(Measure, metrics=metrics)
    # -- operations: metrics of the ingest channels, login limits, request ids and access log
    operations_metrics.install(metrics.registry, gw)
    app.add_middleware(ratelimit.LoginLimit, limits=gw.config.limits)
    app.add_middleware(logs.RequestContext, observe=operations_metrics.observe_http)
    return app


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
