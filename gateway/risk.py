"""Risk profiling and targeting (design section 7).

Officers keep risk profiles (conditions with a weight) and targets (a CCRN, vehicle or party marked for
inspection, or released from a profile's selection). Every consignment is profiled when lodged, amended
and bundled, and again at the kiosk: its score is the sum of the weights of the profiles that hit, and it
is selected when a target says so, when the score reaches ``[risk] threshold``, or when its random draw
falls under ``[risk] random_rate``. The draw is ``HMAC-SHA256(secret, ccrn + ":" + version)`` read as a
number in [0, 1): the same in every process sharing the database, replayable by an officer who holds the
secret and unpredictable to anyone else.

This module is the evaluation engine and the hooks the lifecycle calls (lodge, amend, bundle, kiosk,
offences seen by the gateway); the officers' services that manage profiles, targets, results and
offences are in ``gateway.risk_admin``.

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
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from gateway import tables
from gateway.context import Actor, Gateway
from gateway.errors import GatewayError
from gateway.prepared import Pending, Prepared
from gateway.record import crossing_window

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
_SECRET_SETTING = "risk.secret"

_P = tables.risk_profiles
_PV = tables.risk_profile_versions
_T = tables.risk_targets
_R = tables.risk_results
_O = tables.offences
_C = tables.consignments
_V = tables.consignment_versions
_B = tables.bundles
_I = tables.bundle_items
_RESULTS = Prepared(insert(_R))


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


def as_number(value: Any) -> float | None:
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
    a, b = as_number(left), as_number(right)
    if a is not None and b is not None and not (isinstance(left, str) and isinstance(right, str)):
        return a == b
    return str(left).casefold() == str(right).casefold()


_WORD = re.compile(r"\w+")


def _words(text: Any) -> str:
    return " " + " ".join(_WORD.findall(str(text).casefold())) + " "


class _Operand:
    """A value as the comparisons of ``eq`` and ``in`` look at it, worked out once."""

    __slots__ = ("folded", "is_bool", "is_str", "number", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.is_bool = isinstance(value, bool)
        self.is_str = isinstance(value, str)
        self.number = as_number(value)
        self.folded = str(value).casefold()

    def same(self, other: _Operand) -> bool:
        """``_same(self.value, other.value)``."""
        if self.is_bool or other.is_bool:
            return self.value is other.value
        if self.number is not None and other.number is not None and not (self.is_str and other.is_str):
            return self.number == other.number
        return self.folded == other.folded


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    values: tuple[Any, ...]
    # The condition's values prepared once for its operator (profiles are loaded once per batch and
    # tested against every consignment of it).
    _prepared: tuple[Any, ...] = dataclass_field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        if self.op == "prefix":
            prepared: tuple[Any, ...] = tuple(str(p).casefold() for p in self.values)
        elif self.op == "contains_any":
            prepared = tuple(w for w in (_words(v) for v in self.values) if w.strip())
        elif self.op in ("in", "eq"):
            prepared = tuple(_Operand(v) for v in (self.values if self.op == "in" else self.values[:1]))
        else:
            prepared = (as_number(self.values[0]) if self.values else None,)
        object.__setattr__(self, "_prepared", prepared)

    def holds(self, subject: Subject) -> bool:
        return any(self._test(v) for v in subject.values_of(self.field))

    def _test(self, value: Any) -> bool:
        if self.op == "prefix":
            return str(value).casefold().startswith(self._prepared)
        if self.op in ("in", "eq"):
            operand = _Operand(value)
            return any(operand.same(v) for v in self._prepared)
        if self.op == "contains_any":
            # Whole words, case-insensitive: "gun" hits "toy gun", not "begun"; a value of several
            # words hits that phrase.
            text = _words(value)
            return any(w in text for w in self._prepared)
        number, limit = as_number(value), self._prepared[0]
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


# -- the secret of the draw ---------------------------------------------------------------------------

_SECRETS: weakref.WeakKeyDictionary[Engine, bytes] = weakref.WeakKeyDictionary()
_FILE_SECRETS: dict[str, bytes] = {}


def secret(conn: Connection, gw: Gateway) -> bytes:
    """The draw's secret: from ``[risk] secret_file`` when configured, else the one kept in the database,
    created at random the first time it is needed. Two processes creating it at once agree: the insert
    of the second fails on the key and it reads the first's.

    Not ``gateway.context.stored_secret``: that one works in transactions of its own, and this is
    called inside the caller's write transaction (a lodgement, a kiosk decision); on SQLite a second
    writer there would wait on the caller's own lock until the busy timeout."""
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


