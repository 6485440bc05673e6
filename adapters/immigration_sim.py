"""A simulator of the Immigration clearance service (design section 9), for tests and demos:
``roadcargo simulate immigration --port N [--watchlist FILE] [--delay-ms N]``.

It is a real SOAP 1.1 service implementing ``schemas/immigration.wsdl``: the WSDL is served at
``/immigration?wsdl`` (with ``soap:address`` and the XSD's ``schemaLocation`` made absolute for the host
that was asked, as zeep needs), requests are POSTed to ``/immigration``, envelopes are read by the XML
channel's hardened parser and bodies validated against ``schemas/immigration.xsd``.

Answers to ``ClearDriver``: a travel document number listed in the watchlist file (one per line; blank
lines and ``#`` comments ignored; compared without surrounding spaces, upper case) is ``REFUSED``;
otherwise a number starting with ``R`` is ``REFER``; anything else ``CLEARED``. ``--delay-ms`` delays
every SOAP answer (not the WSDL), to play a slow Immigration.

``AdviseBundle`` (one notice) and ``AdviseBundles`` (up to 100, one acknowledgement each) notices are
logged and kept in memory, once per ``NoticeId`` (a notice delivered again, in another request or the
same one, is acknowledged as a duplicate); ``GET /immigration/notices`` lists them as JSON with the
number of deliveries received, so tests and demos can check that every notice arrived exactly once. A
notice whose slot does not end after it starts is refused on its own (``Accepted`` false with a
``Reason``) and not recorded: the others of its request are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from lxml import etree

from adapters import soap, xml_channel
from gateway import heap
from gateway.errors import GatewayError

log = logging.getLogger("roadcargo.immigration_sim")

NS = "urn:roadcargo:immigration:1"
MAX_BODY = 262144  # a clearance question is a few hundred bytes; 100 notices about 50 KB
_XS = "http://www.w3.org/2001/XMLSchema"
_WSDL_SOAP = "http://schemas.xmlsoap.org/wsdl/soap/"
_SOAP_XML = "text/xml; charset=utf-8"


def q(name: str) -> str:
    return f"{{{NS}}}{name}"


@cache
def _schema_file(name: str) -> bytes:
    return resources.files("schemas").joinpath(name).read_bytes()


@cache
def _schema() -> etree.XMLSchema:
    # The simulator validates on the event loop's thread only, so one compiled schema is enough.
    data = _schema_file("immigration.xsd")
    return etree.XMLSchema(xml_channel.parse_xml(data, len(data)))


def wsdl_for(base_url: str) -> bytes:
    """The WSDL with its XSD import and ``soap:address`` as absolute URLs under ``base_url``."""
    data = _schema_file("immigration.wsdl")
    root = xml_channel.parse_xml(data, len(data))
    for imported in root.iter(f"{{{_XS}}}import"):
        imported.set("schemaLocation", f"{base_url}/immigration/immigration.xsd")
    for address in root.iter(f"{{{_WSDL_SOAP}}}address"):
        address.set("location", f"{base_url}/immigration")
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def load_watchlist(path: str | None) -> frozenset[str]:
    """Travel document numbers to refuse; raises OSError (with the file name) when unreadable."""
    if not path:
        return frozenset()
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return frozenset(
        line.strip().upper() for line in lines if line.strip() and not line.lstrip().startswith("#")
    )


class ImmigrationSimulator:
    """The simulated service's state: its rules and the advance notices it has received."""

    def __init__(self, watchlist: frozenset[str] = frozenset(), delay_ms: int = 0) -> None:
        self.watchlist = watchlist
        self.delay_ms = delay_ms
        self.notices: dict[int, dict[str, Any]] = {}
        self.deliveries = 0
        self._lock = threading.Lock()

    def answer(self, travel_document: str) -> str:
        number = travel_document.strip().upper()
        if number in self.watchlist:
            return "REFUSED"
        if number.startswith("R"):
            return "REFER"
        return "CLEARED"

    @staticmethod
    def refusal(notice: dict[str, Any]) -> str | None:
        """Why a notice is refused on its own (None: it is not): a check the schema cannot make."""
        try:
            start = datetime.fromisoformat(notice["slot_start"])
            end = datetime.fromisoformat(notice["slot_end"])
        except ValueError:  # valid xs:dateTime that Python does not read (a year beyond 9999, ...)
            return "the slot's times could not be read"
        if (start.tzinfo is None) != (end.tzinfo is None):
            return "the slot's start and end must both give their time zone, or neither"
        if end <= start:
            return "the slot must end after it starts"
        return None

    def advise(self, notice: dict[str, Any]) -> bool:
        """Record a notice; True when it had been received before (a retry)."""
        with self._lock:
            self.deliveries += 1
            known = self.notices.get(notice["notice_id"])
            if known is not None:
                known["deliveries"] += 1
                return True
            self.notices[notice["notice_id"]] = {
                **notice,
                "received_at": datetime.now(UTC).isoformat(),
                "deliveries": 1,
            }
        log.info(
            "advance notice %s: bundle %s, vehicle %s, driver %s, %s at %s, slot %s to %s",
            notice["notice_id"],
            notice["bundle_id"],
            notice["vehicle"],
            notice["driver_party"],
            notice["direction"],
            notice["control_point"],
            notice["slot_start"],
            notice["slot_end"],
        )
        return False

    def listing(self) -> dict[str, Any]:
        with self._lock:
            return {"deliveries": self.deliveries, "notices": [dict(n) for n in self.notices.values()]}


