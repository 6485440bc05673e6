"""Shared setup for the border tests: a filer, a driver, a kiosk and an officer, consignments bundled on
a truck that has waited out its lead time, and a stand-in for Immigration.

``FakeImmigration`` is a test double of ``gateway.immigration.ImmigrationPort`` (the real zeep client is
tested against the SOAP simulator elsewhere): it answers what a test tells it, slowly, or by raising."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from gateway import bundles, consignments
from gateway.context import Actor, Gateway
from gateway.immigration import ClearanceQuery
from tests.factories import Parties, record


class FakeImmigration:
    def __init__(self, answer: Any = "CLEARED", delay: float = 0.0, error: Exception | None = None) -> None:
        self.answer = answer
        self.delay = delay
        self.error = error
        self.calls: list[ClearanceQuery] = []

    def clear(self, query: ClearanceQuery) -> Any:
        self.calls.append(query)
        if self.delay:
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.answer


@dataclass
class Border:
    gw: Gateway
    filer: Actor
    filer_key: str
    driver: Actor
    driver_key: str
    kiosk: Actor
    kiosk_key: str
    officer: Actor
    officer_key: str
    immigration: FakeImmigration = field(default_factory=FakeImmigration)
    _refs: int = 0

    def lodge(self, **overrides: Any) -> str:
        self._refs += 1
        overrides.setdefault("submitter_reference", f"REF-{self._refs}")
        return str(consignments.lodge(self.gw, self.filer, record(**overrides)).view["ccrn"])

    def bundle(self, ccrns: list[str], vehicle: str = "AB1234", control_point: str = "LMC") -> dict[str, Any]:
        return bundles.bundle(self.gw, self.driver, vehicle, control_point, ccrns)

    def wait_lead_time(self) -> None:
        self.gw.clock.advance(timedelta(minutes=self.gw.config.rules.bundle_lead_minutes + 1))  # type: ignore[attr-defined]

    def arrive(self, vehicle: str = "AB1234", **extra: Any) -> dict[str, Any]:
        return {
            "control_point": "LMC",
            "lane": "1",
            "vehicle": vehicle,
            "driver_document": "K1234567",
            **extra,
        }


def border(gw: Gateway, party: Parties) -> Border:
    filer, filer_key = party.add(name="Forwarder")
    driver, driver_key = party.add(role="driver", name="Driver")
    kiosk, kiosk_key = party.add(role="kiosk", name="LMC kiosk 1", control_point="LMC")
    officer, officer_key = party.add(role="officer", name="Officer")
    b = Border(gw, filer, filer_key, driver, driver_key, kiosk, kiosk_key, officer, officer_key)
    gw.immigration = b.immigration
    # No random selection unless a test asks for it: a clean truck must be released every time.
    gw.config = dataclasses.replace(gw.config, risk=dataclasses.replace(gw.config.risk, random_rate=0.0))
    return b
