"""The SFTP channel as ``roadcargo serve`` runs it: the mailbox worker, the hosted server and the pollers
of partners' servers, started and stopped together; their state for ``/metrics``; and the status report
of ``roadcargo sftp status`` (read from the database and the data directory, so that it also works from
another process than the server's)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from adapters.sftp_pull import PullService, local_waiting
from adapters.sftp_server import SftpServer
from adapters.sftp_worker import PART, MailboxWorker, mailbox, mailbox_parties, waiting_files
from gateway import tables
from gateway.context import Gateway, iso_hk

log = logging.getLogger("roadcargo.sftp")

DEFAULT_PORT = 2222


class SftpService:
    def __init__(
        self, gw: Gateway, host: str = "127.0.0.1", port: int = DEFAULT_PORT, threads: int = 2
    ) -> None:
        self.gw = gw
        self.host = host
        self.port = port
        self.worker = MailboxWorker(gw, threads=threads)
        self.server: SftpServer | None = None
        self.pull = PullService(gw)

    def start(self) -> str | None:
        """Start the worker, the pollers and the server. Returns why the server could not listen (the port
        is taken, no ssh-keygen for the host key) or None; the rest runs in any case, so files already in
        the mailboxes and the partners' servers are still served."""
        self.worker.start()
        self.pull.start()
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
        self.pull.stop()
        self.worker.stop()

    def collector(self) -> Collector:
        return _Metrics(self)


class _Metrics(Collector):
    def __init__(self, service: SftpService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        worker = self.service.worker
        files = CounterMetricFamily(
            "roadcargo_sftp_mailbox_files", "mailbox files processed, by outcome", labels=["outcome"]
        )
        files.add_metric(["processed"], worker.processed)
        files.add_metric(["failed"], worker.failed)
        yield files
        yield GaugeMetricFamily(
            "roadcargo_sftp_mailbox_queued", "mailbox files queued or in work", worker.waiting()
        )
        up = GaugeMetricFamily(
            "roadcargo_sftp_pull_up", "1 when the last round with a partner worked", labels=["partner"]
        )
        failing = GaugeMetricFamily(
            "roadcargo_sftp_pull_consecutive_failures", "failed rounds in a row", labels=["partner"]
        )
        failures = CounterMetricFamily("roadcargo_sftp_pull_failures", "failed rounds", labels=["partner"])
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
            delay.add_metric([state.name], state.next_delay)
            success.add_metric([state.name], state.last_success or 0.0)
        yield from (up, failing, failures, fetched, delay, success)


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
            }
        )
    return {"mailboxes": mailboxes, "pull": partners, "at": iso_hk(gw.now())}


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
        )
    return "\n".join(lines)
