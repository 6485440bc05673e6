"""What every service function works with: the store, the rules, the clock, and who is asking."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from gateway import tables
from gateway.clock import HONG_KONG, Clock
from gateway.config import Config
from gateway.immigration import ImmigrationPort

ROLES = ("shipper", "forwarder", "service_provider", "driver", "kiosk", "officer", "agency")
FILER_ROLES = frozenset({"shipper", "forwarder", "service_provider"})
AGENCY_SCOPES = ("immigration", "airport")
CHANNELS = ("http", "cli", "edifact", "xml", "soap", "sftp", "portal", "ivr", "system")


@dataclass(frozen=True)
class Actor:
    """Who does a thing and through which channel; ``party_id`` None is the gateway itself or the CLI."""

    party_id: str | None
    role: str
    channel: str
    status: str = "ACTIVE"

    @property
    def is_officer(self) -> bool:
        return self.role == "officer"


SYSTEM = Actor(None, "system", "system")


@dataclass
class Gateway:
    """The composition of store, configuration and clock that the services run against."""

    engine: Engine
    config: Config = field(default_factory=Config)
    clock: Clock = field(default_factory=Clock)
    immigration: ImmigrationPort | None = None  # None: no Immigration link; the kiosk fails closed

    def now(self) -> datetime:
        return self.clock.now()


def iso_hk(moment: datetime | None) -> str | None:
    """Times shown to people and partners are Hong Kong time with the offset spelled out."""
    return None if moment is None else moment.astimezone(HONG_KONG).isoformat()


def dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def audit_values(
    gw: Gateway,
    actor: Actor,
    action: str,
    entity: str,
    entity_id: str,
    before: Any = None,
    after: Any = None,
) -> dict[str, Any]:
    """One audit row: who, when, through which channel, what, before and after."""
    return {
        "at": gw.now(),
        "actor": actor.party_id,
        "channel": actor.channel,
        "action": action,
        "entity": entity,
        "entity_id": entity_id,
        "before": dump(before),
        "after": dump(after),
    }


def audit(
    conn: Connection,
    gw: Gateway,
    actor: Actor,
    action: str,
    entity: str,
    entity_id: str,
    before: Any = None,
    after: Any = None,
) -> None:
    conn.execute(
        insert(tables.audit_log).values(audit_values(gw, actor, action, entity, entity_id, before, after))
    )


def store_raw(gw: Gateway, actor: Actor, content_type: str | None, body: bytes) -> int:
    """Keep the raw inbound message with its SHA-256, committed before it is processed."""
    with gw.engine.begin() as conn:
        result = conn.execute(
            insert(tables.raw_messages).values(
                received_at=gw.now(),
                party_id=actor.party_id,
                channel=actor.channel,
                content_type=(content_type or "")[:100] or None,
                sha256=hashlib.sha256(body).hexdigest(),
                size=len(body),
                body=body,
            )
        )
        (message_id,) = result.inserted_primary_key or (None,)
    assert message_id is not None
    return int(message_id)


def stored_secret(gw: Gateway, name: str) -> bytes:
    """A random 256-bit secret kept in the ``settings`` table under ``name``, made on first use.

    Every process sharing the database uses the same one; two processes racing to make it both end up
    with the one inserted first."""
    query = select(tables.settings.c.value).where(tables.settings.c.name == name)
    with gw.engine.connect() as conn:
        value = conn.scalar(query)
    if value is None:
        try:
            with gw.engine.begin() as conn:
                conn.execute(insert(tables.settings).values(name=name, value=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another process made it first: use theirs
        with gw.engine.connect() as conn:
            value = conn.scalar(query)
    return bytes.fromhex(str(value))