def profile_of(row: Any) -> Profile:
    return Profile(
        int(row.profile_id),
        row.name,
        row.version,
        row.weight,
        tuple(Condition(c["field"], c["op"], tuple(c["values"])) for c in json.loads(row.conditions)),
    )


_ACTIVE_PROFILES = Prepared(
    select(_P.c.profile_id, _P.c.name, _P.c.version, _P.c.weight, _P.c.conditions)
    .where(_P.c.status == "ACTIVE")
    .order_by(_P.c.profile_id)
)
# Profiles as evaluated, by everything they are made of: read on every profiling, parsed once.
_PARSED: dict[tuple[Any, ...], Profile] = {}
_TARGET_COLUMNS = (_T.c.target_id, _T.c.kind, _T.c.value, _T.c.action, _T.c.profile_id, _T.c.reason)
_LIVE = (_T.c.revoked_at.is_(None), _T.c.expires_at > bindparam("now"))
_LIVE_TARGETS = Prepared(
    select(*_TARGET_COLUMNS)
    .where(_T.c.value.in_(bindparam("keys", expanding=True)), *_LIVE)
    .order_by(_T.c.target_id)
)
# The same, also naming the filers of some consignments (read in the statement, not before it).
_FILERS = select(_C.c.filer_id).where(_C.c.ccrn.in_(bindparam("ccrns", expanding=True)))
_LIVE_TARGETS_OF = Prepared(
    select(*_TARGET_COLUMNS)
    .where(or_(_T.c.value.in_(bindparam("keys", expanding=True)), _T.c.value.in_(_FILERS)), *_LIVE)
    .order_by(_T.c.target_id)
)

# The same naming a vehicle, the driver of its live bundle, the bundle's consignments and their filers:
# read in the statement, after the statements that lock those rows in the same round trip.
_OF_LIVE = (_B.c.live_vehicle == bindparam("vehicle"), _I.c.removed_at.is_(None))
_VEHICLE_KEYS = union_all(
    select(bindparam("vehicle", type_=String)),
    select(_B.c.driver_id).where(_B.c.live_vehicle == bindparam("vehicle")),
    select(_I.c.ccrn).join(_B, _B.c.bundle_id == _I.c.bundle_id).where(*_OF_LIVE),
    select(_C.c.filer_id)
    .join(_I, _I.c.ccrn == _C.c.ccrn)
    .join(_B, _B.c.bundle_id == _I.c.bundle_id)
    .where(*_OF_LIVE),
)
_LIVE_TARGETS_OF_VEHICLE = Prepared(
    select(*_TARGET_COLUMNS).where(_T.c.value.in_(_VEHICLE_KEYS), *_LIVE).order_by(_T.c.target_id)
)


def active_profiles(conn: Connection) -> tuple[Profile, ...]:
    return _profiles(_ACTIVE_PROFILES.all(conn))


def _profiles(rows: Iterable[Any]) -> tuple[Profile, ...]:
    profiles = []
    for row in rows:
        key = tuple(row)
        profile = _PARSED.get(key)
        if profile is None:
            if len(_PARSED) >= 4096:
                _PARSED.clear()
            profile = _PARSED[key] = profile_of(row)
        profiles.append(profile)
    return tuple(profiles)


def fields_used(profiles: Iterable[Profile]) -> frozenset[str]:
    """The fields the conditions of these profiles look at: a derived field nobody looks at is not
    worked out (it costs queries)."""
    return frozenset(c.field for p in profiles for c in p.conditions)


def _live_targets(conn: Connection, gw: Gateway, keys: Iterable[str]) -> tuple[Target, ...]:
    wanted = sorted({k for k in keys if k})
    targets: list[Target] = []
    now = gw.now()
    for start in range(0, len(wanted), 500):
        for r in _LIVE_TARGETS.all(conn, {"keys": wanted[start : start + 500], "now": now}):
            targets.append(_target(r))
    return tuple(targets)


def _rules(
    conn: Connection,
    gw: Gateway,
    profiles: tuple[Profile, ...],
    keys: Iterable[str],
    targets: tuple[Target, ...] | None = None,
) -> Rules:
    """``targets``: the live targets naming ``keys``, when the caller read them already."""
    return Rules(
        profiles,
        _live_targets(conn, gw, keys) if targets is None else targets,
        gw.config.risk.threshold,
        gw.config.risk.random_rate,
        secret(conn, gw),
    )


