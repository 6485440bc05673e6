"""The Immigration client's own HTTP/1.1 exchange (adapters/immigration_client.py ``_Connection``),
against a raw TCP server that answers each SOAP request with exactly the bytes a test scripts: every
way a reply can be framed is read to its end, kept-alive connections are reused only when the server
keeps them, and anything broken or late gives the kiosk no answer (so ``NOT_READY``), within the
timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from adapters import immigration_sim
from adapters.immigration_client import ImmigrationClient
from gateway.immigration import ClearanceQuery
from tests.conftest import Asking

CLEARED = immigration_sim._clearance_reply("CLEARED")
REFER = immigration_sim._clearance_reply("REFER")

Reply = Callable[[socket.socket], bool]  # writes one reply; True when the server keeps the connection


@dataclass
class Scripted:
    """Answers GETs with the simulator's WSDL and XSD; the n-th SOAP request with ``replies[n]``."""

    replies: list[Reply]
    soap_connections: int = 0
    requests: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    def serve(self, conn: socket.socket, port: int) -> None:
        buffer = b""
        counted = False
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                length = next(
                    (
                        int(v)
                        for n, _, v in (h.partition(":") for h in lines[1:])
                        if n.lower() == "content-length"
                    ),
                    0,
                )
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                method, path = lines[0].split(" ")[:2]
                if method == "GET":
                    body = (
                        immigration_sim._schema_file("immigration.xsd")
                        if path.endswith(".xsd")
                        else immigration_sim.wsdl_for(f"http://127.0.0.1:{port}")
                    )
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body)
                    )
                    continue
                if not counted:
                    self.soap_connections += 1
                    counted = True
                self.requests += 1
                if not self.replies.pop(0)(conn):
                    return


@contextmanager
def scripted(*replies: Reply) -> Iterator[tuple[str, Scripted]]:
    script = Scripted(list(replies))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=script.serve, args=(conn, port), daemon=True)
            script.threads.append(thread)
            thread.start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}/immigration", script
    finally:
        listener.close()


def ask(asking: Asking, client: ImmigrationClient) -> str | None:
    return asking(client, ClearanceQuery("P1234567", "AB1234", "12345678", "LMC", "1"))


def sized(
    body: bytes = CLEARED, extra: bytes = b"", version: bytes = b"HTTP/1.1", keep: bool = True
) -> Reply:
    def reply(conn: socket.socket) -> bool:
        conn.sendall(
            b"%s 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: %d\r\n%s\r\n%s"
            % (version, len(body), extra, body)
        )
        return keep

    return reply


def chunked(conn: socket.socket) -> bool:
    half = len(CLEARED) // 2
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x;note=first\r\n%s\r\n%X\r\n%s\r\n0\r\nX-Checksum: none\r\n\r\n"
        % (half, CLEARED[:half], len(CLEARED) - half, CLEARED[half:])
    )
    return True


def test_kept_alive_replies_with_a_length_share_one_connection(asking):
    with scripted(sized(), sized(REFER)) as (url, script):
        client = ImmigrationClient(url, 2000)
        assert ask(asking, client) == "CLEARED"
        assert ask(asking, client) == "REFER"
    assert (script.soap_connections, script.requests) == (1, 2)


def test_a_chunked_reply_with_extensions_and_trailers_is_read_whole(asking):
    with scripted(chunked, sized()) as (url, script):
        client = ImmigrationClient(url, 2000)
        assert ask(asking, client) == "CLEARED"
        assert ask(asking, client) == "CLEARED"
    assert script.soap_connections == 1


def test_connection_close_is_honoured_and_the_next_call_connects_again(asking):
    with scripted(sized(extra=b"Connection: close\r\n", keep=False), sized()) as (url, script):
        client = ImmigrationClient(url, 2000)
        assert ask(asking, client) == "CLEARED"
        assert ask(asking, client) == "CLEARED"
    assert (script.soap_connections, script.requests) == (2, 2)


