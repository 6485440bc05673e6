"""Lodge, amend, cancel and read consignments (design section 5). One function per business action;
every channel calls these and nothing else."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway import bundles, risk, tables
from gateway.clock import HONG_KONG
from gateway.context import FILER_ROLES, SYSTEM, Actor, Gateway, audit, audit_values, iso_hk
from gateway.errors import GatewayError, Unavailable
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


def require_filer(actor: Actor) -> None:
    """Only shippers, forwarders and service providers file cargo information, and only while active."""
    if actor.role not in FILER_ROLES:
        raise GatewayError.one("FORBIDDEN", f"a {actor.role} may not lodge or change cargo information")
    require_active(actor)


def _check_window(gw: Gateway, record: CargoRecord, now: datetime | None = None) -> None:
    """Expected crossing no more than the window ahead, and its date not before today (HK time)."""
    start, _end = record.crossing_window()
    now = gw.now() if now is None else now
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


def _view(conn: Connection, row: Any, record: Any = None) -> dict[str, Any]:
    if record is None:
        record = _record_at(conn, row.ccrn, row.version)
    bundle = bundles.summary_for_filer(conn, row.bundle_id) if row.bundle_id else None
    return _shape(row, record, iso_hk(row.lodged_at), iso_hk(row.amended_at), iso_hk(row.updated_at), bundle)


def _shape(
    row: Any, record: Any, lodged: str | None, amended: str | None, updated: str | None, bundle: Any
) -> dict[str, Any]:
    """A consignment as its filer sees it."""
    return {
        "ccrn": row.ccrn,
        "version": row.version,
        "status": row.status,
        "status_version": row.status_version,
        "filer": row.filer_id,
        "submitter_reference": row.submitter_reference,
        "lodged_at": lodged,
        "amended_at": amended,
        "updated_at": updated,
        "bundle": bundle,
        "record": record,
    }


def _event_values(gw: Gateway, kind: str, row: Any, status: str, status_version: int) -> dict[str, Any]:
    return {
        "at": gw.now(),
        "type": kind,
        "ccrn": row.ccrn,
        "vehicle": None,
        "status": status,
        "status_version": status_version,
        "data": json.dumps({"direction": row.direction, "control_point": row.control_point}),
    }


def _event(conn: Connection, gw: Gateway, kind: str, row: Any, status: str, status_version: int) -> None:
    conn.execute(insert(tables.events).values(_event_values(gw, kind, row, status, status_version)))


def _find_live(conn: Connection, filer: str, reference: str) -> Row[Any] | None:
    return conn.execute(select(_C).where(_C.c.filer_id == filer, _C.c.live_reference == reference)).first()


@dataclass(frozen=True)
class Submission:
    """One business action of a batch, as a channel read it: ``lodge`` and ``amend`` carry a record in
    its JSON shape, ``amend`` and ``cancel`` the CCRN it concerns."""

    action: str
    record: Any = None
    ccrn: Any = None


def lodge(gw: Gateway, actor: Actor, data: Any, raw_message_id: int | None = None) -> Outcome:
    """Lodge cargo information and issue a CCRN. Lodging the same reference with the same content again
    returns the existing CCRN (``changed`` False); with other content it is ``DUPLICATE_REFERENCE``."""
    return _one(gw, actor, Submission("lodge", record=data), raw_message_id)


def amend(gw: Gateway, actor: Actor, ccrn: Any, data: Any, raw_message_id: int | None = None) -> Outcome:
    """A new version when the content changes; an amendment that changes nothing creates nothing."""
    return _one(gw, actor, Submission("amend", record=data, ccrn=ccrn), raw_message_id)


def cancel(gw: Gateway, actor: Actor, ccrn: Any, raw_message_id: int | None = None) -> Outcome:
    """Cancel from LODGED or BUNDLED. Cancelling a cancelled consignment again changes nothing."""
    return _one(gw, actor, Submission("cancel", ccrn=ccrn), raw_message_id)


def _one(gw: Gateway, actor: Actor, submission: Submission, raw_message_id: int | None) -> Outcome:
    (result,) = submit(gw, actor, [submission], raw_message_id)
    if isinstance(result, GatewayError):
        raise result
    return result


def submit(
    gw: Gateway, actor: Actor, submissions: Sequence[Submission], raw_message_id: int | None = None
) -> list[Outcome | GatewayError]:
    """Carry out a batch in one transaction, each action in a savepoint of its own, so that one refused
    consignment never stops the others. Returns, in order, each action's outcome or its errors.

    Batch channels (EDIFACT, XML, SFTP) call this with a few hundred actions at a time: one commit per
    batch is what makes bulk ingest fast, and a crash loses at most the batch not yet committed. The
    lodgements of a batch go first, all together (one query for known references, one multi-row insert
    per table, one profiling run); should that meet a unique key (a CCRN drawn twice, a reference lodged
    concurrently), the transaction is rolled back and the batch is carried out one action at a time.
    """
    require_filer(actor)
    now = gw.now()
    prepared: list[tuple[Submission, CargoRecord | None, str | None] | GatewayError] = []
    for sub in submissions:
        try:
            prepared.append(_prepare(gw, sub, now))
        except GatewayError as exc:
            prepared.append(exc)
    lodges = [
        (i, item[1])
        for i, item in enumerate(prepared)
        if not isinstance(item, GatewayError) and item[0].action == "lodge" and item[1] is not None
    ]
    bulk = bool(lodges)
    deadlocks = 0
    while True:
        try:
            with gw.engine.begin() as conn:
                results: list[Outcome | GatewayError | None] = [
                    item if isinstance(item, GatewayError) else None for item in prepared
                ]
                if bulk:
                    try:
                        _bulk_lodge(conn, gw, actor, lodges, results, raw_message_id)
                    except IntegrityError as exc:
                        # Nothing but the bulk lodgement ran in this transaction yet: roll it back
                        # and go one at a time (with a savepoint and retries each).
                        raise _OneByOne from exc
                for i, item in enumerate(prepared):
                    if results[i] is None and not isinstance(item, GatewayError):
                        results[i] = _apply(conn, gw, actor, *item, raw_message_id)
                return [r for r in results if r is not None]
        except _OneByOne:
            bulk = False
        except DBAPIError as exc:
            # PostgreSQL may pick this batch as a deadlock victim against another batch: nothing of it
            # was committed, so it is simply run again.
            deadlocks += 1
            if getattr(exc.orig, "sqlstate", None) not in ("40P01", "40001") or deadlocks == 3:
                raise


class _OneByOne(Exception):
    """The bulk lodgement of a batch met a unique key: roll back, then one action at a time."""


_KNOWN_REFERENCES = select(_C).where(
    _C.c.filer_id == bindparam("filer"), _C.c.live_reference.in_(bindparam("refs", expanding=True))
)
_INSERT_CONSIGNMENTS = insert(_C)
_INSERT_VERSIONS = insert(_V)
_INSERT_EVENTS = insert(tables.events)
_INSERT_AUDIT = insert(tables.audit_log)


def _bulk_lodge(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    lodges: list[tuple[int, CargoRecord]],
    results: list[Outcome | GatewayError | None],
    raw_id: int | None,
) -> None:
    """Lodge many records with one query for known references and one multi-row insert per table."""
    if not lodges:
        return
    filer = actor.party_id
    assert filer is not None
    refs = sorted({record.submitter_reference for _i, record in lodges})
    existing: dict[str, Any] = {}
    for start in range(0, len(refs), 500):
        for row in conn.execute(_KNOWN_REFERENCES, {"filer": filer, "refs": refs[start : start + 500]}):
            existing[row.live_reference] = row
    now = gw.now()
    shown_now = iso_hk(now)
    fresh: dict[str, tuple[str, dict[str, Any], CargoRecord]] = {}  # reference -> lodged in this batch
    drawn: set[str] = set()
    rows: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    # What every row of the batch shares, worked out once.
    audit_row = audit_values(
        gw, actor, "consignment.lodge", "consignment", "", None, {"version": 1, "status": "LODGED"}
    )
    event_row = {"at": now, "type": "LODGED", "vehicle": None, "status": "LODGED", "status_version": 1}
    event_data: dict[tuple[str, str | None], str] = {}
    for i, record in lodges:
        ref = record.submitter_reference
        digest = record.content_hash()
        if ref in existing:
            row = existing[ref]
            results[i] = (
                Outcome(_view(conn, row), changed=False)
                if row.content_hash == digest
                else _duplicate_reference(record, row.ccrn)
            )
            continue
        if ref in fresh:
            ccrn, values, first = fresh[ref]
            results[i] = (
                Outcome(_view(conn, _RowView(values), first.data), changed=False)
                if values["content_hash"] == digest
                else _duplicate_reference(record, ccrn)
            )
            continue
        start_at, end_at = record.crossing_window()
        ccrn = new_ccrn()
        while ccrn in drawn:
            ccrn = new_ccrn()
        drawn.add(ccrn)
        direction, control_point = record.direction, record.control_point
        values = {
            "ccrn": ccrn,
            "filer_id": filer,
            "submitter_reference": ref,
            "live_reference": ref,
            "direction": direction,
            "control_point": control_point,
            "status": "LODGED",
            "status_version": 1,
            "version": 1,
            "content_hash": digest,
            "crossing_from": start_at,
            "crossing_to": end_at,
            "lodged_at": now,
            "amended_at": now,
            "updated_at": now,
            "bundle_id": None,
        }
        fresh[ref] = (ccrn, values, record)
        rows.append(values)
        versions.append(
            {
                "ccrn": ccrn,
                "version": 1,
                "record": record.canonical_json(),
                "content_hash": digest,
                "created_at": now,
                "channel": actor.channel,
                "raw_message_id": raw_id,
            }
        )
        data = event_data.get((direction, control_point))
        if data is None:
            data = event_data[(direction, control_point)] = json.dumps(
                {"direction": direction, "control_point": control_point}
            )
        events.append({**event_row, "ccrn": ccrn, "data": data})
        audits.append({**audit_row, "entity_id": ccrn})
        results[i] = Outcome(
            _shape(_RowView(values), record.data, shown_now, shown_now, shown_now, None), changed=True
        )
    if rows:
        conn.execute(_INSERT_CONSIGNMENTS, rows)
        conn.execute(_INSERT_VERSIONS, versions)
        conn.execute(_INSERT_EVENTS, events)
        conn.execute(_INSERT_AUDIT, audits)
        risk.profile_lodged(conn, gw, filer, [(c, r.data) for c, _v, r in fresh.values()])


def _duplicate_reference(record: CargoRecord, ccrn: str) -> GatewayError:
    return GatewayError.one(
        "DUPLICATE_REFERENCE",
        f"reference {record.submitter_reference!r} is already lodged as CCRN {ccrn} "
        "with other content: amend that consignment, or use a new reference",
        "submitter_reference",
    )


def _prepare(
    gw: Gateway, sub: Submission, now: datetime
) -> tuple[Submission, CargoRecord | None, str | None]:
    """Everything that needs no database: the CCRN's check digit first, then the record's rules."""
    if sub.action not in ("lodge", "amend", "cancel"):
        raise GatewayError.one("INVALID_VALUE", f"unknown action {sub.action!r}", "action")
    ccrn = None if sub.action == "lodge" else parse_ccrn(sub.ccrn)
    record = None if sub.action == "cancel" else validate_record(sub.record, gw.config.control_points)
    if sub.action == "lodge":
        assert record is not None
        _check_window(gw, record, now)
    return sub, record, ccrn


def _apply(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    sub: Submission,
    record: CargoRecord | None,
    ccrn: str | None,
    raw_id: int | None,
) -> Outcome | GatewayError:
    # A unique key can fail for two reasons: another CCRN drew the same digits, or a concurrent lodge of
    # the same reference committed first. Either way the retry sees the committed state and does right.
    for _attempt in range(10):
        try:
            with conn.begin_nested():
                if sub.action == "lodge":
                    assert record is not None
                    return _lodge_in(conn, gw, actor, record, raw_id)
                assert ccrn is not None
                if sub.action == "amend":
                    assert record is not None
                    return _amend_in(conn, gw, actor, ccrn, record, raw_id)
                return _cancel_in(conn, gw, actor, ccrn)
        except GatewayError as exc:
            return exc
        except IntegrityError:
            if sub.action == "amend":
                assert record is not None
                return GatewayError.one(
                    "DUPLICATE_REFERENCE",
                    f"reference {record.submitter_reference!r} belongs to another live consignment",
                    "submitter_reference",
                )
            continue
    return Unavailable("the store is too busy to lodge now; nothing was accepted, retry", 1)


def _lodge_in(
    conn: Connection, gw: Gateway, actor: Actor, record: CargoRecord, raw_id: int | None
) -> Outcome:
    assert actor.party_id is not None
    existing = _find_live(conn, actor.party_id, record.submitter_reference)
    if existing is not None:
        if existing.content_hash == record.content_hash():
            return Outcome(_view(conn, existing), changed=False)
        raise _duplicate_reference(record, existing.ccrn)
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
        "bundle_id": None,
    }
    conn.execute(insert(_C).values(**values))
    _insert_version(conn, gw, actor, ccrn, 1, record, raw_id)
    row = _RowView(values)
    _event(conn, gw, "LODGED", row, "LODGED", 1)
    audit(conn, gw, actor, "consignment.lodge", "consignment", ccrn, None, {"version": 1, "status": "LODGED"})
    risk.profile_lodged(conn, gw, actor.party_id, [(ccrn, record.data)])
    return Outcome(_view(conn, row, record.data), changed=True)


class _RowView:
    """Column values as attributes, so a row just written need not be read back."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # for the type checker: every column is an attribute
        raise AttributeError(name)


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
    row = conn.execute(query).first()
    if row is not None and lock:
        if row.bundle_id is not None:  # its bundle's row first (bundles.lock); a consignment bundled
            bundles.lock(conn, row.bundle_id)  # between these two reads locks its bundle after itself
        row = conn.execute(query.with_for_update()).first()
    if row is None:
        raise GatewayError.one("NOT_FOUND", f"no consignment {ccrn}", "ccrn")
    return row


