"""XML of ``schemas/eci.xsd`` (namespace ``urn:roadcargo:eci:1``) <-> the canonical record's JSON shape.

Pure functions: element trees in, dicts out, and back. Element names are derived from the record table
(``gateway.record.RECORD``) rather than typed again: a field ``package_count`` is ``PackageCount``, and
a list is its entry repeated under one singular name (``items`` -> ``Item``). The XSD says the same in
types; ``tests/unit/test_xsd.py`` checks the two agree field by field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

from lxml import etree

from gateway.errors import Problem
from gateway.record import RECORD, Count, Kind, ListOf, Mass, Obj

NS = "urn:roadcargo:eci:1"
_NSMAP = {None: NS}

# A list is its entry repeated; these are the entry names (the record's lists are plural nouns).
_ENTRY = {"items": "Item", "equipment": "Equipment", "seals": "Seal"}


def q(name: str) -> str:
    """The qualified tag of an element of our namespace."""
    return f"{{{NS}}}{name}"


def element_name(field_name: str) -> str:
    """``package_count`` -> ``PackageCount``; a list field gives the name of one entry."""
    return _ENTRY.get(field_name) or "".join(part.capitalize() for part in field_name.split("_"))


def local_name(element: etree._Element) -> str:
    return etree.QName(element).localname


def _children(element: etree._Element) -> list[etree._Element]:
    return [c for c in element if isinstance(c.tag, str)]


def _text(element: etree._Element) -> str:
    return element.text or ""


# -- reading: element tree -> record JSON ----------------------------------------------------------


@cache
def _lookup(obj: Obj) -> dict[str, tuple[str, Kind]]:
    """Element name -> (field name, kind) of one object of the record table."""
    return {element_name(name): (name, spec.kind) for name, spec in obj.fields.items()}


@cache
def _by_tag(obj: Obj) -> dict[str, tuple[str, Kind]]:
    """The same by qualified tag: the hot path of reading compares tags, not local names."""
    return {q(name): entry for name, entry in _lookup(obj).items()}


# Numbers become numbers (the XSD has checked their lexical form); all else stays text and is
# normalised by the record's own checks.


def _count(text: str) -> Any:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _mass(text: str) -> Any:
    try:
        number = Decimal(text.strip())
    except ArithmeticError:
        return text
    return int(number) if number == number.to_integral_value() else float(number)


_Reader = Callable[[etree._Element], Any]


def _reader(kind: Kind) -> _Reader:
    """How to read an element of one kind, decided once per kind rather than per element."""
    if isinstance(kind, Obj):
        return lambda element: _read_object(kind, element)
    if isinstance(kind, Count):
        return lambda element: _count(element.text or "")
    if isinstance(kind, Mass):
        return lambda element: _mass(element.text or "")
    return _text


@cache
def _readers(obj: Obj) -> dict[str, tuple[str, bool, _Reader]]:
    """Qualified tag -> (field name, whether a list entry, reader) of one object of the record table:
    the hot path of reading compares tags, not local names."""
    table: dict[str, tuple[str, bool, _Reader]] = {}
    for tag, (name, kind) in _by_tag(obj).items():
        entry = kind.item if isinstance(kind, ListOf) else kind
        table[tag] = (name, isinstance(kind, ListOf), _reader(entry))
    return table


def _read_object(obj: Obj, element: etree._Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    table = _readers(obj)
    for child in element:
        tag = child.tag
        if not isinstance(tag, str):
            continue  # a comment or processing instruction
        entry = table.get(tag)
        if entry is None:
            # Unknown elements are kept under their own name, so that the record's checks name them
            # (the XSD refuses them before this on every channel).
            out[local_name(child)] = _text(child)
            continue
        field_name, is_list, read = entry
        if is_list:
            out.setdefault(field_name, []).append(read(child))
        else:
            out[field_name] = read(child)
    return out


def record_from_xml(record: etree._Element) -> dict[str, Any]:
    """A ``Record`` element (type ``CargoRecord``) as the record's JSON shape."""
    return _read_object(RECORD, record)


# -- writing: record JSON -> element tree ----------------------------------------------------------


def _write(kind: Kind, parent: etree._Element, name: str, value: Any) -> None:
    if isinstance(kind, ListOf):
        for entry in value:
            _write(kind.item, parent, name, entry)
        return
    child = etree.SubElement(parent, q(name))
    if isinstance(kind, Obj):
        _write_object(kind, child, value)
    elif isinstance(value, float):
        child.text = format(Decimal(repr(value)), "f")
    else:
        child.text = str(value)


def _write_object(obj: Obj, element: etree._Element, data: Mapping[str, Any]) -> None:
    for name, spec in obj.fields.items():  # the XSD's sequence is the table's order
        if data.get(name) is not None:
            _write(spec.kind, element, element_name(name), data[name])


