"""What every service function works with: the store, the rules, the clock, and who is asking."""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from sqlalchemy import Connection, Engine, func, insert, literal, select, text
from sqlalchemy.exc import IntegrityError

from gateway import logs, prepared, tables
from gateway.clock import HONG_KONG, Clock
from gateway.config import Config
from gateway.immigration import ImmigrationPort
from gateway.prepared import Prepared

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


# ``json.dumps`` given any option builds a new JSONEncoder for every call (a few microseconds, a dozen
# times a kiosk decision): the encoders of the hot paths are built once, with the same output.
_AUDIT_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str).encode
to_json = json.JSONEncoder(default=str).encode
"""``json.dumps(value, default=str)``: dates and other values JSON has no type for, as text."""


def dump(value: Any) -> str | None:
    return None if value is None else _AUDIT_JSON(value)


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
        "request_id": logs.request_id(),  # the request's X-Request-ID, None outside a request
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
    _AUDIT.run(conn, audit_values(gw, actor, action, entity, entity_id, before, after))


_AUDIT = Prepared(insert(tables.audit_log))  # built once (a statement built per call costs more than its run)


RAW_CHUNK = 1 << 20  # bytes written to the store at a time by store_raw_stream
_RAW = Prepared(insert(tables.raw_messages))  # built once, for the one-INSERT path of small bodies


@dataclass(frozen=True)
class StoredRaw:
    """A raw inbound message as kept: its row, SHA-256 (hex) and size in bytes."""

    message_id: int
    sha256: str
    size: int


def store_raw(gw: Gateway, actor: Actor, content_type: str | None, body: bytes | BinaryIO) -> int:
    """Keep the raw inbound message with its SHA-256, committed before it is processed."""
    return store_raw_stream(gw, actor, content_type, body).message_id


def store_raw_ahead(gw: Gateway, actor: Actor, content_type: str | None, body: bytes) -> None:
    """``store_raw`` for work that does not need the message's id: on PostgreSQL a small body's INSERT
    goes, committed in a transaction of its own, at the start of the work's first round trip to the
    database (``prepared.send_ahead``), ahead of the statements that process it, instead of in a round
    trip of its own (one of the four of a bundle or a kiosk decision), and without waiting for the disk
    (the request's own transaction writes it there with its own: ``prepared._NO_WAIT_FOR_DISK``). The
    caller must call ``prepared.flush_ahead`` once the work is done, for work that never reached the
    database (a request refused on its face is kept too). Elsewhere, and for a big body, it is
    ``store_raw``."""
    small = _small_body(body)
    if gw.engine.dialect.name != "postgresql" or small is None:
        store_raw(gw, actor, content_type, body)
        return
    prepared.send_ahead(gw.engine, _RAW, _small_row(gw, actor, content_type, small))


def _raw_values(gw: Gateway, actor: Actor, content_type: str | None) -> dict[str, Any]:
    """A raw message's row but for its body, size and SHA-256."""
    return {
        "received_at": gw.now(),
        "party_id": actor.party_id,
        "channel": actor.channel,
        "content_type": (content_type or "")[:100] or None,
        "request_id": logs.request_id(),
    }


def _small_row(gw: Gateway, actor: Actor, content_type: str | None, small: bytes) -> dict[str, Any]:
    """The whole row of a body of one chunk or less, stored with one plain INSERT."""
    sha256 = hashlib.sha256(small).hexdigest()
    return {**_raw_values(gw, actor, content_type), "sha256": sha256, "size": len(small), "body": small}


