"""The one-stop kiosk decision and the inspections it opens (design sections 5 and 7).

A kiosk sends one request per arriving vehicle; the gateway answers ``RELEASE``, ``INSPECT``,
``NOT_READY`` or ``REFUSE`` with generic reasons. It fails closed: no fault of any kind (Immigration
down, slow or answering garbage, the database failing inside the decision, a bug) ever yields
``RELEASE``. Immigration is asked at most once per request. On SQLite, whose one writer locks the
whole database, never while the store is locked: the decision reads, asks, then reads again under lock
(``look``, ``finish``). On PostgreSQL the vehicle's own rows (its bundle and its consignments) stay
locked while Immigration answers, within ``[immigration] timeout_ms`` (``decide_held``): two round trips
to the database a decision instead of three, and nothing read twice.

Officers see everything behind a decision (profiles, targets, scores, draws) through the clearance's
``detail`` and the inspections; kiosks, drivers and filers see the decision and generic reasons only.
"""

from __future__ import annotations

import json
import logging
from collections import namedtuple
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, bindparam, insert, select, update

from gateway import risk, tables
from gateway.context import Actor, Gateway, audit, audit_values, iso_hk, to_json
from gateway.errors import GatewayError, Problem
from gateway.identifiers import normalise_vrn, vrn_problem
from gateway.immigration import ClearanceQuery
from gateway.prepared import Pending, Prepared, each_statement_alone, pipeline

log = logging.getLogger("roadcargo.clearance")

DECISIONS = ("RELEASE", "INSPECT", "NOT_READY", "REFUSE")
ANSWERS = ("CLEARED", "REFUSED", "REFER")
_C = tables.consignments
_B = tables.bundles
_I = tables.bundle_items
_V = tables.consignment_versions
_K = tables.clearances
_N = tables.inspections
_X = tables.transhipments
_CONTINGENCY = "contingency."
_CLEARANCES = Prepared(insert(_K))

# The statements of a kiosk decision, built once: building and cache-keying a Core statement on every
# execution cost more CPU than the database's work on it (design section 6 asks 500 decisions a second).
_SETTING = select(tables.settings.c.value).where(tables.settings.c.name == bindparam("name"))
_BOUND = select(tables.parties.c.control_point).where(tables.parties.c.party_id == bindparam("party_id"))
_SETTING_OF = Prepared(_SETTING)
_BOUND_OF = Prepared(_BOUND)
# Only the columns a decision looks at: every other one (timestamps above all) costs its conversion.
_BUNDLE_COLUMNS = [
    _B.c[name]
    for name in (
        "bundle_id",
        "vehicle",
        "control_point",
        "driver_id",
        "status",
        "earliest_crossing",
        "slot_start",
        "slot_end",
    )
]
_MEMBER_COLUMNS = [
    _C.c[name]
    for name in ("ccrn", "filer_id", "status", "status_version", "version", "amended_at", "crossing_to")
]
# The vehicle's live bundle with the control point's contingency switch in the same statement (a
# vehicle without a live bundle reads the switch on its own).
_LIVE_BUNDLE_LOCKED = Prepared(
    select(*_BUNDLE_COLUMNS, _SETTING.scalar_subquery().label("contingency"))
    .where(_B.c.live_vehicle == bindparam("vehicle"))
    .with_for_update(of=_B)
)
# The first look, before Immigration is asked, also reads the asking kiosk's binding, and the bundle's
# members with it: one row per member (one with no member for a bundle without any).
_MEMBER_NAMES = [f"member_{c.name}" for c in _MEMBER_COLUMNS]
_Member = namedtuple("_Member", [c.name for c in _MEMBER_COLUMNS])  # type: ignore[misc]
_LIVE_BUNDLE = Prepared(
    select(
        *_BUNDLE_COLUMNS,
        _SETTING.scalar_subquery().label("contingency"),
        _BOUND.scalar_subquery().label("bound"),
        *(c.label(name) for c, name in zip(_MEMBER_COLUMNS, _MEMBER_NAMES, strict=True)),
    )
    .select_from(
        _B.outerjoin(_I, (_I.c.bundle_id == _B.c.bundle_id) & _I.c.removed_at.is_(None)).outerjoin(
            _C, _C.c.ccrn == _I.c.ccrn
        )
    )
    .where(_B.c.live_vehicle == bindparam("vehicle"))
    .order_by(_C.c.ccrn)
)
_MEMBERS = Prepared(
    select(*_MEMBER_COLUMNS)
    .join(_I, (_I.c.ccrn == _C.c.ccrn) & (_I.c.bundle_id == bindparam("bundle_id")))
    .where(_I.c.removed_at.is_(None))
    .order_by(_C.c.ccrn)
)
# Under lock the members come with their current records: a consignment version is never changed, so
# the record read with the locked row is the one that decides.
_MEMBERS_LOCKED = Prepared(
    select(*_MEMBER_COLUMNS, _V.c.record)
    .join(_I, (_I.c.ccrn == _C.c.ccrn) & (_I.c.bundle_id == bindparam("bundle_id")))
    .join(_V, (_V.c.ccrn == _C.c.ccrn) & (_V.c.version == _C.c.version))
    .where(_I.c.removed_at.is_(None))
    .order_by(_C.c.ccrn)
    .with_for_update(of=(_C, _I))
)
# The same found by the vehicle, for ``decide_held``: sent with the statement that locks the vehicle's
# bundle, in the same round trip, and run after it (so it finds the bundle as locked).
_LIVE_ID = select(_B.c.bundle_id).where(_B.c.live_vehicle == bindparam("vehicle")).scalar_subquery()
_MEMBERS_OF_VEHICLE_LOCKED = Prepared(
    select(*_MEMBER_COLUMNS, _V.c.record)
    .select_from(
        _C.join(_I, (_I.c.ccrn == _C.c.ccrn) & (_I.c.bundle_id == _LIVE_ID)).join(
            _V, (_V.c.ccrn == _C.c.ccrn) & (_V.c.version == _C.c.version)
        )
    )
    .where(_I.c.removed_at.is_(None))
    .order_by(_C.c.ccrn)
    .with_for_update(of=(_C, _I))
)
# A kiosk whose answer was lost asks again within seconds; two minutes leave room for a kiosk that
# reconnects, and none for a truck that comes back another day.
RESEND_WINDOW = timedelta(minutes=2)
# The vehicle's last clearance, with the status of the bundle it decided on.
_ASKED_AND_ANSWERED = (
    "clearance_id at control_point lane driver_document requested_by decision reasons ccrns detail"
)
_LAST_CLEARANCE = Prepared(
    select(
        *(_K.c[name] for name in _ASKED_AND_ANSWERED.split()),
        _B.c.status.label("bundle_status"),  # None for an empty vehicle's clearance: no bundle
    )
    .select_from(_K.outerjoin(_B, _B.c.bundle_id == _K.c.bundle_id))
    .where(_K.c.vehicle == bindparam("vehicle"))
    .order_by(_K.c.at.desc(), _K.c.clearance_id.desc())
    .limit(1)
)
_OPEN_INSPECTION = select(_N).where(_N.c.bundle_id == bindparam("bundle_id"), _N.c.status == "OPEN")
_TRANSHIPS = select(_X).where(_X.c.ccrn.in_(bindparam("ccrns", expanding=True)))
# A bundle's new status; a bundle that has ended (crossed, held) frees its vehicle to bundle again.
_ENDED = {False: {}, True: {"live_vehicle": None}}
_BUNDLE_STATUS = {
    ended: Prepared(
        update(_B)
        .where(_B.c.bundle_id == bindparam("key"))
        .values(status=bindparam("to"), updated_at=bindparam("now"), **freed)
    )
    for ended, freed in _ENDED.items()
}
_STATUSES = select(_C.c.ccrn, _C.c.status, _C.c.status_version).where(
    _C.c.ccrn.in_(bindparam("ccrns", expanding=True))
)
_MOVE = (
    update(_C)
    .where(_C.c.ccrn.in_(bindparam("ccrns", expanding=True)))
    .values(status_version=_C.c.status_version + 1, updated_at=bindparam("now"))
)
_MOVE_TO = _MOVE.values(status=bindparam("to"))
_MOVES = {False: Prepared(_MOVE), True: Prepared(_MOVE_TO)}  # by whether the status changes
# Arrived and crossed in one decision: two status changes, each with its event and audit row, in one
# UPDATE.
_ARRIVE_AND_CROSS = Prepared(
    update(_C)
    .where(_C.c.ccrn.in_(bindparam("ccrns", expanding=True)))
    .values(status="CROSSED", status_version=_C.c.status_version + 2, updated_at=bindparam("now"))
)

