"""Code lists, loaded from maintained sources, never hand-typed (design section 3).

ISO 3166 countries and ISO 4217 currencies come from ``pycountry``; package types are UN/ECE
Recommendation 21 as published (``data/rec21-package-types.csv``, EDIFACT data element 7065).
"""

from __future__ import annotations

import csv
import re
from functools import cache
from importlib import resources

import pycountry


@cache
def countries() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


@cache
def currencies() -> frozenset[str]:
    return frozenset(c.alpha_3 for c in pycountry.currencies)


@cache
def package_types() -> dict[str, str]:
    """Rec. 21 codes in force (the published file marks deleted entries with status ``X``)."""
    text = resources.files("gateway").joinpath("data/rec21-package-types.csv").read_text("utf-8")
    return {
        row["Code"]: row["Name"]
        for row in csv.DictReader(text.splitlines())
        if row["Status"].strip() != "X" and row["Code"]
    }


# UN/LOCODE: ISO 3166 country code and three letters or digits 2-9 (Rec. 16).
_LOCODE = re.compile(r"^[A-Z]{2}[A-Z2-9]{3}$")


def locode_problem(value: str) -> str | None:
    if not _LOCODE.match(value):
        return f"{value!r} is not a UN/LOCODE: a country code and three letters or digits 2-9"
    if value[:2] not in countries():
        return f"{value!r} is not a UN/LOCODE: {value[:2]!r} is not an ISO 3166 country"
    return None


@cache
def units() -> dict[str, str]:
    """UN/ECE Recommendation 20 units of measure (``data/rec20-units.csv``): code -> name, deleted
    entries (status ``X``, ``D``) left out. Declarations give their quantities in these (C62, KGM)."""
    text = resources.files("gateway").joinpath("data/rec20-units.csv").read_text("utf-8")
    return {
        row["Common Code"]: row["Name"]
        for row in csv.DictReader(text.splitlines())
        if (row.get("Status") or "").strip() not in ("X", "D") and row.get("Common Code")
    }
