"""What the HTTP benchmarks share: free ports, waiting for a server, the storages to run on (a fresh
SQLite file, and a PostgreSQL database made for the run and dropped after it), the machine line, a lean
HTTP/1.1 load generator, and the CPU time a process (or the local PostgreSQL server) used.

The load generator runs on the same machine as the gateway, so what it costs is taken from the server:
httpx spends about as much CPU per request as the gateway's own /healthz does. :class:`RawClient` keeps
one keep-alive connection per simulated client and writes pre-built request bytes on an asyncio stream
(uvloop when installed): a few tens of microseconds per request. `wrk` (``apt install wrk``), a C load
generator, gives the same /healthz ceiling within a few per cent (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, label: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=1) as client:  # one client: a new one per poll costs an SSL context
        while time.monotonic() < deadline:
            try:
                if client.get(url).status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
    raise SystemExit(f"{label} did not start")


def machine() -> str:
    return f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


@contextmanager
def storages(workdir: Path, pg_url: str | None, skip_sqlite: bool = False) -> Iterator[list[tuple[str, str]]]:
    """(label, database URL) pairs to run on; the PostgreSQL database is dropped on the way out."""
    runs: list[tuple[str, str]] = []
    if not skip_sqlite:
        runs.append(("sqlite", f"sqlite:///{workdir / 'bench.db'}"))
    admin = None
    name = f"roadcargo_bench_{uuid.uuid4().hex[:8]}"
    if pg_url:
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # outlives a restart
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        runs.append(("postgresql", make_url(pg_url).set(database=name).render_as_string(hide_password=False)))
    try:
        yield runs
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


# -- the load generator ---------------------------------------------------------------------------------


class RawClient:
    """One keep-alive HTTP/1.1 connection that sends requests and reads Content-Length framed answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> RawClient:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    @staticmethod
    def build(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
        """The bytes of one request, built before the clock starts."""
        lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method in ("POST", "PUT"):
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
            elif name.strip().lower() == b"transfer-encoding":
                raise RuntimeError("chunked answers are not expected from these endpoints")
        return status, await self.reader.readexactly(length) if length else b""

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with suppress(OSError):
                await self.writer.wait_closed()


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep the bench runnable without it
        return asyncio.new_event_loop()


@dataclass
class Run:
    """Latencies (seconds) of one timed phase and its wall time; open loop, also when each request was
    due (seconds from the start, in the order of ``latencies``)."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    due: list[float] = field(default_factory=list)
    wall_start: float = 0.0  # time.time() when the timed phase started, to match a stall to server logs

    def timeline(self, path: Path, over_ms: float, window: float = 0.5) -> str:
        """Write every request's due time and latency to ``path`` (JSON: ``[[due s, latency s], ...]``)
        and say where the requests over ``over_ms`` were: the windows of ``window`` seconds that held
        most of them. A p99 made by one stall reads differently from one made all along the run."""
        pairs = sorted(zip(self.due, self.latencies, strict=True))
        path.write_text(json.dumps([[round(d, 6), round(x, 6)] for d, x in pairs]))
        slow = collections.Counter(int(d / window) for d, x in pairs if x * 1000 > over_ms)
        began = datetime.fromtimestamp(self.wall_start, UTC).strftime("%H:%M:%S.%f")[:-3]
        if not slow:
            return f"timeline {path} (0 s = {began} UTC): no request over {over_ms:g} ms"
        worst = ", ".join(f"{k * window:.1f}-{(k + 1) * window:.1f} s: {n}" for k, n in slow.most_common(4))
        spread = len(slow) * window
        return (
            f"timeline {path} (0 s = {began} UTC): {sum(slow.values())} requests over {over_ms:g} ms, in "
            f"{spread:g} s of {self.elapsed:.1f}; most in {worst}"
        )

    @property
    def per_s(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def ms(self, q: int) -> float:
        """Percentile ``q`` (50, 99) in milliseconds."""
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else 0.0
        if q == 50:
            return statistics.median(self.latencies) * 1000
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000


def add_timeline_option(parser: Any) -> None:
    parser.add_argument(
        "--timeline",
        metavar="PREFIX",
        help="open loop: write each request's due time and latency to PREFIX-<storage>.json and say in "
        "which half-seconds the requests over the latency target were",
    )


def report_timeline(prefix: str | None, label: str, run: Run, over_ms: float) -> None:
    if prefix and run.due:
        print(f"  {run.timeline(Path(f'{prefix}-{label}.json'), over_ms)}")


async def drive(
    clients: list[RawClient], work: list[list[bytes]], check: Callable[[int, bytes], None]
) -> Run:
    """Each client sends its own list of requests one after another; all clients at once."""

    async def one(client: RawClient, requests: list[bytes]) -> list[float]:
        out = []
        for request in requests:
            t = time.perf_counter()
            status, body = await client.send(request)
            out.append(time.perf_counter() - t)
            check(status, body)
        return out

    started = time.perf_counter()
    lats = await asyncio.gather(*(one(c, w) for c, w in zip(clients, work, strict=True)))
    return Run([x for xs in lats for x in xs], time.perf_counter() - started)


async def drive_paced(
    clients: list[RawClient], work: list[list[bytes]], check: Callable[[int, bytes], None], rate: float
) -> Run:
    """Open loop: the requests are due at ``rate`` per second in all, spread evenly over the clients
    (each client sends its next request when it is due, or as soon as its previous answer is in when
    it is late). A latency counts from the moment the request was due, so time spent waiting behind a
    slow answer is counted too (no coordinated omission)."""
    interval = len(clients) / rate  # between two requests of one client

    async def one(index: int, client: RawClient, requests: list[bytes]) -> list[tuple[float, float]]:
        out = []
        due = started + index / rate  # the clients' schedules interleave
        for request in requests:
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            status, body = await client.send(request)
            out.append((due - started, time.perf_counter() - due))
            check(status, body)
            due += interval
        return out

    started, wall_start = time.perf_counter(), time.time()
    each = await asyncio.gather(*(one(i, c, w) for i, (c, w) in enumerate(zip(clients, work, strict=True))))
    pairs = [pair for pairs in each for pair in pairs]
    return Run([x for _d, x in pairs], time.perf_counter() - started, [d for d, _x in pairs], wall_start)


async def timed(
    clients: list[RawClient],
    requests: list[list[bytes]],
    warmup: int,
    check: Callable[[int, bytes], None],
    rate: float | None,
    meter: Meter,
    warmed: Callable[[], None] = lambda: None,
) -> tuple[Run, float, dict[str, float | None]]:
    """Each client's first ``warmup`` requests sent before the clock starts (then ``warmed`` is called),
    and the rest timed, closed loop or at ``rate``, the warm-up the same way: the run, the load
    generator's CPU seconds, and what ``meter`` read. Warmed up, the timed run sees the gateway as it
    runs all day, its database connections open and its statements prepared on them; without it, the
    first second of an open-loop run on PostgreSQL answered in 400-600 ms and the queue it left took ten
    seconds to drain. A warm-up as fast as answered before an open-loop run left its own backlog (SQLite's
    log, written faster than the run writes) to the run's first half second: 42 of its 60 requests over
    25 ms in one run (bench/RESULTS.md, session 11)."""
    if warmup:
        first = [r[:warmup] for r in requests]
        await (drive(clients, first, check) if rate is None else drive_paced(clients, first, check, rate))
    warmed()
    work = [r[warmup:] for r in requests]
    meter.start()
    started = time.process_time()
    run = await (drive(clients, work, check) if rate is None else drive_paced(clients, work, check, rate))
    client_cpu = time.process_time() - started
    return run, client_cpu, meter.stop()


async def health(clients: list[RawClient], per_client: int) -> Run:
    """/healthz round trips with the same connections: the floor of any request through the stack."""
    request = RawClient.build("GET", "/healthz")

    def ok(status: int, _body: bytes) -> None:
        assert status == 200, status

    return await drive(clients, [[request] * per_client for _ in clients], ok)


async def connect_all(ports: list[int], n: int) -> list[RawClient]:
    """``n`` connections spread round-robin over the gateway processes (a load balancer's part)."""
    opening = (RawClient("127.0.0.1", ports[i % len(ports)]).open() for i in range(n))
    return list(await asyncio.gather(*opening))


def start_gateways(
    label: str, processes: int, env: dict[str, str], workdir: Path, worker: bool = False
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """``processes`` × ``roadcargo serve`` on one database, each on its own port (design section 11's
    scale-out: several processes, background work in the first only, ``--no-background`` for the
    others; ``worker``: all of them ``--no-background`` and the background work in a ``roadcargo
    worker``, returned last). Each one's log goes to a file: a pipe nobody reads would fill and stop
    the server."""
    roadcargo = str(Path(sys.executable).with_name("roadcargo"))
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(processes):
            port = free_port()
            command = [roadcargo, "serve", "--http-port", str(port), "--sftp-port", "0"]
            if i or worker:
                command.append("--no-background")
            with open(workdir / f"{label}-serve-{i}.log", "wb") as log:
                procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log))
            ports.append(port)
            wait_until_up(f"http://127.0.0.1:{port}/healthz", f"{label}: gateway process {i}")
        if worker:  # the background work in a process of its own (docs/operations.md)
            with open(workdir / f"{label}-worker.log", "wb") as log:
                command = [roadcargo, "worker", "--no-sftp"]
                procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log))
    except BaseException:
        stop(procs)
        raise
    return procs, ports


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


