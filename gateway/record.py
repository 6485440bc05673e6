"""The canonical cargo record (design section 3) and its one validation path.

Every channel maps its input onto the JSON shape of the record and calls :func:`validate_record`. The
rules are written once, as a table of fields (``RECORD``), from which both the validation and the JSON
Schema published in the OpenAPI document are derived, so the two cannot drift apart.

Text limits follow the EDIFACT elements that carry the field (names 2 x an..35, addresses 4 x an..35,
free text 5 x an..70), so a record valid on one channel renders on every channel.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from gateway import codelists
from gateway.clock import HONG_KONG
from gateway.errors import GatewayError, Problem
from gateway.identifiers import (
    container_check_digit_ok,
    container_shape_ok,
    normalise_vrn,
    vrn_problem,
)

_INVALID = object()  # a value that failed its check; its problem is already recorded
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_HS_SEPARATORS = re.compile(r"[\s.]")
_HS_CODE = re.compile(r"[0-9]{6}([0-9]{2})?")
_CONTAINER_SEPARATORS = re.compile(r"[\s-]")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass
class Context:
    """What a check needs beyond the value: the configured control points, and where problems go."""

    control_points: Collection[str]
    problems: list[Problem] = field(default_factory=list)

    def add(self, code: str, path: str | None, message: str) -> object:
        self.problems.append(Problem(code, path, message))
        return _INVALID


def _type_name(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


class Kind:
    """A field's kind: checks and normalises a value, and describes it as JSON Schema."""

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError


class Text(Kind):
    def __init__(self, max_len: int, note: str = "") -> None:
        self.max_len = max_len
        self.note = note

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str):
            return ctx.add("INVALID_VALUE", path, f"must be text, not {_type_name(value)}")
        # Runs of white space become one space, except in text of several lines. Control characters
        # other than line breaks are refused (isprintable() is the fast way to know there are none).
        if "\n" in value:
            text = value.strip()
            control = _CONTROL_BUT_NEWLINE.search(text)
        else:
            text = " ".join(value.split())
            control = None if text.isprintable() else _CONTROL_CHARS.search(text)
        if control:
            return ctx.add("INVALID_VALUE", path, "must not contain control characters")
        if len(text) > self.max_len:
            return ctx.add(
                "INVALID_VALUE", path, f"is {len(text)} characters long; at most {self.max_len} are allowed"
            )
        return text

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": self.max_len}
        if self.note:
            s["description"] = self.note
        return s


class Choice(Kind):
    def __init__(self, *values: str) -> None:
        self.values = values

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str) or value.strip().upper() not in self.values:
            return ctx.add("INVALID_VALUE", path, f"must be one of {', '.join(self.values)}; got {value!r}")
        return value.strip().upper()

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


class Code(Kind):
    """A value from a code list; a miss is ``INVALID_CODE``."""

    def __init__(self, what: str, codes: Callable[[Context], Collection[str]], pattern: str) -> None:
        self.what = what
        self.codes = codes
        self.pattern = pattern

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str):
            return ctx.add("INVALID_VALUE", path, f"must be {self.what} as text, not {_type_name(value)}")
        code = value.strip().upper()
        if code not in self.codes(ctx):
            return ctx.add("INVALID_CODE", path, f"{value!r} is not {self.what}")
        return code

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": self.pattern, "description": self.what}


class Locode(Kind):
    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str):
            return ctx.add("INVALID_VALUE", path, f"must be a UN/LOCODE as text, not {_type_name(value)}")
        code = value.replace(" ", "").upper()
        problem = codelists.locode_problem(code)
        if problem:
            return ctx.add("INVALID_CODE", path, problem)
        return code

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[A-Z]{2}[A-Z2-9]{3}$", "description": "UN/LOCODE"}


class HsCode(Kind):
    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str):
            return ctx.add("INVALID_VALUE", path, f"must be an HS code as text, not {_type_name(value)}")
        code = _HS_SEPARATORS.sub("", value)
        if not _HS_CODE.fullmatch(code):
            return ctx.add("INVALID_VALUE", path, f"{value!r} is not an HS code: 6 or 8 digits")
        return code

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[0-9]{6}([0-9]{2})?$", "description": "HS code, 6 or 8 digits"}


