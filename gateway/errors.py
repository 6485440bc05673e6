"""The error catalogue: one vocabulary for every channel (design section 8).

JSON, XML and SOAP carry an error's ``name`` as ``code``; EDIFACT carries the ``short`` code in ERC
(data element 9321, an..8) and the name and message in FTX. The README's table is generated from
``CATALOGUE`` (``roadcargo errors --markdown``) and a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    name: str
    short: str
    http_status: int
    when: str


_KINDS = [
    ErrorKind("MISSING_FIELD", "E001", 422, "a required field is absent or empty"),
    ErrorKind("INVALID_VALUE", "E002", 422, "wrong type, length, range or shape; or an unknown field"),
    ErrorKind(
        "INVALID_CODE",
        "E003",
        422,
        "not in its code list (country, currency, package type, UN/LOCODE, control point)",
    ),
    ErrorKind("CHECK_DIGIT", "E004", 422, "a container number's ISO 6346 check digit is wrong"),
    ErrorKind("MALFORMED", "E005", 400, "the request body cannot be read (not JSON, not UTF-8)"),
    ErrorKind("CCRN_CHECK_DIGIT", "E010", 422, "a CCRN's Damm check digit is wrong"),
    ErrorKind("LODGEMENT_WINDOW", "E020", 422, "expected crossing too far ahead or in the past"),
    ErrorKind("EXPIRED", "E021", 409, "the consignment expired"),
    ErrorKind("DUPLICATE_REFERENCE", "E030", 409, "same `submitter_reference`, different content"),
    ErrorKind("NOT_FOUND", "E040", 404, "unknown, or another party's (the two are indistinguishable)"),
    ErrorKind("METHOD_NOT_ALLOWED", "E041", 405, "the path exists but not with this HTTP method"),
    ErrorKind("INVALID_STATE", "E050", 409, "the action is not allowed in the current status"),
    ErrorKind("KEY_LIMIT", "E051", 409, "the party already holds two live API keys; revoke one first"),
    ErrorKind("ALREADY_BUNDLED", "E060", 409, "the CCRN or the vehicle is in another live bundle"),
    ErrorKind("BUNDLE_MISMATCH", "E061", 422, "mixed directions or control points in one bundle"),
    ErrorKind("SLOT_FULL", "E062", 409, "no slot with room today (control point closed or full)"),
    ErrorKind("SENDER_MISMATCH", "E070", 403, "the EDIFACT sender is not the authenticated party's"),
    ErrorKind("DUPLICATE_INTERCHANGE", "E071", 409, "a known interchange reference with different content"),
    ErrorKind("SCHEMA_INVALID", "E080", 422, "the XML document violates the XSD outside any consignment"),
    ErrorKind("XML_FORBIDDEN", "E081", 400, "DTDs, entities, too deep"),
    ErrorKind("TOO_LARGE", "E413", 413, "the request is over `[server] max_body_bytes`"),
    ErrorKind(
        "UNSUPPORTED_MEDIA_TYPE", "E415", 415, "the request body is not of a content type accepted here"
    ),
    ErrorKind("OVER_DECLARATION", "E090", 409, "more declared than the ledger holds"),
    ErrorKind("NOT_CROSSED", "E091", 409, "declaring a consignment that has not crossed"),
    ErrorKind("UNAUTHORIZED", "E401", 401, "no or unknown credentials"),
    ErrorKind("FORBIDDEN", "E403", 403, "the role or scope may not do this; or the party is suspended"),
    ErrorKind("RATE_LIMITED", "E429", 429, "too many requests"),
    ErrorKind("INTERNAL", "E500", 500, "an unexpected fault in the gateway; nothing was accepted"),
    ErrorKind("UNAVAILABLE", "E503", 503, "the database is down; retry after the `Retry-After` seconds"),
    ErrorKind("STORAGE_FULL", "E507", 507, "the data directory has no room; nothing was accepted"),
]

CATALOGUE: dict[str, ErrorKind] = {kind.name: kind for kind in _KINDS}


@dataclass(frozen=True)
class Problem:
    """One error found in a request: the catalogue name, where, and what a person should know."""

    code: str
    field: str | None
    message: str

    def __post_init__(self) -> None:
        if self.code not in CATALOGUE:
            raise ValueError(f"{self.code!r} is not in the error catalogue")

    @property
    def kind(self) -> ErrorKind:
        return CATALOGUE[self.code]

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "field": self.field, "message": self.message}


class GatewayError(Exception):
    """A request the gateway refuses; carries every problem found, never only the first."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        if not self.problems:
            raise ValueError("a GatewayError needs at least one problem")
        super().__init__("; ".join(f"{p.code}: {p.message}" for p in self.problems))

    @classmethod
    def one(cls, code: str, message: str, field: str | None = None) -> GatewayError:
        return cls([Problem(code, field, message)])

    @property
    def http_status(self) -> int:
        return self.problems[0].kind.http_status

    def as_body(self) -> dict[str, list[dict[str, str | None]]]:
        return {"errors": [p.as_dict() for p in self.problems]}


class RetryLater(GatewayError):
    """An error whose request may be sent again after ``retry_after`` whole seconds, which HTTP answers
    (and SOAP faults over HTTP) carry as ``Retry-After``."""

    def __init__(self, code: str, message: str, retry_after: float) -> None:
        super().__init__([Problem(code, None, message)])
        self.retry_after = max(1, int(retry_after + 0.999))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimited(RetryLater):
    """RATE_LIMITED: the party sent more than its limit allows."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__("RATE_LIMITED", message, retry_after)


class Unavailable(RetryLater):
    """UNAVAILABLE: the request could not be carried out now (the database away or busy, a collision, a
    read that failed); nothing was accepted."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__("UNAVAILABLE", message, retry_after)


def catalogue_markdown() -> str:
    """The catalogue as the Markdown table the README publishes."""
    lines = ["| name | short | HTTP | when |", "|---|---|---|---|"]
    lines += [f"| `{k.name}` | `{k.short}` | {k.http_status} | {k.when} |" for k in _KINDS]
    return "\n".join(lines) + "\n"
