"""The border dashboard: what officers watch, counted from the store and drawn as SVG bar charts on the
server (no charting library, no CDN). Every bar carries its number as text, so the charts read without
colour, in print and to a screen reader (each chart also has a table-like text alternative)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup, escape
from sqlalchemy import func, select

from gateway import tables
from gateway.clock import HONG_KONG
from gateway.context import Gateway

HOURS_BACK = 12
HOURS_AHEAD = 4
DECISIONS = ("RELEASE", "INSPECT", "NOT_READY", "REFUSE")


@dataclass(frozen=True)
class Series:
    """One chart's bars: (label, value) in display order."""

    title: str
    bars: list[tuple[str, int]]

    @property
    def total(self) -> int:
        return sum(v for _label, v in self.bars)


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(HONG_KONG).replace(minute=0, second=0, microsecond=0)


def crossings_per_hour(gw: Gateway) -> dict[str, list[tuple[str, int]]]:
    """Consignments crossed per control point per hour, the last ``HOURS_BACK`` hours (HK time)."""
    now = gw.now()
    first = _hour(now) - timedelta(hours=HOURS_BACK - 1)
    hours = [first + timedelta(hours=i) for i in range(HOURS_BACK)]
    counts: dict[str, dict[datetime, int]] = {cp: {} for cp in gw.config.control_points}
    e = tables.events
    with gw.engine.connect() as conn:
        rows = conn.execute(select(e.c.at, e.c.data).where(e.c.type == "CROSSED", e.c.at >= first))
        for row in rows:
            point = json.loads(row.data).get("control_point")
            if point in counts:
                hour = _hour(row.at)
                counts[point][hour] = counts[point].get(hour, 0) + 1
    return {cp: [(h.strftime("%H:00"), by_hour.get(h, 0)) for h in hours] for cp, by_hour in counts.items()}


def decisions_by_kind(gw: Gateway) -> list[tuple[str, int]]:
    """Kiosk decisions of the last 24 hours by kind."""
    k = tables.clearances
    with gw.engine.connect() as conn:
        found: dict[str, int] = {
            str(decision): int(n)
            for decision, n in conn.execute(
                select(k.c.decision, func.count())
                .where(k.c.at >= gw.now() - timedelta(hours=24))
                .group_by(k.c.decision)
            )
        }
    return [(d, int(found.get(d, 0))) for d in DECISIONS]


def slot_load(gw: Gateway) -> dict[str, list[tuple[str, int, int]]]:
    """Bundles booked per slot for the next ``HOURS_AHEAD`` hours: (slot start, booked, capacity)."""
    now = gw.now()
    s = tables.slot_bookings
    with gw.engine.connect() as conn:
        rows = conn.execute(
            select(s.c.control_point, s.c.slot_start, s.c.booked)
            .where(
                s.c.slot_start >= now - timedelta(hours=1),
                s.c.slot_start < now + timedelta(hours=HOURS_AHEAD),
            )
            .order_by(s.c.control_point, s.c.slot_start)
        ).all()
    out: dict[str, list[tuple[str, int, int]]] = {}
    for row in rows:
        point = gw.config.control_points.get(row.control_point)
        if point is None:
            continue
        start = row.slot_start.astimezone(HONG_KONG)
        if start + timedelta(minutes=point.slot_minutes) <= now:
            continue  # a slot already over
        out.setdefault(row.control_point, []).append(
            (start.strftime("%H:%M"), int(row.booked), point.slot_capacity)
        )
    return out


def ingest_by_channel(gw: Gateway) -> list[tuple[str, int]]:
    """Inbound messages kept in the last 24 hours, by channel (each stored raw before processing)."""
    r = tables.raw_messages
    with gw.engine.connect() as conn:
        rows = conn.execute(
            select(r.c.channel, func.count())
            .where(r.c.received_at >= gw.now() - timedelta(hours=24))
            .group_by(r.c.channel)
            .order_by(r.c.channel)
        ).all()
    return [(str(channel), int(n)) for channel, n in rows]


def bar_chart(title: str, bars: list[tuple[str, int]], chart_id: str, maximum: int | None = None) -> Markup:
    """Horizontal bars, each with its label on the left and its number on the right."""
    row_height, label_width, bar_width, number_width = 26, 110, 320, 60
    height = max(len(bars), 1) * row_height + 8
    width = label_width + bar_width + number_width
    top = max([maximum or 0, *[v for _l, v in bars], 1])
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" '
        f'role="img" aria-labelledby="{escape(chart_id)}-title" preserveAspectRatio="xMinYMin meet">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}: '
        + escape(", ".join(f"{label} {value}" for label, value in bars))
        + "</title>",
    ]
    for i, (label, value) in enumerate(bars):
        y = 4 + i * row_height
        length = round(bar_width * value / top)
        drawn = max(length, 1) if value else 0
        parts.append(
            f'<text x="{label_width - 8}" y="{y + 17}" text-anchor="end" '
            f'class="chart-label">{escape(label)}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{drawn}" height="{row_height - 8}" '
            'class="chart-bar"/>'
            f'<text x="{label_width + length + 6}" y="{y + 17}" class="chart-value" '
            f'data-label="{escape(label)}">{value}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def charts(gw: Gateway, t: Any) -> dict[str, Any]:
    """Everything the dashboard page shows, charts drawn."""
    crossings = crossings_per_hour(gw)
    decisions = decisions_by_kind(gw)
    slots = slot_load(gw)
    ingest = ingest_by_channel(gw)
    return {
        "crossings": [
            (
                cp,
                sum(v for _h, v in bars),
                bar_chart(t("dashboard.crossings_at", point=cp), bars, f"crossings-{cp}"),
            )
            for cp, bars in crossings.items()
        ],
        "decisions": bar_chart(
            t("dashboard.decisions"), [(t("decision." + d), v) for d, v in decisions], "decisions"
        ),
        "decision_counts": decisions,
        "slots": [
            (
                cp,
                bar_chart(
                    t("dashboard.slots_at", point=cp),
                    [(start, booked) for start, booked, _cap in rows],
                    f"slots-{cp}",
                    maximum=rows[0][2] if rows else None,
                ),
                rows[0][2] if rows else 0,
            )
            for cp, rows in slots.items()
        ],
        "ingest": bar_chart(t("dashboard.ingest"), ingest, "ingest"),
        "ingest_counts": ingest,
    }
