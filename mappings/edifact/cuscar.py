"""CUSCAR (D.96B and D.01B) -> the canonical record: one business action per consignment (CNI group).

The implementation guide is design section 9; positions, tags and data element numbers below are those
of the UN/EDIFACT D.96B directory (``untdid/d96b/CUSCAR_D.96B`` for the segment table, ``TRSD.96B`` for
segment layouts, ``UNCL-*.96B`` for codes). D.01B keeps every segment and element used here in the same
place, so one guide serves both directories.

Segment-to-field table (``elements[i]`` counts data elements after the tag from 0; ``:j`` a component)

| pos  | group   | segment (qualifier)      | element           | canonical field                           |
|------|---------|--------------------------|-------------------|-------------------------------------------|
| 0020 | -       | BGM (C002 1001 = 85)     | C106 1004         | CUSRES ``RFF+ACW`` (document number)      |
| 0020 | -       | BGM                      | 1225              | action: 9 lodge, 5 amend, 1 cancel        |
| 0140 | SG4     | TDT (8051 = 20)          | C222 8213         | ``vehicle_hint``                          |
| 0150 | SG4     | LOC (3227 = 41 or 42)    | C517 3225         | ``control_point`` (office of entry/exit)  |
| 0160 | SG4     | DTM (2005 = 132 or 133)  | C507 2380 / 2379  | ``expected_crossing`` (102, 203, 303)     |
| 0170 | -       | GIS (7365 = 23 or 22)    | C529 7365         | ``direction``: 23 IMPORT, 22 EXPORT       |
| 0190 | SG5     | EQD (8053 = CN)          | C237 8260         | ``equipment[].number``                    |
| 0230 | SG5     | SEL                      | 9308              | ``equipment[].seals[]``                   |
| 0230 | SG5     | SEL (C215 9303 = CU)     | 9308              | ``transhipment.elock_id`` (customs e-lock)|
| 0310 | SG7     | CNI                      | C503 1004         | ``submitter_reference``; CUSRES ``DOC``   |
| 0340 | SG8     | RFF (1153 = CMR)         | C506 1154         | the road consignment note (= CNI 1004)    |
| 0340 | SG8     | RFF (1153 = XC)          | C506 1154         | the CCRN to amend or cancel               |
| 0370 | SG8     | LOC (3227 = 9)           | C517 3225         | ``place_of_loading``                      |
| 0370 | SG8     | LOC (3227 = 11)          | C517 3225         | ``place_of_discharge``                    |
| 0370 | SG8     | LOC (3227 = 27)          | C517 3225         | ``items[].origin_country`` (every item)   |
| 0380 | SG8     | GIS (7365 = 28)          | C529 7365         | ``transhipment`` present                  |
| 0380 | SG8     | GIS (7365 = 23 or 22)    | C529 7365         | ``direction`` of this consignment         |
| 0420 | SG9     | TDT (8051 = 30 / 10)     | 8051              | ``transhipment.mode`` (see below)         |
| 0420 | SG9     | TDT                      | 8028              | ``transhipment.flight``                   |
| 0430 | SG9     | LOC (3227 = 8 or 9)      | C517 3225         | ``transhipment.airport``                  |
| 0470 | SG10    | RFF (1153 = AWB)         | C506 1154         | ``transhipment.air_waybill``              |
| 0500 | SG11    | NAD (3035 = CZ / CN)     | C082 3039         | ``consignor`` / ``consignee`` ``.id``     |
| 0500 | SG11    | NAD                      | C080 3036 (x5)    | ``.name``                                 |
| 0500 | SG11    | NAD                      | C059 3042 (x4)    | ``.address``                              |
| 0500 | SG11    | NAD                      | 3164, 3251, 3207  | ``.city``, ``.postcode``, ``.country``    |
| 0600 | SG14    | GID                      | C213 7224         | ``items[].package_count``                 |
| 0600 | SG14    | GID                      | C213 7065         | ``items[].package_type`` (Rec. 21)        |
| 0600 | SG14    | GID                      | C213 7064         | ``items[].package_description``           |
| 0630 | SG14    | FTX (4451 = AAA)         | C108 4440 (x5)    | ``items[].description``                   |
| 0640 | SG14    | MEA (AAE, C502 6313 = G) | C174 6411 KGM, 6314 | ``items[].gross_mass_kg``               |
| 0650 | SG14    | MOA (C516 5025 = 40)     | C516 5004, 6345   | ``items[].value.amount``, ``.currency``   |
| 0660 | SG14    | SGP                      | C237 8260         | which SG5 equipment the consignment uses  |
| 0680 | SG14    | PCI (4233 = 24)          | C210 7102 (x10)   | ``items[].marks``                         |
| 0690 | SG14    | CST                      | C246 7361         | ``items[].hs_code``                       |

TDT 8051 30 (on-carriage by air) is LAND_TO_AIR, 10 (pre-carriage by air) AIR_TO_LAND.
Texts split over repeated components are joined: a component filled to its full length continues the
word in the next one; a shorter one ends at a word boundary (a space is put back). A number that cannot be
read is passed on as text, so that the one validation path reports it against its field.
A consignment's equipment is the SG5 equipment its goods items place goods in (SGP); a consignment with
no SGP travels in every SG5 container of the message (one truck, one container).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydifact.segments import Segment

from gateway.errors import Problem

if TYPE_CHECKING:  # imported when first needed: the reader process never needs it (nor the database)
    from gateway.consignments import Submission

ACTIONS = {"9": "lodge", "5": "amend", "1": "cancel"}
_DIRECTION = {"23": "IMPORT", "22": "EXPORT"}
_CROSSING_DTM = {"132": "IMPORT", "133": "EXPORT"}
_CONTROL_LOC = {"41": "IMPORT", "42": "EXPORT"}
_TRANSHIPMENT_MODE = {"30": "LAND_TO_AIR", "10": "AIR_TO_LAND"}
_PARTY = {"CZ": "consignor", "CN": "consignee"}
_ITEM_TAGS = frozenset({"PAC", "HAN", "FTX", "MEA", "MOA", "SGP", "DGS", "PCI", "CST"})  # SG14 after GID


def element(segment: Segment, index: int, component: int = 0) -> str:
    """A component's text, '' when absent: a simple element is its own component 0."""
    elements = segment.elements
    if index >= len(elements):
        return ""
    value = elements[index]
    if isinstance(value, list):
        return value[component] if component < len(value) else ""
    return value if component == 0 else ""


