"""Bundling (design sections 4 and 5): a driver links the CCRNs handed over by shippers with the
vehicle's registration number and a control point, and is given the earliest permitted crossing and
a slot.

Rules: every CCRN exists, checks, is live and in no other live bundle; the vehicle has no other live
bundle; one direction and one control point per bundle (a consignment's own control point must match);
the earliest permitted crossing is ``bundle_lead_minutes`` after bundling and after the latest
content-changing amendment of any bundled consignment. A failed bundle changes nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import advance_notices, risk, slots, tables
from gateway.context import Actor, Gateway, audit, audit_values, iso_hk
from gateway.errors import GatewayError, Problem, Unavailable
from gateway.identifiers import ccrn_problem, normalise_vrn, vrn_problem
from gateway.parties import require_active
from gateway.prepared import Prepared, pipeline
from gateway.record import Crossing

MAX_CCRNS = 99  # a truck's worth; more is a mistake, not a load
_B = tables.bundles
_I = tables.bundle_items
_C = tables.consignments
BUNDLERS = frozenset({"driver", "service_provider"})

# Statements built once: building and cache-keying a Core statement for every execution cost more CPU
# than SQLite's work on it (a bundle is on the clock: design section 6 asks 300 a second).
_V = tables.consignment_versions
_LOCK = Prepared(  # the columns the rules read, not the whole row: each datetime read costs a conversion
    select(
        _C.c.ccrn,
        _C.c.status,
        _C.c.status_version,
        _C.c.bundle_id,
        _C.c.direction,
        _C.c.control_point,
        _C.c.crossing_to,  # expiry
        _C.c.amended_at,  # the earliest crossing
        # what profiling the bundled consignments looks at: a version is never changed, so the record
        # read with the locked row is the one that is profiled
        _C.c.version,
        _C.c.filer_id,
        _V.c.record,
    )
    .join(_V, (_V.c.ccrn == _C.c.ccrn) & (_V.c.version == _C.c.version))
    .where(_C.c.ccrn.in_(bindparam("ccrns", expanding=True)))
    .order_by(_C.c.ccrn)
    .with_for_update(of=_C)
)
# Only the primary key in the WHERE: the rows are locked and checked (LODGED, in no bundle) in this
# transaction before. Conditions on status and bundle_id here let PostgreSQL's planner read the status
# and bundle_id indexes, whose 'LODGED' and NULL keys hold an entry for every consignment of the day
# that has not been vacuumed away yet: rows read per bundle grew with the day.
_MOVE_IN = Prepared(
    update(_C)
    .where(_C.c.ccrn.in_(bindparam("ccrns", expanding=True)))
    .values(
        status="BUNDLED",
        bundle_id=bindparam("into"),
        status_version=_C.c.status_version + 1,
        updated_at=bindparam("now"),
    )
)
_PUT_BACK = (
    update(_I)
    .where(_I.c.bundle_id == bindparam("b_bundle"), _I.c.ccrn == bindparam("b_ccrn"))
    .values(position=bindparam("position"), added_at=bindparam("added_at"), removed_at=None)
)
_RESLOT = Prepared(
    update(_B)
    .where(_B.c.bundle_id == bindparam("key"))
    .values(slot_start=bindparam("slot_start"), slot_end=bindparam("slot_end"))
)
_ADD_ITEM = Prepared(insert(_I))
_ADD_BUNDLE = Prepared(insert(_B))
_EVENTS = Prepared(insert(tables.events))
_AUDITS = Prepared(insert(tables.audit_log))
_MEMBERS = (
    select(_I.c.ccrn)
    .where(_I.c.bundle_id == bindparam("bundle_id"), _I.c.removed_at.is_(None))
    .order_by(_I.c.position)
)


def _new_bundle_id() -> str:
    return f"B{secrets.randbelow(10**10):010d}"


def _parse_ccrns(value: Any, problems: list[Problem], field: str = "ccrns") -> list[str]:
    if not isinstance(value, list) or not value:
        problems.append(Problem("MISSING_FIELD", field, "give one or more CCRNs"))
        return []
    if len(value) > MAX_CCRNS:
        problems.append(
            Problem("INVALID_VALUE", field, f"{len(value)} CCRNs; at most {MAX_CCRNS} in one bundle")
        )
        return []
    out: list[str] = []
    for i, raw in enumerate(value):
        ccrn, problem = ccrn_problem(raw, f"{field}[{i}]")
        if problem:
            problems.append(problem)
        elif ccrn in out:
            problems.append(Problem("INVALID_VALUE", f"{field}[{i}]", f"CCRN {ccrn} is listed twice"))
        elif ccrn is not None:
            out.append(ccrn)
    return out


def _check_bundler(actor: Actor, driver: Any, problems: list[Problem]) -> str | None:
    """The driver of record: the caller if a driver, else the party a service provider names."""
    if actor.role not in BUNDLERS:
        raise GatewayError.one(
            "FORBIDDEN", f"a {actor.role} may not bundle; drivers and service providers do"
        )
    require_active(actor)
    if actor.role == "driver":
        if driver not in (None, actor.party_id):
            problems.append(Problem("FORBIDDEN", "driver", "a driver bundles as itself"))
        return actor.party_id
    if not isinstance(driver, str) or not driver.strip():
        problems.append(
            Problem("MISSING_FIELD", "driver", "a service provider names the driver (a party id)")
        )
        return None
    return driver.strip()


def _load_driver(conn: Connection, driver_id: str) -> None:
    row = conn.execute(
        select(tables.parties.c.role, tables.parties.c.status).where(tables.parties.c.party_id == driver_id)
    ).first()
    if row is None or row.role != "driver":
        raise GatewayError.one("NOT_FOUND", f"no driver {driver_id}", "driver")
    if row.status != "ACTIVE":
        raise GatewayError.one("FORBIDDEN", f"driver {driver_id} is suspended", "driver")


def _lock_consignments(conn: Connection, ccrns: Sequence[str]) -> dict[str, Row[Any]]:
    # Rows are locked in CCRN order, so two bundlers with overlapping lists never deadlock; the second
    # waits for the first and then sees the CCRN bundled.
    if not ccrns:
        return {}
    return {r.ccrn: r for r in _LOCK.all(conn, {"ccrns": sorted(ccrns)})}


def _check_consignments(
    gw: Gateway,
    rows: dict[str, Row[Any]],
    ccrns: Sequence[str],
    direction: str | None,
    control_point: str,
    problems: list[Problem],
    field: str = "ccrns",
    bundle_id: str | None = None,
) -> str | None:
    """Each CCRN must be live, unbundled (or in ``bundle_id``), of one direction and control point."""
    from gateway.consignments import expiry_due  # the lifecycle's own rule

    for i, ccrn in enumerate(ccrns):
        where = f"{field}[{i}]"
        row = rows.get(ccrn)
        if row is None:
            problems.append(Problem("NOT_FOUND", where, f"no consignment {ccrn}"))
            continue
        if row.status == "EXPIRED" or expiry_due(gw, row):
            problems.append(Problem("EXPIRED", where, f"consignment {ccrn} has expired"))
        elif row.status == "BUNDLED" and row.bundle_id != bundle_id:
            problems.append(
                Problem("ALREADY_BUNDLED", where, f"consignment {ccrn} is in another live bundle")
            )
        elif row.status not in ("LODGED", "BUNDLED"):
            problems.append(Problem("INVALID_STATE", where, f"consignment {ccrn} is {row.status}"))
        if direction is None:
            direction = row.direction
        elif row.direction != direction:
            problems.append(
                Problem(
                    "BUNDLE_MISMATCH",
                    where,
                    f"consignment {ccrn} is {row.direction}; this bundle is {direction}",
                )
            )
        if row.control_point not in (None, control_point):
            problems.append(
                Problem(
                    "BUNDLE_MISMATCH",
                    where,
                    f"consignment {ccrn} crosses at {row.control_point}, not {control_point}",
                )
            )
    return direction


def _earliest(gw: Gateway, rows: dict[str, Row[Any]], ccrns: Sequence[str], since: datetime) -> datetime:
    """``bundle_lead_minutes`` after ``since`` and after the latest amendment of the (locked) rows."""
    latest = max([since, *(rows[c].amended_at for c in ccrns)])
    return latest + timedelta(minutes=gw.config.rules.bundle_lead_minutes)


def _attach(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    bundle: Any,
    rows: dict[str, Row[Any]],
    ccrns: Sequence[str],
    fresh: bool = False,
) -> list[dict[str, Any]]:
    """Put the (locked, checked) consignments in the bundle: a handful of statements however many there
    are (a new bundle's only sent, so they may go in a ``pipeline``). Returns the audit rows, for the
    caller to write with its own in one statement."""
    if not ccrns:
        return []
    now = gw.now()
    unmovable = [c for c in ccrns if rows[c].status != "LODGED" or rows[c].bundle_id is not None]
    if unmovable:  # pragma: no cover - the row locks and the checks make this unreachable; a guard
        raise GatewayError.one("ALREADY_BUNDLED", "a consignment was bundled meanwhile", "ccrns")
    _MOVE_IN.send(conn, {"ccrns": list(ccrns), "into": bundle.bundle_id, "now": now})
    first, back = 0, set()
    if not fresh:  # a CCRN taken off this bundle earlier may be put back on
        first = int(
            conn.scalar(
                select(func.coalesce(func.max(_I.c.position), 0)).where(_I.c.bundle_id == bundle.bundle_id)
            )
            or 0
        )
        back = set(
            conn.scalars(select(_I.c.ccrn).where(_I.c.bundle_id == bundle.bundle_id, _I.c.ccrn.in_(ccrns)))
        )
    items = [
        {"bundle_id": bundle.bundle_id, "ccrn": c, "position": p, "added_at": now, "removed_at": None}
        for p, c in enumerate(ccrns, start=first + 1)
    ]
    if back:
        conn.execute(
            _PUT_BACK,
            [
                {"b_bundle": i["bundle_id"], "b_ccrn": i["ccrn"], "position": i["position"], "added_at": now}
                for i in items
                if i["ccrn"] in back
            ],
        )
    new_items = [i for i in items if i["ccrn"] not in back]
    if new_items:
        _ADD_ITEM.send(conn, new_items)
    data = _event_data(bundle)
    _EVENTS.send(
        conn,
        [
            {
                "at": now,
                "type": "BUNDLED",
                "ccrn": c,
                "vehicle": bundle.vehicle,
                "status": "BUNDLED",
                "status_version": rows[c].status_version + 1,
                "data": data,
            }
            for c in ccrns
        ],
    )
    after = {"status": "BUNDLED", "bundle_id": bundle.bundle_id, "vehicle": bundle.vehicle}
    return [
        audit_values(gw, actor, "consignment.bundle", "consignment", c, {"status": "LODGED"}, after)
        for c in ccrns
    ]


def _event_data(bundle: Any) -> str:
    return json.dumps(
        {
            "bundle_id": bundle.bundle_id,
            "control_point": bundle.control_point,
            "driver": bundle.driver_id,
            "slot_start": iso_hk(bundle.slot_start),
        }
    )


def _status_event(conn: Connection, gw: Gateway, kind: str, ccrn: str, bundle: Any) -> None:
    row = conn.execute(select(_C.c.status, _C.c.status_version).where(_C.c.ccrn == ccrn)).one()
    _EVENTS.run(
        conn,
        {
            "at": gw.now(),
            "type": kind,
            "ccrn": ccrn,
            "vehicle": bundle.vehicle,
            "status": row.status,
            "status_version": row.status_version,
            "data": _event_data(bundle),
        },
    )


def bundle(
    gw: Gateway,
    actor: Actor,
    vehicle: Any,
    control_point: Any,
    ccrns: Any,
    *,
    driver: Any = None,
    expected_arrival: Any = None,
) -> dict[str, Any]:
    """Bundle CCRNs with a vehicle; returns the bundle with its earliest crossing and slot."""
    view, _created = bundle_outcome(
        gw, actor, vehicle, control_point, ccrns, driver=driver, expected_arrival=expected_arrival
    )
    return view


def _resent(
    conn: Connection,
    rows: dict[str, Row[Any]],
    wanted: Sequence[str],
    problems: list[Problem],
    how: dict[str, Any],
) -> dict[str, Any] | None:
    """The live bundle that this very request made before, when it is sent again (its answer was lost):
    every CCRN in one live bundle of the same party, driver, vehicle and control point, with no other
    CCRN and no other problem. Then the answer is that bundle, and nothing changes."""
    if not problems or any(p.code != "ALREADY_BUNDLED" for p in problems):
        return None
    ids = {rows[c].bundle_id if c in rows else None for c in wanted}
    if len(ids) != 1 or None in ids:
        return None
    row = conn.execute(select(_B).where(_B.c.bundle_id == ids.pop())).first()
    if row is None or row.status != "LIVE" or any(getattr(row, k) != v for k, v in how.items()):
        return None
    members = _members(conn, row.bundle_id)
    return _view(conn, row, members) if sorted(members) == sorted(wanted) else None


def bundle_outcome(
    gw: Gateway,
    actor: Actor,
    vehicle: Any,
    control_point: Any,
    ccrns: Any,
    *,
    driver: Any = None,
    expected_arrival: Any = None,
) -> tuple[dict[str, Any], bool]:
    """``bundle``, and whether it created the bundle (False: the same request sent again, answered
    with the bundle it made the first time)."""
    problems: list[Problem] = []
    driver_id = _check_bundler(actor, driver, problems)
    if not isinstance(vehicle, str) or vrn_problem(vehicle):
        problems.append(
            Problem("INVALID_VALUE", "vehicle", vrn_problem(str(vehicle or "")) or "a VRN is required")
        )
    if control_point not in gw.config.control_points:
        problems.append(
            Problem(
                "INVALID_CODE",
                "control_point",
                f"{control_point!r} is not a land control point: {', '.join(gw.config.control_points)}",
            )
        )
    arrival = _parse_arrival(gw, expected_arrival, problems)
    wanted = _parse_ccrns(ccrns, problems)
    if problems:
        raise GatewayError(problems)
    assert driver_id is not None and isinstance(vehicle, str) and isinstance(control_point, str)
    vrn = normalise_vrn(vehicle)
    cp = gw.config.control_points[control_point]
    for _attempt in range(5):
        bundle_id = _new_bundle_id()
        inserting = False
        try:
            with gw.engine.begin() as conn:
                if actor.role != "driver":
                    _load_driver(conn, driver_id)
                risk.secret(conn, gw)  # read once per process; in a pipeline only Prepared may run
                # The slot's target is never earlier than this (``_earliest``, ``arrival``).
                not_before = gw.now() + timedelta(minutes=gw.config.rules.bundle_lead_minutes)
                if arrival is not None:
                    not_before = max(not_before, arrival)
                # One round trip: the consignments locked, and what bundling them will read.
                with pipeline(conn):
                    locked = _LOCK.send(conn, {"ccrns": sorted(wanted)})
                    ahead = risk.Ahead(conn, gw, [*wanted, vrn, driver_id], filers_of=wanted)
                    full = slots.FullAhead(conn, control_point, cp, not_before)
                rows = {r.ccrn: r for r in locked.all()}
                direction = _check_consignments(gw, rows, wanted, None, control_point, problems)
                if problems:
                    how = {
                        "vehicle": vrn,
                        "control_point": control_point,
                        "driver_id": driver_id,
                        "created_by": actor.party_id,
                        "expected_arrival": arrival,
                    }
                    again = _resent(conn, rows, wanted, problems, how)
                    if again is not None:
                        return again, False
                    raise GatewayError(problems)
                now = gw.now()
                earliest = _earliest(gw, rows, wanted, now)
                target = max(earliest, arrival or earliest)
                # The slot's row is locked from its booking to the commit, and every bundler of that
                # slot queues on it: so it is booked last, after the bundle is written and profiled
                # with the slot it will most likely get (the first that had room when read).
                hint = slots.with_room(conn, control_point, cp, target, ahead=full)
                booked_now = not hint
                slot_start, slot_end = hint[0] if hint else slots.book(conn, control_point, cp, target)
                values = {
                    "bundle_id": bundle_id,
                    "vehicle": vrn,
                    "live_vehicle": vrn,
                    "control_point": control_point,
                    "direction": direction,
                    "driver_id": driver_id,
                    "created_by": actor.party_id,
                    "status": "LIVE",
                    "expected_arrival": arrival,
                    "earliest_crossing": earliest,
                    "slot_start": slot_start,
                    "slot_end": slot_end,
                    "created_at": now,
                    "updated_at": now,
                }
                row = SimpleNamespace(**values)
                # One round trip: the bundle written and profiled, and its slot booked (last: every
                # bundler of that slot queues on its row until this transaction ends).
                with pipeline(conn):
                    # No savepoint: a vehicle with a live bundle (or a bundle id drawn twice) fails the
                    # insert, the whole transaction rolls back, and the handler below tells which it
                    # was (in the pipeline nothing after the insert can fail on a key).
                    inserting = True
                    _ADD_BUNDLE.send(conn, values)
                    audits = _attach(conn, gw, actor, row, rows, wanted, fresh=True)
                    _profile(conn, gw, rows, row, ahead)
                    taking = (
                        None
                        if booked_now
                        else slots.send_take(conn, control_point, slot_start, cp.slot_capacity)
                    )
                inserting = False
                booked = (
                    (slot_start, slot_end)
                    if booked_now
                    else slots.book(conn, control_point, cp, target, hint, taking)
                )
                with pipeline(conn):  # one round trip: the last rows with the COMMIT
                    if booked != (slot_start, slot_end):  # that slot was full: a later one, profiled again
                        values["slot_start"], values["slot_end"] = booked
                        _RESLOT.send(conn, {"key": bundle_id, "slot_start": booked[0], "slot_end": booked[1]})
                        row = SimpleNamespace(**values)
                        _profile(conn, gw, rows, row, ahead)
                    audits.append(
                        audit_values(gw, actor, "bundle.create", "bundle", bundle_id, None, _jsonable(values))
                    )
                    _AUDITS.send(conn, audits)
                    # Immigration's advance notice, in this transaction
                    advance_notices.enqueue(conn, gw, row)
                    conn.commit()
                return _view(conn, row, list(wanted)), True
        except IntegrityError:
            if not inserting:
                raise
            with gw.engine.connect() as conn:
                if _live_bundle_of(conn, vrn) is not None:
                    raise GatewayError.one(
                        "ALREADY_BUNDLED",
                        f"vehicle {vrn} already has a live bundle: unbundle it first",
                        "vehicle",
                    ) from None
            continue  # the bundle id was drawn twice
    raise Unavailable("could not create the bundle now; nothing was accepted, retry", 1)


def _profile(
    conn: Connection, gw: Gateway, rows: dict[str, Row[Any]], bundle: Any, ahead: risk.Ahead
) -> None:
    """Profile the bundled consignments (``risk.reprofile``'s results) from their rows read under lock,
    as they will cross: in the bundle's vehicle, with its driver, at its slot."""
    risk.assess_held(
        conn,
        gw,
        list(rows.values()),
        {ccrn: json.loads(r.record) for ccrn, r in rows.items()},
        "BUNDLE",
        crossing_at=max(bundle.slot_start, bundle.earliest_crossing),
        vehicle=bundle.vehicle,
        driver=bundle.driver_id,
        ahead=ahead,
    )


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: iso_hk(v) if isinstance(v, datetime) else v for k, v in values.items()}


def _parse_arrival(gw: Gateway, value: Any, problems: list[Problem]) -> datetime | None:
    if value is None:
        return None
    from gateway.record import Context

    ctx = Context(())
    text = Crossing().check(value, "expected_arrival", ctx)
    if ctx.problems:
        problems.extend(ctx.problems)
        return None
    if len(text) == 10:
        problems.append(
            Problem("INVALID_VALUE", "expected_arrival", "give a date-time with offset, not a date")
        )
        return None
    moment = datetime.fromisoformat(text)
    horizon = gw.config.rules.lodgement_window_days
    if moment > gw.now() + timedelta(days=horizon):
        problems.append(Problem("INVALID_VALUE", "expected_arrival", f"more than {horizon} days ahead"))
        return None
    return moment


def _live_bundle_of(conn: Connection, vrn: str) -> Row[Any] | None:
    return conn.execute(select(_B).where(_B.c.live_vehicle == vrn)).first()


def _members(conn: Connection, bundle_id: str) -> list[str]:
    return list(conn.scalars(_MEMBERS, {"bundle_id": bundle_id}))


def _view(conn: Connection, row: Any, members: list[str] | None = None) -> dict[str, Any]:
    return {
        "bundle_id": row.bundle_id,
        "vehicle": row.vehicle,
        "driver": row.driver_id,
        "control_point": row.control_point,
        "direction": row.direction,
        "status": row.status,
        "ccrns": _members(conn, row.bundle_id) if members is None else members,
        "earliest_crossing": iso_hk(row.earliest_crossing),
        "slot": {"start": iso_hk(row.slot_start), "end": iso_hk(row.slot_end)},
        "expected_arrival": iso_hk(row.expected_arrival),
        "created_at": iso_hk(row.created_at),
    }


def summary_for_filer(conn: Connection, bundle_id: str) -> dict[str, Any] | None:
    """What a filer sees of the bundle carrying its consignment: which vehicle, where and when."""
    row = conn.execute(select(_B).where(_B.c.bundle_id == bundle_id)).first()
    if row is None:
        return None
    return {
        "bundle_id": row.bundle_id,
        "vehicle": row.vehicle,
        "control_point": row.control_point,
        "earliest_crossing": iso_hk(row.earliest_crossing),
        "slot": {"start": iso_hk(row.slot_start), "end": iso_hk(row.slot_end)},
    }


def _load_for(conn: Connection, actor: Actor, bundle_id: str, lock: bool = False) -> Row[Any]:
    """A bundle its driver, its maker and officers may see; to anyone else it does not exist."""
    query = select(_B).where(_B.c.bundle_id == str(bundle_id))
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None or not (actor.is_officer or actor.party_id in (row.driver_id, row.created_by)):
        raise GatewayError.one("NOT_FOUND", f"no bundle {bundle_id}", "bundle_id")
    return row


def get(gw: Gateway, actor: Actor, bundle_id: str) -> dict[str, Any]:
    with gw.engine.connect() as conn:
        return _view(conn, _load_for(conn, actor, bundle_id))


def _require_live(row: Any) -> None:
    if row.status != "LIVE":
        raise GatewayError.one("INVALID_STATE", f"bundle {row.bundle_id} is {row.status}", "bundle_id")


def _detach(
    conn: Connection, gw: Gateway, actor: Actor, bundle: Any, ccrn: str, to_status: str | None
) -> None:
    """Take a consignment out of its bundle; back to LODGED unless the caller moves it elsewhere."""
    now = gw.now()
    conn.execute(
        update(_I).where(_I.c.bundle_id == bundle.bundle_id, _I.c.ccrn == ccrn).values(removed_at=now)
    )
    values: dict[str, Any] = {"bundle_id": None, "updated_at": now}
    if to_status:
        values.update(status=to_status, status_version=_C.c.status_version + 1)
    conn.execute(update(_C).where(_C.c.ccrn == ccrn).values(**values))
    if to_status:
        _status_event(conn, gw, "UNBUNDLED", ccrn, bundle)
        audit(
            conn,
            gw,
            actor,
            "consignment.unbundle",
            "consignment",
            ccrn,
            {"status": "BUNDLED"},
            {"status": to_status},
        )


def _close(conn: Connection, gw: Gateway, actor: Actor, bundle: Any) -> None:
    conn.execute(
        update(_B)
        .where(_B.c.bundle_id == bundle.bundle_id)
        .values(status="UNBUNDLED", live_vehicle=None, updated_at=gw.now())
    )
    slots.release(conn, bundle.control_point, bundle.slot_start)
    audit(
        conn,
        gw,
        actor,
        "bundle.unbundle",
        "bundle",
        bundle.bundle_id,
        {"status": "LIVE"},
        {"status": "UNBUNDLED"},
    )


def unbundle(gw: Gateway, actor: Actor, bundle_id: str) -> dict[str, Any]:
    """Dissolve a live bundle: its consignments go back to LODGED, its slot and vehicle are free."""
    with gw.engine.begin() as conn:
        row = _load_for(conn, actor, bundle_id, lock=True)
        _require_live(row)
        for ccrn in _members(conn, row.bundle_id):
            _detach(conn, gw, actor, row, ccrn, "LODGED")
        _close(conn, gw, actor, row)
        return _view(conn, conn.execute(select(_B).where(_B.c.bundle_id == row.bundle_id)).one())


def add_ccrns(gw: Gateway, actor: Actor, bundle_id: str, ccrns: Any) -> dict[str, Any]:
    """Add consignments to a live bundle; adding is bundling, so the lead time starts again for it."""
    problems: list[Problem] = []
    _check_bundler(actor, None if actor.role != "driver" else actor.party_id, problems)
    wanted = _parse_ccrns(ccrns, problems)
    if problems:
        raise GatewayError(problems)
    with gw.engine.begin() as conn:
        row = _load_for(conn, actor, bundle_id, lock=True)
        _require_live(row)
        present = _members(conn, row.bundle_id)
        new = [c for c in wanted if c not in present]
        if len(present) + len(new) > MAX_CCRNS:
            raise GatewayError.one("INVALID_VALUE", f"at most {MAX_CCRNS} CCRNs in one bundle", "ccrns")
        rows = _lock_consignments(conn, new)
        _check_consignments(gw, rows, new, row.direction, row.control_point, problems)
        if problems:
            raise GatewayError(problems)
        audits = _attach(conn, gw, actor, row, rows, new)
        if audits:
            _AUDITS.run(conn, audits)
        risk.reprofile(conn, gw, new, "BUNDLE")
        _reschedule(conn, gw, row, _earliest(gw, rows, new, gw.now()) if new else row.earliest_crossing)
        return _view(conn, conn.execute(select(_B).where(_B.c.bundle_id == row.bundle_id)).one())


def remove_ccrn(gw: Gateway, actor: Actor, bundle_id: str, ccrn: Any) -> dict[str, Any]:
    """Take one consignment off; taking the last one off dissolves the bundle."""
    problems: list[Problem] = []
    parsed = _parse_ccrns([ccrn], problems, "ccrn")
    if problems or not parsed:
        raise GatewayError([Problem(p.code, "ccrn", p.message) for p in problems])
    wanted = parsed[0]
    with gw.engine.begin() as conn:
        row = _load_for(conn, actor, bundle_id, lock=True)
        _require_live(row)
        if wanted not in _members(conn, row.bundle_id):
            raise GatewayError.one(
                "NOT_FOUND", f"consignment {wanted} is not in bundle {row.bundle_id}", "ccrn"
            )
        _lock_consignments(conn, [wanted])
        _detach(conn, gw, actor, row, wanted, "LODGED")
        if not _members(conn, row.bundle_id):
            _close(conn, gw, actor, row)
        return _view(conn, conn.execute(select(_B).where(_B.c.bundle_id == row.bundle_id)).one())


def _reschedule(conn: Connection, gw: Gateway, row: Any, candidate: datetime) -> None:
    """Move the earliest crossing later if ``candidate`` is later, and the slot with it if it no longer
    fits; the old slot is released only once a new one is booked."""
    earliest = max(row.earliest_crossing, candidate)
    if earliest == row.earliest_crossing:
        return
    values: dict[str, Any] = {"earliest_crossing": earliest, "updated_at": gw.now()}
    if earliest >= row.slot_end:
        cp = gw.config.control_points[row.control_point]
        values["slot_start"], values["slot_end"] = slots.book(conn, row.control_point, cp, earliest)
        slots.release(conn, row.control_point, row.slot_start)
    conn.execute(update(_B).where(_B.c.bundle_id == row.bundle_id).values(**values))


def lock(conn: Connection, bundle_id: str) -> None:
    """Lock a bundle's row before any of its consignments' (PostgreSQL). Every transaction that locks
    both does it in this order: the kiosk, bundling, unbundling and adding or removing CCRNs lock the
    bundle first, and so do an amendment, a cancellation, an expiry and an inspection's release, which
    start from a consignment (``consignments``, ``clearance``). Two of them then wait for each other
    instead of deadlocking, which PostgreSQL ends by undoing one after a second: a truck at the kiosk
    sent to a manual lane, or a filer told to send again."""
    conn.execute(select(_B.c.bundle_id).where(_B.c.bundle_id == bundle_id).with_for_update())


def lock_free(conn: Connection, bundle_ids: Sequence[str]) -> list[str]:
    """Lock those of these bundles' rows that no other transaction holds, and say which (``lock``)."""
    if not bundle_ids:
        return []
    query = select(_B.c.bundle_id).where(_B.c.bundle_id.in_(bundle_ids)).order_by(_B.c.bundle_id)
    return list(conn.scalars(query.with_for_update(skip_locked=True)))


def on_amended(conn: Connection, gw: Gateway, consignment: Any, record: Any) -> None:
    """A content-changing amendment of a bundled consignment restarts the lead time of its bundle; it
    may not take the consignment out of the bundle's direction or control point."""
    if consignment.bundle_id is None:
        return
    row = conn.execute(select(_B).where(_B.c.bundle_id == consignment.bundle_id).with_for_update()).one()
    if record.direction != row.direction or record.control_point not in (None, row.control_point):
        raise GatewayError.one(
            "BUNDLE_MISMATCH",
            f"consignment {consignment.ccrn} is bundled for {row.direction} at {row.control_point}: "
            "unbundle it before changing its direction or control point",
            "control_point" if record.direction == row.direction else "direction",
        )
    _reschedule(conn, gw, row, gw.now() + timedelta(minutes=gw.config.rules.bundle_lead_minutes))


def on_leaving(conn: Connection, gw: Gateway, actor: Actor, consignment: Any) -> None:
    """A bundled consignment cancelled or expired leaves its bundle; the last one out dissolves it."""
    if consignment.bundle_id is None:
        return
    row = conn.execute(select(_B).where(_B.c.bundle_id == consignment.bundle_id).with_for_update()).one()
    _detach(conn, gw, actor, row, consignment.ccrn, None)
    if not _members(conn, row.bundle_id):
        _close(conn, gw, actor, row)


def live_bundle(gw: Gateway, actor: Actor, vehicle: str) -> dict[str, Any] | None:
    """The vehicle's live bundle, for the driver who made it, its maker or an officer."""
    with gw.engine.connect() as conn:
        row = _live_bundle_of(conn, normalise_vrn(vehicle))
        if row is None or not (actor.is_officer or actor.party_id in (row.driver_id, row.created_by)):
            return None
        return _view(conn, row)
