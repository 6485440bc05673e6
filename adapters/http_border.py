"""The border side of the JSON API (design sections 5, 7 and 9): risk profiles and targets, offences,
the kiosk, inspections, transhipments and contingency. Thin handlers in the style of ``http_api``:
authenticate, keep the raw body of a change, call one service function, render its result.

Only officers get risk (profiles, targets, scores, draws); the kiosk endpoint answers other callers with
the decision, generic reasons and the CCRNs only.
"""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.util.concurrency import await_only

from adapters.http_api import _ERROR_RESPONSES, _Call, _object, _run, direct, loop_capable, on_loop, then
from gateway import clearance, metrics, risk, risk_admin, transhipments
from gateway.context import Gateway

router = APIRouter(prefix="/api/v1")


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_KIOSK_BODY = _body_schema(
    {
        "type": "object",
        "required": ["control_point", "lane", "vehicle", "driver_document"],
        "additionalProperties": False,
        "properties": {
            "control_point": {"type": "string", "description": "the kiosk's land control point, e.g. LMC"},
            "lane": {"type": "string"},
            "vehicle": {"type": "string", "description": "registration mark"},
            "driver_document": {"type": "string", "maxLength": 35, "description": "travel document number"},
            "empty": {"type": "boolean", "default": False},
            "elock_id": {"type": "string", "maxLength": 35, "description": "e-lock fitted (transhipment)"},
        },
    }
)
_DECISION = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["decision", "reasons", "ccrns"],
                "properties": {
                    "decision": {"type": "string", "enum": list(clearance.DECISIONS)},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "ccrns": {"type": "array", "items": {"type": "string"}},
                    "come_back_at": {"type": "string", "format": "date-time"},
                },
            }
        }
    }
}
_PROFILE_BODY = _body_schema(
    {
        "type": "object",
        "required": ["name", "weight", "conditions"],
        "properties": {
            "name": {"type": "string", "maxLength": 60},
            "weight": {"type": "integer"},
            "conditions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "op", "values"],
                    "properties": {
                        "field": {"type": "string", "description": "items.hs_code, ... or a derived field"},
                        "op": {"type": "string", "enum": list(risk.OPERATORS)},
                        "values": {"type": "array"},
                    },
                },
            },
        },
    }
)


# -- risk profiles (officers) ----------------------------------------------------------------------


@router.post(
    "/risk/profiles",
    status_code=201,
    summary="Create a risk profile (officers)",
    openapi_extra=_PROFILE_BODY,
    responses=_ERROR_RESPONSES,
)
@direct
async def create_profile(request: Request) -> JSONResponse:
    view = await _run(
        request, lambda c: risk_admin.create_profile(c.gw, c.actor, c.data), changes=True, json_body=True
    )
    return JSONResponse(view, status_code=201)


@router.get("/risk/profiles", summary="Risk profiles (officers)", responses=_ERROR_RESPONSES)
async def list_profiles(request: Request, include_retired: bool = False) -> JSONResponse:
    rows = await _run(request, lambda c: risk_admin.list_profiles(c.gw, c.actor, include_retired))
    return JSONResponse({"profiles": rows})


@router.post(
    "/risk/profiles/dry-run",
    summary="The live consignments a profile would hit and select (officers)",
    responses=_ERROR_RESPONSES,
)
@direct
async def dry_run(request: Request) -> JSONResponse:
    # The raw body is kept like a change's: the only way to read it through _run.
    return JSONResponse(
        await _run(request, lambda c: risk_admin.dry_run(c.gw, c.actor, c.data), changes=True, json_body=True)
    )


@router.get(
    "/risk/profiles/{profile_id}", summary="A risk profile and its versions", responses=_ERROR_RESPONSES
)
async def get_profile(request: Request, profile_id: str) -> JSONResponse:
    return JSONResponse(await _run(request, lambda c: risk_admin.get_profile(c.gw, c.actor, profile_id)))


@router.put(
    "/risk/profiles/{profile_id}", summary="Change a risk profile (officers)", responses=_ERROR_RESPONSES
)
async def change_profile(request: Request, profile_id: str) -> JSONResponse:
    view = await _run(
        request,
        lambda c: risk_admin.change_profile(c.gw, c.actor, profile_id, c.data),
        changes=True,
        json_body=True,
    )
    return JSONResponse(view)


