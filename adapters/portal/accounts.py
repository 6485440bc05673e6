"""Logging in to the portal: with the party id and an API key, or with a password the party sets.

Passwords are stretched with scrypt and a random salt per party (a password is short and guessable,
unlike a 256-bit API key). A wrong party id, key or password are refused alike, so the answer does not
tell which party ids exist.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, insert, select, update

from gateway import parties, tables
from gateway.context import Actor, Gateway, audit
from gateway.errors import GatewayError, RateLimited
from gateway.identifiers import API_KEY_PREFIX

MIN_PASSWORD = 10
# Five wrong passwords in a row refuse password logins for 15 minutes: a password, unlike a key, can be
# guessed. The answer stays the same while locked, so it tells no one that the party has a password.
PASSWORD_ATTEMPTS = 5
PASSWORD_LOCK = timedelta(minutes=15)
MAX_PASSWORD = 200
_P = tables.portal_passwords


def _scrypt(password: str, salt: str) -> str:
    return hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), n=2**14, r=8, p=1).hex()


def log_in(gw: Gateway, party_id: str, secret: str) -> Actor:
    """The party whose id and key (or password) these are; UNAUTHORIZED otherwise."""
    return log_in_with(gw, party_id, secret)[0]


def log_in_with(gw: Gateway, party_id: str, secret: str) -> tuple[Actor, int | None]:
    """:func:`log_in`, and the id of the API key used (None for a password): a session opened with a
    key is tied to it and ends when the key is revoked."""
    party_id = "".join(party_id.split())
    refused = GatewayError.one("UNAUTHORIZED", "unknown party id, or wrong key or password")
    if not party_id or not secret or len(secret) > MAX_PASSWORD:
        raise refused
    if secret.startswith(API_KEY_PREFIX):
        try:
            actor, key_id = parties.authenticate_key(gw, secret.strip(), "portal")
        except RateLimited:
            raise
        except GatewayError:
            raise refused from None
        if actor.party_id != party_id:
            raise refused
        return actor, key_id
    with gw.engine.begin() as conn:
        row = conn.execute(
            select(_P.c.salt, _P.c.password_hash, _P.c.failures, _P.c.locked_until)
            .add_columns(tables.parties.c.role, tables.parties.c.status)
            .join(tables.parties, tables.parties.c.party_id == _P.c.party_id)
            .where(_P.c.party_id == party_id)
            .with_for_update(of=_P)
        ).first()
        if row is None:
            _scrypt(secret, "00" * 16)  # the same work as a real check, so timing does not tell either
            raise refused
        now = gw.now()
        locked = row.locked_until is not None and row.locked_until > now
        if locked or not secrets.compare_digest(_scrypt(secret, row.salt), row.password_hash):
            if not locked:
                failures = row.failures + 1
                conn.execute(
                    update(_P)
                    .where(_P.c.party_id == party_id)
                    .values(
                        failures=0 if failures >= PASSWORD_ATTEMPTS else failures,
                        locked_until=now + PASSWORD_LOCK if failures >= PASSWORD_ATTEMPTS else None,
                    )
                )
            wrong = True
        else:
            wrong = False
            if row.failures:
                conn.execute(
                    update(_P).where(_P.c.party_id == party_id).values(failures=0, locked_until=None)
                )
    if wrong:  # raised after the commit, so the count of wrong passwords is kept
        raise refused
    return Actor(party_id, row.role, "portal", row.status), None


def set_password(gw: Gateway, actor: Actor, current: str, password: str, confirm: str) -> None:
    """Set (or change) the portal password of the party logged in. The party's API key or present
    password is asked for first, so a session left open cannot be turned into a lasting login."""
    assert actor.party_id is not None
    try:
        log_in(gw, actor.party_id, current)
    except GatewayError:
        raise GatewayError.one(
            "UNAUTHORIZED", "that is not your API key or present password", "current"
        ) from None
    if len(password) < MIN_PASSWORD:
        raise GatewayError.one(
            "INVALID_VALUE", f"a password is at least {MIN_PASSWORD} characters", "password"
        )
    if len(password) > MAX_PASSWORD:
        raise GatewayError.one(
            "INVALID_VALUE", f"a password is at most {MAX_PASSWORD} characters", "password"
        )
    if password.startswith(API_KEY_PREFIX):
        raise GatewayError.one("INVALID_VALUE", f"a password may not start with {API_KEY_PREFIX}", "password")
    if password != confirm:
        raise GatewayError.one("INVALID_VALUE", "the two passwords differ", "confirm")
    salt = secrets.token_hex(16)
    with gw.engine.begin() as conn:
        conn.execute(delete(_P).where(_P.c.party_id == actor.party_id))
        conn.execute(
            insert(_P).values(
                party_id=actor.party_id, salt=salt, password_hash=_scrypt(password, salt), set_at=gw.now()
            )
        )
        audit(conn, gw, actor, "portal.password", "party", actor.party_id)
