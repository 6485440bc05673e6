"""The SFTP channel as ``roadcargo serve`` runs it: the mailbox worker, the hosted server and the pollers
of partners' servers, started and stopped together; their state for ``/metrics``; and the status report
of ``roadcargo sftp status`` (read from the database and the data directory, so that it also works from
another process than the server's)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from adapters import sftp_claims
from adapters.sftp_claims import LEASE_SECONDS
from adapters.sftp_pull import PullService, local_waiting
from adapters.sftp_server import SftpServer
from adapters.sftp_worker import PART, MailboxWorker, mailbox, mailbox_parties, waiting_files
from gateway import tables
from gateway.context import Gateway, iso_hk

log = logging.getLogger("roadcargo.sftp")

DEFAULT_PORT = 2222
RESCAN_SECONDS = 2.0  # how soon a worker finds files uploaded to another process's server


class SftpService:
    """The SFTP channel of one process. ``listen``: the mailbox server (``roadcargo serve``);
    ``background``: the mailbox worker and the partner pollers (``roadcargo serve`` unless
    ``--no-background``, and ``roadcargo worker``). Without a worker in the process, uploads wait in
    the inboxes for the worker of another process, which finds them by its rescan."""

    def __init__(
        self,
        gw: Gateway,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        threads: int = 2,
        *,
        background: bool = True,
        listen: bool = True,
        rescan_seconds: float = RESCAN_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.gw = gw
        self.host = host
        self.port = port
        self.listen = listen
        self.worker = MailboxWorker(gw, threads, rescan_seconds, lease_seconds) if background else None
        self.pull = PullService(gw, lease_seconds) if background else None
        self.server: SftpServer | None = None

    def start(self) -> str | None:
        """Start the worker, the pollers and the server. Returns why the server could not listen (the port
        is taken, no ssh-keygen for the host key) or None; the rest runs in any case, so files already in
        the mailboxes and the partners' servers are still served."""
        if self.worker is not None:
            self.worker.start()
        if self.pull is not None:
            self.pull.start()
        if not self.listen:
            return None
        try:
            server = SftpServer(self.gw, self.worker, self.host, self.port)
            server.start()
        except (OSError, RuntimeError) as exc:
            reason = f"{exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
            log.error("sftp: the mailbox server is not listening on %s:%d: %s", self.host, self.port, reason)
            return reason
        self.server = server
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.pull is not None:
            self.pull.stop()
        if self.worker is not None:
            self.worker.stop()

    def collector(self) -> Collector:
        return _Metrics(self)


# -- the entry points of background work (``roadcargo worker``, ``roadcargo serve``) ------------------


def start_processing(
    gw: Gateway,
    threads: int = 2,
    rescan_seconds: float = RESCAN_SECONDS,
    lease_seconds: float = LEASE_SECONDS,
) -> SftpService:
    """Start the mailbox processing and the partner polling of this process, without the SFTP server;
    returns the running service (``stop()`` ends it, ``collector()`` gives its metrics). Safe to run in
    any number of processes on one data directory and database: each mailbox and each partner is
    claimed by one process at a time."""
    service = SftpService(
        gw,
        threads=threads,
        background=True,
        listen=False,
        rescan_seconds=rescan_seconds,
        lease_seconds=lease_seconds,
    )
    service.start()
    return service


def run_background(
    gw: Gateway,
    stop: threading.Event,
    threads: int = 2,
    rescan_seconds: float = RESCAN_SECONDS,
    lease_seconds: float = LEASE_SECONDS,
) -> None:
    """Mailbox processing and partner polling until ``stop`` is set (blocks; for a worker's thread)."""
    service = start_processing(gw, threads, rescan_seconds, lease_seconds)
    try:
        stop.wait()
    finally:
        service.stop()