class Count(Kind):
    def __init__(self, maximum: int) -> None:
        self.maximum = maximum

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            return ctx.add("INVALID_VALUE", path, f"must be a whole number, not {_type_name(value)}")
        if not 0 < value <= self.maximum:
            return ctx.add("INVALID_VALUE", path, f"must be from 1 to {self.maximum}; got {value}")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": 1, "maximum": self.maximum}


class Mass(Kind):
    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return ctx.add("INVALID_VALUE", path, f"must be a number of kilograms, not {_type_name(value)}")
        if not 0 < value < 10**9:
            return ctx.add("INVALID_VALUE", path, f"must be more than 0 kg (and under 10^9); got {value}")
        mass = round(float(value), 3)
        return int(mass) if mass.is_integer() else mass

    def schema(self) -> dict[str, Any]:
        return {"type": "number", "exclusiveMinimum": 0, "description": "kilograms"}


_AMOUNT = re.compile(r"^[0-9]{1,15}(\.[0-9]{1,4})?$")


class Amount(Kind):
    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return ctx.add("INVALID_VALUE", path, 'must be a decimal string such as "1250.00"')
        text = value.strip()
        if not _AMOUNT.match(text):
            return ctx.add(
                "INVALID_VALUE",
                path,
                f"{value!r} is not an amount: digits with at most 4 decimals, 0 or more",
            )
        return str(Decimal(text))

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": _AMOUNT.pattern, "description": "decimal amount"}


class Crossing(Kind):
    """ISO 8601 date (the whole Hong Kong day) or date-time with an offset."""

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str):
            return ctx.add(
                "INVALID_VALUE", path, f"must be an ISO 8601 date or date-time, not {_type_name(value)}"
            )
        text = value.strip()
        if _DATE.fullmatch(text):
            try:
                return date.fromisoformat(text).isoformat()
            except ValueError:
                return ctx.add("INVALID_VALUE", path, f"{value!r} is not a calendar date")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            return ctx.add(
                "INVALID_VALUE",
                path,
                f"{value!r} is not an ISO 8601 date (2026-12-01) or date-time with offset "
                "(2026-12-01T14:30:00+08:00)",
            )
        if moment.tzinfo is None:
            return ctx.add("INVALID_VALUE", path, f"{value!r} needs a UTC offset, such as +08:00")
        return moment.isoformat()

    def schema(self) -> dict[str, Any]:
        return {
            "type": "string",
            "description": "ISO 8601 date (the whole day in Hong Kong time) or date-time with offset",
            "examples": ["2026-12-01", "2026-12-01T14:30:00+08:00"],
        }


class Container(Kind):
    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str):
            return ctx.add(
                "INVALID_VALUE", path, f"must be a container number as text, not {_type_name(value)}"
            )
        number = _CONTAINER_SEPARATORS.sub("", value).upper()
        if not container_shape_ok(number):
            return ctx.add(
                "INVALID_VALUE",
                path,
                f"{value!r} is not an ISO 6346 container number: 3 letters, U/J/Z, 6 digits, check digit",
            )
        if not container_check_digit_ok(number):
            return ctx.add("CHECK_DIGIT", path, f"{number}: the ISO 6346 check digit is wrong")
        return number

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "pattern": "^[A-Z]{3}[UJZ][0-9]{7}$", "description": "ISO 6346"}


class Vehicle(Kind):
    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, str):
            return ctx.add(
                "INVALID_VALUE", path, f"must be a registration mark as text, not {_type_name(value)}"
            )
        problem = vrn_problem(value)
        if problem:
            return ctx.add("INVALID_VALUE", path, problem)
        return normalise_vrn(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "description": "Hong Kong registration mark, 1 to 8 letters and digits"}


@dataclass(frozen=True)
class F:
    """One field of an object: its kind, whether required, a default."""

    kind: Kind
    required: bool = False
    default: Any = None


def _empty(raw: Any) -> bool:
    """Absent: None, blank text, an empty list or object."""
    kind = type(raw)
    if kind is str:
        return not raw or raw.isspace()
    if kind is int or kind is float or kind is bool:
        return False
    if kind is list or kind is dict:
        return not raw
    return raw is None or (isinstance(raw, str) and not raw.strip()) or raw == [] or raw == {}


