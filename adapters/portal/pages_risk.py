"""Officers' border pages: risk profiles (list, create, change, retire, with a dry run of which live
consignments a profile would select), targets, contingency per control point, and the dashboard."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from adapters.portal import dashboard
from adapters.portal.web import Page, serve
from gateway import clearance, risk, risk_admin
from gateway.context import store_raw
from gateway.errors import GatewayError

router = APIRouter(prefix="/officer")
OFFICERS = ("officer",)
FORM_TYPE = "application/x-www-form-urlencoded"
_CONDITION = re.compile(r"^conditions\[(\d{1,2})\]\.(field|op|values)$")
FIELD_SUGGESTIONS = (
    "items.hs_code",
    "items.description",
    "items.origin_country",
    "consignor.name",
    "consignor.country",
    "consignee.name",
    "place_of_loading",
    *risk.DERIVED,
)


def _value(text: str, op: str) -> Any:
    """A condition value as typed: for the comparisons (lt, gt, eq) numbers and true/false as such;
    for the text operators always text (an HS code prefix 2402 is text, not a number)."""
    cleaned = text.strip()
    if op not in ("lt", "gt", "eq"):
        return cleaned
    if cleaned.lower() in ("true", "false"):
        return cleaned.lower() == "true"
    if re.fullmatch(r"-?[0-9]{1,15}", cleaned):
        return int(cleaned)
    if re.fullmatch(r"-?[0-9]{1,15}\.[0-9]{1,6}", cleaned):
        return float(cleaned)
    return cleaned


def profile_from_form(page: Page) -> tuple[dict[str, Any], dict[str, str], int]:
    """The profile as the service takes it, the form's text values, and how many condition rows."""
    assert page.form is not None
    texts: dict[str, str] = {k: page.value(k) for k in ("name", "weight")}
    rows: dict[int, dict[str, str]] = {}
    for key in page.form:
        match = _CONDITION.match(key)
        if match:
            rows.setdefault(int(match.group(1)), {})[match.group(2)] = page.value(key)
    conditions = []
    for n, (_i, row) in enumerate(sorted(rows.items())):
        if not any(v.strip() for v in row.values()):
            continue
        for part in ("field", "op", "values"):
            texts[f"conditions[{n}].{part}"] = row.get(part, "")
        values = [_value(v, row.get("op", "")) for v in row.get("values", "").split(",") if v.strip()]
        conditions.append({"field": row.get("field", "").strip(), "op": row.get("op", ""), "values": values})
    weight_text = texts["weight"].strip()
    weight: Any = int(weight_text) if re.fullmatch(r"-?[0-9]{1,6}", weight_text) else weight_text
    data = {"name": texts["name"], "weight": weight, "conditions": conditions}
    return data, texts, len(conditions)


def profile_texts(profile: dict[str, Any]) -> dict[str, str]:
    texts = {"name": profile["name"], "weight": str(profile["weight"])}
    for n, c in enumerate(profile["conditions"]):
        texts[f"conditions[{n}].field"] = c["field"]
        texts[f"conditions[{n}].op"] = c["op"]
        texts[f"conditions[{n}].values"] = ", ".join(
            str(v).lower() if isinstance(v, bool) else str(v) for v in c["values"]
        )
    return texts


def _errors(exc: GatewayError) -> tuple[dict[str, list[str]], list[str]]:
    errors: dict[str, list[str]] = {}
    general: list[str] = []
    for p in exc.problems:
        if p.field:
            errors.setdefault(p.field, []).append(p.message)
        else:
            general.append(p.message)
    return errors, general


def _profiles_page(
    page: Page,
    texts: dict[str, str],
    rows: int,
    errors: dict[str, list[str]] | None = None,
    general: list[str] | None = None,
    dry: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    status: int = 200,
    retired: bool = False,
) -> Response:
    assert page.actor is not None
    return page.render(
        "profiles.html",
        status=status,
        profiles=risk_admin.list_profiles(page.gw, page.actor, include_retired=retired)
        if profile is None
        else [],
        profile=profile,
        texts=texts,
        rows=max(rows + 2, 3),
        errors=errors or {},
        general=general or [],
        dry=dry,
        operators=risk.OPERATORS,
        suggestions=FIELD_SUGGESTIONS,
        retired=retired,
    )


@router.get("/profiles", include_in_schema=False)
async def profiles(request: Request, retired: int = 0) -> Response:
    return await serve(
        request, lambda page: _profiles_page(page, {}, 0, retired=bool(retired)), roles=OFFICERS
    )


