"""Declaration reuse (design sections 5 and 9): after the truck crosses, the cargo record prefills the
import or export trade declaration (``gateway.declaration_document``), declarations are written off
against a ledger of the CCRN's goods items, and consignments not fully declared in time are listed.

The ledger has one row per goods item: packages and gross mass (grams) the record holds, and what has
been declared so far. A declaration locks its rows (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
takes the write lock at ``BEGIN IMMEDIATE``), so concurrent declarations of one consignment are written
off one after the other and never declare more than the record holds. When every package of every item
is declared, the consignment becomes ``DECLARED``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Row, and_, exists, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from gateway import clearance, tables
from gateway.clock import HONG_KONG
from gateway.context import FILER_ROLES, Actor, Gateway, audit, iso_hk
from gateway.declaration_document import KINDS, CrossingFact, build_prefill, validate_declaration
from gateway.errors import GatewayError, Problem
from gateway.identifiers import damm_digit, parse_ccrn
from gateway.parties import require_active
from gateway.record import canonical_json as _canonical_json

CROSSED = ("CROSSED", "DECLARED")  # the statuses a declaration may be lodged in
DUE_SOON = timedelta(hours=48)
_C = tables.consignments
_V = tables.consignment_versions
_G = tables.declaration_grants
_L = tables.declaration_ledger
_D = tables.declarations
_E = tables.events
_X = tables.transhipments


# -- reading consignments a party may declare ---------------------------------------------------------


def _crossing(conn: Connection, ccrn: str) -> CrossingFact | None:
    """When, where and on which vehicle the goods crossed: the latest ``CROSSED`` event, whichever way
    it was recorded (kiosk release, inspection release, contingency)."""
    row = conn.execute(
        select(_E.c.at, _E.c.vehicle, _E.c.data)
        .where(_E.c.ccrn == ccrn, _E.c.type == "CROSSED")
        .order_by(_E.c.cursor.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    data = json.loads(row.data or "{}")
    return CrossingFact(row.at, row.vehicle, data.get("control_point"))


def _granted(party_id: str | None) -> Any:
    return exists().where(_G.c.ccrn == _C.c.ccrn, _G.c.party_id == party_id)


def _readable(actor: Actor) -> Any:
    """The consignments an actor may declare: its own and those granted to it (officers: all)."""
    if actor.is_officer:
        return True
    return or_(_C.c.filer_id == actor.party_id, _granted(actor.party_id))


def _load(conn: Connection, actor: Actor, ccrn: str) -> Row[Any]:
    if not actor.is_officer and actor.role not in FILER_ROLES:
        raise GatewayError.one("FORBIDDEN", f"a {actor.role} has no declarations")
    row = conn.execute(select(_C).where(_C.c.ccrn == ccrn, _readable(actor))).first()
    if row is None:  # unknown and someone else's look the same
        raise GatewayError.one("NOT_FOUND", f"no consignment {ccrn}", "ccrn")
    return row


def _record(conn: Connection, ccrn: str, version: int) -> dict[str, Any]:
    text = conn.scalar(select(_V.c.record).where(_V.c.ccrn == ccrn, _V.c.version == version))
    assert text is not None
    record: dict[str, Any] = json.loads(text)
    return record


def _require_declarable(row: Any, record: Mapping[str, Any]) -> None:
    if record.get("transhipment"):
        raise GatewayError.one(
            "INVALID_STATE",
            f"consignment {row.ccrn} is intermodal transhipment cargo: it needs no trade declaration",
            "ccrn",
        )
    if row.status not in CROSSED:
        raise GatewayError.one(
            "NOT_CROSSED",
            f"consignment {row.ccrn} is {row.status}: a declaration follows the crossing",
            "ccrn",
        )


def _kind_of(row: Any, kind: Any) -> str:
    if kind is None or kind == "":
        return str(row.direction)
    wanted = str(kind).strip().upper()
    if wanted not in KINDS:
        raise GatewayError.one("INVALID_VALUE", f"kind is import or export, not {kind!r}", "kind")
    if wanted != row.direction:
        raise GatewayError.one(
            "INVALID_VALUE",
            f"consignment {row.ccrn} is an {row.direction.lower()}: ask for kind={row.direction.lower()}",
            "kind",
        )
    return wanted


def _declarant(conn: Connection, actor: Actor) -> dict[str, str] | None:
    if actor.party_id is None or actor.role not in FILER_ROLES:
        return None
    name = conn.scalar(select(tables.parties.c.name).where(tables.parties.c.party_id == actor.party_id))
    return {"party_id": actor.party_id, "name": str(name)}


def prefill(gw: Gateway, actor: Actor, ccrn: Any, kind: Any = None) -> dict[str, Any]:
    """``GET /consignments/{ccrn}/declaration``: the declaration prefilled from the latest version of
    the record and its crossing, for the filer, the parties it granted, and officers."""
    number = parse_ccrn(ccrn)
    with gw.engine.connect() as conn:
        row = _load(conn, actor, number)
        record = _record(conn, number, row.version)
        _require_declarable(row, record)
        _kind_of(row, kind)
        return build_prefill(row, record, _crossing(conn, number), _declarant(conn, actor), gw.now())


# -- grants -------------------------------------------------------------------------------------------


def grant(gw: Gateway, actor: Actor, ccrn: Any, party: Any) -> dict[str, Any]:
    """The filer lets another party (its declaration agent) read the declaration and lodge it."""
    number = parse_ccrn(ccrn)
    if actor.role not in FILER_ROLES:
        raise GatewayError.one("FORBIDDEN", "only the filer of a consignment grants access to it")
    require_active(actor)
    if not isinstance(party, str) or not party.strip():
        raise GatewayError.one("MISSING_FIELD", "the party id of your declaration agent", "party")
    party = party.strip()
    with gw.engine.begin() as conn:
        row = conn.execute(select(_C).where(_C.c.ccrn == number, _C.c.filer_id == actor.party_id)).first()
        if row is None:
            raise GatewayError.one("NOT_FOUND", f"no consignment {number}", "ccrn")
        agent = conn.execute(
            select(tables.parties.c.role, tables.parties.c.status).where(tables.parties.c.party_id == party)
        ).first()
        if agent is None:
            raise GatewayError.one("NOT_FOUND", f"no party {party}", "party")
        if agent.role not in FILER_ROLES:
            raise GatewayError.one(
                "INVALID_VALUE",
                f"party {party} is a {agent.role}: declaration agents are shippers, forwarders or "
                "service providers",
                "party",
            )
        known = conn.scalar(select(_G.c.granted_at).where(_G.c.ccrn == number, _G.c.party_id == party))
        created = known is None and party != actor.party_id
        if created:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(_G).values(
                            ccrn=number, party_id=party, granted_by=actor.party_id, granted_at=gw.now()
                        )
                    )
            except IntegrityError:
                created = False  # granted at the same moment by another request
            else:
                audit(conn, gw, actor, "declaration.grant", "consignment", number, None, {"party": party})
    return {"ccrn": number, "party": party, "granted": True, "created": created}


# -- lodging against the ledger ----------------------------------------------------------------------


def _grams(kg: Any) -> int:
    return int((Decimal(str(kg)) * 1000).to_integral_value())


def _kg(grams: int | None) -> float | int | None:
    if grams is None:
        return None
    value = Decimal(grams) / 1000
    return int(value) if value == value.to_integral_value() else float(value)


def new_declaration_number(today: date) -> str:
    """``TD`` + the Hong Kong date (YYMMDD) + 6 random digits + a Damm check digit: 15 characters."""
    digits = today.strftime("%y%m%d") + f"{secrets.randbelow(1_000_000):06d}"
    return f"TD{digits}{damm_digit(digits)}"


def _ensure_ledger(conn: Connection, ccrn: str, record: Mapping[str, Any]) -> None:
    """The ledger rows of a consignment, made from its record at the first declaration."""
    if conn.scalar(select(func.count()).select_from(_L).where(_L.c.ccrn == ccrn)):
        return
    rows = [
        {
            "ccrn": ccrn,
            "item": n,
            "packages": item["package_count"],
            "packages_declared": 0,
            "mass_g": None if item.get("gross_mass_kg") is None else _grams(item["gross_mass_kg"]),
            "mass_declared_g": 0,
        }
        for n, item in enumerate(record["items"], start=1)
    ]
    try:
        with conn.begin_nested():
            conn.execute(insert(_L), rows)
    except IntegrityError:
        pass  # a concurrent first declaration made them: the lock below waits for it


def _ledger_view(rows: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "item": r.item,
            "packages": r.packages,
            "packages_declared": r.packages_declared,
            "packages_remaining": r.packages - r.packages_declared,
            "gross_mass_kg": _kg(r.mass_g),
            "gross_mass_declared_kg": _kg(r.mass_declared_g),
        }
        for r in rows
    ]


def _write_off(
    rows: list[Any], lines: list[dict[str, Any]]
) -> tuple[dict[int, tuple[int, int]], list[Problem]]:
    """What each item gets written off, and every over-declaration."""
    ledger = {r.item: r for r in rows}
    wanted: dict[int, tuple[int, int]] = {}
    problems = []
    for i, line in enumerate(lines):
        n = line["item"]
        if n not in ledger:
            problems.append(
                Problem(
                    "INVALID_VALUE",
                    f"lines[{i}].item",
                    f"the record has {len(ledger)} goods items, no item {n}",
                )
            )
            continue
        packages, grams = wanted.get(n, (0, 0))
        wanted[n] = (packages + line["packages"]["count"], grams + _grams(line["gross_mass_kg"]))
    for n, (packages, grams) in sorted(wanted.items()):
        r = ledger[n]
        first = next(i for i, line in enumerate(lines) if line["item"] == n)
        left = r.packages - r.packages_declared
        if packages > left:
            problems.append(
                Problem(
                    "OVER_DECLARATION",
                    f"lines[{first}].packages.count",
                    f"item {n}: {packages} packages declared now, but only {left} of {r.packages} remain "
                    f"({r.packages_declared} declared before)",
                )
            )
        if r.mass_g is not None and grams > r.mass_g - r.mass_declared_g:
            problems.append(
                Problem(
                    "OVER_DECLARATION",
                    f"lines[{first}].gross_mass_kg",
                    f"item {n}: {_kg(grams)} kg declared now, but only {_kg(r.mass_g - r.mass_declared_g)} "
                    f"of {_kg(r.mass_g)} kg remain",
                )
            )
    return wanted, problems


def lodge(gw: Gateway, actor: Actor, data: Any, raw_message_id: int | None = None) -> dict[str, Any]:
    """``POST /declarations``: validate a completed declaration, write it off against the ledger of its
    CCRN's items and give it a declaration number; the consignment is DECLARED once fully written off."""
    if actor.role not in FILER_ROLES:
        raise GatewayError.one("FORBIDDEN", f"a {actor.role} does not lodge trade declarations")
    require_active(actor)
    doc = validate_declaration(data, gw.config.control_points)
    if doc["declarant"]["party_id"] != actor.party_id:
        raise GatewayError.one(
            "INVALID_VALUE",
            "the declarant is the party lodging: give your own party id",
            "declarant.party_id",
        )
    for attempt in range(5):
        try:
            with gw.engine.begin() as conn:
                return _lodge_in(conn, gw, actor, doc, raw_message_id)
        except IntegrityError:
            if attempt == 4:  # a declaration number drawn twice: draw again
                raise
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) not in ("40P01", "40001") or attempt == 4:
                raise
    raise AssertionError("unreachable")