def components(segment: Segment, index: int) -> list[str]:
    elements = segment.elements
    if index >= len(elements):
        return []
    value = elements[index]
    return list(value) if isinstance(value, list) else [value]


def join_text(parts: list[str], width: int) -> str:
    """Join an element split over components of ``width`` characters (see the module notes)."""
    out = previous = ""
    for part in parts:
        if not part:
            continue
        out += part if (not out or len(previous) == width) else " " + part
        previous = part
    return out.strip()


def _number(text: str, decimal_mark: str) -> Any:
    """A numeric element as int or float; unreadable text is returned as it is, for validation."""
    cleaned = text.strip().replace(decimal_mark, ".").replace(",", ".")
    try:
        value = float(cleaned)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in cleaned else value


def _amount(text: str, decimal_mark: str) -> str:
    return text.strip().replace(decimal_mark, ".").replace(",", ".")


def edifact_datetime(value: str, fmt: str) -> str:
    """DTM C507 to ISO 8601: 102 a Hong Kong date, 203 Hong Kong time, 303 with its own zone
    (ZZZ as +HH, +HHMM or UTC). Anything else is returned as written, for validation to refuse."""
    v = value.strip()
    if fmt == "102" and len(v) == 8 and v.isdigit():
        return f"{v[:4]}-{v[4:6]}-{v[6:]}"
    if fmt in ("203", "303") and len(v) >= 12 and v[:12].isdigit():
        stamp = f"{v[:4]}-{v[4:6]}-{v[6:8]}T{v[8:10]}:{v[10:12]}:00"
        if fmt == "203" and len(v) == 12:
            return stamp + "+08:00"
        zone = v[12:].upper()
        if zone in ("UTC", "Z", "GMT", "+00", "+0000"):
            return stamp + "+00:00"
        if len(zone) in (3, 5) and zone[0] in "+-" and zone[1:].isdigit():
            return f"{stamp}{zone[:3]}:{zone[3:5] or '00'}"
    return v