# Immigration is called on a pool of its own with a deadline, so that a client that ignores its own
# timeout can neither hold a request nor let a late answer through: past the deadline it is NOT_READY.
_IMMIGRATION_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="immigration")


@dataclass(frozen=True)
class KioskRequest:
    control_point: str
    lane: str
    vehicle: str
    driver_document: str
    empty: bool = False
    elock_id: str | None = None


@dataclass
class Verdict:
    decision: str
    reasons: list[str]
    come_back_at: datetime | None = None


@dataclass
class Plan:
    """What the store says about an arriving vehicle, read before and again after asking Immigration."""

    bundle: Any = None
    members: list[Any] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)
    tranship: dict[str, Any] = field(default_factory=dict)
    open_inspection: Any = None
    late: bool = False
    early: Verdict | None = None  # a decision that needs no Immigration answer


# -- the request ---------------------------------------------------------------------------------------


def parse_request(gw: Gateway, data: Any) -> KioskRequest:
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a JSON object")
    allowed = {"control_point", "lane", "vehicle", "driver_document", "empty", "elock_id"}
    problems = [Problem("INVALID_VALUE", k, f"unknown field {k!r}") for k in sorted(set(data) - allowed)]
    cp = data.get("control_point")
    lane = data.get("lane")
    if cp not in gw.config.control_points:
        problems.append(
            Problem("INVALID_CODE", "control_point", f"{cp!r} is not a land control point with a kiosk")
        )
    elif not isinstance(lane, str) or lane not in gw.config.control_points[cp].lanes:
        problems.append(Problem("INVALID_VALUE", "lane", f"{lane!r} is not a lane of {cp}"))
    vehicle = data.get("vehicle")
    if not isinstance(vehicle, str) or vrn_problem(vehicle):
        problems.append(Problem("INVALID_VALUE", "vehicle", "a vehicle registration number is required"))
    document = data.get("driver_document")
    if not isinstance(document, str) or not document.strip():
        problems.append(Problem("MISSING_FIELD", "driver_document", "every driver passes Immigration"))
    elif len(document.strip()) > 35:
        problems.append(Problem("INVALID_VALUE", "driver_document", "at most 35 characters"))
    empty = data.get("empty", False)
    if not isinstance(empty, bool):
        problems.append(Problem("INVALID_VALUE", "empty", "true or false"))
    elock = data.get("elock_id")
    if elock is not None and (not isinstance(elock, str) or not elock.strip() or len(elock) > 35):
        problems.append(Problem("INVALID_VALUE", "elock_id", "an e-lock id of 1 to 35 characters"))
    if problems:
        raise GatewayError(problems)
    assert isinstance(cp, str) and isinstance(lane, str) and isinstance(vehicle, str)
    assert isinstance(document, str)
    return KioskRequest(
        cp, lane, normalise_vrn(vehicle), document.strip(), bool(empty), elock.strip() if elock else None
    )


def _authorise(actor: Actor, control_point: str, bound: Callable[[], str | None]) -> None:
    """Officers, and kiosks bound to the control point (``bound`` gives the kiosk's binding)."""
    if actor.status != "ACTIVE":
        raise GatewayError.one("FORBIDDEN", f"party {actor.party_id} is suspended")
    if actor.is_officer:
        return
    if actor.role != "kiosk":
        raise GatewayError.one("FORBIDDEN", "only kiosks and officers ask for clearance decisions")
    point = bound()
    if point != control_point:
        raise GatewayError.one(
            "FORBIDDEN", f"this kiosk is bound to {point}, not {control_point}", "control_point"
        )


# -- contingency ---------------------------------------------------------------------------------------


def in_contingency(conn: Connection, control_point: str) -> bool:
    return _SETTING_OF.scalar(conn, {"name": _CONTINGENCY + control_point}) == "on"


def set_contingency(gw: Gateway, actor: Actor, control_point: str, active: Any) -> dict[str, Any]:
    """An officer switches a control point to contingency (its kiosk answers NOT_READY) and back."""
    risk.require_officer(actor)
    if control_point not in gw.config.control_points:
        raise GatewayError.one("NOT_FOUND", f"no control point {control_point}", "control_point")
    if not isinstance(active, bool):
        raise GatewayError.one("INVALID_VALUE", "active is true or false", "active")
    name = _CONTINGENCY + control_point
    settings = tables.settings
    with gw.engine.begin() as conn:
        before = in_contingency(conn, control_point)
        if before != active:
            conn.execute(settings.delete().where(settings.c.name == name))
            if active:
                conn.execute(insert(settings).values(name=name, value="on"))
            audit(
                conn,
                gw,
                actor,
                "control_point.contingency",
                "control_point",
                control_point,
                {"contingency": before},
                {"contingency": active},
            )
    return {"control_point": control_point, "contingency": active}


