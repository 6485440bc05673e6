"""Shared by the declaration tests: getting consignments across the border the real way (bundle, kiosk
release) and completing a prefilled declaration as a declarant would."""

from __future__ import annotations

import copy
from typing import Any

from gateway import clearance
from tests.border_support import Border

# What a declarant supplies for each kind of missing field (by the field's last name).
SUPPLIED: dict[str, Any] = {
    "id": "BR31234567",
    "hs_code": "95030090",
    "quantity": {"amount": "4000", "unit": "C62"},
    "country": "HK",
    "origin_country": "CN",
    "gross_mass_kg": 100,
    "value": {"amount": "1000.00", "currency": "HKD"},
    "destination_country": "US",
    "declarant": {"party_id": "12345678", "name": "Harbour Forwarding"},
    "vehicle": "AB1234",
}


def cross(b: Border, ccrns: list[str], vehicle: str = "AB1234", **kiosk: Any) -> None:
    """Bundle the consignments on a truck, wait out the lead time, and let the kiosk release it
    (``kiosk``: more fields of the kiosk request, such as a transhipment's ``elock_id``)."""
    b.bundle(ccrns, vehicle=vehicle)
    b.wait_lead_time()
    out = clearance.decide(b.gw, b.kiosk, b.arrive(vehicle=vehicle, **kiosk))
    assert out["decision"] == "RELEASE", out


def _fill(value: Any, name: str) -> Any:
    if isinstance(value, dict) and value.get("missing") is True:
        return copy.deepcopy(SUPPLIED[name])
    if isinstance(value, dict):
        return {k: _fill(v, k) for k, v in value.items() if k != "missing_fields"}
    if isinstance(value, list):
        return [_fill(v, name) for v in value]
    return value


def complete(prefilled: dict[str, Any], **lines: Any) -> dict[str, Any]:
    """The prefilled declaration with every missing field supplied; ``lines`` keyword ``packages`` and
    ``mass`` (lists, one per line) declare part of each item, ``only`` keeps some lines."""
    doc: dict[str, Any] = _fill(prefilled, "")
    if "only" in lines:
        doc["lines"] = [doc["lines"][i] for i in lines["only"]]
    for i, count in enumerate(lines.get("packages") or []):
        doc["lines"][i]["packages"]["count"] = count
    for i, mass in enumerate(lines.get("mass") or []):
        doc["lines"][i]["gross_mass_kg"] = mass
    return doc