@dataclass
class Consignment:
    """One CNI group as read: the action to submit, or the problems that stop it being submitted."""

    sequence: str
    reference: str
    position: int  # of the CNI segment in its message (UNH is 1)
    action: str | None
    problems: list[Problem] = field(default_factory=list)
    sources: dict[str, tuple[str, int]] = field(default_factory=dict)
    # per goods item: field -> (tag, position); "" is the item's GID
    item_sources: list[dict[str, tuple[str, int]]] = field(default_factory=list)
    # what to submit: (action, record in its JSON shape, CCRN), None when it cannot be submitted
    submits: tuple[str, Any, str | None] | None = None

    @property
    def submission(self) -> Submission | None:
        """The action for ``gateway.consignments.submit``."""
        if self.submits is None:
            return None
        from gateway.consignments import Submission

        action, record, ccrn = self.submits
        return Submission(action, record=record, ccrn=ccrn)

    def error_point(self, path: str | None) -> tuple[str, int]:
        """The segment a field came from (tag, position in message); the CNI when it is not known."""
        if path and path.startswith("items[") and "]" in path:
            index, _, rest = path[6:].partition("]")
            if index.isdigit() and int(index) < len(self.item_sources):
                at = self.item_sources[int(index)]
                name = rest.lstrip(".").split(".")[0]
                return at.get(name) or at[""]
        if path:
            best = ""
            for key in self.sources:
                if (path == key or path.startswith(key + ".") or path.startswith(key + "[")) and len(
                    key
                ) > len(best):
                    best = key
            if best:
                return self.sources[best]
        return "CNI", self.position


@dataclass
class _Header:
    """What the message level says for every consignment."""

    doc_number: str = ""
    function: str = ""
    vehicle: str | None = None
    control_point: tuple[str, int] | None = None
    crossing: tuple[str, int] | None = None
    direction: tuple[str, int] | None = None
    equipment: list[dict[str, Any]] = field(default_factory=list)
    equipment_at: list[int] = field(default_factory=list)
    vehicle_at: int = 0
    elock: str | None = None


