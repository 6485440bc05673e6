"""Pages anyone may open: home, login and logout, the language switch, applying to register (also over
the JSON API), the account page, the kiosk display, and the portal's own static files."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from adapters.portal import accounts, registrations
from adapters.portal.web import (
    DISPLAY_SESSION_HOURS,
    HERE,
    LANG_COOKIE,
    LANGUAGES,
    SESSION_COOKIE,
    SESSION_HOURS,
    Page,
    end_session,
    message,
    serve,
    start_session,
)
from gateway import clearance, tables
from gateway.clock import HONG_KONG
from gateway.context import ROLES, Gateway
from gateway.errors import GatewayError

router = APIRouter()

STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}
_MEDIA = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def safe_next(target: str) -> str:
    """Only a path of this site: never an absolute URL (an open redirect) or a protocol-relative one."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    path = STATIC.get(name)
    if path is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(
        path,
        media_type=_MEDIA.get(path.suffix, "application/octet-stream"),
        headers={"Cache-Control": "max-age=300"},
    )


@router.get("/", include_in_schema=False)
async def home(request: Request) -> Response:
    return await serve(request, lambda page: page.render("home.html"))


@router.get("/lang/{code}", include_in_schema=False)
async def language(request: Request, code: str, next: str = "/") -> Response:
    def work(page: Page) -> Response:
        if code in LANGUAGES:
            page.cookies[LANG_COOKIE] = (code, 365 * 24 * 3600)
        return page.redirect(safe_next(next))

    return await serve(request, work)


@router.get("/login", include_in_schema=False)
async def login_form(request: Request, next: str = "/") -> Response:
    return await serve(
        request, lambda page: page.render("login.html", next=safe_next(next), party_id="", error=None)
    )


@router.post("/login", include_in_schema=False)
async def login(request: Request) -> Response:
    def work(page: Page) -> Response:
        party_id = page.value("party_id")
        try:
            actor, key_id = accounts.log_in_with(page.gw, party_id, page.value("secret"))
        except GatewayError:
            return page.render(
                "login.html",
                status=401,
                next=safe_next(page.value("next")),
                party_id=party_id,
                error=page.t("login.failed"),
            )
        assert actor.party_id is not None
        # A new token at every login, so a session id planted before login is worth nothing.
        end_session(page.gw, request.cookies.get(SESSION_COOKIE))
        hours = DISPLAY_SESSION_HOURS if actor.role == "kiosk" else SESSION_HOURS
        session = start_session(page.gw, actor.party_id, hours, key_id=key_id)  # ends if the key is revoked
        page.cookies[SESSION_COOKIE] = (session, hours * 3600)
        return page.redirect(safe_next(page.value("next")))

    return await serve(request, work)


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    def work(page: Page) -> Response:
        end_session(page.gw, request.cookies.get(SESSION_COOKIE))
        page.cookies[SESSION_COOKIE] = ("", None)
        return page.redirect("/login")

    return await serve(request, work)


@router.get("/account", include_in_schema=False)
async def account(request: Request) -> Response:
    return await serve(request, lambda page: page.render("account.html", errors={}, done=False), roles=ROLES)


@router.post("/account/password", include_in_schema=False)
async def account_password(request: Request) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        try:
            accounts.set_password(
                page.gw, page.actor, page.value("current"), page.value("password"), page.value("confirm")
            )
        except GatewayError as exc:
            errors = {p.field or "password": p.message for p in exc.problems}
            return page.render("account.html", status=422, errors=errors, done=False)
        return page.render("account.html", errors={}, done=True)

    return await serve(request, work, roles=ROLES)


# -- applying to register ------------------------------------------------------------------------------


@router.get("/apply", include_in_schema=False)
async def apply_form(request: Request) -> Response:
    return await serve(
        request,
        lambda page: page.render(
            "apply.html", roles=registrations.APPLICABLE_ROLES, values={}, errors={}, general=[]
        ),
    )


@router.post("/apply", include_in_schema=False)
async def apply(request: Request) -> Response:
    def work(page: Page) -> Response:
        values = {k: page.value(k) for k in ("role", "name", "contact", "business_id")}
        try:
            done = registrations.apply(page.gw, values, "portal")
        except GatewayError as exc:
            errors: dict[str, list[str]] = {}
            for p in exc.problems:
                errors.setdefault(p.field or "name", []).append(p.message)
            return page.render(
                "apply.html",
                status=422,
                roles=registrations.APPLICABLE_ROLES,
                values=values,
                errors=errors,
                general=[],
            )
        return page.render("applied.html", application=done)

    return await serve(request, work)


@router.post(
    "/api/v1/registrations",
    status_code=201,
    summary="Apply to register as a shipper, forwarder, service provider or driver (no login)",
    tags=["parties"],
)
async def apply_api(request: Request) -> JSONResponse:
    body = await request.body()
    gw: Gateway = request.app.state.gateway

    def work() -> dict[str, Any]:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise GatewayError.one("MALFORMED", "the body is not a JSON object") from None
        return registrations.apply(gw, data, "http")

    return JSONResponse(await run_in_threadpool(work), status_code=201)


# -- the kiosk display ---------------------------------------------------------------------------------


def latest_decision(gw: Gateway, control_point: str, lane: str) -> dict[str, Any] | None:
    """The newest kiosk decision at a lane, as the lane's display may show it: the decision, the
    vehicle, generic reasons and when to come back; never why a truck was selected."""
    k = tables.clearances
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(k.c.at, k.c.vehicle, k.c.decision, k.c.reasons, k.c.come_back_at)
            .where(k.c.control_point == control_point, k.c.lane == lane)
            .order_by(k.c.clearance_id.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    return {
        "at": _hk(row.at),
        "vehicle": row.vehicle,
        "decision": row.decision,
        "reasons": json.loads(row.reasons),
        "come_back_at": _hk(row.come_back_at),
    }


def _hk(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(HONG_KONG).strftime("%Y-%m-%d %H:%M")


# A lane display names the vehicles at the lane, so it is not public: it is opened by a kiosk party
# logged in on the screen (bound to its control point, like the kiosk device itself) or by an officer.
DISPLAYS = ("kiosk", "officer")


def _visible_points(page: Page) -> dict[str, Any]:
    points = dict(page.gw.config.control_points)
    if page.actor is not None and page.actor.role == "kiosk":
        with page.gw.engine.connect() as conn:
            bound = conn.scalar(
                select(tables.parties.c.control_point).where(tables.parties.c.party_id == page.actor.party_id)
            )
        points = {code: cp for code, cp in points.items() if code == bound}
    return points


@router.get("/kiosk", include_in_schema=False)
async def kiosk_index(request: Request) -> Response:
    return await serve(
        request,
        lambda page: page.render("kiosk_index.html", control_points=_visible_points(page)),
        roles=DISPLAYS,
    )


@router.get("/kiosk/{control_point}/{lane}", include_in_schema=False)
async def kiosk(request: Request, control_point: str, lane: str) -> Response:
    def work(page: Page) -> Response:
        point = _visible_points(page).get(control_point)
        if point is None or lane not in point.lanes:
            return message(page, "error.not_found_title", page.t("kiosk.unknown_lane"), status=404)
        with page.gw.engine.connect() as conn:
            contingency = clearance.in_contingency(conn, control_point)
        return page.render(
            "kiosk.html",
            control_point=control_point,
            point_name=point.name,
            lane=lane,
            decision=latest_decision(page.gw, control_point, lane),
            contingency=contingency,
        )

    return await serve(request, work, roles=DISPLAYS)
