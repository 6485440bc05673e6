"""Polling of partners' own SFTP servers (design section 9, ``[[sftp.pull]]`` in the configuration).

Each partner has its own thread, so a partner that is down or slow holds up no one else. A round: log in
(the server's host key must be the configured one: an unknown or changed key is refused), send the
replies still waiting, then for each new file in the partner's ``remote_inbox``: download it to a local
spool, process it as the partner's party, commit, remove it from the partner's server, and upload its
replies (``NAME.contrl.edi`` and ``NAME.cusres.edi``, ``NAME.ack.xml``, or ``NAME.error.txt``) to
``remote_outbox``. The spool is DATA_DIR/sftp-pull/NAME/{inbox,outbox,archive,failed}: a crash at any
point leaves the file or its replies there, and the next round goes on from where it was. A partner
that cannot be reached is retried with backoff; the failures are logged, kept in ``sftp_pull_status``
(for ``roadcargo sftp status``) and exported in ``/metrics``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass, field

import paramiko
from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from adapters import sftp_keys
from adapters.sftp_claims import LEASE_SECONDS, Claims
from adapters.sftp_worker import Layout, is_waiting, move, party_actor, process, settle, waiting_files
from gateway import tables
from gateway.config import SftpPullConfig
from gateway.context import Gateway
from gateway.errors import GatewayError

log = logging.getLogger("roadcargo.sftp.pull")

CONNECT_TIMEOUT = 10.0
IO_TIMEOUT = 60.0
MAX_BACKOFF = 900.0
_S = tables.sftp_pull_status


class PullError(Exception):
    """A round with a partner could not be done; the message says why, for the logs and the status."""


def spool(gw: Gateway, name: str) -> Layout:
    root = gw.config.data_path / "sftp-pull" / name
    return Layout(root / "inbox", root / "outbox", root / "archive", root / "failed", root / ".work")


def backoff(interval: float, failures: int) -> float:
    """Seconds until the next attempt after ``failures`` failed rounds in a row: the interval, doubled
    with each further failure, up to a quarter of an hour (or the interval, when that is longer)."""
    base = max(1.0, interval)
    if failures <= 0:
        return base
    return min(base * 2.0 ** min(failures - 1, 20), max(base, MAX_BACKOFF))


@dataclass
class PartnerState:
    """What ``/metrics`` and the logs say about one partner."""

    name: str
    party_id: str
    up: bool | None = None  # None until the first round
    consecutive_failures: int = 0
    failures_total: int = 0
    files_total: int = 0
    last_success: float | None = None  # Unix time
    last_error: str | None = None
    next_delay: float = 0.0
    elsewhere: int = 0  # rounds left to another gateway process that held the partner
    attempts: list[float] = field(default_factory=list)  # the latest attempt times, for backoff checks


class Poller:
    """One partner's polling thread."""

    def __init__(
        self, gw: Gateway, config: SftpPullConfig, stopping: threading.Event, claims: Claims | None = None
    ) -> None:
        self.gw = gw
        self.claims = claims if claims is not None else Claims(gw)
        self.config = config
        self.stopping = stopping
        self.layout = spool(gw, config.name)
        self.source = f"pull:{config.name}"
        self.state = PartnerState(config.name, config.party)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"roadcargo-sftp-pull-{self.config.name}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self.stopping.is_set():
            delay = self.round()
            self.stopping.wait(delay)

    def round(self) -> float:
        """One attempt; returns the seconds to wait until the next one. Never raises. A partner polled
        by another gateway process right now (its lane is claimed) is left to it for this round."""
        try:
            claimed = self.claims.acquire(self.source, self.config.party)
        except SQLAlchemyError as exc:
            claimed = False
            log.warning("sftp pull %s: cannot claim the partner now: %s", self.config.name, exc)
        if not claimed:
            with self._lock:
                self.state.elsewhere += 1
            return backoff(self.config.interval_seconds, 0)
        try:
            return self._round()
        finally:
            try:
                self.claims.release(self.source, self.config.party)
            except SQLAlchemyError as exc:  # the lease ends it
                log.warning("sftp pull %s: cannot release the partner: %s", self.config.name, exc)

    def _round(self) -> float:
        started = time.time()
        with self._lock:
            self.state.attempts = [*self.state.attempts[-9:], started]
        try:
            fetched = self.poll_once()
        except Exception as exc:  # whatever a partner or the network does, the thread goes on
            message = _describe(exc)
            with self._lock:
                self.state.up = False
                self.state.consecutive_failures += 1
                self.state.failures_total += 1
                self.state.last_error = message
                delay = backoff(self.config.interval_seconds, self.state.consecutive_failures)
                self.state.next_delay = delay
                failures = self.state.consecutive_failures
            log.warning(
                "sftp pull %s (%s:%d): round failed (%d in a row), next attempt in %.0f s: %s",
                self.config.name,
                self.config.host,
                self.config.port,
                failures,
                delay,
                message,
            )
            self._record(error=message)
            return delay
        delay = backoff(self.config.interval_seconds, 0)
        with self._lock:
            self.state.up = True
            self.state.consecutive_failures = 0
            self.state.files_total += fetched
            self.state.last_success = time.time()
            self.state.next_delay = delay
        self._record(fetched=fetched)
        return delay

    def snapshot(self) -> PartnerState:
        with self._lock:
            return PartnerState(**{**self.state.__dict__, "attempts": list(self.state.attempts)})

    # the round

    def poll_once(self) -> int:
        actor = party_actor(self.gw, self.config.party)
        if actor is None:
            raise PullError(
                f"party {self.config.party} of [[sftp.pull]] {self.config.name} is not registered"
            )
        if actor.status != "ACTIVE":
            raise PullError(
                f"party {self.config.party} is suspended: its server is not polled until an officer "
                "reinstates it"
            )
        self.layout.create()
        self._process_local()  # what a crash left in the spool
        client = self._connect()
        try:
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(IO_TIMEOUT)
            self._send_replies(sftp)
            fetched = 0
            for name in self._remote_files(sftp):
                if self.stopping.is_set():
                    break
                self._fetch(sftp, name)
                fetched += 1
            return fetched
        finally:
            client.close()

    def _connect(self) -> paramiko.SSHClient:
        cfg = self.config
        try:
            expected = sftp_keys.parse_public_key(cfg.host_key)
        except GatewayError as exc:
            raise PullError(
                f"host_key of [[sftp.pull]] {cfg.name} is not usable: {exc.problems[0].message}"
            ) from None
        try:
            identity = paramiko.PKey.from_path(cfg.private_key)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise PullError(f"private_key {cfg.private_key} cannot be read: {_describe(exc)}") from None
        client = paramiko.SSHClient()
        # Only the configured host key is trusted: nothing from ~/.ssh, and an unknown key is refused.
        known = client.get_host_keys()
        host_name = cfg.host if cfg.port == 22 else f"[{cfg.host}]:{cfg.port}"
        known.add(
            host_name, expected.algorithm, paramiko.PKey.from_type_string(expected.algorithm, expected.blob)
        )
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                cfg.host,
                port=cfg.port,
                username=cfg.user,
                pkey=identity,
                look_for_keys=False,
                allow_agent=False,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
                channel_timeout=CONNECT_TIMEOUT,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise PullError(
                f"the server's host key {sftp_keys.fingerprint(exc.key.asbytes())} is not the configured "
                f"{expected.fingerprint}: refused (a changed key must be confirmed in the configuration)"
            ) from None
        except BaseException:
            client.close()
            raise
        return client

    def _remote_files(self, sftp: paramiko.SFTPClient) -> list[str]:
        entries = sftp.listdir_attr(self.config.remote_inbox)
        names = []
        for entry in sorted(entries, key=lambda e: (e.st_mtime or 0, e.filename)):
            if entry.st_mode is not None and not stat.S_ISREG(entry.st_mode):
                continue
            if is_waiting(entry.filename):
                names.append(entry.filename)
            elif not entry.filename.endswith(".part") and not entry.filename.startswith("."):
                log.warning(
                    "sftp pull %s: skipped %r: not an acceptable file name", self.config.name, entry.filename
                )
        return names

    def _fetch(self, sftp: paramiko.SFTPClient, name: str) -> None:
        remote = posixpath.join(self.config.remote_inbox, name)
        tmp = self.layout.work / f"get-{secrets.token_hex(8)}"
        try:
            sftp.get(remote, str(tmp))
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            move(tmp, self.layout.inbox / name)
        finally:
            tmp.unlink(missing_ok=True)
        outcome = process(self.gw, self.config.party, self.source, self.layout.inbox / name)
        if not self.claims.holds(self.source, self.config.party):
            raise PullError(
                "this process lost its claim on the partner (paused past its lease): left to the other"
            )
        # Committed: only now may the partner's copy go.
        sftp.remove(remote)
        settle(self.gw, self.layout, name, outcome, error_to_outbox=True)
        log.info(
            "sftp pull %s: %s processed%s",
            self.config.name,
            name,
            "" if outcome.error is None else " (failed)",
        )
        self._send_replies(sftp)

    def _process_local(self) -> None:
        for name in waiting_files(self.layout.inbox):
            outcome = process(self.gw, self.config.party, self.source, self.layout.inbox / name)
            settle(self.gw, self.layout, name, outcome, error_to_outbox=True)

    def _send_replies(self, sftp: paramiko.SFTPClient) -> None:
        for path in sorted(p for p in self.layout.outbox.iterdir() if p.is_file()):
            target = posixpath.join(self.config.remote_outbox, path.name)
            part = target + ".part"
            sftp.put(str(path), part, confirm=True)
            try:
                sftp.posix_rename(part, target)
            except OSError:  # servers without the OpenSSH extension: plain rename, which never replaces
                with contextlib.suppress(OSError):  # not there: nothing to replace
                    sftp.remove(target)
                sftp.rename(part, target)
            path.unlink()

    # the shared record

    def _record(self, error: str | None = None, fetched: int = 0) -> None:
        now = self.gw.now()
        values: dict[str, object] = {"last_attempt_at": now, "party_id": self.config.party}
        if error is None:
            values.update(last_success_at=now, consecutive_failures=0)
        else:
            values.update(
                last_error_at=now,
                last_error=error[:2000],
                consecutive_failures=self.state.consecutive_failures,
            )
        try:
            with self.gw.engine.begin() as conn:
                row = conn.execute(select(_S.c.files_fetched).where(_S.c.name == self.config.name)).first()
                if row is None:
                    conn.execute(
                        insert(_S).values(
                            name=self.config.name,
                            files_fetched=fetched,
                            **{"consecutive_failures": 0, **values},
                        )
                    )
                else:
                    conn.execute(
                        update(_S)
                        .where(_S.c.name == self.config.name)
                        .values(files_fetched=_S.c.files_fetched + fetched, **values)
                    )
        except SQLAlchemyError as exc:
            log.warning("sftp pull %s: cannot record the status: %s", self.config.name, exc)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PullError):
        return str(exc)
    if isinstance(exc, paramiko.AuthenticationException):
        return f"the partner's server refused our key: {exc}"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = list(exc.errors.values())
        if causes and all(isinstance(c, ConnectionRefusedError) for c in causes):
            return "connection refused: the partner's server is down or not listening"
        return "cannot connect: " + "; ".join(str(c) for c in causes)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: the partner's server is down or not listening"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer from the partner's server in time"
    if isinstance(exc, FileNotFoundError):
        return f"no such file or folder on the partner's server: {exc.filename or exc}"
    if isinstance(exc, PermissionError):
        return f"permission denied on the partner's server: {exc.filename or exc}"
    if isinstance(exc, SQLAlchemyError):
        return f"the database is unavailable: {type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}"


