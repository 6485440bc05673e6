"""A simulated Hong Kong border day, replayed against running gateway processes (issue 10).

    .venv/bin/python bench/border_day.py [--seed 1] [--scale 1.0] [--speedup X] [--pg URL | --sqlite]
                                         [--processes 2] [--topology auto|serve|worker] [--out PREFIX]
                                         [--restart-postgresql-at F] [--kill-serve-at F]
                                         [--kill-worker-at F] [--fault-pause 3] [--keep]

From the seed it generates the day (``bench/border_day_plan.py``): about 17,000 trucks over the six land
control points with a morning and an evening peak, one to five consignments each, lodged 40 % as EDIFACT
CUSCAR interchanges (POST /api/v1/edifact), 25 % as XML (POST /api/v1/xml, and zeep to /soap/cargo), 20 %
as files uploaded with paramiko into the filer's SFTP /inbox (replies collected from /outbox), 15 % as
JSON (POST /api/v1/consignments); amendments and cancellations through the filer's own channel; drivers
bundling (POST /api/v1/bundles); kiosks deciding (POST /api/v1/kiosk/clearances, the Immigration
simulator answering); an officer releasing the inspections the risk draw selects; a few transhipments.

It starts everything itself: a fresh PostgreSQL database (or SQLite with --sqlite), the Immigration
simulator, N ``roadcargo serve`` processes (and a ``roadcargo worker`` when the topology says so), the
client alternating between their base URLs (no load balancer). Only the real transports are used.

The gateway runs on the wall clock; the replay compresses the day by --speedup (default: the day in
nine minutes at --scale 1, and the same request rate at any scale, i.e. 160 / scale). So that rules in
minutes keep their sense at that speed, the replay's configuration sets ``bundle_lead_minutes = 0`` and
slot capacities that a compressed day cannot fill; every other setting is the default (risk random rate
0.02, Immigration timeout 800 ms).

At the end it checks that every consignment is accounted for (lodged = CCRNs issued = bundled +
cancelled + still waiting, and each CCRN in the status its story ends in), prints throughput, p50/p99
per operation and the errors, and writes PREFIX.json and PREFIX.png (crossings per hour per control
point; trucks queueing at the kiosks). Exit status 1 when anything is unaccounted for or any error.

Faults during the replay, at a fraction F of the day's schedule, one at a time: ``--restart-postgresql-at``
stops the local PostgreSQL server (``pg_ctlcluster ... stop -m fast``: every database of the server) and
starts it again ``--fault-pause`` seconds later; ``--kill-serve-at`` kills serve0 with SIGKILL and starts a
replacement on its ports after the pause, as a supervisor would; ``--kill-worker-at`` does the same to the
worker (its replacement takes over the SFTP claims). The client behaves as a partner would: a 503 or 429
is resent once ``Retry-After`` has passed, a connection error after a growing pause to the next process,
an SFTP exchange resumed on a new connection (the file uploaded again only if the gateway does not have
it), a kiosk ``NOT_READY SYSTEM_FAULT`` tried again a second later; each for 120 s at most. A resend after
a lost reply relies on the gateway's idempotency; where the gateway answers a conflict instead (a bundle:
``ALREADY_BUNDLED``; an inspection release: ``INVALID_STATE``; a kiosk decision: ``NOT_READY NO_BUNDLE``),
the answer is counted apart. The report gives each fault's time, how long clients saw failures, when the
last retried request was answered, and the SFTP files in flight across it; the accounting must still be
exact.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.border_day_plan import (  # noqa: E402
    CONTROL_POINTS,
    DAY,
    HOUR,
    Consignment,
    Plan,
    Truck,
    cuscar,
    edi_sender,
    make_plan,
    syntax_for,
    xml_document,
)
from bench.harness import free_port, storages, wait_until_up  # noqa: E402
from gateway.clock import HONG_KONG  # noqa: E402

ROADCARGO = str(Path(sys.executable).with_name("roadcargo"))
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DWELL = 20.0  # simulated seconds a truck holds a kiosk lane after its decision
INSPECTION_MINUTES = 40.0  # simulated minutes from a case opening to the officer's release
NOT_READY_RETRIES = 3
RETRY_SECONDS = 120.0  # how long a client keeps resending a request that a fault made fail
SFTP_WAIT_SECONDS = 300.0  # how long an SFTP partner waits for its file to be processed
LIVE = ("BUNDLED", "ARRIVED", "CROSSED", "HELD", "DECLARED")


# -- the gateway processes ------------------------------------------------------------------------------


def choose_topology(asked: str) -> str:
    """``worker``: N ``serve --no-background`` and one ``roadcargo worker`` sharing one data directory;
    ``serve``: N plain ``serve`` processes, each with its own data directory (each processes the SFTP
    uploads it receives), for a tree without ``roadcargo worker``. ``auto`` reads the CLI's parser."""
    if asked != "auto":
        return asked
    from gateway.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    no_background = any("--no-background" in a.option_strings for a in serve._actions)
    return "worker" if "worker" in commands.choices and no_background else "serve"


