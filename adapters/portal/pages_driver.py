"""Drivers' pages (and service providers bundling for a driver): bundle CCRNs with a vehicle, see the
earliest crossing, the slot and the kiosk decision once made; unbundle."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import or_, select

from adapters.portal.web import Page, serve
from gateway import bundles, tables
from gateway.context import Actor, Gateway, store_raw
from gateway.errors import GatewayError

router = APIRouter()
BUNDLERS = ("driver", "service_provider")
_SEPARATORS = re.compile(r"[\n,;]+")


def split_ccrns(text: str) -> list[str]:
    """CCRNs as people paste them: one a line, or separated by commas; spaces inside one are allowed."""
    return [part.strip() for part in _SEPARATORS.split(text) if part.strip()]


def my_bundles(gw: Gateway, actor: Actor) -> list[dict[str, Any]]:
    """The party's recent bundles, newest first, each with the kiosk decision once made."""
    b, k = tables.bundles, tables.clearances
    with gw.engine.connect() as conn:
        ids = conn.scalars(
            select(b.c.bundle_id)
            .where(or_(b.c.driver_id == actor.party_id, b.c.created_by == actor.party_id))
            .order_by(b.c.created_at.desc())
            .limit(20)
        ).all()
        decisions = {
            r.bundle_id: r
            for r in conn.execute(
                select(k.c.bundle_id, k.c.decision, k.c.reasons, k.c.come_back_at, k.c.at)
                .where(k.c.bundle_id.in_(ids))
                .order_by(k.c.clearance_id)
            )
        }
    out = []
    for bundle_id in ids:
        view = bundles.get(gw, actor, bundle_id)
        made = decisions.get(bundle_id)
        view["decision"] = (
            None
            if made is None
            else {
                "decision": made.decision,
                "reasons": json.loads(made.reasons),
                "come_back_at": made.come_back_at,
                "at": made.at,
            }
        )
        out.append(view)
    return out


def _render(page: Page, values: dict[str, str], errors: dict[str, list[str]], status: int = 200) -> Response:
    assert page.actor is not None
    return page.render(
        "bundles.html",
        status=status,
        values=values,
        errors=errors,
        bundles=my_bundles(page.gw, page.actor),
        control_points=page.gw.config.control_points,
    )


@router.get("/bundles", include_in_schema=False)
async def bundles_page(request: Request, made: str = "") -> Response:
    return await serve(request, lambda page: _render(page, {"made": made}, {}), roles=BUNDLERS)


@router.post("/bundles", include_in_schema=False)
async def make_bundle(request: Request) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        values = {
            k: page.value(k) for k in ("vehicle", "control_point", "ccrns", "driver", "expected_arrival")
        }
        ccrns = split_ccrns(values["ccrns"])
        store_raw(page.gw, page.actor, "application/x-www-form-urlencoded", page.body)
        # A driver bundles as itself; a service provider names the driver it bundles for.
        driver = values["driver"].strip() or None if page.actor.role == "service_provider" else None
        try:
            made = bundles.bundle(
                page.gw,
                page.actor,
                values["vehicle"],
                values["control_point"],
                ccrns,
                driver=driver,
                expected_arrival=values["expected_arrival"].strip() or None,
            )
        except GatewayError as exc:
            errors: dict[str, list[str]] = {}
            for p in exc.problems:
                where = (p.field or "ccrns").split("[")[0]
                errors.setdefault(where if where in values else "ccrns", []).append(p.message)
            return _render(page, values, errors, status=exc.http_status)
        return page.redirect(f"/bundles?made={made['bundle_id']}")

    return await serve(request, work, roles=BUNDLERS)


@router.post("/bundles/{bundle_id}/unbundle", include_in_schema=False)
async def unbundle(request: Request, bundle_id: str) -> Response:
    def work(page: Page) -> Response:
        assert page.actor is not None
        store_raw(page.gw, page.actor, "application/x-www-form-urlencoded", page.body)
        bundles.unbundle(page.gw, page.actor, bundle_id)
        return page.redirect("/bundles")

    return await serve(request, work, roles=BUNDLERS)
