"""Crossings cleared by hand during contingency (design section 5), recorded afterwards by officers:
``POST /api/v1/crossings {"control_point", "vehicle", "ccrns", "crossed_at", "lane"?, "notes"?}``.

While a control point is in contingency its kiosk answers ``NOT_READY`` / ``CONTINGENCY`` and officers
clear trucks by hand from the CCRN barcodes. Recording such a crossing makes the consignments ``CROSSED``
exactly as a kiosk release does (``clearance.cross`` and ``clearance.move``: status and
``status_version``, one ``CROSSED`` event and one audit row per consignment, the bundle done and its
vehicle free, a land-to-air transhipment started), so the agency feed, the dashboard and the declarations
ledger catch up. The events carry the time the truck crossed (``crossed_at``), not the time it was
recorded; the crossing's own row and audit entry carry who recorded it and when.

Rules (all or nothing: one problem refuses the whole crossing and changes nothing):

- officers only; the control point must have been in contingency at ``crossed_at`` (from the audit
  trail of the switch), which may not be in the future nor before a consignment was lodged;
- every CCRN passes its check digit, exists, and is ``LODGED``, ``BUNDLED`` or ``ARRIVED`` (without an
  open inspection), or ``EXPIRED`` by the sweep only after ``crossed_at``; of one direction, and of this
  control point when the record names one;
- a CCRN in another vehicle's bundle is refused (``ALREADY_BUNDLED``); when the vehicle has a live
  bundle, the crossing lists every CCRN in it (the bundle crosses whole);
- sending the same crossing again (same control point, vehicle, time and CCRNs) answers the recorded
  crossing (200) and changes nothing, so a retry after a lost answer is safe.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select

from gateway import clearance, risk, tables, transhipments
from gateway.clock import HONG_KONG, FixedClock
from gateway.context import Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError, Problem
from gateway.identifiers import ccrn_problem, normalise_vrn, vrn_problem

MAX_CCRNS = 99
MAX_NOTES = 500
FUTURE_TOLERANCE = timedelta(minutes=5)  # handheld clocks run a little ahead
FIELDS = frozenset({"control_point", "vehicle", "ccrns", "crossed_at", "lane", "notes"})

_C = tables.consignments
_B = tables.bundles
_N = tables.inspections
_R = tables.crossings
_A = tables.audit_log


@dataclasses.dataclass(frozen=True)
class CrossingRequest:
    control_point: str
    vehicle: str
    ccrns: list[str]
    crossed_at: datetime
    lane: str | None
    notes: str | None


def _parse_time(value: Any, problems: list[Problem]) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        problems.append(
            Problem("MISSING_FIELD", "crossed_at", "when the truck crossed, e.g. 2026-12-01T10:15+08:00")
        )
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        problems.append(
            Problem("INVALID_VALUE", "crossed_at", f"{value[:40]!r} is not an ISO 8601 date-time")
        )
        return None
    if len(value.strip()) <= 10:  # a bare date: the time is what matters here
        problems.append(Problem("INVALID_VALUE", "crossed_at", "a date-time is needed, not a date"))
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=HONG_KONG)


def parse_request(gw: Gateway, data: Any) -> CrossingRequest:
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a JSON object")
    problems = [Problem("INVALID_VALUE", k, f"unknown field {k!r}") for k in sorted(set(data) - FIELDS)]
    cp = data.get("control_point")
    if cp is None:
        problems.append(Problem("MISSING_FIELD", "control_point", "the land control point, e.g. LMC"))
    elif cp not in gw.config.control_points:
        problems.append(Problem("INVALID_CODE", "control_point", f"{cp!r} is not a land control point"))
    lane = data.get("lane")
    if lane is not None:
        if not isinstance(lane, str) or not lane.strip():
            problems.append(Problem("INVALID_VALUE", "lane", "a lane id, or leave it out"))
        elif cp in gw.config.control_points and lane.strip() not in gw.config.control_points[cp].lanes:
            problems.append(Problem("INVALID_VALUE", "lane", f"{lane!r} is not a lane of {cp}"))
    vehicle = data.get("vehicle")
    if not isinstance(vehicle, str) or not vehicle.strip():
        problems.append(Problem("MISSING_FIELD", "vehicle", "the vehicle registration number"))
    elif (why := vrn_problem(vehicle)) is not None:
        problems.append(Problem("INVALID_VALUE", "vehicle", why))
    ccrns = _parse_ccrns(data.get("ccrns"), problems)
    crossed_at = _parse_time(data.get("crossed_at"), problems)
    if crossed_at is not None and crossed_at > gw.now() + FUTURE_TOLERANCE:
        problems.append(Problem("INVALID_VALUE", "crossed_at", f"{iso_hk(crossed_at)} is in the future"))
    notes = data.get("notes")
    if notes is not None and (not isinstance(notes, str) or len(notes) > MAX_NOTES):
        problems.append(Problem("INVALID_VALUE", "notes", f"text of at most {MAX_NOTES} characters"))
    if problems:
        raise GatewayError(problems)
    assert isinstance(cp, str) and isinstance(vehicle, str) and crossed_at is not None
    return CrossingRequest(
        cp,
        normalise_vrn(vehicle),
        ccrns,
        crossed_at,
        lane.strip() if isinstance(lane, str) else None,
        notes.strip() or None if isinstance(notes, str) else None,
    )


def _parse_ccrns(value: Any, problems: list[Problem]) -> list[str]:
    if not isinstance(value, list) or not value:
        problems.append(Problem("MISSING_FIELD", "ccrns", "the CCRNs the vehicle carried, one or more"))
        return []
    if len(value) > MAX_CCRNS:
        problems.append(Problem("INVALID_VALUE", "ccrns", f"{len(value)} CCRNs; at most {MAX_CCRNS}"))
        return []
    out: list[str] = []
    for i, raw in enumerate(value):
        ccrn, problem = ccrn_problem(raw, f"ccrns[{i}]")
        if problem is not None:
            problems.append(problem)
        elif ccrn in out:
            problems.append(Problem("INVALID_VALUE", f"ccrns[{i}]", f"CCRN {ccrn} is listed twice"))
        elif ccrn is not None:
            out.append(ccrn)
    return out


# -- contingency history -------------------------------------------------------------------------------


def in_contingency_at(conn: Connection, control_point: str, moment: datetime) -> bool:
    """Whether the control point was in contingency at ``moment``, from the audit trail of the switch."""
    after = conn.scalar(
        select(_A.c.after)
        .where(
            _A.c.action == "control_point.contingency",
            _A.c.entity == "control_point",
            _A.c.entity_id == control_point,
            _A.c.at <= moment,
        )
        .order_by(_A.c.at.desc(), _A.c.audit_id.desc())
        .limit(1)
    )
    if after is None:
        return False
    try:
        return bool(json.loads(after).get("contingency"))
    except (ValueError, AttributeError):
        return False


def _periods_text(conn: Connection, control_point: str) -> str:
    rows = conn.execute(
        select(_A.c.at, _A.c.after)
        .where(
            _A.c.action == "control_point.contingency",
            _A.c.entity == "control_point",
            _A.c.entity_id == control_point,
        )
        .order_by(_A.c.at.desc(), _A.c.audit_id.desc())
        .limit(6)
    ).all()
    if not rows:
        return f"{control_point} has never been in contingency"
    changes = [
        f"{'on' if json.loads(r.after or '{}').get('contingency') else 'off'} at {iso_hk(r.at)}"
        for r in reversed(rows)
    ]
    return f"contingency at {control_point} was switched " + ", ".join(changes)


# -- recording -----------------------------------------------------------------------------------------


def _view(row: Any, statuses: dict[str, tuple[str, int]] | None = None) -> dict[str, Any]:
    ccrns = json.loads(row.ccrns)
    out: dict[str, Any] = {
        "crossing_id": int(row.crossing_id),
        "control_point": row.control_point,
        "lane": row.lane,
        "vehicle": row.vehicle,
        "bundle_id": row.bundle_id,
        "ccrns": ccrns,
        "crossed_at": iso_hk(row.crossed_at),
        "recorded_at": iso_hk(row.recorded_at),
        "recorded_by": row.recorded_by,
        "notes": row.notes,
    }
    if statuses is not None:
        out["consignments"] = [
            {"ccrn": c, "status": statuses[c][0], "status_version": statuses[c][1]}
            for c in ccrns
            if c in statuses
        ]
    return out


def _statuses(conn: Connection, ccrns: list[str]) -> dict[str, tuple[str, int]]:
    rows = conn.execute(select(_C.c.ccrn, _C.c.status, _C.c.status_version).where(_C.c.ccrn.in_(ccrns)))
    return {r.ccrn: (r.status, int(r.status_version)) for r in rows}


def _same_crossing(conn: Connection, req: CrossingRequest) -> Any:
    """The crossing recorded before with the same control point, vehicle, time and CCRNs, if any."""
    wanted = sorted(req.ccrns)
    for row in conn.execute(
        select(_R).where(
            _R.c.vehicle == req.vehicle,
            _R.c.control_point == req.control_point,
            _R.c.crossed_at == req.crossed_at,
        )
    ):
        if json.loads(row.ccrns) == wanted:
            return row
    return None


def record(gw: Gateway, actor: Actor, data: Any) -> tuple[dict[str, Any], bool]:
    """Record a crossing cleared by hand; returns its view and whether it is new (False: sent before)."""
    risk.require_officer(actor)
    req = parse_request(gw, data)
    with gw.engine.begin() as conn:
        # Locks in the kiosk's order: the vehicle's live bundle first, then its consignments by CCRN.
        bundle = conn.execute(select(_B).where(_B.c.live_vehicle == req.vehicle).with_for_update()).first()
        rows = {
            r.ccrn: r
            for r in conn.execute(
                select(_C).where(_C.c.ccrn.in_(sorted(req.ccrns))).order_by(_C.c.ccrn).with_for_update()
            )
        }
        if rows and all(r.status == "CROSSED" for r in rows.values()) and len(rows) == len(req.ccrns):
            before = _same_crossing(conn, req)
            if before is not None:
                return _view(before, _statuses(conn, req.ccrns)), False
        _check(conn, gw, req, bundle, rows)
        at_crossing = dataclasses.replace(gw, clock=FixedClock(req.crossed_at))
        bundled = {c for c in req.ccrns if bundle is not None and rows[c].bundle_id == bundle.bundle_id}
        in_bundle = [rows[c] for c in sorted(bundled)]
        loose = sorted(set(req.ccrns) - bundled)
        if bundle is not None:
            # The kiosk's own crossing: consignments CROSSED, events, bundle done, vehicle free.
            clearance.cross(conn, at_crossing, actor, in_bundle, bundle, None, inspected=False)
        if loose:
            # Not bundled (the gateway was down when the driver would have bundled): the same status
            # change and events, without a bundle.
            clearance.move(
                conn,
                at_crossing,
                actor,
                loose,
                "CROSSED",
                "CROSSED",
                {"control_point": req.control_point},
                vehicle=req.vehicle,
            )
            for ccrn in loose:
                transhipments.on_crossed(conn, at_crossing, actor, ccrn, req.control_point, None, False)
        now = gw.now()
        values = {
            "control_point": req.control_point,
            "lane": req.lane,
            "vehicle": req.vehicle,
            "bundle_id": bundle.bundle_id if bundle is not None else None,
            "ccrns": json.dumps(sorted(req.ccrns)),
            "crossed_at": req.crossed_at,
            "recorded_at": now,
            "recorded_by": actor.party_id,
            "notes": req.notes,
        }
        crossing_id = int(conn.execute(insert(_R).values(**values)).inserted_primary_key[0])  # type: ignore[index]
        audit(
            conn,
            gw,
            actor,
            "crossing.contingency",
            "crossing",
            str(crossing_id),
            None,
            {**values, "crossed_at": iso_hk(req.crossed_at), "recorded_at": iso_hk(now)},
        )
        row = conn.execute(select(_R).where(_R.c.crossing_id == crossing_id)).one()
        return _view(row, _statuses(conn, req.ccrns)), True


def _check(conn: Connection, gw: Gateway, req: CrossingRequest, bundle: Any, rows: dict[str, Any]) -> None:
    problems: list[Problem] = []
    if not in_contingency_at(conn, req.control_point, req.crossed_at):
        problems.append(
            Problem(
                "INVALID_STATE",
                "crossed_at",
                f"{req.control_point} was not in contingency at {iso_hk(req.crossed_at)} "
                f"({_periods_text(conn, req.control_point)}); crossings outside contingency go through "
                "the kiosk",
            )
        )
    if bundle is not None:
        if bundle.control_point != req.control_point:
            problems.append(
                Problem(
                    "BUNDLE_MISMATCH",
                    "vehicle",
                    f"vehicle {req.vehicle} is bundled ({bundle.bundle_id}) to cross at "
                    f"{bundle.control_point}, not {req.control_point}",
                )
            )
        if bundle.status == "ARRIVED":
            case = conn.scalar(
                select(_N.c.inspection_id).where(_N.c.bundle_id == bundle.bundle_id, _N.c.status == "OPEN")
            )
            if case is not None:
                problems.append(
                    Problem(
                        "INVALID_STATE",
                        "vehicle",
                        f"vehicle {req.vehicle} has inspection {case} open: release or hold it instead",
                    )
                )
        members = set(
            conn.scalars(
                select(tables.bundle_items.c.ccrn).where(
                    tables.bundle_items.c.bundle_id == bundle.bundle_id,
                    tables.bundle_items.c.removed_at.is_(None),
                )
            )
        )
        missing = sorted(members - set(req.ccrns))
        if missing:
            problems.append(
                Problem(
                    "INVALID_VALUE",
                    "ccrns",
                    f"bundle {bundle.bundle_id} of vehicle {req.vehicle} also holds {', '.join(missing)}: "
                    "a bundle crosses whole, so list them too (or the driver takes them off the bundle)",
                )
            )
    expiry = timedelta(days=gw.config.rules.consignment_expiry_days)
    direction: str | None = None
    for i, ccrn in enumerate(req.ccrns):
        where = f"ccrns[{i}]"
        row = rows.get(ccrn)
        if row is None:
            problems.append(Problem("NOT_FOUND", where, f"no consignment {ccrn}"))
            continue
        expires_at = row.crossing_to + expiry
        mine = bundle is not None and row.bundle_id == bundle.bundle_id
        if row.status in ("LODGED", "BUNDLED", "ARRIVED", "EXPIRED") and req.crossed_at >= expires_at:
            problems.append(
                Problem(
                    "EXPIRED", where, f"consignment {ccrn} expired at {iso_hk(expires_at)}, before it crossed"
                )
            )
        elif row.status in ("BUNDLED", "ARRIVED") and not mine:
            owner = conn.execute(select(_B.c.vehicle).where(_B.c.bundle_id == row.bundle_id)).scalar()
            problems.append(
                Problem(
                    "ALREADY_BUNDLED",
                    where,
                    f"consignment {ccrn} is in bundle {row.bundle_id} of vehicle {owner}, not {req.vehicle}",
                )
            )
        elif row.status not in ("LODGED", "BUNDLED", "ARRIVED", "EXPIRED"):
            problems.append(Problem("INVALID_STATE", where, f"consignment {ccrn} is {row.status}"))
        if row.lodged_at > req.crossed_at:
            problems.append(
                Problem(
                    "INVALID_VALUE",
                    where,
                    f"consignment {ccrn} was lodged at {iso_hk(row.lodged_at)}, after crossed_at",
                )
            )
        if row.control_point not in (None, req.control_point):
            problems.append(
                Problem(
                    "BUNDLE_MISMATCH",
                    where,
                    f"consignment {ccrn} crosses at {row.control_point}, not {req.control_point}",
                )
            )
        if direction is None:
            direction = row.direction
        elif row.direction != direction:
            problems.append(
                Problem(
                    "BUNDLE_MISMATCH",
                    where,
                    f"consignment {ccrn} is {row.direction}; the others are {direction}",
                )
            )
    if problems:
        raise GatewayError(problems)


# -- reading -------------------------------------------------------------------------------------------


def get(gw: Gateway, actor: Actor, crossing_id: Any) -> dict[str, Any]:
    risk.require_officer(actor)
    try:
        key = int(crossing_id)
    except (TypeError, ValueError):
        raise GatewayError.one("NOT_FOUND", f"no crossing {crossing_id}", "crossing_id") from None
    with gw.engine.connect() as conn:
        row = conn.execute(select(_R).where(_R.c.crossing_id == key)).first()
        if row is None:
            raise GatewayError.one("NOT_FOUND", f"no crossing {crossing_id}", "crossing_id")
        return _view(row, _statuses(conn, json.loads(row.ccrns)))


def list_crossings(
    gw: Gateway, actor: Actor, control_point: str | None = None, vehicle: str | None = None
) -> list[dict[str, Any]]:
    """Contingency crossings, newest first (officers)."""
    risk.require_officer(actor)
    query = select(_R).order_by(_R.c.crossing_id.desc()).limit(500)
    if control_point:
        query = query.where(_R.c.control_point == control_point)
    if vehicle:
        query = query.where(_R.c.vehicle == normalise_vrn(vehicle))
    with gw.engine.connect() as conn:
        return [_view(r) for r in conn.execute(query)]
