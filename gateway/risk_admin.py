"""Risk profiles, targets, profiling results and offences as officers manage them (design section 7).

The services behind ``/api/v1/risk/...``, ``/api/v1/offences`` and the officers' portal pages: each
checks that the caller is an active officer, validates what the officer sends, audits every change, and
re-profiles the live consignments a change concerns through the evaluation engine in ``gateway.risk``.

Nothing here is ever shown to anyone but officers (no tipping off).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import tables
from gateway.context import Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError, Problem
from gateway.identifiers import ccrn_problem, normalise_vrn, vrn_problem
from gateway.record import RECORD, ListOf, Obj
from gateway.risk import (
    DERIVED,
    LIVE,
    OFFENCE_KINDS,
    OPERATORS,
    TARGET_ACTIONS,
    TARGET_KINDS,
    Condition,
    Profile,
    Rules,
    as_number,
    assess,
    draw,
    evaluate,
    fields_used,
    keys_of,
    load_rules,
    profile_of,
    record_offence,
    require_officer,
    secret,
    subjects,
)

MAX_CONDITIONS = 20
MAX_VALUES = 500

_P = tables.risk_profiles
_PV = tables.risk_profile_versions
_T = tables.risk_targets
_R = tables.risk_results
_O = tables.offences
_C = tables.consignments
_B = tables.bundles


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
        if len(values) != 1 or as_number(values[0]) is None or isinstance(values[0], str | bool):
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
    view["reprofiled"] = _reprofile_concerned(gw, [profile_of(row)])
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
    view["reprofiled"] = _reprofile_concerned(gw, [profile_of(old), profile_of(row)])
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
    view["reprofiled"] = _reprofile_concerned(gw, [profile_of(old)])
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
    used = fields_used(profiles)
    for chunk in _live_batches(gw):
        with gw.engine.begin() as conn:
            found = subjects(conn, gw, chunk, used=used)
            concerned = [s.ccrn for s in found if any(p.hits(s) for p in profiles)]
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
            rules = load_rules(conn, gw, [k for s in found for k in keys_of(s)])
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


# -- officers: offences -----------------------------------------------------------------------------


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