class Obj(Kind):
    def __init__(self, title: str, fields: dict[str, F]) -> None:
        self.title = title
        self.fields = fields
        # The fields in order with what checking each needs, looked up once (records are checked by
        # the thousand in bulk ingest).
        self._plan = tuple(
            (name, spec.kind.check, spec.required, spec.default) for name, spec in fields.items()
        )

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, dict):
            return ctx.add("INVALID_VALUE", path or None, f"must be an object, not {_type_name(value)}")
        prefix = f"{path}." if path else ""
        out: dict[str, Any] = {}
        failed = False
        if not value.keys() <= self.fields.keys():
            for key in value:
                if key not in self.fields:
                    ctx.add("INVALID_VALUE", f"{prefix}{key}", f"unknown field {key!r}")
                    failed = True
        get = value.get
        for name, check, required, default in self._plan:
            raw = get(name)
            # Absent: None, blank text, an empty list or object (``_empty``, inlined for the usual kinds).
            if raw is None:
                absent = True
            else:
                kind = type(raw)
                if kind is str:
                    absent = not raw or raw.isspace()
                elif kind is dict or kind is list:
                    absent = not raw
                elif kind is int or kind is float or kind is bool:
                    absent = False
                else:
                    absent = _empty(raw)
            if absent:
                if required:
                    ctx.add("MISSING_FIELD", f"{prefix}{name}", "is required")
                    failed = True
                elif default is not None:
                    out[name] = default
                continue
            checked = check(raw, f"{prefix}{name}", ctx)
            if checked is _INVALID:
                failed = True
            else:
                out[name] = checked
        return _INVALID if failed else out

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "title": self.title,
            "additionalProperties": False,
            "required": [n for n, f in self.fields.items() if f.required],
            "properties": {n: f.kind.schema() for n, f in self.fields.items()},
        }