class _Fault(Exception):
    def __init__(self, code: str, message: str, side: str = "Client") -> None:
        super().__init__(message)
        self.code = code
        self.side = side


def _fault_envelope(fault: _Fault) -> bytes:
    env = soap.SOAP_ENV
    root = etree.Element(f"{{{env}}}Envelope", nsmap={"soap": env})
    element = etree.SubElement(etree.SubElement(root, f"{{{env}}}Body"), f"{{{env}}}Fault")
    etree.SubElement(element, "faultcode").text = f"soap:{fault.side}"
    etree.SubElement(element, "faultstring").text = f"{fault.code}: {fault}"
    detail = etree.SubElement(etree.SubElement(element, "detail"), q("ImmigrationFault"), nsmap={"imm": NS})
    etree.SubElement(detail, q("Code")).text = fault.code
    etree.SubElement(detail, q("Message")).text = str(fault)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _request_element(body: bytes) -> etree._Element:
    try:
        root = xml_channel.parse_xml(body, MAX_BODY)
    except GatewayError as exc:
        problem = exc.problems[0]
        raise _Fault(problem.code, problem.message) from None
    if root.tag != f"{{{soap.SOAP_ENV}}}Envelope":
        raise _Fault("MALFORMED", f"not a SOAP 1.1 Envelope but {root.tag}")
    body_element = root.find(f"{{{soap.SOAP_ENV}}}Body")
    payload = [c for c in body_element if isinstance(c.tag, str)] if body_element is not None else []
    if len(payload) != 1:
        raise _Fault("MALFORMED", "the Body must hold exactly one request element")
    request = payload[0]
    schema = _schema()
    if not schema.validate(request):
        error = schema.error_log.last_error
        raise _Fault("SCHEMA_INVALID", f"{error.path}: {error.message}" if error else "invalid request")
    return request


def _text(element: etree._Element, name: str) -> str:
    return (element.findtext(q(name)) or "").strip()


_NOTICE_FIELDS = {
    q("NoticeId"): "notice_id",
    q("BundleId"): "bundle_id",
    q("Vehicle"): "vehicle",
    q("DriverParty"): "driver_party",
    q("ControlPoint"): "control_point",
    q("Direction"): "direction",
    q("SlotStart"): "slot_start",
    q("SlotEnd"): "slot_end",
}


def _notice(element: etree._Element) -> dict[str, Any]:
    """An AdviseBundle or AdviseBundles/Notice element (already valid) as the notice kept."""
    # One pass over the children: a batch has up to 100 notices of eight fields each.
    notice: dict[str, Any] = {
        _NOTICE_FIELDS[child.tag]: (child.text or "").strip()
        for child in element
        if child.tag in _NOTICE_FIELDS
    }
    notice["notice_id"] = int(notice["notice_id"])
    return notice


def _acknowledge(sim: ImmigrationSimulator, notice: dict[str, Any], ack: etree._Element) -> None:
    """Record one notice (unless refused) and fill its acknowledgement element."""
    refusal = sim.refusal(notice)
    duplicate = False if refusal else sim.advise(notice)
    etree.SubElement(ack, q("NoticeId")).text = str(notice["notice_id"])
    etree.SubElement(ack, q("Accepted")).text = "false" if refusal else "true"
    etree.SubElement(ack, q("Duplicate")).text = "true" if duplicate else "false"
    if refusal:
        log.info("advance notice %s refused: %s", notice["notice_id"], refusal)
        reason = etree.SubElement(ack, q("Reason"))
        etree.SubElement(reason, q("Code")).text = "INVALID_VALUE"
        etree.SubElement(reason, q("Message")).text = refusal