def record_to_xml(data: Mapping[str, Any], tag: str = "Record") -> etree._Element:
    element = etree.Element(q(tag), nsmap=_NSMAP)
    _write_object(RECORD, element, data)
    return element


def consignment_to_xml(
    action: str, record: Mapping[str, Any] | None = None, ccrn: str | None = None
) -> etree._Element:
    element = etree.Element(q("Consignment"), {"action": action}, nsmap=_NSMAP)
    if ccrn is not None:
        etree.SubElement(element, q("Ccrn")).text = ccrn
    if record is not None:
        element.append(record_to_xml(record))
    return element


def cargo_information(consignments: Iterable[etree._Element]) -> etree._Element:
    root = etree.Element(q("CargoInformation"), nsmap=_NSMAP)
    root.extend(consignments)
    return root


def to_bytes(element: etree._Element, pretty: bool = False) -> bytes:
    return bytes(etree.tostring(element, xml_declaration=True, encoding="UTF-8", pretty_print=pretty))


# -- where: record field paths <-> elements --------------------------------------------------------


def _walk(element: etree._Element) -> tuple[str | None, Kind | None]:
    """The record field path of an element inside a ``Consignment`` and the kind of that field."""
    steps: list[etree._Element] = []
    node: etree._Element | None = element
    while node is not None and node.tag not in (q("Record"), q("Consignment")):
        steps.append(node)
        node = node.getparent()
    if node is None or node.tag == q("Consignment"):
        return ("ccrn" if steps and steps[-1].tag == q("Ccrn") else None), None
    kind: Kind | None = RECORD
    parts: list[str] = []
    for step in reversed(steps):
        name = local_name(step)
        if not isinstance(kind, Obj) or name not in _lookup(kind):
            return ".".join([*parts, name]), None  # not a field of the record: name the element
        field_name, kind = _lookup(kind)[name]
        if isinstance(kind, ListOf):
            parent = step.getparent()
            same = [s for s in _children(parent) if s.tag == step.tag] if parent is not None else [step]
            field_name = f"{field_name}[{same.index(step)}]"
            kind = kind.item
        parts.append(field_name)
    return ".".join(parts) or None, kind


def field_path(element: etree._Element) -> str | None:
    """The record field an element of a ``Consignment`` stands for: ``items[1].value.amount`` for
    ``Consignment/Record/Item[2]/Value/Amount``; ``ccrn`` for ``Ccrn``; None for the consignment or the
    record as a whole."""
    return _walk(element)[0]


def child_field(parent: etree._Element, child_name: str) -> str | None:
    """The field a missing child element would have been (for ``Missing child element(s)``)."""
    if parent.tag == q("Consignment"):
        return "ccrn" if child_name == "Ccrn" else None
    base, kind = _walk(parent)
    if isinstance(kind, Obj):
        for name in kind.fields:
            if element_name(name) == child_name:
                return f"{base}.{name}" if base else name
    return base


def element_for_field(consignment: etree._Element, path: str | None) -> etree._Element | None:
    """The element of a ``Consignment`` that a record field path names, as far as it exists: a core
    error on ``items[2].package_type`` is reported with the line of that element."""
    if not path:
        return None
    if path == "ccrn":
        return consignment.find(q("Ccrn"))
    node = consignment.find(q("Record"))
    kind: Kind = RECORD
    for part in path.split("."):
        match = re.fullmatch(r"([a-z_]+)(?:\[(\d+)\])?", part)
        if node is None or match is None or not isinstance(kind, Obj) or match[1] not in kind.fields:
            return node
        kind = kind.fields[match[1]].kind
        same = node.findall(q(element_name(match[1])))
        index = int(match[2] or 0)
        if isinstance(kind, ListOf):
            kind = kind.item
        if index >= len(same):
            return node
        node = same[index]
    return node


def xml_path(element: etree._Element) -> str:
    """``/CargoInformation/Consignment[2]/Record/Item[1]/PackageCount``: local names, with the
    position (from 1) where an element has siblings of its name."""
    steps = []
    node: etree._Element | None = element
    while node is not None:
        parent = node.getparent()
        name = local_name(node)
        if parent is not None:
            same = [s for s in _children(parent) if s.tag == node.tag]
            if len(same) > 1 or name in _REPEATED:
                name = f"{name}[{same.index(node) + 1}]"
        steps.append(name)
        node = parent
    return "/" + "/".join(reversed(steps))


_REPEATED = frozenset({"Consignment", *_ENTRY.values()})


# -- the Acknowledgement ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Located:
    """A problem and where it is in the request document (line from 1, element path)."""

    problem: Problem
    line: int | None = None
    path: str | None = None