def store_raw_stream(
    gw: Gateway, actor: Actor, content_type: str | None, body: bytes | BinaryIO
) -> StoredRaw:
    """``store_raw`` for bodies of any size: the body (bytes, or a binary file read from where it
    stands to its end) goes into the store a chunk at a time, hashed on the way, so that storing it
    costs one chunk of memory and never a copy of the whole body. SQLite writes into a blob of the
    final size through incremental blob I/O; PostgreSQL receives it by COPY. The file is left at
    its end."""
    chunks = _raw_chunks(body)
    digest = hashlib.sha256()
    dialect = gw.engine.dialect.name
    table = tables.raw_messages
    # A body of one chunk or less (nearly every request) is one plain INSERT: the blob and COPY
    # machinery below pays off only for big bodies, and on PostgreSQL its temporary table per
    # request costs catalogue writes.
    small = _small_body(body)
    streamed = small is None
    if small is not None and dialect == "postgresql":
        # One INSERT is a transaction of its own: in autocommit it is committed when it returns, with
        # no BEGIN and COMMIT round trips around it (two of the few a request makes).
        row = _small_row(gw, actor, content_type, small)
        with prepared.each_statement_alone(gw.engine) as conn:
            message_id = _RAW.insert(conn, row)
        return StoredRaw(message_id, row["sha256"], len(small))
    values = _raw_values(gw, actor, content_type)
    with gw.engine.begin() as conn:
        if streamed and dialect == "sqlite":
            # Hashed first (a pass over the file or the bytes, no copy): the row is written once with
            # its SHA-256, since an UPDATE of the row would have SQLite rewrite the whole blob in memory.
            start = None if isinstance(body, bytes | bytearray | memoryview) else body.tell()
            size = 0
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
            if start is not None:
                body.seek(start)  # type: ignore[union-attr]
            sha256 = digest.hexdigest()
            result = conn.execute(
                insert(table).values(**values, sha256=sha256, size=size, body=func.zeroblob(size))
            )
            (streamed_id,) = result.inserted_primary_key or (None,)
            assert streamed_id is not None
            message_id = int(streamed_id)
            written, check = 0, hashlib.sha256()
            sqlite = conn.connection.driver_connection
            with sqlite.blobopen(table.name, "body", int(message_id)) as blob:  # type: ignore[union-attr]
                for chunk in _raw_chunks(body):
                    if written + len(chunk) > size:
                        raise ValueError("the raw message grew while it was being stored")
                    blob.write(chunk)
                    check.update(chunk)
                    written += len(chunk)
            if written != size or check.hexdigest() != sha256:
                raise ValueError("the raw message changed while it was being stored")
        elif streamed and dialect == "postgresql":
            size = 0
            conn.execute(text("CREATE TEMPORARY TABLE raw_upload (body bytea NOT NULL) ON COMMIT DROP"))
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy("COPY raw_upload (body) FROM STDIN") as copy:
                copy.write(b"\\\\x")  # text format: a backslash escaped, then bytea's hex form
                for chunk in chunks:
                    copy.write(binascii.hexlify(chunk))
                    digest.update(chunk)
                    size += len(chunk)
                copy.write(b"\n")
            cursor.close()
            upload = text("SELECT body FROM raw_upload").columns(body=table.c.body.type)
            result = conn.execute(
                insert(table)
                .from_select(
                    [*values, "sha256", "size", "body"],
                    select(
                        *(literal(v, table.c[k].type) for k, v in values.items()),
                        literal(digest.hexdigest(), table.c.sha256.type),
                        literal(size, table.c.size.type),
                        upload.subquery().c.body,
                    ),
                )
                .returning(table.c.message_id)
            )
            message_id = result.scalar_one()
        else:
            data = small if small is not None else b"".join(chunks)  # a dialect without streaming
            digest.update(data)
            size = len(data)
            message_id = _RAW.insert(
                conn, {**values, "sha256": digest.hexdigest(), "size": size, "body": data}
            )
    return StoredRaw(int(message_id), digest.hexdigest(), size)


def _small_body(body: bytes | BinaryIO) -> bytes | None:
    """The whole body when it is one chunk or less (an HTTP request spooled to a file included), read
    to its end; None for a bigger or unseekable one, which is streamed."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body) if len(body) <= RAW_CHUNK else None
    try:
        start = body.tell()
        size = body.seek(0, os.SEEK_END) - start
        body.seek(start)
    except (AttributeError, OSError, ValueError):
        return None
    return body.read() if size <= RAW_CHUNK else None


def _raw_chunks(body: bytes | BinaryIO) -> Iterator[bytes | memoryview]:
    if isinstance(body, bytes | bytearray | memoryview):
        view = memoryview(body)
        for start in range(0, len(view), RAW_CHUNK):
            yield view[start : start + RAW_CHUNK]
        return
    while chunk := body.read(RAW_CHUNK):
        yield chunk


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
