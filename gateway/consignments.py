"""Lodge, amend, cancel and read consignments (design section 5). One function per business action;
every channel calls these and nothing else."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import tables
from gateway.clock import HONG_KONG
from gateway.context import FILER_ROLES, SYSTEM, Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError
from gateway.identifiers import new_ccrn, parse_ccrn
from gateway.parties import require_active
from gateway.record import CargoRecord, validate_record

LIVE = ("LODGED", "BUNDLED")  # may still be amended, cancelled, bundled
_C = tables.consignments
_V = tables.consignment_versions


@dataclass(frozen=True)
class Outcome:
    """A consignment as its filer sees it, and whether this call changed anything."""

    view: dict[str, Any]
    changed: bool


def _require_filer(actor: Actor) -> None:
    if actor.role not in FILER_ROLES:
        raise GatewayError.one("FORBIDDEN", f"a {actor.role} may not lodge or change cargo information")
    require_active(actor)


def _check_window(gw: Gateway, record: CargoRecord) -> None:
    """Expected crossing no more than the window ahead, and its date not before today (HK time)."""
    start, _end = record.crossing_window()
    now = gw.now()
    days = gw.config.rules.lodgement_window_days
    if start.astimezone(HONG_KONG).date() < now.astimezone(HONG_KONG).date():
        raise GatewayError.one(
            "LODGEMENT_WINDOW",
            f"expected crossing {record.data['expected_crossing']} is in the past",
            "expected_crossing",
        )
    if start > now + timedelta(days=days):
        raise GatewayError.one(
            "LODGEMENT_WINDOW",
            f"expected crossing {record.data['expected_crossing']} is more than {days} days ahead; "
            "lodge it closer to the date",
            "expected_crossing",
        )


def _view(conn: Connection, row: Any) -> dict[str, Any]:
    record = conn.scalar(select(_V.c.record).where(_V.c.ccrn == row.ccrn, _V.c.version == row.version))
    return {
        "ccrn": row.ccrn,
        "version": row.version,
        "status": row.status,
        "status_version": row.status_version,
        "filer": row.filer_id,
        "submitter_reference": row.submitter_reference,
        "lodged_at": iso_hk(row.lodged_at),
        "amended_at": iso_hk(row.amended_at),
        "updated_at": iso_hk(row.updated_at),
        "record": json.loads(record) if record else None,
    }


def _event(conn: Connection, gw: Gateway, kind: str, row: Any, status: str, status_version: int) -> None:
    conn.execute(
        insert(tables.events).values(
            at=gw.now(),
            type=kind,
            ccrn=row.ccrn,
            status=status,
            status_version=status_version,
            data=json.dumps({"direction": row.direction, "control_point": row.control_point}),
        )
    )


def _find_live(conn: Connection, filer: str, reference: str) -> Row[Any] | None:
    return conn.execute(select(_C).where(_C.c.filer_id == filer, _C.c.live_reference == reference)).first()


def lodge(gw: Gateway, actor: Actor, data: Any, raw_message_id: int | None = None) -> Outcome:
    """Lodge cargo information and issue a CCRN. Lodging the same reference with the same content again
    returns the existing CCRN (``changed`` False); with other content it is ``DUPLICATE_REFERENCE``."""
    _require_filer(actor)
    record = validate_record(data, gw.config.control_points)
    _check_window(gw, record)
    assert actor.party_id is not None
    # A unique key can fail for two reasons: another CCRN drew the same digits, or a concurrent lodge of
    # the same reference committed first. Either way the retry sees the committed state and does right.
    for _attempt in range(10):
        try:
            with gw.engine.begin() as conn:
                existing = _find_live(conn, actor.party_id, record.submitter_reference)
                if existing is not None:
                    if existing.content_hash == record.content_hash():
                        return Outcome(_view(conn, existing), changed=False)
                    raise GatewayError.one(
                        "DUPLICATE_REFERENCE",
                        f"reference {record.submitter_reference!r} is already lodged as CCRN {existing.ccrn} "
                        "with other content: amend that consignment, or use a new reference",
                        "submitter_reference",
                    )
                return Outcome(_insert(conn, gw, actor, record, raw_message_id), changed=True)
        except IntegrityError:
            continue
    raise GatewayError.one("UNAVAILABLE", "the store is too busy to lodge now; retry")


def _insert(
    conn: Connection, gw: Gateway, actor: Actor, record: CargoRecord, raw_id: int | None
) -> dict[str, Any]:
    now = gw.now()
    start, end = record.crossing_window()
    ccrn = new_ccrn()
    values = {
        "ccrn": ccrn,
        "filer_id": actor.party_id,
        "submitter_reference": record.submitter_reference,
        "live_reference": record.submitter_reference,
        "direction": record.direction,
        "control_point": record.control_point,
        "status": "LODGED",
        "status_version": 1,
        "version": 1,
        "content_hash": record.content_hash(),
        "crossing_from": start,
        "crossing_to": end,
        "lodged_at": now,
        "amended_at": now,
        "updated_at": now,
    }
    conn.execute(insert(_C).values(**values))
    _insert_version(conn, gw, actor, ccrn, 1, record, raw_id)
    row = conn.execute(select(_C).where(_C.c.ccrn == ccrn)).one()
    _event(conn, gw, "LODGED", row, "LODGED", 1)
    audit(conn, gw, actor, "consignment.lodge", "consignment", ccrn, None, {"version": 1, "status": "LODGED"})
    return _view(conn, row)


def _insert_version(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    ccrn: str,
    version: int,
    record: CargoRecord,
    raw_id: int | None,
) -> None:
    conn.execute(
        insert(_V).values(
            ccrn=ccrn,
            version=version,
            record=record.canonical_json(),
            content_hash=record.content_hash(),
            created_at=gw.now(),
            channel=actor.channel,
            raw_message_id=raw_id,
        )
    )


def _load_for(conn: Connection, actor: Actor, ccrn_text: Any, lock: bool = False) -> Row[Any]:
    """The consignment if the actor may see it. Another filer's CCRN is answered exactly like an
    unknown one, so CCRNs cannot be probed."""
    ccrn = parse_ccrn(ccrn_text)
    query = select(_C).where(_C.c.ccrn == ccrn)
    if not actor.is_officer:
        query = query.where(_C.c.filer_id == actor.party_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise GatewayError.one("NOT_FOUND", f"no consignment {ccrn}", "ccrn")
    return row


def _expiry_due(gw: Gateway, row: Any) -> bool:
    limit = row.crossing_to + timedelta(days=gw.config.rules.consignment_expiry_days)
    return bool(row.status in LIVE and gw.now() >= limit)


def _set_status(conn: Connection, gw: Gateway, actor: Actor, row: Any, status: str, event: str) -> Row[Any]:
    sv = row.status_version + 1
    values: dict[str, Any] = {"status": status, "status_version": sv, "updated_at": gw.now()}
    if status in ("CANCELLED", "EXPIRED"):
        values["live_reference"] = None  # the reference may be used again
    conn.execute(update(_C).where(_C.c.ccrn == row.ccrn).values(**values))
    _event(conn, gw, event, row, status, sv)
    audit(
        conn,
        gw,
        actor,
        f"consignment.{event.lower()}",
        "consignment",
        row.ccrn,
        {"status": row.status, "status_version": row.status_version},
        {"status": status, "status_version": sv},
    )
    return conn.execute(select(_C).where(_C.c.ccrn == row.ccrn)).one()


def _require_changeable(gw: Gateway, row: Any, action: str) -> None:
    if row.status == "EXPIRED" or _expiry_due(gw, row):
        raise GatewayError.one("EXPIRED", f"consignment {row.ccrn} has expired: lodge it again", "ccrn")
    if row.status not in LIVE:
        raise GatewayError.one(
            "INVALID_STATE", f"consignment {row.ccrn} is {row.status}: it can no longer be {action}", "ccrn"
        )


def amend(gw: Gateway, actor: Actor, ccrn: Any, data: Any, raw_message_id: int | None = None) -> Outcome:
    """A new version when the content changes; an amendment that changes nothing creates nothing."""
    _require_filer(actor)
    ccrn = parse_ccrn(ccrn)
    record = validate_record(data, gw.config.control_points)
    with gw.engine.begin() as conn:
        row = _load_for(conn, actor, ccrn, lock=True)
        _require_changeable(gw, row, "amended")
        if row.content_hash == record.content_hash():
            return Outcome(_view(conn, row), changed=False)
        _check_window(gw, record)
        now = gw.now()
        start, end = record.crossing_window()
        version = row.version + 1
        sv = row.status_version + 1
        try:
            with conn.begin_nested():
                conn.execute(
                    update(_C)
                    .where(_C.c.ccrn == ccrn)
                    .values(
                        submitter_reference=record.submitter_reference,
                        live_reference=record.submitter_reference,
                        direction=record.direction,
                        control_point=record.control_point,
                        version=version,
                        status_version=sv,
                        content_hash=record.content_hash(),
                        crossing_from=start,
                        crossing_to=end,
                        amended_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise GatewayError.one(
                "DUPLICATE_REFERENCE",
                f"reference {record.submitter_reference!r} belongs to another live consignment",
                "submitter_reference",
            ) from None
        _insert_version(conn, gw, actor, ccrn, version, record, raw_message_id)
        new = conn.execute(select(_C).where(_C.c.ccrn == ccrn)).one()
        _event(conn, gw, "AMENDED", new, new.status, sv)
        audit(
            conn,
            gw,
            actor,
            "consignment.amend",
            "consignment",
            ccrn,
            {"version": row.version, "record": _record_at(conn, ccrn, row.version)},
            {"version": version, "record": record.data},
        )
        return Outcome(_view(conn, new), changed=True)


def _record_at(conn: Connection, ccrn: str, version: int) -> Any:
    text = conn.scalar(select(_V.c.record).where(_V.c.ccrn == ccrn, _V.c.version == version))
    return json.loads(text) if text else None


def cancel(gw: Gateway, actor: Actor, ccrn: Any) -> Outcome:
    """Cancel from LODGED or BUNDLED. Cancelling a cancelled consignment again changes nothing."""
    _require_filer(actor)
    ccrn = parse_ccrn(ccrn)
    with gw.engine.begin() as conn:
        row = _load_for(conn, actor, ccrn, lock=True)
        if row.status == "CANCELLED":
            return Outcome(_view(conn, row), changed=False)
        _require_changeable(gw, row, "cancelled")
        return Outcome(_view(conn, _set_status(conn, gw, actor, row, "CANCELLED", "CANCELLED")), True)


def get(gw: Gateway, actor: Actor, ccrn: Any) -> dict[str, Any]:
    ccrn = parse_ccrn(ccrn)
    with gw.engine.begin() as conn:
        row = _load_for(conn, actor, ccrn)
        if _expiry_due(gw, row):
            row = _set_status(conn, gw, SYSTEM, row, "EXPIRED", "EXPIRED")
        return _view(conn, row)


def history(gw: Gateway, actor: Actor, ccrn: Any) -> list[dict[str, Any]]:
    """Every version of the record, oldest first."""
    ccrn = parse_ccrn(ccrn)
    with gw.engine.connect() as conn:
        _load_for(conn, actor, ccrn)
        rows = conn.execute(select(_V).where(_V.c.ccrn == ccrn).order_by(_V.c.version)).mappings()
        return [
            {
                "version": r["version"],
                "created_at": iso_hk(r["created_at"]),
                "channel": r["channel"],
                "record": json.loads(r["record"]),
            }
            for r in rows
        ]


def list_consignments(
    gw: Gateway,
    actor: Actor,
    *,
    status: str | None = None,
    reference: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """A filer's own consignments, newest first (officers see all)."""
    query = (
        select(_C).order_by(_C.c.lodged_at.desc(), _C.c.ccrn).limit(min(max(limit, 1), 500)).offset(offset)
    )
    if not actor.is_officer:
        if actor.role not in FILER_ROLES:
            raise GatewayError.one("FORBIDDEN", f"a {actor.role} has no consignments to list")
        query = query.where(_C.c.filer_id == actor.party_id)
    if status:
        query = query.where(_C.c.status == status.upper())
    if reference:
        query = query.where(_C.c.submitter_reference == reference)
    with gw.engine.connect() as conn:
        return [
            {
                "ccrn": r.ccrn,
                "version": r.version,
                "status": r.status,
                "status_version": r.status_version,
                "submitter_reference": r.submitter_reference,
                "direction": r.direction,
                "control_point": r.control_point,
                "lodged_at": iso_hk(r.lodged_at),
            }
            for r in conn.execute(query)
        ]


def expire_due(gw: Gateway, batch: int = 500) -> int:
    """Mark live consignments not crossed in time as EXPIRED; returns how many. Run periodically."""
    cutoff: datetime = gw.now() - timedelta(days=gw.config.rules.consignment_expiry_days)
    done = 0
    while True:
        with gw.engine.begin() as conn:
            rows = conn.execute(
                select(_C)
                .where(_C.c.status.in_(LIVE), _C.c.crossing_to <= cutoff)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                _set_status(conn, gw, SYSTEM, row, "EXPIRED", "EXPIRED")
        done += len(rows)
        if len(rows) < batch:
            return done