def _lodge_in(
    conn: Connection, gw: Gateway, actor: Actor, doc: dict[str, Any], raw_id: int | None
) -> dict[str, Any]:
    ccrn = doc["ccrn"]
    row = _load(conn, actor, ccrn)
    record = _record(conn, ccrn, row.version)
    if record.get("transhipment") or row.status not in CROSSED:
        _require_declarable(row, record)
    _kind_of(row, doc["kind"])
    _ensure_ledger(conn, ccrn, record)
    # The lock every declaration of this consignment queues on: rows in item order, so two
    # declarations never hold them crosswise.
    rows = list(conn.execute(select(_L).where(_L.c.ccrn == ccrn).order_by(_L.c.item).with_for_update()))
    wanted, problems = _write_off(rows, doc["lines"])
    if problems:
        raise GatewayError(problems)
    now = gw.now()
    for n, (packages, grams) in wanted.items():
        conn.execute(
            update(_L)
            .where(_L.c.ccrn == ccrn, _L.c.item == n)
            .values(
                packages_declared=_L.c.packages_declared + packages,
                mass_declared_g=_L.c.mass_declared_g + grams,
            )
        )
    number = new_declaration_number(now.astimezone(HONG_KONG).date())
    packages_total = sum(p for p, _g in wanted.values())
    grams_total = sum(g for _p, g in wanted.values())
    with conn.begin_nested():
        conn.execute(
            insert(_D).values(
                declaration_number=number,
                ccrn=ccrn,
                kind=doc["kind"],
                declarant_id=actor.party_id,
                channel=actor.channel,
                lodged_at=now,
                packages=packages_total,
                mass_g=grams_total,
                document=_canonical_json(doc),
                raw_message_id=raw_id,
            )
        )
    audit(
        conn,
        gw,
        actor,
        "declaration.lodge",
        "declaration",
        number,
        None,
        {"ccrn": ccrn, "packages": packages_total, "gross_mass_kg": _kg(grams_total)},
    )
    after = list(conn.execute(select(_L).where(_L.c.ccrn == ccrn).order_by(_L.c.item)))
    complete = all(r.packages_declared == r.packages for r in after)
    status = row.status
    if complete and row.status != "DECLARED":
        clearance.move(
            conn,
            gw,
            actor,
            [ccrn],
            "DECLARED",
            "DECLARED",
            {"declaration_number": number, "kind": doc["kind"]},
        )
        status = "DECLARED"
    return {
        "declaration_number": number,
        "ccrn": ccrn,
        "kind": doc["kind"],
        "lodged_at": iso_hk(now),
        "packages": packages_total,
        "gross_mass_kg": _kg(grams_total),
        "fully_declared": complete,
        "status": status,
        "ledger": _ledger_view(after),
    }


