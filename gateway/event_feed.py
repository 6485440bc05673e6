"""The partner agencies' event feed (design sections 9 and 10): ``GET /api/v1/events?after=CURSOR&limit=N``.

What an agency sees is an allow-list per scope and event type, never a deny-list: an event type not
listed for the scope is not shown at all, and of a listed one only the listed ``data`` keys with plain
values pass. ``immigration`` sees vehicles, drivers, crossings and decisions (bundling, arrival, the
kiosk decision, inspection opened, crossing, hold), never goods, values, HS codes, parties' commercial
details or risk, and no lodgement or amendment at all. ``airport`` sees the events of consignments
that carry a transhipment (any version of the record has a ``transhipment``), with the transhipment's
own details on lodgement and amendment. Officers see every event in full.

Cursors are the ``events`` table's own increasing key. A consumer passes the last cursor it has seen as
``after``; the answer's ``next_cursor`` is where to resume (it moves past events the scope does not
show, so a consumer never re-reads them). Resuming misses nothing and repeats nothing, because an event
is served only once no event with a lower cursor can still appear:

- SQLite serialises writers (every transaction is ``BEGIN IMMEDIATE``) and numbers a new row one past
  the highest, so rows commit in cursor order: everything visible is safe.
- PostgreSQL draws cursors from a sequence when a row is inserted, but transactions commit in any
  order: a consumer that read cursor 8 could afterwards see 7 commit and never look back. So each read
  first takes the highest visible cursor ``top``, then lists the transactions that hold the lock every
  insert into ``events`` takes (``RowExclusiveLock`` on the table, in ``pg_locks``, held from before
  the cursor is drawn until the transaction ends). Any event at or below ``top`` that was not yet
  visible belongs to one of them. The read waits, briefly, until all of those have ended, and then
  serves events up to ``top`` only. Transactions that never write events (and other databases on the
  same server) are not waited for. If the writers are still running after ``SETTLE_WAIT`` (a long
  transaction), the read serves up to the highest horizon this process had already found safe, or
  nothing new yet: late, never wrong. (Snapshot ``xmin`` alone would not do: it is held back by any
  long transaction on the server, and a transaction id says nothing about the order cursors were drawn.)
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, select, text

from gateway import tables
from gateway.context import Actor, Gateway, iso_hk
from gateway.errors import GatewayError, Problem

_E = tables.events
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_SCAN = 5000  # rows examined per request at most, so a scope that sees little still answers fast
SETTLE_WAIT = 0.25  # seconds a read waits for in-flight writers before serving the last safe horizon

_BUNDLE = ("bundle_id", "control_point", "direction", "driver", "slot_start", "slot_end")
_AT_KIOSK = ("bundle_id", "control_point", "direction", "driver", "lane", "decision", "late")

# The allow-lists: per scope, the event types shown and the data keys each may carry.
SCOPES: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "immigration": {
        "BUNDLED": _BUNDLE,
        "UNBUNDLED": _BUNDLE,
        "ARRIVED": _AT_KIOSK,
        "INSPECTION_OPENED": ("control_point", "lane"),
        "CROSSED": ("bundle_id", "control_point", "lane"),
        "HELD": ("control_point",),
    },
    "airport": {
        "LODGED": ("direction", "control_point"),
        "AMENDED": ("direction", "control_point"),
        "CANCELLED": ("direction", "control_point"),
        "EXPIRED": ("direction", "control_point"),
        "BUNDLED": _BUNDLE,
        "UNBUNDLED": _BUNDLE,
        "ARRIVED": _AT_KIOSK,
        "INSPECTION_OPENED": ("control_point", "lane", "inspection_id"),
        "CROSSED": ("bundle_id", "control_point", "lane"),
        "HELD": ("control_point", "inspection_id"),
        "TRANSHIPMENT_CONFIRMED": ("mode", "first_point", "second_point"),
    },
}
_TRANSHIPMENT_KEYS = ("mode", "airport", "air_waybill", "flight", "elock_id")
_PLAIN = (str, int, float, bool, type(None))

# Per engine: the highest cursor found safe so far (PostgreSQL).
_horizons: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
_horizons_lock = threading.Lock()


def _scope_of(gw: Gateway, actor: Actor) -> str | None:
    """None for officers (everything); the agency's scope otherwise; others are refused."""
    if actor.is_officer:
        return None
    if actor.role != "agency":
        raise GatewayError.one(
            "FORBIDDEN", f"the event feed is for partner agencies and officers, not a {actor.role}"
        )
    with gw.engine.connect() as conn:
        scope = conn.scalar(select(tables.parties.c.scope).where(tables.parties.c.party_id == actor.party_id))
    if scope not in SCOPES:
        raise GatewayError.one("FORBIDDEN", f"agency {actor.party_id} has no scope that the feed serves")
    return str(scope)


