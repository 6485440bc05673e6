"""The HTTP JSON API of design section 9 (``/api/v1``): thin handlers that authenticate, keep the raw
body, call one service function and render its result."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.util.concurrency import greenlet_spawn

from gateway import bundles, consignments, parties
from gateway.context import Actor, Gateway, store_raw, store_raw_ahead
from gateway.errors import GatewayError, Problem
from gateway.prepared import flush_ahead

router = APIRouter(prefix="/api/v1")

_RECORD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CargoRecord"}}},
    }
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": "every problem found",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}},
    }
    for status in (400, 401, 403, 404, 409, 413, 422)
}
_CONSIGNMENT = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Consignment"}}}}


Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
DIRECT: set[Callable[..., Any]] = set()


def direct(endpoint: Endpoint) -> Endpoint:
    """Let the request edge (``gateway.app.Edge``) call this handler straight, past FastAPI's layers of
    a request (exception middleware, exit stacks, router, dependency solving): ~0.1 ms of CPU a request
    less, 0.30-0.34 ms instead of 0.38-0.45 ms in the event loop a bundle with 32 bundlers at once. For
    a handler that takes only the request, reads its body itself and returns a Response, on a path
    without parameters (``create_app`` refuses any other). Its errors meet the application's handlers
    all the same, and the route stays in the application: the OpenAPI document, the route's metrics."""
    DIRECT.add(endpoint)
    return endpoint


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def _parse_json(body: bytes, content_type: str | None) -> Any:
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise GatewayError.one("UNSUPPORTED_MEDIA_TYPE", f"send application/json, not {kind}")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise GatewayError.one("MALFORMED", "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise GatewayError.one(
            "MALFORMED", f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


class _Call:
    """What a handler's work gets: who asks, the JSON body (when the route takes one), the raw id."""

    def __init__(self, gw: Gateway, actor: Actor, data: Any, raw_id: int | None) -> None:
        self.gw = gw
        self.actor = actor
        self.data = data
        self.raw_id = raw_id


async def _run(
    request: Request,
    work: Callable[[_Call], Any],
    *,
    changes: bool = False,
    json_body: bool = False,
    database_only: bool = False,
    raw_id: bool = True,
    loop: bool = False,
) -> Any:
    """Authenticate, keep the raw body of a request that changes data (with its SHA-256, before it is
    read), parse JSON, then do the work: all in one worker thread, one hop per request. Work that only
    uses the database (``database_only``: no call to another service) runs in a few threads of its own,
    see ``DATABASE_THREADS``; the rest in ``SERVICE_THREADS``. Work that does not need the raw
    message's id (``raw_id=False``) has it stored with its first round trip to the database
    (``store_raw_ahead``). Database work that may run on the event loop (``loop``) goes through
    ``on_loop``."""
    gw = _gateway(request)
    header = request.headers.get("authorization", "")
    content_type = request.headers.get("content-type")
    body = await request.body() if changes else b""

    def job() -> Any:
        actor = parties.authenticate_bearer(gw, header, "http")
        ahead = changes and not raw_id
        if ahead:
            store_raw_ahead(gw, actor, content_type, body)
        try:
            stored = store_raw(gw, actor, content_type, body) if changes and not ahead else None
            data = _parse_json(body, content_type) if json_body else None
            return work(_Call(gw, actor, data, stored))
        finally:
            if ahead:  # work that never reached the database: the raw message goes now
                flush_ahead(gw.engine)

    if loop:
        return await on_loop(gw, job)
    return await then(gw, job, database_only=database_only)


async def then(gw: Gateway, job: Callable[[], Any], *, database_only: bool = False) -> Any:
    """Run ``job`` on the threads of its kind (see ``_run``) with this request's context: its request
    id goes into the raw and audit rows."""
    pool = _database_threads(gw) if database_only else _service_threads()
    return await asyncio.get_running_loop().run_in_executor(pool, copy_context().run, job)


async def _db(request: Request, work: Callable[[_Call], Any], **options: bool) -> Any:
    """``_run`` for this module's handlers: lodging, parties and bundles use the database only."""
    return await _run(request, work, database_only=True, **options)


# The API's work is the database's: a few threads do it as fast as forty, at less CPU. It holds the GIL but
# for its waits on the database, so more threads add only thread switches and lock hand-offs, and SQLite
# takes one writer at a time, queued on a lock of the process (gateway.db): on SQLite one thread does it.
# The threads are a pool of their own that takes the jobs from a queue, one after another without sleeping
# in between while there are more (anyio's pool behind a CapacityLimiter hands each job to an idle thread
# and waits for its answer before the next one may go). 32 concurrent bundlers on SQLite cost 5.3 ms of
# server CPU a bundle with forty threads, 2.8 ms with four (bench/bundling.py); later, in turns in one
# sitting on a busy machine: four 4.9-5.0 ms (221-228 bundles/s), one behind anyio's limiter 3.7-4.2 ms
# (240-281/s), this pool of one 3.5-3.9 ms (276-303/s). One slow job (a huge body) holds up the others of
# its process meanwhile. PostgreSQL overlaps the round trips of a few more. The kiosk's database work does
# not come here: it runs on the event loop's own thread (``on_loop``), and Immigration is asked from the
# event loop (adapters/http_border.py). With the whole decision on sixteen service threads, they competed
# for the interpreter's lock at every SQLite statement (a fifth of a decision's CPU, bench/RESULTS.md,
# session 7); with its two steps on this pool, each step's hand-off to a thread and back cost a fifth of a
# decision's CPU again (session 8). Work that calls another service on a thread (the kiosk's Immigration
# client until its WSDL is loaded, or over https or a proxy, within ``[immigration] timeout_ms``) has a pool
# of its own, so it never holds these up, rather than ``anyio.to_thread``, whose hand-off (a limiter, a
# cancel scope and two extra turns of the event loop) cost ~70 µs of CPU more a request with 32 kiosks
# waiting. Sixteen threads, not anyio's forty: with 32 kiosks, forty threads each held a PostgreSQL
# connection at once, past the pool's twenty kept open (gateway.db), so connections were opened and closed
# all the time, each a new backend that had lost psycopg's prepared statements. In turns: PostgreSQL CPU
# 5.5-5.7 -> 3.3-3.7 ms a decision, 143-157 -> 160-189 decisions/s; SQLite 248 -> 272/s.
DATABASE_THREADS = {"sqlite": 1}
DEFAULT_DATABASE_THREADS = 8
# The kiosk's database work on PostgreSQL runs in greenlets on the event loop (``on_loop``); as many at
# once as there are database threads: each holds a connection of the pool (twenty kept, gateway.db), and
# one that had to wait for a connection would stop the event loop. A decision holds its slot while
# Immigration answers, so with Immigration hanging until its 800 ms timeout a process makes about ten a
# second, each NOT_READY (bench/RESULTS.md, session 8). On SQLite it runs there at once: the
# process has one writer at a time anyway, and a writer of another process (the writers' lock, gateway.db)
# holds up the event loop as it held up the one database thread.
LOOP_SLOTS = DEFAULT_DATABASE_THREADS
_LOOP_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
SERVICE_THREADS = 16
_POOLS: dict[str, ThreadPoolExecutor] = {}  # by database dialect, and "services": one set a process
_POOLS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of its parent's threads


def loop_capable(gw: Gateway) -> bool:
    """Whether ``on_loop`` runs database work on the event loop (PostgreSQL with psycopg)."""
    return gw.engine.dialect.driver == "psycopg"


async def on_loop(gw: Gateway, job: Callable[[], Any]) -> Any:
    """Run database work (``job``) in the event loop's own thread: no thread hands the work or the
    interpreter's lock to another. On PostgreSQL in a greenlet, whose round trips (``gateway.prepared``'s
    pipelines) are the event loop's waits, so other requests go on meanwhile; at most ``LOOP_SLOTS`` at
    once in a process, each holding one pooled connection. On SQLite, whose statements wait only for
    the disk and the writers' lock, at once (see ``DATABASE_THREADS``)."""
    if gw.engine.dialect.name == "sqlite":  # nothing to wait for but the disk: run it now
        return copy_context().run(job)
    if not loop_capable(gw):
        return await then(gw, job, database_only=True)
    loop = asyncio.get_running_loop()
    slots = _LOOP_SLOTS.get(loop)
    if slots is None:
        slots = _LOOP_SLOTS[loop] = asyncio.Semaphore(LOOP_SLOTS)
    async with slots:
        return await greenlet_spawn(copy_context().run, job)


def _database_threads(gw: Gateway) -> ThreadPoolExecutor:
    dialect = gw.engine.dialect.name
    return _threads(dialect, DATABASE_THREADS.get(dialect, DEFAULT_DATABASE_THREADS), "roadcargo-db")


def _service_threads() -> ThreadPoolExecutor:
    return _threads("services", SERVICE_THREADS, "roadcargo-services")


def _threads(name: str, threads: int, prefix: str) -> ThreadPoolExecutor:
    pool = _POOLS.get(name)
    if pool is None:
        with _POOLS_LOCK:
            pool = _POOLS.get(name)
            if pool is None:
                pool = _POOLS[name] = ThreadPoolExecutor(threads, thread_name_prefix=prefix)
    return pool


def _metric(request: Request, action: str) -> None:
    request.app.state.metrics.consignments.labels(channel="http", action=action).inc()


@router.post(
    "/consignments",
    status_code=201,
    openapi_extra=_RECORD_BODY,
    responses={
        201: {"description": "lodged", **_CONSIGNMENT},
        200: {"description": "already lodged, same content", **_CONSIGNMENT},
        **_ERROR_RESPONSES,
    },
    summary="Lodge cargo information and get a CCRN",
)
@direct
async def lodge(request: Request) -> JSONResponse:
    outcome = await _db(
        request, lambda c: consignments.lodge(c.gw, c.actor, c.data, c.raw_id), changes=True, json_body=True
    )
    if outcome.changed:
        _metric(request, "lodge")
    return JSONResponse(outcome.view, status_code=201 if outcome.changed else 200)


@router.get("/consignments", summary="List your consignments, newest first", responses=_ERROR_RESPONSES)
async def list_consignments(
    request: Request,
    status: str | None = None,
    reference: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> JSONResponse:
    rows = await _db(
        request,
        lambda c: consignments.list_consignments(
            c.gw, c.actor, status=status, reference=reference, limit=limit, offset=max(offset, 0)
        ),
    )
    return JSONResponse({"consignments": rows})


@router.get(
    "/consignments/{ccrn}",
    summary="A consignment: its latest version and status",
    responses={200: _CONSIGNMENT, **_ERROR_RESPONSES},
)
async def get_consignment(request: Request, ccrn: str) -> JSONResponse:
    return JSONResponse(await _db(request, lambda c: consignments.get(c.gw, c.actor, ccrn)))


@router.get(
    "/consignments/{ccrn}/versions", summary="Every version of the record", responses=_ERROR_RESPONSES
)
async def get_versions(request: Request, ccrn: str) -> JSONResponse:
    versions = await _db(request, lambda c: consignments.history(c.gw, c.actor, ccrn))
    return JSONResponse({"ccrn": "".join(ccrn.split()), "versions": versions})


@router.put(
    "/consignments/{ccrn}",
    openapi_extra=_RECORD_BODY,
    summary="Amend: a new version when the content changes",
    responses={200: _CONSIGNMENT, **_ERROR_RESPONSES},
)
async def amend(request: Request, ccrn: str) -> JSONResponse:
    outcome = await _db(
        request,
        lambda c: consignments.amend(c.gw, c.actor, ccrn, c.data, c.raw_id),
        changes=True,
        json_body=True,
    )
    if outcome.changed:
        _metric(request, "amend")
    return JSONResponse(outcome.view)


@router.delete(
    "/consignments/{ccrn}", summary="Cancel a consignment", responses={200: _CONSIGNMENT, **_ERROR_RESPONSES}
)
async def cancel(request: Request, ccrn: str) -> JSONResponse:
    outcome = await _db(request, lambda c: consignments.cancel(c.gw, c.actor, ccrn, c.raw_id), changes=True)
    if outcome.changed:
        _metric(request, "cancel")
    return JSONResponse(outcome.view)


# -- parties (officers; a party may read itself and rotate its own keys) ---------------------------


def _party_fields(data: Any) -> dict[str, Any]:
    body = _object(data, {"role", "name", "edi_ids", "scope", "control_point"})
    edi_ids = body.get("edi_ids") or []
    if not isinstance(edi_ids, list) or not all(isinstance(e, str) for e in edi_ids):
        raise GatewayError.one("INVALID_VALUE", "edi_ids is a list of strings", "edi_ids")
    missing = [k for k in ("role", "name") if not isinstance(body.get(k), str) or not body[k].strip()]
    if missing:
        raise GatewayError([Problem("MISSING_FIELD", k, "is required") for k in missing])
    return {**body, "edi_ids": tuple(edi_ids)}


@router.post("/parties", status_code=201, summary="Register a party (officers)", responses=_ERROR_RESPONSES)
@direct
async def add_party(request: Request) -> JSONResponse:
    def work(c: _Call) -> Any:
        f = _party_fields(c.data)
        return parties.add_party(
            c.gw,
            c.actor,
            f["role"],
            f["name"],
            edi_ids=f["edi_ids"],
            scope=f.get("scope"),
            control_point=f.get("control_point"),
        )

    new = await _db(request, work, changes=True, json_body=True)
    return JSONResponse(new.as_dict(), status_code=201)


@router.get("/parties/{party_id}", summary="A party", responses=_ERROR_RESPONSES)
async def get_party(request: Request, party_id: str) -> JSONResponse:
    return JSONResponse(await _db(request, lambda c: parties.get_party(c.gw, c.actor, party_id)))


@router.post("/parties/{party_id}/suspend", summary="Suspend a party (officers)", responses=_ERROR_RESPONSES)
async def suspend_party(request: Request, party_id: str) -> JSONResponse:
    return JSONResponse(await _db(request, lambda c: parties.suspend(c.gw, c.actor, party_id), changes=True))


@router.post(
    "/parties/{party_id}/reinstate", summary="Reinstate a party (officers)", responses=_ERROR_RESPONSES
)
async def reinstate_party(request: Request, party_id: str) -> JSONResponse:
    return JSONResponse(
        await _db(request, lambda c: parties.reinstate(c.gw, c.actor, party_id), changes=True)
    )


@router.get("/parties/{party_id}/keys", summary="A party's API keys (hints only)", responses=_ERROR_RESPONSES)
async def list_keys(request: Request, party_id: str) -> JSONResponse:
    return JSONResponse({"keys": await _db(request, lambda c: parties.list_keys(c.gw, c.actor, party_id))})


@router.post(
    "/parties/{party_id}/keys",
    status_code=201,
    summary="A second key, for rotation",
    responses=_ERROR_RESPONSES,
)
async def add_key(request: Request, party_id: str) -> JSONResponse:
    key = await _db(request, lambda c: parties.add_key(c.gw, c.actor, party_id), changes=True)
    return JSONResponse(key, status_code=201)


@router.delete(
    "/parties/{party_id}/keys/{key_id}", status_code=204, summary="Revoke a key", responses=_ERROR_RESPONSES
)
async def revoke_key(request: Request, party_id: str, key_id: int) -> Response:
    await _db(request, lambda c: parties.revoke_key(c.gw, c.actor, party_id, key_id), changes=True)
    return Response(status_code=204)


# -- bundles (drivers; service providers on a driver's behalf) -------------------------------------

_BUNDLE_FIELDS = {"vehicle", "control_point", "ccrns", "driver", "expected_arrival"}


def _object(data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise GatewayError([Problem("INVALID_VALUE", key, f"unknown field {key!r}") for key in unknown])
    return data


@router.post("/bundles", status_code=201, summary="Bundle CCRNs with a vehicle", responses=_ERROR_RESPONSES)
@direct
async def create_bundle(request: Request) -> JSONResponse:
    def work(c: _Call) -> Any:
        body = _object(c.data, _BUNDLE_FIELDS)
        return bundles.bundle_outcome(
            c.gw,
            c.actor,
            body.get("vehicle"),
            body.get("control_point"),
            body.get("ccrns"),
            driver=body.get("driver"),
            expected_arrival=body.get("expected_arrival"),
        )

    # The same request sent again (its answer lost) is answered 200 with the bundle it made.
    view, created = await _db(request, work, changes=True, json_body=True, raw_id=False)
    return JSONResponse(view, status_code=201 if created else 200)


@router.get("/bundles/{bundle_id}", summary="A bundle", responses=_ERROR_RESPONSES)
async def get_bundle(request: Request, bundle_id: str) -> JSONResponse:
    return JSONResponse(await _db(request, lambda c: bundles.get(c.gw, c.actor, bundle_id)))


@router.delete("/bundles/{bundle_id}", summary="Unbundle", responses=_ERROR_RESPONSES)
async def delete_bundle(request: Request, bundle_id: str) -> JSONResponse:
    return JSONResponse(
        await _db(request, lambda c: bundles.unbundle(c.gw, c.actor, bundle_id), changes=True)
    )


@router.post("/bundles/{bundle_id}/ccrns", summary="Add CCRNs to a live bundle", responses=_ERROR_RESPONSES)
async def add_to_bundle(request: Request, bundle_id: str) -> JSONResponse:
    def work(c: _Call) -> Any:
        return bundles.add_ccrns(c.gw, c.actor, bundle_id, _object(c.data, {"ccrns"}).get("ccrns"))

    return JSONResponse(await _db(request, work, changes=True, json_body=True))


@router.delete(
    "/bundles/{bundle_id}/ccrns/{ccrn}", summary="Take a CCRN off a bundle", responses=_ERROR_RESPONSES
)
async def remove_from_bundle(request: Request, bundle_id: str, ccrn: str) -> JSONResponse:
    return JSONResponse(
        await _db(request, lambda c: bundles.remove_ccrn(c.gw, c.actor, bundle_id, ccrn), changes=True)
    )
