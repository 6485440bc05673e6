"""Officers' pages: registration applications (approve, reject), parties (register, suspend,
reinstate, revoke keys) and the inspection queue (release, hold).

A new party's API key and a driver's PIN are shown once, on the page that answers the approval or the
registration, for the officer to hand over; they are stored hashed and cannot be shown again."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select

from adapters.portal import registrations
from adapters.portal.web import Page, serve
from gateway import clearance, parties, tables
from gateway.context import ROLES, Gateway, iso_hk, store_raw
from gateway.errors import GatewayError

router = APIRouter(prefix="/officer")
OFFICERS = ("officer",)
FORM_TYPE = "application/x-www-form-urlencoded"


def _int(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise GatewayError.one("NOT_FOUND", f"no such record {text!r}")
    return int(text)


@router.get("/applications", include_in_schema=False)
async def applications(request: Request, status: str = "PENDING") -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        wanted = status if status in ("PENDING", "APPROVED", "REJECTED") else None
        rows = registrations.list_applications(page.gw, page.actor, wanted)
        return page.render("applications.html", rows=rows, chosen=wanted or "")

    return await serve(request, work, roles=OFFICERS)


@router.post("/applications/{application_id}/approve", include_in_schema=False)
async def approve(request: Request, application_id: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        application, new = registrations.approve(page.gw, page.actor, _int(application_id))
        return page.render(
            "issued.html", party=new.as_dict(), role=application["role"], name=application["name"]
        )

    return await serve(request, work, roles=OFFICERS)


@router.post("/applications/{application_id}/reject", include_in_schema=False)
async def reject(request: Request, application_id: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        registrations.reject(page.gw, page.actor, _int(application_id), page.value("reason"))
        return page.redirect("/officer/applications")

    return await serve(request, work, roles=OFFICERS)


def _parties(gw: Gateway, query: str) -> list[dict[str, Any]]:
    p = tables.parties
    select_parties = select(p).order_by(p.c.created_at.desc()).limit(100)
    text = query.strip()
    if text.isdigit():
        select_parties = select_parties.where(p.c.party_id == text)
    elif text:
        select_parties = select_parties.where(p.c.name.ilike(f"%{text[:140]}%"))
    with gw.engine.connect() as conn:
        return [
            {
                "party_id": r.party_id,
                "role": r.role,
                "name": r.name,
                "status": r.status,
                "created_at": iso_hk(r.created_at),
            }
            for r in conn.execute(select_parties)
        ]


def _parties_page(
    page: Page, q: str, values: dict[str, str], errors: dict[str, list[str]], status: int = 200
) -> Response:
    return page.render(
        "parties.html",
        status=status,
        rows=_parties(page.gw, q),
        q=q,
        roles=ROLES,
        values=values,
        errors=errors,
        control_points=page.gw.config.control_points,
    )


@router.get("/parties", include_in_schema=False)
async def parties_page(request: Request, q: str = "") -> Response:
    return await serve(request, lambda page: _parties_page(page, q, {}, {}), roles=OFFICERS)


@router.post("/parties", include_in_schema=False)
async def register(request: Request) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        values = {k: page.value(k) for k in ("role", "name", "edi_id", "scope", "control_point")}
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        try:
            new = parties.add_party(
                page.gw,
                page.actor,
                values["role"],
                values["name"],
                edi_ids=tuple(e for e in values["edi_id"].split() if e),
                scope=values["scope"] or None,
                control_point=values["control_point"] or None,
            )
        except GatewayError as exc:
            errors: dict[str, list[str]] = {}
            for p in exc.problems:
                where = (p.field or "name").split("[")[0]
                errors.setdefault("edi_id" if where == "edi_ids" else where, []).append(p.message)
            return _parties_page(page, "", values, errors, status=exc.http_status)
        return page.render("issued.html", party=new.as_dict(), role=values["role"], name=values["name"])

    return await serve(request, work, roles=OFFICERS)


@router.get("/parties/{party_id}", include_in_schema=False)
async def party_page(request: Request, party_id: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        return page.render(
            "party.html",
            p=parties.get_party(page.gw, page.actor, party_id),
            keys=parties.list_keys(page.gw, page.actor, party_id),
        )

    return await serve(request, work, roles=OFFICERS)


@router.post("/parties/{party_id}/{action}", include_in_schema=False)
async def party_action(request: Request, party_id: str, action: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        if action == "suspend":
            parties.suspend(page.gw, page.actor, party_id)
        elif action == "reinstate":
            parties.reinstate(page.gw, page.actor, party_id)
        elif action == "revoke":
            parties.revoke_key(page.gw, page.actor, party_id, _int(page.value("key_id")))
        else:
            raise GatewayError.one("NOT_FOUND", f"no action {action!r}")
        return page.redirect(f"/officer/parties/{party_id}")

    return await serve(request, work, roles=OFFICERS)


@router.get("/inspections", include_in_schema=False)
async def inspections(request: Request, status: str = "OPEN") -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        wanted = status if status in ("OPEN", "RELEASED", "HELD") else None
        rows = clearance.list_inspections(page.gw, page.actor, wanted)
        return page.render("inspections.html", rows=rows, chosen=wanted or "", errors={})

    return await serve(request, work, roles=OFFICERS)


@router.post("/inspections/{inspection_id}/{outcome}", include_in_schema=False)
async def close_inspection(request: Request, inspection_id: str, outcome: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        if outcome not in ("release", "hold"):
            raise GatewayError.one("NOT_FOUND", f"no action {outcome!r}")
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        data = {
            "findings": page.value("findings"),
            "undeclared_cargo": page.value("undeclared_cargo") == "on",
        }
        try:
            clearance.close_inspection(
                page.gw, page.actor, inspection_id, "RELEASED" if outcome == "release" else "HELD", data
            )
        except GatewayError as exc:
            if exc.http_status == 404:
                raise
            rows = clearance.list_inspections(page.gw, page.actor, "OPEN")
            errors = {inspection_id: [p.message for p in exc.problems]}
            return page.render(
                "inspections.html", status=exc.http_status, rows=rows, chosen="OPEN", errors=errors
            )
        return page.redirect("/officer/inspections")

    return await serve(request, work, roles=OFFICERS)