def declarations_of(gw: Gateway, actor: Actor, ccrn: Any) -> dict[str, Any]:
    """The declarations lodged against a consignment and its ledger."""
    number = parse_ccrn(ccrn)
    with gw.engine.connect() as conn:
        row = _load(conn, actor, number)
        rows: list[Any] = list(conn.execute(select(_L).where(_L.c.ccrn == number).order_by(_L.c.item)))
        if not rows:
            record = _record(conn, number, row.version)
            rows = [
                _Pending(n, item["package_count"], item.get("gross_mass_kg"))
                for n, item in enumerate(record["items"], start=1)
            ]
        lodged = conn.execute(
            select(_D).where(_D.c.ccrn == number).order_by(_D.c.lodged_at, _D.c.declaration_number)
        )
        return {
            "ccrn": number,
            "status": row.status,
            "declarations": [
                {
                    "declaration_number": d.declaration_number,
                    "kind": d.kind,
                    "declarant": d.declarant_id,
                    "lodged_at": iso_hk(d.lodged_at),
                    "packages": d.packages,
                    "gross_mass_kg": _kg(d.mass_g),
                }
                for d in lodged
            ],
            "ledger": _ledger_view(rows),
        }


class _Pending:
    """A ledger row not made yet: nothing declared."""

    def __init__(self, item: int, packages: int, mass_kg: Any) -> None:
        self.item = item
        self.packages = packages
        self.packages_declared = 0
        self.mass_g = None if mass_kg is None else _grams(mass_kg)
        self.mass_declared_g = 0