def _parse(value: Any, field: str, default: int, low: int, high: int | None, problems: list[Problem]) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        problems.append(
            Problem("INVALID_VALUE", field, f"{field} is a whole number, not {str(value)[:20]!r}")
        )
        return default
    if number < low or (high is not None and number > high):
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        problems.append(Problem("INVALID_VALUE", field, f"{field} must be {bounds}"))
    return number


_WRITERS = (
    "FROM pg_locks WHERE locktype = 'relation' AND mode = 'RowExclusiveLock' "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND relation = to_regclass('events')"
)


def _pg_horizon(gw: Gateway, conn: Connection) -> int:
    """The highest cursor below which no event can still commit (see the module docstring)."""
    key = gw.engine
    top = int(conn.scalar(text("SELECT max(cursor) FROM events")) or 0)
    writers = list(conn.scalars(text(f"SELECT virtualtransaction {_WRITERS}")))
    deadline = time.monotonic() + SETTLE_WAIT
    busy = text(f"SELECT count(*) {_WRITERS} AND virtualtransaction = ANY(:writers)")
    while writers and conn.scalar(busy, {"writers": writers}):
        if time.monotonic() >= deadline:
            with _horizons_lock:
                return min(_horizons.get(key, 0), top)
        time.sleep(0.002)
    with _horizons_lock:
        safe = _horizons[key] = max(_horizons.get(key, 0), top)
    return safe


class _Transhipments:
    """Which consignments carry a transhipment, read once per request."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.known: dict[str, dict[str, Any] | None] = {}

    def load(self, ccrns: set[str]) -> None:
        """Read the records of the consignments not seen yet, in one query; the newest transhipment wins."""
        wanted = sorted(ccrns - set(self.known))
        if not wanted:
            return
        _V = tables.consignment_versions
        rows = self.conn.execute(
            select(_V.c.ccrn, _V.c.record).where(_V.c.ccrn.in_(wanted)).order_by(_V.c.ccrn, _V.c.version)
        )
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(wanted)
        for ccrn, record in rows:
            transhipment = json.loads(record).get("transhipment")
            if isinstance(transhipment, dict):
                found[ccrn] = {k: transhipment[k] for k in _TRANSHIPMENT_KEYS if k in transhipment}
        self.known.update(found)

    def of(self, ccrn: str | None) -> dict[str, Any] | None:
        if ccrn is None:
            return None
        if ccrn not in self.known:
            self.load({ccrn})
        return self.known[ccrn]


def _shown(row: Any, scope: str | None, transhipments: _Transhipments) -> dict[str, Any] | None:
    """The event as the scope may see it, or None when the scope does not see it."""
    try:
        data = json.loads(row.data)
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if scope is not None:
        allowed = SCOPES[scope].get(row.type)
        if allowed is None:
            return None
        extra = None
        if scope == "airport":
            extra = transhipments.of(row.ccrn)
            if extra is None:
                return None
        data = {k: data[k] for k in allowed if k in data and isinstance(data[k], _PLAIN)}
        if extra is not None and row.type in ("LODGED", "AMENDED"):
            data["transhipment"] = extra
    event: dict[str, Any] = {"cursor": int(row.cursor), "type": row.type}
    for key in ("ccrn", "vehicle", "status", "status_version"):
        if getattr(row, key) is not None:
            event[key] = getattr(row, key)
    event["at"] = iso_hk(row.at)
    event["data"] = data
    return event


def read(gw: Gateway, actor: Actor, after: Any = None, limit: Any = None) -> dict[str, Any]:
    """Events after the cursor ``after``, at most ``limit``, as the caller's scope may see them."""
    scope = _scope_of(gw, actor)
    problems: list[Problem] = []
    position = _parse(after, "after", 0, 0, None, problems)
    wanted = _parse(limit, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT, problems)
    if problems:
        raise GatewayError(problems)
    events: list[dict[str, Any]] = []
    with gw.engine.connect() as conn:
        horizon = _pg_horizon(gw, conn) if conn.dialect.name == "postgresql" else None
        transhipments = _Transhipments(conn)
        scanned = 0
        while len(events) < wanted and scanned < MAX_SCAN:
            query = select(_E).where(_E.c.cursor > position)
            if horizon is not None:
                query = query.where(_E.c.cursor <= horizon)
            batch = conn.execute(query.order_by(_E.c.cursor).limit(min(wanted * 2, 500))).all()
            if not batch:
                break
            if scope == "airport":
                transhipments.load({row.ccrn for row in batch if row.ccrn is not None})
            for row in batch:
                scanned += 1
                position = int(row.cursor)
                shown = _shown(row, scope, transhipments)
                if shown is not None:
                    events.append(shown)
                    if len(events) == wanted:
                        break
    return {"events": events, "next_cursor": position}