def expiry_due(gw: Gateway, row: Any) -> bool:
    """Not crossed ``consignment_expiry_days`` after the end of its expected crossing."""
    limit = row.crossing_to + timedelta(days=gw.config.rules.consignment_expiry_days)
    return bool(row.status in LIVE and gw.now() >= limit)


def _set_status(conn: Connection, gw: Gateway, actor: Actor, row: Any, status: str, event: str) -> Row[Any]:
    sv = row.status_version + 1
    values: dict[str, Any] = {"status": status, "status_version": sv, "updated_at": gw.now()}
    if status in ("CANCELLED", "EXPIRED"):
        values["live_reference"] = None  # the reference may be used again
        bundles.on_leaving(conn, gw, actor, row)
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
    if row.status == "EXPIRED" or expiry_due(gw, row):
        raise GatewayError.one("EXPIRED", f"consignment {row.ccrn} has expired: lodge it again", "ccrn")
    if row.status not in LIVE:
        raise GatewayError.one(
            "INVALID_STATE", f"consignment {row.ccrn} is {row.status}: it can no longer be {action}", "ccrn"
        )


def _amend_in(
    conn: Connection, gw: Gateway, actor: Actor, ccrn: str, record: CargoRecord, raw_id: int | None
) -> Outcome:
    row = _load_for(conn, actor, ccrn, lock=True)
    _require_changeable(gw, row, "amended")
    if row.content_hash == record.content_hash():
        return Outcome(_view(conn, row), changed=False)
    _check_window(gw, record)
    bundles.on_amended(conn, gw, row, record)
    now = gw.now()
    start, end = record.crossing_window()
    version = row.version + 1
    sv = row.status_version + 1
    changes = {
        "submitter_reference": record.submitter_reference,
        "live_reference": record.submitter_reference,
        "direction": record.direction,
        "control_point": record.control_point,
        "version": version,
        "status_version": sv,
        "content_hash": record.content_hash(),
        "crossing_from": start,
        "crossing_to": end,
        "amended_at": now,
        "updated_at": now,
    }
    conn.execute(update(_C).where(_C.c.ccrn == ccrn).values(**changes))
    _insert_version(conn, gw, actor, ccrn, version, record, raw_id)
    risk.reprofile(conn, gw, [ccrn], "AMEND")
    new = _RowView({**row._asdict(), **changes})
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
    return Outcome(_view(conn, new, record.data), changed=True)


