"""The gateway's client of the Immigration clearance service (design section 9), called with zeep.

:class:`ImmigrationClient` implements the core's ``ImmigrationPort`` (the kiosk's ``ClearDriver``
question) and the advance-notice outbox's ``NoticeSink`` (``AdviseBundle``). The WSDL is read from
``[immigration] url`` + ``?wsdl`` on first use and kept; a failed load is tried again on the next call.
Every HTTP exchange is bounded by ``[immigration] timeout_ms`` (zeep's ``Transport`` ``timeout`` for the
WSDL and XSD, ``operation_timeout`` for the calls); the service address is the configured URL, not the
one inside the WSDL, so a proxy in front of Immigration is honoured.

``clear`` never raises: no answer in time, a refused connection, a SOAP fault or a reply that is not one
of ``CLEARED``, ``REFUSED``, ``REFER`` all give None, and the kiosk fails closed. ``advise`` raises on
anything but an acknowledgement, and the outbox retries.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from typing import Any, cast
from urllib.parse import urlsplit

from gateway.advance_notices import AdvanceNotice
from gateway.clock import HONG_KONG
from gateway.immigration import Answer, ClearanceQuery

log = logging.getLogger("roadcargo.immigration")

BINDING = "{urn:roadcargo:immigration:1:soap}ImmigrationBinding"
ANSWERS: frozenset[str] = frozenset({"CLEARED", "REFUSED", "REFER"})


class ImmigrationUnavailable(Exception):
    """Immigration could not be asked (WSDL not loaded, connection refused, timeout)."""


class ImmigrationClient:
    def __init__(self, url: str, timeout_ms: int, pool_size: int = 64) -> None:
        self.url = url
        self.timeout = max(timeout_ms, 1) / 1000
        self._pool_size = pool_size
        self._service: Any = None
        self._lock = threading.Lock()

    # -- the WSDL, loaded lazily -------------------------------------------------------------------

    def _load(self, deadline: float) -> Any:
        service = self._service
        if service is not None:
            return service
        # One thread loads; the others wait for it, but never past their own deadline.
        if not self._lock.acquire(timeout=max(deadline - time.monotonic(), 0.001)):
            raise ImmigrationUnavailable("the Immigration WSDL is still being loaded")
        try:
            if self._service is None:
                self._service = self._build()
            return self._service
        finally:
            self._lock.release()

    def _build(self) -> Any:
        # Imported here: zeep (and requests, which it brings) is needed only once Immigration is asked.
        import requests
        import zeep
        from requests.adapters import HTTPAdapter
        from zeep.transports import Transport

        session = requests.Session()
        # requests reads the proxy and CA settings of the environment on every call, a third of the
        # client's CPU time at kiosk rates: read them once here instead.
        session.proxies = dict(requests.utils.get_environ_proxies(self.url))
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.trust_env = False
        # Kiosks ask concurrently: keep a connection per worker thread rather than reconnecting.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self._pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        transport: Transport
        if urlsplit(self.url).scheme == "http" and not session.proxies:
            transport = _keep_alive_transport(session, self.timeout, self._pool_size)
        else:
            transport = Transport(session=session, timeout=self.timeout, operation_timeout=self.timeout)
        # The XSD is imported from the service itself, so external references stay allowed.
        settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True)
        client = zeep.Client(f"{self.url}?wsdl", transport=transport, settings=settings)
        return client.create_service(BINDING, self.url)

    def warm(self) -> bool:
        """Load the WSDL ahead of the first kiosk request; False (and a retry later) when it fails."""
        try:
            self._load(time.monotonic() + self.timeout)
        except Exception as exc:
            log.warning("the Immigration WSDL could not be loaded yet (%s: %s)", type(exc).__name__, exc)
            return False
        return True

    # -- the kiosk's question ------------------------------------------------------------------------

    def clear(self, query: ClearanceQuery) -> Answer | None:
        deadline = time.monotonic() + self.timeout
        try:
            service = self._load(deadline)
            reply = service.ClearDriver(
                TravelDocument=query.travel_document.strip(),
                Vehicle=query.vehicle,
                DriverParty=query.driver,
                ControlPoint=query.control_point,
                Lane=query.lane,
            )
        except Exception as exc:  # fail closed on every fault: the kiosk sends the truck to a manual lane
            log.warning("Immigration gave no answer (%s: %s)", type(exc).__name__, exc)
            return None
        answer = reply if isinstance(reply, str) else getattr(reply, "Answer", None)
        if answer not in ANSWERS:
            log.warning("Immigration answered something unreadable: %r", reply)
            return None
        return cast(Answer, answer)

    # -- the advance notice --------------------------------------------------------------------------

    def advise(self, notice: AdvanceNotice) -> None:
        service = self._load(time.monotonic() + self.timeout)
        reply = service.AdviseBundle(
            NoticeId=notice.notice_id,
            BundleId=notice.bundle_id,
            Vehicle=notice.vehicle,
            DriverParty=notice.driver,
            ControlPoint=notice.control_point,
            Direction=notice.direction,
            SlotStart=notice.slot_start.astimezone(HONG_KONG),
            SlotEnd=notice.slot_end.astimezone(HONG_KONG),
        )
        accepted = getattr(reply, "Accepted", None)
        if accepted is not True or getattr(reply, "NoticeId", None) != notice.notice_id:
            raise ImmigrationUnavailable(
                f"Immigration did not acknowledge notice {notice.notice_id}: {reply!r}"
            )


@functools.cache
def _keep_alive_class() -> Any:
    from zeep.transports import Transport  # imported once Immigration is asked, like zeep itself

    class KeepAliveTransport(Transport):
        """zeep's transport with its SOAP POSTs sent on kept-alive connections: request line, headers
        and body in one write (two writes, as ``http.client`` and urllib3 make them, cost a wake-up
        of each side more) and the reply read by ``http.client``; a fraction of the CPU requests and
        urllib3 spend per call at kiosk rates. The WSDL and XSD still load through the requests
        session; an https URL or a proxy keeps zeep's own transport throughout."""

        def __init__(self, session: Any, timeout: float, pool_size: int) -> None:
            super().__init__(session=session, timeout=timeout, operation_timeout=timeout)
            self._pool_size = pool_size
            self._idle: deque[_Connection] = deque()

        def post(self, address: str, message: bytes, headers: dict[str, str]) -> _Reply:
            url = urlsplit(address)
            path = f"{url.path or '/'}?{url.query}" if url.query else url.path or "/"
            lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {len(message)}"]
            for name, value in headers.items():
                if any(c in f"{name}{value}" for c in "\r\n\0"):
                    raise ValueError(f"invalid HTTP header {name!r}")
                lines.append(f"{name}: {value}")
            request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + message
            conn = self._connection(url.netloc, url.hostname or "", url.port or 80)
            try:
                reply, keep = conn.exchange(request)
            except BaseException:
                conn.close()
                raise
            if keep and len(self._idle) < self._pool_size:
                self._idle.append(conn)
            else:
                conn.close()
            return reply

        def _connection(self, netloc: str, host: str, port: int) -> _Connection:
            while True:
                try:
                    conn = self._idle.pop()
                except IndexError:
                    return _Connection(netloc, host, port, self.operation_timeout)
                if conn.netloc == netloc and not conn.dropped():
                    return conn
                conn.close()

    return KeepAliveTransport


def _keep_alive_transport(session: Any, timeout: float, pool_size: int) -> Any:
    return _keep_alive_class()(session, timeout, pool_size)


class _Reply:
    """What zeep reads of an HTTP response: status, body and headers."""

    encoding = None

    def __init__(self, status_code: int, content: bytes, headers: Any) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers


class _Connection:
    """One kept-alive HTTP/1.1 connection; every socket operation is bounded by ``timeout``."""

    def __init__(self, netloc: str, host: str, port: int, timeout: float) -> None:
        self.netloc = netloc
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, request: bytes) -> tuple[_Reply, bool]:
        """Send a request, read the whole reply; also whether the connection may carry another."""
        self.sock.sendall(request)
        response = http.client.HTTPResponse(self.sock, method="POST")
        try:
            response.begin()
            content = response.read()
        finally:
            response.close()
        return _Reply(response.status, content, response.msg), not response.will_close

    def dropped(self) -> bool:
        """An idle connection that the server has closed (or written to) cannot carry a request:
        the same check urllib3 makes before reusing one."""
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        self.sock.close()