def get_declaration(gw: Gateway, actor: Actor, number: Any) -> dict[str, Any]:
    """A lodged declaration as it was lodged, for its declarant, the consignment's filer and officers."""
    text = str(number or "").strip().upper()
    with gw.engine.connect() as conn:
        found = conn.execute(select(_D).where(_D.c.declaration_number == text)).first()
        if found is None or not (
            actor.is_officer
            or found.declarant_id == actor.party_id
            or conn.scalar(select(_C.c.filer_id).where(_C.c.ccrn == found.ccrn)) == actor.party_id
        ):
            raise GatewayError.one("NOT_FOUND", f"no declaration {text}", "declaration_number")
    return {
        "declaration_number": found.declaration_number,
        "ccrn": found.ccrn,
        "kind": found.kind,
        "declarant": found.declarant_id,
        "lodged_at": iso_hk(found.lodged_at),
        "document": json.loads(found.document),
    }


# -- deadlines ----------------------------------------------------------------------------------------


def _crossed_rows(conn: Connection, actor: Actor, where: Any) -> Iterator[Any]:
    """Crossed consignments the actor may see, not transhipment cargo, with their crossing time."""
    crossed_at = func.max(_E.c.at).label("crossed_at")
    query = (
        select(_C.c.ccrn, _C.c.filer_id, _C.c.direction, _C.c.version, _C.c.status, crossed_at)
        .join(_E, and_(_E.c.ccrn == _C.c.ccrn, _E.c.type == "CROSSED"))
        .where(_readable(actor), ~exists().where(_X.c.ccrn == _C.c.ccrn))
        .group_by(_C.c.ccrn, _C.c.filer_id, _C.c.direction, _C.c.version, _C.c.status)
    )
    if where is not None:
        query = query.having(where(crossed_at))
    for row in conn.execute(query.order_by(crossed_at, _C.c.ccrn)):
        if not _record(conn, row.ccrn, row.version).get("transhipment"):
            yield row


