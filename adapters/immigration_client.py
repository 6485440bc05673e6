"""The gateway's client of the Immigration clearance service (design section 9), called with zeep.

:class:`ImmigrationClient` implements the core's ``ImmigrationPort`` (the kiosk's ``ClearDriver``
question) and the advance-notice outbox's ``NoticeSink`` (``AdviseBundles``, several notices per request;
``AdviseBundle`` one by one when the service offers no batch). The WSDL is read from
``[immigration] url`` + ``?wsdl`` on first use and kept; a failed load is tried again on the next call.
Every HTTP exchange is bounded by ``[immigration] timeout_ms`` (zeep's ``Transport`` ``timeout`` for the
WSDL and XSD; a whole SOAP exchange, connecting included, for the calls); the service address is the
configured URL, not the one inside the WSDL, so a proxy in front of Immigration is honoured.

``clear`` never raises: no answer in time, a refused connection, a SOAP fault or a reply that is not one
of ``CLEARED``, ``REFUSED``, ``REFER`` all give None, and the kiosk fails closed. ``advise`` raises on
anything but an acknowledgement; ``advise_all`` returns the notices not acknowledged, with why, and the
outbox retries them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from gateway.advance_notices import AdvanceNotice
from gateway.clock import HONG_KONG
from gateway.immigration import Answer, ClearanceQuery

log = logging.getLogger("roadcargo.immigration")

BINDING = "{urn:roadcargo:immigration:1:soap}ImmigrationBinding"
ANSWERS: frozenset[str] = frozenset({"CLEARED", "REFUSED", "REFER"})
MAX_BATCH = 100  # AdviseBundles' maxOccurs in schemas/immigration.xsd


class ImmigrationUnavailable(Exception):
    """Immigration could not be asked (WSDL not loaded, connection refused, timeout)."""


class BadReply(ImmigrationUnavailable):
    """Immigration's HTTP reply could not be read (not HTTP, a broken length or chunk, too long)."""


class ImmigrationClient:
    def __init__(
        self, url: str, timeout_ms: int, pool_size: int = 64, on_loaded: Callable[[], None] | None = None
    ) -> None:
        """``on_loaded`` runs once the WSDL is loaded (the serving process settles its heap then)."""
        self.url = url
        self.timeout = max(timeout_ms, 1) / 1000
        self._pool_size = pool_size
        self._on_loaded = on_loaded
        self._service: Any = None
        self._lock = threading.Lock()

    def bounded(self) -> bool:
        """Whether ``clear`` now returns within ``timeout_ms`` by itself: once the WSDL is loaded, the
        transport bounds each exchange from connecting to the last byte, so the kiosk may call it
        directly instead of through a thread that it waits for (see gateway.clearance)."""
        return self._service is not None

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
                if self._on_loaded is not None:
                    self._on_loaded()
            return self._service
        finally:
            self._lock.release()

    def _build(self) -> _Operations:
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
        direct = urlsplit(self.url).scheme == "http" and not session.proxies
        if direct:
            transport = _keep_alive_transport(session, self.timeout, self._pool_size)
        else:
            transport = Transport(session=session, timeout=self.timeout, operation_timeout=self.timeout)
        # The XSD is imported from the service itself, so external references stay allowed.
        settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True)
        client = zeep.Client(f"{self.url}?wsdl", transport=transport, settings=settings)
        operations = _Operations(client.create_service(BINDING, self.url))
        if direct:
            # The kiosk's question from the event loop too: the same WSDL, zeep's asynchronous client.
            from zeep.proxy import AsyncServiceProxy

            asynchronous = zeep.AsyncClient(
                client.wsdl, transport=_AsyncTransport(self.timeout, self._pool_size), settings=settings
            )
            binding = client.wsdl.bindings[BINDING]
            operations.clear_driver_async = AsyncServiceProxy(
                asynchronous, binding, address=self.url
            ).ClearDriver
        return operations

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
            operations = self._load(deadline)
            reply = operations.clear_driver(**_question(query))
        except Exception as exc:  # fail closed on every fault: the kiosk sends the truck to a manual lane
            log.warning("Immigration gave no answer (%s: %s)", type(exc).__name__, exc)
            return None
        return _answer(reply)

    def asynchronous(self) -> bool:
        """Whether ``clear_async`` may be awaited: the WSDL is loaded and the service is reached
        directly over http (an https URL or a proxy goes through requests, in ``clear``)."""
        service = self._service
        return service is not None and service.clear_driver_async is not None

    async def clear_async(self, query: ClearanceQuery) -> Answer | None:
        """``clear`` from the event loop, once ``asynchronous()``: the same question, answer and
        failures (None), the whole exchange within ``timeout_ms`` (bounded by ``_AsyncTransport``, as
        the blocking transport bounds ``clear``'s)."""
        try:
            reply = await self._service.clear_driver_async(**_question(query))
        except Exception as exc:  # fail closed, as clear does
            log.warning("Immigration gave no answer (%s: %s)", type(exc).__name__, exc)
            return None
        return _answer(reply)

    # -- advance notices -----------------------------------------------------------------------------

    def advise(self, notice: AdvanceNotice) -> None:
        """One notice with ``AdviseBundle``; raises unless Immigration acknowledged it."""
        operations = self._load(time.monotonic() + self.timeout)
        problem = _unacknowledged(notice, operations.advise_bundle(**_fields(notice)))
        if problem is not None:
            raise ImmigrationUnavailable(problem)

    def advise_all(self, notices: Sequence[AdvanceNotice]) -> dict[int, str]:
        """Deliver notices, up to ``MAX_BATCH`` per ``AdviseBundles`` request; returns those not
        acknowledged, by notice id, with why. A request that fails leaves every notice in it (and the
        ones after it: Immigration just failed) unacknowledged; a notice refused on its own leaves only
        itself. A request Immigration refuses as a whole (a ``soap:Client`` fault, such as one notice
        its schema does not take) is sent again one notice at a time, so that one bad notice does not
        hold up the others."""
        from zeep.exceptions import Fault

        failed: dict[int, str] = {}
        error: str | None = None
        try:
            operations = self._load(time.monotonic() + self.timeout)
        except Exception as exc:
            operations, error = None, _describe(exc)
        for start in range(0, len(notices), MAX_BATCH):
            batch = notices[start : start + MAX_BATCH]
            if error is None and operations is not None:
                if operations.advise_bundles is None:  # a service without the batch operation
                    error = self._one_by_one(batch, failed)
                    continue
                try:
                    reply = operations.advise_bundles(Notice=[_fields(n) for n in batch])
                except Fault as fault:
                    if not str(fault.code or "").endswith("Client"):  # the service's own failure
                        error = _describe(fault)
                    elif len(batch) > 1:
                        log.warning(
                            "Immigration refused a batch of notices (%s): sending them one by one", fault
                        )
                        error = self._one_by_one(batch, failed)
                        continue
                    else:
                        failed[batch[0].notice_id] = _describe(fault)
                        continue
                except Exception as exc:
                    error = _describe(exc)
                else:
                    acknowledgements = _acknowledgements(reply)
                    for notice in batch:
                        problem = _unacknowledged(notice, acknowledgements.get(notice.notice_id))
                        if problem is not None:
                            failed[notice.notice_id] = problem
                    continue
            failed.update(dict.fromkeys((n.notice_id for n in batch), error or "not sent"))
        return failed

    def _one_by_one(self, notices: Sequence[AdvanceNotice], failed: dict[int, str]) -> str | None:
        """``AdviseBundle`` per notice; the error that stopped the round (Immigration failed), if any."""
        from zeep.exceptions import Fault

        error: str | None = None
        for notice in notices:
            if error is not None:
                failed[notice.notice_id] = error
                continue
            try:
                self.advise(notice)
            except Fault as fault:  # this notice alone is refused
                failed[notice.notice_id] = _describe(fault)
            except Exception as exc:
                error = failed[notice.notice_id] = _describe(exc)
        return error


def _question(query: ClearanceQuery) -> dict[str, Any]:
    return {
        "TravelDocument": query.travel_document.strip(),
        "Vehicle": query.vehicle,
        "DriverParty": query.driver,
        "ControlPoint": query.control_point,
        "Lane": query.lane,
    }


def _answer(reply: Any) -> Answer | None:
    answer = reply if isinstance(reply, str) else getattr(reply, "Answer", None)
    if answer not in ANSWERS:
        log.warning("Immigration answered something unreadable: %r", reply)
        return None
    return cast(Answer, answer)


class _Operations:
    """The service's operations, looked up once (zeep finds them by name on every attribute access)."""

    def __init__(self, service: Any) -> None:
        self.clear_driver_async: Any = None  # set when the kiosk may ask from the event loop
        self.clear_driver = service.ClearDriver
        self.advise_bundle = service.AdviseBundle
        try:
            self.advise_bundles: Any = service.AdviseBundles
        except AttributeError:  # a WSDL from before the batch operation: notices go one by one
            self.advise_bundles = None


def _fields(notice: AdvanceNotice) -> dict[str, Any]:
    return {
        "NoticeId": notice.notice_id,
        "BundleId": notice.bundle_id,
        "Vehicle": notice.vehicle,
        "DriverParty": notice.driver,
        "ControlPoint": notice.control_point,
        "Direction": notice.direction,
        "SlotStart": notice.slot_start.astimezone(HONG_KONG),
        "SlotEnd": notice.slot_end.astimezone(HONG_KONG),
    }


def _acknowledgements(reply: Any) -> dict[Any, Any]:
    """AdviseBundlesResponse's acknowledgements by notice id (zeep gives the list itself when the
    response holds nothing else)."""
    items = reply if isinstance(reply, list) else getattr(reply, "Acknowledgement", None) or []
    return {getattr(item, "NoticeId", None): item for item in items}


def _unacknowledged(notice: AdvanceNotice, ack: Any) -> str | None:
    """Why an acknowledgement does not acknowledge the notice; None when it does."""
    if ack is None or getattr(ack, "NoticeId", None) != notice.notice_id:
        return f"Immigration did not acknowledge notice {notice.notice_id}: {ack!r}"
    if getattr(ack, "Accepted", None) is not True:
        reason = getattr(ack, "Reason", None)
        why = (
            f"{getattr(reason, 'Code', '')}: {getattr(reason, 'Message', '')}"
            if reason is not None
            else "no reason"
        )
        return f"Immigration refused notice {notice.notice_id} ({why})"
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@functools.cache
def _keep_alive_class() -> Any:
    from zeep.transports import Transport  # imported once Immigration is asked, like zeep itself

    class KeepAliveTransport(Transport):
        """zeep's transport with its SOAP POSTs sent on kept-alive connections: request line, headers
        and body in one write (two writes, as ``http.client`` and urllib3 make them, cost a wake-up
        of each side more) and the reply read by :class:`_Connection` (``http.client`` parses headers
        with the ``email`` package, most of its cost); a fraction of the CPU requests and urllib3 spend
        per call at kiosk rates. The whole exchange, connecting included, is bounded by the timeout.
        The WSDL and XSD still load through the requests session; an https URL or a proxy keeps zeep's
        own transport throughout."""

        def __init__(self, session: Any, timeout: float, pool_size: int) -> None:
            super().__init__(session=session, timeout=timeout, operation_timeout=timeout)
            self._pool_size = pool_size
            self._idle: deque[_Connection] = deque()
            self._targets: dict[str, tuple[bytes, str, str, int]] = {}

        def post(self, address: str, message: bytes, headers: dict[str, str]) -> _Reply:
            deadline = time.monotonic() + self.operation_timeout
            request, (_line, netloc, host, port) = _request(self._targets, address, message, headers)
            conn = self._connection(netloc, host, port, deadline)
            try:
                reply, keep = conn.exchange(request, deadline)
            except BaseException:
                conn.close()
                raise
            if keep and len(self._idle) < self._pool_size:
                self._idle.append(conn)
            else:
                conn.close()
            return reply

        def _connection(self, netloc: str, host: str, port: int, deadline: float) -> _Connection:
            while True:
                try:
                    conn = self._idle.pop()
                except IndexError:
                    return _Connection(netloc, host, port, _remaining(deadline))
                if conn.netloc == netloc and not conn.dropped():
                    return conn
                conn.close()

    return KeepAliveTransport


_Target = tuple[bytes, str, str, int]  # request line and Host header, netloc, host, port


def _request(
    targets: dict[str, _Target], address: str, message: bytes, headers: dict[str, str]
) -> tuple[bytes, _Target]:
    """A POST's bytes (request line, headers and body, to go in one write) and where it goes."""
    target = targets.get(address)
    if target is None:  # one service address: split and checked once
        url = urlsplit(address)
        path = f"{url.path or '/'}?{url.query}" if url.query else url.path or "/"
        _check_header(f"{path}{url.netloc}")
        line = f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        target = targets[address] = (line.encode("latin-1"), url.netloc, url.hostname or "", url.port or 80)
    lines = [f"Content-Length: {len(message)}\r\n"]
    for name, value in headers.items():
        _check_header(f"{name}{value}")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return target[0] + "".join(lines).encode("latin-1") + message, target


_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _AsyncTransport:
    """The kiosk's ``ClearDriver`` call from the event loop (zeep's ``AsyncClient`` calls ``post_xml``
    and awaits it): kept-alive connections of the running loop, the whole exchange, connecting
    included, bounded by the timeout, the reply read by ``_ReplyReader`` like the blocking transport's.
    No thread waits for Immigration: on SQLite the kiosk's database work then runs on the one database
    thread of the process instead of a service thread that competes with the others for the
    interpreter's lock (bench/RESULTS.md, session 7)."""

    def __init__(self, timeout: float, pool_size: int) -> None:
        self.timeout = timeout
        self._pool_size = pool_size
        self._targets: dict[str, _Target] = {}
        # Idle connections of the loop that opened them (a serving process has one loop; a new one,
        # in tests, starts afresh).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: deque[_Stream] = deque()

    async def post_xml(self, address: str, envelope: Any, headers: dict[str, str]) -> _Reply:
        from zeep.wsdl.utils import etree_to_string

        request, (_line, _netloc, host, port) = _request(
            self._targets, address, etree_to_string(envelope), headers
        )
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._idle = loop, deque()
        idle = self._idle
        async with asyncio.timeout(self.timeout):
            reader, writer = await self._connection(idle, host, port)
            try:
                writer.write(request)
                reply, keep = await _drive_async(_ReplyReader().read(), reader)
            except BaseException:
                writer.close()
                raise
        if keep and len(idle) < self._pool_size:
            idle.append((reader, writer))
        else:
            writer.close()
        return reply

    @staticmethod
    async def _connection(idle: deque[_Stream], host: str, port: int) -> _Stream:
        while idle:
            reader, writer = idle.pop()
            if not _dropped(reader, writer):
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer


def _dropped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """An idle connection the server closed or wrote to cannot carry a request (``_Connection.dropped``):
    its socket asked directly, as the loop may not have run since the server's close arrived."""
    if reader.at_eof() or writer.is_closing():
        return True
    sock = writer.get_extra_info("socket")
    try:
        return sock is None or bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _keep_alive_transport(session: Any, timeout: float, pool_size: int) -> Any:
    return _keep_alive_class()(session, timeout, pool_size)


def _check_header(text: str) -> None:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"invalid HTTP header or address {text!r}")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("Immigration did not answer in time")
    return left


class _Headers(dict[str, str]):
    """Reply headers by lower-case name; ``get`` is what zeep asks (for ``Content-Type``)."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class _Reply:
    """What zeep reads of an HTTP response: status, body and headers."""

    encoding = None

    def __init__(self, status_code: int, content: bytes, headers: _Headers) -> None:
        self.status_code = status_code
        self.content = content
        self.headers = headers


MAX_HEAD = 65536  # status line and headers
MAX_REPLY = 16 * 1024 * 1024  # an acknowledgement of 100 notices is a few kilobytes
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")


# What a reply reader yields for: more bytes of the reply (b"" once the server has closed).
_Reading = Generator[None, bytes, tuple[_Reply, bool]]


class _ReplyReader:
    """One HTTP/1.1 reply read to its end as its headers say (``Content-Length``, ``Transfer-Encoding:
    chunked``, or until the server closes), from the bytes it is given: ``read()`` is a generator that
    yields whenever it needs more and is sent them (b"" when the server closed the connection), and
    returns the reply and whether the connection may carry another (HTTP/1.1 without ``Connection:
    close``, or HTTP/1.0 with ``keep-alive``, and the reply ended cleanly). The blocking and the asyncio
    transport read through the same one (``_drive``, ``_drive_async``)."""

    def __init__(self) -> None:
        self._buffer = b""

    def read(self) -> _Reading:
        while True:
            version, status, headers = yield from self._head()
            if not 100 <= status < 200:
                break  # an interim 1xx reply (100 Continue, 103 Early Hints) is followed by the real one
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
        coding = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in (204, 304):
            content = b""
        elif coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() != "chunked":
                raise BadReply(f"Immigration sent a reply in an unknown transfer coding: {coding}")
            content = yield from self._chunked()
        elif length is not None:
            values = {v.strip() for v in length.split(",")}  # repeated headers are joined with ", "
            if len(values) != 1 or not (value := values.pop()).isdigit() or int(value) > MAX_REPLY:
                raise BadReply(f"Immigration sent a reply with a bad Content-Length: {length!r}")
            content = yield from self._exactly(int(value))
        else:  # no length: the reply ends when the server closes the connection
            content = yield from self._until_close()
            keep = False
        return _Reply(status, content, headers), keep and not self._buffer

    def _head(self) -> Generator[None, bytes, tuple[str, int, _Headers]]:
        head = yield from self._line_block()
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
            raise BadReply(f"Immigration did not answer in HTTP: {lines[0][:80]!r}")
        headers = _Headers()
        name = ""
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and name:  # an obsolete folded line continues the previous one
                headers[name] = f"{headers[name]} {line.strip()}"
                continue
            name, colon, value = line.partition(":")
            name = name.strip().lower()
            if not colon or not name:
                raise BadReply(f"Immigration sent a malformed header line: {line[:80]!r}")
            value = value.strip()
            known = dict.get(headers, name)
            headers[name] = value if known is None else f"{known}, {value}"
        return parts[0], int(parts[1]), headers

    def _line_block(self) -> Generator[None, bytes, bytes]:
        """The status line and headers, up to the blank line that ends them."""
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise BadReply("Immigration sent more header than the gateway reads")
            yield from self._more()
        head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
        return head

    def _line(self) -> Generator[None, bytes, bytes]:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise BadReply("Immigration sent an overlong line in a chunked reply")
            yield from self._more()
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        return line

    def _exactly(self, size: int) -> Generator[None, bytes, bytes]:
        while len(self._buffer) < size:
            yield from self._more()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _chunked(self) -> Generator[None, bytes, bytes]:
        parts: list[bytes] = []
        total = 0
        while True:
            size_field = (yield from self._line()).split(b";", 1)[0].strip()  # extensions are ignored
            if not _CHUNK_SIZE.fullmatch(size_field):
                raise BadReply(f"Immigration sent a bad chunk size: {size_field[:20]!r}")
            size = int(size_field, 16)
            if size == 0:
                break
            total += size
            if total > MAX_REPLY:
                raise BadReply("Immigration sent a longer reply than the gateway reads")
            parts.append((yield from self._exactly(size)))
            if (yield from self._exactly(2)) != b"\r\n":
                raise BadReply("Immigration sent a chunk longer than its size")
        while (yield from self._line()):  # trailer fields, up to the blank line that ends the reply
            pass
        return b"".join(parts)

    def _until_close(self) -> Generator[None, bytes, bytes]:
        while True:
            if len(self._buffer) > MAX_REPLY:
                raise BadReply("Immigration sent a longer reply than the gateway reads")
            try:
                yield from self._more()
            except _Closed:
                data, self._buffer = self._buffer, b""
                return data

    def _more(self) -> Generator[None, bytes, None]:
        data = yield
        if not data:
            raise _Closed("Immigration closed the connection before its reply was complete")
        self._buffer += data


def _drive(reading: _Reading, receive: Callable[[], bytes]) -> tuple[_Reply, bool]:
    """A reply read with a blocking ``receive``."""
    try:
        next(reading)
        while True:
            reading.send(receive())
    except StopIteration as done:
        return cast(tuple[_Reply, bool], done.value)


async def _drive_async(reading: _Reading, stream: asyncio.StreamReader) -> tuple[_Reply, bool]:
    """A reply read from an asyncio stream."""
    try:
        next(reading)
        while True:
            reading.send(await stream.read(65536))
    except StopIteration as done:
        return cast(tuple[_Reply, bool], done.value)


class _Connection:
    """One kept-alive HTTP/1.1 connection of the SOAP calls, read by ``_ReplyReader``. Every read is
    bounded by the deadline of the exchange."""

    def __init__(self, netloc: str, host: str, port: int, timeout: float) -> None:
        self.netloc = netloc
        self.sock = socket.create_connection((host, port), timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._poller = select.poll()
        self._poller.register(self.sock, select.POLLIN)
        self._deadline = 0.0

    def exchange(self, request: bytes, deadline: float) -> tuple[_Reply, bool]:
        """Send a request, read the whole reply; also whether the connection may carry another."""
        self._deadline = deadline
        self.sock.settimeout(_remaining(deadline))
        self.sock.sendall(request)
        return _drive(_ReplyReader().read(), self._receive)

    def _receive(self) -> bytes:
        self.sock.settimeout(_remaining(self._deadline))
        return self.sock.recv(65536)

    def dropped(self) -> bool:
        """An idle connection that the server has closed (or written to) cannot carry a request:
        the same check urllib3 makes before reusing one."""
        try:
            return bool(self._poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        self.sock.close()


class _Closed(ConnectionResetError):
    """The server closed the connection (an idle one it dropped, or mid-reply)."""
