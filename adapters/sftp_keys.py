"""SSH public keys of parties (design section 10: "SFTP uses registered SSH keys").

Officers register a party's OpenSSH public key line (``ssh-ed25519 AAAA... comment``); the SFTP mailbox
server lets the party in when it proves it holds the matching private key. Keys are validated on
registration, so a malformed or private key is refused with a clear error instead of failing at login.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import insert, select, update

from gateway import tables
from gateway.context import Actor, Gateway, audit, iso_hk
from gateway.errors import GatewayError

# RSA below 2048 bits is refused by current OpenSSH as well; DSS keys are gone from paramiko 4.
ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
MIN_RSA_BITS = 2048
_K = tables.ssh_keys


@dataclass(frozen=True)
class PublicKey:
    algorithm: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    @property
    def base64(self) -> str:
        return base64.b64encode(self.blob).decode("ascii")


def fingerprint(blob: bytes) -> str:
    """The OpenSSH form, as ``ssh-keygen -lf`` prints it: SHA256 of the key blob, unpadded base64."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def _bad(message: str) -> GatewayError:
    return GatewayError.one("INVALID_VALUE", message, "ssh_key")


def parse_public_key(text: str) -> PublicKey:
    """One OpenSSH public key line. Never echoes the input: it might be a private key pasted by mistake."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise _bad("the SSH key is empty: give the contents of a .pub file such as id_ed25519.pub")
    if any("PRIVATE KEY" in ln for ln in lines):
        raise _bad("this is a private key; register the public key (the .pub file) and keep this one secret")
    if len(lines) > 1:
        raise _bad("give one SSH public key (one line), not several")
    parts = lines[0].split(None, 2)
    if len(parts) < 2:
        raise _bad("an SSH public key line is 'TYPE BASE64 [comment]', e.g. 'ssh-ed25519 AAAAC3... me@host'")
    algorithm, data = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) > 2 else ""
    if algorithm not in ALGORITHMS:
        raise _bad(f"SSH key type {algorithm[:40]!r} is not accepted; use one of {', '.join(ALGORITHMS)}")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("the SSH public key's base64 part is damaged") from None
    # cryptography checks the encoding strictly (lengths, curve points); paramiko, which checks the
    # logins, must read the same key back from it.
    try:
        loaded = serialization.load_ssh_public_key(f"{algorithm} {data}".encode("ascii"))
        key = paramiko.PKey.from_type_string(algorithm, blob)
    except Exception:  # both libraries raise several kinds for data that does not decode
        raise _bad(f"the SSH public key data is not a valid {algorithm} key") from None
    if key.get_name() != algorithm or key.asbytes() != blob:
        raise _bad(f"the SSH public key data is not a valid {algorithm} key")
    if isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size < MIN_RSA_BITS:
        raise _bad(f"an RSA key must have at least {MIN_RSA_BITS} bits, this one has {loaded.key_size}")
    if len(comment) > 200 or not comment.isprintable():
        comment = comment[:200] if comment.isprintable() else ""
    return PublicKey(algorithm, blob, comment)


def _require_officer(actor: Actor) -> None:
    if actor.role not in ("officer", "system"):
        raise GatewayError.one("FORBIDDEN", "only customs officers may register SSH keys")


def _view(row: Any) -> dict[str, Any]:
    return {
        "key_id": row.key_id,
        "algorithm": row.algorithm,
        "fingerprint": row.fingerprint,
        "comment": row.comment,
        "created_at": iso_hk(row.created_at),
        "revoked_at": iso_hk(row.revoked_at),
    }


def register_ssh_key(gw: Gateway, actor: Actor, party_id: str, public_key_text: str) -> dict[str, Any]:
    """Register a party's SSH public key. Registering the same key again for the same party changes
    nothing; a key already registered to another party is refused."""
    _require_officer(actor)
    key = parse_public_key(public_key_text)
    with gw.engine.begin() as conn:
        if (
            conn.scalar(select(tables.parties.c.party_id).where(tables.parties.c.party_id == party_id))
            is None
        ):
            raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")
        existing = conn.execute(select(_K).where(_K.c.fingerprint == key.fingerprint)).first()
        if existing is not None:
            if existing.party_id != party_id:
                raise _bad(
                    f"SSH key {key.fingerprint} is registered to another party"
                    + (" (revoked there): make a new key" if existing.revoked_at is not None else "")
                )
            if existing.revoked_at is None:
                return {**_view(existing), "created": False}
            # Registered again by an officer after it was revoked: live again, and audited as such.
            conn.execute(update(_K).where(_K.c.key_id == existing.key_id).values(revoked_at=None))
            audit(
                conn,
                gw,
                actor,
                "ssh_key.add",
                "party",
                party_id,
                {"key_id": existing.key_id, "revoked_at": iso_hk(existing.revoked_at)},
                {"key_id": existing.key_id, "fingerprint": key.fingerprint},
            )
            row = conn.execute(select(_K).where(_K.c.key_id == existing.key_id)).one()
            return {**_view(row), "created": True}
        result = conn.execute(
            insert(_K).values(
                party_id=party_id,
                algorithm=key.algorithm,
                public_key=key.base64,
                fingerprint=key.fingerprint,
                comment=key.comment or None,
                created_at=gw.now(),
            )
        )
        key_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        audit(
            conn,
            gw,
            actor,
            "ssh_key.add",
            "party",
            party_id,
            None,
            {"key_id": key_id, "fingerprint": key.fingerprint},
        )
        row = conn.execute(select(_K).where(_K.c.key_id == key_id)).one()
    return {**_view(row), "created": True}


def list_ssh_keys(gw: Gateway, actor: Actor, party_id: str) -> list[dict[str, Any]]:
    """A party's SSH keys, revoked ones too (with ``revoked_at``); officers, or the party itself."""
    if actor.role not in ("officer", "system") and actor.party_id != party_id:
        raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")
    with gw.engine.connect() as conn:
        if (
            conn.scalar(select(tables.parties.c.party_id).where(tables.parties.c.party_id == party_id))
            is None
        ):
            raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")
        rows = conn.execute(select(_K).where(_K.c.party_id == party_id).order_by(_K.c.key_id)).all()
    return [_view(r) for r in rows]