class _Metrics(Collector):
    def __init__(self, service: SftpService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        worker = self.service.worker
        if worker is not None:
            files = CounterMetricFamily(
                "roadcargo_sftp_mailbox_files", "mailbox files processed, by outcome", labels=["outcome"]
            )
            files.add_metric(["processed"], worker.processed)
            files.add_metric(["failed"], worker.failed)
            yield files
            yield GaugeMetricFamily(
                "roadcargo_sftp_mailbox_queued", "mailbox files queued or in work", worker.waiting()
            )
            yield CounterMetricFamily(
                "roadcargo_sftp_mailbox_claimed_elsewhere",
                "times a mailbox with files was found at work in another gateway process",
                worker.skipped,
            )
        if self.service.pull is None:
            return
        up = GaugeMetricFamily(
            "roadcargo_sftp_pull_up", "1 when the last round with a partner worked", labels=["partner"]
        )
        failing = GaugeMetricFamily(
            "roadcargo_sftp_pull_consecutive_failures", "failed rounds in a row", labels=["partner"]
        )
        failures = CounterMetricFamily("roadcargo_sftp_pull_failures", "failed rounds", labels=["partner"])
        elsewhere = CounterMetricFamily(
            "roadcargo_sftp_pull_claimed_elsewhere",
            "rounds left to another gateway process polling the partner",
            labels=["partner"],
        )
        fetched = CounterMetricFamily(
            "roadcargo_sftp_pull_files", "files fetched and processed", labels=["partner"]
        )
        delay = GaugeMetricFamily(
            "roadcargo_sftp_pull_next_attempt_seconds",
            "wait before the next round (backoff)",
            labels=["partner"],
        )
        success = GaugeMetricFamily(
            "roadcargo_sftp_pull_last_success_timestamp_seconds",
            "Unix time of the last good round",
            labels=["partner"],
        )
        for state in self.service.pull.states():
            up.add_metric([state.name], 1.0 if state.up else 0.0)
            failing.add_metric([state.name], state.consecutive_failures)
            failures.add_metric([state.name], state.failures_total)
            fetched.add_metric([state.name], state.files_total)
            elsewhere.add_metric([state.name], state.elsewhere)
            delay.add_metric([state.name], state.next_delay)
            success.add_metric([state.name], state.last_success or 0.0)
        yield from (up, failing, failures, fetched, elsewhere, delay, success)


# -- status -------------------------------------------------------------------------------------------

_F = tables.sftp_files
_S = tables.sftp_pull_status


def _latest(gw: Gateway, party_id: str, source: str) -> tuple[Any, Any]:
    with gw.engine.connect() as conn:
        success = conn.scalar(
            select(func.max(_F.c.completed_at)).where(
                _F.c.party_id == party_id, _F.c.source == source, _F.c.status == "DONE"
            )
        )
        error = conn.execute(
            select(_F.c.name, _F.c.error, _F.c.completed_at)
            .where(_F.c.party_id == party_id, _F.c.source == source, _F.c.status.in_(("FAILED", "ABORTED")))
            .order_by(_F.c.file_id.desc())
            .limit(1)
        ).first()
    return success, error


def status(gw: Gateway) -> dict[str, Any]:
    """Each mailbox and pull partner: files waiting, the last success, the last error."""
    with gw.engine.connect() as conn:
        with_keys = set(
            conn.scalars(select(tables.ssh_keys.c.party_id).where(tables.ssh_keys.c.revoked_at.is_(None)))
        )
        pulled = {r.name: r for r in conn.execute(select(_S))}
    claims = sftp_claims.current(gw)
    mailboxes = []
    for party_id in sorted(with_keys | set(mailbox_parties(gw))):
        inbox = mailbox(gw, party_id).inbox
        try:
            partial = sum(1 for p in inbox.iterdir() if p.name.endswith(PART))
        except FileNotFoundError:
            partial = 0
        success, error = _latest(gw, party_id, "mailbox")
        mailboxes.append(
            {
                "party_id": party_id,
                "waiting": len(waiting_files(inbox)),
                "partial": partial,
                "last_success": iso_hk(success),
                "last_error": None
                if error is None
                else {"at": iso_hk(error.completed_at), "file": error.name, "error": error.error},
                "at_work": _at_work(claims.get(("mailbox", party_id))),
            }
        )
    partners = []
    for cfg in gw.config.sftp.pull:
        row = pulled.get(cfg.name)
        partners.append(
            {
                "name": cfg.name,
                "party_id": cfg.party,
                "server": f"{cfg.user}@{cfg.host}:{cfg.port}",
                "waiting": local_waiting(gw, cfg.name),
                "last_attempt": iso_hk(row.last_attempt_at) if row else None,
                "last_success": iso_hk(row.last_success_at) if row else None,
                "consecutive_failures": row.consecutive_failures if row else 0,
                "files_fetched": row.files_fetched if row else 0,
                "last_error": None
                if row is None or row.last_error is None
                else {"at": iso_hk(row.last_error_at), "error": row.last_error},
                "at_work": _at_work(claims.get((f"pull:{cfg.name}", cfg.party))),
            }
        )
    return {"mailboxes": mailboxes, "pull": partners, "at": iso_hk(gw.now())}


def _at_work(claim: dict[str, Any] | None) -> dict[str, Any] | None:
    """Which gateway process works on a mailbox or partner now, on which file, until when."""
    if claim is None:
        return None
    return {"process": claim["owner"], "file": claim["file"], "lease_until": iso_hk(claim["lease_until"])}


def status_text(report: dict[str, Any]) -> str:
    lines = ["SFTP mailboxes:"]
    if not report["mailboxes"]:
        lines.append("  (none: register a key with 'roadcargo party ssh-key add PARTY FILE')")
    for box in report["mailboxes"]:
        error = box["last_error"]
        lines.append(
            f"  {box['party_id']}: {box['waiting']} waiting"
            + (f" (+{box['partial']} .part)" if box["partial"] else "")
            + f", last success {box['last_success'] or 'never'}"
            + (f", last error {error['at']} {error['file']}: {error['error']}" if error else ", no error")
            + _work_text(box.get("at_work"))
        )
    lines.append("SFTP pull partners:")
    if not report["pull"]:
        lines.append("  (none configured: [[sftp.pull]])")
    for partner in report["pull"]:
        error = partner["last_error"]
        lines.append(
            f"  {partner['name']} ({partner['server']}, party {partner['party_id']}): "
            f"{partner['waiting']} waiting, {partner['files_fetched']} fetched, "
            f"last success {partner['last_success'] or 'never'}"
            + (
                f", last error {error['at']} ({partner['consecutive_failures']} in a row): {error['error']}"
                if error
                else ", no error"
            )
            + _work_text(partner.get("at_work"))
        )
    return "\n".join(lines)


def _work_text(work: dict[str, Any] | None) -> str:
    if not work:
        return ""
    return f"; at work in {work['process']}" + (f" on {work['file']}" if work["file"] else "")
