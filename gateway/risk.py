"""Risk profiling and targeting (design section 7).

Officers keep risk profiles (conditions with a weight) and targets (a CCRN, vehicle or party marked for
inspection, or released from a profile's selection). Every consignment is profiled when lodged, amended
and bundled, and again at the kiosk: its score is the sum of the weights of the profiles that hit, and it
is selected when a target says so, when the score reaches ``[risk] threshold``, or when its random draw
falls under ``[risk] random_rate``. The draw is ``HMAC-SHA256(secret, ccrn + ":" + version)`` read as a
number in [0, 1): the same in every process sharing the database, replayable by an officer who holds the
secret and unpredictable to anyone else.

Nothing here is ever shown to anyone but officers (no tipping off).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, insert, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from gateway import tables
from gateway.context import Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError, Problem
from gateway.identifiers import ccrn_problem, normalise_vrn, vrn_problem
from gateway.record import RECORD, ListOf, Obj

OPERATORS = ("prefix", "in", "contains_any", "lt", "gt", "eq")
DERIVED = (
    "value_per_kg",
    "first_time_filer",
    "hours_from_amendment_to_crossing",
    "vehicle",
    "offences_last_90_days",
)
TARGET_KINDS = ("CCRN", "VEHICLE", "PARTY")
TARGET_ACTIONS = ("INSPECT", "RELEASE")
LIVE = ("LODGED", "BUNDLED")
OFFENCE_WINDOW = timedelta(days=90)
MAX_CONDITIONS = 20
MAX_VALUES = 500
_SECRET_SETTING = "risk.secret"

_P = tables.risk_profiles
_PV = tables.risk_profile_versions
_T = tables.risk_targets
_R = tables.risk_results
_O = tables.offences
_C = tables.consignments
_V = tables.consignment_versions
_B = tables.bundles
_RESULTS = insert(_R)


def require_officer(actor: Actor) -> None:
    if not actor.is_officer:
        raise GatewayError.one("FORBIDDEN", "only customs officers may do this")
    if actor.status != "ACTIVE":
        raise GatewayError.one("FORBIDDEN", f"party {actor.party_id} is suspended")


# -- the model: conditions, profiles, targets, the consignment as profiles see it ------------------------


@dataclass(frozen=True)
class Subject:
    """A consignment version as the profiles look at it: its record and what the gateway knows."""

    ccrn: str
    version: int
    record: Mapping[str, Any]
    filer: str
    vehicle: str | None = None
    driver: str | None = None
    first_time_filer: bool = False
    offences: int = 0
    amended_at: datetime | None = None
    crossing_at: datetime | None = None

    def values_of(self, path: str) -> list[Any]:
        """Every value at a field path; a path through a list gives one value per element."""
        if path == "vehicle":
            return [self.vehicle] if self.vehicle else []
        if path == "first_time_filer":
            return [self.first_time_filer]
        if path == "offences_last_90_days":
            return [self.offences]
        if path == "value_per_kg":
            ratio = value_per_kg(self.record)
            return [] if ratio is None else [ratio]
        if path == "hours_from_amendment_to_crossing":
            if self.amended_at is None or self.crossing_at is None:
                return []
            return [(self.crossing_at - self.amended_at).total_seconds() / 3600]
        found: list[Any] = [self.record]
        for part in path.split("."):
            step: list[Any] = []
            for value in found:
                if isinstance(value, Mapping) and value.get(part) is not None:
                    inner = value[part]
                    step.extend(inner if isinstance(inner, list) else [inner])
            found = step
        return [v for v in found if not isinstance(v, Mapping | list)]


def value_per_kg(record: Mapping[str, Any]) -> float | None:
    """Declared value over gross mass, over the items that give both. Undefined (None) when no item
    gives both or when the values are in more than one currency: amounts are never converted."""
    total = Decimal(0)
    mass = Decimal(0)
    currencies: set[str] = set()
    for item in record.get("items") or []:
        value = item.get("value")
        kg = item.get("gross_mass_kg")
        if not value or not kg:
            continue
        try:
            total += Decimal(str(value["amount"]))
            mass += Decimal(str(kg))
        except (InvalidOperation, KeyError):
            return None
        currencies.add(str(value.get("currency")))
    if mass <= 0 or len(currencies) != 1:
        return None
    return float(total / mass)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Decimal(value))
        except InvalidOperation:
            return None
    return None


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    a, b = _number(left), _number(right)
    if a is not None and b is not None and not (isinstance(left, str) and isinstance(right, str)):
        return a == b
    return str(left).casefold() == str(right).casefold()


_WORD = re.compile(r"\w+")


def _words(text: Any) -> str:
    return " " + " ".join(_WORD.findall(str(text).casefold())) + " "


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    values: tuple[Any, ...]

    def holds(self, subject: Subject) -> bool:
        return any(self._test(v) for v in subject.values_of(self.field))

    def _test(self, value: Any) -> bool:
        if self.op == "prefix":
            text = str(value).casefold()
            return any(text.startswith(str(p).casefold()) for p in self.values)
        if self.op == "in":
            return any(_same(value, v) for v in self.values)
        if self.op == "contains_any":
            # Whole words, case-insensitive: "gun" hits "toy gun", not "begun"; a value of several
            # words hits that phrase.
            text = _words(value)
            return any(_words(w) in text for w in self.values if _words(w).strip())
        if self.op == "eq":
            return _same(value, self.values[0])
        number, limit = _number(value), _number(self.values[0])
        if number is None or limit is None:
            return False
        return number < limit if self.op == "lt" else number > limit

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "op": self.op, "values": list(self.values)}


@dataclass(frozen=True)
class Profile:
    profile_id: int
    name: str
    version: int
    weight: int
    conditions: tuple[Condition, ...]

    def hits(self, subject: Subject) -> bool:
        return all(c.holds(subject) for c in self.conditions)


@dataclass(frozen=True)
class Target:
    target_id: int
    kind: str
    value: str
    action: str
    profile_id: int | None
    reason: str

    def applies(self, subject: Subject) -> bool:
        if self.kind == "CCRN":
            return subject.ccrn == self.value
        if self.kind == "VEHICLE":
            return subject.vehicle == self.value
        return self.value in (subject.filer, subject.driver)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target_id": self.target_id,
            "kind": self.kind,
            "value": self.value,
            "action": self.action,
            "profile_id": self.profile_id,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Result:
    """One profiling of one consignment version: the officers' whole picture of it."""

    ccrn: str
    version: int
    draw: float
    score: int
    hits: tuple[dict[str, Any], ...]
    targets: tuple[dict[str, Any], ...]
    selected: bool
    why: tuple[str, ...]
    vehicle: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ccrn": self.ccrn,
            "version": self.version,
            "draw": self.draw,
            "score": self.score,
            "hits": list(self.hits),
            "targets": list(self.targets),
            "selected": self.selected,
            "why": list(self.why),
            "vehicle": self.vehicle,
        }


