"""Test data: a valid record to start from, and parties registered through the real service."""

from __future__ import annotations

import copy
import time
from typing import Any

from sqlalchemy import text

from gateway import parties
from gateway.context import SYSTEM, Actor, Gateway

_RECORD: dict[str, Any] = {
    "direction": "IMPORT",
    "submitter_reference": "CMR-2026-0001",
    "consignor": {
        "name": "Shenzhen Bright Toys Manufacturing Co Ltd",
        "address": "18 Industrial Avenue, Bao'an District",
        "city": "Shenzhen",
        "postcode": "518000",
        "country": "CN",
    },
    "consignee": {"name": "Harbour Traders Ltd", "address": "2 Harbour Road, Wan Chai", "country": "HK"},
    "expected_crossing": "2026-12-02",
    "control_point": "LMC",
    "items": [
        {
            "package_count": 40,
            "package_type": "CT",
            "package_description": "cartons",
            "description": "plastic toy building blocks",
            "hs_code": "950300",
            "gross_mass_kg": 480.5,
            "value": {"amount": "12500.00", "currency": "HKD"},
            "origin_country": "CN",
            "marks": "BT/HK 1-40",
        }
    ],
    "place_of_loading": "CNSZX",
    "place_of_discharge": "HKHKG",
    "equipment": [{"number": "CSQU3054383", "seals": ["SEAL0001"]}],
}


def record(**overrides: Any) -> dict[str, Any]:
    """A valid record; keyword arguments replace top-level fields (None removes one)."""
    data = copy.deepcopy(_RECORD)
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


class Parties:
    """Registers parties through the real service and remembers their keys."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def add(self, role: str = "forwarder", name: str = "Test Party", **kw: Any) -> tuple[Actor, str]:
        """A new party: its actor (as the HTTP channel sees it) and its API key."""
        new = parties.add_party(self.gw, SYSTEM, role, name, **kw)
        return parties.authenticate(self.gw, new.api_key, "http"), new.api_key


def wait_for_a_lock_wait(gw: Gateway, what: str, seconds: float = 10.0) -> None:
    """Wait until a session of the PostgreSQL server behind ``gw`` waits for a row lock (``what`` names it
    in the failure)."""
    deadline = time.monotonic() + seconds
    with gw.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).scalar()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.05)
    raise AssertionError(f"{what} never waited for a lock")