@router.delete(
    "/risk/profiles/{profile_id}", summary="Retire a risk profile (officers)", responses=_ERROR_RESPONSES
)
async def retire_profile(request: Request, profile_id: str) -> JSONResponse:
    return JSONResponse(
        await _run(request, lambda c: risk_admin.retire_profile(c.gw, c.actor, profile_id), changes=True)
    )


@router.get(
    "/risk/results/{ccrn}",
    summary="A consignment's profiling results, draws replayed (officers)",
    responses=_ERROR_RESPONSES,
)
async def risk_results(request: Request, ccrn: str) -> JSONResponse:
    return JSONResponse(await _run(request, lambda c: risk_admin.results_for(c.gw, c.actor, ccrn)))


# -- targets (officers) ---------------------------------------------------------------------------------


@router.post(
    "/risk/targets", status_code=201, summary="Target a CCRN, vehicle or party", responses=_ERROR_RESPONSES
)
@direct
async def add_target(request: Request) -> JSONResponse:
    view = await _run(
        request, lambda c: risk_admin.add_target(c.gw, c.actor, c.data), changes=True, json_body=True
    )
    return JSONResponse(view, status_code=201)


@router.get("/risk/targets", summary="Live targets (officers)", responses=_ERROR_RESPONSES)
async def list_targets(request: Request, include_expired: bool = False) -> JSONResponse:
    rows = await _run(request, lambda c: risk_admin.list_targets(c.gw, c.actor, include_expired))
    return JSONResponse({"targets": rows})


@router.delete("/risk/targets/{target_id}", summary="Revoke a target (officers)", responses=_ERROR_RESPONSES)
async def revoke_target(request: Request, target_id: str) -> JSONResponse:
    return JSONResponse(
        await _run(request, lambda c: risk_admin.revoke_target(c.gw, c.actor, target_id), changes=True)
    )


# -- offences (officers) --------------------------------------------------------------------------------


@router.post("/offences", status_code=201, summary="Record an offence (officers)", responses=_ERROR_RESPONSES)
@direct
async def add_offence(request: Request) -> JSONResponse:
    view = await _run(
        request, lambda c: risk_admin.add_offence(c.gw, c.actor, c.data), changes=True, json_body=True
    )
    return JSONResponse(view, status_code=201)


@router.get("/offences", summary="Offences, newest first (officers)", responses=_ERROR_RESPONSES)
async def list_offences(
    request: Request, party_id: str | None = None, vehicle: str | None = None
) -> JSONResponse:
    rows = await _run(request, lambda c: risk_admin.list_offences(c.gw, c.actor, party_id, vehicle))
    return JSONResponse({"offences": rows})


# -- the kiosk --------------------------------------------------------------------------------------------


@router.post(
    "/kiosk/clearances",
    summary="The one-stop decision for an arriving vehicle (kiosks bound to the control point, officers)",
    openapi_extra=_KIOSK_BODY,
    responses={200: _DECISION, **_ERROR_RESPONSES},
)
@direct
async def kiosk_clearance(request: Request) -> JSONResponse:
    gw = request.app.state.gateway
    if loop_capable(gw):
        # PostgreSQL: the whole decision in a greenlet on the event loop, in one transaction that holds
        # the vehicle's rows while Immigration's answer is awaited (clearance.decide_held): two round
        # trips, no thread hand-offs (bench/RESULTS.md, session 8).
        def ask(req: clearance.KioskRequest, driver: str | None) -> str | None:
            return await_only(_ask_immigration(gw, req, driver))

        decision = await _run(
            request,
            lambda c: clearance.decide_held(c.gw, c.actor, c.data, ask),
            changes=True,
            json_body=True,
            raw_id=False,
            loop=True,
        )
    else:
        # SQLite: the decision's two steps of database work on the event loop's thread, Immigration's
        # answer awaited in between with the store not locked (its one writer locks the whole
        # database): no thread waits for it, nor hands work to another (bench/RESULTS.md, sessions 7
        # and 8).
        actor, seen = await _run(
            request,
            lambda c: (c.actor, clearance.look(c.gw, c.actor, c.data)),
            changes=True,
            json_body=True,
            raw_id=False,
            loop=True,
        )
        answer = await _ask_immigration(gw, seen.req, seen.driver) if seen.asks_immigration() else None
        decision = await on_loop(gw, lambda: clearance.finish(gw, actor, seen, answer))
    metrics.observe_decision(decision.get("decision"))  # roadcargo_kiosk_decisions_total
    return JSONResponse(decision)