@dataclass(frozen=True)
class Rules:
    """What a profiling run needs besides the consignment: loaded once per batch."""

    profiles: tuple[Profile, ...]
    targets: tuple[Target, ...]
    threshold: int
    random_rate: float
    secret: bytes = field(repr=False)


def draw(secret: bytes, ccrn: str, version: int) -> float:
    """``HMAC-SHA256(secret, ccrn:version)``, its first 8 bytes as an integer over 2**64: in [0, 1)."""
    digest = hmac.new(secret, f"{ccrn}:{version}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def evaluate(subject: Subject, rules: Rules) -> Result:
    """Score and select one consignment. An INSPECT target always selects; a RELEASE target takes one
    profile's weight out of the score, or (naming no profile) the score and the draw altogether."""
    applying = [t for t in rules.targets if t.applies(subject)]
    inspect = [t for t in applying if t.action == "INSPECT"]
    release = [t for t in applying if t.action == "RELEASE"]
    release_all = any(t.profile_id is None for t in release)
    released = {t.profile_id for t in release}
    hits: list[dict[str, Any]] = []
    score = 0
    counted = 0
    for profile in rules.profiles:
        if not profile.hits(subject):
            continue
        cancelled = release_all or profile.profile_id in released
        hits.append(
            {
                "profile_id": profile.profile_id,
                "name": profile.name,
                "version": profile.version,
                "weight": profile.weight,
                "released": cancelled,
            }
        )
        if not cancelled:
            score += profile.weight
            counted += 1
    value = draw(rules.secret, subject.ccrn, subject.version)
    why = [f"TARGET {t.target_id}" for t in inspect]
    if not release_all:
        if counted and score >= rules.threshold:
            why.append("SCORE")
        if value < rules.random_rate:
            why.append("RANDOM")
    return Result(
        subject.ccrn,
        subject.version,
        value,
        score,
        tuple(hits),
        tuple(t.as_dict() for t in applying),
        bool(why),
        tuple(why),
        subject.vehicle,
    )


# -- validating a profile as officers send it ---------------------------------------------------------


def _path_problem(path: str) -> str | None:
    if path in DERIVED:
        return None
    kind: Any = RECORD
    for part in path.split("."):
        while isinstance(kind, ListOf):
            kind = kind.item
        if not isinstance(kind, Obj) or part not in kind.fields:
            return (
                f"{path!r} is not a field of the cargo record (e.g. items.hs_code, consignor.name) "
                f"nor a derived field ({', '.join(DERIVED)})"
            )
        kind = kind.fields[part].kind
    while isinstance(kind, ListOf):
        kind = kind.item
    if isinstance(kind, Obj):
        return f"{path!r} is a group of fields; name one of its fields: {', '.join(kind.fields)}"
    return None


def _parse_condition(raw: Any, where: str, problems: list[Problem]) -> Condition | None:
    if not isinstance(raw, dict):
        problems.append(Problem("INVALID_VALUE", where, "a condition is an object {field, op, values}"))
        return None
    unknown = sorted(set(raw) - {"field", "op", "values", "value"})
    for key in unknown:
        problems.append(Problem("INVALID_VALUE", f"{where}.{key}", f"unknown field {key!r}"))
    path, op = raw.get("field"), raw.get("op")
    values = raw.get("values", [raw["value"]] if "value" in raw else None)
    before = len(problems)
    if not isinstance(path, str) or not path:
        problems.append(Problem("MISSING_FIELD", f"{where}.field", "name a field, e.g. items.hs_code"))
    elif (message := _path_problem(path)) is not None:
        problems.append(Problem("INVALID_VALUE", f"{where}.field", message))
    if op not in OPERATORS:
        problems.append(
            Problem("INVALID_CODE", f"{where}.op", f"{op!r} is not one of {', '.join(OPERATORS)}")
        )
    if not isinstance(values, list) or not values:
        problems.append(Problem("MISSING_FIELD", f"{where}.values", "give a non-empty list of values"))
    elif len(values) > MAX_VALUES:
        problems.append(Problem("INVALID_VALUE", f"{where}.values", f"at most {MAX_VALUES} values"))
    elif op in ("lt", "gt"):
        if len(values) != 1 or _number(values[0]) is None or isinstance(values[0], str | bool):
            problems.append(Problem("INVALID_VALUE", f"{where}.values", f"{op} takes exactly one number"))
    elif op == "eq":
        if len(values) != 1 or not isinstance(values[0], str | int | float | bool):
            problems.append(Problem("INVALID_VALUE", f"{where}.values", "eq takes exactly one value"))
    elif op in ("prefix", "contains_any"):
        if not all(isinstance(v, str) and v.strip() for v in values):
            problems.append(Problem("INVALID_VALUE", f"{where}.values", f"{op} takes non-empty strings"))
    elif not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        problems.append(Problem("INVALID_VALUE", f"{where}.values", "in takes strings or numbers"))
    if len(problems) > before or unknown:
        return None
    assert isinstance(path, str) and isinstance(op, str) and isinstance(values, list)
    return Condition(path, op, tuple(values))


def parse_profile(data: Any) -> tuple[str, int, tuple[Condition, ...]]:
    """A profile as officers send it: ``{"name", "weight", "conditions": [{field, op, values}]}``."""
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a JSON object {name, weight, conditions}")
    problems = [
        Problem("INVALID_VALUE", key, f"unknown field {key!r}")
        for key in sorted(set(data) - {"name", "weight", "conditions"})
    ]
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(Problem("MISSING_FIELD", "name", "a profile needs a name"))
    elif len(name.strip()) > 60:
        problems.append(Problem("INVALID_VALUE", "name", "at most 60 characters"))
    weight = data.get("weight")
    if not isinstance(weight, int) or isinstance(weight, bool) or not -10_000 <= weight <= 10_000:
        problems.append(Problem("INVALID_VALUE", "weight", "a whole number from -10000 to 10000"))
    raw = data.get("conditions")
    conditions: list[Condition] = []
    if not isinstance(raw, list) or not raw:
        problems.append(Problem("MISSING_FIELD", "conditions", "give one or more conditions"))
    elif len(raw) > MAX_CONDITIONS:
        problems.append(Problem("INVALID_VALUE", "conditions", f"at most {MAX_CONDITIONS} conditions"))
    else:
        for i, item in enumerate(raw):
            condition = _parse_condition(item, f"conditions[{i}]", problems)
            if condition is not None:
                conditions.append(condition)
    if problems:
        raise GatewayError(problems)
    assert isinstance(name, str) and isinstance(weight, int)
    return name.strip(), weight, tuple(conditions)


# -- the secret of the draw ---------------------------------------------------------------------------

_SECRETS: weakref.WeakKeyDictionary[Engine, bytes] = weakref.WeakKeyDictionary()
_FILE_SECRETS: dict[str, bytes] = {}


def secret(conn: Connection, gw: Gateway) -> bytes:
    """The draw's secret: from ``[risk] secret_file`` when configured, else the one kept in the database,
    created at random the first time it is needed. Two processes creating it at once agree: the insert
    of the second fails on the key and it reads the first's."""
    path = gw.config.risk.secret_file
    if path:
        if path not in _FILE_SECRETS:
            try:
                content = Path(path).read_bytes().strip()
            except OSError as exc:
                raise RuntimeError(f"[risk] secret_file {path} cannot be read: {exc}") from None
            if len(content) < 16:
                raise RuntimeError(f"[risk] secret_file {path} holds less than 16 bytes")
            _FILE_SECRETS[path] = content
        return _FILE_SECRETS[path]
    cached = _SECRETS.get(gw.engine)
    if cached is not None:
        return cached
    settings = tables.settings
    stored = conn.scalar(select(settings.c.value).where(settings.c.name == _SECRET_SETTING))
    if stored is None:
        fresh = secrets.token_hex(32)
        try:
            with conn.begin_nested():
                conn.execute(insert(settings).values(name=_SECRET_SETTING, value=fresh))
            # Not cached yet: this transaction may still roll back; the next read caches it.
            return bytes.fromhex(fresh)
        except IntegrityError:
            stored = conn.scalar(select(settings.c.value).where(settings.c.name == _SECRET_SETTING))
            assert stored is not None
    value = bytes.fromhex(stored)
    _SECRETS[gw.engine] = value
    return value


# -- loading what a profiling run needs -----------------------------------------------------------------


def _profile_of(row: Any) -> Profile:
    return Profile(
        int(row.profile_id),
        row.name,
        row.version,
        row.weight,
        tuple(Condition(c["field"], c["op"], tuple(c["values"])) for c in json.loads(row.conditions)),
    )


def load_rules(conn: Connection, gw: Gateway, keys: Iterable[str] = ()) -> Rules:
    """Active profiles, and the live targets naming any of ``keys`` (CCRNs, vehicles, party ids)."""
    profiles = tuple(
        _profile_of(r)
        for r in conn.execute(select(_P).where(_P.c.status == "ACTIVE").order_by(_P.c.profile_id))
    )
    wanted = sorted({k for k in keys if k})
    targets: list[Target] = []
    now = gw.now()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for r in conn.execute(
            select(_T)
            .where(_T.c.value.in_(chunk), _T.c.revoked_at.is_(None), _T.c.expires_at > now)
            .order_by(_T.c.target_id)
        ):
            targets.append(Target(int(r.target_id), r.kind, r.value, r.action, r.profile_id, r.reason))
    return Rules(
        profiles, tuple(targets), gw.config.risk.threshold, gw.config.risk.random_rate, secret(conn, gw)
    )


def offence_counts(
    conn: Connection, gw: Gateway, parties: Iterable[str | None], vehicles: Iterable[str | None]
) -> list[tuple[str | None, str | None]]:
    """The (party, vehicle) of every offence of the last 90 days against any of these."""
    p = sorted({x for x in parties if x})
    v = sorted({x for x in vehicles if x})
    if not p and not v:
        return []
    clauses = []
    if p:
        clauses.append(_O.c.party_id.in_(p))
    if v:
        clauses.append(_O.c.vehicle.in_(v))
    since = gw.now() - OFFENCE_WINDOW
    rows = conn.execute(
        select(_O.c.offence_id, _O.c.party_id, _O.c.vehicle).where(_O.c.at >= since, or_(*clauses))
    )
    return [(r.party_id, r.vehicle) for r in rows]


def _count(offences: Sequence[tuple[str | None, str | None]], parties: set[str], vehicle: str | None) -> int:
    return sum(1 for party, veh in offences if party in parties or (vehicle and veh == vehicle))


def _first_timers(conn: Connection, filers: Iterable[str]) -> set[str]:
    """Filers none of whose consignments has ever crossed."""
    wanted = sorted(set(filers))
    crossed = set(
        conn.scalars(
            select(_C.c.filer_id)
            .where(_C.c.filer_id.in_(wanted), _C.c.status.in_(("CROSSED", "DECLARED")))
            .group_by(_C.c.filer_id)
        )
    )
    return set(wanted) - crossed


def _store(conn: Connection, gw: Gateway, results: Sequence[Result], trigger: str, fresh: bool) -> None:
    rows = [
        {
            "ccrn": r.ccrn,
            "version": r.version,
            "profiled_at": gw.now(),
            "trigger": trigger,
            "vehicle": r.vehicle,
            "draw": r.draw,
            "score": r.score,
            "hits": json.dumps(list(r.hits)),
            "targets": json.dumps(list(r.targets)),
            "selected": r.selected,
            "why": json.dumps(list(r.why)),
        }
        for r in results
    ]
    if not rows:
        return
    if not fresh:  # the latest profiling of a version replaces the one before
        pairs = [(r["ccrn"], r["version"]) for r in rows]
        conn.execute(delete(_R).where(tuple_(_R.c.ccrn, _R.c.version).in_(pairs)))
    conn.execute(_RESULTS, rows)


# -- the hooks the lifecycle calls ------------------------------------------------------------------------


def profile_lodged(
    conn: Connection, gw: Gateway, filer: str, lodged: Sequence[tuple[str, Mapping[str, Any]]]
) -> None:
    """Profile a batch of first versions of one filer: profiles, targets and the filer's history are
    read once for the whole batch and every record is evaluated in memory."""
    if not lodged:
        return
    hints = [str(r["vehicle_hint"]) for _c, r in lodged if r.get("vehicle_hint")]
    rules = load_rules(conn, gw, [filer, *hints])
    offences = offence_counts(conn, gw, [filer], hints)
    first = filer in _first_timers(conn, [filer])
    now = gw.now()
    results = []
    for ccrn, record in lodged:
        vehicle = record.get("vehicle_hint")
        subject = Subject(
            ccrn,
            1,
            record,
            filer,
            vehicle=vehicle,
            first_time_filer=first,
            offences=_count(offences, {filer}, vehicle),
            amended_at=now,
            crossing_at=_expected(record),
        )
        results.append(evaluate(subject, rules))
    _store(conn, gw, results, "LODGE", fresh=True)


def _expected(record: Mapping[str, Any]) -> datetime | None:
    from gateway.record import crossing_window

    try:
        return crossing_window(str(record["expected_crossing"]))[0]
    except (KeyError, ValueError):
        return None


def subjects(
    conn: Connection,
    gw: Gateway,
    ccrns: Sequence[str],
    *,
    crossing_at: datetime | None = None,
    vehicle: str | None = None,
    driver: str | None = None,
) -> list[Subject]:
    """The consignments as the profiles see them now (with their bundle's vehicle and driver, or the
    ones given at the kiosk). ``crossing_at`` None: the bundle's slot, or the expected crossing."""
    rows: list[Any] = []
    for start in range(0, len(ccrns), 500):
        chunk = list(ccrns[start : start + 500])
        rows.extend(
            conn.execute(
                select(
                    _C.c.ccrn,
                    _C.c.version,
                    _C.c.filer_id,
                    _C.c.amended_at,
                    _C.c.crossing_from,
                    _V.c.record,
                    _B.c.vehicle,
                    _B.c.driver_id,
                    _B.c.slot_start,
                    _B.c.earliest_crossing,
                )
                .select_from(
                    _C.join(_V, and_(_V.c.ccrn == _C.c.ccrn, _V.c.version == _C.c.version)).outerjoin(
                        _B, _B.c.bundle_id == _C.c.bundle_id
                    )
                )
                .where(_C.c.ccrn.in_(chunk))
                .order_by(_C.c.ccrn)
            )
        )
    filers = {r.filer_id for r in rows}
    firsts = _first_timers(conn, filers) if filers else set()
    records = {r.ccrn: json.loads(r.record) for r in rows}
    vehicles = {r.ccrn: vehicle or r.vehicle or records[r.ccrn].get("vehicle_hint") for r in rows}
    drivers = {r.ccrn: driver or r.driver_id for r in rows}
    offences = offence_counts(conn, gw, [*filers, *drivers.values()], vehicles.values())
    out = []
    for r in rows:
        when = crossing_at
        if when is None:
            when = max(r.slot_start, r.earliest_crossing) if r.slot_start is not None else r.crossing_from
        out.append(
            Subject(
                r.ccrn,
                r.version,
                records[r.ccrn],
                r.filer_id,
                vehicle=vehicles[r.ccrn],
                driver=drivers[r.ccrn],
                first_time_filer=r.filer_id in firsts,
                offences=_count(offences, {r.filer_id, drivers[r.ccrn] or ""}, vehicles[r.ccrn]),
                amended_at=r.amended_at,
                crossing_at=when,
            )
        )
    return out


def _keys(subject: Subject) -> list[str]:
    return [k for k in (subject.ccrn, subject.vehicle, subject.filer, subject.driver) if k]


def assess(
    conn: Connection,
    gw: Gateway,
    ccrns: Sequence[str],
    trigger: str,
    *,
    crossing_at: datetime | None = None,
    vehicle: str | None = None,
    driver: str | None = None,
) -> dict[str, Result]:
    """Profile these consignments now and record the results; returns them by CCRN."""
    found = subjects(conn, gw, ccrns, crossing_at=crossing_at, vehicle=vehicle, driver=driver)
    if not found:
        return {}
    rules = load_rules(conn, gw, [k for s in found for k in _keys(s)])
    results = [evaluate(s, rules) for s in found]
    _store(conn, gw, results, trigger, fresh=False)
    return {r.ccrn: r for r in results}


def reprofile(conn: Connection, gw: Gateway, ccrns: Sequence[str], trigger: str) -> None:
    """The hook for a content-changing amendment and for bundling."""
    assess(conn, gw, ccrns, trigger)


def vehicle_targets(
    conn: Connection, gw: Gateway, vehicle: str, parties: Iterable[str | None]
) -> list[Target]:
    """Live INSPECT targets on a vehicle or its driver (for an empty vehicle, which has no CCRN)."""
    keys = [vehicle, *[p for p in parties if p]]
    rules_targets = load_rules(conn, gw, keys).targets
    return [
        t
        for t in rules_targets
        if t.action == "INSPECT" and ((t.kind == "VEHICLE" and t.value == vehicle) or t.kind == "PARTY")
    ]


# -- officers: profiles -----------------------------------------------------------------------------------


def _profile_view(row: Any) -> dict[str, Any]:
    return {
        "profile_id": int(row.profile_id),
        "name": row.name,
        "version": row.version,
        "weight": row.weight,
        "conditions": json.loads(row.conditions),
        "status": row.status,
        "created_at": iso_hk(row.created_at),
        "updated_at": iso_hk(row.updated_at),
    }


def _name_taken(name: str) -> GatewayError:
    return GatewayError.one("INVALID_VALUE", f"an active profile is already named {name!r}", "name")


def _keep_version(conn: Connection, gw: Gateway, actor: Actor, row: Any) -> None:
    conn.execute(
        insert(_PV).values(
            profile_id=row.profile_id,
            version=row.version,
            name=row.name,
            weight=row.weight,
            conditions=row.conditions,
            status=row.status,
            at=gw.now(),
            actor=actor.party_id,
        )
    )


def _load_profile(conn: Connection, profile_id: Any, lock: bool = False) -> Any:
    try:
        key = int(profile_id)
    except (TypeError, ValueError):
        raise GatewayError.one("NOT_FOUND", f"no risk profile {profile_id}", "profile_id") from None
    query = select(_P).where(_P.c.profile_id == key)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise GatewayError.one("NOT_FOUND", f"no risk profile {profile_id}", "profile_id")
    return row


def create_profile(gw: Gateway, actor: Actor, data: Any) -> dict[str, Any]:
    require_officer(actor)
    name, weight, conditions = parse_profile(data)
    now = gw.now()
    text = json.dumps([c.as_dict() for c in conditions])
    with gw.engine.begin() as conn:
        try:
            with conn.begin_nested():
                result = conn.execute(
                    insert(_P).values(
                        name=name,
                        live_name=name,
                        version=1,
                        weight=weight,
                        conditions=text,
                        status="ACTIVE",
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:
            raise _name_taken(name) from None
        row = _load_profile(conn, result.inserted_primary_key[0])  # type: ignore[index]
        _keep_version(conn, gw, actor, row)
        view = _profile_view(row)
        audit(conn, gw, actor, "risk_profile.create", "risk_profile", str(row.profile_id), None, view)
    view["reprofiled"] = _reprofile_concerned(gw, [_profile_of(row)])
    return view


def change_profile(gw: Gateway, actor: Actor, profile_id: Any, data: Any) -> dict[str, Any]:
    require_officer(actor)
    name, weight, conditions = parse_profile(data)
    text = json.dumps([c.as_dict() for c in conditions])
    with gw.engine.begin() as conn:
        old = _load_profile(conn, profile_id, lock=True)
        if old.status != "ACTIVE":
            raise GatewayError.one("INVALID_STATE", f"risk profile {profile_id} is retired", "profile_id")
        if (old.name, old.weight, old.conditions) == (name, weight, text):
            return {**_profile_view(old), "reprofiled": 0}
        try:
            with conn.begin_nested():
                conn.execute(
                    update(_P)
                    .where(_P.c.profile_id == old.profile_id)
                    .values(
                        name=name,
                        live_name=name,
                        version=old.version + 1,
                        weight=weight,
                        conditions=text,
                        updated_at=gw.now(),
                    )
                )
        except IntegrityError:
            raise _name_taken(name) from None
        row = _load_profile(conn, old.profile_id)
        _keep_version(conn, gw, actor, row)
        view = _profile_view(row)
        audit(
            conn,
            gw,
            actor,
            "risk_profile.change",
            "risk_profile",
            str(row.profile_id),
            _profile_view(old),
            view,
        )
    view["reprofiled"] = _reprofile_concerned(gw, [_profile_of(old), _profile_of(row)])
    return view


def retire_profile(gw: Gateway, actor: Actor, profile_id: Any) -> dict[str, Any]:
    require_officer(actor)
    with gw.engine.begin() as conn:
        old = _load_profile(conn, profile_id, lock=True)
        if old.status == "RETIRED":
            return {**_profile_view(old), "reprofiled": 0}
        conn.execute(
            update(_P)
            .where(_P.c.profile_id == old.profile_id)
            .values(status="RETIRED", live_name=None, version=old.version + 1, updated_at=gw.now())
        )
        row = _load_profile(conn, old.profile_id)
        _keep_version(conn, gw, actor, row)
        view = _profile_view(row)
        audit(
            conn,
            gw,
            actor,
            "risk_profile.retire",
            "risk_profile",
            str(row.profile_id),
            _profile_view(old),
            view,
        )
    view["reprofiled"] = _reprofile_concerned(gw, [_profile_of(old)])
    return view


def list_profiles(gw: Gateway, actor: Actor, include_retired: bool = False) -> list[dict[str, Any]]:
    require_officer(actor)
    query = select(_P).order_by(_P.c.profile_id)
    if not include_retired:
        query = query.where(_P.c.status == "ACTIVE")
    with gw.engine.connect() as conn:
        return [_profile_view(r) for r in conn.execute(query)]


def get_profile(gw: Gateway, actor: Actor, profile_id: Any) -> dict[str, Any]:
    """A profile with every version it has had."""
    require_officer(actor)
    with gw.engine.connect() as conn:
        row = _load_profile(conn, profile_id)
        versions = conn.execute(select(_PV).where(_PV.c.profile_id == row.profile_id).order_by(_PV.c.version))
        return {
            **_profile_view(row),
            "versions": [
                {
                    "version": v.version,
                    "name": v.name,
                    "weight": v.weight,
                    "conditions": json.loads(v.conditions),
                    "status": v.status,
                    "at": iso_hk(v.at),
                    "by": v.actor,
                }
                for v in versions
            ],
        }


def _live_batches(gw: Gateway, batch: int = 500) -> Iterable[list[str]]:
    after = ""
    while True:
        with gw.engine.connect() as conn:
            chunk = list(
                conn.scalars(
                    select(_C.c.ccrn)
                    .where(_C.c.status.in_(LIVE), _C.c.ccrn > after)
                    .order_by(_C.c.ccrn)
                    .limit(batch)
                )
            )
        if not chunk:
            return
        yield chunk
        after = chunk[-1]


def _reprofile_concerned(gw: Gateway, profiles: Sequence[Profile]) -> int:
    """Re-profile the live consignments that the changed profile hit before or hits now; one
    transaction per batch, so a large store is never locked for long. Returns how many."""
    done = 0
    for chunk in _live_batches(gw):
        with gw.engine.begin() as conn:
            concerned = [s.ccrn for s in subjects(conn, gw, chunk) if any(p.hits(s) for p in profiles)]
            if concerned:
                assess(conn, gw, concerned, "PROFILE")
            done += len(concerned)
    return done


def dry_run(gw: Gateway, actor: Actor, data: Any, limit: int = 1000) -> dict[str, Any]:
    """The live consignments a profile would hit, and which of them it would get selected."""
    require_officer(actor)
    name, weight, conditions = parse_profile(data)
    candidate = Profile(0, name, 0, weight, conditions)
    hits: list[dict[str, Any]] = []
    total = 0
    for chunk in _live_batches(gw):
        with gw.engine.connect() as conn:
            found = subjects(conn, gw, chunk)
            rules = load_rules(conn, gw, [k for s in found for k in _keys(s)])
            with_it = Rules(
                (*rules.profiles, candidate),
                rules.targets,
                rules.threshold,
                rules.random_rate,
                rules.secret,
            )
            for s in found:
                if not candidate.hits(s):
                    continue
                total += 1
                before = evaluate(s, rules)
                after = evaluate(s, with_it)
                if len(hits) < limit:
                    hits.append(
                        {
                            "ccrn": s.ccrn,
                            "score": after.score,
                            "selected": after.selected,
                            "newly_selected": after.selected and not before.selected,
                        }
                    )
    return {
        "hits": total,
        "selected": sum(1 for h in hits if h["selected"]),
        "consignments": hits,
    }


# -- officers: targets ------------------------------------------------------------------------------------


def _target_view(row: Any) -> dict[str, Any]:
    return {
        "target_id": int(row.target_id),
        "kind": row.kind,
        "value": row.value,
        "action": row.action,
        "profile_id": row.profile_id,
        "reason": row.reason,
        "expires_at": iso_hk(row.expires_at),
        "created_at": iso_hk(row.created_at),
        "created_by": row.created_by,
        "revoked_at": iso_hk(row.revoked_at),
    }


def _parse_target(gw: Gateway, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise GatewayError.one(
            "INVALID_VALUE", "send a JSON object {kind, value, action, reason, expires_at}"
        )
    allowed = {"kind", "value", "action", "profile_id", "reason", "expires_at"}
    problems = [Problem("INVALID_VALUE", k, f"unknown field {k!r}") for k in sorted(set(data) - allowed)]
    kind = str(data.get("kind", "")).upper()
    action = str(data.get("action", "")).upper()
    value = data.get("value")
    if kind not in TARGET_KINDS:
        problems.append(Problem("INVALID_CODE", "kind", f"one of {', '.join(TARGET_KINDS)}"))
    if action not in TARGET_ACTIONS:
        problems.append(Problem("INVALID_CODE", "action", f"one of {', '.join(TARGET_ACTIONS)}"))
    if not isinstance(value, str) or not value.strip():
        problems.append(Problem("MISSING_FIELD", "value", "the CCRN, vehicle or party id targeted"))
    elif kind == "CCRN":
        value, problem = ccrn_problem(value, "value")
        if problem:
            problems.append(problem)
    elif kind == "VEHICLE":
        if vrn_problem(value):
            problems.append(Problem("INVALID_VALUE", "value", vrn_problem(value) or "not a VRN"))
        value = normalise_vrn(value)
    elif kind == "PARTY":
        value = "".join(value.split())
        if not re.fullmatch(r"[0-9]{8}", value):
            problems.append(Problem("INVALID_VALUE", "value", "a party id is eight digits"))
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        problems.append(Problem("MISSING_FIELD", "reason", "say why (officers read it later)"))
    profile_id = data.get("profile_id")
    if profile_id is not None and (action != "RELEASE" or not isinstance(profile_id, int)):
        problems.append(
            Problem("INVALID_VALUE", "profile_id", "a RELEASE target may name one profile (its id)")
        )
    expires = data.get("expires_at")
    expires_at = None
    if not isinstance(expires, str):
        problems.append(Problem("MISSING_FIELD", "expires_at", "a date-time with offset"))
    else:
        try:
            expires_at = datetime.fromisoformat(expires)
        except ValueError:
            expires_at = None
        if expires_at is None or expires_at.tzinfo is None:
            problems.append(Problem("INVALID_VALUE", "expires_at", "a date-time with offset"))
        elif expires_at <= gw.now():
            problems.append(Problem("INVALID_VALUE", "expires_at", "is not in the future"))
    if problems:
        raise GatewayError(problems)
    return {
        "kind": kind,
        "value": value,
        "action": action,
        "profile_id": profile_id,
        "reason": str(reason).strip(),
        "expires_at": expires_at,
    }


def add_target(gw: Gateway, actor: Actor, data: Any) -> dict[str, Any]:
    """Mark a CCRN, vehicle or party; live consignments it names are profiled again at once."""
    require_officer(actor)
    values = _parse_target(gw, data)
    with gw.engine.begin() as conn:
        if values["profile_id"] is not None:
            _load_profile(conn, values["profile_id"])
        result = conn.execute(insert(_T).values(**values, created_at=gw.now(), created_by=actor.party_id))
        target_id = result.inserted_primary_key[0]  # type: ignore[index]
        row = conn.execute(select(_T).where(_T.c.target_id == target_id)).one()
        view = _target_view(row)
        audit(conn, gw, actor, "risk_target.add", "risk_target", str(target_id), None, view)
        _reprofile_named(conn, gw, row)
    return view


def _reprofile_named(conn: Connection, gw: Gateway, row: Any) -> None:
    if row.kind == "CCRN":
        query = select(_C.c.ccrn).where(_C.c.ccrn == row.value)
    elif row.kind == "VEHICLE":
        query = select(_C.c.ccrn).join(_B, _B.c.bundle_id == _C.c.bundle_id).where(_B.c.vehicle == row.value)
    else:
        query = select(_C.c.ccrn).where(_C.c.filer_id == row.value)
    ccrns = list(conn.scalars(query.where(_C.c.status.in_(LIVE)).limit(5000)))
    if ccrns:
        assess(conn, gw, ccrns, "TARGET")


def revoke_target(gw: Gateway, actor: Actor, target_id: Any) -> dict[str, Any]:
    require_officer(actor)
    with gw.engine.begin() as conn:
        row = conn.execute(select(_T).where(_T.c.target_id == _int(target_id, "target_id"))).first()
        if row is None:
            raise GatewayError.one("NOT_FOUND", f"no target {target_id}", "target_id")
        if row.revoked_at is None:
            conn.execute(update(_T).where(_T.c.target_id == row.target_id).values(revoked_at=gw.now()))
            audit(conn, gw, actor, "risk_target.revoke", "risk_target", str(row.target_id), _target_view(row))
            row = conn.execute(select(_T).where(_T.c.target_id == row.target_id)).one()
            _reprofile_named(conn, gw, row)
        return _target_view(row)


def list_targets(gw: Gateway, actor: Actor, include_expired: bool = False) -> list[dict[str, Any]]:
    require_officer(actor)
    query = select(_T).order_by(_T.c.target_id)
    if not include_expired:
        query = query.where(_T.c.revoked_at.is_(None), _T.c.expires_at > gw.now())
    with gw.engine.connect() as conn:
        return [_target_view(r) for r in conn.execute(query)]


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise GatewayError.one("NOT_FOUND", f"no {name.replace('_id', '')} {value}", name) from None


# -- officers: results -------------------------------------------------------------------------------------


def result_view(row: Any) -> dict[str, Any]:
    return {
        "ccrn": row.ccrn,
        "version": row.version,
        "profiled_at": iso_hk(row.profiled_at),
        "trigger": row.trigger,
        "vehicle": row.vehicle,
        "draw": row.draw,
        "score": row.score,
        "hits": json.loads(row.hits),
        "targets": json.loads(row.targets),
        "selected": bool(row.selected),
        "why": json.loads(row.why),
    }


def results_for(gw: Gateway, actor: Actor, ccrn: Any) -> dict[str, Any]:
    """Every profiling result of a consignment, newest version first, each with its draw replayed from
    the secret (``replayed`` equals ``draw`` unless the secret changed)."""
    require_officer(actor)
    ccrn_text, problem = ccrn_problem(ccrn)
    if problem or ccrn_text is None:
        raise GatewayError([problem] if problem else [])
    with gw.engine.begin() as conn:
        rows = conn.execute(select(_R).where(_R.c.ccrn == ccrn_text).order_by(_R.c.version.desc())).all()
        if not rows:
            raise GatewayError.one("NOT_FOUND", f"no profiling result for {ccrn_text}", "ccrn")
        key = secret(conn, gw)
        return {
            "ccrn": ccrn_text,
            "results": [{**result_view(r), "replayed_draw": draw(key, r.ccrn, r.version)} for r in rows],
        }


# -- offences -----------------------------------------------------------------------------------------------

OFFENCE_KINDS = ("EARLY_ARRIVAL", "UNDECLARED_CARGO", "EMPTY_NOT_EMPTY", "ELOCK_BROKEN", "OTHER")


def record_offence(
    conn: Connection,
    gw: Gateway,
    kind: str,
    *,
    party_id: str | None = None,
    vehicle: str | None = None,
    ccrn: str | None = None,
    bundle_id: str | None = None,
    control_point: str | None = None,
    details: str | None = None,
    recorded_by: str | None = None,
) -> int:
    result = conn.execute(
        insert(_O).values(
            at=gw.now(),
            kind=kind,
            party_id=party_id,
            vehicle=vehicle,
            ccrn=ccrn,
            bundle_id=bundle_id,
            control_point=control_point,
            details=details,
            recorded_by=recorded_by,
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def _offence_view(row: Any) -> dict[str, Any]:
    return {
        "offence_id": int(row.offence_id),
        "at": iso_hk(row.at),
        "kind": row.kind,
        "party_id": row.party_id,
        "vehicle": row.vehicle,
        "ccrn": row.ccrn,
        "bundle_id": row.bundle_id,
        "control_point": row.control_point,
        "details": row.details,
        "recorded_by": row.recorded_by,
    }


def add_offence(gw: Gateway, actor: Actor, data: Any) -> dict[str, Any]:
    """An offence an officer saw: against a party and/or a vehicle."""
    require_officer(actor)
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a JSON object {kind, party_id?, vehicle?, ...}")
    allowed = {"kind", "party_id", "vehicle", "ccrn", "control_point", "details"}
    problems = [Problem("INVALID_VALUE", k, f"unknown field {k!r}") for k in sorted(set(data) - allowed)]
    kind = data.get("kind")
    if kind not in OFFENCE_KINDS:
        problems.append(Problem("INVALID_CODE", "kind", f"one of {', '.join(OFFENCE_KINDS)}"))
    party_id = data.get("party_id")
    vehicle = data.get("vehicle")
    if party_id is None and vehicle is None:
        problems.append(Problem("MISSING_FIELD", "party_id", "name the party, the vehicle, or both"))
    if party_id is not None and not (isinstance(party_id, str) and re.fullmatch(r"[0-9]{8}", party_id)):
        problems.append(Problem("INVALID_VALUE", "party_id", "a party id is eight digits"))
    if vehicle is not None:
        if not isinstance(vehicle, str) or vrn_problem(vehicle):
            problems.append(Problem("INVALID_VALUE", "vehicle", "not a vehicle registration number"))
        else:
            vehicle = normalise_vrn(vehicle)
    ccrn = data.get("ccrn")
    if ccrn is not None:
        ccrn, problem = ccrn_problem(ccrn)
        if problem:
            problems.append(problem)
    cp = data.get("control_point")
    if cp is not None and cp not in gw.config.control_points and cp != "HKHKG":
        problems.append(Problem("INVALID_CODE", "control_point", f"unknown control point {cp!r}"))
    details = data.get("details")
    if details is not None and not isinstance(details, str):
        problems.append(Problem("INVALID_VALUE", "details", "text"))
    if problems:
        raise GatewayError(problems)
    with gw.engine.begin() as conn:
        offence_id = record_offence(
            conn,
            gw,
            str(kind),
            party_id=party_id,
            vehicle=vehicle,
            ccrn=ccrn,
            control_point=cp,
            details=details,
            recorded_by=actor.party_id,
        )
        row = conn.execute(select(_O).where(_O.c.offence_id == offence_id)).one()
        view = _offence_view(row)
        audit(conn, gw, actor, "offence.add", "offence", str(offence_id), None, view)
        return view


def list_offences(
    gw: Gateway, actor: Actor, party_id: str | None = None, vehicle: str | None = None
) -> list[dict[str, Any]]:
    require_officer(actor)
    query = select(_O).order_by(_O.c.offence_id.desc()).limit(500)
    if party_id:
        query = query.where(_O.c.party_id == party_id)
    if vehicle:
        query = query.where(_O.c.vehicle == normalise_vrn(vehicle))
    with gw.engine.connect() as conn:
        return [_offence_view(r) for r in conn.execute(query)]
