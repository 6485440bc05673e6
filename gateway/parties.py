"""Parties and access (design section 10): registration, API keys, suspension, authentication."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway import ratelimit, tables
from gateway.context import AGENCY_SCOPES, ROLES, Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError, Problem
from gateway.identifiers import hash_pin, hash_secret, new_api_key, new_party_id, new_pin
from gateway.prepared import Prepared, each_statement_alone

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


def _insert_key(
    conn: Connection, gw: Gateway, party_id: str, api_key: str, expires_in_days: int | None = None
) -> int:
    now = gw.now()
    expires_at = None if expires_in_days is None else now + timedelta(days=expires_in_days)
    result = conn.execute(
        insert(tables.api_keys).values(
            party_id=party_id,
            key_hash=hash_secret(api_key),
            hint=api_key[:8],
            created_at=now,
            expires_at=expires_at,
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
    forget_keys()
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
    now = gw.now()
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
                "expires_at": iso_hk(r["expires_at"]),
                "revoked_at": iso_hk(r["revoked_at"]),
                "live": r["revoked_at"] is None and (r["expires_at"] is None or r["expires_at"] > now),
            }
            for r in rows
        ]


MAX_KEY_DAYS = 3660


def _live_key(now: Any) -> Any:
    """The condition of a key that opens the door: not revoked, not past its expiry."""
    k = tables.api_keys.c
    return (k.revoked_at.is_(None)) & or_(k.expires_at.is_(None), k.expires_at > now)


def add_key(gw: Gateway, actor: Actor, party_id: str, expires_in_days: int | None = None) -> dict[str, Any]:
    """A second live key for rotation; shown once. A third is refused until one is revoked (or has
    expired). ``expires_in_days`` makes a key that stops working by itself."""
    _may_manage_keys(actor, party_id)
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_KEY_DAYS:
        raise GatewayError.one(
            "INVALID_VALUE", f"a key expires in 1 to {MAX_KEY_DAYS} days", "expires_in_days"
        )
    api_key = new_api_key()
    with gw.engine.begin() as conn:
        # Lock the party row so two concurrent rotations cannot both pass the count below.
        conn.execute(
            select(tables.parties.c.party_id).where(tables.parties.c.party_id == party_id).with_for_update()
        )
        _party_row(conn, party_id)
        live = conn.scalar(
            select(func.count()).where(tables.api_keys.c.party_id == party_id, _live_key(gw.now()))
        )
        if live is not None and live >= MAX_LIVE_KEYS:
            raise GatewayError.one(
                "KEY_LIMIT", f"party {party_id} already holds {MAX_LIVE_KEYS} live keys: revoke one first"
            )
        key_id = _insert_key(conn, gw, party_id, api_key, expires_in_days)
        expires = conn.scalar(select(tables.api_keys.c.expires_at).where(tables.api_keys.c.key_id == key_id))
        audit(
            conn,
            gw,
            actor,
            "key.add",
            "party",
            party_id,
            None,
            {"key_id": key_id, "expires_at": iso_hk(expires)},
        )
    return {"key_id": key_id, "api_key": api_key, "expires_at": iso_hk(expires)}


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
        # Portal sessions opened with this key end with it (a password-opened session stays).
        conn.execute(delete(tables.portal_sessions).where(tables.portal_sessions.c.key_id == key_id))
    forget_keys()


def authenticate(gw: Gateway, api_key: str, channel: str) -> Actor:
    """The party holding a live key. Unknown, revoked and expired keys are refused alike. The party's
    rate limit is counted here, so every channel that authenticates with a key is limited."""
    return authenticate_key(gw, api_key, channel)[0]


def authenticate_key(gw: Gateway, api_key: str, channel: str) -> tuple[Actor, int]:
    """:func:`authenticate`, and which of the party's keys it was (the portal ties a session to it)."""
    if not api_key:
        raise GatewayError.one("UNAUTHORIZED", "an API key is required: Authorization: Bearer KEY")
    row = _key_row(gw, hash_secret(api_key))
    if row is None:
        raise GatewayError.one("UNAUTHORIZED", "the API key is unknown, revoked or expired")
    ratelimit.admit(gw, row.party_id)
    return Actor(row.party_id, row.role, channel, row.status), int(row.key_id)


# -- verified keys, cached briefly (for speed) -------------------------------------------------
# A key checked against the database is trusted for KEY_CACHE_SECONDS in this process, so a client making
# many requests costs one look-up a second, not one a request. Revoking a key or suspending or reinstating
# a party clears this process's cache at once; another gateway process notices within KEY_CACHE_SECONDS.
# A key's expiry is checked on every request. Unknown keys are never cached.

KEY_CACHE_SECONDS = 1.0
# A statement prepared once per connection (gateway.prepared): on PostgreSQL, outside a transaction, the
# look-up is one round trip of one planned statement instead of BEGIN, a statement parsed and planned
# for this use, and ROLLBACK (120 us of the server's time for the statement alone, bench/RESULTS.md,
# session 9): it is what every request pays whose key this process has not seen within the second.
_KEY_QUERY = Prepared(
    select(
        tables.parties.c.party_id,
        tables.parties.c.role,
        tables.parties.c.status,
        tables.api_keys.c.key_id,
        tables.api_keys.c.expires_at,
    )
    .join(tables.api_keys, tables.api_keys.c.party_id == tables.parties.c.party_id)
    .where(tables.api_keys.c.key_hash == bindparam("key_hash"), _live_key(bindparam("now")))
)
_key_cache: dict[tuple[int, str], tuple[float, Any]] = {}
_key_cache_lock = threading.Lock()


def forget_keys() -> None:
    with _key_cache_lock:
        _key_cache.clear()


def _key_row(gw: Gateway, key_hash: str) -> Any:
    """The party and key behind a key hash, or None."""
    slot = (id(gw.engine), key_hash)
    now = gw.now()
    hit = _key_cache.get(slot)
    cached = hit[1] if hit is not None and hit[0] > time.monotonic() else None
    if cached is not None and (cached.expires_at is None or cached.expires_at > now):
        return cached
    with each_statement_alone(gw.engine) as conn:
        row = _KEY_QUERY.first(conn, {"key_hash": key_hash, "now": now})
    with _key_cache_lock:
        if row is None:
            _key_cache.pop(slot, None)
        else:
            if len(_key_cache) > 10_000:
                _key_cache.clear()
            _key_cache[slot] = (time.monotonic() + KEY_CACHE_SECONDS, row)
    return row


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
    ratelimit.admit(gw, party_id)
    return Actor(party_id, row["role"], channel, row["status"])