@dataclass
class Gateways:
    workdir: Path
    db_url: str
    processes: int
    topology: str
    bases: list[str] = field(default_factory=list)
    sftp_ports: list[int] = field(default_factory=list)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)
    argv: dict[str, list[str]] = field(default_factory=dict)
    cpu_gone: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))

    def _config(self, name: str, data_dir: Path, immigration: int) -> Path:
        lines = [
            "[server]",
            f'data_dir = "{data_dir}"',
            "[rules]",
            "bundle_lead_minutes = 0",
            "[immigration]",
            f'url = "http://127.0.0.1:{immigration}/immigration"',
        ]
        for cp in CONTROL_POINTS:
            lines += [f"[control_points.{cp}]", "slot_capacity = 1000000"]
        path = self.workdir / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROADCARGO_")}
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs = [(n, p) for n, p in self.procs if n != name] + [(name, proc)]
        self.argv[name] = argv
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL one process (its CPU so far is kept for the report)."""
        proc = dict(self.procs)[name]
        self.cpu_gone[name] += self._cpu_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def respawn(self, name: str) -> None:
        """Start a killed process again with the same command line (same ports), as a supervisor
        would, and wait until it answers (a serve process) or has started its jobs (the worker)."""
        self._spawn(name, self.argv[name])
        if name.startswith("serve"):
            wait_until_up(f"{self.bases[int(name[5:])]}/healthz", f"roadcargo {name}")
        else:
            log = self.workdir / f"{name}.log"
            mark = log.read_bytes().count(b"worker running")
            deadline = time.monotonic() + 60
            while log.read_bytes().count(b"worker running") == mark and time.monotonic() < deadline:
                time.sleep(0.05)

    def start(self) -> dict[str, str]:
        """Start everything; returns the officer registered with ``roadcargo party add`` meanwhile."""
        sim = free_port()
        self._spawn("immigration", [ROADCARGO, "simulate", "immigration", "--port", str(sim)])
        shared = self.workdir / "var"
        for i in range(self.processes):
            data_dir = shared if self.topology == "worker" else self.workdir / f"var{i}"
            config = self._config(f"serve{i}", data_dir, sim)
            port, sftp = free_port(), free_port()
            argv = [ROADCARGO, "serve", "--http-port", str(port), "--sftp-port", str(sftp)]
            argv += ["--db", self.db_url, "--config", str(config)]
            if self.topology == "worker":
                argv.append("--no-background")
            self.bases.append(f"http://127.0.0.1:{port}")
            self.sftp_ports.append(sftp)
            self.configs.append(config)
            self._spawn(f"serve{i}", argv)
            if i == 0:  # the first one sets up the database; the others start on it
                self._wait(0)
                officer = subprocess.Popen(
                    [
                        *(
                            ROADCARGO,
                            "party",
                            "add",
                            "--role",
                            "officer",
                            "--name",
                            "Border Day Duty Officer",
                        ),
                        *("--json", "--db", self.db_url, "--config", str(config)),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
        if self.topology == "worker":
            config = self._config("worker", shared, sim)
            self._spawn("worker", [ROADCARGO, "worker", "--db", self.db_url, "--config", str(config)])
        wait_until_up(f"http://127.0.0.1:{sim}/immigration?wsdl", "the Immigration simulator")
        for i in range(1, self.processes):
            self._wait(i)
        out, err = officer.communicate(timeout=120)
        if officer.returncode != 0:
            raise SystemExit(f"roadcargo party add failed: {err}")
        return dict(json.loads(out))

    def _wait(self, i: int) -> None:
        try:
            wait_until_up(f"{self.bases[i]}/healthz", f"roadcargo serve #{i}")
        except SystemExit:
            print((self.workdir / f"serve{i}.log").read_text()[-3000:], file=sys.stderr)
            raise

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU of each process so far (Linux /proc), killed predecessors included."""
        out = {name: self._cpu_of(proc.pid) + self.cpu_gone[name] for name, proc in self.procs}
        out["postgresql (all)"] = self.postgres_cpu_seconds()
        return out

    @staticmethod
    def _cpu_of(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    @staticmethod
    def postgres_cpu_seconds() -> float:
        """CPU of every PostgreSQL process on the machine (ended backends through the postmaster's
        children's times); other users of the server count too."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name, rest = text.split("(", 1)[1].rsplit(")", 1)
            if name != "postgres":
                continue
            f = rest.split()
            total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if f[1] == "1" else 0)
        return total / tick

    def db_counters(self) -> dict[str, int]:
        """PostgreSQL's own counters for the replay's database: transactions and rows (empty on SQLite)."""
        if not self.db_url.startswith("postgresql"):
            return {}
        from sqlalchemy import create_engine, text

        engine = create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                row = conn.execute(
                    text(
                        "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, "
                        "tup_returned, tup_fetched FROM pg_stat_database WHERE datname = current_database()"
                    )
                ).one()
                counters = dict(row._mapping)
                for t in conn.execute(
                    text(
                        "SELECT relname, seq_tup_read, idx_tup_fetch, n_tup_ins + n_tup_del AS written "
                        "FROM pg_stat_all_tables"
                    )
                ):
                    counters[f"read {t.relname}"] = (t.seq_tup_read or 0) + (t.idx_tup_fetch or 0)
                    counters[f"written {t.relname}"] = t.written or 0
                # which index the rows were read through: a read that grows with the day shows here
                for t in conn.execute(
                    text("SELECT indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes")
                ):
                    counters[f"index {t.indexrelname}"] = t.idx_tup_read or 0
                    counters[f"scans {t.indexrelname}"] = t.idx_scan or 0
            return counters
        finally:
            engine.dispose()

    def alive(self) -> list[str]:
        return [name for name, proc in self.procs if proc.poll() is not None]

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- faults during the replay ---------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault injected at a fraction of the day's schedule: ``postgresql`` (the server stopped, and
    started again ``pause`` seconds later), ``serve`` (serve0 killed with SIGKILL, a replacement started
    on its ports ``pause`` seconds later, as a supervisor would) or ``worker`` (the same for the worker,
    whose SFTP claims its replacement takes over)."""

    kind: str
    at: float
    pause: float
    started: float = 0.0  # monotonic times
    back: float = 0.0
    detail: str = ""


def postgresql_cluster() -> list[str]:
    """``pg_ctlcluster`` arguments of the local server (one version under /etc/postgresql)."""
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(x) for x in v.split(".")])
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main"]


def inject(fault: Fault, gateways: Gateways) -> None:
    """Run in a thread: the fault, then wait until what it broke is back."""
    fault.started = time.monotonic()
    if fault.kind == "postgresql":
        cluster = postgresql_cluster()
        subprocess.run([*cluster, "stop", "-m", "fast"], check=True, capture_output=True)
        stopped = time.monotonic()
        time.sleep(fault.pause)
        starting = time.monotonic()
        subprocess.run([*cluster, "start"], check=True, capture_output=True)
        fault.detail = (
            f"PostgreSQL {cluster[2]}: stop -m fast took {stopped - fault.started:.1f} s, down "
            f"{fault.pause:g} s, start took {time.monotonic() - starting:.1f} s"
        )
    else:
        name = "serve0" if fault.kind == "serve" else "worker"
        pid = dict(gateways.procs)[name].pid
        gateways.kill(name)
        time.sleep(fault.pause)
        gateways.respawn(name)
        fault.detail = f"{name} (pid {pid}) SIGKILL, replacement pid {dict(gateways.procs)[name].pid}"
    fault.back = time.monotonic()


# -- SFTP partners (paramiko, in threads) --------------------------------------------------------------


class SftpPartner:
    """One filer's connections to the mailboxes of every gateway process: upload as NAME.part, rename
    (the gateway takes a file when it appears under its final name), wait until the input is archived
    or failed, read and remove the replies from /outbox."""

    def __init__(self, party_id: str, key: Path, ports: list[int]) -> None:
        self.party_id, self.key, self.ports = party_id, key, ports
        self.clients = [self._connect(port) for port in ports]
        self.reconnecting = [threading.Lock() for _ in ports]
        self.collected: dict[str, dict[str, bytes]] = {}  # replies read before a connection died

    def _connect(self, port: int) -> tuple[Any, Any, threading.Lock]:
        import paramiko

        transport = paramiko.Transport(("127.0.0.1", port))
        transport.connect()
        transport.auth_publickey(self.party_id, paramiko.Ed25519Key.from_private_key_file(str(self.key)))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return transport, client, threading.Lock()

    def reconnect(self, server: int) -> None:
        """After the server's process died: a new connection to its port (its replacement), unless
        another exchange has made one already."""
        with self.reconnecting[server]:
            old = self.clients[server][0]
            if old.is_active():
                return
            with contextlib.suppress(Exception):
                old.close()
            self.clients[server] = self._connect(self.ports[server])

    def exchange(self, server: int, name: str, data: bytes, resume: bool = False) -> dict[str, bytes]:
        """``resume``: an earlier exchange of this file broke off (the connection died): upload only if
        the gateway has not got the file yet (not in /inbox, /archive or /failed)."""
        _transport, client, lock = self.clients[server]
        with lock:
            there = resume and any(_exists(client, f"/{d}/{name}") for d in ("inbox", "archive", "failed"))
            if not there:
                with client.open(f"/inbox/{name}.part", "wb") as f:
                    f.set_pipelined(True)
                    f.write(data)
                client.rename(f"/inbox/{name}.part", f"/inbox/{name}")
        pause = 0.1
        deadline = time.monotonic() + SFTP_WAIT_SECONDS
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: not processed within {SFTP_WAIT_SECONDS:.0f} s")
            time.sleep(pause)
            pause = min(pause * 1.5, 1.0)
            with lock:
                done = _exists(client, f"/archive/{name}")
                failed = not done and _exists(client, f"/failed/{name}")
                if done or failed:
                    replies = self.collected.setdefault(name, {})
                    for entry in client.listdir("/outbox"):
                        if entry.startswith(name + "."):
                            with client.open(f"/outbox/{entry}", "rb") as f:
                                replies[entry[len(name) + 1 :]] = f.read()
                            client.remove(f"/outbox/{entry}")
                    client.remove(f"/{'failed' if failed else 'archive'}/{name}")
                    if failed:
                        replies["failed"] = b"failed"
                    return self.collected.pop(name)

    def close(self) -> None:
        for transport, client, _lock in self.clients:
            client.close()
            transport.close()


