"""Declarations as XML of ``schemas/declaration.xsd`` (namespace ``urn:roadcargo:declaration:1``) <-> their
JSON shape (``gateway.declarations``).

Pure functions: element trees in, dicts out, and back. As in ``mappings/xml_eci.py``, element names are
derived from the field table (``gateway.declaration_document.DECLARATION``), not typed again: ``hs_code`` is
``HsCode``, the list ``lines`` is ``Line`` repeated. A field the declarant must supply is an empty
element with ``missing="true"`` and a ``supply`` attribute. Parsing untrusted bytes is the adapter's
job (the XML channel's hardened parser); this module only maps a parsed tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from functools import cache
from typing import Any

from lxml import etree

from gateway.declaration_document import DECLARATION, is_missing, missing_fields
from gateway.record import Count, Kind, ListOf, Mass, Obj

NS = "urn:roadcargo:declaration:1"
ROOT = "Declaration"
_ENTRY = {"lines": "Line"}


def q(name: str) -> str:
    return f"{{{NS}}}{name}"


def element_name(field_name: str) -> str:
    """``gross_mass_kg`` -> ``GrossMassKg``; a list field gives the name of one entry."""
    return _ENTRY.get(field_name) or "".join(part.capitalize() for part in field_name.split("_"))


# -- writing ------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(Decimal(str(value)), "f")
    return str(value)


def _write(kind: Kind, parent: etree._Element, name: str, value: Any) -> None:
    if isinstance(kind, ListOf):
        for entry in value:
            _write(kind.item, parent, name, entry)
        return
    element = etree.SubElement(parent, q(name))
    if is_missing(value):
        element.set("missing", "true")
        element.set("supply", str(value.get("supply") or ""))
        return
    if isinstance(kind, Obj):
        _write_object(kind, element, value)
    else:
        element.text = _text(value)


def _write_object(obj: Obj, element: etree._Element, value: Mapping[str, Any]) -> None:
    for field_name, spec in obj.fields.items():
        if field_name in value and value[field_name] is not None:
            _write(spec.kind, element, element_name(field_name), value[field_name])


def to_element(declaration: Mapping[str, Any]) -> etree._Element:
    root = etree.Element(q(ROOT), nsmap={None: NS})
    _write_object(DECLARATION, root, declaration)
    return root


def to_xml(declaration: Mapping[str, Any]) -> bytes:
    """A declaration (prefilled or completed) as a UTF-8 document of ``schemas/declaration.xsd``."""
    return bytes(
        etree.tostring(to_element(declaration), xml_declaration=True, encoding="UTF-8", pretty_print=True)
    )


# -- reading ------------------------------------------------------------------------------------------


@cache
def _by_tag(obj: Obj) -> dict[str, tuple[str, Kind]]:
    return {q(element_name(name)): (name, spec.kind) for name, spec in obj.fields.items()}


def _scalar(kind: Kind, text: str) -> Any:
    """Numbers become numbers (the XSD has checked their form); text stays text for the gateway's
    own checks to normalise."""
    if isinstance(kind, Count):
        try:
            return int(text.strip())
        except ValueError:
            return text
    if isinstance(kind, Mass):
        try:
            number = Decimal(text.strip())
        except ArithmeticError:
            return text
        return int(number) if number == number.to_integral_value() else float(number)
    return text


def _read(kind: Kind, element: etree._Element) -> Any:
    if element.get("missing") in ("true", "1"):
        return {"missing": True, "supply": element.get("supply") or ""}
    if isinstance(kind, Obj):
        return _read_object(kind, element)
    return _scalar(kind, element.text or "")


def _read_object(obj: Obj, element: etree._Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    table = _by_tag(obj)
    for child in element:
        if not isinstance(child.tag, str):
            continue  # comments, processing instructions
        entry = table.get(child.tag)
        if entry is None:
            out[etree.QName(child).localname] = child.text or ""  # named by the gateway's checks
            continue
        field_name, kind = entry
        if isinstance(kind, ListOf):
            out.setdefault(field_name, []).append(_read(kind.item, child))
        else:
            out[field_name] = _read(kind, child)
    return out


def from_element(root: etree._Element) -> dict[str, Any]:
    """A ``Declaration`` element as the JSON shape, its ``missing_fields`` listed again."""
    declaration = _read_object(DECLARATION, root)
    found = missing_fields(declaration)
    if found:
        declaration["missing_fields"] = found
    return declaration
