"""The SOAP 1.1 document/literal service of design section 9, at ``/soap/cargo``.

Our own WSDL (``schemas/cargo.wsdl``) and XSD are served as they are, with their addresses made absolute
for the host that was asked (zeep would otherwise resolve ``eci.xsd`` against ``/soap/``). Envelopes
are parsed by the XML channel's hardened parser and bodies validated with the same compiled schema;
the operation is chosen by the Body's element, not by the SOAPAction header.

Faults follow SOAP 1.1 over HTTP: status 500, ``soap:Client`` when the request is at fault (malformed
envelope, authentication, business errors), ``soap:Server`` when the gateway is, and a detail
``eci:GatewayFault`` listing the error catalogue's entries. Nothing here answers a bare 500.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lxml import etree
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool

from adapters import xml_channel
from gateway import bundles, consignments, db, parties
from gateway.context import Actor, Gateway, store_raw
from gateway.errors import GatewayError, RateLimited
from mappings import xml_eci
from mappings.xml_eci import ConsignmentResult, Located, q

log = logging.getLogger("roadcargo.soap")

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText"
)
_XS = "http://www.w3.org/2001/XMLSchema"
_WSDL_SOAP = "http://schemas.xmlsoap.org/wsdl/soap/"
_SOAP_XML = "text/xml; charset=utf-8"
_BAD_CREDENTIALS = "the UsernameToken is not a registered party id with one of its live API keys"


class SoapFault(Exception):
    """A request answered with a SOAP fault: ``code`` is the faultcode's local name."""

    def __init__(self, errors: Sequence[Located], code: str = "Client") -> None:
        self.errors = list(errors)
        self.code = code
        self.headers: dict[str, str] = {}  # Retry-After of RATE_LIMITED and UNAVAILABLE
        super().__init__("; ".join(f"{e.problem.code}: {e.problem.message}" for e in self.errors))

    @classmethod
    def of(cls, error: GatewayError, code: str | None = None) -> SoapFault:
        server_side = any(p.kind.http_status >= 500 for p in error.problems)
        return cls([Located(p) for p in error.problems], code or ("Server" if server_side else "Client"))

    @classmethod
    def one(cls, name: str, message: str, code: str | None = None) -> SoapFault:
        return cls.of(GatewayError.one(name, message), code)


# -- documents served ------------------------------------------------------------------------------


@cache
def _schema_file(name: str) -> bytes:
    return resources.files("schemas").joinpath(name).read_bytes()


def wsdl_for(base_url: str) -> bytes:
    """The WSDL with ``soap:address`` and the XSD's ``schemaLocation`` as absolute URLs under base_url."""
    data = _schema_file("cargo.wsdl")
    root = xml_channel.parse_xml(data, len(data))
    for imported in root.iter(f"{{{_XS}}}import"):
        imported.set("schemaLocation", f"{base_url}/soap/eci.xsd")
    for address in root.iter(f"{{{_WSDL_SOAP}}}address"):
        address.set("location", f"{base_url}/soap/cargo")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


router = APIRouter(prefix="/soap", include_in_schema=False)


@router.get("/cargo")
async def get_wsdl(request: Request) -> Response:
    if "wsdl" not in {key.lower() for key in request.query_params}:
        raise GatewayError.one("NOT_FOUND", "SOAP requests are POSTed here; the WSDL is at /soap/cargo?wsdl")
    return Response(wsdl_for(str(request.base_url).rstrip("/")), media_type=_SOAP_XML)


@router.get("/eci.xsd")
async def get_xsd() -> Response:
    return Response(_schema_file("eci.xsd"), media_type="application/xml")


@router.post("/cargo")
async def post_soap(request: Request) -> Response:
    body = await request.body()
    gw: Gateway = request.app.state.gateway
    try:
        payload, results = await run_in_threadpool(handle, gw, body)
    except SoapFault as fault:
        # Over the rate limit or the database down: the HTTP status says so (429, 503), as on the API.
        status = {"RATE_LIMITED": 429, "UNAVAILABLE": 503}.get(fault.errors[0].problem.code, 500)
        return Response(
            fault_envelope(fault), status_code=status, headers=fault.headers, media_type=_SOAP_XML
        )
    for result in results:
        if result.changed:
            request.app.state.metrics.consignments.labels(channel="soap", action=result.action).inc()
    return Response(envelope(payload), media_type=_SOAP_XML)


# -- envelopes -------------------------------------------------------------------------------------


