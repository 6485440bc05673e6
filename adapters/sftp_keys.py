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
from sqlalchemy import insert, select

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
                raise _bad(f"SSH key {key.fingerprint} is registered to another party")
            return {**_view(existing), "created": False}
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
    if actor.role not in ("officer", "system") and actor.party_id != party_id:
        raise GatewayError.one("NOT_FOUND", f"no party {party_id}", "party_id")
    with gw.engine.connect() as conn:
        rows = conn.execute(select(_K).where(_K.c.party_id == party_id).order_by(_K.c.key_id)).all()
    return [_view(r) for r in rows]


def key_is_registered(gw: Gateway, party_id: str, blob: bytes) -> bool:
    """Whether ``party_id`` holds this live key (the SFTP server's public-key check)."""
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(_K.c.public_key).where(
                _K.c.fingerprint == fingerprint(blob), _K.c.party_id == party_id, _K.c.revoked_at.is_(None)
            )
        ).first()
    # The fingerprint finds the row; the full blob decides, so a hash collision alone never lets one in.
    return row is not None and row.public_key == base64.b64encode(blob).decode("ascii")