class ListOf(Kind):
    def __init__(self, item: Kind, maximum: int, minimum: int = 1) -> None:
        self.item = item
        self.minimum = minimum
        self.maximum = maximum

    def check(self, value: Any, path: str, ctx: Context) -> Any:
        if not isinstance(value, list):
            return ctx.add("INVALID_VALUE", path, f"must be a list, not {_type_name(value)}")
        if not self.minimum <= len(value) <= self.maximum:
            return ctx.add(
                "INVALID_VALUE", path, f"holds {len(value)} entries; {self.minimum} to {self.maximum} allowed"
            )
        out = [self.item.check(v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
        return _INVALID if any(v is _INVALID for v in out) else out

    def schema(self) -> dict[str, Any]:
        return {
            "type": "array",
            "minItems": self.minimum,
            "maxItems": self.maximum,
            "items": self.item.schema(),
        }


_COUNTRY = Code("an ISO 3166 alpha-2 country code", lambda _: codelists.countries(), "^[A-Z]{2}$")
_CURRENCY = Code("an ISO 4217 currency code", lambda _: codelists.currencies(), "^[A-Z]{3}$")
_PACKAGE = Code(
    "a UN/ECE Recommendation 21 package type code", lambda _: codelists.package_types(), "^[0-9A-Z]{2}$"
)
_CONTROL_POINT = Code("a land control point code", lambda ctx: ctx.control_points, "^[A-Z0-9]{2,5}$")

PARTY = Obj(
    "Party",
    {
        "name": F(Text(70, "2 x an..35"), required=True),
        "address": F(Text(140, "street, 4 x an..35"), required=True),
        "city": F(Text(35)),
        "postcode": F(Text(9)),
        "country": F(_COUNTRY),
        "id": F(Text(35, "the party's identifier, e.g. business registration")),
    },
)

ITEM = Obj(
    "GoodsItem",
    {
        "package_count": F(Count(99_999_999), required=True),
        "package_type": F(_PACKAGE, required=True),
        "package_description": F(Text(35), required=True),
        "description": F(Text(350, "description of the articles, 5 x an..70"), required=True),
        "hs_code": F(HsCode()),
        "gross_mass_kg": F(Mass()),
        "value": F(
            Obj("Value", {"amount": F(Amount(), required=True), "currency": F(_CURRENCY, required=True)})
        ),
        "origin_country": F(_COUNTRY),
        "marks": F(Text(350)),
    },
)

RECORD = Obj(
    "CargoRecord",
    {
        "direction": F(Choice("IMPORT", "EXPORT"), required=True),
        "submitter_reference": F(Text(35, "the filer's own reference; the idempotency key"), required=True),
        "consignor": F(PARTY, required=True),
        "consignee": F(PARTY, required=True),
        "expected_crossing": F(Crossing(), required=True),
        "control_point": F(_CONTROL_POINT),
        "items": F(ListOf(ITEM, 999), required=True),
        "place_of_loading": F(Locode()),
        "place_of_discharge": F(Locode()),
        "equipment": F(
            ListOf(
                Obj(
                    "Equipment",
                    {"number": F(Container(), required=True), "seals": F(ListOf(Text(35), 99))},
                ),
                99,
            )
        ),
        "vehicle_hint": F(Vehicle()),
        "transhipment": F(
            Obj(
                "Transhipment",
                {
                    "mode": F(Choice("LAND_TO_AIR", "AIR_TO_LAND"), required=True),
                    "airport": F(Locode(), default="HKHKG"),
                    "air_waybill": F(Text(35)),
                    "flight": F(Text(17)),
                    "elock_id": F(Text(35)),
                },
            )
        ),
    },
)


@dataclass(frozen=True)
class CargoRecord:
    """A validated, normalised record. ``data`` is its canonical JSON shape."""

    data: Mapping[str, Any]

    @property
    def direction(self) -> str:
        return str(self.data["direction"])

    @property
    def submitter_reference(self) -> str:
        return str(self.data["submitter_reference"])

    @property
    def control_point(self) -> str | None:
        cp = self.data.get("control_point")
        return None if cp is None else str(cp)

    def crossing_window(self) -> tuple[datetime, datetime]:
        """When the truck is expected: a bare date is that whole day in Hong Kong."""
        window = self.__dict__.get("_window")
        if window is None:
            window = crossing_window(str(self.data["expected_crossing"]))
            object.__setattr__(self, "_window", window)
        return window

    def canonical_json(self) -> str:
        # Worked out once (like the hash and the window): a lodgement needs each several times.
        # Kept in the instance's __dict__ rather than with functools.cached_property, which takes a
        # lock on every access before Python 3.12.
        text = self.__dict__.get("_canonical")
        if text is None:
            text = canonical_json(self.data)
            object.__setattr__(self, "_canonical", text)
        return text

    def content_hash(self) -> str:
        digest = self.__dict__.get("_hash")
        if digest is None:
            digest = hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()
            object.__setattr__(self, "_hash", digest)
        return digest


# Built once: json.dumps with options builds an encoder for every call (context.to_json).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical_json(data: Any) -> str:
    return _CANONICAL(data)


def crossing_window(expected: str) -> tuple[datetime, datetime]:
    if len(expected) == 10:
        start = datetime.combine(date.fromisoformat(expected), time(0), HONG_KONG)
        return start, start + timedelta(days=1)
    moment = datetime.fromisoformat(expected)
    return moment, moment


def _cross_field_rules(data: dict[str, Any], ctx: Context) -> None:
    tranship = data.get("transhipment")
    if tranship:
        wanted = {"LAND_TO_AIR": "IMPORT", "AIR_TO_LAND": "EXPORT"}[tranship["mode"]]
        if data["direction"] != wanted:
            ctx.add(
                "INVALID_VALUE",
                "transhipment.mode",
                f"{tranship['mode']} transhipment goes with direction {wanted}, not {data['direction']}",
            )


def validate_record(value: Any, control_points: Collection[str]) -> CargoRecord:
    """Check a record in its JSON shape; every violation is reported at once in one GatewayError."""
    ctx = Context(control_points)
    data = RECORD.check(value, "", ctx)
    if data is not _INVALID:
        _cross_field_rules(data, ctx)
    if ctx.problems:
        raise GatewayError(ctx.problems)
    return CargoRecord(data)


def record_json_schema() -> dict[str, Any]:
    return RECORD.schema()
