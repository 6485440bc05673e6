"""Retention (``[retention]``) and the audit export.

``raw_messages_days``: the body of a raw inbound message older than this is emptied. The row stays,
with its time, party, channel, size, SHA-256 and request id, because consignment versions, EDIFACT
interchanges and declarations point at it and the hash is still the proof of what was received.
``audit_days``: audit rows older than this are deleted; export them first (``roadcargo audit export``).
0, the default, keeps either forever.

:func:`sweep` does one round in short batches, so it never holds long locks; the background worker calls
it (any number of processes may, at once: emptying a body twice or deleting a row already gone is
harmless). ``roadcargo retention sweep`` runs it by hand.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import tables
from gateway.clock import HONG_KONG
from gateway.context import Gateway, iso_hk
from gateway.errors import GatewayError

log = logging.getLogger("roadcargo.retention")
BATCH = 1000
_WATERMARK = "retention_raw_emptied_through"  # the highest message id whose body has been emptied


def sweep(gw: Gateway, batch: int = BATCH) -> dict[str, int]:
    """Apply ``[retention]`` once: the counts of raw message bodies emptied and audit rows deleted."""
    settings = gw.config.retention
    now = gw.now()
    done = {"raw_messages": 0, "audit_rows": 0}
    if settings.raw_messages_days > 0:
        done["raw_messages"] = _empty_raw(gw, now - timedelta(days=settings.raw_messages_days), batch)
    if settings.audit_days > 0:
        done["audit_rows"] = _delete_audit(gw, now - timedelta(days=settings.audit_days), batch)
    if done["raw_messages"] or done["audit_rows"]:
        log.info(
            "retention: %d raw message bodies emptied, %d audit rows deleted",
            done["raw_messages"],
            done["audit_rows"],
        )
    return done


def _watermark(gw: Gateway) -> int:
    with gw.engine.connect() as conn:
        value = conn.scalar(select(tables.settings.c.value).where(tables.settings.c.name == _WATERMARK))
    return int(value) if value else 0


def _set_watermark(gw: Gateway, message_id: int) -> None:
    s = tables.settings
    with gw.engine.begin() as conn:
        changed = conn.execute(update(s).where(s.c.name == _WATERMARK).values(value=str(message_id))).rowcount
    if not changed:
        try:
            with gw.engine.begin() as conn:
                conn.execute(insert(s).values(name=_WATERMARK, value=str(message_id)))
        except IntegrityError:  # another process wrote it first; the next round moves it on
            pass


def _empty_raw(gw: Gateway, cutoff: datetime, batch: int) -> int:
    r = tables.raw_messages
    emptied = 0
    after = _watermark(gw)
    while True:
        with gw.engine.begin() as conn:
            ids = list(
                conn.scalars(
                    select(r.c.message_id)
                    .where(r.c.message_id > after, r.c.received_at < cutoff)
                    .order_by(r.c.message_id)
                    .limit(batch)
                )
            )
            if not ids:
                return emptied
            conn.execute(update(r).where(r.c.message_id.in_(ids)).values(body=b""))
        emptied += len(ids)
        after = ids[-1]
        _set_watermark(gw, after)
        if len(ids) < batch:
            return emptied


def _delete_audit(gw: Gateway, cutoff: datetime, batch: int) -> int:
    a = tables.audit_log
    deleted = 0
    while True:
        with gw.engine.begin() as conn:
            ids = list(
                conn.scalars(select(a.c.audit_id).where(a.c.at < cutoff).order_by(a.c.audit_id).limit(batch))
            )
            if ids:
                conn.execute(delete(a).where(a.c.audit_id.in_(ids)))
        deleted += len(ids)
        if len(ids) < batch:
            return deleted


# -- the audit export ------------------------------------------------------------------------------------


def parse_day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise GatewayError.one(
            "INVALID_VALUE", f"{flag} takes a day as YYYY-MM-DD, not {text!r}", flag
        ) from None


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def audit_rows(gw: Gateway, since: date, until: date) -> Any:
    """The audit rows from the start of ``since`` to the end of ``until`` (Hong Kong days), oldest first,
    as dictionaries; read in batches so that a year of audit never sits in memory."""
    if until < since:
        raise GatewayError.one("INVALID_VALUE", "--until is before --since", "--until")
    start = datetime.combine(since, time(0), HONG_KONG)
    end = datetime.combine(until + timedelta(days=1), time(0), HONG_KONG)
    a = tables.audit_log
    after = 0
    while True:
        with gw.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(a)
                    .where(a.c.at >= start, a.c.at < end, a.c.audit_id > after)
                    .order_by(a.c.audit_id)
                    .limit(BATCH)
                )
                .mappings()
                .all()
            )
        for row in rows:
            yield {
                "audit_id": row["audit_id"],
                "at": iso_hk(row["at"]),
                "actor": row["actor"],
                "channel": row["channel"],
                "action": row["action"],
                "entity": row["entity"],
                "entity_id": row["entity_id"],
                "before": _json(row["before"]),
                "after": _json(row["after"]),
                "request_id": row["request_id"],
            }
        if len(rows) < BATCH:
            return
        after = rows[-1]["audit_id"]


def export_audit(gw: Gateway, since: date, until: date, out: str) -> int:
    """Write the audit rows of a period to ``out`` (``-``: standard output) as JSON lines; the count."""
    if until < since:
        raise GatewayError.one("INVALID_VALUE", "--until is before --since", "--until")
    rows = audit_rows(gw, since, until)
    written = 0
    target = sys.stdout if out == "-" else None
    try:
        handle = target or open(out, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise GatewayError.one("INVALID_VALUE", f"cannot write {out}: {exc.strerror}", "--out") from None
    try:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            written += 1
    finally:
        if target is None:
            handle.close()
    return written
