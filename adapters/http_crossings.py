"""Contingency crossings over the JSON API (design sections 5 and 9): officers record the crossings they
cleared by hand while a control point was in contingency (``gateway/crossings.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from adapters.http_api import _ERROR_RESPONSES, _Call, _run
from gateway import crossings

router = APIRouter(prefix="/api/v1")

_CROSSING = {
    "type": "object",
    "properties": {
        "crossing_id": {"type": "integer"},
        "control_point": {"type": "string"},
        "lane": {"type": ["string", "null"]},
        "vehicle": {"type": "string"},
        "bundle_id": {"type": ["string", "null"]},
        "ccrns": {"type": "array", "items": {"type": "string"}},
        "crossed_at": {"type": "string", "format": "date-time"},
        "recorded_at": {"type": "string", "format": "date-time"},
        "recorded_by": {"type": ["string", "null"]},
        "notes": {"type": ["string", "null"]},
        "consignments": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "ccrn": {"type": "string"},
                    "status": {"type": "string"},
                    "status_version": {"type": "integer"},
                },
            },
        },
    },
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["control_point", "vehicle", "ccrns", "crossed_at"],
                    "additionalProperties": False,
                    "properties": {
                        "control_point": {
                            "type": "string",
                            "description": "the land control point, e.g. LMC",
                        },
                        "vehicle": {"type": "string", "description": "registration mark"},
                        "ccrns": {
                            "type": "array",
                            "items": {"type": "string", "pattern": "^[0-9 ]{12,15}$"},
                            "description": "every CCRN the vehicle carried (from the barcodes)",
                        },
                        "crossed_at": {
                            "type": "string",
                            "format": "date-time",
                            "description": "when the truck crossed (no offset: Hong Kong time)",
                        },
                        "lane": {"type": "string"},
                        "notes": {"type": "string", "maxLength": crossings.MAX_NOTES},
                    },
                }
            }
        },
    }
}
_ONE = {"content": {"application/json": {"schema": _CROSSING}}}


@router.post(
    "/crossings",
    status_code=201,
    summary="Record a crossing cleared by hand during contingency (officers)",
    responses={
        201: {"description": "recorded: the consignments are CROSSED", **_ONE},
        200: {"description": "the same crossing was recorded before; nothing changed", **_ONE},
        **_ERROR_RESPONSES,
    },
    openapi_extra=_BODY,
)
async def record_crossing(request: Request) -> JSONResponse:
    def work(c: _Call) -> Any:
        return crossings.record(c.gw, c.actor, c.data)

    view, new = await _run(request, work, changes=True, json_body=True)
    return JSONResponse(view, status_code=201 if new else 200)


@router.get(
    "/crossings",
    summary="Contingency crossings, newest first (officers)",
    responses={
        200: {"content": {"application/json": {"schema": {"type": "array", "items": _CROSSING}}}},
        **_ERROR_RESPONSES,
    },
)
async def list_crossings(
    request: Request, control_point: str | None = None, vehicle: str | None = None
) -> JSONResponse:
    rows = await _run(request, lambda c: crossings.list_crossings(c.gw, c.actor, control_point, vehicle))
    return JSONResponse(rows)


@router.get(
    "/crossings/{crossing_id}",
    summary="One contingency crossing with its consignments' status (officers)",
    responses={200: {"description": "the crossing", **_ONE}, **_ERROR_RESPONSES},
)
async def get_crossing(request: Request, crossing_id: str) -> JSONResponse:
    return JSONResponse(await _run(request, lambda c: crossings.get(c.gw, c.actor, crossing_id)))
