"""SFTP work claimed across gateway processes (design section 11, issue 10: several ``roadcargo serve``
and ``roadcargo worker`` processes on one data directory and one database).

What a process works on is a *lane*: a party's hosted mailbox (``("mailbox", PARTY)``) or one polled
partner (``("pull:NAME", PARTY)``). A lane is claimed with a row in ``sftp_claims`` before any of its
files is touched, and only its claimant processes, moves or fetches its files, oldest first; so no file
is processed by two processes, and a party's amendment still follows its lodgement.

A claim is a lease: the claimant renews it while it works (a heartbeat thread), and a claim whose lease
ran out (its process died or hung) is taken over by the next process that wants the lane. A claimant
that is known to be dead is taken over at once: the same machine (host name, boot and PID namespace)
and its PID is gone, or it is this very process and the claim's worker was stopped. The lease is kept
by each host's own clock: the hosts of one gateway must keep their clocks in step (NTP), well within
the lease (60 s by default).

Why a lease and not a row lock held with ``SELECT ... FOR UPDATE SKIP LOCKED``: processing a big file
takes many transactions (its consignments are committed in batches) and minutes; SQLite, the embedded
default, has no row locks and a write transaction held that long would stop every other writer. The
claim itself is taken in one short transaction on both engines: an insert that does nothing on conflict
(``INSERT ... ON CONFLICT DO NOTHING``), else a takeover by an update conditioned on the old owner, which
PostgreSQL re-checks after a concurrent takeover commits, so exactly one process wins.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from gateway import tables
from gateway.context import Gateway

log = logging.getLogger("roadcargo.sftp")

LEASE_SECONDS = 60.0
_C = tables.sftp_claims
_live_tokens: set[str] = set()  # the claimants of this process that are running
_live_lock = threading.Lock()


def _utcnow() -> datetime:
    """Leases run on the wall clock, not on the gateway's (injectable, business) clock."""
    return datetime.now(UTC)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _machine() -> str:
    """Host, boot and PID namespace: PIDs are comparable only between processes that share all three."""
    try:
        pid_namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pid_namespace = "-"
    boot = _read("/proc/sys/kernel/random/boot_id")[:8] or "-"
    return f"{socket.gethostname()[:100]}/{boot}/{pid_namespace}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def owner_is_dead(owner: str) -> bool:
    """Whether the claimant ``owner`` is known to be gone. False when it cannot be told (another
    machine): its lease decides then."""
    machine, _, rest = owner.rpartition("/pid:")
    pid_text, _, token = rest.partition("/")
    if machine != _machine() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        with _live_lock:
            return token not in _live_tokens
    return not _alive(pid)


