"""The trade declaration as a document (design section 9): its shape, its rules, and the prefill from a
cargo record and its crossing. Pure: no store, no I/O, so that mappings and tests use it as it is.

A prefilled declaration holds what the record and its crossing say, and nothing else: every field the
declarant must supply is present as ``{"missing": true, "supply": "what to give"}`` and listed under
``missing_fields``; nothing is guessed. The completed declaration has the same shape with every marker
replaced by a value; :func:`validate_declaration` is its one validation path, for JSON and XML alike.
The field table (``DECLARATION``) is written with the cargo record's own kinds (``gateway.record``), and
the XML element names of ``schemas/declaration.xsd`` are derived from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from gateway import codelists
from gateway.clock import HONG_KONG
from gateway.context import iso_hk
from gateway.errors import GatewayError, Problem
from gateway.identifiers import parse_ccrn
from gateway.record import (
    Amount,
    Choice,
    Code,
    Context,
    Count,
    Crossing,
    F,
    HsCode,
    Kind,
    ListOf,
    Mass,
    Obj,
    Text,
    Vehicle,
)

KINDS = ("IMPORT", "EXPORT")


# -- what the declarant must supply ------------------------------------------------------------------

SUPPLY = {
    "declarant": "the declarant: your party id and name",
    "trader_id": "the {role}'s business registration number",
    "country": "the {who}'s country (ISO 3166 alpha-2)",
    "destination_country": "the country of destination of the goods (ISO 3166 alpha-2)",
    "vehicle": "the registration mark of the vehicle that carried the goods",
    "control_point": "the control point the goods crossed",
    "hs_code": "the 8-digit Hong Kong HS code of the goods",
    "hs_code_6": "the 8-digit Hong Kong HS code (the record gives the subheading {code})",
    "quantity": "the quantity in the statistical unit of the HS code, with its UN/ECE Rec. 20 unit "
    "code (e.g. C62 for pieces, KGM for kilograms)",
    "gross_mass_kg": "the gross mass of the goods in kilograms",
    "value": "the value of the goods and its currency (ISO 4217)",
    "origin_country": "the country of origin of the goods (ISO 3166 alpha-2)",
}


def missing(supply: str) -> dict[str, Any]:
    """The marker of a field the record cannot supply."""
    return {"missing": True, "supply": supply}


def is_missing(value: Any) -> bool:
    return isinstance(value, dict) and value.get("missing") is True


def missing_fields(document: Any, path: str = "") -> list[dict[str, str]]:
    """Every marker of a declaration, in document order: ``[{"field", "supply"}]``."""
    found: list[dict[str, str]] = []
    if is_missing(document):
        return [{"field": path, "supply": str(document.get("supply") or "")}]
    if isinstance(document, dict):
        for key, value in document.items():
            if key != "missing_fields":
                found += missing_fields(value, f"{path}.{key}" if path else key)
    elif isinstance(document, list):
        for i, value in enumerate(document):
            found += missing_fields(value, f"{path}[{i}]")
    return found


# -- the completed declaration: its shape and its rules ----------------------------------------------


class HsCode8(Kind):
    """A declaration classifies goods to the 8 digits of the Hong Kong tariff, not only the 6 of HS."""

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        before = len(ctx.problems)
        code = HsCode().check(value, path, ctx)
        if len(ctx.problems) > before:
            return code  # the record's own check named the problem
        if len(code) != 8:
            return ctx.add("INVALID_VALUE", path, f"{code!r} has {len(code)} digits; a declaration needs 8")
        return code

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[0-9]{8}$", "description": "HS code, 8 digits"}


class PartyId(Kind):
    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str) or len(value.strip()) != 8 or not value.strip().isdigit():
            return ctx.add("INVALID_VALUE", path, f"a party id is 8 digits; got {value!r}")
        return value.strip()

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[0-9]{8}$"}


class CcrnKind(Kind):
    def check(self, value: Any, path: str, ctx: Context) -> Any:
        try:
            return parse_ccrn(value, path)
        except GatewayError as exc:
            problem = exc.problems[0]
            return ctx.add(problem.code, problem.field, problem.message)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[0-9]{12}$", "description": "CCRN"}


class Quantity(Kind):
    """A quantity above 0, as a decimal string like the record's amounts."""

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        before = len(ctx.problems)
        amount = Amount().check(value, path, ctx)
        if len(ctx.problems) == before and Decimal(amount) <= 0:
            return ctx.add("INVALID_VALUE", path, "must be more than 0")
        return amount

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[0-9]{1,15}(\\.[0-9]{1,4})?$", "description": "above 0"}