def _progress(conn: Connection, ccrn: str, version: int) -> tuple[int, int]:
    declared, total = conn.execute(
        select(
            func.coalesce(func.sum(_L.c.packages_declared), 0), func.coalesce(func.sum(_L.c.packages), 0)
        ).where(_L.c.ccrn == ccrn)
    ).one()
    if not total:
        total = sum(int(i["package_count"]) for i in _record(conn, ccrn, version)["items"])
    return int(declared), int(total)


def overdue(gw: Gateway, actor: Actor) -> dict[str, Any]:
    """``GET /declarations/overdue``: crossed consignments not fully declared within
    ``declaration_deadline_days`` of crossing, and those due within 48 hours. Officers see all,
    filers their own (and those granted to them)."""
    if not actor.is_officer and actor.role not in FILER_ROLES:
        raise GatewayError.one("FORBIDDEN", f"a {actor.role} has no declarations to follow")
    now = gw.now()
    deadline = timedelta(days=gw.config.rules.declaration_deadline_days)
    late: list[dict[str, Any]] = []
    soon: list[dict[str, Any]] = []
    with gw.engine.connect() as conn:
        rows = _crossed_rows(conn, actor, lambda at: at <= now - deadline + DUE_SOON)
        for row in rows:
            if row.status != "CROSSED":
                continue
            due = row.crossed_at + deadline
            declared, total = _progress(conn, row.ccrn, row.version)
            entry = {
                "ccrn": row.ccrn,
                "filer": row.filer_id,
                "kind": row.direction,
                "crossed_at": iso_hk(row.crossed_at),
                "due_at": iso_hk(due),
                "packages": total,
                "packages_declared": declared,
            }
            (late if now >= due else soon).append(entry)
    return {
        "as_of": iso_hk(now),
        "deadline_days": gw.config.rules.declaration_deadline_days,
        "overdue": late,
        "due_soon": soon,
    }


def prefilled_since(
    gw: Gateway, actor: Actor, since: datetime, include_declared: bool = False
) -> Iterator[dict[str, Any]]:
    """The prefilled declarations of consignments that crossed at or after ``since`` and that the party
    may declare (``roadcargo declarations export``), oldest crossing first."""
    with gw.engine.connect() as conn:
        declarant = _declarant(conn, actor)
        ccrns = [
            (r.ccrn, r.status)
            for r in _crossed_rows(conn, actor, lambda at: at >= since)
            if r.status == "CROSSED" or (include_declared and r.status == "DECLARED")
        ]
    for ccrn, _status in ccrns:
        with gw.engine.connect() as conn:
            row = conn.execute(select(_C).where(_C.c.ccrn == ccrn)).one()
            record = _record(conn, ccrn, row.version)
            yield build_prefill(row, record, _crossing(conn, ccrn), declarant, gw.now())


def count_since(gw: Gateway, actor: Actor, since: datetime, include_declared: bool = False) -> int:
    with gw.engine.connect() as conn:
        return sum(
            1
            for r in _crossed_rows(conn, actor, lambda at: at >= since)
            if r.status == "CROSSED" or (include_declared and r.status == "DECLARED")
        )