class CuscarReader:
    """Maps one CUSCAR message fed segment by segment, handing back each consignment when its CNI group
    ends, so that a message of any size is never held in memory as a whole."""

    def __init__(self, decimal_mark: str = ".") -> None:
        self.decimal_mark = decimal_mark
        self.header = _Header()
        self.group = "header"
        self._in_sg4_main = False
        self._current: _Draft | None = None

    @property
    def doc_number(self) -> str:
        return self.header.doc_number

    @property
    def function(self) -> str:
        return self.header.function

    def feed(self, position: int, segment: Segment) -> Consignment | None:
        """Take the next segment (its position in the message, UNH being 1); returns the consignment the
        segment closed, if any."""
        tag = segment.tag
        done: Consignment | None = None
        if tag == "CNI":
            done = self._close()
            self._current = _Draft(segment, position)
            self.group = "SG7"
        elif tag == "UNT":
            done = self._close()
        elif self._current is None:
            self._header_segment(position, segment)
        else:
            self._consignment_segment(self._current, position, segment)
        return done

    def close(self) -> Consignment | None:
        return self._close()

    # -- message level ---------------------------------------------------------------------------

    def _header_segment(self, position: int, segment: Segment) -> None:
        h = self.header
        tag = segment.tag
        if tag == "BGM":
            h.doc_number = element(segment, 1)
            h.function = element(segment, 2)
        elif tag == "TDT":
            self.group = "SG4"
            self._in_sg4_main = element(segment, 0) == "20"
            if self._in_sg4_main:
                h.vehicle = element(segment, 7) or None
                h.vehicle_at = position
        elif tag == "LOC" and self.group == "SG4" and self._in_sg4_main:
            if element(segment, 0) in _CONTROL_LOC:
                h.control_point = (element(segment, 1), position)
        elif tag == "DTM" and self.group == "SG4" and self._in_sg4_main:
            if element(segment, 0) in _CROSSING_DTM:
                h.crossing = (edifact_datetime(element(segment, 0, 1), element(segment, 0, 2)), position)
        elif tag == "GIS":
            self.group = "header"
            code = element(segment, 0)
            if code in _DIRECTION:
                h.direction = (_DIRECTION[code], position)
        elif tag == "EQD":
            self.group = "SG5"
            if element(segment, 0) == "CN":
                h.equipment.append({"number": element(segment, 1)})
                h.equipment_at.append(position)
        elif tag == "SEL" and self.group == "SG5" and h.equipment:
            seal = element(segment, 0)
            if element(segment, 1) == "CU":
                h.elock = seal
            elif seal:
                h.equipment[-1].setdefault("seals", []).append(seal)
        elif tag in ("NAD", "CTA", "COM", "RFF") and self.group not in ("SG4", "SG5"):
            self.group = "header"

    # -- consignment level -----------------------------------------------------------------------

    def _consignment_segment(self, c: _Draft, position: int, segment: Segment) -> None:
        tag = segment.tag
        group = self.group
        if group == "SG14" and tag in _ITEM_TAGS:  # most segments of a big message: checked first
            self._item_segment(c, position, segment)
        elif tag == "RFF":
            if group in ("SG9", "SG10"):
                self.group = "SG10"
                if element(segment, 0, 0) == "AWB":
                    c.tranship["air_waybill"] = element(segment, 0, 1)
                    c.at("transhipment.air_waybill", tag, position)
            elif group == "SG11":
                pass  # a party's own reference
            else:
                self.group = "SG8"
                c.reference_segment(segment, position)
        elif tag in ("CNT", "MOA", "CUX", "CPI") and group in ("SG7", "SG8"):
            pass
        elif tag == "LOC" and group == "SG8":
            qualifier, code = element(segment, 0), element(segment, 1)
            if qualifier == "9":
                c.fields["place_of_loading"] = code
                c.at("place_of_loading", tag, position)
            elif qualifier == "11":
                c.fields["place_of_discharge"] = code
                c.at("place_of_discharge", tag, position)
            elif qualifier == "27":
                c.origin = (code, position)
        elif tag == "GIS" and group == "SG8":
            code = element(segment, 0)
            if code == "28":
                c.transhipment_at = position
            elif code in _DIRECTION:
                c.direction = (_DIRECTION[code], position)
        elif tag == "TDT":
            self.group = "SG9"
            mode = _TRANSHIPMENT_MODE.get(element(segment, 0))
            if mode:
                c.tranship["mode"] = mode
                c.at("transhipment.mode", tag, position)
                if element(segment, 1):
                    c.tranship["flight"] = element(segment, 1)
                    c.at("transhipment.flight", tag, position)
        elif tag == "LOC" and group == "SG9":
            if element(segment, 0) in ("8", "9"):
                c.tranship["airport"] = element(segment, 1)
                c.at("transhipment.airport", tag, position)
        elif tag == "NAD":
            self.group = "SG11"
            role = _PARTY.get(element(segment, 0))
            if role:
                c.fields[role] = _party(segment)
                c.at(role, tag, position)
        elif tag == "QTY" and group not in ("SG14", "SG15", "SG16"):
            self.group = "SG13"
        elif tag == "GID":
            self.group = "SG14"
            c.new_item(segment, position)
        elif tag == "GIS" and group in ("SG14", "SG15"):
            self.group = "SG15"
        elif tag == "QTY" and group in ("SG14", "SG15", "SG16"):
            self.group = "SG16"

    def _item_segment(self, c: _Draft, position: int, segment: Segment) -> None:
        # The bulk of a big message: element() inlined (a component's text, '' when absent).
        tag = segment.tag
        elements = segment.elements
        first: Any = elements[0] if elements else ""
        if first.__class__ is list:
            qualifier = first[0] if first else ""
        else:
            qualifier = first
            first = [first]
        item = c.items[-1]
        at = c.item_sources[-1]
        if tag == "FTX":
            if qualifier == "AAA":
                text = join_text(components(segment, 3), 70)
                item["description"] = f"{item['description']} {text}" if item.get("description") else text
                at["description"] = (tag, position)
        elif tag == "MEA":
            if qualifier == "AAE" and element(segment, 1) == "G":
                unit, value = element(segment, 2, 0), element(segment, 2, 1)
                mass = _number(value, self.decimal_mark)
                tonnes = unit == "TNE" and isinstance(mass, int | float)
                item["gross_mass_kg"] = mass * 1000 if tonnes else mass
                at["gross_mass_kg"] = (tag, position)
        elif tag == "MOA":
            if qualifier == "40":
                item["value"] = {
                    "amount": _amount(first[1] if len(first) > 1 else "", self.decimal_mark),
                    "currency": first[2] if len(first) > 2 else "",
                }
                at["value"] = (tag, position)
        elif tag == "CST":
            item["hs_code"] = element(segment, 1, 0)
            at["hs_code"] = (tag, position)
        elif tag == "PCI":
            if qualifier in ("24", ""):
                item["marks"] = join_text(components(segment, 1), 35)
                at["marks"] = (tag, position)
        elif tag == "SGP":
            c.placed_in.add(qualifier)

    # -- closing a consignment -------------------------------------------------------------------

    def _close(self) -> Consignment | None:
        draft, self._current = self._current, None
        if draft is None:
            return None
        return draft.finish(self.header, self.decimal_mark)