@cache
def _clearance_reply(answer: str) -> bytes:
    """The envelope of one of the three answers, built once each."""
    response = etree.Element(q("ClearDriverResponse"), nsmap={"imm": NS})
    etree.SubElement(response, q("Answer")).text = answer
    return soap.envelope(response)


def handle(sim: ImmigrationSimulator, body: bytes) -> bytes:
    """One SOAP request to the response envelope; raises _Fault."""
    request = _request_element(body)
    if request.tag == q("ClearDriver"):
        return _clearance_reply(sim.answer(_text(request, "TravelDocument")))
    if request.tag == q("AdviseBundle"):
        response = etree.Element(q("AdviseBundleResponse"), nsmap={"imm": NS})
        _acknowledge(sim, _notice(request), response)
        return soap.envelope(response)
    if request.tag == q("AdviseBundles"):
        response = etree.Element(q("AdviseBundlesResponse"), nsmap={"imm": NS})
        for element in request.iterchildren(q("Notice")):  # valid: 1 to 100 of them, nothing else
            _acknowledge(sim, _notice(element), etree.SubElement(response, q("Acknowledgement")))
        return soap.envelope(response)
    raise _Fault(
        "INVALID_VALUE", f"unknown request {request.tag}: ClearDriver, AdviseBundle or AdviseBundles of {NS}"
    )


class _App:
    """The simulator as a plain ASGI application: four routes, no framework between uvicorn and the
    answer, as the simulator shares the machine with the gateway it plays against at kiosk rates."""

    def __init__(self, sim: ImmigrationSimulator) -> None:
        self.sim = sim

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/immigration" and method == "POST":
            status, body, media_type = await self._soap(receive)
        elif method not in ("GET", "HEAD"):
            status, body, media_type = 405, b"Method Not Allowed", "text/plain"
        elif path == "/immigration":
            status, body, media_type = self._wsdl(scope)
        elif path == "/immigration/immigration.xsd":
            status, body, media_type = 200, _schema_file("immigration.xsd"), "application/xml"
        elif path == "/immigration/notices":
            status, body, media_type = (
                200,
                json.dumps(self.sim.listing(), ensure_ascii=False, separators=(",", ":")).encode(),
                "application/json",
            )
        else:
            status, body, media_type = 404, b"Not Found", "text/plain"
        headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _soap(self, receive: Any) -> tuple[int, bytes, str]:
        chunks = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, b"", _SOAP_XML
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if self.sim.delay_ms:
            await asyncio.sleep(self.sim.delay_ms / 1000)
        try:
            return 200, handle(self.sim, body), _SOAP_XML
        except _Fault as fault:
            return 500, _fault_envelope(fault), _SOAP_XML
        except Exception:  # a fault, never a bare 500: the client must be able to read the answer
            log.exception("unexpected error")
            return 500, _fault_envelope(_Fault("INTERNAL", "the simulator failed", "Server")), _SOAP_XML

    def _wsdl(self, scope: dict[str, Any]) -> tuple[int, bytes, str]:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if "wsdl" not in {key.lower() for key, _value in query}:
            text = b"SOAP requests are POSTed here; the WSDL is at /immigration?wsdl"
            return 404, text, "text/plain"
        return 200, wsdl_for(_base_url(scope)), _SOAP_XML


def _base_url(scope: dict[str, Any]) -> str:
    """The URL the client used to reach the service, as Starlette's ``request.base_url`` gives it."""
    host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
    if host is None:
        server_host, port = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server_host}:{port}"
    return f"{scope['scheme']}://{host}{scope.get('root_path', '')}".rstrip("/")


def create_app(sim: ImmigrationSimulator) -> _App:
    return _App(sim)


def run(host: str, port: int, watchlist: frozenset[str], delay_ms: int, server_class: Any) -> int:
    """Serve until SIGTERM or Ctrl-C; ``server_class`` is the CLI's uvicorn Server (clean exit)."""
    import uvicorn

    sim = ImmigrationSimulator(watchlist, delay_ms)
    print(
        f"Immigration simulator on http://{host}:{port}/immigration (WSDL at /immigration?wsdl, "
        f"notices at /immigration/notices); {len(watchlist)} travel documents on the watchlist, "
        f"answers delayed by {delay_ms} ms",
        flush=True,
    )
    # No access log: at kiosk rates it would cost more than the answers; notices are logged above.
    config = uvicorn.Config(create_app(sim), host=host, port=port, log_level="info", access_log=False)
    server = server_class(config)
    heap.settle()  # like the gateway's processes: no long pauses in the answers it times
    server.run()
    return 0 if server.started else 1
