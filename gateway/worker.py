"""Background work (design sections 11 and 12): what ``roadcargo worker`` runs alone, and what
``roadcargo serve`` runs in-process unless it is started with ``--no-background``.

Each job is a loop on a thread of its own, so that a slow partner never holds up the others:

- ``expiry``: consignments not crossed in time become ``EXPIRED`` (rows claimed ``FOR UPDATE SKIP
  LOCKED``, so two workers expire disjoint rows);
- ``advance-notices``: Immigration's advance notices from the durable outbox, the notices of a round in
  one request (claimed ``SKIP LOCKED`` with a lease: a worker that dies mid-send leaves its notices due
  again when the lease ends, and another worker sends them; Immigration recognises a notice sent twice
  by its id);
- ``sftp``: the SFTP mailbox processing and the partner pollers, through the SFTP channel's own entry
  point (``adapters.sftp_service``);
- ``retention``: the retention sweep (``gateway.retention.sweep``), idempotent.

Re-profiling after a profile or target change is done by the request that makes the change, and overdue
declarations are a query (``GET /api/v1/declarations/overdue``): neither is background work.

Any number of workers (and ``serve`` processes) may run against one PostgreSQL: every job is either
claimed with ``SKIP LOCKED`` or idempotent. A job that fails (the database restarting, its connections
terminated, a partner down) logs the failure and tries again with a backoff of 1, 2, 4 ... 30 seconds;
the engine pings connections before use and drops the whole pool after a disconnect, so the next round
works as soon as the database is back, without restarting the process. ``SIGTERM`` (or Ctrl-C) lets
each job finish the round it is in and stops the worker with exit code 0.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError, OperationalError

from gateway import consignments, db, heap
from gateway.context import Gateway

if TYPE_CHECKING:
    from adapters.immigration_client import ImmigrationClient

log = logging.getLogger("roadcargo.worker")

MAX_BACKOFF = 30.0
BATCH = 50  # advance notices per round, sent in one AdviseBundles request (the schema takes up to 100)


@dataclass
class Job:
    """One kind of periodic work: ``run`` returns True when it should run again at once (a full batch)."""

    name: str
    every: float
    run: Callable[[], bool]
    rounds: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError):
        return f"database: {str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _loop(job: Job, stop: threading.Event) -> None:
    while not stop.is_set():
        pause = job.every
        try:
            again = job.run()
            job.rounds += 1
            if job.consecutive_failures:
                log.info("%s: working again after %d failed rounds", job.name, job.consecutive_failures)
            job.consecutive_failures = 0
            if again:
                pause = 0
        except Exception as exc:  # a failed round is retried; a worker never dies of one
            job.failures += 1
            job.consecutive_failures += 1
            job.last_error = _describe(exc)
            pause = min(MAX_BACKOFF, 2.0 ** (job.consecutive_failures - 1))
            if isinstance(exc, OperationalError):  # the database is away: expected, no traceback
                log.warning("%s: %s; retrying in %.0f s", job.name, job.last_error, pause)
            else:
                log.exception("%s failed; retrying in %.0f s", job.name, pause)
        stop.wait(pause)


def _expiry(gw: Gateway) -> Callable[[], bool]:
    def run() -> bool:
        expired = consignments.expire_due(gw)
        if expired:
            log.info("expired %d consignments", expired)
        return False

    return run


def _advance_notices(gw: Gateway, client: ImmigrationClient) -> Callable[[], bool]:
    from gateway.advance_notices import deliver_due

    warmed = False

    def run() -> bool:
        nonlocal warmed
        if not warmed:  # the WSDL once, up front, so that the first kiosk request does not pay for it
            client.warm()
            warmed = True
        sent = deliver_due(gw, client, limit=BATCH)
        if sent.delivered:
            log.info("delivered %d advance notices to Immigration", sent.delivered)
        return sent.delivered + sent.failed >= BATCH and not sent.failed

    return run


def _checkpoint(gw: Gateway) -> Callable[[], bool]:
    """SQLite's write-ahead log copied into the database file outside every writer's turn (db.checkpoint)."""

    def run() -> bool:
        db.checkpoint(gw.engine)
        return False

    return run


def _optional(module: str, function: str) -> Callable[[Gateway], Any] | None:
    """A function of another part of the gateway that may not be installed in this version."""
    try:
        found = getattr(importlib.import_module(module), function, None)
    except ImportError:
        return None
    return found if callable(found) else None


def _periodic(gw: Gateway, sweep: Callable[[Gateway], Any], what: str) -> Callable[[], bool]:
    def run() -> bool:
        done = sweep(gw)  # the sweep logs what it did itself
        log.debug("%s: %s", what, done)
        return False

    return run


class Background:
    """The background jobs of one process, started and stopped together."""

    def __init__(
        self,
        gw: Gateway,
        immigration: ImmigrationClient | None = None,
        *,
        sftp: bool = False,
        expiry_every: float = 60.0,
        notices_every: float = 1.0,
        sweep_every: float = 3600.0,
    ) -> None:
        self.gw = gw
        self.stop_event = threading.Event()
        self.jobs: list[Job] = [Job("expiry", expiry_every, _expiry(gw))]
        if immigration is not None:
            self.jobs.append(Job("advance-notices", notices_every, _advance_notices(gw, immigration)))
        if db.checkpoint_wanted(gw.engine):
            self.jobs.append(Job("wal-checkpoint", db.CHECKPOINT_EVERY, _checkpoint(gw)))
        retention = _optional("gateway.retention", "sweep")
        if retention is not None:
            self.jobs.append(Job("retention", sweep_every, _periodic(gw, retention, "retention sweep")))
        self.sftp: Any = None
        self.with_sftp = sftp

    def start(self) -> None:
        for job in self.jobs:
            job.thread = threading.Thread(
                target=_loop, args=(job, self.stop_event), name=f"roadcargo-{job.name}", daemon=True
            )
            job.thread.start()
        if self.with_sftp:
            self.sftp = start_sftp_processing(self.gw)

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.sftp is not None:
            self.sftp.stop()
        for job in self.jobs:
            if job.thread is not None:
                job.thread.join(timeout)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "job": j.name,
                "rounds": j.rounds,
                "failures": j.failures,
                "consecutive_failures": j.consecutive_failures,
                "last_error": j.last_error,
            }
            for j in self.jobs
        ]


def start_sftp_processing(gw: Gateway) -> Any:
    """The SFTP mailbox worker and the partner pollers, without the listener (which ``serve`` runs),
    through the SFTP channel's own entry point (each mailbox and partner claimed by one process at a
    time); returns the running service (``stop()`` ends it)."""
    from adapters.sftp_service import start_processing

    return start_processing(gw)


def run_worker(gw: Gateway, immigration: ImmigrationClient | None, *, sftp: bool = True) -> int:
    """``roadcargo worker``: the background jobs until SIGTERM or Ctrl-C; exit code 0 after a clean stop."""
    background = Background(gw, immigration, sftp=sftp)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the rounds in progress", signum)
        stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        heap.settle()
        background.start()
        names = ", ".join(j.name for j in background.jobs) + (", sftp" if sftp else "")
        print(f"Road Cargo Gateway worker running: {names}; SIGTERM or Ctrl-C stops it", flush=True)
        while not stopping.wait(1.0):
            pass
    finally:
        background.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("worker stopped")
    return 0