def test_an_http_1_0_reply_without_a_length_ends_when_the_server_closes(asking):
    def until_close(conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/xml\r\n\r\n" + CLEARED)
        return False

    with scripted(until_close, sized(version=b"HTTP/1.0", extra=b"Connection: keep-alive\r\n"), sized()) as (
        url,
        script,
    ):
        client = ImmigrationClient(url, 2000)
        assert ask(asking, client) == "CLEARED"
        assert ask(asking, client) == "CLEARED"  # HTTP/1.0 with keep-alive: kept
        assert ask(asking, client) == "CLEARED"
    assert (script.soap_connections, script.requests) == (2, 3)


def test_an_interim_100_continue_is_skipped(asking):
    def continued(conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        return sized()(conn)

    with scripted(continued) as (url, _script):
        assert ask(asking, ImmigrationClient(url, 2000)) == "CLEARED"


def test_a_reply_in_small_pieces_is_put_together(asking):
    def trickled(conn: socket.socket) -> bool:
        data = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s" % (
            len(CLEARED),
            CLEARED,
        )
        for i in range(0, len(data), 40):
            conn.sendall(data[i : i + 40])
            time.sleep(0.005)
        return True

    with scripted(trickled) as (url, _script):
        assert ask(asking, ImmigrationClient(url, 3000)) == "CLEARED"


def test_a_reply_trickling_in_past_the_timeout_gives_no_answer_in_time(asking):
    """Each byte comes well within the timeout, the whole reply never does: the timeout bounds the
    exchange, not each read."""
    stop = threading.Event()

    def dribble(conn: socket.socket) -> bool:
        data = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s" % (
            len(CLEARED),
            CLEARED,
        )
        for byte in data:
            if stop.wait(0.05):
                break
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
        return False

    with scripted(dribble) as (url, _script):
        client = ImmigrationClient(url, 400)
        client.warm()
        started = time.monotonic()
        assert ask(asking, client) is None
        elapsed = time.monotonic() - started
        stop.set()
    assert 0.35 <= elapsed < 1.5, elapsed


def test_a_server_that_never_answers_gives_no_answer_within_the_timeout(asking):
    stop = threading.Event()

    def silent(conn: socket.socket) -> bool:
        stop.wait(5)
        return False

    with scripted(silent) as (url, _script):
        client = ImmigrationClient(url, 300)
        client.warm()
        started = time.monotonic()
        assert ask(asking, client) is None
        elapsed = time.monotonic() - started
        stop.set()
    assert 0.25 <= elapsed < 1.2, elapsed


def _raw(data: bytes, keep: bool = False) -> Reply:
    def reply(conn: socket.socket) -> bool:
        conn.sendall(data)
        return keep

    return reply


@pytest.mark.parametrize(
    "broken",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + CLEARED,  # cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + CLEARED,  # bad chunk size
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n<soap" + b"X" * 10,  # chunk overruns
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + CLEARED,  # unknown coding
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 7\r\n\r\n" + CLEARED,  # conflicting lengths
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n" + CLEARED,
        b"HELLO THERE\r\n\r\n" + CLEARED,  # not HTTP
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n" + CLEARED,
        b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 70000,  # headers without end
        b"",  # closed without a word
    ],
    ids=[
        "short",
        "chunk-size",
        "chunk-overrun",
        "coding",
        "lengths",
        "negative",
        "not-http",
        "header",
        "endless",
        "closed",
    ],
)
def test_a_broken_reply_gives_no_answer_and_the_next_call_starts_afresh(broken, asking):
    with scripted(_raw(broken), sized()) as (url, script):
        client = ImmigrationClient(url, 1000)
        assert ask(asking, client) is None
        assert ask(asking, client) == "CLEARED"
    assert script.soap_connections == 2


def test_a_kept_connection_the_server_dropped_is_not_reused(asking):
    def then_drop(conn: socket.socket) -> bool:
        sized()(conn)
        return False  # closes without having said so, as a server's idle timeout does

    with scripted(then_drop, sized()) as (url, script):
        client = ImmigrationClient(url, 2000)
        assert ask(asking, client) == "CLEARED"
        time.sleep(0.1)  # the close reaches the client
        assert ask(asking, client) == "CLEARED"
    assert (script.soap_connections, script.requests) == (2, 2)


def test_a_reply_with_bytes_after_its_end_does_not_keep_its_connection(asking):
    with scripted(
        _raw(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sEXTRA" % (len(CLEARED), CLEARED), keep=True),
        sized(),
    ) as (
        url,
        script,
    ):
        client = ImmigrationClient(url, 2000)
        assert ask(asking, client) == "CLEARED"
        assert ask(asking, client) == "CLEARED"  # not read from the leftover "EXTRA"
    assert script.soap_connections == 2


def test_the_owner_is_told_once_when_the_wsdl_is_loaded_and_not_when_it_fails(asking):
    """``roadcargo serve`` settles its heap then (gateway.heap): once, however many calls follow."""
    loaded: list[str] = []
    with scripted(sized(), sized(REFER)) as (url, _script):
        client = ImmigrationClient(url, 2000, on_loaded=lambda: loaded.append("WSDL"))
        assert loaded == []  # lazily: nothing is loaded before it is needed
        assert client.warm()
        assert ask(asking, client) == "CLEARED"
        assert ask(asking, client) == "REFER"
    assert loaded == ["WSDL"]
    nowhere = f"http://127.0.0.1:{_closed_port()}/immigration"
    unreachable = ImmigrationClient(nowhere, 300, on_loaded=loaded.clear)
    assert not unreachable.warm()
    assert loaded == ["WSDL"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