# -- reading the store ---------------------------------------------------------------------------------


def _first_look(conn: Connection, req: KioskRequest, actor: Actor) -> tuple[Any, list[Any]]:
    """The vehicle's live bundle (or None) with the contingency switch and the kiosk's binding, and
    its members."""
    params = {"vehicle": req.vehicle, "name": _CONTINGENCY + req.control_point, "party_id": actor.party_id}
    rows = _LIVE_BUNDLE.all(conn, params)
    if not rows:
        return None, []
    width = len(_MEMBER_NAMES)
    members = [_Member._make(r[-width:]) for r in rows if r[-width] is not None]
    return rows[0], members


def _live_bundle(conn: Connection, req: KioskRequest) -> Pending:
    """The vehicle's live bundle (or None), locked, with the contingency switch, sent."""
    return _LIVE_BUNDLE_LOCKED.send(conn, {"vehicle": req.vehicle, "name": _CONTINGENCY + req.control_point})


def _plan(
    conn: Connection, gw: Gateway, req: KioskRequest, lock: bool, bundle: Any, members: list[Any] | None
) -> Plan:
    """What the store says; ``bundle`` is what ``_live_bundle`` read in this transaction, ``members``
    its members read with it (None: read here)."""
    from gateway.consignments import expiry_due  # the lifecycle's own rule

    plan = Plan()
    if bundle is not None:
        contingency = bundle.contingency
    else:
        contingency = _SETTING_OF.scalar(conn, {"name": _CONTINGENCY + req.control_point})
    if contingency == "on":
        plan.early = Verdict("NOT_READY", ["CONTINGENCY"])
        return plan
    plan.bundle = bundle
    if req.empty:
        if bundle is not None:
            # A vehicle with a live bundle cannot declare itself empty.
            plan.early = Verdict("NOT_READY", ["EMPTY_WITH_BUNDLE"])
        return plan
    if bundle is None:
        plan.early = Verdict("NOT_READY", ["NO_BUNDLE"])
        return plan
    if bundle.control_point != req.control_point:
        plan.early = Verdict("NOT_READY", ["WRONG_CONTROL_POINT"])
        return plan
    if members is None:
        members = (_MEMBERS_LOCKED if lock else _MEMBERS).all(conn, {"bundle_id": bundle.bundle_id})
    plan.members = members
    if not plan.members or any(m.status not in ("BUNDLED", "ARRIVED") for m in plan.members):
        plan.early = Verdict("NOT_READY", ["NO_BUNDLE"])
        return plan
    if any(expiry_due(gw, m) for m in plan.members):
        plan.early = Verdict("NOT_READY", ["EXPIRED"])
        return plan
    if bundle.status == "ARRIVED":
        plan.open_inspection = conn.execute(_OPEN_INSPECTION, {"bundle_id": bundle.bundle_id}).first()
        if plan.open_inspection is not None:
            plan.early = Verdict("INSPECT", ["SELECTED_FOR_INSPECTION"])
            return plan
    now = gw.now()
    ready_at = max(bundle.earliest_crossing, bundle.slot_start)
    if bundle.status == "LIVE" and now < ready_at:
        plan.early = Verdict("NOT_READY", ["EARLY"], come_back_at=ready_at)
        return plan
    plan.late = now >= bundle.slot_end
    if not lock:
        # Before asking Immigration only what saves the call matters; the transhipment rules below
        # are checked under lock, where they decide.
        return plan
    plan.records = {m.ccrn: json.loads(m.record) for m in plan.members}
    modes = {m.ccrn: (plan.records[m.ccrn].get("transhipment") or {}).get("mode") for m in plan.members}
    if any(modes.values()):  # most cargo is no transhipment and has no row to read
        plan.tranship = {
            r.ccrn: r for r in conn.execute(_TRANSHIPS, {"ccrns": [m.ccrn for m in plan.members]})
        }
    for m in plan.members:
        mode = modes[m.ccrn]
        if mode == "AIR_TO_LAND" and m.ccrn not in plan.tranship:
            # The airport is the first control point: the cargo may not leave before it has recorded it.
            plan.early = Verdict("NOT_READY", ["TRANSHIPMENT_NOT_RECORDED"])
            return plan
        if mode == "LAND_TO_AIR" and not req.elock_id:
            plan.early = Verdict("NOT_READY", ["ELOCK_REQUIRED"])
            return plan
    return plan


# -- Immigration --------------------------------------------------------------------------------------


def ask_immigration(gw: Gateway, req: KioskRequest, driver: str | None) -> str | None:
    """Immigration's answer, or None for no link, no answer in time, garbage or any failure."""
    port = gw.immigration
    if port is None:
        return None
    query = _query(req, driver)
    deadline = gw.config.immigration.timeout_ms / 1000 * 1.25 + 0.05
    bounded = getattr(port, "bounded", None)
    try:
        if bounded is not None and bounded():
            # The client keeps to timeout_ms by itself: called here, without a hop to another thread
            # and back (a tenth of a decision's CPU, and GIL hand-offs under load).
            answer = port.clear(query)
        else:
            answer = _IMMIGRATION_POOL.submit(port.clear, query).result(timeout=deadline)
    except FutureTimeout:
        log.warning("Immigration gave no answer within %.2fs", deadline)
        return None
    except Exception:
        log.exception("Immigration client failed")
        return None
    return _readable(answer)


def _query(req: KioskRequest, driver: str | None) -> ClearanceQuery:
    return ClearanceQuery(req.driver_document, req.vehicle, driver, req.control_point, req.lane)


def asks_from_event_loop(gw: Gateway) -> bool:
    """Whether Immigration's client can be awaited (``ask_immigration_async``) rather than called on
    a thread of its own."""
    ready = getattr(gw.immigration, "asynchronous", None)
    return ready is not None and bool(ready())


async def ask_immigration_async(gw: Gateway, req: KioskRequest, driver: str | None) -> str | None:
    """``ask_immigration`` from the event loop, once ``asks_from_event_loop``: the client keeps to
    ``timeout_ms`` by itself; None for no answer in time, garbage or any failure."""
    query = _query(req, driver)
    try:
        answer = await gw.immigration.clear_async(query)  # type: ignore[union-attr]
    except Exception:
        log.exception("Immigration client failed")
        return None
    return _readable(answer)


def _readable(answer: Any) -> str | None:
    if not isinstance(answer, str) or answer not in ANSWERS:
        log.warning("Immigration answered something unreadable: %r", answer)
        return None
    return answer


# -- the decision -------------------------------------------------------------------------------------


