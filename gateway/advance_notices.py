"""Advance notices to Immigration (design section 9), through a durable outbox.

When a bundle is made, :func:`enqueue` writes a notice row in the bundle's own transaction: the bundle and
its notice commit together or not at all, so a notice can be late but never lost. :func:`deliver_due`
sends due notices with Immigration's ``AdviseBundles`` (the notices of one claim in one request) and is
run by a background thread of ``roadcargo serve`` (any number of processes may run it against one
database):

1. claim: in a short transaction, due rows are selected ``FOR UPDATE SKIP LOCKED`` (on PostgreSQL two
   workers never wait for nor take each other's rows; SQLite serialises the transaction), their
   ``attempts`` counted and ``next_attempt_at`` pushed a lease ahead, so no other worker takes them
   while they are being sent, and a worker that dies mid-send leaves them due again once the lease ends;
2. send, outside any transaction (no database lock is held over the network);
3. record: acknowledged rows get ``delivered_at``; the others ``last_error`` and a retry time with
   exponential backoff (1 s, 2 s, 4 s ... at most 5 minutes), retried until Immigration accepts. A
   request that fails leaves all its notices for a retry; a notice Immigration refuses on its own
   leaves only itself, its batch-mates being delivered.

Each notice carries its own ``notice_id``, so Immigration recognises a notice sent again after a lost
acknowledgement (or an expired lease) as the same one.

Unbundling before delivery does not withdraw the notice: it still goes out. An advance notice is
information ahead of arrival, not a permission; Immigration decides at the kiosk, where the driver's own
travel document is asked about in every case. Notices are sent at bundling only (adding CCRNs to a live
bundle does not change its vehicle, driver or control point).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, func, insert, select, update

from gateway import tables
from gateway.context import Gateway
from gateway.prepared import Prepared, pipeline

log = logging.getLogger("roadcargo.advance_notices")

_O = tables.immigration_outbox
LEASE = timedelta(minutes=2)  # far longer than one delivery, which is bounded by [immigration] timeout_ms
MAX_BACKOFF = timedelta(minutes=5)
_ENQUEUE = Prepared(insert(_O))  # built once: building a statement per bundle cost more than executing it
# The worker's statements, built once too: a third of its CPU at 300 notices a second went into building
# and compiling them (their IN lists of up to a batch of ids) for every round.
_DUE = Prepared(
    select(_O)
    .where(_O.c.delivered_at.is_(None), _O.c.next_attempt_at <= bindparam("now"))
    .order_by(_O.c.notice_id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_LEASE = Prepared(
    update(_O)
    .where(_O.c.notice_id.in_(bindparam("ids", expanding=True)))
    .values(attempts=_O.c.attempts + 1, next_attempt_at=bindparam("until"))
)
_DELIVERED = Prepared(
    update(_O)
    .where(_O.c.notice_id.in_(bindparam("ids", expanding=True)))
    .values(delivered_at=bindparam("now"), last_error=None)
)
_RETRY = Prepared(
    update(_O)
    .where(_O.c.notice_id.in_(bindparam("ids", expanding=True)))
    .values(next_attempt_at=bindparam("at"), last_error=bindparam("error"))
)


@dataclass(frozen=True)
class AdvanceNotice:
    notice_id: int
    bundle_id: str
    vehicle: str
    driver: str
    control_point: str
    direction: str
    slot_start: datetime
    slot_end: datetime


class NoticeSink(Protocol):
    def advise_all(self, notices: Sequence[AdvanceNotice]) -> dict[int, str]:
        """Deliver notices; returns those Immigration did not acknowledge, by notice id, with why."""
        ...


@dataclass(frozen=True)
class Delivery:
    delivered: int
    failed: int


def enqueue(conn: Connection, gw: Gateway, bundle: Any) -> None:
    """A notice for a bundle just made, in the bundle's transaction."""
    now = gw.now()
    _ENQUEUE.send(  # sent: in a pipeline, with the statements around it
        conn,
        {
            "bundle_id": bundle.bundle_id,
            "vehicle": bundle.vehicle,
            "driver_id": bundle.driver_id,
            "control_point": bundle.control_point,
            "direction": bundle.direction,
            "slot_start": bundle.slot_start,
            "slot_end": bundle.slot_end,
            "created_at": now,
            "next_attempt_at": now,
            "attempts": 0,
        },
    )


def backoff(attempts: int) -> timedelta:
    return min(timedelta(seconds=2 ** max(attempts - 1, 0)), MAX_BACKOFF)


def _claim(gw: Gateway, limit: int) -> list[tuple[AdvanceNotice, int]]:
    """Due notices, each with its attempts counted this time."""
    now = gw.now()
    with gw.engine.begin() as conn:
        rows = _DUE.all(conn, {"now": now, "limit": limit})
        if not rows:
            return []
        with pipeline(conn):  # the lease and the COMMIT: one round trip
            _LEASE.send(conn, {"ids": [r.notice_id for r in rows], "until": now + LEASE})
            conn.commit()
    return [
        (
            AdvanceNotice(
                r.notice_id,
                r.bundle_id,
                r.vehicle,
                r.driver_id,
                r.control_point,
                r.direction,
                r.slot_start,
                r.slot_end,
            ),
            r.attempts + 1,
        )
        for r in rows
    ]


def _record(gw: Gateway, done: Sequence[int], failed: dict[int, str], attempts: dict[int, int]) -> None:
    now = gw.now()
    # Failed notices of one batch mostly share their error and attempt count: one statement per group.
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    for notice_id, error in failed.items():
        groups[attempts[notice_id], error[:500]].append(notice_id)
    with gw.engine.begin() as conn, pipeline(conn):  # every update and the COMMIT: one round trip
        if done:
            _DELIVERED.send(conn, {"ids": list(done), "now": now})
        for (attempt, error), ids in groups.items():
            _RETRY.send(conn, {"ids": ids, "at": now + backoff(attempt), "error": error})
        conn.commit()


def deliver_due(gw: Gateway, sink: NoticeSink, limit: int = 50) -> Delivery:
    """Send the notices that are due (at most ``limit``, in one request); what failed is retried later."""
    claimed = _claim(gw, limit)
    if not claimed:
        return Delivery(0, 0)
    notices = [notice for notice, _attempts in claimed]
    attempts = {n.notice_id: count for n, count in claimed}
    try:
        failed = {k: v for k, v in sink.advise_all(notices).items() if k in attempts}
    except Exception as exc:  # any failure is a retry later, never a lost notice
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        failed = dict.fromkeys(attempts, error)
    done = [n.notice_id for n in notices if n.notice_id not in failed]
    _record(gw, done, failed, attempts)
    if failed:
        log.warning(
            "%d advance notices not delivered to Immigration (retried later): %s",
            len(failed),
            next(iter(failed.values())),
        )
    return Delivery(len(done), len(failed))


def pending(gw: Gateway) -> int:
    """Notices not yet delivered."""
    with gw.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(_O.c.delivered_at.is_(None))) or 0)
