"""One injectable clock (design section 5): every rule reads the time from here, in Hong Kong time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

HONG_KONG = timezone(timedelta(hours=8), "HKT")


class Clock:
    """The wall clock. Tests and simulations pass a :class:`FixedClock` instead."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def today_hk(self) -> datetime:
        """Midnight today, Hong Kong time."""
        return self.now().astimezone(HONG_KONG).replace(hour=0, minute=0, second=0, microsecond=0)


class FixedClock(Clock):
    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("a clock needs an aware datetime")
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta
