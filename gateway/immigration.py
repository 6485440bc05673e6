"""The Immigration port of the core (design sections 7 and 9). The kiosk decision asks Immigration
about the driver; the core knows only this interface. The SOAP client (called with zeep, bounded by
``[immigration] timeout_ms``) lives in ``adapters/`` and is handed to the Gateway by the composition
root; tests may hand in any object with this shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Answer = Literal["CLEARED", "REFUSED", "REFER"]


@dataclass(frozen=True)
class ClearanceQuery:
    travel_document: str
    vehicle: str
    driver: str | None
    control_point: str
    lane: str


class ImmigrationPort(Protocol):
    def clear(self, query: ClearanceQuery) -> Answer | None:
        """Immigration's answer about the driver, or None when it did not answer in time or answered
        something unreadable: the kiosk then fails closed (NOT_READY). The kiosk calls it in a thread
        of its own and stops waiting after ``timeout_ms`` (with a margin), unless the port has a
        ``bounded()`` method that answers True: then that port promises to return within
        ``timeout_ms`` itself and is called directly."""
        ...