@dataclass
class Look:
    """A kiosk request read, its caller authorised and the store's first look taken: what a decision
    knows before Immigration is asked. ``answer`` is set when the decision is already made (a resend
    of a lost RELEASE, a fault)."""

    req: KioskRequest
    first: Plan | None = None
    answer: dict[str, Any] | None = None

    def asks_immigration(self) -> bool:
        return self.answer is None and self.first is not None and self.first.early is None

    @property
    def driver(self) -> str | None:
        bundle = self.first.bundle if self.first is not None else None
        return cast(str | None, bundle.driver_id) if bundle is not None else None


def decide(gw: Gateway, actor: Actor, data: Any) -> dict[str, Any]:
    """The kiosk decision of design section 7. Bad requests are errors; past that, every fault is
    NOT_READY with reason SYSTEM_FAULT. On PostgreSQL ``decide_held``; elsewhere three steps: ``look``,
    Immigration asked (when the decision needs it), ``finish``. The HTTP route runs the same on the
    event loop's thread and awaits Immigration's answer there (adapters/http_border.py)."""
    if gw.engine.dialect.name == "postgresql":
        return decide_held(gw, actor, data, lambda req, driver: ask_immigration(gw, req, driver))
    seen = look(gw, actor, data)
    answer = ask_immigration(gw, seen.req, seen.driver) if seen.asks_immigration() else None
    return finish(gw, actor, seen, answer)


def look(gw: Gateway, actor: Actor, data: Any) -> Look:
    """The request checked, its caller authorised, and the store's first look."""
    req = parse_request(gw, data)
    authorised = False
    try:
        # One connection for the check and the first reading, which is checked again under lock.
        with each_statement_alone(gw.engine) as conn:
            bundle, members = _first_look(conn, req, actor)

            def bound() -> str | None:
                if bundle is not None:
                    return cast(str | None, bundle.bound)
                return _BOUND_OF.scalar(conn, {"party_id": actor.party_id})

            _authorise(actor, req.control_point, bound)
            authorised = True
            first = _plan(conn, gw, req, False, bundle, members)
            again = _released_just_now(conn, gw, actor, req, first)
            if again is not None:
                return Look(req, answer=again)
        return Look(req, first=first)
    except Exception:
        if not authorised:  # a refused caller gets its error, not a decision
            raise
        return Look(req, answer=_system_fault())


def finish(gw: Gateway, actor: Actor, seen: Look, answer: str | None) -> dict[str, Any]:
    """The decision made and recorded, with Immigration's ``answer`` (None: not asked, or no answer)."""
    if seen.answer is not None:
        return seen.answer
    assert seen.first is not None
    try:
        return _decide(gw, actor, seen.req, seen.first, answer)
    except Exception:
        return _system_fault()


def decide_held(
    gw: Gateway, actor: Actor, data: Any, ask: Callable[[KioskRequest, str | None], str | None]
) -> dict[str, Any]:
    """``decide`` in one transaction that holds the vehicle's rows from the first look to the decision,
    Immigration asked (``ask``: its answer, or None) in between: for PostgreSQL, whose locks are the
    rows' own, in a greenlet of the event loop (adapters/http_border.py), where ``ask`` awaits the call.
    The first round trip locks the bundle, its members (with their records) and reads the caller's
    binding, the profiles and the targets that may apply; the second records the decision and commits.
    A concurrent change of the same vehicle's rows waits for the decision (at most about
    ``timeout_ms``), instead of the decision reading everything again under lock after Immigration."""
    req = parse_request(gw, data)
    authorised = False
    try:
        with gw.engine.begin() as conn:
            risk.secret(conn, gw)  # read once per process; in the pipeline only Prepared statements may run
            with pipeline(conn):
                found = _live_bundle(conn, req)
                locked = _MEMBERS_OF_VEHICLE_LOCKED.send(conn, {"vehicle": req.vehicle})
                bound = None if actor.is_officer else _BOUND_OF.send(conn, {"party_id": actor.party_id})
                ahead = risk.Ahead.of_vehicle(conn, gw, req.vehicle)
            bundle = found.first()
            _authorise(actor, req.control_point, lambda: bound.scalar() if bound is not None else None)
            authorised = True
            plan = _plan(conn, gw, req, True, bundle, locked.all() if bundle is not None else None)
            again = _released_just_now(conn, gw, actor, req, plan)
            if again is not None:
                return again
            asked = plan.early is None
            driver = bundle.driver_id if bundle is not None else None
            ahead.covering([req.vehicle, driver, *(k for m in plan.members for k in (m.ccrn, m.filer_id))])
            answer = ask(req, driver) if asked else None
            return _verdict(conn, gw, actor, req, plan, ahead, asked, answer)
    except Exception:
        if not authorised:  # a refused caller gets its error, not a decision
            raise
        return _system_fault()


def _system_fault() -> dict[str, Any]:
    log.exception("kiosk decision failed: the truck goes to a manual lane")
    return {"decision": "NOT_READY", "reasons": ["SYSTEM_FAULT"], "ccrns": []}


def _released_just_now(
    conn: Connection, gw: Gateway, actor: Actor, req: KioskRequest, plan: Plan
) -> dict[str, Any] | None:
    """The RELEASE this kiosk was given for this vehicle, driver and lane within ``RESEND_WINDOW``,
    when the kiosk asks again because that answer was lost on its way: the release ended the bundle,
    so a fresh decision (``plan``) finds none and would send a cleared truck to a manual lane. Nothing
    is decided or recorded again (the request itself is kept with the raw messages). None in every
    other case."""
    if plan.bundle is not None or plan.early is None or plan.early.reasons != ["NO_BUNDLE"]:
        return None
    last = _LAST_CLEARANCE.first(conn, {"vehicle": req.vehicle})
    if (
        last is None
        or last.decision != "RELEASE"
        or last.bundle_status != "CROSSED"  # an empty vehicle's, or a hold since, is not sent again
        or (last.requested_by, last.control_point, last.lane, last.driver_document)
        != (actor.party_id, req.control_point, req.lane, req.driver_document)
        or last.at < gw.now() - RESEND_WINDOW
    ):
        return None
    log.info("kiosk %s asked again for vehicle %s: its RELEASE is sent again", actor.party_id, req.vehicle)
    verdict = Verdict("RELEASE", json.loads(last.reasons))
    return _answer(actor, last.clearance_id, verdict, json.loads(last.ccrns), json.loads(last.detail))


def _decide(gw: Gateway, actor: Actor, req: KioskRequest, first: Plan, answer: str | None) -> dict[str, Any]:
    asked = first.early is None
    with gw.engine.begin() as conn:
        plan, ahead = _relock(conn, gw, actor, req, first) if asked else (first, None)
        return _verdict(conn, gw, actor, req, plan, ahead, asked, answer)


