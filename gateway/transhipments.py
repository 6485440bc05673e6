"""Intermodal transhipment between a land control point and the airport (design section 5).

``LAND_TO_AIR``: the land control point is first; the kiosk records the e-lock (``elock_id`` of the
kiosk request) when the truck crosses, and the airport confirms it intact on arrival. ``AIR_TO_LAND``:
the airport is first; its agency records its release or inspection and the e-lock before the truck may
leave, and the land control point confirms the e-lock and clears the cargo without selecting it again.
The cargo is inspected at most once; a broken or mismatched e-lock opens an inspection and records an
offence. Arrivals overdue by ``[transhipment] overdue_hours`` are listed for officers.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from gateway import clearance, risk, tables
from gateway.context import Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError, Problem
from gateway.identifiers import parse_ccrn

_X = tables.transhipments
_C = tables.consignments
_V = tables.consignment_versions
_DECISIONS = {"RELEASE": "RELEASED", "RELEASED": "RELEASED", "INSPECT": "INSPECTED", "INSPECTED": "INSPECTED"}


def _view(row: Any) -> dict[str, Any]:
    return {
        "ccrn": row.ccrn,
        "mode": row.mode,
        "first_point": row.first_point,
        "second_point": row.second_point,
        "elock_id": row.elock_id,
        "first_decision": row.first_decision,
        "first_at": iso_hk(row.first_at),
        "status": row.status,
        "second_at": iso_hk(row.second_at),
        "intact": row.intact,
    }


def _leg(conn: Connection, ccrn: str) -> dict[str, Any]:
    """The record's transhipment block, {} when the consignment is no transhipment."""
    text = conn.scalar(
        select(_V.c.record).where(
            _V.c.ccrn == ccrn, _V.c.version == select(_C.c.version).where(_C.c.ccrn == ccrn).scalar_subquery()
        )
    )
    if text is None:
        return {}
    leg = json.loads(text).get("transhipment") or {}
    return dict(leg)


def _party(conn: Connection, actor: Actor) -> Any:
    return conn.execute(
        select(tables.parties.c.scope, tables.parties.c.control_point).where(
            tables.parties.c.party_id == actor.party_id
        )
    ).first()


def _require_airport(conn: Connection, actor: Actor) -> None:
    if actor.status != "ACTIVE":
        raise GatewayError.one("FORBIDDEN", f"party {actor.party_id} is suspended")
    if actor.is_officer:
        return
    party = _party(conn, actor)
    if actor.role != "agency" or party is None or party.scope != "airport":
        raise GatewayError.one("FORBIDDEN", "only the airport agency and officers record the airport's side")


def _parse_ccrn(ccrn: Any) -> str:
    return parse_ccrn(ccrn)


def on_crossed(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    ccrn: str,
    control_point: str,
    elock_id: str | None,
    inspected: bool,
    leg: dict[str, Any] | None = None,
) -> None:
    """Called as a consignment crosses the land control point (kiosk release or inspection release);
    ``leg`` is the record's transhipment block when the caller has it at hand ({} for none)."""
    if leg is None:
        leg = _leg(conn, ccrn)
    mode = leg.get("mode")
    if mode == "LAND_TO_AIR":
        if conn.scalar(select(_X.c.ccrn).where(_X.c.ccrn == ccrn)) is None:
            conn.execute(
                insert(_X).values(
                    ccrn=ccrn,
                    mode=mode,
                    first_point=control_point,
                    second_point=leg.get("airport") or "HKHKG",
                    elock_id=elock_id,
                    first_decision="INSPECTED" if inspected else "RELEASED",
                    first_at=gw.now(),
                    status="IN_TRANSIT",
                )
            )
    elif mode == "AIR_TO_LAND":
        row = conn.execute(select(_X).where(_X.c.ccrn == ccrn)).first()
        if row is None:
            return
        if row.second_point is None:
            conn.execute(update(_X).where(_X.c.ccrn == ccrn).values(second_point=control_point))
            row = conn.execute(select(_X).where(_X.c.ccrn == ccrn)).one()
        if row.status == "INSPECTION" and inspected:
            conn.execute(update(_X).where(_X.c.ccrn == ccrn).values(status="CLEARED"))
        elif row.status == "IN_TRANSIT" and elock_id and elock_id == row.elock_id:
            _confirm(conn, gw, actor, row, control_point)