async def _ask_immigration(gw: Gateway, req: clearance.KioskRequest, driver: str | None) -> str | None:
    """Immigration's answer, from the event loop; a client that cannot be awaited (its WSDL not loaded
    yet, an https URL or a proxy) is called on a service thread."""
    if clearance.asks_from_event_loop(gw):
        return await clearance.ask_immigration_async(gw, req, driver)
    return cast(str | None, await then(gw, lambda: clearance.ask_immigration(gw, req, driver)))


@router.get(
    "/kiosk/clearances", summary="Kiosk decisions with their detail (officers)", responses=_ERROR_RESPONSES
)
async def list_clearances(request: Request, vehicle: str | None = None) -> JSONResponse:
    rows = await _run(request, lambda c: clearance.list_clearances(c.gw, c.actor, vehicle))
    return JSONResponse({"clearances": rows})


@router.post(
    "/control-points/{code}/contingency",
    summary="Switch a control point to contingency and back (officers)",
    responses=_ERROR_RESPONSES,
)
async def contingency(request: Request, code: str) -> JSONResponse:
    def work(c: _Call) -> Any:
        return clearance.set_contingency(c.gw, c.actor, code, _object(c.data, {"active"}).get("active"))

    return JSONResponse(await _run(request, work, changes=True, json_body=True))


# -- inspections (officers) ----------------------------------------------------------------------------


@router.get("/inspections", summary="Inspection cases and why they were selected", responses=_ERROR_RESPONSES)
async def list_inspections(
    request: Request, status: str | None = "OPEN", control_point: str | None = None
) -> JSONResponse:
    rows = await _run(
        request,
        lambda c: clearance.list_inspections(
            c.gw, c.actor, None if status == "ALL" else status, control_point
        ),
    )
    return JSONResponse({"inspections": rows})


@router.get("/inspections/{inspection_id}", summary="An inspection case", responses=_ERROR_RESPONSES)
async def get_inspection(request: Request, inspection_id: str) -> JSONResponse:
    return JSONResponse(await _run(request, lambda c: clearance.get_inspection(c.gw, c.actor, inspection_id)))


@router.post(
    "/inspections/{inspection_id}/release",
    summary="Close a case as released: the consignments cross",
    responses=_ERROR_RESPONSES,
)
async def release_inspection(request: Request, inspection_id: str) -> JSONResponse:
    def work(c: _Call) -> Any:
        return clearance.close_inspection(c.gw, c.actor, inspection_id, "RELEASED", c.data)

    return JSONResponse(await _run(request, work, changes=True, json_body=await _has_body(request)))


@router.post(
    "/inspections/{inspection_id}/hold",
    summary="Close a case as held, with findings",
    responses=_ERROR_RESPONSES,
)
async def hold_inspection(request: Request, inspection_id: str) -> JSONResponse:
    def work(c: _Call) -> Any:
        return clearance.close_inspection(c.gw, c.actor, inspection_id, "HELD", c.data)

    return JSONResponse(await _run(request, work, changes=True, json_body=True))


async def _has_body(request: Request) -> bool:
    return bool((await request.body()).strip())


# -- transhipment --------------------------------------------------------------------------------------


@router.post(
    "/transhipments/{ccrn}/airport",
    summary="Air-to-land: the airport records its release or inspection and the e-lock",
    responses=_ERROR_RESPONSES,
)
async def airport(request: Request, ccrn: str) -> JSONResponse:
    return JSONResponse(
        await _run(
            request,
            lambda c: transhipments.record_airport(c.gw, c.actor, ccrn, c.data),
            changes=True,
            json_body=True,
        )
    )


@router.post(
    "/transhipments/{ccrn}/arrival",
    summary="The second control point confirms the e-lock intact",
    responses=_ERROR_RESPONSES,
)
async def arrival(request: Request, ccrn: str) -> JSONResponse:
    return JSONResponse(
        await _run(
            request,
            lambda c: transhipments.confirm_arrival(c.gw, c.actor, ccrn, c.data),
            changes=True,
            json_body=True,
        )
    )


@router.get(
    "/transhipments/overdue",
    summary="Transhipments overdue at their second control point",
    responses=_ERROR_RESPONSES,
)
@direct
async def overdue(request: Request) -> JSONResponse:
    return JSONResponse(
        {"transhipments": await _run(request, lambda c: transhipments.overdue(c.gw, c.actor))}
    )