def _exists(client: Any, path: str) -> bool:
    try:
        client.stat(path)
    except FileNotFoundError:
        return False
    return True


# -- reading replies -----------------------------------------------------------------------------------


def cusres_results(body: bytes) -> dict[str, tuple[str | None, str | None]]:
    """submitter_reference -> (CCRN, error) from a body holding a CONTRL and a CUSRES interchange."""
    from tests.sftp_support import segments

    out: dict[str, tuple[str | None, str | None]] = {}
    starts = [i for i in range(len(body)) if body.startswith(b"UNA", i) or body.startswith(b"UNB", i)]
    heads = [s for k, s in enumerate(starts) if k == 0 or not body.startswith(b"UNA", starts[k - 1])]
    parts = [body[a:b] for a, b in itertools.pairwise([*heads, len(body)])]
    reference = None
    for part in parts:
        for seg in segments(part):
            if seg[0] == "DOC":
                reference = seg[2]
                out.setdefault(reference, (None, None))
            elif seg[0] == "RFF" and seg[1].startswith("XC:") and reference is not None:
                out[reference] = (seg[1][3:], out[reference][1])
            elif seg[0] == "FTX" and seg[1] == "AAO" and reference is not None:
                out[reference] = (out[reference][0], ":".join(seg[4:])[:200])
    return out


def ack_results(body: bytes) -> dict[str, tuple[str | None, str | None]]:
    from lxml import etree

    from mappings.xml_eci import read_acknowledgement

    out: dict[str, tuple[str | None, str | None]] = {}
    for entry in read_acknowledgement(etree.fromstring(body)):
        errors = entry.get("errors")
        out[entry.get("SubmitterReference", "")] = (
            entry.get("Ccrn"),
            json.dumps(errors)[:200] if errors or entry.get("result") == "rejected" else None,
        )
    return out


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _codes(r: httpx.Response) -> set[str]:
    try:
        return {str(p.get("code")) for p in r.json().get("errors", [])}
    except (ValueError, AttributeError):
        return set()


# -- the replay ------------------------------------------------------------------------------------------


@dataclass
class Parties:
    officer: str
    filers: dict[str, list[tuple[str, str]]]  # channel -> (party_id, key)
    drivers: list[tuple[str, str]]
    kiosks: dict[str, str]
    airport: str
    ssh_keys: dict[int, Path]


class Replay:
    def __init__(
        self, plan: Plan, gateways: Gateways, speedup: float, connections: int, faults: list[Fault]
    ) -> None:
        self.plan = plan
        self.faults = faults
        self.gw = gateways
        self.bases = gateways.bases
        self.speedup = speedup
        self.turn = itertools.cycle(range(len(self.bases)))
        self.connections = connections
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: list[tuple[str, str]] = []
        self.retries: collections.Counter[str] = collections.Counter()
        self.failures: list[tuple[float, str, str]] = []  # (monotonic time, operation, what failed)
        self.resends: collections.Counter[str] = collections.Counter()  # answered after a lost reply
        self.resend_conflicts: collections.Counter[str] = collections.Counter()
        self.sftp_spans: list[tuple[float, float]] = []  # monotonic start and end of SFTP exchanges
        self.recovered: list[float] = []  # when a request that a fault made fail was answered at last
        self.decisions: collections.Counter[str] = collections.Counter()
        self.crossings: list[tuple[str, float]] = []
        self.arrived: collections.Counter[str] = collections.Counter()
        self.served: collections.Counter[str] = collections.Counter()
        self.queue_samples: list[tuple[float, dict[str, int]]] = []
        self.lag: list[float] = []
        self.ccrn: dict[int, str | None] = {}
        self.expected: dict[str, str] = {}  # CCRN -> the status its story ends in
        self.serial = itertools.count(1)
        self.trucks_done = 0
        self.inspections: dict[str, asyncio.Future[None]] = {}
        self.thread_cpu: dict[str, float] = collections.defaultdict(float)
        self.cpu_lock = threading.Lock()

    # -- time

    def sim_now(self) -> float:
        return (time.monotonic() - self.t0) * self.speedup

    async def at(self, sim: float) -> None:
        delay = self.t0 + sim / self.speedup - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            self.lag.append(-delay)

    def base(self) -> str:
        return self.bases[next(self.turn)]

    def error(self, op: str, detail: str) -> None:
        self.errors.append((op, detail))

    def failed(self, op: str, kind: str) -> None:
        """A request that a fault made fail for now (503, 429, a connection error, a kiosk SYSTEM_FAULT):
        retried later; the times tell how long clients saw a fault."""
        self.failures.append((time.monotonic(), op, kind))
        self.retries[f"{op} {kind}"] += 1

    async def call(
        self,
        op: str,
        method: str,
        path: str,
        key: str,
        expect: tuple[int, ...] = (200, 201),
        done_if: tuple[str, ...] = (),
        **kw: Any,
    ) -> httpx.Response | None:
        """One request, resent as a real client would: after 503 or 429 once ``Retry-After`` has passed,
        after a connection error with a growing pause, to the next process, for RETRY_SECONDS at most.
        A resend after a reply was lost (the request may have been done) is answered by the gateway's
        idempotency (references, interchange references, content hashes); where the gateway answers a
        conflict instead (``done_if``: e.g. ALREADY_BUNDLED for the bundle the lost attempt made), the
        answer is taken as done and counted under ``resend_conflicts``."""
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        deadline = time.monotonic() + RETRY_SECONDS
        maybe_done = False  # an earlier attempt may have been done by the gateway
        retried = False
        pause = 0.2
        while True:
            try:
                # At most as many requests in flight as connections: httpcore's pool scans its whole
                # queue on every request, which costs more CPU than the requests when thousands wait.
                # The latency is the request's on the wire, not its wait for a slot here.
                async with self.slots:
                    started = time.perf_counter()
                    base = self.base()
                    r = await self.http[base].request(method, base + path, headers=headers, **kw)
            except httpx.TransportError as exc:
                # Not connected: nothing was sent. Otherwise the request may have been done.
                maybe_done = maybe_done or not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if time.monotonic() < deadline:
                    self.failed(op, type(exc).__name__)
                    retried = True
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
                    continue
                self.error(op, f"{type(exc).__name__}: {exc}")
                return None
            if r.status_code in (429, 503) and time.monotonic() < deadline:
                # 503: the database broke off the request; nothing was accepted unless it broke during
                # the COMMIT itself, so the resend may find it done
                maybe_done = maybe_done or r.status_code == 503
                self.failed(op, str(r.status_code))
                retried = True
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            self.latency[op].append(time.perf_counter() - started)  # of the answer, not of a 503
            if retried:  # answered at last: when the fault ended for this client
                self.recovered.append(time.monotonic())
            if maybe_done and r.status_code == 409 and _codes(r) & set(done_if):
                self.resend_conflicts[f"{op} {'/'.join(sorted(_codes(r)))}"] += 1
                r.extensions["done_by_lost_attempt"] = True
                return r
            if r.status_code not in expect:
                self.error(op, f"{r.status_code} {r.text[:300]}")
                return None
            if maybe_done:
                r.extensions["resent"] = True
                self.resends[op] += 1
            return r

    # -- set-up: parties over the API, as the officer

    async def register(self, officer: dict[str, str]) -> Parties:
        key = officer["api_key"]
        sem = asyncio.Semaphore(16)

        async def add(body: dict[str, Any]) -> tuple[str, str]:
            async with sem:
                r = await self.call("setup.party", "POST", "/api/v1/parties", key, json=body)
            if r is None:
                raise SystemExit(f"could not register {body}: {self.errors[-1]}")
            return r.json()["party_id"], r.json()["api_key"]

        from tests.sftp_support import make_key

        filers: dict[str, list[tuple[str, str]]] = {}
        ssh_keys: dict[int, Path] = {}
        for channel, count in self.plan.filers.items():
            filers[channel] = []
            for i in range(count):
                body: dict[str, Any] = {"role": "forwarder", "name": f"{channel.upper()} Freight {i}"}
                if channel in ("edifact", "sftp"):
                    body["edi_ids"] = [edi_sender(channel, i)]
                if channel == "json" and i % 2:
                    body["role"] = "shipper"
                filers[channel].append(await add(body))
                if channel == "sftp":
                    path, public = make_key(self.gw.workdir / "keys", f"sftp{i}")
                    ssh_keys[i] = path
                    r = await self.call(
                        "setup.ssh_key",
                        "POST",
                        f"/api/v1/parties/{filers[channel][-1][0]}/ssh-keys",
                        key,
                        json={"public_key": public},
                    )
                    if r is None:
                        raise SystemExit(f"could not register an SSH key: {self.errors[-1]}")
        drivers = list(
            await asyncio.gather(
                *(add({"role": "driver", "name": f"Driver {i}"}) for i in range(self.plan.drivers))
            )
        )
        kiosks = {
            cp: (await add({"role": "kiosk", "name": f"Kiosk {cp}", "control_point": cp}))[1]
            for cp in CONTROL_POINTS
        }
        airport = (await add({"role": "agency", "name": "Airport Authority", "scope": "airport"}))[1]
        return Parties(key, filers, drivers, kiosks, airport, ssh_keys)

    # -- lodging, amending, cancelling through the filer's channel

    async def submit(
        self,
        action: str,
        channel: str,
        filer: int,
        work: list[tuple[Truck, list[tuple[Consignment, str | None]]]],
    ) -> dict[str, tuple[str | None, str | None]]:
        """One submission of (truck, [(consignment, ccrn)]) entries; answers reference -> (CCRN, error)."""
        _party_id, key = self.parties.filers[channel][filer]
        op = f"{channel}.{action}"
        record = {"lodge": lambda c: c.record, "amend": lambda c: c.amended, "cancel": lambda c: None}[action]
        if channel == "json":
            ((_truck, ((c, ccrn),)),) = work
            if action == "lodge":
                r = await self.call(op, "POST", "/api/v1/consignments", key, json=c.record)
            elif action == "amend":
                r = await self.call(op, "PUT", f"/api/v1/consignments/{ccrn}", key, json=c.amended)
            else:
                r = await self.call(op, "DELETE", f"/api/v1/consignments/{ccrn}", key)
            return {c.reference: (r.json()["ccrn"], None) if r is not None else (None, self.errors[-1][1])}
        if channel == "xml" and filer % 2 == 1:
            return await self._soap(op, filer, action, work, record)
        use_xml = channel == "xml" or (channel == "sftp" and filer % 3 == 2)
        if use_xml:
            data = xml_document([(action, record(c), ccrn) for _t, entries in work for c, ccrn in entries])
        else:
            function = {"lodge": "9", "amend": "5", "cancel": "1"}[action]
            data = cuscar(
                syntax_for(channel, filer),
                edi_sender(channel, filer),
                f"B{next(self.serial):08d}",
                # a cancel repeats the consignment: the D.96B structure wants its goods items
                [
                    (function, t, [(c, record(c) or c.record, ccrn) for c, ccrn in entries])
                    for t, entries in work
                ],
                datetime.now(),
            )
        if channel == "sftp":
            return await self._sftp(op, filer, data, use_xml)
        path, media = (
            ("/api/v1/xml", "application/xml") if use_xml else ("/api/v1/edifact", "application/EDIFACT")
        )
        r = await self.call(op, "POST", path, key, content=data, headers={"Content-Type": media})
        if r is None:
            return {}
        return ack_results(r.content) if use_xml else cusres_results(r.content)

    async def _sftp(
        self, op: str, filer: int, data: bytes, use_xml: bool
    ) -> dict[str, tuple[str | None, str | None]]:
        import paramiko

        name = f"f{next(self.serial):08d}.{'xml' if use_xml else 'edi'}"
        server = next(self.turn)
        started = time.perf_counter()
        deadline = time.monotonic() + RETRY_SECONDS
        partner = self.sftp[filer]
        resume = False
        pause = 0.2
        while True:
            try:
                if resume:
                    await asyncio.to_thread(partner.reconnect, server)
                replies = await asyncio.to_thread(
                    self._timed, "sftp", partner.exchange, server, name, data, resume
                )
            except (paramiko.SSHException, EOFError, OSError) as exc:
                # the connection died with the server's process: reconnect to its replacement and go on
                # (a file it already has is not uploaded again; processing one twice would be harmless
                # anyway: every action in it is idempotent)
                if time.monotonic() < deadline and not isinstance(exc, TimeoutError):
                    self.failed(op, type(exc).__name__)
                    resume = True  # and a recovery once answered
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 5.0)
                    continue
                self.error(op, f"{type(exc).__name__}: {exc}")
                return {}
            except Exception as exc:
                self.error(op, f"{type(exc).__name__}: {exc}")
                return {}
            break
        self.latency[op].append(time.perf_counter() - started)
        self.sftp_spans.append((time.monotonic() - (time.perf_counter() - started), time.monotonic()))
        if resume:
            self.recovered.append(time.monotonic())
        if "failed" in replies:
            self.error(op, f"{name} went to /failed: {replies.get('error.txt', b'')[:200]!r}")
            return {}
        if use_xml:
            return ack_results(replies.get("ack.xml", b""))
        return cusres_results(replies.get("contrl.edi", b"") + replies.get("cusres.edi", b""))

    async def _soap(
        self,
        op: str,
        filer: int,
        action: str,
        work: list[tuple[Truck, list[tuple[Consignment, str | None]]]],
        record: Any,
    ) -> dict[str, tuple[str | None, str | None]]:
        from tests.e2e.test_soap_zeep import as_zeep

        entries = []
        for _t, pairs in work:
            for c, ccrn in pairs:
                entry: dict[str, Any] = {"action": action}
                if ccrn:
                    entry["Ccrn"] = ccrn
                if record(c) is not None:
                    entry["Record"] = as_zeep(record(c))
                entries.append(entry)
        import requests
        import zeep.exceptions
        from lxml import etree

        deadline = time.monotonic() + RETRY_SECONDS
        pause = 0.2
        retried = False
        while True:
            client = self.soap[(filer, next(self.turn))]
            try:
                async with self.slots:
                    started = time.perf_counter()
                    call = client.service.SubmitCargoInformation
                    ack = await asyncio.to_thread(self._timed, "soap", call, entries)
            except (requests.ConnectionError, zeep.exceptions.Fault) as exc:
                # a connection the server closed, or died with; a fault UNAVAILABLE (503) or
                # RATE_LIMITED (429): resend (every entry is idempotent by reference or content)
                detail = getattr(exc, "detail", None)
                text = str(exc) + (etree.tostring(detail).decode() if detail is not None else "")
                transient = isinstance(exc, requests.ConnectionError) or any(
                    code in text for code in ("UNAVAILABLE", "RATE_LIMITED")
                )
                if transient and time.monotonic() < deadline:
                    kind = type(exc).__name__ if isinstance(exc, requests.ConnectionError) else "fault"
                    self.failed(op, kind)
                    retried = True
                    await asyncio.sleep(pause if kind != "fault" else 5.0)
                    pause = min(pause * 2, 5.0)
                    continue
                self.error(op, f"{type(exc).__name__}: {text[:300]}")
                return {}
            except Exception as exc:
                self.error(op, f"{type(exc).__name__}: {str(exc)[:300]}")
                return {}
            break
        if retried:
            self.recovered.append(time.monotonic())
        self.latency[op].append(time.perf_counter() - started)
        return {
            a.SubmitterReference: (a.Ccrn, None if a.result != "rejected" else str(a.Errors)[:200])
            for a in ack.Consignment
        }

    def _timed(self, kind: str, work: Any, *args: Any) -> Any:
        """Run in a thread; its CPU is added to the client's CPU of that kind."""
        started = time.thread_time()
        try:
            return work(*args) if kind in ("sftp", "call") else work(Consignment=args[0])
        finally:
            with self.cpu_lock:
                self.thread_cpu[kind] += time.thread_time() - started

    def _settle(
        self, op: str, consignments: list[Consignment], results: dict[str, tuple[str | None, str | None]]
    ) -> None:
        for c in consignments:
            ccrn, problem = results.get(c.reference, (None, "no answer for this consignment"))
            if ccrn is None or problem:
                self.error(op, f"{c.reference}: {problem}")
            if op.endswith(".lodge"):
                self.ccrn[c.index] = ccrn
                if ccrn:
                    self.expected[ccrn] = "LODGED"

    async def lodge_batch(self, at: float, channel: str, filer: int, trucks: list[Truck]) -> None:
        await self.at(at)
        work = [(t, [(c, None) for c in t.consignments]) for t in trucks]
        results = await self.submit("lodge", channel, filer, work)  # type: ignore[arg-type]
        self._settle(f"{channel}.lodge", [c for t in trucks for c in t.consignments], results)
        for t in trucks:
            self.lodged[t.index].set()

    async def change(self, action: str, truck: Truck, c: Consignment) -> None:
        ccrn = self.ccrn.get(c.index)
        if ccrn is None:
            return
        results = await self.submit(action, truck.channel, truck.filer, [(truck, [(c, ccrn)])])
        self._settle(f"{truck.channel}.{action}", [c], results)
        if action == "cancel" and results.get(c.reference, (None, "x"))[1] is None:
            self.expected[ccrn] = "CANCELLED"

    # -- the truck's day

    async def truck_day(self, t: Truck) -> None:
        try:
            await self._truck_day(t)
        finally:
            self.trucks_done += 1

    async def _truck_day(self, t: Truck) -> None:
        if t.channel == "json":
            await self.at(t.lodge_at)
            for c in t.consignments:
                self._settle(
                    "json.lodge", [c], await self.submit("lodge", "json", t.filer, [(t, [(c, None)])])
                )
        else:
            await self.lodged[t.index].wait()
        changes = sorted(
            [(c.cancel_at, "cancel", c) for c in t.consignments if c.cancel_at is not None]
            + [(c.amend_at, "amend", c) for c in t.consignments if c.amend_at is not None],
            key=lambda x: x[0],
        )
        for when, action, c in [x for x in changes if x[0] < t.bundle_at]:
            await self.at(when)
            await self.change(action, t, c)
        await self.at(t.bundle_at)
        ccrns = [
            ccrn
            for c in t.consignments
            if (ccrn := self.ccrn.get(c.index)) is not None and self.expected.get(ccrn) != "CANCELLED"
        ]
        if t.transhipment == "AIR_TO_LAND" and ccrns:
            await self.call(
                "transhipment.airport",
                "POST",
                f"/api/v1/transhipments/{ccrns[0]}/airport",
                self.parties.airport,
                json={"decision": "RELEASED", "elock_id": t.elock},
            )
        _driver_id, driver_key = self.parties.drivers[t.driver]
        if ccrns:
            r = await self.call(
                "bundle",
                "POST",
                "/api/v1/bundles",
                driver_key,
                done_if=("ALREADY_BUNDLED",),  # no idempotent resend: the bundle of the lost attempt
                json={"vehicle": t.vehicle, "control_point": t.control_point, "ccrns": ccrns},
            )
            if r is None:
                return
            for ccrn in ccrns:
                self.expected[ccrn] = "BUNDLED"
        for when, action, c in [x for x in changes if x[0] >= t.bundle_at]:
            await self.at(when)
            await self.change(action, t, c)
        await self.at(t.arrive_at)
        body: dict[str, Any] = {
            "control_point": t.control_point,
            "vehicle": t.vehicle,
            "driver_document": f"K{t.driver:07d}",
        }
        if not ccrns:
            body["empty"] = True
        if t.elock:
            body["elock_id"] = t.elock
        attempt = 0
        deadline = time.monotonic() + RETRY_SECONDS
        faulted = False
        while True:
            self.arrived[t.control_point] += 1
            done: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
            await self.queues[t.control_point].put((body, done))
            answer = await done
            if answer is None:
                return
            decision = answer["decision"]
            reasons = answer.get("reasons", [])
            if answer.get("resent") and reasons == ["NO_BUNDLE"]:
                # the reply to a decision was lost and the resend finds the bundle gone: the lost
                # attempt decided (released it, or opened an inspection the officer will release)
                self.resend_conflicts["kiosk NO_BUNDLE"] += 1
                for ccrn in ccrns:
                    self.expected[ccrn] = "ARRIVED"
                return
            if reasons == ["SYSTEM_FAULT"] and time.monotonic() < deadline:
                # the gateway failed closed (its database away): the lane tries again a second later
                self.failed("kiosk", "NOT_READY SYSTEM_FAULT")
                faulted = True
                await asyncio.sleep(1.0)
                continue
            if faulted:
                self.recovered.append(time.monotonic())
            self.decisions[" ".join([decision, *reasons])] += 1
            if decision != "NOT_READY" or attempt == NOT_READY_RETRIES:
                break
            attempt += 1
            self.retries["kiosk NOT_READY " + ",".join(answer.get("reasons", []))] += 1
            await self.at(self.sim_now() + 300)
        if decision == "RELEASE":
            self._crossed(t, ccrns)
        elif decision == "INSPECT":
            case: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.inspections[t.vehicle] = case
            await case
            self._crossed(t, ccrns)
        else:
            self.error("kiosk", f"{t.vehicle} at {t.control_point}: {answer}")
            for ccrn in ccrns:
                self.expected[ccrn] = "ARRIVED"
            return
        if t.transhipment == "LAND_TO_AIR" and ccrns:
            await self.at(self.sim_now() + HOUR)
            await self.call(
                "transhipment.arrival",
                "POST",
                f"/api/v1/transhipments/{ccrns[0]}/arrival",
                self.parties.airport,
                json={"elock_id": t.elock, "intact": True},
            )

    def _crossed(self, t: Truck, ccrns: list[str]) -> None:
        self.crossings.append((t.control_point, self.sim_now()))
        for ccrn in ccrns:
            self.expected[ccrn] = "CROSSED"

    async def lane(self, cp: str, lane: str) -> None:
        key = self.parties.kiosks[cp]
        while True:
            item = await self.queues[cp].get()
            if item is None:
                return
            body, done = item
            r = await self.call("kiosk", "POST", "/api/v1/kiosk/clearances", key, json={**body, "lane": lane})
            self.served[cp] += 1
            done.set_result(r.json() | {"resent": "resent" in r.extensions} if r is not None else None)
            await asyncio.sleep(DWELL / self.speedup)

    async def officer(self) -> None:
        """The inspection bay: each open case is released INSPECTION_MINUTES after it was first seen."""
        seen: dict[int, float] = {}
        pause = max(0.25, 300 / self.speedup)
        while self.trucks_done < len(self.plan.trucks) or self.inspections:
            await asyncio.sleep(pause)
            r = await self.call(
                "inspection.list", "GET", "/api/v1/inspections?status=OPEN", self.parties.officer
            )
            if r is None:
                continue
            for case in r.json()["inspections"]:
                first = seen.setdefault(case["inspection_id"], self.sim_now())
                if self.sim_now() - first < INSPECTION_MINUTES * 60:
                    continue
                released = await self.call(
                    "inspection.release",
                    "POST",
                    f"/api/v1/inspections/{case['inspection_id']}/release",
                    self.parties.officer,
                    done_if=("INVALID_STATE",),  # released by the attempt whose reply was lost
                    json={"findings": "cargo as declared"},
                )
                if released is None:
                    continue
                waiting = self.inspections.pop(case["vehicle"], None)
                if waiting is not None:
                    waiting.set_result(None)

    async def injector(self, fault: Fault) -> None:
        """One fault at its time; one at a time (a fault due while another is not over waits for it),
        so that each failure a client sees belongs to one fault."""
        await asyncio.sleep(max(0.0, self.t0 + fault.at * DAY / self.speedup - time.monotonic()))
        async with self.one_fault:
            await asyncio.to_thread(inject, fault, self.gw)
        print(
            f"# fault at {fault.started - self.t0:.1f} s of the replay: {fault.kind}, {fault.detail}; "
            f"back after {fault.back - fault.started:.1f} s",
            flush=True,
        )

    def fault_report(self) -> list[dict[str, Any]]:
        """Per fault: when, how long clients saw failures (503, 429, connection errors, kiosk
        SYSTEM_FAULT), and when the last of them was, i.e. the recovery as clients saw it."""
        out = []
        ordered = sorted(self.faults, key=lambda f: f.started)
        for n, fault in enumerate(ordered):
            end = ordered[n + 1].started if n + 1 < len(ordered) else float("inf")
            seen = [(t, op, kind) for t, op, kind in self.failures if fault.started <= t < end]
            kinds = collections.Counter(f"{op} {kind}" for _t, op, kind in seen)
            # SFTP files uploaded before the fault ended and answered after it: how long they waited
            spans = [b - a for a, b in self.sftp_spans if a <= fault.back and b >= fault.started]
            answered = [t for t in self.recovered if fault.started <= t < end]
            out.append(
                {
                    "kind": fault.kind,
                    "detail": fault.detail,
                    "at_s": fault.started - self.t0,
                    "at_fraction": fault.at,
                    "down_s": fault.back - fault.started,
                    "failed_requests": len(seen),
                    "first_failure_after_s": seen[0][0] - fault.started if seen else None,
                    "last_failure_after_s": seen[-1][0] - fault.started if seen else None,
                    "clients_saw_failures_for_s": seen[-1][0] - seen[0][0] if seen else 0.0,
                    "failures": dict(kinds.most_common()),
                    "last_retried_answered_after_s": answered[-1] - fault.started if answered else None,
                    "sftp_exchanges_across": len(spans),
                    "sftp_longest_across_s": max(spans, default=0.0),
                    "failures_per_second_after": [
                        sum(1 for t, _op, _kind in seen if k <= t - fault.started < k + 1)
                        for k in range(int(seen[-1][0] - fault.started) + 1 if seen else 0)
                    ],
                }
            )
        return out

    async def sampler(self) -> None:
        step = 300.0
        k = 0
        while self.trucks_done < len(self.plan.trucks):
            await self.at(k * step)
            self.queue_samples.append(
                (k * step, {cp: self.arrived[cp] - self.served[cp] for cp in CONTROL_POINTS})
            )
            k += 1

    async def run(self, officer: dict[str, str]) -> dict[str, Any]:
        import zeep
        from zeep.wsse.username import UsernameToken

        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=48))
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends, so that a request never
        # races the server closing its connection.
        limits = httpx.Limits(
            max_connections=self.connections, max_keepalive_connections=self.connections, keepalive_expiry=2
        )
        self.slots = asyncio.Semaphore(self.connections)
        # One client (one connection pool) per gateway process: a pool's bookkeeping per request grows
        # with its connections times its waiting requests.
        async with contextlib.AsyncExitStack() as stack:
            self.http = {
                base: await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=120))
                for base in self.bases
            }
            started = time.perf_counter()
            self.parties = await self.register(officer)
            self.sftp = {
                i: await asyncio.to_thread(
                    SftpPartner, self.parties.filers["sftp"][i][0], path, self.gw.sftp_ports
                )
                for i, path in self.parties.ssh_keys.items()
            }
            self.soap = {
                (f, s): zeep.Client(
                    f"{base}/soap/cargo?wsdl", wsse=UsernameToken(*self.parties.filers["xml"][f])
                )
                for f in range(1, len(self.parties.filers["xml"]), 2)
                for s, base in enumerate(self.bases)
            }
            setup = time.perf_counter() - started
            self.lodged = {t.index: asyncio.Event() for t in self.plan.trucks}
            self.queues: dict[str, asyncio.Queue[Any]] = {cp: asyncio.Queue() for cp in CONTROL_POINTS}
            lanes = [asyncio.create_task(self.lane(cp, str(n))) for cp in CONTROL_POINTS for n in range(1, 9)]
            print(f"# set-up done in {setup:.0f} s: replaying the day", flush=True)
            self.t0 = time.monotonic()
            cpu0 = self.gw.cpu_seconds()
            cpu0["client"] = time.process_time()
            db0 = await asyncio.to_thread(self.gw.db_counters)
            load0 = os.getloadavg()
            started = time.perf_counter()
            trucks = self.plan.trucks
            tasks = [asyncio.create_task(self.truck_day(t)) for t in trucks]
            tasks += [
                asyncio.create_task(self.lodge_batch(b.at, b.channel, b.filer, [trucks[i] for i in b.trucks]))
                for b in self.plan.batches
            ]
            tasks += [asyncio.create_task(self.officer()), asyncio.create_task(self.sampler())]
            self.one_fault = asyncio.Lock()
            tasks += [asyncio.create_task(self.injector(f)) for f in self.faults]
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - started
            for cp in CONTROL_POINTS:
                for _ in range(8):
                    await self.queues[cp].put(None)
            await asyncio.gather(*lanes)
            cpu1 = self.gw.cpu_seconds()
            cpu1["client"] = time.process_time()
            db1 = await asyncio.to_thread(self.gw.db_counters)
        for partner in self.sftp.values():
            partner.close()
        return {
            "setup_s": setup,
            "elapsed_s": elapsed,
            "load_before": load0,
            "load_after": os.getloadavg(),
            "faults": self.fault_report(),
            "cpu_s": {
                k: round(v - cpu0.get(k, 0.0), 1)
                for k, v in cpu1.items()
                # a restarted server's processes are new: their CPU before the restart is gone
                if not (k == "postgresql (all)" and any(f.kind == "postgresql" for f in self.faults))
            }
            | {f"client {k} threads": round(v, 1) for k, v in self.thread_cpu.items()},
            "database": {k: v - db0.get(k, 0) for k, v in db1.items()},
        }