class PullService:
    """All configured partners' pollers."""

    def __init__(self, gw: Gateway, lease_seconds: float = LEASE_SECONDS) -> None:
        self.gw = gw
        self.stopping = threading.Event()
        self.claims = Claims(gw, lease_seconds)
        self.pollers = [Poller(gw, cfg, self.stopping, self.claims) for cfg in gw.config.sftp.pull]

    def start(self) -> None:
        self.claims.start()
        for poller in self.pollers:
            poller.start()
            log.info(
                "sftp pull %s: polling %s@%s:%d every %d s as party %s",
                poller.config.name,
                poller.config.user,
                poller.config.host,
                poller.config.port,
                poller.config.interval_seconds,
                poller.config.party,
            )

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for poller in self.pollers:
            poller.join(max(0.0, deadline - time.monotonic()))
        self.claims.close(release=not any(p.alive() for p in self.pollers))

    def states(self) -> list[PartnerState]:
        return [p.snapshot() for p in self.pollers]


def local_waiting(gw: Gateway, name: str) -> int:
    """Files of a partner waiting in the local spool: fetched and not yet processed, or replies not sent."""
    layout = spool(gw, name)
    pending = len(waiting_files(layout.inbox))
    with contextlib.suppress(FileNotFoundError):
        pending += sum(1 for p in layout.outbox.iterdir() if p.is_file())
    return pending