class Ahead:
    """The active profiles and the live targets naming ``keys`` (and the filers of the consignments
    ``filers_of``), sent before the consignments they are for are read under lock, in the same
    ``pipeline``: one round trip for all. The targets serve a profiling whose subjects they cover;
    another reads its own. Targets naming other keys never apply (``Target.applies`` looks at the
    subject's own CCRN, vehicle, filer and driver), so reading more of them changes no result."""

    __slots__ = ("_filers_of", "_keys", "_profiles", "_targets")

    def __init__(
        self, conn: Connection, gw: Gateway, keys: Iterable[str], filers_of: Sequence[str] = ()
    ) -> None:
        wanted = sorted({k for k in keys if k})
        self._profiles: Pending | tuple[Profile, ...] = _ACTIVE_PROFILES.send(conn)
        self._keys = frozenset(wanted)
        self._filers_of = frozenset(filers_of)
        self._targets: Pending | tuple[Target, ...] | None = None
        params = {"keys": wanted, "ccrns": sorted(self._filers_of), "now": gw.now()}
        if not wanted or len(wanted) + len(filers_of) > 500:
            pass  # read by the profiling itself, in chunks
        elif filers_of:
            self._targets = _LIVE_TARGETS_OF.send(conn, params)
        else:
            self._targets = _LIVE_TARGETS.send(conn, params)

    @classmethod
    def of_vehicle(cls, conn: Connection, gw: Gateway, vehicle: str) -> Ahead:
        """The active profiles and the live targets naming the vehicle, the driver of its live bundle,
        the bundle's consignments and their filers, sent after the statements that lock those rows:
        once they are read, ``covering`` names them."""
        ahead = cls(conn, gw, ())
        ahead._targets = _LIVE_TARGETS_OF_VEHICLE.send(conn, {"vehicle": vehicle, "now": gw.now()})
        return ahead

    def covering(self, keys: Iterable[str | None]) -> None:
        """The keys (CCRNs, vehicle, parties) whose targets ``of_vehicle`` read."""
        self._keys = frozenset(k for k in keys if k)

    def profiles(self) -> tuple[Profile, ...]:
        if isinstance(self._profiles, Pending):
            self._profiles = _profiles(self._profiles.all())
        return self._profiles

    def targets(self, subjects: Sequence[Subject]) -> tuple[Target, ...] | None:
        """The live targets of these subjects, or None when they were not all read ahead."""
        if self._targets is None:
            return None
        for s in subjects:
            named = {k for k in (s.ccrn, s.vehicle, s.driver) if k}
            if not named <= self._keys or (s.filer not in self._keys and s.ccrn not in self._filers_of):
                return None
        if isinstance(self._targets, Pending):
            self._targets = tuple(_target(r) for r in self._targets.all())
        return self._targets


def _target(r: Any) -> Target:
    return Target(int(r.target_id), r.kind, r.value, r.action, r.profile_id, r.reason)


def load_rules(conn: Connection, gw: Gateway, keys: Iterable[str] = ()) -> Rules:
    """Active profiles, and the live targets naming any of ``keys`` (CCRNs, vehicles, party ids)."""
    return _rules(conn, gw, active_profiles(conn), keys)


def offence_counts(
    conn: Connection, gw: Gateway, parties: Iterable[str | None], vehicles: Iterable[str | None]
) -> list[tuple[str | None, str | None]]:
    """The (party, vehicle) of every offence of the last 90 days against any of these."""
    p = sorted({x for x in parties if x})
    v = sorted({x for x in vehicles if x})
    if not p and not v:
        return []
    statement = _OFFENCES[bool(p), bool(v)]
    rows = statement.all(conn, {"parties": p, "vehicles": v, "since": gw.now() - OFFENCE_WINDOW})
    return [(r.party_id, r.vehicle) for r in rows]


def _offences(parties: bool, vehicles: bool) -> Prepared:
    clauses = []
    if parties:
        clauses.append(_O.c.party_id.in_(bindparam("parties", expanding=True)))
    if vehicles:
        clauses.append(_O.c.vehicle.in_(bindparam("vehicles", expanding=True)))
    return Prepared(
        select(_O.c.offence_id, _O.c.party_id, _O.c.vehicle).where(
            _O.c.at >= bindparam("since"), or_(*clauses)
        )
    )


# By whether parties and vehicles are asked about (an empty IN list is left out).
_OFFENCES = {(p, v): _offences(p, v) for p, v in ((True, True), (True, False), (False, True))}


def _count(offences: Sequence[tuple[str | None, str | None]], parties: set[str], vehicle: str | None) -> int:
    return sum(1 for party, veh in offences if party in parties or (vehicle and veh == vehicle))