# -- accounting, report, chart -------------------------------------------------------------------------


def account(db_url: str, replay: Replay, plan: Plan) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = {r.ccrn: r.status for r in conn.execute(text("SELECT ccrn, status FROM consignments"))}
    engine.dispose()
    statuses = collections.Counter(rows.values())
    issued = [ccrn for ccrn in replay.ccrn.values() if ccrn]
    bundled = sum(statuses[s] for s in LIVE)
    waiting = statuses["LODGED"]
    cancelled = statuses["CANCELLED"]
    wrong = {
        ccrn: (want, rows.get(ccrn))
        for ccrn, want in replay.expected.items()
        if rows.get(ccrn) != want and not (want == "ARRIVED" and rows.get(ccrn) in LIVE)
    }
    ok = (
        len(plan.consignments)
        == len(issued)
        == len(set(issued))
        == len(rows)
        == bundled + cancelled + waiting
        and not wrong
    )
    return {
        "consignments": len(plan.consignments),
        "lodged_acknowledged": len(issued),
        "ccrns_in_database": len(rows),
        "bundled": bundled,
        "cancelled": cancelled,
        "still_waiting": waiting,
        "statuses": dict(statuses),
        "not_as_expected": dict(list(wrong.items())[:20]),
        "not_as_expected_count": len(wrong),
        "accounted_for": ok,
    }