def run_async(make: Callable[[], Awaitable[Any]]) -> Any:
    # The setup's objects out of the collector's way: a full collection of them would stop the load
    # generator for tens of milliseconds, counted in the latencies it measures (gateway/heap.py).
    gc.collect()
    gc.freeze()
    loop = new_loop()
    try:
        return loop.run_until_complete(make())
    finally:
        loop.close()


# -- what it cost ---------------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and their children so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def postgres_cpu_seconds(database: str | None = None) -> float:
    """User + system CPU of the local PostgreSQL server so far (Linux /proc): the postmaster, its own
    processes (WAL writer, checkpointer, autovacuum), its live backends, and, through the postmaster's
    children's times, the backends that have ended. With ``database``, the live backends of other
    databases are left out (other work on a shared server); ended ones cannot be told apart and count.
    Only a server on this machine, readable by this user, can be seen: 0.0 otherwise."""
    found: dict[str, tuple[str, list[str], str]] = {}  # pid: (parent, stat fields, title)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                name, rest = f.read().split("(", 1)[1].rsplit(")", 1)
            if name != "postgres":
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue  # gone meanwhile
        fields = rest.split()
        found[entry.name] = (fields[1], fields, title)
    total = 0
    for parent, fields, title in found.values():
        # A client backend's title names its user, database and client ("user db 127.0.0.1(5432) idle").
        client = "(" in title or "[local]" in title
        if database is not None and client and f" {database} " not in title:
            continue
        total += int(fields[11]) + int(fields[12])  # utime stime
        if parent not in found:  # the postmaster: with the backends it has reaped
            total += int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def database_cpu(url: str) -> Callable[[], float] | None:
    """A reading of the database server's CPU seconds for a run on ``url``: PostgreSQL's processes
    (``postgres_cpu_seconds`` of that database); None on SQLite, whose work is inside the gateway's
    own processes."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    database = parsed.database
    return lambda: postgres_cpu_seconds(database)


def ms_each(seconds: float | None, n: int) -> str:
    """Milliseconds per request for a table, or "-" where it was not measured."""
    return "-" if seconds is None else f"{seconds / n * 1000:.2f}"


@dataclass
class Meter:
    """The CPU seconds the gateway's processes, the simulator and the database server spend between
    ``start`` and ``stop``: the timed run's, without the setup and the warm-up."""

    gateway: list[int]
    simulator: list[int]
    database: Callable[[], float] | None
    _begin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _read(self) -> tuple[float, float, float]:
        spent = self.database() if self.database is not None else 0.0
        return cpu_seconds(self.gateway), cpu_seconds(self.simulator), spent

    def start(self) -> None:
        self._begin = self._read()

    def stop(self) -> dict[str, float | None]:
        end = self._read()
        return {
            "server_cpu": end[0] - self._begin[0],
            "sim_cpu": end[1] - self._begin[1],
            "db_cpu": end[2] - self._begin[2] if self.database is not None else None,
        }