class Claims:
    """The lanes one worker (or poller service) of this process claims, with their heartbeat."""

    def __init__(self, gw: Gateway, lease_seconds: float = LEASE_SECONDS) -> None:
        self.gw = gw
        self.lease = timedelta(seconds=max(1.0, lease_seconds))
        self.token = secrets.token_hex(6)
        self.owner = f"{_machine()}/pid:{os.getpid()}/{self.token}"
        self._held: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        with _live_lock:
            _live_tokens.add(self.token)

    # life

    def start(self) -> None:
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="roadcargo-sftp-claims", daemon=True)
        self._heartbeat.start()

    def close(self, release: bool = True) -> None:
        """Stop the heartbeat; with ``release`` the lanes still held are given up (nothing is at work on
        them any more), without, they are left to their leases."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        if release:
            with self._lock:
                held = list(self._held)
            for source, party_id in held:
                self.release(source, party_id)
            with _live_lock:
                _live_tokens.discard(self.token)

    def _beat(self) -> None:
        interval = max(0.2, self.lease.total_seconds() / 4)
        while not self._stop.wait(interval):
            try:
                self.renew_all()
            except SQLAlchemyError as exc:
                log.warning("sftp: cannot renew the claims of %s: %s", self.owner, exc)

    # claiming

    def acquire(self, source: str, party_id: str, file_name: str | None = None) -> bool:
        """Claim the lane for this worker; False when another live process holds it."""
        now = _utcnow()
        values = {
            "source": source,
            "party_id": party_id,
            "owner": self.owner,
            "file_name": None if file_name is None else file_name[:255],
            "claimed_at": now,
            "lease_until": now + self.lease,
        }
        with self.gw.engine.begin() as conn:
            if _insert_if_absent(conn, values):
                taken = True
            else:
                lane = (_C.c.source == source, _C.c.party_id == party_id)
                row = conn.execute(select(_C.c.owner, _C.c.lease_until).where(*lane)).first()
                if row is None:  # released meanwhile: the next scan claims it
                    return False
                if row.owner != self.owner and row.lease_until > now and not owner_is_dead(row.owner):
                    return False
                result = conn.execute(
                    update(_C)
                    .where(_C.c.source == source, _C.c.party_id == party_id, _C.c.owner == row.owner)
                    .values(**values)
                )
                taken = result.rowcount == 1
                if taken and row.owner != self.owner:
                    log.warning(
                        "sftp: took over %s of party %s from %s (%s)",
                        source,
                        party_id,
                        row.owner,
                        "its lease ran out" if row.lease_until <= now else "that process is gone",
                    )
        if taken:
            with self._lock:
                self._held[(source, party_id)] = file_name
        return taken

    def note(self, source: str, party_id: str, file_name: str | None) -> None:
        """Record which file of a held lane is at work (for ``roadcargo sftp status``), renewing it."""
        with self._lock:
            if (source, party_id) not in self._held:
                return
            self._held[(source, party_id)] = file_name
        with self.gw.engine.begin() as conn:
            conn.execute(
                update(_C)
                .where(_C.c.source == source, _C.c.party_id == party_id, _C.c.owner == self.owner)
                .values(
                    file_name=None if file_name is None else file_name[:255],
                    lease_until=_utcnow() + self.lease,
                )
            )

    def renew_all(self) -> None:
        with self._lock:
            held = set(self._held)
        if not held:
            return
        with self.gw.engine.begin() as conn:
            kept = {
                (r.source, r.party_id)
                for r in conn.execute(
                    update(_C)
                    .where(_C.c.owner == self.owner)
                    .values(lease_until=_utcnow() + self.lease)
                    .returning(_C.c.source, _C.c.party_id)
                )
            }
        for source, party_id in held - kept:
            with self._lock:
                still = (source, party_id) in self._held
                self._held.pop((source, party_id), None)
            if still:
                log.error(
                    "sftp: %s lost its claim on %s of party %s (its lease ran out while it was at work): "
                    "it leaves the file to the process that took it over (the work is idempotent)",
                    self.owner,
                    source,
                    party_id,
                )

    def release(self, source: str, party_id: str) -> None:
        with self._lock:
            self._held.pop((source, party_id), None)
        with self.gw.engine.begin() as conn:
            conn.execute(
                delete(_C).where(_C.c.source == source, _C.c.party_id == party_id, _C.c.owner == self.owner)
            )

    def holds(self, source: str, party_id: str) -> bool:
        with self._lock:
            return (source, party_id) in self._held


def _insert_if_absent(conn: Connection, values: dict[str, Any]) -> bool:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return conn.execute(pg_insert(_C).values(**values).on_conflict_do_nothing()).rowcount == 1
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return conn.execute(sqlite_insert(_C).values(**values).on_conflict_do_nothing()).rowcount == 1
    try:  # pragma: no cover - other engines are not supported; kept correct all the same
        with conn.begin_nested():
            conn.execute(insert(_C).values(**values))
        return True
    except IntegrityError:  # pragma: no cover
        return False


def current(gw: Gateway) -> dict[tuple[str, str], dict[str, Any]]:
    """Every live claim, by lane: who works on it, on which file, until when."""
    now = _utcnow()
    with gw.engine.connect() as conn:
        rows = conn.execute(select(_C)).all()
    return {
        (r.source, r.party_id): {"owner": r.owner, "file": r.file_name, "lease_until": r.lease_until}
        for r in rows
        if r.lease_until > now
    }
