"""Parties and access (design section 10): registration, API keys, suspension, authentication."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway import tables
from gateway.context import AGENCY_SCOPES, ROLES, Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError, Problem
from gateway.identifiers import hash_pin, hash_secret, new_api_key, new_party_id, new_pin

MAX_LIVE_KEYS = 2  # two at once, so a key can be rotated without downtime


@dataclass(frozen=True)
class NewParty:
    party_id: str
    api_key: str
    pin: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"party_id": self.party_id, "api_key": self.api_key}
        if self.pin is not None:
            out["pin"] = self.pin
        return out


def _require_officer(actor: Actor) -> None:
    if actor.role not in ("officer", "system"):
        raise GatewayError.one("FORBIDDEN", "only customs officers may manage parties")


def add_party(
    gw: Gateway,
    actor: Actor,
    role: str,
    name: str,
    *,
    edi_ids: tuple[str, ...] = (),
    scope: str | None = None,
    control_point: str | None = None,
) -> NewParty:
    """Register a party; its API key (and a driver's PIN) are returned once and stored hashed."""
    _require_officer(actor)
    problems = []
    name = " ".join(name.split())
    if role not in ROLES:
        problems.append(Problem("INVALID_CODE", "role", f"{role!r} is not a role; one of {', '.join(ROLES)}"))
    if not name:
        problems.append(Problem("MISSING_FIELD", "name", "a party needs a name"))
    elif len(name) > 140:
        problems.append(Problem("INVALID_VALUE", "name", "a party name is at most 140 characters"))
    if role == "agency" and scope not in AGENCY_SCOPES:
        problems.append(
            Problem("INVALID_CODE", "scope", f"an agency needs a scope: {', '.join(AGENCY_SCOPES)}")
        )
    if role != "agency" and scope is not None:
        problems.append(Problem("INVALID_VALUE", "scope", "only agencies have a scope"))
    if role == "kiosk" and control_point not in gw.config.control_points:
        problems.append(
            Problem(
                "INVALID_CODE",
                "control_point",
                f"a kiosk is bound to a control point: {', '.join(gw.config.control_points)}",
            )
        )
    if role != "kiosk" and control_point is not None:
        problems.append(Problem("INVALID_VALUE", "control_point", "only kiosks are bound to a control point"))
    for i, edi in enumerate(edi_ids):
        if not edi or len(edi) > 35 or not edi.isprintable():
            problems.append(
                Problem("INVALID_VALUE", f"edi_ids[{i}]", "an EDI identifier is 1 to 35 characters")
            )
    if problems:
        raise GatewayError(problems)

    pin = new_pin() if role == "driver" else None
    api_key = new_api_key()
    for _attempt in range(20):
        party_id = new_party_id()
        try:
            with gw.engine.begin() as conn:
                conn.execute(
                    insert(tables.parties).values(
                        party_id=party_id,
                        role=role,
                        name=name,
                        status="ACTIVE",
                        scope=scope,
                        control_point=control_point,
                        pin_hash=hash_pin(pin, party_id) if pin else None,
                        created_at=gw.now(),
                    )
                )
                for edi in edi_ids:
                    if conn.scalar(
                        select(tables.edi_identifiers.c.party_id).where(
                            tables.edi_identifiers.c.identifier == edi
                        )
                    ):
                        raise GatewayError.one(
                            "INVALID_VALUE",
                            f"EDI identifier {edi!r} is registered to another party",
                            "edi_ids",
                        )
                    conn.execute(insert(tables.edi_identifiers).values(identifier=edi, party_id=party_id))
                _insert_key(conn, gw, party_id, api_key)
                audit(conn, gw, actor, "party.add", "party", party_id, None, _public(conn, party_id))
            return NewParty(party_id, api_key, pin)
        except IntegrityError:
            continue  # a party id collision: draw again
    raise RuntimeError("could not draw a free party id")  # pragma: no cover - 1 in 10^8 twenty times


def _insert_key(conn: Connection, gw: Gateway, party_id: str, api_key: str) -> int:
    result = conn.execute(
        insert(tables.api_keys).values(
            party_id=party_id, key_hash=hash_secret(api_key), hint=api_key[:8], created_at=gw.now()
        )
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def _party_row(conn: Connection, party_id: str) -> Any:
    row = conn.execute(select(tables.parties).where(tables.parties.c.party_id == party_id)).mappings().first()
    if row is None:
        raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")
    return row


def _public(conn: Connection, party_id: str) -> dict[str, Any]:
    row = _party_row(conn, party_id)
    edi = conn.scalars(
        select(tables.edi_identifiers.c.identifier)
        .where(tables.edi_identifiers.c.party_id == party_id)
        .order_by(tables.edi_identifiers.c.identifier)
    ).all()
    return {
        "party_id": row["party_id"],
        "role": row["role"],
        "name": row["name"],
        "status": row["status"],
        "scope": row["scope"],
        "control_point": row["control_point"],
        "edi_ids": list(edi),
        "created_at": iso_hk(row["created_at"]),
    }


def get_party(gw: Gateway, actor: Actor, party_id: str) -> dict[str, Any]:
    if not actor.is_officer and actor.party_id != party_id and actor.role != "system":
        raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")
    with gw.engine.connect() as conn:
        return _public(conn, party_id)


def _set_status(gw: Gateway, actor: Actor, party_id: str, status: str, action: str) -> dict[str, Any]:
    _require_officer(actor)
    with gw.engine.begin() as conn:
        before = _public(conn, party_id)
        conn.execute(
            update(tables.parties).where(tables.parties.c.party_id == party_id).values(status=status)
        )
        after = _public(conn, party_id)
        if before != after:
            audit(conn, gw, actor, action, "party", party_id, before, after)
    return after


def suspend(gw: Gateway, actor: Actor, party_id: str) -> dict[str, Any]:
    """A suspended party can neither lodge nor bundle until an officer reinstates it."""
    return _set_status(gw, actor, party_id, "SUSPENDED", "party.suspend")


def reinstate(gw: Gateway, actor: Actor, party_id: str) -> dict[str, Any]:
    return _set_status(gw, actor, party_id, "ACTIVE", "party.reinstate")


def _may_manage_keys(actor: Actor, party_id: str) -> None:
    if actor.role not in ("officer", "system") and actor.party_id != party_id:
        raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")


def list_keys(gw: Gateway, actor: Actor, party_id: str) -> list[dict[str, Any]]:
    _may_manage_keys(actor, party_id)
    with gw.engine.connect() as conn:
        _party_row(conn, party_id)
        rows = conn.execute(
            select(tables.api_keys)
            .where(tables.api_keys.c.party_id == party_id)
            .order_by(tables.api_keys.c.key_id)
        ).mappings()
        return [
            {
                "key_id": r["key_id"],
                "hint": r["hint"] + "…",
                "created_at": iso_hk(r["created_at"]),
                "revoked_at": iso_hk(r["revoked_at"]),
            }
            for r in rows
        ]


def add_key(gw: Gateway, actor: Actor, party_id: str) -> dict[str, Any]:
    """A second live key for rotation; shown once. A third is refused until one is revoked."""
    _may_manage_keys(actor, party_id)
    api_key = new_api_key()
    with gw.engine.begin() as conn:
        # Lock the party row so two concurrent rotations cannot both pass the count below.
        conn.execute(
            select(tables.parties.c.party_id).where(tables.parties.c.party_id == party_id).with_for_update()
        )
        _party_row(conn, party_id)
        live = conn.scalar(
            select(func.count()).where(
                tables.api_keys.c.party_id == party_id, tables.api_keys.c.revoked_at.is_(None)
            )
        )
        if live is not None and live >= MAX_LIVE_KEYS:
            raise GatewayError.one(
                "KEY_LIMIT", f"party {party_id} already holds {MAX_LIVE_KEYS} live keys: revoke one first"
            )
        key_id = _insert_key(conn, gw, party_id, api_key)
        audit(conn, gw, actor, "key.add", "party", party_id, None, {"key_id": key_id})
    return {"key_id": key_id, "api_key": api_key}


def revoke_key(gw: Gateway, actor: Actor, party_id: str, key_id: int) -> None:
    _may_manage_keys(actor, party_id)
    with gw.engine.begin() as conn:
        row = (
            conn.execute(
                select(tables.api_keys).where(
                    tables.api_keys.c.key_id == key_id, tables.api_keys.c.party_id == party_id
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise GatewayError.one("NOT_FOUND", f"party {party_id} has no key {key_id}", "key_id")
        if row["revoked_at"] is None:
            conn.execute(
                update(tables.api_keys).where(tables.api_keys.c.key_id == key_id).values(revoked_at=gw.now())
            )
            audit(conn, gw, actor, "key.revoke", "party", party_id, {"key_id": key_id}, None)


def authenticate(gw: Gateway, api_key: str, channel: str) -> Actor:
    """The party holding a live key. Unknown and revoked keys are refused alike."""
    if not api_key:
        raise GatewayError.one("UNAUTHORIZED", "an API key is required: Authorization: Bearer KEY")
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(tables.parties.c.party_id, tables.parties.c.role, tables.parties.c.status)
            .join(tables.api_keys, tables.api_keys.c.party_id == tables.parties.c.party_id)
            .where(tables.api_keys.c.key_hash == hash_secret(api_key), tables.api_keys.c.revoked_at.is_(None))
        ).first()
    if row is None:
        raise GatewayError.one("UNAUTHORIZED", "the API key is unknown or revoked")
    return Actor(row.party_id, row.role, channel, row.status)


def authenticate_bearer(gw: Gateway, authorization: str, channel: str) -> Actor:
    """The party behind an HTTP ``Authorization: Bearer KEY`` header."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise GatewayError.one("UNAUTHORIZED", "send your API key as 'Authorization: Bearer KEY'")
    return authenticate(gw, key.strip(), channel)


def require_active(actor: Actor) -> None:
    if actor.status != "ACTIVE":
        raise GatewayError.one("FORBIDDEN", f"party {actor.party_id} is suspended; contact customs")


PIN_ATTEMPTS = 3
PIN_LOCK = timedelta(minutes=30)


def authenticate_pin(gw: Gateway, party_id: str, pin: str, channel: str = "ivr") -> Actor:
    """A driver on the phone: party id and six-digit PIN. Three wrong PINs in a row lock the phone
    dialog for that party for 30 minutes, so a PIN cannot be guessed by calling again and again."""
    party_id = "".join(str(party_id).split())
    with gw.engine.begin() as conn:
        row = (
            conn.execute(
                select(tables.parties).where(tables.parties.c.party_id == party_id).with_for_update()
            )
            .mappings()
            .first()
        )
        if row is None or row["pin_hash"] is None:
            raise GatewayError.one("UNAUTHORIZED", "unknown party id or wrong PIN")
        now = gw.now()
        if row["pin_locked_until"] is not None and row["pin_locked_until"] > now:
            raise GatewayError.one(
                "UNAUTHORIZED",
                f"too many wrong PINs: the phone dialog is locked for this party until "
                f"{iso_hk(row['pin_locked_until'])}",
            )
        refusal = None
        if not secrets.compare_digest(hash_pin(str(pin), party_id), row["pin_hash"]):
            failures = row["pin_failures"] + 1
            locked = now + PIN_LOCK if failures >= PIN_ATTEMPTS else None
            conn.execute(
                update(tables.parties)
                .where(tables.parties.c.party_id == party_id)
                .values(pin_failures=0 if locked else failures, pin_locked_until=locked)
            )
            if locked:
                audit(conn, gw, Actor(party_id, row["role"], channel), "pin.locked", "party", party_id)
                refusal = "three wrong PINs: the phone dialog is locked for 30 minutes"
            else:
                refusal = "unknown party id or wrong PIN"
        elif row["pin_failures"] or row["pin_locked_until"] is not None:
            conn.execute(
                update(tables.parties)
                .where(tables.parties.c.party_id == party_id)
                .values(pin_failures=0, pin_locked_until=None)
            )
    if refusal:  # raised after the commit, so the count of wrong PINs is kept
        raise GatewayError.one("UNAUTHORIZED", refusal)
    return Actor(party_id, row["role"], channel, row["status"])
