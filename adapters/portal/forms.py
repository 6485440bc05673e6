"""The consignment form: the canonical record (design section 3) as HTML inputs and back.

Every input is named by the record's own field path (``consignor.name``, ``items[1].hs_code``,
``equipment[0].number``), the same path the one validation path reports a problem at, so the server's
error message lands next to the input it concerns without a mapping table to keep up to date.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Problem

PARTY_FIELDS = ("name", "address", "city", "postcode", "country", "id")
ITEM_FIELDS = (
    "package_count",
    "package_type",
    "package_description",
    "description",
    "hs_code",
    "gross_mass_kg",
    "value.amount",
    "value.currency",
    "origin_country",
    "marks",
)
TOP_FIELDS = (
    "direction",
    "submitter_reference",
    "expected_crossing",
    "control_point",
    "place_of_loading",
    "place_of_discharge",
    "vehicle_hint",
)
TRANSHIPMENT_FIELDS = ("mode", "airport", "air_waybill", "flight", "elock_id")
EQUIPMENT_FIELDS = ("number", "seals")
MAX_ROWS = 999  # the record's own limit on goods items
MAX_EQUIPMENT = 99
_INDEXED = re.compile(r"^(items|equipment)\[(\d{1,4})\]\.(.+)$")


@dataclass
class RecordForm:
    """The values of the form as text, by input name, and the problems found, by input name."""

    values: dict[str, str]
    items: int
    equipment: int
    errors: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    def names(self) -> set[str]:
        return input_names(self.items, self.equipment)

    def get(self, name: str) -> str:
        return self.values.get(name, "")


def input_names(items: int, equipment: int) -> set[str]:
    names = set(TOP_FIELDS)
    names |= {f"{who}.{f}" for who in ("consignor", "consignee") for f in PARTY_FIELDS}
    names |= {f"items[{i}].{f}" for i in range(items) for f in ITEM_FIELDS}
    names |= {f"equipment[{i}].{f}" for i in range(equipment) for f in EQUIPMENT_FIELDS}
    names |= {f"transhipment.{f}" for f in TRANSHIPMENT_FIELDS}
    return names


def blank(items: int = 1, equipment: int = 0) -> RecordForm:
    return RecordForm({}, max(items, 1), equipment)


def from_post(form: Mapping[str, Any]) -> RecordForm:
    """The posted inputs, with goods items and containers renumbered 0, 1, 2 ... in the order posted.

    Rows added or removed in the browser may leave gaps in the numbering; rows left wholly blank are
    dropped (a row count set higher than needed is no mistake)."""
    values: dict[str, str] = {}
    rows: dict[str, dict[int, dict[str, str]]] = {"items": {}, "equipment": {}}
    for name, raw in form.items():
        if not isinstance(raw, str):
            continue
        match = _INDEXED.match(name)
        if match:
            kind, index, rest = match.group(1), int(match.group(2)), match.group(3)
            allowed = ITEM_FIELDS if kind == "items" else EQUIPMENT_FIELDS
            if rest in allowed:
                rows[kind].setdefault(index, {})[rest] = raw
        elif name in TOP_FIELDS or name.partition(".")[0] in ("consignor", "consignee", "transhipment"):
            values[name] = raw
    counts = {}
    for kind, by_index in rows.items():
        kept = [row for _i, row in sorted(by_index.items()) if any(v.strip() for v in row.values())]
        limit = MAX_ROWS if kind == "items" else MAX_EQUIPMENT
        for n, row in enumerate(kept[:limit]):
            for rest, raw in row.items():
                values[f"{kind}[{n}].{rest}"] = raw
        counts[kind] = len(kept[:limit])
    return RecordForm(values, max(counts["items"], 1), counts["equipment"])


def resized(form: RecordForm, items: int, equipment: int) -> RecordForm:
    """The same form with this many rows (a row beyond the new count is dropped with its values)."""
    items = min(max(items, 1), MAX_ROWS)
    equipment = min(max(equipment, 0), MAX_EQUIPMENT)
    keep = input_names(items, equipment)
    return RecordForm({k: v for k, v in form.values.items() if k in keep}, items, equipment)


def without_row(form: RecordForm, kind: str, index: int) -> RecordForm:
    """Remove one goods item or container and renumber the rows after it."""
    values: dict[str, str] = {}
    for name, raw in form.values.items():
        match = _INDEXED.match(name)
        if match and match.group(1) == kind:
            i = int(match.group(2))
            if i == index:
                continue
            name = f"{kind}[{i - 1 if i > index else i}].{match.group(3)}"
        values[name] = raw
    items = form.items - (kind == "items" and form.items > 1 and index < form.items)
    equipment = form.equipment - (kind == "equipment" and index < form.equipment)
    return RecordForm(values, max(items, 1), max(equipment, 0))


def _number(text: str, whole: bool) -> Any:
    """Digits as a number for the record; anything else is left as text for the validator to name."""
    cleaned = text.strip().replace(",", "")
    if whole and re.fullmatch(r"[0-9]{1,12}", cleaned):
        return int(cleaned)
    if not whole and re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,6})?", cleaned):
        number = float(cleaned)
        return int(number) if number.is_integer() else number
    return text


def _party(values: Mapping[str, str], who: str) -> dict[str, Any]:
    return {f: values[f"{who}.{f}"] for f in PARTY_FIELDS if values.get(f"{who}.{f}", "").strip()}


def to_record(form: RecordForm) -> dict[str, Any]:
    """The record in its JSON shape. Empty inputs are left out: the validator says which are required."""
    v = form.values
    data: dict[str, Any] = {f: v[f] for f in TOP_FIELDS if v.get(f, "").strip()}
    for who in ("consignor", "consignee"):
        party = _party(v, who)
        if party:
            data[who] = party
    items: list[dict[str, Any]] = []
    for i in range(form.items):
        item: dict[str, Any] = {}
        for f in ITEM_FIELDS:
            text = v.get(f"items[{i}].{f}", "")
            if not text.strip():
                continue
            if f == "package_count":
                item[f] = _number(text, whole=True)
            elif f == "gross_mass_kg":
                item[f] = _number(text, whole=False)
            elif f.startswith("value."):
                item.setdefault("value", {})[f.partition(".")[2]] = text
            else:
                item[f] = text
        if item:
            items.append(item)
    if items:
        data["items"] = items
    equipment: list[dict[str, Any]] = []
    for i in range(form.equipment):
        number = v.get(f"equipment[{i}].number", "")
        seals = [s.strip() for s in re.split(r"[,\n]", v.get(f"equipment[{i}].seals", "")) if s.strip()]
        if number.strip() or seals:
            row: dict[str, Any] = {"number": number}
            if seals:
                row["seals"] = seals
            equipment.append(row)
    if equipment:
        data["equipment"] = equipment
    tranship = {
        f: v[f"transhipment.{f}"] for f in TRANSHIPMENT_FIELDS if v.get(f"transhipment.{f}", "").strip()
    }
    if tranship:
        data["transhipment"] = tranship
    return data


def from_record(record: Mapping[str, Any]) -> RecordForm:
    """A stored record as form values, for amending it."""
    values: dict[str, str] = {f: str(record[f]) for f in TOP_FIELDS if record.get(f) is not None}
    for who in ("consignor", "consignee"):
        for f in PARTY_FIELDS:
            if (record.get(who) or {}).get(f) is not None:
                values[f"{who}.{f}"] = str(record[who][f])
    items = list(record.get("items") or [])
    for i, item in enumerate(items):
        for f in ITEM_FIELDS:
            if f.startswith("value."):
                found = (item.get("value") or {}).get(f.partition(".")[2])
            else:
                found = item.get(f)
            if found is not None:
                values[f"items[{i}].{f}"] = str(found)
    equipment = list(record.get("equipment") or [])
    for i, box in enumerate(equipment):
        values[f"equipment[{i}].number"] = str(box.get("number", ""))
        if box.get("seals"):
            values[f"equipment[{i}].seals"] = ", ".join(box["seals"])
    for f in TRANSHIPMENT_FIELDS:
        if (record.get("transhipment") or {}).get(f) is not None:
            values[f"transhipment.{f}"] = str(record["transhipment"][f])
    return RecordForm(values, max(len(items), 1), len(equipment))


# A missing object or list is reported at its own path, which has no input: show it at its first one.
_WHOLE = {
    "consignor": "consignor.name",
    "consignee": "consignee.name",
    "items": "items[0].package_count",
    "transhipment": "transhipment.mode",
}


def _parent(path: str) -> str:
    """``items[0].value.amount`` -> ``items[0].value`` -> ``items[0]`` -> ``items`` -> ''."""
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rpartition(".")[0]


def place_problems(form: RecordForm, problems: Iterable[Problem]) -> None:
    """Put each problem next to the input of its field path, or of the nearest enclosing field that has
    an input (``equipment[0].seals[2]`` goes to ``equipment[0].seals``); the rest go above the form."""
    names = form.names()
    for problem in problems:
        path = problem.field or ""
        path = _WHOLE.get(path, path)
        while path and path not in names:
            path = _parent(path)
        if path:
            form.errors.setdefault(path, []).append(problem.message)
        else:
            where = f"{problem.field}: " if problem.field else ""
            form.general.append(f"{where}{problem.message}")


def input_id(name: str) -> str:
    """The id the templates give the input of a field path (``items[1].hs_code`` -> ``f-items-1-hs_code``)."""
    return "f-" + name.replace("[", "-").replace("]", "").replace(".", "-")


def label_of(name: str) -> tuple[str, int | None]:
    """The message key of a field's label, and the 1-based row of a goods item or container."""
    match = _INDEXED.match(name)
    if match:
        return f"f.{match.group(1)}.{match.group(3)}", int(match.group(2)) + 1
    if name.startswith(("consignor.", "consignee.")):
        return "f.party." + name.partition(".")[2], None
    return "f." + name, None