def _party(segment: Segment) -> dict[str, Any]:
    party = {
        "name": join_text(components(segment, 3), 35),
        "address": join_text(components(segment, 4), 35),
        "city": element(segment, 5),
        "postcode": element(segment, 7),
        "country": element(segment, 8),
        "id": element(segment, 1),
    }
    if not party["name"] and not party["address"]:
        # An unstructured C058 name and address: the first line is the name, the rest the address.
        lines = components(segment, 2)
        party["name"], party["address"] = (lines[0] if lines else ""), " ".join(lines[1:])
    return {k: v for k, v in party.items() if v}


class _Draft:
    """A consignment being read."""

    def __init__(self, cni: Segment, position: int) -> None:
        self.sequence = element(cni, 0)
        self.reference = element(cni, 1)
        self.position = position
        self.fields: dict[str, Any] = {}
        self.items: list[dict[str, Any]] = []
        self.sources: dict[str, tuple[str, int]] = {"submitter_reference": ("CNI", position)}
        self.problems: list[Problem] = []
        self.ccrn: str | None = None
        self.cmr: str | None = None
        self.sg8_seen = False
        self.origin: tuple[str, int] | None = None
        self.direction: tuple[str, int] | None = None
        self.transhipment_at: int | None = None
        self.tranship: dict[str, Any] = {}
        self.placed_in: set[str] = set()
        self.item_sources: list[dict[str, tuple[str, int]]] = []

    def at(self, path: str, tag: str, position: int) -> None:
        self.sources[path] = (tag, position)

    def reference_segment(self, segment: Segment, position: int) -> None:
        qualifier, value = element(segment, 0, 0), element(segment, 0, 1)
        if self.sg8_seen:
            self.problems.append(
                Problem(
                    "INVALID_VALUE",
                    "submitter_reference",
                    f"segment {position}: a consignment has one SG8 group, opened by one RFF",
                )
            )
        self.sg8_seen = True
        if qualifier == "XC":
            self.ccrn = value
            self.at("ccrn", "RFF", position)
        elif qualifier == "CMR":
            self.cmr = value
            self.at("submitter_reference", "RFF", position)
        else:
            self.problems.append(
                Problem(
                    "INVALID_CODE",
                    "submitter_reference",
                    f"segment {position}: RFF qualifier {qualifier!r} is not CMR (road consignment note) "
                    "or XC (CCRN)",
                )
            )

    def new_item(self, gid: Segment, position: int) -> None:
        count = element(gid, 1, 0)
        item: dict[str, Any] = {
            "package_count": _number(count, ".") if count else None,
            "package_type": element(gid, 1, 1),
            "package_description": element(gid, 1, 4),
        }
        self.items.append({k: v for k, v in item.items() if v not in (None, "")})
        self.item_sources.append({"": ("GID", position)})

    def finish(self, header: _Header, decimal_mark: str) -> Consignment:
        action = ACTIONS.get(header.function)
        reference = self.reference or self.cmr or ""
        out = Consignment(self.sequence, reference, self.position, action, problems=self.problems)
        out.sources = self.sources
        out.item_sources = self.item_sources
        if action is None:
            out.problems.append(
                Problem(
                    "INVALID_CODE",
                    "action",
                    f"BGM message function (1225) {header.function!r} is not supported: "
                    "9 (original: lodge), 5 (replace: amend) or 1 (cancel)",
                )
            )
            return out
        if self.reference and self.cmr and self.reference != self.cmr:
            out.problems.append(
                Problem(
                    "INVALID_VALUE",
                    "submitter_reference",
                    f"the CNI reference {self.reference!r} and the road consignment note RFF+CMR "
                    f"{self.cmr!r} differ",
                )
            )
        if action in ("amend", "cancel") and not self.ccrn:
            out.problems.append(
                Problem("MISSING_FIELD", "ccrn", f"RFF+XC with the CCRN is required to {action}")
            )
        if out.problems:
            return out
        if action == "cancel":
            out.submits = ("cancel", None, self.ccrn)
            return out
        out.submits = (action, self._record(header), self.ccrn)
        return out

    def _record(self, h: _Header) -> dict[str, Any]:
        record: dict[str, Any] = {"submitter_reference": self.reference or self.cmr}
        direction = self.direction or h.direction
        if direction:
            record["direction"] = direction[0]
            self.at("direction", "GIS", direction[1])
        if h.crossing:
            record["expected_crossing"] = h.crossing[0]
            self.at("expected_crossing", "DTM", h.crossing[1])
        if h.control_point:
            record["control_point"] = h.control_point[0]
            self.at("control_point", "LOC", h.control_point[1])
        if h.vehicle:
            record["vehicle_hint"] = h.vehicle
            self.at("vehicle_hint", "TDT", h.vehicle_at)
        record.update(self.fields)
        if self.origin:
            for i, item in enumerate(self.items):
                item.setdefault("origin_country", self.origin[0])
                self.item_sources[i]["origin_country"] = ("LOC", self.origin[1])
        record["items"] = self.items
        equipment = [
            (e, at)
            for e, at in zip(h.equipment, h.equipment_at, strict=True)
            if not self.placed_in or e["number"] in self.placed_in
        ]
        if equipment:
            record["equipment"] = [dict(e) for e, _at in equipment]
            for i, (_e, at) in enumerate(equipment):
                self.at(f"equipment[{i}]", "EQD", at)
        if self.transhipment_at is not None or self.tranship:
            tranship = dict(self.tranship)
            if h.elock:
                tranship["elock_id"] = h.elock
            record["transhipment"] = tranship
            self.sources.setdefault("transhipment", ("GIS", self.transhipment_at or self.position))
        return record