def _verdict(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    req: KioskRequest,
    plan: Plan,
    ahead: risk.Ahead | None,
    asked: bool,
    answer: str | None,
) -> dict[str, Any]:
    """The decision on ``plan`` (read under lock in this transaction), recorded and committed;
    ``asked``: whether Immigration was asked (its ``answer``: None for none)."""
    if asked and plan.early is None and answer is None:
        verdict = Verdict("NOT_READY", ["IMMIGRATION_UNAVAILABLE"])
    elif asked and plan.early is None and answer == "REFER":
        verdict = Verdict("NOT_READY", ["IMMIGRATION_REFER"])
    elif plan.early is not None:
        verdict = plan.early
    else:
        return _conclude(conn, gw, actor, req, plan, answer, ahead)
    offence = verdict.reasons == ["EARLY"] and plan.bundle is not None
    with pipeline(conn):
        recorded = _record(conn, gw, actor, req, plan, verdict, answer, {"reasons": verdict.reasons})
        if not offence:
            conn.commit()  # with the INSERT: one round trip
    clearance_id = recorded.key()
    if offence:
        _early_offence(conn, gw, req, plan.bundle)
    return _answer(actor, clearance_id, verdict, [m.ccrn for m in plan.members], None)


def _relock(
    conn: Connection, gw: Gateway, actor: Actor, req: KioskRequest, first: Plan
) -> tuple[Plan, risk.Ahead]:
    """The plan read again under lock (the bundle's row, then its members' in CCRN order, as before
    Immigration was asked), with the profiles and targets the decision will need: one round trip. The
    targets are read for the CCRNs, filers, vehicle and driver of the first look; the profiling reads
    its own should the members have changed meanwhile."""
    risk.secret(conn, gw)  # read once per process; in the pipeline only Prepared statements may run
    before = first.bundle  # None: an empty vehicle
    keys = [req.vehicle, before.driver_id if before is not None else None]
    keys += [k for m in first.members for k in (m.ccrn, m.filer_id)]
    with pipeline(conn):
        found = _live_bundle(conn, req)
        locked = _MEMBERS_LOCKED.send(conn, {"bundle_id": before.bundle_id}) if before is not None else None
        ahead = risk.Ahead(conn, gw, [k for k in keys if k])
    bundle = found.first()
    members = locked.all() if locked is not None else None
    if bundle is None or before is None or bundle.bundle_id != before.bundle_id:
        members = None  # another bundle now (or none): its own members, read under lock by its id
    return _plan(conn, gw, req, True, bundle, members), ahead


def _early_offence(conn: Connection, gw: Gateway, req: KioskRequest, bundle: Any) -> None:
    """Arriving before the permitted time is an offence: one per bundle, however often it tries."""
    seen = conn.scalar(
        select(tables.offences.c.offence_id).where(
            tables.offences.c.bundle_id == bundle.bundle_id, tables.offences.c.kind == "EARLY_ARRIVAL"
        )
    )
    if seen is None:
        risk.record_offence(
            conn,
            gw,
            "EARLY_ARRIVAL",
            party_id=bundle.driver_id,
            vehicle=bundle.vehicle,
            bundle_id=bundle.bundle_id,
            control_point=req.control_point,
            details=f"arrived before {iso_hk(max(bundle.earliest_crossing, bundle.slot_start))}",
        )


def _conclude(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    req: KioskRequest,
    plan: Plan,
    answer: str | None,
    ahead: risk.Ahead | None,
) -> dict[str, Any]:
    """Immigration answered CLEARED or REFUSED and the bundle (or the empty vehicle) is in order."""
    now = gw.now()
    bundle = plan.bundle
    with pipeline(conn):  # the profiling and the decision's rows sent together (a release: and COMMIT)
        verdict, selection, detail, clearance = _judge(conn, gw, actor, req, plan, answer, ahead, now)
        legs = bundle is not None and any(plan.records[m.ccrn].get("transhipment") for m in plan.members)
        if verdict.decision == "RELEASE" and bundle is not None and not legs:
            _arrive_and_cross(conn, gw, actor, req, plan)
            conn.commit()
            return _answer(actor, clearance.key(), verdict, [m.ccrn for m in plan.members], detail)
    clearance_id = clearance.key()
    for ccrn, lock in selection["elock"].items():
        member = next(m for m in plan.members if m.ccrn == ccrn)
        risk.record_offence(
            conn,
            gw,
            "ELOCK_BROKEN",
            party_id=member.filer_id,
            vehicle=req.vehicle,
            ccrn=ccrn,
            bundle_id=bundle.bundle_id if bundle is not None else None,
            control_point=req.control_point,
            details=f"e-lock {lock['presented']} presented, {lock['recorded']} recorded",
        )
        conn.execute(
            update(_X).where(_X.c.ccrn == ccrn).values(status="INSPECTION", intact=False, second_at=now)
        )
    if verdict.decision == "RELEASE" and bundle is not None:  # transhipment legs: their rules run here
        _arrive_and_cross(conn, gw, actor, req, plan)
        return _answer(actor, clearance_id, verdict, [m.ccrn for m in plan.members], detail)
    states = _arrive(conn, gw, actor, req, plan, verdict.decision) if bundle is not None else {}
    if verdict.decision == "INSPECT":
        open_inspection(
            conn,
            gw,
            origin="KIOSK",
            clearance_id=clearance_id,
            control_point=req.control_point,
            vehicle=req.vehicle,
            bundle_id=bundle.bundle_id if bundle is not None else None,
            empty=req.empty,
            ccrns=[m.ccrn for m in plan.members],
            selection=selection,
            states=states,
        )
    return _answer(actor, clearance_id, verdict, [m.ccrn for m in plan.members], detail)