def _save(page: Page, profile_id: str | None) -> Response:
    assert page.actor is not None
    data, texts, rows = profile_from_form(page)
    current = risk_admin.get_profile(page.gw, page.actor, profile_id) if profile_id else None
    try:
        if page.value("_action") == "dry_run":
            dry = risk_admin.dry_run(page.gw, page.actor, data, limit=200)
            return _profiles_page(page, texts, rows, dry=dry, profile=current)
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        if profile_id is None:
            saved = risk_admin.create_profile(page.gw, page.actor, data)
        else:
            saved = risk_admin.change_profile(page.gw, page.actor, profile_id, data)
    except GatewayError as exc:
        if exc.http_status == 404:
            raise
        errors, general = _errors(exc)
        return _profiles_page(page, texts, rows, errors, general, profile=current, status=exc.http_status)
    return page.redirect(f"/officer/profiles/{saved['profile_id']}?saved={saved['reprofiled']}")


@router.post("/profiles", include_in_schema=False)
async def create_profile(request: Request) -> Response:
    return await serve(request, lambda page: _save(page, None), roles=OFFICERS)


@router.get("/profiles/{profile_id}", include_in_schema=False)
async def profile_page(request: Request, profile_id: str, saved: int = -1) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        profile = risk_admin.get_profile(page.gw, page.actor, profile_id)
        texts = profile_texts(profile)
        return page.render(
            "profiles.html",
            profiles=[],
            profile=profile,
            texts=texts,
            rows=len(profile["conditions"]) + 2,
            errors={},
            general=[],
            dry=None,
            operators=risk.OPERATORS,
            suggestions=FIELD_SUGGESTIONS,
            retired=False,
            saved=saved,
        )

    return await serve(request, work, roles=OFFICERS)


@router.post("/profiles/{profile_id}", include_in_schema=False)
async def change_profile(request: Request, profile_id: str) -> Response:
    return await serve(request, lambda page: _save(page, profile_id), roles=OFFICERS)


@router.post("/profiles/{profile_id}/retire", include_in_schema=False)
async def retire_profile(request: Request, profile_id: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        risk_admin.retire_profile(page.gw, page.actor, profile_id)
        return page.redirect(f"/officer/profiles/{profile_id}")

    return await serve(request, work, roles=OFFICERS)


# -- targets ---------------------------------------------------------------------------------------------

_TARGET_FIELDS = ("kind", "value", "action", "reason", "expires_at", "profile_id")


def _targets_page(
    page: Page, values: dict[str, str], errors: dict[str, list[str]], status: int = 200
) -> Response:
    assert page.actor is not None
    return page.render(
        "targets.html",
        status=status,
        targets=risk_admin.list_targets(page.gw, page.actor),
        values=values,
        errors=errors,
        kinds=risk.TARGET_KINDS,
        actions=risk.TARGET_ACTIONS,
    )


@router.get("/targets", include_in_schema=False)
async def targets(request: Request) -> Response:
    return await serve(request, lambda page: _targets_page(page, {}, {}), roles=OFFICERS)


@router.post("/targets", include_in_schema=False)
async def add_target(request: Request) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        values = {k: page.value(k) for k in _TARGET_FIELDS}
        data: dict[str, Any] = {
            k: values[k] for k in _TARGET_FIELDS if k != "profile_id" and values[k].strip()
        }
        if values["profile_id"].strip():
            profile = values["profile_id"].strip()
            data["profile_id"] = int(profile) if profile.isdigit() and len(profile) < 10 else profile
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        try:
            risk_admin.add_target(page.gw, page.actor, data)
        except GatewayError as exc:
            errors, general = _errors(exc)
            if general:
                errors.setdefault("value", []).extend(general)
            return _targets_page(page, values, errors, status=exc.http_status)
        return page.redirect("/officer/targets")

    return await serve(request, work, roles=OFFICERS)


@router.post("/targets/{target_id}/revoke", include_in_schema=False)
async def revoke_target(request: Request, target_id: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        risk_admin.revoke_target(page.gw, page.actor, target_id)
        return page.redirect("/officer/targets")

    return await serve(request, work, roles=OFFICERS)


# -- contingency and the dashboard -------------------------------------------------------------------------


@router.get("/control-points", include_in_schema=False)
async def control_points(request: Request) -> Response:
    def work(page: Page) -> Response:
        with page.gw.engine.connect() as conn:
            states = {cp: clearance.in_contingency(conn, cp) for cp in page.gw.config.control_points}
        return page.render("control_points.html", points=page.gw.config.control_points, states=states)

    return await serve(request, work, roles=OFFICERS)


@router.post("/control-points/{control_point}/contingency", include_in_schema=False)
async def contingency(request: Request, control_point: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        store_raw(page.gw, page.actor, FORM_TYPE, page.body)
        clearance.set_contingency(page.gw, page.actor, control_point, page.value("active") == "on")
        return page.redirect("/officer/control-points")

    return await serve(request, work, roles=OFFICERS)


@router.get("/dashboard", include_in_schema=False)
async def dashboard_page(request: Request) -> Response:
    return await serve(
        request,
        lambda page: page.render("dashboard.html", **dashboard.charts(page.gw, page.t)),
        roles=OFFICERS,
    )