_COUNTRY = Code("an ISO 3166 alpha-2 country code", lambda _: codelists.countries(), "^[A-Z]{2}$")
_CURRENCY = Code("an ISO 4217 currency code", lambda _: codelists.currencies(), "^[A-Z]{3}$")
_PACKAGE = Code(
    "a UN/ECE Recommendation 21 package type code", lambda _: codelists.package_types(), "^[0-9A-Z]{2}$"
)
_UNIT = Code("a UN/ECE Recommendation 20 unit code", lambda _: codelists.units(), "^[0-9A-Z]{2,3}$")
_CONTROL_POINT = Code("a land control point code", lambda ctx: ctx.control_points, "^[A-Z0-9]{2,5}$")


def _party_spec(title: str, id_required: bool) -> Obj:
    return Obj(
        title,
        {
            "name": F(Text(70), required=True),
            "address": F(Text(140), required=True),
            "city": F(Text(35)),
            "postcode": F(Text(9)),
            "country": F(_COUNTRY, required=True),
            "id": F(Text(35, "business registration number"), required=id_required),
        },
    )


LINE = Obj(
    "DeclarationLine",
    {
        "line_number": F(Count(9999)),
        "item": F(Count(999), required=True),
        "description": F(Text(350), required=True),
        "hs_code": F(HsCode8(), required=True),
        "quantity": F(
            Obj("Quantity", {"amount": F(Quantity(), required=True), "unit": F(_UNIT, required=True)}),
            required=True,
        ),
        "packages": F(
            Obj(
                "Packages",
                {
                    "count": F(Count(99_999_999), required=True),
                    "type": F(_PACKAGE, required=True),
                    "description": F(Text(35), required=True),
                },
            ),
            required=True,
        ),
        "gross_mass_kg": F(Mass(), required=True),
        "value": F(
            Obj("Value", {"amount": F(Amount(), required=True), "currency": F(_CURRENCY, required=True)}),
            required=True,
        ),
        "origin_country": F(_COUNTRY, required=True),
        "marks": F(Text(350)),
    },
)

DECLARATION = Obj(
    "Declaration",
    {
        "kind": F(Choice(*KINDS), required=True),
        "ccrn": F(CcrnKind(), required=True),
        "record_version": F(Count(10**6)),
        "prepared_at": F(Text(40)),
        "declarant": F(
            Obj("Declarant", {"party_id": F(PartyId(), required=True), "name": F(Text(140), required=True)}),
            required=True,
        ),
        "importer": F(_party_spec("Importer", True)),
        "exporter": F(_party_spec("Exporter", True)),
        "consignor": F(_party_spec("Consignor", False), required=True),
        "consignee": F(_party_spec("Consignee", False), required=True),
        "destination_country": F(_COUNTRY),
        "transport": F(
            Obj(
                "Transport",
                {
                    "mode": F(Choice("ROAD"), required=True),
                    "document_reference": F(CcrnKind(), required=True),
                    "vehicle": F(Vehicle(), required=True),
                    "control_point": F(_CONTROL_POINT, required=True),
                    "crossed_at": F(Crossing(), required=True),
                    "crossing_date": F(Crossing()),
                },
            ),
            required=True,
        ),
        "lines": F(ListOf(LINE, 999), required=True),
    },
)


def _strip_markers(value: Any, path: str, markers: dict[str, str]) -> Any:
    """The document with every ``missing`` marker taken out (and remembered by path)."""
    if is_missing(value):
        markers[path] = str(value.get("supply") or "")
        return None
    if isinstance(value, dict):
        return {
            k: _strip_markers(v, f"{path}.{k}" if path else k, markers)
            for k, v in value.items()
            if k != "missing_fields"
        }
    if isinstance(value, list):
        return [_strip_markers(v, f"{path}[{i}]", markers) for i, v in enumerate(value)]
    return value