def keep_database(db_url: str) -> str:
    """A copy of the replay's database (which is dropped on the way out), for EXPLAIN afterwards."""
    from sqlalchemy import create_engine, make_url, text

    url = make_url(db_url)
    copy = f"{url.database}_kept"
    engine = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{url.database}"'))
    finally:
        engine.dispose()
    return url.set(database=copy).render_as_string(hide_password=False)


def percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0] * 1000, values[0] * 1000
    q = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values) * 1000, q[98] * 1000


def chart(path: Path, replay: Replay, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = list(CONTROL_POINTS)
    hatches = ["", "//", "..", "xx", "\\\\", "oo"]
    hours = max(24, int(max((t for _cp, t in replay.crossings), default=0) // HOUR) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    base = [0] * hours
    for n, cp in enumerate(points):
        counts = [0] * hours
        for where, t in replay.crossings:
            if where == cp:
                counts[int(t // HOUR)] += 1
        top.bar(
            range(hours),
            counts,
            bottom=base,
            label=cp,
            hatch=hatches[n],
            edgecolor="black",
            linewidth=0.3,
            align="edge",
        )
        base = [a + b for a, b in zip(base, counts, strict=True)]
    planned = [0] * hours
    for truck in replay.plan.trucks:
        planned[int(truck.arrive_at // HOUR)] += 1
    top.step(range(hours), planned, where="post", color="black", linewidth=1.5, label="planned arrivals")
    top.set_ylabel("trucks crossed per hour")
    top.set_title(title)
    top.legend(title="crossed at (hatched bars), and the day's plan", ncols=7, loc="upper left", fontsize=8)
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3))]
    for n, cp in enumerate(points):
        xs = [t / HOUR for t, _q in replay.queue_samples]
        bottom.plot(xs, [q[cp] for _t, q in replay.queue_samples], linestyle=styles[n], label=cp)
    bottom.set_ylabel("trucks queueing at the kiosks")
    bottom.set_xlabel("hour of the simulated day (Hong Kong time)")
    bottom.set_xticks(range(0, hours + 1, max(2, hours // 12)))
    bottom.legend(ncols=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the day's 17,000 trucks")
    parser.add_argument("--speedup", type=float, help="simulated seconds per real second (160 / scale)")
    parser.add_argument(
        "--pg", default=os.environ.get("ROADCARGO_TEST_PG", DEFAULT_PG), help="PostgreSQL server"
    )
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PostgreSQL")
    parser.add_argument("--processes", type=int, default=2, help="roadcargo serve processes")
    parser.add_argument("--topology", choices=["auto", "serve", "worker"], default="auto")
    parser.add_argument("--connections", type=int, default=16, help="HTTP requests in flight at most")
    parser.add_argument("--out", default=str(ROOT / "bench" / "border_day"), help="PREFIX.json, PREFIX.png")
    parser.add_argument(
        "--restart-postgresql-at",
        type=float,
        metavar="FRACTION",
        help="stop the local PostgreSQL server at this fraction of the schedule and start it again "
        "(pg_ctlcluster; every database of the server)",
    )
    parser.add_argument(
        "--kill-serve-at",
        type=float,
        metavar="FRACTION",
        help="SIGKILL serve0 at this fraction of the schedule; a replacement starts on its ports",
    )
    parser.add_argument(
        "--kill-worker-at",
        type=float,
        metavar="FRACTION",
        help="SIGKILL the worker at this fraction of the schedule; a replacement starts",
    )
    parser.add_argument(
        "--fault-pause", type=float, default=3.0, help="seconds a killed process or the server stays down"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (logs, mailboxes) and a copy of the database",
    )
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the gateway processes are stopped and the database dropped.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    speedup = args.speedup or 160 / args.scale
    topology = choose_topology(args.topology)
    faults = [
        Fault(kind, at, args.fault_pause)
        for kind, at in (
            ("postgresql", args.restart_postgresql_at),
            ("serve", args.kill_serve_at),
            ("worker", args.kill_worker_at),
        )
        if at is not None
    ]
    if any(f.kind == "postgresql" for f in faults) and args.sqlite:
        parser.error("--restart-postgresql-at needs PostgreSQL")
    if any(f.kind == "worker" for f in faults) and topology != "worker":
        parser.error("--kill-worker-at needs the topology worker")
    plan = make_plan(args.seed, args.scale, datetime.now(HONG_KONG).date().isoformat())
    n_cons = len(plan.consignments)
    print(
        f"# border day: seed {args.seed}, scale {args.scale}: {len(plan.trucks)} trucks, "
        f"{n_cons} consignments, speedup {speedup:.0f} (the day in {DAY / speedup:.0f} s); "
        f"{args.processes} x serve, topology {topology}, "
        f"{'SQLite' if args.sqlite else 'PostgreSQL'}",
        flush=True,
    )
    print(
        f"# {datetime.now():%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="roadcargo-borderday-"))
    status = 1
    try:
        with storages(workdir, None if args.sqlite else args.pg, skip_sqlite=not args.sqlite) as runs:
            db_url = runs[0][1]
            gateways = Gateways(workdir, db_url, args.processes, topology)
            try:
                started = time.perf_counter()
                officer = gateways.start()
                print(f"# processes up in {time.perf_counter() - started:.0f} s", flush=True)
                replay = Replay(plan, gateways, speedup, args.connections, faults)
                timing = asyncio.run(replay.run(officer))
                dead = gateways.alive()
            finally:
                stopping = time.perf_counter()
                gateways.stop()
                print(f"# processes stopped in {time.perf_counter() - stopping:.0f} s", flush=True)
            books = account(db_url, replay, plan)
            if args.keep and not args.sqlite:
                print(f"# database kept: {keep_database(db_url)}")
        status = report(args, plan, replay, timing, books, speedup, topology, dead)
    finally:
        if args.keep:
            print(f"# work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


def report(
    args: argparse.Namespace,
    plan: Plan,
    replay: Replay,
    timing: dict[str, Any],
    books: dict[str, Any],
    speedup: float,
    topology: str,
    dead: list[str],
) -> int:
    elapsed = timing["elapsed_s"]
    ops = {op: lat for op, lat in replay.latency.items() if not op.startswith("setup.")}
    total = sum(len(v) for v in ops.values())
    rows = []
    for op in sorted(ops):
        p50, p99 = percentiles(ops[op])
        errors = sum(1 for o, _d in replay.errors if o == op)
        rows.append((op, len(ops[op]), len(ops[op]) / elapsed, p50, p99, errors))
    lag = sorted(replay.lag)
    summary = {
        "seed": args.seed,
        "scale": args.scale,
        "speedup": speedup,
        "trucks": len(plan.trucks),
        "consignments": len(plan.consignments),
        "processes": args.processes,
        "topology": topology,
        "storage": "sqlite" if args.sqlite else "postgresql",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "when": f"{datetime.now():%Y-%m-%d %H:%M}",
        **timing,
        "schedule_s": DAY / speedup,
        "full_day_estimate_s": elapsed / args.scale,
        "requests": total,
        "requests_per_s": total / elapsed,
        "operations": {
            r[0]: {"n": r[1], "per_s": r[2], "p50_ms": r[3], "p99_ms": r[4], "errors": r[5]} for r in rows
        },
        "errors": len(replay.errors),
        "error_samples": replay.errors[:30],
        "retries": dict(replay.retries),
        "resends": dict(replay.resends),
        "resend_conflicts": dict(replay.resend_conflicts),
        "decisions": dict(replay.decisions),
        "late_events": len(lag),
        "lag_p99_s": lag[int(len(lag) * 0.99)] if lag else 0.0,
        "lag_max_s": lag[-1] if lag else 0.0,
        "max_kiosk_queue": max((max(q.values()) for _t, q in replay.queue_samples), default=0),
        "dead_processes": dead,
        "accounting": books,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str))
    chart(
        out.with_suffix(".png"),
        replay,
        f"Border day, seed {args.seed}, {len(plan.trucks)} trucks ({args.scale:g} of a day), "
        f"replayed in {elapsed:.0f} s at {speedup:.0f}x",
    )
    print(
        f"replayed in {elapsed:.1f} s (schedule {DAY / speedup:.0f} s; set-up {timing['setup_s']:.0f} s); "
        f"{total} requests, {total / elapsed:.0f}/s; {len(plan.consignments) / elapsed:.0f} consignments/s; "
        f"load average {timing['load_before'][0]:.1f} -> {timing['load_after'][0]:.1f}"
    )
    print(
        f"events late: {len(lag)}, p99 {summary['lag_p99_s']:.2f} s, max {summary['lag_max_s']:.2f} s; "
        f"longest kiosk queue {summary['max_kiosk_queue']}"
    )
    print(f"CPU seconds during the replay: {timing['cpu_s']}")
    if timing["database"]:
        per_truck = {k: round(v / len(plan.trucks), 1) for k, v in timing["database"].items() if " " not in k}
        print(f"PostgreSQL counters for the day, per truck: {per_truck}")
        for kind in ("read", "written"):
            top = sorted(
                ((v, k.split(" ", 1)[1]) for k, v in timing["database"].items() if k.startswith(kind + " ")),
                reverse=True,
            )[:8]
            listing = ", ".join(f"{table} {n / len(plan.trucks):.0f}" for n, table in top if n)
            print(f"rows {kind} per truck, by table (catalogs too): {listing}")
        scans = timing["database"]
        top = sorted(
            ((v, k.split(" ", 1)[1]) for k, v in scans.items() if k.startswith("index ")), reverse=True
        )
        listing = ", ".join(
            f"{name} {n / len(plan.trucks):.0f} ({n / max(1, scans.get('scans ' + name, 0)):.1f} a scan)"
            for n, name in top[:6]
            if n
        )
        print(f"index entries read per truck, by index: {listing}")
    print("| operation | n | per s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for op, n, per_s, p50, p99, errors in rows:
        print(f"| {op} | {n} | {per_s:.1f} | {p50:.0f} | {p99:.0f} | {errors} |")
    print(f"decisions: {dict(replay.decisions)}")
    if replay.retries:
        print(f"retries: {dict(replay.retries)}")
    if replay.resends or replay.resend_conflicts:
        print(
            f"resent after a lost reply or a 503 (the gateway may have done it), answered as the first "
            f"time: {dict(replay.resends)}; answered with a conflict (the lost attempt had done it): "
            f"{dict(replay.resend_conflicts)}"
        )
    for f in timing["faults"]:
        if f["failed_requests"]:
            seen = (
                f"clients saw {f['failed_requests']} failed requests from {f['first_failure_after_s']:.1f} s "
                f"to {f['last_failure_after_s']:.1f} s after it ({f['clients_saw_failures_for_s']:.1f} s): "
                f"{f['failures']}"
            )
        else:
            seen = "no client saw a failure"
        print(
            f"fault {f['kind']} at {f['at_s']:.1f} s of the replay ({f['at_fraction']:g} of the schedule): "
            f"{f['detail']}; back after {f['down_s']:.1f} s; {seen}; the last request retried for it "
            f"answered {_seconds(f['last_retried_answered_after_s'])} after it; failures per second after it "
            f"{f['failures_per_second_after']}; {f['sftp_exchanges_across']} SFTP files in flight across "
            f"it, the longest answered in {f['sftp_longest_across_s']:.1f} s"
        )
    for op, detail in replay.errors[:10]:
        print(f"  error {op}: {detail}")
    print(
        f"accounting: {books['consignments']} consignments, {books['lodged_acknowledged']} lodged with "
        f"a CCRN, {books['ccrns_in_database']} CCRNs in the database = {books['bundled']} bundled + "
        f"{books['cancelled']} cancelled + {books['still_waiting']} still waiting; "
        f"statuses {books['statuses']}; "
        f"{books['not_as_expected_count']} not as expected -> "
        f"{'ACCOUNTED FOR' if books['accounted_for'] else 'NOT ACCOUNTED FOR'}"
    )
    if dead:
        print(f"processes that died: {dead}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0 if books["accounted_for"] and not replay.errors and not dead else 1


if __name__ == "__main__":
    sys.exit(main())