def _judge(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    req: KioskRequest,
    plan: Plan,
    answer: str | None,
    ahead: risk.Ahead | None,
    now: datetime,
) -> tuple[Verdict, dict[str, Any], dict[str, Any], Pending]:
    """The customs side of the decision: the consignments profiled (the results sent), the verdict,
    and the clearance row sent."""
    bundle = plan.bundle
    selection: dict[str, Any] = {"consignments": {}, "vehicle_targets": [], "elock": {}}
    selected = False
    if bundle is None:  # an empty vehicle: still checked against vehicle and driver targets
        targets = risk.vehicle_targets(conn, gw, req.vehicle, [])
        selection["vehicle_targets"] = [t.as_dict() for t in targets]
        selected = bool(targets)
    else:
        second_point = [
            m.ccrn
            for m in plan.members
            if (plan.records[m.ccrn].get("transhipment") or {}).get("mode") == "AIR_TO_LAND"
        ]
        to_profile = [m for m in plan.members if m.ccrn not in second_point]
        results = risk.assess_held(
            conn,
            gw,
            to_profile,
            plan.records,
            "KIOSK",
            crossing_at=now,
            vehicle=bundle.vehicle,
            driver=bundle.driver_id,
            ahead=ahead,
        )
        for ccrn, result in results.items():
            selection["consignments"][ccrn] = result.as_dict()
            selected = selected or result.selected
        for ccrn in second_point:
            # Cleared at its first control point (the airport): never selected a second time. Only a
            # broken or mismatched e-lock stops it.
            recorded = plan.tranship[ccrn].elock_id
            if req.elock_id is not None and recorded and req.elock_id != recorded:
                selection["elock"][ccrn] = {"recorded": recorded, "presented": req.elock_id}
                selected = True
            else:
                selection["consignments"][ccrn] = {"why": ["TRANSHIPMENT_SECOND_POINT"], "selected": False}
    if answer == "REFUSED":
        verdict = Verdict("REFUSE", ["IMMIGRATION_REFUSED"])
    elif selected:
        verdict = Verdict("INSPECT", ["SELECTED_FOR_INSPECTION"])
    else:
        verdict = Verdict("RELEASE", [])
    if plan.late:
        verdict.reasons.append("LATE")
    detail = {"reasons": verdict.reasons, "immigration": answer, "selection": selection, "late": plan.late}
    return verdict, selection, detail, _record(conn, gw, actor, req, plan, verdict, answer, detail)


def _answer(
    actor: Actor,
    clearance_id: int,
    verdict: Verdict,
    ccrns: list[str],
    detail: dict[str, Any] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"decision": verdict.decision, "reasons": list(verdict.reasons), "ccrns": ccrns}
    if verdict.come_back_at is not None:
        out["come_back_at"] = iso_hk(verdict.come_back_at)
    if actor.is_officer:  # officers see what is behind it; nobody else ever does
        out["clearance_id"] = clearance_id
        out["detail"] = detail
    return out


def _record(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    req: KioskRequest,
    plan: Plan,
    verdict: Verdict,
    answer: str | None,
    detail: dict[str, Any],
) -> Pending:
    """The clearance row, sent (``key()``: its id)."""
    return _CLEARANCES.send(
        conn,
        {
            "at": gw.now(),
            "control_point": req.control_point,
            "lane": req.lane,
            "vehicle": req.vehicle,
            "driver_document": req.driver_document,
            "requested_by": actor.party_id,
            "bundle_id": plan.bundle.bundle_id if plan.bundle is not None else None,
            "empty": req.empty,
            "elock_id": req.elock_id,
            "decision": verdict.decision,
            "reasons": json.dumps(verdict.reasons),
            "ccrns": json.dumps([m.ccrn for m in plan.members]),
            "come_back_at": verdict.come_back_at,
            "immigration": answer,
            "late": plan.late,
            "detail": to_json(detail),
        },
        returning=True,
    )


# -- status changes, events ---------------------------------------------------------------------------


_EVENTS = Prepared(insert(tables.events))
_AUDITS = Prepared(insert(tables.audit_log))


def event(
    conn: Connection,
    gw: Gateway,
    kind: str,
    *,
    ccrn: str | None,
    vehicle: str | None,
    status: str | None,
    status_version: int | None,
    data: dict[str, Any],
) -> None:
    """One row of the partner feed (the shape of ``consignments._event_values``); never any risk."""
    _EVENTS.run(
        conn,
        {
            "at": gw.now(),
            "type": kind,
            "ccrn": ccrn,
            "vehicle": vehicle,
            "status": status,
            "status_version": status_version,
            "data": json.dumps(data),
        },
    )


State = tuple[str, int]  # a consignment's (status, status_version)


def move(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    ccrns: list[str],
    status: str | None,
    kind: str,
    data: dict[str, Any],
    vehicle: str | None = None,
    states: dict[str, State] | None = None,
) -> None:
    """Set consignments' status (None: keep each one's) with status_version bumped, one event and one
    audit row each: four statements however many consignments, as a kiosk decision is on the clock;
    three when the caller holds their current ``states`` (read under lock), which are brought up to
    date."""
    if not ccrns:
        return
    now = gw.now()
    if states is None:
        states = {r.ccrn: (r.status, r.status_version) for r in conn.execute(_STATUSES, {"ccrns": ccrns})}
    _MOVES[status is not None].run(conn, {"ccrns": ccrns, "now": now, "to": status})
    events: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    _transitions(gw, actor, ccrns, status, kind, data, vehicle, now, states, events, audits)
    _EVENTS.run(conn, events)
    _AUDITS.run(conn, audits)


def _transitions(
    gw: Gateway,
    actor: Actor,
    ccrns: list[str],
    status: str | None,
    kind: str,
    data: dict[str, Any],
    vehicle: str | None,
    now: datetime,
    states: dict[str, State],
    events: list[dict[str, Any]],
    audits: list[dict[str, Any]],
) -> None:
    """The event and audit row of one status change of each consignment (``states`` updated)."""
    text = json.dumps(data)
    action = f"consignment.{kind.lower()}"
    for ccrn in ccrns:
        old_status, old_version = states[ccrn]
        states[ccrn] = (status or old_status, old_version + 1)
        new = {"status": states[ccrn][0], "status_version": states[ccrn][1]}
        events.append({"at": now, "type": kind, "ccrn": ccrn, "vehicle": vehicle, "data": text, **new})
        audits.append(
            audit_values(
                gw,
                actor,
                action,
                "consignment",
                ccrn,
                {"status": old_status, "status_version": old_version},
                new,
            )
        )


def bump(conn: Connection, gw: Gateway, actor: Actor, ccrn: str, kind: str, data: dict[str, Any]) -> None:
    """An event that changes no status (TRANSHIPMENT_CONFIRMED) still gets a new status_version."""
    move(conn, gw, actor, [ccrn], None, kind, data)


def _set_bundle(
    conn: Connection, gw: Gateway, bundle_id: str, status: str, now: datetime | None = None
) -> None:
    """Sent (in a ``pipeline`` block, with the block's other statements)."""
    ended = status in ("CROSSED", "HELD")
    _BUNDLE_STATUS[ended].send(conn, {"key": bundle_id, "to": status, "now": now or gw.now()})


def _arrival(req: KioskRequest, plan: Plan, decision: str) -> dict[str, Any]:
    bundle = plan.bundle
    return {
        "decision": decision,
        "control_point": req.control_point,
        "lane": req.lane,
        "bundle_id": bundle.bundle_id,
        "driver": bundle.driver_id,
        "late": plan.late,
    }