def validate_declaration(value: Any, control_points: Mapping[str, Any] | list[str]) -> dict[str, Any]:
    """A completed declaration in its JSON shape, normalised; every problem at once. A field still
    marked ``missing`` is ``MISSING_FIELD`` with what the declarant must supply."""
    markers: dict[str, str] = {}
    ctx = Context(list(control_points))
    data = DECLARATION.check(_strip_markers(value, "", markers), "", ctx)
    problems = []
    for p in ctx.problems:
        if p.code == "MISSING_FIELD" and p.field in markers:
            problems.append(Problem("MISSING_FIELD", p.field, f"still missing: {markers[p.field]}"))
        else:
            problems.append(p)
    if isinstance(data, dict) and not problems:
        trader = "importer" if data["kind"] == "IMPORT" else "exporter"
        other = "exporter" if trader == "importer" else "importer"
        if trader not in data:
            problems.append(
                Problem("MISSING_FIELD", trader, f"an {data['kind'].lower()} declaration names the {trader}")
            )
        if other in data:
            problems.append(
                Problem("INVALID_VALUE", other, f"an {data['kind'].lower()} declaration has no {other}")
            )
        if data["kind"] == "EXPORT" and "destination_country" not in data:
            problems.append(Problem("MISSING_FIELD", "destination_country", SUPPLY["destination_country"]))
        if data["transport"]["document_reference"] != data["ccrn"]:
            problems.append(
                Problem("INVALID_VALUE", "transport.document_reference", "the transport document is the CCRN")
            )
    if problems:
        raise GatewayError(problems)
    assert isinstance(data, dict)
    return data


@dataclass(frozen=True)
class CrossingFact:
    """When, where and on which vehicle the goods crossed."""

    at: datetime
    vehicle: str | None
    control_point: str | None


# -- the prefill -------------------------------------------------------------------------------------


def _party(source: Mapping[str, Any], who: str, trader: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": source["name"], "address": source["address"]}
    for key in ("city", "postcode"):
        if source.get(key):
            out[key] = source[key]
    out["country"] = source.get("country") or missing(SUPPLY["country"].format(who=trader or who))
    if source.get("id"):
        out["id"] = source["id"]
    elif trader is not None:
        out["id"] = missing(SUPPLY["trader_id"].format(role=trader))
    return out


def _line(n: int, item: Mapping[str, Any]) -> dict[str, Any]:
    hs = item.get("hs_code")
    line: dict[str, Any] = {
        "line_number": n,
        "item": n,
        "description": item["description"],
        "hs_code": hs
        if hs and len(hs) == 8
        else missing(SUPPLY["hs_code_6"].format(code=hs) if hs else SUPPLY["hs_code"]),
        "quantity": missing(SUPPLY["quantity"]),
        "packages": {
            "count": item["package_count"],
            "type": item["package_type"],
            "description": item["package_description"],
        },
        "gross_mass_kg": item["gross_mass_kg"]
        if item.get("gross_mass_kg") is not None
        else missing(SUPPLY["gross_mass_kg"]),
        "value": dict(item["value"]) if item.get("value") else missing(SUPPLY["value"]),
        "origin_country": item.get("origin_country") or missing(SUPPLY["origin_country"]),
    }
    if item.get("marks"):
        line["marks"] = item["marks"]
    return line


def build_prefill(
    row: Any,
    record: Mapping[str, Any],
    crossing: CrossingFact | None,
    declarant: Mapping[str, str] | None,
    prepared_at: datetime,
) -> dict[str, Any]:
    """The prefilled declaration of a crossed consignment: pure, from the record and its crossing."""
    kind = str(record["direction"])
    importing = kind == "IMPORT"
    trader = "importer" if importing else "exporter"
    at = crossing.at if crossing is not None else None
    vehicle = (crossing.vehicle if crossing else None) or None
    control_point = (crossing.control_point if crossing else None) or record.get("control_point")
    doc: dict[str, Any] = {
        "kind": kind,
        "ccrn": row.ccrn,
        "record_version": row.version,
        "prepared_at": iso_hk(prepared_at),
        "declarant": dict(declarant) if declarant else missing(SUPPLY["declarant"]),
        trader: _party(record["consignee" if importing else "consignor"], trader, trader),
        "consignor": _party(record["consignor"], "consignor"),
        "consignee": _party(record["consignee"], "consignee"),
    }
    if not importing:
        country = record["consignee"].get("country")
        doc["destination_country"] = country or missing(SUPPLY["destination_country"])
    doc["transport"] = {
        "mode": "ROAD",
        "document_reference": row.ccrn,
        "vehicle": vehicle or missing(SUPPLY["vehicle"]),
        "control_point": control_point or missing(SUPPLY["control_point"]),
        "crossed_at": iso_hk(at) if at else missing("the date and time the goods crossed"),
        "crossing_date": at.astimezone(HONG_KONG).date().isoformat()
        if at
        else missing("the date the goods crossed"),
    }
    doc["lines"] = [_line(n, item) for n, item in enumerate(record["items"], start=1)]
    doc["missing_fields"] = missing_fields(doc)
    return doc
