"""Declaration reuse over the HTTP API (design section 9): the prefilled declaration in JSON, XML or
EDIFACT CUSDEC, grants to a declaration agent, lodging completed declarations (JSON or XML) against the
ledger, and the deadlines. Thin handlers: authenticate, call one function of ``gateway.declarations``,
render through ``mappings``."""

from __future__ import annotations

import json
import secrets
import threading
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from lxml import etree
from sqlalchemy import select

from adapters.http_api import _ERROR_RESPONSES, _Call, _object, _parse_json, _run
from adapters.xml_channel import parse_xml
from gateway import declarations, tables
from gateway.context import Actor, Gateway
from gateway.declaration_document import DECLARATION
from gateway.errors import GatewayError, Problem
from mappings import declaration_xml
from mappings.edifact.cusdec import cusdec_interchange

router = APIRouter(prefix="/api/v1")

XML_TYPE = "application/xml"
EDIFACT_TYPE = "application/EDIFACT"
FORMATS = {"json": "application/json", "xml": XML_TYPE, "edifact": EDIFACT_TYPE}
_SUFFIX = {"json": "json", "xml": "xml", "edifact": "edi"}


# -- rendering -----------------------------------------------------------------------------------------


def edifact_recipient(gw: Gateway, actor: Actor) -> str:
    """Whom a CUSDEC download is addressed to: the party's EDI identifier, else its party id."""
    with gw.engine.connect() as conn:
        identifier = conn.scalar(
            select(tables.edi_identifiers.c.identifier)
            .where(tables.edi_identifiers.c.party_id == actor.party_id)
            .order_by(tables.edi_identifiers.c.identifier)
            .limit(1)
        )
    return str(identifier or actor.party_id or gw.config.edifact.identifier)


def render(gw: Gateway, actor: Actor, documents: list[dict[str, Any]], form: str) -> bytes:
    """Prefilled declarations in a format: one JSON document or XML document (the first), or one
    CUSDEC interchange with a message for each."""
    if form == "xml":
        return declaration_xml.to_xml(documents[0])
    if form == "edifact":
        return cusdec_interchange(
            documents,
            gw.now(),
            sender=gw.config.edifact.identifier,
            recipient=edifact_recipient(gw, actor),
            control_reference=f"D{secrets.randbelow(10**13):013d}",
        )
    return json.dumps(documents[0], ensure_ascii=False, indent=2).encode("utf-8")


def _format(value: str | None) -> str:
    form = (value or "json").strip().lower()
    if form not in FORMATS:
        raise GatewayError.one("INVALID_VALUE", f"format is json, xml or edifact, not {value!r}", "format")
    return form


# -- reading XML -------------------------------------------------------------------------------------


@cache
def _xsd_bytes() -> bytes:
    return resources.files("schemas").joinpath("declaration.xsd").read_bytes()


_local = threading.local()


def _schema() -> etree.XMLSchema:
    """Compiled once per thread: a compiled schema keeps the error log of its last validation."""
    compiled: etree.XMLSchema | None = getattr(_local, "schema", None)
    if compiled is None:
        compiled = _local.schema = etree.XMLSchema(parse_xml(_xsd_bytes(), len(_xsd_bytes())))
    return compiled


def declaration_from_xml(gw: Gateway, body: bytes) -> dict[str, Any]:
    """A ``Declaration`` document read with the XML channel's hardened parser and checked against
    ``schemas/declaration.xsd``; every schema violation is named, with its line."""
    root = parse_xml(body, gw.config.server.max_body_bytes)
    if root.tag != declaration_xml.q(declaration_xml.ROOT):
        name = etree.QName(root)
        raise GatewayError.one(
            "SCHEMA_INVALID",
            f"the root element is {name.localname} in {name.namespace or 'no namespace'}; "
            f"send a Declaration in {declaration_xml.NS}",
        )
    xsd = _schema()
    if not xsd.validate(root):
        raise GatewayError(
            [
                Problem("SCHEMA_INVALID", entry.path or None, f"line {entry.line}: {entry.message}")
                for entry in xsd.error_log
            ]
        )
    return declaration_xml.from_element(root)