def envelope(payload: etree._Element) -> bytes:
    root = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV})
    etree.SubElement(root, f"{{{SOAP_ENV}}}Body").append(payload)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def fault_envelope(fault: SoapFault) -> bytes:
    root = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"soap": SOAP_ENV})
    element = etree.SubElement(etree.SubElement(root, f"{{{SOAP_ENV}}}Body"), f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(element, "faultcode").text = f"soap:{fault.code}"
    etree.SubElement(element, "faultstring").text = str(fault)
    etree.SubElement(element, "detail").append(xml_eci.gateway_fault(fault.errors))
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


# -- handling --------------------------------------------------------------------------------------


def handle(gw: Gateway, body: bytes) -> tuple[etree._Element, list[ConsignmentResult]]:
    """One SOAP request: the response payload and the consignments it touched; raises SoapFault only."""
    try:
        return _handle(gw, body)
    except SoapFault:
        raise
    except GatewayError as exc:
        fault = SoapFault.of(exc)
        fault.headers = dict(getattr(exc, "headers", {}))
        raise fault from None
    except (OperationalError, PoolTimeout) as exc:
        error = db.unavailable(exc)
        fault = SoapFault.of(error)
        fault.headers = error.headers
        raise fault from None
    except Exception:
        log.exception("unexpected error in a SOAP request")
        raise SoapFault.one("INTERNAL", "an unexpected fault; nothing was accepted") from None


def _handle(gw: Gateway, body: bytes) -> tuple[etree._Element, list[ConsignmentResult]]:
    root = xml_channel.parse_xml(body, gw.config.server.max_body_bytes)
    if root.tag == f"{{{SOAP12_ENV}}}Envelope":
        raise SoapFault.one(
            "MALFORMED", "SOAP 1.2 is not served here: send a SOAP 1.1 envelope", "VersionMismatch"
        )
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise SoapFault.one("MALFORMED", f"not a SOAP 1.1 Envelope ({SOAP_ENV}) but {root.tag}")
    header = root.find(f"{{{SOAP_ENV}}}Header")
    _check_must_understand(header)
    body_element = root.find(f"{{{SOAP_ENV}}}Body")
    if body_element is None:
        raise SoapFault.one("MALFORMED", "the envelope has no Body")
    payload = [c for c in body_element if isinstance(c.tag, str)]
    if len(payload) != 1:
        raise SoapFault.one("MALFORMED", f"the Body holds {len(payload)} elements; send exactly one request")
    actor = _authenticate(gw, header)
    request = payload[0]
    if request.tag == q("CargoInformation"):
        consignments.require_filer(actor)
        raw_id = store_raw(gw, actor, "text/xml", _without_password(body))
        results, outside = xml_channel.process(gw, actor, request, raw_id)
        return xml_eci.acknowledgement(results, outside), results
    if request.tag == q("GetConsignmentStatus"):
        _validate(request)
        view = consignments.get(gw, actor, request.findtext(q("Ccrn")))
        return xml_eci.status_response(view), []
    if request.tag == q("BundleVehicle"):
        _validate(request)
        store_raw(gw, actor, "text/xml", _without_password(body))
        return xml_eci.bundle_response(_bundle(gw, actor, xml_eci.bundle_request(request))), []
    raise SoapFault.one(
        "INVALID_VALUE",
        f"unknown request {etree.QName(request).localname} in {etree.QName(request).namespace}; "
        f"this service takes CargoInformation, GetConsignmentStatus and BundleVehicle of {xml_eci.NS}",
    )


_PASSWORD = re.compile(rb"(<(?:[\w.-]+:)?Password\b[^>]*>)(?:<!\[CDATA\[.*?\]\]>|[^<])*(</)", re.S)


def _without_password(body: bytes) -> bytes:
    """The envelope as it is kept among the raw messages: byte for byte, but for the UsernameToken's
    password, which is an API key and is never stored in clear."""
    return _PASSWORD.sub(rb"\1[redacted]\2", body)


def _check_must_understand(header: etree._Element | None) -> None:
    for block in header if header is not None else ():
        if not isinstance(block.tag, str) or block.tag == f"{{{WSSE}}}Security":
            continue
        if block.get(f"{{{SOAP_ENV}}}mustUnderstand") in ("1", "true"):
            raise SoapFault.one(
                "INVALID_VALUE", f"header {block.tag} must be understood and is not", "MustUnderstand"
            )


def _authenticate(gw: Gateway, header: etree._Element | None) -> Actor:
    """WS-Security UsernameToken, PasswordText: the party id and one of its API keys."""
    token = header.find(f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken") if header is not None else None
    if token is None:
        raise SoapFault.one(
            "UNAUTHORIZED", "send a WS-Security UsernameToken: your party id and API key (PasswordText)"
        )
    username = (token.findtext(f"{{{WSSE}}}Username") or "").strip()
    password = token.find(f"{{{WSSE}}}Password")
    if password is not None and password.get("Type", PASSWORD_TEXT) != PASSWORD_TEXT:
        raise SoapFault.one("UNAUTHORIZED", "only PasswordText is accepted: the API key itself, over TLS")
    key = (password.text or "").strip() if password is not None else ""
    if not username or not key:
        raise SoapFault.one("UNAUTHORIZED", "the UsernameToken needs a Username and a Password")
    try:
        actor = parties.authenticate(gw, key, "soap")
    except RateLimited:
        raise  # a known party over its limit: 429, not "bad credentials"
    except GatewayError:
        raise SoapFault.one("UNAUTHORIZED", _BAD_CREDENTIALS) from None
    if actor.party_id != username:
        # The same answer as an unknown key: a key cannot be probed against other party ids.
        raise SoapFault.one("UNAUTHORIZED", _BAD_CREDENTIALS)
    return actor


def _validate(request: etree._Element) -> None:
    errors = xml_channel.validation_errors(request)
    if errors:
        raise SoapFault(errors)


def _bundle(gw: Gateway, actor: Actor, request: dict[str, Any]) -> dict[str, Any]:
    """Bundle CCRNs with a vehicle (design section 5): ``request`` has the shape of the JSON API's
    ``POST /api/v1/bundles`` body; the result is the bundle as ``GET /api/v1/bundles/{id}`` shows it."""
    return bundles.bundle(
        gw,
        actor,
        request.get("vehicle"),
        request.get("control_point"),
        request["ccrns"],
        driver=request.get("driver"),
        expected_arrival=request.get("expected_arrival"),
    )