def login_refusal(gw: Gateway, party_id: str, blob: bytes) -> str | None:
    """Why ``party_id`` may not log in with this key (for the log, never told to the client), or None:
    the key must be registered to the party and not revoked, and the party must be active."""
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(_K.c.public_key, _K.c.revoked_at, tables.parties.c.status)
            .join(tables.parties, tables.parties.c.party_id == _K.c.party_id)
            .where(_K.c.fingerprint == fingerprint(blob), _K.c.party_id == party_id)
        ).first()
    # The fingerprint finds the row; the full blob decides, so a hash collision alone never lets one in.
    if row is None or row.public_key != base64.b64encode(blob).decode("ascii"):
        return "the key is not registered to this party"
    if row.revoked_at is not None:
        return f"the key was revoked at {iso_hk(row.revoked_at)}"
    if row.status != "ACTIVE":
        return f"the party is {row.status.lower()}"
    return None


def key_is_registered(gw: Gateway, party_id: str, blob: bytes) -> bool:
    """Whether ``party_id`` holds this live key and may log in with it (the SFTP server's check)."""
    return login_refusal(gw, party_id, blob) is None


def _find(conn: Any, party_id: str, key: str) -> Any:
    """A party's key by its id (digits) or its fingerprint (``SHA256:...``, the prefix optional)."""
    key = key.strip()
    if key.isdigit():
        where = _K.c.key_id == int(key)
    else:
        where = _K.c.fingerprint == (key if key.startswith("SHA256:") else f"SHA256:{key}")
    row = conn.execute(select(_K).where(where, _K.c.party_id == party_id)).first()
    if row is None:
        raise GatewayError.one(
            "NOT_FOUND",
            f"party {party_id} has no SSH key {key[:80]!r} (give its fingerprint, SHA256:..., as "
            f"'roadcargo party ssh-key list {party_id}' shows it, or its key id)",
            "fingerprint",
        )
    return row


def revoke_ssh_key(gw: Gateway, actor: Actor, party_id: str, key: str) -> dict[str, Any]:
    """Revoke a party's SSH key (by fingerprint or key id): it no longer opens the mailbox, and sessions
    opened with it are closed by the server. Officers, or the party itself (a key it lost). Revoking a
    revoked key changes nothing."""
    if actor.role not in ("officer", "system") and actor.party_id != party_id:
        raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")
    with gw.engine.begin() as conn:
        if (
            conn.scalar(select(tables.parties.c.party_id).where(tables.parties.c.party_id == party_id))
            is None
        ):
            raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")
        row = _find(conn, party_id, key)
        if row.revoked_at is not None:
            return {**_view(row), "revoked": False}
        conn.execute(update(_K).where(_K.c.key_id == row.key_id).values(revoked_at=gw.now()))
        audit(
            conn,
            gw,
            actor,
            "ssh_key.revoke",
            "party",
            party_id,
            {"key_id": row.key_id, "fingerprint": row.fingerprint},
            None,
        )
        row = conn.execute(select(_K).where(_K.c.key_id == row.key_id)).one()
    return {**_view(row), "revoked": True}