@dataclass
class ConsignmentResult:
    """One consignment's outcome: its view (accepted or unchanged) or its errors (rejected)."""

    index: int
    action: str | None
    submitter_reference: str | None = None
    view: Mapping[str, Any] | None = None
    changed: bool = False
    errors: list[Located] = field(default_factory=list)

    @property
    def result(self) -> str:
        if self.errors or self.view is None:
            return "rejected"
        return "accepted" if self.changed else "unchanged"


def _fill_errors(container: etree._Element, errors: Sequence[Located]) -> etree._Element:
    for item in errors:
        attrs = {"code": item.problem.code}
        if item.problem.field:
            attrs["field"] = item.problem.field
        attrs["message"] = item.problem.message
        if item.line:
            attrs["line"] = str(item.line)
        if item.path:
            attrs["path"] = item.path
        etree.SubElement(container, q("Error"), attrs)
    return container


def acknowledgement(
    results: Sequence[ConsignmentResult], document_errors: Sequence[Located] = ()
) -> etree._Element:
    rejected = sum(1 for r in results if r.result == "rejected")
    root = etree.Element(
        q("Acknowledgement"),
        {"accepted": str(len(results) - rejected), "rejected": str(rejected)},
        nsmap=_NSMAP,
    )
    if document_errors:
        _fill_errors(etree.SubElement(root, q("Errors")), document_errors)
    for r in results:
        attrs = {"index": str(r.index)}
        if r.action in ("lodge", "amend", "cancel"):
            attrs["action"] = r.action
        attrs["result"] = r.result
        entry = etree.SubElement(root, q("Consignment"), attrs)
        reference = r.view["submitter_reference"] if r.view is not None else r.submitter_reference
        if reference:
            etree.SubElement(entry, q("SubmitterReference")).text = str(reference)
        if r.result == "rejected":
            _fill_errors(etree.SubElement(entry, q("Errors")), r.errors)
        else:
            assert r.view is not None
            for tag, key in (("Ccrn", "ccrn"), ("Version", "version"), ("Status", "status")):
                etree.SubElement(entry, q(tag)).text = str(r.view[key])
            etree.SubElement(entry, q("StatusVersion")).text = str(r.view["status_version"])
    return root


def read_acknowledgement(root: etree._Element) -> list[dict[str, Any]]:
    """An Acknowledgement as plain dicts (for clients and tests): one per consignment."""
    out = []
    for entry in root.findall(q("Consignment")):
        item: dict[str, Any] = dict(entry.attrib)
        for child in _children(entry):
            name = local_name(child)
            if name == "Errors":
                item["errors"] = [dict(e.attrib) for e in child]
            else:
                item[name] = _text(child)
        out.append(item)
    return out


# -- SOAP operations -------------------------------------------------------------------------------


def gateway_fault(errors: Sequence[Located]) -> etree._Element:
    return _fill_errors(etree.Element(q("GatewayFault"), nsmap=_NSMAP), errors)


def status_response(view: Mapping[str, Any]) -> etree._Element:
    root = etree.Element(q("GetConsignmentStatusResponse"), nsmap=_NSMAP)
    for tag, key in (
        ("Ccrn", "ccrn"),
        ("SubmitterReference", "submitter_reference"),
        ("Status", "status"),
        ("Version", "version"),
        ("StatusVersion", "status_version"),
    ):
        etree.SubElement(root, q(tag)).text = str(view[key])
    return root


def bundle_request(element: etree._Element) -> dict[str, Any]:
    """A ``BundleVehicle`` element as the JSON body of ``POST /api/v1/bundles`` (design section 9)."""
    out: dict[str, Any] = {"ccrns": []}
    for child in _children(element):
        name = local_name(child)
        if name == "Ccrn":
            out["ccrns"].append(_text(child).strip())
        else:
            key = {"ControlPoint": "control_point", "ExpectedArrival": "expected_arrival"}.get(name)
            out[key or name.lower()] = _text(child).strip()
    return out


def bundle_response(bundle: Mapping[str, Any]) -> etree._Element:
    """A bundle as ``GET /api/v1/bundles/{id}`` shows it, as a ``BundleVehicleResponse``."""
    root = etree.Element(q("BundleVehicleResponse"), nsmap=_NSMAP)
    etree.SubElement(root, q("BundleId")).text = str(bundle["bundle_id"])
    etree.SubElement(root, q("Vehicle")).text = str(bundle["vehicle"])
    etree.SubElement(root, q("Driver")).text = str(bundle["driver"])
    for ccrn in bundle["ccrns"]:
        etree.SubElement(root, q("Ccrn")).text = str(ccrn)
    etree.SubElement(root, q("EarliestCrossing")).text = str(bundle["earliest_crossing"])
    slot = etree.SubElement(root, q("Slot"))
    etree.SubElement(slot, q("Start")).text = str(bundle["slot"]["start"])
    etree.SubElement(slot, q("End")).text = str(bundle["slot"]["end"])
    return root
