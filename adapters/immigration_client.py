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

import logging
import os
import threading
import time
from typing import Any, cast

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
