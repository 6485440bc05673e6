"""Prometheus metrics of operations, served at ``/metrics`` next to the per-route HTTP metrics.

- ``roadcargo_ingest_requests_total{channel, outcome}`` and ``roadcargo_ingest_seconds{channel}``: cargo
  information received per channel (json, edifact, xml, soap, sftp, portal), counted and timed where it
  is answered; ``outcome`` is ``accepted`` (2xx), ``refused`` (4xx) or ``failed`` (5xx).
- ``roadcargo_kiosk_decisions_total{decision}``: kiosk decisions by kind.
- Queue depths, read from the database and the mailboxes when Prometheus scrapes, never on a request:
  ``roadcargo_advance_notices_waiting``, ``roadcargo_sftp_inbox_files_waiting``,
  ``roadcargo_sftp_files_processing``, ``roadcargo_inspections_open``, and ``roadcargo_database_up``.
- The SFTP partners' state (``roadcargo_sftp_pull_*``) comes from the SFTP service's own collector.

Several processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory shared by the processes of one
host before starting them; counters and histograms are then written there and every process's
``/metrics`` answers with the sum over all of them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import Scope

from gateway import tables

CHANNELS = ("json", "edifact", "xml", "soap", "sftp", "portal")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

INGEST = Counter(
    "roadcargo_ingest_requests",
    "cargo information received, by channel and outcome",
    ["channel", "outcome"],
    registry=None,
)
INGEST_SECONDS = Histogram(
    "roadcargo_ingest_seconds",
    "time to answer a submission of cargo information, by channel",
    ["channel"],
    buckets=_BUCKETS,
    registry=None,
)
DECISIONS = Counter("roadcargo_kiosk_decisions", "kiosk decisions by kind", ["decision"], registry=None)

# Which routes receive cargo information, and on which channel. Matched on the route template, so the
# look-up is one dictionary access per request.
INGEST_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/consignments"): "json",
    ("PUT", "/api/v1/consignments/{ccrn}"): "json",
    ("DELETE", "/api/v1/consignments/{ccrn}"): "json",
    ("POST", "/api/v1/edifact"): "edifact",
    ("POST", "/api/v1/xml"): "xml",
    ("POST", "/soap/cargo"): "soap",
    ("POST", "/consignments/new"): "portal",
    ("POST", "/consignments/{ccrn}/amend"): "portal",
    ("POST", "/consignments/{ccrn}/cancel"): "portal",
    ("POST", "/upload"): "portal",
}


def _outcome(status: int) -> str:
    return "accepted" if status < 400 else "refused" if status < 500 else "failed"


def observe_ingest(channel: str, status: int, seconds: float) -> None:
    """Count and time one submission (the SFTP worker calls this for every file it processes)."""
    INGEST.labels(channel, _outcome(status)).inc()
    INGEST_SECONDS.labels(channel).observe(seconds)


def observe_http(scope: Scope, status: int, seconds: float) -> None:
    """The request middleware's hook: ingest routes only."""
    route = scope.get("route")
    channel = INGEST_ROUTES.get((scope["method"], getattr(route, "path", "")))
    if channel is not None:
        observe_ingest(channel, status, seconds)


def observe_decision(decision: Any) -> None:
    DECISIONS.labels(str(decision)).inc()


for _channel in CHANNELS:  # every channel shows from the start, at zero
    for _outcome_name in ("accepted", "refused", "failed"):
        INGEST.labels(_channel, _outcome_name)
    INGEST_SECONDS.labels(_channel)
for _decision in ("RELEASE", "INSPECT", "NOT_READY"):
    DECISIONS.labels(_decision)


class QueueDepths(Collector):
    """Gauges read from the database and the data directory at scrape time."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("roadcargo_database_up", "1 when the database answered this scrape")
        try:
            with self.gw.engine.connect() as conn:
                notices = conn.scalar(
                    select(func.count())
                    .select_from(tables.immigration_outbox)
                    .where(tables.immigration_outbox.c.delivered_at.is_(None))
                )
                inspections = conn.scalar(
                    select(func.count())
                    .select_from(tables.inspections)
                    .where(tables.inspections.c.status == "OPEN")
                )
                processing = conn.scalar(
                    select(func.count())
                    .select_from(tables.sftp_files)
                    .where(tables.sftp_files.c.status == "PROCESSING")
                )
        except Exception:  # the database is down: say so, and leave the depths out of this scrape
            up.add_metric([], 0.0)
            yield up
        else:
            up.add_metric([], 1.0)
            yield up
            yield GaugeMetricFamily(
                "roadcargo_advance_notices_waiting",
                "advance notices to Immigration not yet delivered (the outbox)",
                value=int(notices or 0),
            )
            yield GaugeMetricFamily(
                "roadcargo_inspections_open",
                "inspections waiting for an officer",
                value=int(inspections or 0),
            )
            yield GaugeMetricFamily(
                "roadcargo_sftp_files_processing",
                "SFTP files claimed and being processed",
                value=int(processing or 0),
            )
        yield GaugeMetricFamily(
            "roadcargo_sftp_inbox_files_waiting",
            "complete files in the SFTP mailbox inboxes, not yet processed",
            value=_inbox_files(self.gw),
        )


def _inbox_files(gw: Any) -> int:
    try:
        from adapters.sftp_worker import mailbox, mailbox_parties, waiting_files

        return sum(len(waiting_files(mailbox(gw, party).inbox)) for party in mailbox_parties(gw))
    except (OSError, ImportError):
        return 0


def install(registry: CollectorRegistry, gw: Any) -> None:
    """Add the operations metrics and the scrape-time queue depths to an application's registry."""
    for collector in (INGEST, INGEST_SECONDS, DECISIONS, QueueDepths(gw)):
        registry.register(collector)


def exposition(registry: CollectorRegistry) -> bytes:
    """The text of ``/metrics``. In multiprocess mode the counters and histograms are the sums the
    processes wrote into ``PROMETHEUS_MULTIPROC_DIR``; collectors read at scrape time (queue depths,
    SFTP) are asked here, as usual."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest(registry)
    from prometheus_client.multiprocess import MultiProcessCollector

    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    # prometheus_client has no public list of a registry's collectors.
    for collector in list(getattr(registry, "_collector_to_names", {})):
        if not isinstance(collector, MetricWrapperBase):
            merged.register(collector)
    return generate_latest(merged)