def _cancel_in(conn: Connection, gw: Gateway, actor: Actor, ccrn: str) -> Outcome:
    row = _load_for(conn, actor, ccrn, lock=True)
    if row.status == "CANCELLED":
        return Outcome(_view(conn, row), changed=False)
    _require_changeable(gw, row, "cancelled")
    return Outcome(_view(conn, _set_status(conn, gw, actor, row, "CANCELLED", "CANCELLED")), True)


def _record_at(conn: Connection, ccrn: str, version: int) -> Any:
    text = conn.scalar(select(_V.c.record).where(_V.c.ccrn == ccrn, _V.c.version == version))
    return json.loads(text) if text else None


def get(gw: Gateway, actor: Actor, ccrn: Any) -> dict[str, Any]:
    ccrn = parse_ccrn(ccrn)
    with gw.engine.begin() as conn:
        row = _load_for(conn, actor, ccrn)
        if expiry_due(gw, row):
            # Expire under the row lock, re-checked: the sweep (or another reader) may have expired it
            # between the read and now, and a second expiry would repeat its event and status_version.
            row = _load_for(conn, actor, ccrn, lock=True)
            if expiry_due(gw, row):
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
    due = (_C.c.status.in_(LIVE), _C.c.crossing_to <= cutoff)
    done = 0
    while True:
        with gw.engine.begin() as conn:
            # Bundles' rows before their consignments' (bundles.lock); rows another transaction holds
            # (a kiosk deciding on the truck, another worker) are left for the next round.
            seen = conn.execute(select(_C.c.ccrn, _C.c.bundle_id).where(*due).limit(batch)).all()
            if not seen:
                return done
            held = bundles.lock_free(conn, sorted({r.bundle_id for r in seen if r.bundle_id is not None}))
            rows = conn.execute(
                select(_C)
                .where(
                    _C.c.ccrn.in_([r.ccrn for r in seen]),
                    *due,
                    _C.c.bundle_id.is_(None) | _C.c.bundle_id.in_(held),
                )
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                _set_status(conn, gw, SYSTEM, row, "EXPIRED", "EXPIRED")
        done += len(rows)
        if len(rows) < batch:
            return done