def _confirm(conn: Connection, gw: Gateway, actor: Actor, row: Any, point: str) -> None:
    conn.execute(
        update(_X)
        .where(_X.c.ccrn == row.ccrn)
        .values(status="CONFIRMED", intact=True, second_at=gw.now(), second_point=point)
    )
    clearance.bump(
        conn,
        gw,
        actor,
        row.ccrn,
        "TRANSHIPMENT_CONFIRMED",
        {"mode": row.mode, "first_point": row.first_point, "second_point": point},
    )


def on_elock_case_closed(conn: Connection, gw: Gateway, ccrn: str, status: str) -> None:
    conn.execute(update(_X).where(_X.c.ccrn == ccrn, _X.c.status == "INSPECTION").values(status=status))


def record_airport(gw: Gateway, actor: Actor, ccrn: Any, data: Any) -> dict[str, Any]:
    """Air-to-land: the airport (first control point) records its release or inspection and the
    e-lock; the truck may then leave through the land control point."""
    key = _parse_ccrn(ccrn)
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a JSON object {decision, elock_id}")
    problems = [
        Problem("INVALID_VALUE", k, f"unknown field {k!r}")
        for k in sorted(set(data) - {"decision", "elock_id"})
    ]
    decision = _DECISIONS.get(str(data.get("decision", "")).upper())
    if decision is None:
        problems.append(Problem("INVALID_CODE", "decision", "RELEASED or INSPECTED"))
    elock = data.get("elock_id")
    if not isinstance(elock, str) or not elock.strip() or len(elock) > 35:
        problems.append(Problem("MISSING_FIELD", "elock_id", "the e-lock fitted at the airport"))
    if problems:
        raise GatewayError(problems)
    assert isinstance(elock, str) and decision is not None
    elock = elock.strip()
    with gw.engine.begin() as conn:
        _require_airport(conn, actor)
        consignment = conn.execute(select(_C).where(_C.c.ccrn == key).with_for_update()).first()
        leg = _leg(conn, key) if consignment is not None else {}
        if consignment is None or leg.get("mode") != "AIR_TO_LAND":
            raise GatewayError.one("NOT_FOUND", f"no air-to-land transhipment {key}", "ccrn")
        existing = conn.execute(select(_X).where(_X.c.ccrn == key)).first()
        if existing is not None:
            if (existing.first_decision, existing.elock_id) == (decision, elock):
                return _view(existing)
            raise GatewayError.one("INVALID_STATE", f"the airport has already recorded {key}", "ccrn")
        if consignment.status not in ("LODGED", "BUNDLED"):
            raise GatewayError.one("INVALID_STATE", f"consignment {key} is {consignment.status}", "ccrn")
        conn.execute(
            insert(_X).values(
                ccrn=key,
                mode="AIR_TO_LAND",
                first_point=leg.get("airport") or "HKHKG",
                second_point=consignment.control_point,
                elock_id=elock,
                first_decision=decision,
                first_at=gw.now(),
                status="IN_TRANSIT",
            )
        )
        row = conn.execute(select(_X).where(_X.c.ccrn == key)).one()
        audit(conn, gw, actor, "transhipment.airport", "consignment", key, None, _view(row))
        return _view(row)