_CROSSED = ("CROSSED", "DECLARED")
_HAS_CROSSED = Prepared(
    select(_C.c.filer_id).where(_C.c.filer_id == bindparam("filer"), _C.c.status.in_(_CROSSED)).limit(1)
)


def _first_timers(conn: Connection, filers: Iterable[str]) -> set[str]:
    """Filers none of whose consignments has ever crossed."""
    # One probe per filer that stops at its first crossed consignment (an index lookup on
    # (filer_id, status)): a query over all of them would read every crossed consignment of every
    # filer, a cost that grows with each filer's history. A bundle or a batch has few filers.
    return {filer for filer in set(filers) if _HAS_CROSSED.scalar(conn, {"filer": filer}) is None}


def _json_list(values: Sequence[Any]) -> str:
    return json.dumps(list(values)) if values else "[]"  # most consignments: no hit, no target


def _store(conn: Connection, gw: Gateway, results: Sequence[Result], trigger: str, fresh: bool) -> None:
    now = gw.now()
    rows = [
        {
            "ccrn": r.ccrn,
            "version": r.version,
            "profiled_at": now,
            "trigger": trigger,
            "vehicle": r.vehicle,
            "draw": r.draw,
            "score": r.score,
            "hits": _json_list(r.hits),
            "targets": _json_list(r.targets),
            "selected": r.selected,
            "why": _json_list(r.why),
        }
        for r in results
    ]
    if not rows:
        return
    if fresh:
        _RESULTS.send(conn, rows)  # sent: in a pipeline, with the statements after it
        return
    # The latest profiling of a version replaces the one before: one upsert where the database has it.
    upsert = _UPSERTS.get(conn.dialect.name)
    if upsert is not None:
        upsert.send(conn, rows)
        return
    pairs = [(r["ccrn"], r["version"]) for r in rows]
    conn.execute(delete(_R).where(tuple_(_R.c.ccrn, _R.c.version).in_(pairs)))
    _RESULTS.run(conn, rows)


def _upsert(dialect_insert: Any) -> Any:
    statement = dialect_insert(_R)
    replaced = {c.name: statement.excluded[c.name] for c in _R.columns if not c.primary_key}
    return Prepared(statement.on_conflict_do_update(index_elements=[_R.c.ccrn, _R.c.version], set_=replaced))


_UPSERTS = {"sqlite": _upsert(sqlite_insert), "postgresql": _upsert(postgresql_insert)}


# -- the hooks the lifecycle calls ------------------------------------------------------------------------


def profile_lodged(
    conn: Connection, gw: Gateway, filer: str, lodged: Sequence[tuple[str, Mapping[str, Any]]]
) -> None:
    """Profile a batch of first versions of one filer: profiles, targets and the filer's history are
    read once for the whole batch (the history only when a profile looks at it) and every record is
    evaluated in memory."""
    if not lodged:
        return
    hints = [str(r["vehicle_hint"]) for _c, r in lodged if r.get("vehicle_hint")]
    profiles = active_profiles(conn)
    used = fields_used(profiles)
    rules = _rules(conn, gw, profiles, [filer, *hints])
    offences = offence_counts(conn, gw, [filer], hints) if "offences_last_90_days" in used else []
    first = "first_time_filer" in used and filer in _first_timers(conn, [filer])
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
            offences=_count(offences, {filer}, vehicle) if offences else 0,
            amended_at=now,
            crossing_at=_expected(record),
        )
        results.append(evaluate(subject, rules))
    _store(conn, gw, results, "LODGE", fresh=True)


def _expected(record: Mapping[str, Any]) -> datetime | None:
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
    used: frozenset[str] | None = None,
) -> list[Subject]:
    """The consignments as the profiles see them now (with their bundle's vehicle and driver, or the
    ones given at the kiosk). ``crossing_at`` None: the bundle's slot, or the expected crossing.
    ``used``: the fields the profiles look at (None: all); the filer's history is read only when a
    profile looks at it."""
    rows: list[Any] = []
    for start in range(0, len(ccrns), 500):
        chunk = list(ccrns[start : start + 500])
        rows.extend(_SUBJECTS.all(conn, {"ccrns": chunk}))
    records = {r.ccrn: json.loads(r.record) for r in rows}
    vehicles = {r.ccrn: vehicle or r.vehicle or records[r.ccrn].get("vehicle_hint") for r in rows}
    drivers = {r.ccrn: driver or r.driver_id for r in rows}
    whens = {}
    for r in rows:
        when = crossing_at
        if when is None:
            when = max(r.slot_start, r.earliest_crossing) if r.slot_start is not None else r.crossing_from
        whens[r.ccrn] = when
    return _subjects(conn, gw, rows, records, vehicles, drivers, whens, used)


