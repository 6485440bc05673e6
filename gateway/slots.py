"""Crossing time slots per control point (design sections 5 and 6).

Each land control point has opening hours, a slot length and a capacity of bundles per slot, in Hong
Kong time. Slots are aligned to the opening time. A bundle gets the slot that contains its target time
(its earliest permitted crossing, or its expected arrival if later), or the next one with room the same
day; none left is ``SLOT_FULL``. Capacity is enforced by a conditional increment, so concurrent
bundlers on PostgreSQL can never overbook a slot.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import tables
from gateway.clock import HONG_KONG
from gateway.config import ControlPointConfig
from gateway.errors import GatewayError
from gateway.prepared import Pending, Prepared

_S = tables.slot_bookings
_TAKE = Prepared(  # built once: statement building costs more than the update itself
    update(_S)
    .where(
        _S.c.control_point == bindparam("cp"),
        _S.c.slot_start == bindparam("start"),
        _S.c.booked < bindparam("cap"),
    )
    .values(booked=_S.c.booked + 1)
)
_FULL = Prepared(
    select(_S.c.slot_start).where(
        _S.c.control_point == bindparam("cp"),
        _S.c.slot_start >= bindparam("first"),
        _S.c.slot_start <= bindparam("last"),
        _S.c.booked >= bindparam("cap"),
    )
)


def _hhmm(text: str) -> timedelta:
    hours, minutes = text.split(":")
    return timedelta(hours=int(hours), minutes=int(minutes))


def _day(cp: ControlPointConfig, target: datetime) -> tuple[datetime, timedelta, datetime]:
    """The first slot of the target's Hong Kong day that ends after the target, the slot length, and
    the closing time."""
    local = target.astimezone(HONG_KONG)
    midnight = datetime.combine(local.date(), time(0), HONG_KONG)
    opens = midnight + _hhmm(cp.opens)
    closes = midnight + _hhmm(cp.closes)
    length = timedelta(minutes=cp.slot_minutes)
    first = 0 if local < opens else int((local - opens) / length)
    return opens + first * length, length, closes


# Slots with room that ``with_room`` returns as a hint: the first one is nearly always booked, so the
# rest of the day is not worked out (a day of 15-minute slots is 96 of them, each an aware datetime to
# compute and hash: a tenth of a bundle's CPU when they were all listed). ``book`` reads on past them.
HINTS = 4


class FullAhead:
    """The full slots of a day from some slot on, sent before the caller knows its target exactly (in a
    ``pipeline``, with the statements it needs first): ``with_room`` of a later target of the same day
    reads them instead of asking."""

    __slots__ = ("_full", "code", "first", "last")

    def __init__(self, conn: Connection, code: str, cp: ControlPointConfig, not_before: datetime) -> None:
        self.code = code
        self.first, length, closes = _day(cp, not_before)
        self.last = self.first + ((closes - self.first) // length - 1) * length
        bounds = {"cp": code, "first": self.first, "last": self.last, "cap": cp.slot_capacity}
        self._full: Pending | set[datetime] = _FULL.send(conn, bounds)

    def full(self, code: str, start: datetime, last: datetime) -> set[datetime] | None:
        """The full slots from ``start`` to ``last``, or None when they were not read ahead."""
        if code != self.code or last != self.last or not self.first <= start <= last:
            return None
        if isinstance(self._full, Pending):
            self._full = {row.slot_start for row in self._full.all()}
        return self._full


def with_room(
    conn: Connection,
    code: str,
    cp: ControlPointConfig,
    target: datetime,
    limit: int | None = HINTS,
    ahead: FullAhead | None = None,
) -> list[tuple[datetime, datetime]]:
    """The first ``limit`` slots (None: all) at or after ``target`` that had room when read (no lock
    taken: a hint for ``book``); ``ahead``: the full slots read already, if they cover it."""
    start, length, closes = _day(cp, target)
    if start + length > closes:
        return []
    # one read skips the slots already full instead of one refused update each
    last = start + ((closes - start) // length - 1) * length
    full = ahead.full(code, start, last) if ahead is not None else None
    if full is None:
        bounds = {"cp": code, "first": start, "last": last, "cap": cp.slot_capacity}
        full = {row.slot_start for row in _FULL.all(conn, bounds)}
    room: list[tuple[datetime, datetime]] = []
    while start + length <= closes and (limit is None or len(room) < limit):
        if start not in full:
            room.append((start, start + length))
        start += length
    return room


def book(
    conn: Connection,
    code: str,
    cp: ControlPointConfig,
    target: datetime,
    room: list[tuple[datetime, datetime]] | None = None,
    taking: Pending | None = None,
) -> tuple[datetime, datetime]:
    """Book the first slot with room at or after ``target`` (trying ``room``, from ``with_room``, when
    the caller read it already, whose first slot ``taking`` may have tried: see ``send_take``); raises
    SLOT_FULL when the day has none."""
    hint = with_room(conn, code, cp, target) if room is None else room
    for i, (start, end) in enumerate(hint):
        if _take(conn, code, start, cp.slot_capacity, taking if i == 0 else None):
            return start, end
    if len(hint) >= HINTS:  # the hint stopped short of the end of the day: the later slots, read again
        for start, end in with_room(conn, code, cp, hint[-1][1], limit=None):
            if _take(conn, code, start, cp.slot_capacity):
                return start, end
    local = target.astimezone(HONG_KONG)
    raise GatewayError.one(
        "SLOT_FULL",
        f"control point {code} has no slot with room on {local:%Y-%m-%d} from {local:%H:%M} "
        f"(open {cp.opens} to {cp.closes}, {cp.slot_capacity} vehicles per {cp.slot_minutes} minutes)",
        "control_point",
    )


def send_take(conn: Connection, code: str, start: datetime, capacity: int) -> Pending:
    """The booking of a slot whose row exists and has room, sent (in a ``pipeline``, with the
    statements before it): ``book`` with it as ``taking`` reads whether it took, and goes on if not."""
    return _TAKE.send(conn, {"cp": code, "start": start, "cap": capacity})


def _take(conn: Connection, code: str, start: datetime, capacity: int, sent: Pending | None = None) -> bool:
    """Book one place in the slot if it has room (``sent``: its conditional update, sent already)."""
    taking = send_take(conn, code, start, capacity) if sent is None else sent
    if taking.rowcount():
        return True
    # The conditional update took nothing: the slot's row is full, or not made yet.
    params = {"cp": code, "start": start, "cap": capacity}
    try:
        with conn.begin_nested():
            conn.execute(insert(_S).values(control_point=code, slot_start=start, booked=1))
        return True
    except IntegrityError:
        # The slot's row exists: it was full above, or another bundler created it just now. Try once
        # more under the row's lock; what it says is final.
        return bool(_TAKE.run(conn, params))


def release(conn: Connection, code: str, start: datetime) -> None:
    conn.execute(
        update(_S)
        .where(_S.c.control_point == code, _S.c.slot_start == start, _S.c.booked > 0)
        .values(booked=_S.c.booked - 1)
    )
