"""The HTTP JSON API of design section 9 (``/api/v1``): thin handlers that authenticate, keep the raw
body, call one service function and render its result."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from gateway import bundles, consignments, parties
from gateway.context import Actor, Gateway, store_raw
from gateway.errors import GatewayError, Problem

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


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def _actor(request: Request) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise GatewayError.one("UNAUTHORIZED", "send your API key as 'Authorization: Bearer KEY'")
    return await run_in_threadpool(parties.authenticate, _gateway(request), key.strip(), "http")


async def _json_body(request: Request, actor: Actor) -> tuple[Any, int]:
    """The raw body is stored (with its SHA-256) before it is read, so nothing received is lost."""
    body = await request.body()
    raw_id = await run_in_threadpool(
        store_raw, _gateway(request), actor, request.headers.get("content-type"), body
    )
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise GatewayError.one("UNSUPPORTED_MEDIA_TYPE", f"send application/json, not {content_type}")
    try:
        return json.loads(body.decode("utf-8")), raw_id
    except UnicodeDecodeError:
        raise GatewayError.one("MALFORMED", "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise GatewayError.one(
            "MALFORMED", f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


async def _json_body_optional(request: Request, actor: Actor) -> int:
    """Requests without a body that still change data (DELETE) are kept too, for the record."""
    body = await request.body()
    return await run_in_threadpool(
        store_raw, _gateway(request), actor, request.headers.get("content-type"), body
    )


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
async def lodge(request: Request) -> JSONResponse:
    actor = await _actor(request)
    data, raw_id = await _json_body(request, actor)
    outcome = await run_in_threadpool(consignments.lodge, _gateway(request), actor, data, raw_id)
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
    actor = await _actor(request)
    rows = await run_in_threadpool(
        lambda: consignments.list_consignments(
            _gateway(request), actor, status=status, reference=reference, limit=limit, offset=max(offset, 0)
        )
    )
    return JSONResponse({"consignments": rows})


@router.get(
    "/consignments/{ccrn}",
    summary="A consignment: its latest version and status",
    responses={200: _CONSIGNMENT, **_ERROR_RESPONSES},
)
async def get_consignment(request: Request, ccrn: str) -> JSONResponse:
    actor = await _actor(request)
    return JSONResponse(await run_in_threadpool(consignments.get, _gateway(request), actor, ccrn))


@router.get(
    "/consignments/{ccrn}/versions", summary="Every version of the record", responses=_ERROR_RESPONSES
)
async def get_versions(request: Request, ccrn: str) -> JSONResponse:
    actor = await _actor(request)
    versions = await run_in_threadpool(consignments.history, _gateway(request), actor, ccrn)
    return JSONResponse({"ccrn": versions and ccrn.replace(" ", ""), "versions": versions})


@router.put(
    "/consignments/{ccrn}",
    openapi_extra=_RECORD_BODY,
    summary="Amend: a new version when the content changes",
    responses={200: _CONSIGNMENT, **_ERROR_RESPONSES},
)
async def amend(request: Request, ccrn: str) -> JSONResponse:
    actor = await _actor(request)
    data, raw_id = await _json_body(request, actor)
    outcome = await run_in_threadpool(consignments.amend, _gateway(request), actor, ccrn, data, raw_id)
    if outcome.changed:
        _metric(request, "amend")
    return JSONResponse(outcome.view)


@router.delete(
    "/consignments/{ccrn}", summary="Cancel a consignment", responses={200: _CONSIGNMENT, **_ERROR_RESPONSES}
)
async def cancel(request: Request, ccrn: str) -> JSONResponse:
    actor = await _actor(request)
    raw_id = await _json_body_optional(request, actor)
    outcome = await run_in_threadpool(consignments.cancel, _gateway(request), actor, ccrn, raw_id)
    if outcome.changed:
        _metric(request, "cancel")
    return JSONResponse(outcome.view)


# -- parties (officers; a party may read itself and rotate its own keys) ---------------------------


@router.post("/parties", status_code=201, summary="Register a party (officers)", responses=_ERROR_RESPONSES)
async def add_party(request: Request) -> JSONResponse:
    actor = await _actor(request)
    data, _raw = await _json_body(request, actor)
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", 'send an object: {"role", "name", ...}')
    unknown = set(data) - {"role", "name", "edi_ids", "scope", "control_point"}
    if unknown:
        raise GatewayError.one("INVALID_VALUE", f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
    edi_ids = data.get("edi_ids") or []
    if not isinstance(edi_ids, list) or not all(isinstance(e, str) for e in edi_ids):
        raise GatewayError.one("INVALID_VALUE", "edi_ids is a list of strings", "edi_ids")
    for key in ("role", "name"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise GatewayError.one("MISSING_FIELD", "is required", key)
    new = await run_in_threadpool(
        lambda: parties.add_party(
            _gateway(request),
            actor,
            data["role"],
            data["name"],
            edi_ids=tuple(edi_ids),
            scope=data.get("scope"),
            control_point=data.get("control_point"),
        )
    )
    return JSONResponse(new.as_dict(), status_code=201)


@router.get("/parties/{party_id}", summary="A party", responses=_ERROR_RESPONSES)
async def get_party(request: Request, party_id: str) -> JSONResponse:
    actor = await _actor(request)
    return JSONResponse(await run_in_threadpool(parties.get_party, _gateway(request), actor, party_id))


@router.post("/parties/{party_id}/suspend", summary="Suspend a party (officers)", responses=_ERROR_RESPONSES)
async def suspend_party(request: Request, party_id: str) -> JSONResponse:
    actor = await _actor(request)
    return JSONResponse(await run_in_threadpool(parties.suspend, _gateway(request), actor, party_id))


@router.post(
    "/parties/{party_id}/reinstate", summary="Reinstate a party (officers)", responses=_ERROR_RESPONSES
)
async def reinstate_party(request: Request, party_id: str) -> JSONResponse:
    actor = await _actor(request)
    return JSONResponse(await run_in_threadpool(parties.reinstate, _gateway(request), actor, party_id))


@router.get("/parties/{party_id}/keys", summary="A party's API keys (hints only)", responses=_ERROR_RESPONSES)
async def list_keys(request: Request, party_id: str) -> JSONResponse:
    actor = await _actor(request)
    return JSONResponse(
        {"keys": await run_in_threadpool(parties.list_keys, _gateway(request), actor, party_id)}
    )


@router.post(
    "/parties/{party_id}/keys",
    status_code=201,
    summary="A second key, for rotation",
    responses=_ERROR_RESPONSES,
)
async def add_key(request: Request, party_id: str) -> JSONResponse:
    actor = await _actor(request)
    return JSONResponse(
        await run_in_threadpool(parties.add_key, _gateway(request), actor, party_id), status_code=201
    )


@router.delete(
    "/parties/{party_id}/keys/{key_id}", status_code=204, summary="Revoke a key", responses=_ERROR_RESPONSES
)
async def revoke_key(request: Request, party_id: str, key_id: int) -> Response:
    actor = await _actor(request)
    await run_in_threadpool(parties.revoke_key, _gateway(request), actor, party_id, key_id)
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
async def create_bundle(request: Request) -> JSONResponse:
    actor = await _actor(request)
    data, _raw = await _json_body(request, actor)
    body = _object(data, _BUNDLE_FIELDS)
    view = await run_in_threadpool(
        lambda: bundles.bundle(
            _gateway(request),
            actor,
            body.get("vehicle"),
            body.get("control_point"),
            body.get("ccrns"),
            driver=body.get("driver"),
            expected_arrival=body.get("expected_arrival"),
        )
    )
    return JSONResponse(view, status_code=201)


@router.get("/bundles/{bundle_id}", summary="A bundle", responses=_ERROR_RESPONSES)
async def get_bundle(request: Request, bundle_id: str) -> JSONResponse:
    actor = await _actor(request)
    return JSONResponse(await run_in_threadpool(bundles.get, _gateway(request), actor, bundle_id))


@router.delete("/bundles/{bundle_id}", summary="Unbundle", responses=_ERROR_RESPONSES)
async def delete_bundle(request: Request, bundle_id: str) -> JSONResponse:
    actor = await _actor(request)
    await _json_body_optional(request, actor)
    return JSONResponse(await run_in_threadpool(bundles.unbundle, _gateway(request), actor, bundle_id))


@router.post("/bundles/{bundle_id}/ccrns", summary="Add CCRNs to a live bundle", responses=_ERROR_RESPONSES)
async def add_to_bundle(request: Request, bundle_id: str) -> JSONResponse:
    actor = await _actor(request)
    data, _raw = await _json_body(request, actor)
    body = _object(data, {"ccrns"})
    return JSONResponse(
        await run_in_threadpool(bundles.add_ccrns, _gateway(request), actor, bundle_id, body.get("ccrns"))
    )


@router.delete(
    "/bundles/{bundle_id}/ccrns/{ccrn}", summary="Take a CCRN off a bundle", responses=_ERROR_RESPONSES
)
async def remove_from_bundle(request: Request, bundle_id: str, ccrn: str) -> JSONResponse:
    actor = await _actor(request)
    await _json_body_optional(request, actor)
    return JSONResponse(
        await run_in_threadpool(bundles.remove_ccrn, _gateway(request), actor, bundle_id, ccrn)
    )