def _subjects(
    conn: Connection,
    gw: Gateway,
    rows: Sequence[Any],
    records: Mapping[str, Mapping[str, Any]],
    vehicles: Mapping[str, str | None],
    drivers: Mapping[str, str | None],
    whens: Mapping[str, datetime | None],
    used: frozenset[str] | None,
) -> list[Subject]:
    """Subjects of consignment rows (ccrn, version, filer_id, amended_at) with their records, vehicles,
    drivers and crossing times: the filers' history read only when a profile looks at it."""
    filers = {r.filer_id for r in rows}
    firsts = _first_timers(conn, filers) if filers and (used is None or "first_time_filer" in used) else set()
    offences = (
        offence_counts(conn, gw, [*filers, *drivers.values()], vehicles.values())
        if used is None or "offences_last_90_days" in used
        else []
    )
    return [
        Subject(
            r.ccrn,
            r.version,
            records[r.ccrn],
            r.filer_id,
            vehicle=vehicles[r.ccrn],
            driver=drivers[r.ccrn],
            first_time_filer=r.filer_id in firsts,
            offences=_count(offences, {r.filer_id, drivers[r.ccrn] or ""}, vehicles[r.ccrn])
            if offences
            else 0,
            amended_at=r.amended_at,
            crossing_at=whens[r.ccrn],
        )
        for r in rows
    ]


_SUBJECTS = Prepared(
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
    .where(_C.c.ccrn.in_(bindparam("ccrns", expanding=True)))
    .order_by(_C.c.ccrn)
)


def keys_of(subject: Subject) -> list[str]:
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
    profiles = active_profiles(conn)
    found = subjects(
        conn,
        gw,
        ccrns,
        crossing_at=crossing_at,
        vehicle=vehicle,
        driver=driver,
        used=fields_used(profiles),
    )
    return _judge(conn, gw, profiles, found, trigger)


def _judge(
    conn: Connection,
    gw: Gateway,
    profiles: tuple[Profile, ...],
    found: Sequence[Subject],
    trigger: str,
    ahead: Ahead | None = None,
) -> dict[str, Result]:
    """Evaluate the subjects against the profiles and their targets, and record the results (replacing
    an earlier profiling of the same version)."""
    if not found:
        return {}
    targets = ahead.targets(found) if ahead is not None else None
    rules = _rules(conn, gw, profiles, [k for s in found for k in keys_of(s)], targets)
    results = [evaluate(s, rules) for s in found]
    _store(conn, gw, results, trigger, fresh=False)
    return {r.ccrn: r for r in results}


def assess_held(
    conn: Connection,
    gw: Gateway,
    members: Sequence[Any],
    records: Mapping[str, Mapping[str, Any]],
    trigger: str,
    *,
    crossing_at: datetime,
    vehicle: str,
    driver: str | None,
    ahead: Ahead | None = None,
) -> dict[str, Result]:
    """``assess`` of consignments whose rows (current version, read under lock) and records the caller
    already holds, arriving in ``vehicle`` with ``driver`` at ``crossing_at``: the same results, without
    reading them again (nor the profiles and targets ``ahead`` read). Every statement goes through
    ``Prepared``, so it may run in a ``pipeline``."""
    if not members:
        return {}
    profiles = ahead.profiles() if ahead is not None else active_profiles(conn)
    vehicles = {m.ccrn: vehicle or records[m.ccrn].get("vehicle_hint") for m in members}
    drivers = dict.fromkeys(vehicles, driver)
    whens = dict.fromkeys(vehicles, crossing_at)
    found = _subjects(conn, gw, members, records, vehicles, drivers, whens, fields_used(profiles))
    return _judge(conn, gw, profiles, found, trigger, ahead)


def reprofile(conn: Connection, gw: Gateway, ccrns: Sequence[str], trigger: str) -> None:
    """The hook for a content-changing amendment and for bundling."""
    assess(conn, gw, ccrns, trigger)


def vehicle_targets(
    conn: Connection, gw: Gateway, vehicle: str, parties: Iterable[str | None]
) -> list[Target]:
    """Live INSPECT targets on a vehicle or its driver (for an empty vehicle, which has no CCRN)."""
    keys = [vehicle, *[p for p in parties if p]]
    return [
        t
        for t in _live_targets(conn, gw, keys)
        if t.action == "INSPECT" and ((t.kind == "VEHICLE" and t.value == vehicle) or t.kind == "PARTY")
    ]


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