def _lodged_body(c: _Call, content_type: str | None, body: bytes) -> dict[str, Any]:
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    if kind in (XML_TYPE, "text/xml") or kind.endswith("+xml"):
        return declaration_from_xml(c.gw, body)
    data = _parse_json(body, content_type)
    if not isinstance(data, dict):
        raise GatewayError.one("INVALID_VALUE", "send a declaration as a JSON object")
    return data


# -- routes -------------------------------------------------------------------------------------------


@router.get(
    "/consignments/{ccrn}/declaration",
    summary="The trade declaration prefilled from the record and its crossing (JSON, XML or CUSDEC)",
    responses={
        200: {
            "description": "fields the record cannot supply are present with missing: true and supply",
            "content": {"application/json": {}, XML_TYPE: {}, EDIFACT_TYPE: {}},
        },
        **_ERROR_RESPONSES,
    },
)
async def get_prefilled(
    request: Request,
    ccrn: str,
    kind: str | None = Query(None, description="import or export (default: the consignment's direction)"),
    format: str | None = Query("json", description="json, xml or edifact (CUSDEC D.96B)"),
) -> Response:
    form = _format(format)

    def work(c: _Call) -> bytes:
        return render(c.gw, c.actor, [declarations.prefill(c.gw, c.actor, ccrn, kind)], form)

    body = await _run(request, work)
    number = "".join(ccrn.split())
    return Response(
        body,
        media_type=FORMATS[form],
        headers={"Content-Disposition": f'inline; filename="declaration-{number}.{_SUFFIX[form]}"'},
    )


@router.post(
    "/consignments/{ccrn}/grants",
    status_code=201,
    summary="Let another party (your declaration agent) read the declaration and lodge it",
    responses=_ERROR_RESPONSES,
)
async def grant(request: Request, ccrn: str) -> JSONResponse:
    def work(c: _Call) -> Any:
        return declarations.grant(c.gw, c.actor, ccrn, _object(c.data, {"party"}).get("party"))

    result = await _run(request, work, changes=True, json_body=True)
    return JSONResponse(result, status_code=201 if result["created"] else 200)


@router.get(
    "/consignments/{ccrn}/declarations",
    summary="The declarations lodged against a consignment, and its write-off ledger",
    responses=_ERROR_RESPONSES,
)
async def list_declarations(request: Request, ccrn: str) -> JSONResponse:
    return JSONResponse(await _run(request, lambda c: declarations.declarations_of(c.gw, c.actor, ccrn)))


@router.post(
    "/declarations",
    status_code=201,
    summary="Lodge a completed declaration (JSON, or XML of schemas/declaration.xsd) against the ledger",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": DECLARATION.schema()},
                XML_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
    responses=_ERROR_RESPONSES,
)
async def lodge(request: Request) -> JSONResponse:
    content_type = request.headers.get("content-type")
    body = await request.body()

    def work(c: _Call) -> Any:
        return declarations.lodge(c.gw, c.actor, _lodged_body(c, content_type, body), c.raw_id)

    return JSONResponse(await _run(request, work, changes=True), status_code=201)


@router.get(
    "/declarations/overdue",
    summary="Crossed consignments not fully declared in time, and those due within 48 hours",
    responses=_ERROR_RESPONSES,
)
async def overdue(request: Request) -> JSONResponse:
    return JSONResponse(await _run(request, lambda c: declarations.overdue(c.gw, c.actor)))


@router.get("/declarations/{number}", summary="A lodged declaration", responses=_ERROR_RESPONSES)
async def get_declaration(request: Request, number: str) -> JSONResponse:
    return JSONResponse(await _run(request, lambda c: declarations.get_declaration(c.gw, c.actor, number)))