def confirm_arrival(gw: Gateway, actor: Actor, ccrn: Any, data: Any) -> dict[str, Any]:
    """The second control point reads the e-lock: intact and the one recorded confirms the
    transhipment; otherwise an inspection is opened there and an offence recorded."""
    key = _parse_ccrn(ccrn)
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a JSON object {elock_id, intact}")
    problems = [
        Problem("INVALID_VALUE", k, f"unknown field {k!r}")
        for k in sorted(set(data) - {"elock_id", "intact"})
    ]
    elock = data.get("elock_id")
    intact = data.get("intact")
    if not isinstance(elock, str) or not elock.strip():
        problems.append(Problem("MISSING_FIELD", "elock_id", "the e-lock read on arrival"))
    if not isinstance(intact, bool):
        problems.append(Problem("MISSING_FIELD", "intact", "true or false"))
    if problems:
        raise GatewayError(problems)
    assert isinstance(elock, str) and isinstance(intact, bool)
    with gw.engine.begin() as conn:
        # The consignment's row before its transhipment's, as a kiosk decision that records an e-lock
        # locks them (its bundle, the consignments, then the transhipment): in the other order the two
        # could deadlock.
        consignment = conn.execute(select(_C).where(_C.c.ccrn == key).with_for_update()).first()
        row = conn.execute(select(_X).where(_X.c.ccrn == key).with_for_update()).first()
        if row is None or consignment is None:
            raise GatewayError.one("NOT_FOUND", f"no transhipment {key} on its way", "ccrn")
        _require_second_point(conn, actor, row)
        if row.status == "CONFIRMED" and intact and elock.strip() == row.elock_id:
            return {**_view(row), "inspection": False}
        if row.status != "IN_TRANSIT" or consignment.status != "CROSSED":
            raise GatewayError.one(
                "INVALID_STATE",
                f"transhipment {key} is {row.status}, consignment {consignment.status}",
                "ccrn",
            )
        point = row.second_point or "HKHKG"
        if intact and elock.strip() == row.elock_id:
            _confirm(conn, gw, actor, row, point)
            out = {**_view(conn.execute(select(_X).where(_X.c.ccrn == key)).one()), "inspection": False}
            audit(conn, gw, actor, "transhipment.confirm", "consignment", key, _view(row), out)
            return out
        vehicle = _last_vehicle(conn, key)
        risk.record_offence(
            conn,
            gw,
            "ELOCK_BROKEN",
            party_id=consignment.filer_id,
            vehicle=vehicle,
            ccrn=key,
            control_point=point,
            details=f"e-lock {elock.strip()} {'intact' if intact else 'broken'}; {row.elock_id} recorded",
        )
        conn.execute(
            update(_X).where(_X.c.ccrn == key).values(status="INSPECTION", intact=False, second_at=gw.now())
        )
        clearance.open_inspection(
            conn,
            gw,
            origin="ELOCK",
            clearance_id=None,
            control_point=point,
            vehicle=vehicle,
            bundle_id=None,
            empty=False,
            ccrns=[key],
            selection={
                "elock": {key: {"recorded": row.elock_id, "presented": elock.strip(), "intact": intact}}
            },
        )
        out = {**_view(conn.execute(select(_X).where(_X.c.ccrn == key)).one()), "inspection": True}
        audit(conn, gw, actor, "transhipment.elock_broken", "consignment", key, _view(row), out)
        return out


def _require_second_point(conn: Connection, actor: Actor, row: Any) -> None:
    if actor.status != "ACTIVE":
        raise GatewayError.one("FORBIDDEN", f"party {actor.party_id} is suspended")
    if actor.is_officer:
        return
    party = _party(conn, actor)
    if (
        row.mode == "LAND_TO_AIR"
        and actor.role == "agency"
        and party is not None
        and party.scope == "airport"
    ):
        return
    if (
        row.mode == "AIR_TO_LAND"
        and actor.role == "kiosk"
        and party is not None
        and party.control_point == row.second_point
    ):
        return
    raise GatewayError.one("FORBIDDEN", "only the second control point confirms a transhipment's arrival")


def _last_vehicle(conn: Connection, ccrn: str) -> str | None:
    items, bundles = tables.bundle_items, tables.bundles
    return conn.scalar(
        select(bundles.c.vehicle)
        .join(items, items.c.bundle_id == bundles.c.bundle_id)
        .where(items.c.ccrn == ccrn)
        .order_by(items.c.added_at.desc())
        .limit(1)
    )


def overdue(gw: Gateway, actor: Actor) -> list[dict[str, Any]]:
    """Transhipments not confirmed at their second control point ``overdue_hours`` after the first."""
    risk.require_officer(actor)
    cutoff = gw.now() - timedelta(hours=gw.config.transhipment.overdue_hours)
    with gw.engine.connect() as conn:
        rows = conn.execute(
            select(_X).where(_X.c.status == "IN_TRANSIT", _X.c.first_at <= cutoff).order_by(_X.c.first_at)
        )
        return [_view(r) for r in rows]