def _arrive(
    conn: Connection, gw: Gateway, actor: Actor, req: KioskRequest, plan: Plan, decision: str
) -> dict[str, State]:
    """The members are ARRIVED; returns their states after it."""
    bundle = plan.bundle
    data = _arrival(req, plan, decision)
    states = {m.ccrn: (m.status, m.status_version) for m in plan.members}
    fresh = [m.ccrn for m in plan.members if m.status == "BUNDLED"]
    move(conn, gw, actor, fresh, "ARRIVED", "ARRIVED", data, vehicle=bundle.vehicle, states=states)
    # Arriving again after a refused driver: the decision is news, the status is not.
    again = [m.ccrn for m in plan.members if m.status != "BUNDLED"]
    move(conn, gw, actor, again, None, "ARRIVED", data, vehicle=bundle.vehicle, states=states)
    if bundle.status == "LIVE":
        _set_bundle(conn, gw, bundle.bundle_id, "ARRIVED")
    return states


def _arrive_and_cross(conn: Connection, gw: Gateway, actor: Actor, req: KioskRequest, plan: Plan) -> None:
    """A release: the members are ARRIVED, then CROSSED, and the bundle is done. The same rows as
    ``_arrive`` then ``cross`` (every status change with its event and audit row, in that order), in
    one UPDATE per table and one INSERT of many rows per table."""
    from gateway import transhipments

    bundle = plan.bundle
    now = gw.now()
    ccrns = [m.ccrn for m in plan.members]
    states = {m.ccrn: (m.status, m.status_version) for m in plan.members}
    events: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    arrival = _arrival(req, plan, "RELEASE")
    fresh = [m.ccrn for m in plan.members if m.status == "BUNDLED"]
    _transitions(gw, actor, fresh, "ARRIVED", "ARRIVED", arrival, bundle.vehicle, now, states, events, audits)
    again = [m.ccrn for m in plan.members if m.status != "BUNDLED"]
    _transitions(gw, actor, again, None, "ARRIVED", arrival, bundle.vehicle, now, states, events, audits)
    crossing = {"control_point": bundle.control_point, "bundle_id": bundle.bundle_id}
    _transitions(
        gw, actor, ccrns, "CROSSED", "CROSSED", crossing, bundle.vehicle, now, states, events, audits
    )
    _ARRIVE_AND_CROSS.send(conn, {"ccrns": ccrns, "now": now})
    _EVENTS.send(conn, events)
    _AUDITS.send(conn, audits)
    for m in plan.members:
        leg = dict(plan.records[m.ccrn].get("transhipment") or {})
        if leg:  # the transhipment rules; nothing to do for other cargo
            transhipments.on_crossed(conn, gw, actor, m.ccrn, bundle.control_point, req.elock_id, False, leg)
    _set_bundle(conn, gw, bundle.bundle_id, "CROSSED", now)


def cross(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    members: list[Any],
    bundle: Any,
    elock_id: str | None,
    inspected: bool,
) -> None:
    """The vehicle has crossed: its consignments are CROSSED, its bundle done, its vehicle free. A
    land-to-air transhipment starts its journey to the airport with the e-lock recorded here; an
    air-to-land one whose e-lock was presented intact is confirmed."""
    from gateway import transhipments

    data = {"control_point": bundle.control_point, "bundle_id": bundle.bundle_id}
    move(conn, gw, actor, [m.ccrn for m in members], "CROSSED", "CROSSED", data, vehicle=bundle.vehicle)
    for m in members:
        transhipments.on_crossed(conn, gw, actor, m.ccrn, bundle.control_point, elock_id, inspected)
    _set_bundle(conn, gw, bundle.bundle_id, "CROSSED")


# -- inspections --------------------------------------------------------------------------------------


def open_inspection(
    conn: Connection,
    gw: Gateway,
    *,
    origin: str,
    clearance_id: int | None,
    control_point: str,
    vehicle: str | None,
    bundle_id: str | None,
    empty: bool,
    ccrns: list[str],
    selection: dict[str, Any],
    states: dict[str, State] | None = None,
) -> int:
    """An inspection case with an INSPECTION_OPENED event per consignment (or one for the vehicle);
    ``states``: the consignments' current (status, status_version) when the caller holds them."""
    result = conn.execute(
        insert(_N).values(
            opened_at=gw.now(),
            origin=origin,
            clearance_id=clearance_id,
            control_point=control_point,
            vehicle=vehicle,
            bundle_id=bundle_id,
            empty=empty,
            ccrns=json.dumps(ccrns),
            selection=to_json(selection),
            status="OPEN",
        )
    )
    inspection_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    data = {"control_point": control_point, "inspection_id": inspection_id}
    if not ccrns:
        event(
            conn,
            gw,
            "INSPECTION_OPENED",
            ccrn=None,
            vehicle=vehicle,
            status=None,
            status_version=None,
            data=data,
        )
        return inspection_id
    if not states or any(c not in states for c in ccrns):
        states = {r.ccrn: (r.status, r.status_version) for r in conn.execute(_STATUSES, {"ccrns": ccrns})}
    now = gw.now()
    text = json.dumps(data)
    events = [
        {
            "at": now,
            "type": "INSPECTION_OPENED",
            "ccrn": ccrn,
            "vehicle": vehicle,
            "status": states[ccrn][0],
            "status_version": states[ccrn][1],
            "data": text,
        }
        for ccrn in ccrns
    ]
    _EVENTS.run(conn, events)
    return inspection_id


def _inspection_view(row: Any) -> dict[str, Any]:
    return {
        "inspection_id": int(row.inspection_id),
        "opened_at": iso_hk(row.opened_at),
        "origin": row.origin,
        "clearance_id": row.clearance_id,
        "control_point": row.control_point,
        "vehicle": row.vehicle,
        "bundle_id": row.bundle_id,
        "empty": bool(row.empty),
        "ccrns": json.loads(row.ccrns),
        "selection": json.loads(row.selection),
        "status": row.status,
        "closed_at": iso_hk(row.closed_at),
        "closed_by": row.closed_by,
        "findings": json.loads(row.findings) if row.findings else None,
    }


def list_inspections(
    gw: Gateway, actor: Actor, status: str | None = "OPEN", control_point: str | None = None
) -> list[dict[str, Any]]:
    """Inspection cases with the profiles, targets and draws behind each selection (officers)."""
    risk.require_officer(actor)
    query = select(_N).order_by(_N.c.inspection_id).limit(500)
    if status:
        query = query.where(_N.c.status == status.upper())
    if control_point:
        query = query.where(_N.c.control_point == control_point)
    with gw.engine.connect() as conn:
        return [_inspection_view(r) for r in conn.execute(query)]