def children(pid: int) -> list[int]:
    """The pid and its direct children (uvicorn's worker processes)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(x) for x in f.read().split())]
    except FileNotFoundError:
        return [pid]


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


CONTROL_POINTS = ["LMC", "MKT", "STK", "SBC", "HYW", "HZM"]
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # the letters of Hong Kong registrations (no I, O, Q)


def vehicle_number(n: int) -> str:
    """The n-th of a run's distinct vehicle registration numbers (two letters, up to four digits)."""
    return f"{LETTERS[n // 9999 % 23]}{LETTERS[n // 9999 // 23 % 23]}{n % 9999 + 1}"


def bench_record(ref: str, cp: str, day: str, hs_code: str | None = None) -> dict[str, object]:
    """A small valid import consignment, the benches' unit of work."""
    item: dict[str, object] = {
        "package_count": 40,
        "package_type": "CT",
        "package_description": "cartons",
        "description": "plastic toy building blocks",
    }
    if hs_code is not None:
        item["hs_code"] = hs_code
    return {
        "direction": "IMPORT",
        "submitter_reference": ref,
        "consignor": {
            "name": "Shenzhen Bright Toys Co Ltd",
            "address": "18 Industrial Avenue",
            "country": "CN",
        },
        "consignee": {"name": "Harbour Traders Ltd", "address": "2 Harbour Road", "country": "HK"},
        "expected_crossing": day,
        "control_point": cp,
        "items": [item],
    }
