"""The XML channel (design section 9): ``POST /api/v1/xml`` and ``roadcargo ingest`` of ``.xml`` files.

A ``CargoInformation`` document (``schemas/eci.xsd``) is parsed by a hardened parser shared with the SOAP
service, validated with lxml's XMLSchema, mapped to canonical records and submitted in batches; the
reply is an ``Acknowledgement`` with one entry per consignment.

What a client gets back:
- 200 and the ``Acknowledgement`` whenever the document could be read as a ``CargoInformation``: each
  consignment is accepted or rejected on its own, schema violations included (with line, element path
  and reason), so one bad consignment never stops the others. Violations outside any consignment are
  listed under the Acknowledgement's own ``Errors`` as ``SCHEMA_INVALID``.
- A JSON error body ``{"errors": [...]}``, like every other HTTP error of the gateway, when the document
  cannot be read at all: ``XML_FORBIDDEN`` (DTD, entity declaration, too deep), ``MALFORMED`` (not
  well-formed, not UTF-8), ``SCHEMA_INVALID`` (another root element or namespace), ``TOO_LARGE``.
  ``ingest_xml`` raises the same ``GatewayError`` (the SFTP mailbox files such input under ``/failed``).

lxml does the hot path (about 35 times faster than xmlschema here); xmlschema remains the toolkit the
tests use to load and inspect the schema.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lxml import etree
from starlette.concurrency import run_in_threadpool

from gateway import parties
from gateway.consignments import Outcome, Submission, require_filer, submit
from gateway.context import Actor, Gateway, store_raw
from gateway.errors import GatewayError, Problem
from mappings.xml_eci import (
    NS,
    ConsignmentResult,
    Located,
    acknowledgement,
    child_field,
    element_for_field,
    field_path,
    q,
    record_from_xml,
    to_bytes,
    xml_path,
)

MAX_DEPTH = 32  # our deepest document is 7 levels inside a SOAP envelope
BATCH = 500  # consignments per transaction: one commit per batch is what makes bulk ingest fast
_ENCODING_DECLARATION = re.compile(rb"^\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
_UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_TOO_DEEP = "/" + "/".join(["*"] * (MAX_DEPTH + 1))


# -- hardened parsing (XML channel, SOAP, ingest) --------------------------------------------------


def _check_size(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise GatewayError.one("TOO_LARGE", f"the document is {len(data)} bytes; the limit is {max_bytes}")


def parse_xml(data: bytes, max_bytes: int) -> etree._Element:
    """Parse untrusted XML: bytes only, UTF-8, no DTD or entity declaration, no network or file access,
    bounded size and depth. Raises GatewayError naming the problem."""
    if not isinstance(data, bytes):
        # A str could be taken for a path or URL by some XML libraries: refuse it outright.
        raise TypeError("XML input must be bytes")
    _check_size(data, max_bytes)
    declared = _ENCODING_DECLARATION.match(data[:200])
    if declared and declared[1].decode("ascii").lower() not in _UTF8_NAMES:
        raise GatewayError.one(
            "MALFORMED", f"the document declares encoding {declared[1].decode('ascii')}; send UTF-8"
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GatewayError.one(
            "MALFORMED", f"the document is not UTF-8: byte {exc.start} (0x{data[exc.start]:02x}) is invalid"
        ) from None
    # Any DTD is refused before parsing: it is how external entities (XXE) and entity expansion
    # (billion laughs) arrive, and our documents never need one.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise GatewayError.one(
            "XML_FORBIDDEN", "DTDs and entity declarations are not accepted: remove the <!DOCTYPE ...>"
        )
    parser = etree.XMLParser(  # one per call: lxml parsers must not be shared between threads
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        collect_ids=False,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        message = str(exc.msg or exc)
        if "depth" in message.lower() or "entit" in message.lower():
            raise GatewayError.one("XML_FORBIDDEN", f"refused: {message}") from None
        raise GatewayError.one(
            "MALFORMED", f"the document is not well-formed XML: {message} (line {exc.lineno})"
        ) from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise GatewayError.one("XML_FORBIDDEN", "DTDs are not accepted")
    if _too_deep()(root):
        raise GatewayError.one("XML_FORBIDDEN", f"the document is nested more than {MAX_DEPTH} levels deep")
    return root


def _too_deep() -> etree.XPath:
    """The depth check compiled once per thread (like the schema, a compiled XPath is not shared
    between threads)."""
    compiled: etree.XPath | None = getattr(_local, "too_deep", None)
    if compiled is None:
        compiled = _local.too_deep = etree.XPath(f"boolean({_TOO_DEEP})")
    return compiled


# -- the schema ------------------------------------------------------------------------------------


@cache
def _xsd_bytes() -> bytes:
    return resources.files("schemas").joinpath("eci.xsd").read_bytes()


_local = threading.local()


def schema() -> etree.XMLSchema:
    """``schemas/eci.xsd`` compiled once per thread: a compiled schema keeps the error log of its last
    validation, so threads must not share one."""
    compiled: etree.XMLSchema | None = getattr(_local, "schema", None)
    if compiled is None:
        compiled = _local.schema = etree.XMLSchema(parse_xml(_xsd_bytes(), len(_xsd_bytes())))
    return compiled


@cache
def _type_notes() -> dict[str, str]:
    """The documentation of each simple type, to explain a value the schema refused."""
    xs = "{http://www.w3.org/2001/XMLSchema}"
    root = parse_xml(_xsd_bytes(), len(_xsd_bytes()))
    return {
        str(t.get("name")): " ".join(doc.split())
        for t in root.iter(f"{xs}simpleType")
        if t.get("name") and (doc := t.findtext(f"{xs}annotation/{xs}documentation"))
    }


_STEP = re.compile(r"^(?:[\w.-]+:)?(\*|[\w.-]+)(?:\[(\d+)\])?$")
_EXPECTED = re.compile(r"Expected is (?:one of )?\( (?:\{[^}]*\})?([\w.-]+)")
_TYPE = re.compile(
    r"^Element '(?:\{[^}]*\})?([\w.-]+)': '(.*)' is not a valid value of the \w+ type '\{"
    + re.escape(NS)
    + r"\}([\w.-]+)'",
    re.S,
)


def _resolve(root: etree._Element, path: str | None) -> etree._Element | None:
    """The element a libxml2 error path names (``/eci:Consignment/eci:Item[2]`` or ``/*/*[2]``, the
    second form counting all element siblings), relative to the validated element."""
    steps = (path or "").strip("/").split("/")
    node = root
    for step in steps[1:]:
        match = _STEP.match(step)
        if match is None:
            return None
        name, position = match[1], int(match[2] or 1)
        candidates = [
            c for c in node if isinstance(c.tag, str) and (name == "*" or etree.QName(c).localname == name)
        ]
        if len(candidates) < position:
            return None
        node = candidates[position - 1]
    return node if steps and steps[0] else None


def _reason(entry: etree._LogEntry) -> str:
    named = _TYPE.search(entry.message)
    if named and named[3] in _type_notes():
        # libxml2 names only the type; the schema's own documentation says what is wanted.
        return f"{named[1]} {named[2]!r} is not valid: {_type_notes()[named[3]]}"
    return entry.message.replace("{" + NS + "}", "")


def _locate(entry: etree._LogEntry, validated: etree._Element) -> Located:
    """A schema violation inside a consignment as a catalogue error with its record field."""
    node = _resolve(validated, entry.path)
    path = xml_path(node) if node is not None else None
    expected = _EXPECTED.search(entry.message)
    code, field = "INVALID_VALUE", field_path(node) if node is not None else None
    if node is not None and expected:
        if "Missing child" in entry.message:
            code, field = "MISSING_FIELD", child_field(node, expected[1])
        elif "not expected" in entry.message:
            parent = node.getparent()
            if parent is not None and parent.find(q(expected[1])) is None:
                # An element came where a required one should have: the required one is missing.
                code, field = "MISSING_FIELD", child_field(parent, expected[1])
    if "attribute 'action'" in entry.message:
        field = "action"
    return Located(Problem(code, field, _reason(entry)), entry.line or None, path)


def validation_errors(element: etree._Element) -> list[Located]:
    """Every schema violation of an element (a global element of the XSD) and its subtree."""
    xsd = schema()
    if xsd.validate(element):
        return []
    return [_locate(entry, element) for entry in xsd.error_log]


def _inside_consignment(node: etree._Element, root: etree._Element) -> bool:
    while node is not None and node is not root:
        if node.tag == q("Consignment") and node.getparent() is root:
            return True
        node = node.getparent()
    return False


def schema_errors(
    root: etree._Element, consignments: Sequence[etree._Element]
) -> tuple[list[Located], dict[int, list[Located]]]:
    """Validate a CargoInformation; when it fails, validate each consignment on its own so that the
    violations are attributed to their consignment and the valid ones go on. Returns the errors
    outside any consignment and the errors by consignment position (from 0)."""
    xsd = schema()
    if xsd.validate(root):
        return [], {}
    whole = list(xsd.error_log)
    by_consignment: dict[int, list[Located]] = {}
    for i, element in enumerate(consignments):
        errors = validation_errors(element)
        if errors:
            by_consignment[i] = errors
    outside = []
    for entry in whole:
        node = _resolve(root, entry.path)
        if node is not None and _inside_consignment(node, root):
            continue
        outside.append(
            Located(
                Problem("SCHEMA_INVALID", None, _reason(entry)),
                entry.line or None,
                xml_path(node) if node is not None else entry.path,
            )
        )
    return outside, by_consignment


# -- processing ------------------------------------------------------------------------------------


def require_cargo_information(root: etree._Element) -> None:
    if root.tag == q("CargoInformation"):
        return
    name = etree.QName(root)
    where = f"namespace {name.namespace}" if name.namespace else "no namespace"
    raise GatewayError.one(
        "SCHEMA_INVALID",
        f"the document is a {name.localname} in {where}; expected CargoInformation in namespace {NS}",
    )


def _at(consignment: etree._Element, problem: Problem) -> Located:
    element = element_for_field(consignment, problem.field)
    if element is None:
        element = consignment
    return Located(problem, element.sourceline, xml_path(element))


_CONSIGNMENT = q("Consignment")
_CCRN = q("Ccrn")
_RECORD = q("Record")
_REFERENCE = f"{_RECORD}/{q('SubmitterReference')}"


def _submission(element: etree._Element) -> Submission:
    """A schema-valid Consignment as a service action; the rules XSD 1.0 cannot state are here."""
    action = str(element.get("action"))
    ccrn_element = element.find(_CCRN)
    record = element.find(_RECORD)
    ccrn = (ccrn_element.text or "").strip() if ccrn_element is not None else None
    if action == "lodge" and ccrn is not None:
        raise GatewayError.one(
            "INVALID_VALUE",
            f"a lodge gets its CCRN from the gateway; to change consignment {ccrn}, send action amend",
            "ccrn",
        )
    if action != "lodge" and ccrn is None:
        raise GatewayError.one("MISSING_FIELD", f"an {action} names its consignment: add its Ccrn", "ccrn")
    if action != "cancel" and record is None:
        raise GatewayError.one("MISSING_FIELD", f"a {action} carries the cargo information: add its Record")
    data = record_from_xml(record) if record is not None and action != "cancel" else None
    return Submission(action, record=data, ccrn=ccrn)


def process(
    gw: Gateway, actor: Actor, root: etree._Element, raw_message_id: int | None
) -> tuple[list[ConsignmentResult], list[Located]]:
    """Validate, map and submit the consignments of a CargoInformation element, in batches."""
    consignments = [c for c in root if c.tag == _CONSIGNMENT]
    outside, invalid = schema_errors(root, consignments)
    results: list[ConsignmentResult] = []
    pending: list[tuple[ConsignmentResult, etree._Element, Submission]] = []
    for i, element in enumerate(consignments):
        reference = element.findtext(_REFERENCE)
        result = ConsignmentResult(i + 1, element.get("action"), reference and reference.strip())
        results.append(result)
        if i in invalid:
            result.errors = invalid[i]
            continue
        try:
            pending.append((result, element, _submission(element)))
        except GatewayError as exc:
            result.errors = [_at(element, p) for p in exc.problems]
    for start in range(0, len(pending), BATCH):
        batch = pending[start : start + BATCH]
        outcomes = submit(gw, actor, [sub for _r, _e, sub in batch], raw_message_id)
        for (result, element, _sub), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Outcome):
                result.view, result.changed = outcome.view, outcome.changed
            else:
                result.errors = [_at(element, p) for p in outcome.problems]
    return results, outside


def ingest(
    gw: Gateway, actor: Actor, data: bytes, content_type: str = "application/xml"
) -> tuple[bytes, list[ConsignmentResult]]:
    """The whole channel: refuse what cannot be read, keep the raw document, answer the
    Acknowledgement (and the per-consignment results, for metrics)."""
    if not isinstance(data, bytes):
        raise TypeError("XML input must be bytes")
    require_filer(actor)  # before anything is read: one clear answer for a party that may not file
    limit = gw.config.server.max_body_bytes
    _check_size(data, limit)  # before it is stored
    raw_id = store_raw(gw, actor, content_type, data)
    root = parse_xml(data, limit)
    require_cargo_information(root)
    results, outside = process(gw, actor, root, raw_id)
    return to_bytes(acknowledgement(results, outside)), results


def ingest_xml(gw: Gateway, actor: Actor, data: bytes) -> bytes:
    """Process one CargoInformation document and return its Acknowledgement document (UTF-8 bytes).
    Raises GatewayError when the document cannot be read at all (see the module's docstring)."""
    return ingest(gw, actor, data)[0]


# -- HTTP ------------------------------------------------------------------------------------------

router = APIRouter(prefix="/api/v1")

_XML_TYPES = ("application/xml", "text/xml")


async def _actor(request: Request) -> Actor:
    header = request.headers.get("authorization", "")
    return await run_in_threadpool(parties.authenticate_bearer, request.app.state.gateway, header, "xml")


@router.post(
    "/xml",
    summary="Lodge, amend and cancel consignments with a CargoInformation document",
    description=(
        "The body is a CargoInformation document of schemas/eci.xsd (UTF-8, no DTD). The answer is 200 "
        "with the Acknowledgement whenever the document can be read: each consignment is accepted or "
        "rejected on its own. A document that cannot be read gets a JSON error body."
    ),
    response_class=Response,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/xml": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={
        200: {"description": "the Acknowledgement", "content": {"application/xml": {}}},
        **{
            status: {
                "description": "the document cannot be read, or the caller may not file",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}},
            }
            for status in (400, 401, 403, 413, 415, 422)
        },
    },
)
async def post_xml(request: Request) -> Response:
    actor = await _actor(request)
    content_type = request.headers.get("content-type", "application/xml")
    media = content_type.split(";")[0].strip().lower()
    if media and media not in _XML_TYPES and not media.endswith("+xml"):
        raise GatewayError.one("UNSUPPORTED_MEDIA_TYPE", f"send application/xml, not {media}")
    body = await request.body()
    ack, results = await run_in_threadpool(ingest, request.app.state.gateway, actor, body, content_type)
    for result in results:
        if result.changed:
            request.app.state.metrics.consignments.labels(channel="xml", action=result.action).inc()
    return Response(ack, media_type="application/xml")