def get_inspection(gw: Gateway, actor: Actor, inspection_id: Any) -> dict[str, Any]:
    risk.require_officer(actor)
    with gw.engine.connect() as conn:
        return _inspection_view(_load_inspection(conn, inspection_id, lock=False))


def _load_inspection(conn: Connection, inspection_id: Any, lock: bool) -> Any:
    try:
        key = int(inspection_id)
    except (TypeError, ValueError):
        raise GatewayError.one("NOT_FOUND", f"no inspection {inspection_id}", "inspection_id") from None
    query = select(_N).where(_N.c.inspection_id == key)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise GatewayError.one("NOT_FOUND", f"no inspection {inspection_id}", "inspection_id")
    return row


def _parse_findings(data: Any, required: bool) -> dict[str, Any]:
    if data is None and not required:
        data = {}
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a JSON object {findings, undeclared_cargo?, loaded?}")
    allowed = {"findings", "undeclared_cargo", "loaded"}
    problems = [Problem("INVALID_VALUE", k, f"unknown field {k!r}") for k in sorted(set(data) - allowed)]
    text = data.get("findings")
    if required and (not isinstance(text, str) or not text.strip()):
        problems.append(Problem("MISSING_FIELD", "findings", "say what was found"))
    elif text is not None and not isinstance(text, str):
        problems.append(Problem("INVALID_VALUE", "findings", "text"))
    for flag in ("undeclared_cargo", "loaded"):
        if not isinstance(data.get(flag, False), bool):
            problems.append(Problem("INVALID_VALUE", flag, "true or false"))
    if problems:
        raise GatewayError(problems)
    return {
        "findings": (text or "").strip(),
        "undeclared_cargo": bool(data.get("undeclared_cargo", False)),
        "loaded": bool(data.get("loaded", False)),
    }


def close_inspection(
    gw: Gateway, actor: Actor, inspection_id: Any, outcome: str, data: Any
) -> dict[str, Any]:
    """An officer closes a case: ``RELEASED`` (the consignments cross) or ``HELD``. Offences the
    findings show are recorded against the filers, the driver and the vehicle."""
    from gateway import transhipments

    risk.require_officer(actor)
    findings = _parse_findings(data, required=outcome == "HELD")
    with gw.engine.begin() as conn:
        case = _load_inspection(conn, inspection_id, lock=True)
        if case.status != "OPEN":
            raise GatewayError.one(
                "INVALID_STATE", f"inspection {case.inspection_id} is already {case.status}", "inspection_id"
            )
        ccrns = json.loads(case.ccrns)
        bundle = (  # the bundle's row before its consignments' (bundles.lock)
            conn.execute(select(_B).where(_B.c.bundle_id == case.bundle_id).with_for_update()).first()
            if case.bundle_id
            else None
        )
        members = list(
            conn.execute(select(_C).where(_C.c.ccrn.in_(ccrns)).order_by(_C.c.ccrn).with_for_update())
        )
        _findings_offences(conn, gw, actor, case, members, bundle, findings)
        elock = None
        if case.clearance_id is not None:
            elock = conn.scalar(select(_K.c.elock_id).where(_K.c.clearance_id == case.clearance_id))
        data_out = {"control_point": case.control_point, "inspection_id": int(case.inspection_id)}
        if outcome == "RELEASED":
            arrived = [m for m in members if m.status == "ARRIVED"]
            if bundle is not None and arrived:
                cross(conn, gw, actor, arrived, bundle, elock, inspected=True)
            for m in members:
                if m.status == "CROSSED":  # an e-lock case at the second control point
                    transhipments.on_elock_case_closed(conn, gw, m.ccrn, "CLEARED")
        else:
            held = [m.ccrn for m in members if m.status in ("ARRIVED", "CROSSED")]
            move(conn, gw, actor, held, "HELD", "HELD", data_out, vehicle=case.vehicle)
            for ccrn in held:
                transhipments.on_elock_case_closed(conn, gw, ccrn, "HELD")
            if bundle is not None and bundle.status in ("LIVE", "ARRIVED"):
                _set_bundle(conn, gw, bundle.bundle_id, "HELD")
        conn.execute(
            update(_N)
            .where(_N.c.inspection_id == case.inspection_id)
            .values(
                status=outcome, closed_at=gw.now(), closed_by=actor.party_id, findings=json.dumps(findings)
            )
        )
        audit(
            conn,
            gw,
            actor,
            f"inspection.{outcome.lower()}",
            "inspection",
            str(case.inspection_id),
            {"status": "OPEN"},
            {"status": outcome, **findings},
        )
        return _inspection_view(_load_inspection(conn, case.inspection_id, lock=False))


def _findings_offences(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    case: Any,
    members: list[Any],
    bundle: Any,
    findings: dict[str, Any],
) -> None:
    driver = bundle.driver_id if bundle is not None else None
    if findings["undeclared_cargo"]:
        for party in sorted({m.filer_id for m in members} | ({driver} if driver else set())):
            risk.record_offence(
                conn,
                gw,
                "UNDECLARED_CARGO",
                party_id=party,
                vehicle=case.vehicle,
                bundle_id=case.bundle_id,
                control_point=case.control_point,
                details=findings["findings"] or "undeclared cargo found at inspection",
                recorded_by=actor.party_id,
            )
    if findings["loaded"] and case.empty:
        risk.record_offence(
            conn,
            gw,
            "EMPTY_NOT_EMPTY",
            vehicle=case.vehicle,
            control_point=case.control_point,
            details=findings["findings"] or "declared empty, found loaded",
            recorded_by=actor.party_id,
        )


def list_clearances(gw: Gateway, actor: Actor, vehicle: str | None = None) -> list[dict[str, Any]]:
    """Kiosk decisions with the officers' view of each, newest first."""
    risk.require_officer(actor)
    query = select(_K).order_by(_K.c.clearance_id.desc()).limit(200)
    if vehicle:
        query = query.where(_K.c.vehicle == normalise_vrn(vehicle))
    with gw.engine.connect() as conn:
        return [
            {
                "clearance_id": int(r.clearance_id),
                "at": iso_hk(r.at),
                "control_point": r.control_point,
                "lane": r.lane,
                "vehicle": r.vehicle,
                "driver_document": r.driver_document,
                "bundle_id": r.bundle_id,
                "empty": bool(r.empty),
                "elock_id": r.elock_id,
                "decision": r.decision,
                "reasons": json.loads(r.reasons),
                "ccrns": json.loads(r.ccrns),
                "come_back_at": iso_hk(r.come_back_at),
                "immigration": r.immigration,
                "late": bool(r.late),
                "detail": json.loads(r.detail),
            }
            for r in conn.execute(query)
        ]
