"""Scale-out on PostgreSQL (design section 11): two ``roadcargo serve --no-background`` processes and a
``roadcargo worker`` on one database, with no coordination beyond it. Requests are split across both
processes; the database alone keeps CCRNs unique, ``ALREADY_BUNDLED`` and slot capacity exact and the
agency feed strictly ordered. Faults: a serve process killed with SIGKILL under load loses nothing it
acknowledged; a worker killed mid-delivery leaves its advance notices to the next worker; backends
terminated under load give 503 with ``Retry-After`` (never 500) and everything recovers by itself.

Runs when ``ROADCARGO_TEST_PG`` names a PostgreSQL server; creates and drops its own database, and only
ever terminates that database's backends (never the server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import make_url

from gateway import tables
from gateway.clock import HONG_KONG
from tests.e2e.conftest import ROADCARGO, free_port
from tests.factories import record

PG_URL = os.environ.get("ROADCARGO_TEST_PG")
pytestmark = [
    pytest.mark.pg,
    pytest.mark.skipif(
        not PG_URL, reason="ROADCARGO_TEST_PG is not set: the scale-out tests need PostgreSQL"
    ),
]
SLOT_CAPACITY = 2


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ROADCARGO_")}


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[str]
    log: Path
    url: str | None = None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@dataclass
class Cluster:
    directory: Path
    db_url: str
    db_name: str
    config: Path
    sim_url: str
    serves: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    counter: int = 0
    spawned: int = 0

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [ROADCARGO, *args, "--db", self.db_url, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def party(self, role: str, *extra: str) -> dict[str, Any]:
        self.counter += 1
        out: dict[str, Any] = json.loads(
            self.cli("party", "add", "--role", role, "--name", f"{role} {self.counter}", "--json", *extra)
        )
        return out

    def _spawn(self, name: str, args: list[str]) -> Proc:
        self.spawned += 1
        log = self.directory / f"{name}-{self.spawned}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [ROADCARGO, *args, "--db", self.db_url, "--config", str(self.config)],
                env=_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        return Proc(name, process, log)

    def start_serve(self) -> Proc:
        port = free_port()
        proc = self._spawn(
            f"serve-{len(self.serves)}",
            ["serve", "--no-background", "--http-port", str(port), "--sftp-port", "0"],
        )
        proc.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.process.poll() is None, proc.log.read_text()
            try:
                if httpx.get(f"{proc.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{proc.name} did not start: {proc.log.read_text()}"
            time.sleep(0.2)
        self.serves.append(proc)
        return proc

    def start_worker(self) -> Proc:
        proc = self._spawn(f"worker-{len(self.workers)}", ["worker"])
        deadline = time.monotonic() + 30
        while "worker running" not in proc.log.read_text():
            assert proc.process.poll() is None, proc.log.read_text()
            assert time.monotonic() < deadline, f"{proc.name} did not start: {proc.log.read_text()}"
            time.sleep(0.1)
        self.workers.append(proc)
        return proc

    def urls(self) -> list[str]:
        return [p.url for p in self.serves if p.url and p.process.poll() is None]

    def engine(self) -> Any:
        return create_engine(self.db_url)

    def terminate_backends(self) -> int:
        """Kill every connection to this test's database (not the server, not other databases)."""
        admin = create_engine(PG_URL or "", isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                killed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": self.db_name},
                ).scalar()
        finally:
            admin.dispose()
        return int(killed or 0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from tests.integration.test_immigration import simulator

    directory = tmp_path_factory.mktemp("scale-out")
    name = f"roadcargo_scale_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL or "", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db_url = make_url(PG_URL or "").set(database=name).render_as_string(hide_password=False)
    try:
        with ExitStack() as stack:
            # A slow Immigration (each request takes 1.5 s), so that a worker can be caught mid-delivery.
            sim_url = stack.enter_context(simulator(directory, "--delay-ms", "1500"))
            config = directory / "gateway.toml"
            config.write_text(
                f'[server]\ndata_dir = "{directory / "var"}"\n'
                f'[immigration]\nurl = "{sim_url}"\ntimeout_ms = 3000\n'
                f"[control_points.STK]\nslot_capacity = {SLOT_CAPACITY}\n"
            )
            c = Cluster(directory, db_url, name, config, sim_url)
            c.cli("db", "upgrade")
            try:
                c.start_serve()
                c.start_serve()
                c.start_worker()
                yield c
            finally:
                for proc in [*c.serves, *c.workers]:
                    proc.stop()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def tomorrow() -> str:
    return (datetime.now(HONG_KONG) + timedelta(days=1)).date().isoformat()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(url: str, path: str, key: str, body: Any, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=bearer(key), timeout=timeout)


def spread(cluster: Cluster, jobs: list[Callable[[str], Any]], threads: int = 12) -> list[Any]:
    """Run the jobs concurrently, job i against serve process i % 2."""
    urls = cluster.urls()
    assert len(urls) >= 2
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda ij: ij[1](urls[ij[0] % len(urls)]), enumerate(jobs)))


def lodge_many(cluster: Cluster, filer: dict[str, Any], n: int, control_point: str = "LMC") -> list[str]:
    tag = uuid.uuid4().hex[:6]

    def job(i: int) -> Callable[[str], Any]:
        body = record(
            submitter_reference=f"SO-{tag}-{i}", expected_crossing=tomorrow(), control_point=control_point
        )
        return lambda url: post(url, "/api/v1/consignments", filer["api_key"], body)

    answers = spread(cluster, [job(i) for i in range(n)])
    assert [a.status_code for a in answers] == [201] * n, [a.text for a in answers if a.status_code != 201]
    return [a.json()["ccrn"] for a in answers]


def test_ccrns_unique_and_bundling_exact_across_processes(cluster: Cluster) -> None:
    filer = cluster.party("forwarder")
    ccrns = lodge_many(cluster, filer, 40)
    assert len(set(ccrns)) == 40

    # Ten drivers race for the same three CCRNs through both processes: exactly one bundle wins.
    drivers = [cluster.party("driver") for _ in range(10)]
    contested = ccrns[:3]
    answers = spread(
        cluster,
        [
            (
                lambda url, d=d, i=i: post(
                    url,
                    "/api/v1/bundles",
                    d["api_key"],
                    {"vehicle": f"RACE{i}", "control_point": "LMC", "ccrns": contested},
                )
            )
            for i, d in enumerate(drivers)
        ],
        threads=10,
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * 9, [a.text for a in answers]
    assert all(a.json()["errors"][0]["code"] == "ALREADY_BUNDLED" for a in answers if a.status_code == 409)

    # One vehicle, ten bundles at once with different CCRNs: one wins, nine are ALREADY_BUNDLED.
    answers = spread(
        cluster,
        [
            (
                lambda url, d=d, c=c: post(
                    url,
                    "/api/v1/bundles",
                    d["api_key"],
                    {"vehicle": "SAME1", "control_point": "LMC", "ccrns": [c]},
                )
            )
            for d, c in zip(drivers, ccrns[3:13], strict=True)
        ],
        threads=10,
    )
    assert sorted(a.status_code for a in answers) == [201] + [409] * 9, [a.text for a in answers]

    # Slots at STK hold two bundles: twelve bundles at once fill six slots exactly. They are expected
    # tomorrow morning, so that the day's remaining slots never decide it (late in the evening fewer
    # than six are left today).
    stk = lodge_many(cluster, filer, 12, control_point="STK")
    arrival = f"{tomorrow()}T10:00:00+08:00"
    more = [cluster.party("driver") for _ in range(2)]
    answers = spread(
        cluster,
        [
            (
                lambda url, i=i, c=c: post(
                    url,
                    "/api/v1/bundles",
                    (drivers + more)[i]["api_key"],
                    {"vehicle": f"STK{i}", "control_point": "STK", "ccrns": [c], "expected_arrival": arrival},
                )
            )
            for i, c in enumerate(stk)
        ],
    )
    assert [a.status_code for a in answers] == [201] * 12, [a.text for a in answers]
    per_slot: dict[str, int] = {}
    for a in answers:
        per_slot[a.json()["slot"]["start"]] = per_slot.get(a.json()["slot"]["start"], 0) + 1
    assert max(per_slot.values()) <= SLOT_CAPACITY and len(per_slot) == 12 // SLOT_CAPACITY
    engine = cluster.engine()
    try:
        with engine.connect() as conn:
            s = tables.slot_bookings
            booked = conn.execute(select(s.c.booked).where(s.c.control_point == "STK")).scalars().all()
            b = tables.bundles
            live = conn.scalar(select(func.count()).where(b.c.control_point == "STK", b.c.status == "LIVE"))
    finally:
        engine.dispose()
    assert sorted(booked) == [SLOT_CAPACITY] * (12 // SLOT_CAPACITY) and live == 12


def test_agency_feed_is_strictly_ordered_across_processes(cluster: Cluster) -> None:
    """A consumer reading through both processes, while both write, sees every event once, in order."""
    filer = cluster.party("forwarder")
    officer = cluster.party("officer")
    engine = cluster.engine()
    with engine.connect() as conn:
        start = int(conn.scalar(select(func.max(tables.events.c.cursor))) or 0)
    seen: list[int] = []
    cursor = start
    urls = cluster.urls()

    def read(i: int) -> None:
        nonlocal cursor
        got = httpx.get(
            f"{urls[i % 2]}/api/v1/events",
            params={"after": cursor, "limit": 50},
            headers=bearer(officer["api_key"]),
            timeout=30,
        )
        assert got.status_code == 200, got.text
        page = got.json()
        seen.extend(e["cursor"] for e in page["events"])
        cursor = page["next_cursor"]

    with ThreadPoolExecutor(1) as reader:
        lodging = reader.submit(lodge_many, cluster, filer, 60)
        i = 0
        while not lodging.done():
            read(i)
            i += 1
        ccrns = lodging.result()
    for _ in range(5):  # then read to the end
        read(i)
        i += 1
    with engine.connect() as conn:
        stored = list(
            conn.scalars(
                select(tables.events.c.cursor)
                .where(tables.events.c.cursor > start)
                .order_by(tables.events.c.cursor)
            )
        )
    engine.dispose()
    assert len(ccrns) == 60
    assert seen == sorted(set(seen)), "the feed went backwards or repeated an event"
    assert seen == stored, "the feed skipped an event that committed late"
    assert i > 5  # the reads did overlap the writes


def test_a_serve_process_killed_under_load_loses_nothing_it_acknowledged(cluster: Cluster) -> None:
    filer = cluster.party("forwarder")
    victim = cluster.serves[0]
    tag = uuid.uuid4().hex[:6]
    acknowledged: list[str] = []
    failures: list[str] = []

    def job(i: int) -> None:
        url = cluster.serves[i % 2].url
        body = record(submitter_reference=f"KILL-{tag}-{i}", expected_crossing=tomorrow())
        try:
            answer = post(str(url), "/api/v1/consignments", filer["api_key"], body, timeout=10)
        except httpx.HTTPError as exc:
            failures.append(type(exc).__name__)
            return
        if answer.status_code == 201:
            acknowledged.append(answer.json()["ccrn"])
        else:
            assert answer.status_code != 500, answer.text
            failures.append(str(answer.status_code))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(job, i) for i in range(120)]
        while sum(f.done() for f in futures) < 30:
            time.sleep(0.01)
        victim.stop(signal.SIGKILL)
        for f in futures:
            f.result()
    assert victim.process.returncode == -signal.SIGKILL
    assert failures, "the killed process answered everything: the kill came too late to test anything"
    engine = cluster.engine()
    with engine.connect() as conn:
        stored = set(
            conn.scalars(
                select(tables.consignments.c.ccrn).where(tables.consignments.c.ccrn.in_(acknowledged))
            )
        )
    engine.dispose()
    assert stored == set(acknowledged)
    cluster.serves.remove(victim)
    cluster.start_serve()  # back to two processes for the tests that follow


def _notices(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(select(tables.immigration_outbox).order_by(tables.immigration_outbox.c.notice_id))
        )


def _bundle_many(cluster: Cluster, n: int, control_point: str = "MKT") -> list[str]:
    filer = cluster.party("forwarder")
    ccrns = lodge_many(cluster, filer, n, control_point=control_point)
    driver = cluster.party("driver")
    tag = uuid.uuid4().hex[:4].upper().replace("O", "A").replace("I", "B")
    answers = spread(
        cluster,
        [
            (
                lambda url, i=i, c=c: post(
                    url,
                    "/api/v1/bundles",
                    driver["api_key"],
                    {"vehicle": f"W{tag}{i}"[:8], "control_point": control_point, "ccrns": [c]},
                )
            )
            for i, c in enumerate(ccrns)
        ],
    )
    assert [a.status_code for a in answers] == [201] * n, [a.text for a in answers]
    return [a.json()["bundle_id"] for a in answers]


def _wait(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_worker_killed_mid_delivery_leaves_its_notices_to_the_next(cluster: Cluster) -> None:
    engine = cluster.engine()
    try:
        _wait("earlier notices", lambda: all(n.delivered_at for n in _notices(engine)))
        # The bundles are made while no worker runs, so that the next worker claims them in one batch.
        for old in cluster.workers:
            assert old.stop() == 0, old.log.read_text()  # SIGTERM: a clean stop
        cluster.workers.clear()
        made = set(_bundle_many(cluster, 12))
        worker = cluster.start_worker()

        def mine() -> list[Any]:
            return [n for n in _notices(engine) if n.bundle_id in made]

        def received() -> set[str]:
            listing = httpx.get(f"{cluster.sim_url}/notices", timeout=10).json()
            return {n["bundle_id"] for n in listing["notices"]} & made

        # Immigration takes 1.5 s a request, and the worker sends what it claimed in one request: kill
        # the worker while that request is in flight (its notices claimed, not yet acknowledged).
        _wait("a claim", lambda: any(n.attempts > 0 for n in mine()), timeout=30)
        worker.stop(signal.SIGKILL)
        stranded = [n for n in mine() if n.delivered_at is None and n.attempts > 0]
        assert stranded, "the worker had no claimed notice left when it was killed"
        assert all(n.next_attempt_at > datetime.now(HONG_KONG) for n in stranded)  # leased to the dead one
        # The lease (two minutes) runs out: here, by moving it to now rather than waiting.
        with engine.begin() as conn:
            ids = [n.notice_id for n in stranded]
            conn.execute(
                update(tables.immigration_outbox)
                .where(tables.immigration_outbox.c.notice_id.in_(ids))
                .values(next_attempt_at=func.now())
            )
        cluster.workers.remove(worker)
        cluster.start_worker()
        _wait("every notice delivered", lambda: all(n.delivered_at for n in mine()))
        assert received() == made  # those sent twice are one notice each at Immigration (by notice id)
    finally:
        engine.dispose()


def test_terminated_backends_give_503_never_500_and_everything_recovers(cluster: Cluster) -> None:
    filer = cluster.party("forwarder")
    statuses: list[int] = []
    acknowledged: list[str] = []
    tag = uuid.uuid4().hex[:6]

    def job(i: int) -> None:
        url = cluster.urls()[i % 2]
        body = record(submitter_reference=f"PGT-{tag}-{i}", expected_crossing=tomorrow())
        answer = post(url, "/api/v1/consignments", filer["api_key"], body, timeout=30)
        statuses.append(answer.status_code)
        if answer.status_code == 503:
            assert answer.headers.get("retry-after"), answer.headers
            assert answer.json()["errors"][0]["code"] == "UNAVAILABLE"
        elif answer.status_code == 201:
            acknowledged.append(answer.json()["ccrn"])

    killed = 0
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(job, i) for i in range(160)]
        for round_ in range(3):
            while sum(f.done() for f in futures) < 40 * (round_ + 1):
                time.sleep(0.01)
            killed += cluster.terminate_backends()
        for f in futures:
            f.result()
    assert killed > 0
    print(f"backends terminated: {killed}; answers: { {c: statuses.count(c) for c in set(statuses)} }")
    assert set(statuses) <= {201, 503}, sorted(set(statuses))
    # Recovered without a restart: every process answers again, and the worker delivers again.
    for url in cluster.urls():
        again = post(
            url,
            "/api/v1/consignments",
            filer["api_key"],
            record(submitter_reference=f"PGT-{tag}-after-{url[-5:]}", expected_crossing=tomorrow()),
        )
        assert again.status_code == 201, again.text
    bundles = set(_bundle_many(cluster, 2, control_point="HZM"))
    engine = cluster.engine()
    try:
        _wait(
            "notices after the backends were killed",
            lambda: all(n.delivered_at for n in _notices(engine) if n.bundle_id in bundles),
        )
        with engine.connect() as conn:
            stored = set(
                conn.scalars(
                    select(tables.consignments.c.ccrn).where(tables.consignments.c.ccrn.in_(acknowledged))
                )
            )
    finally:
        engine.dispose()
    assert stored == set(acknowledged)
    assert all(w.process.poll() is None for w in cluster.workers)


def test_contingency_across_processes(cluster: Cluster) -> None:
    """Contingency switched on through one process holds at the kiosk of the other; the crossing recorded
    through one is in the feed read through the other."""
    filer, driver, officer = cluster.party("forwarder"), cluster.party("driver"), cluster.party("officer")
    kiosk = cluster.party("kiosk", "--control-point", "SBC")
    first, second = cluster.urls()
    (ccrn,) = lodge_many(cluster, filer, 1, control_point="SBC")
    made = post(
        first,
        "/api/v1/bundles",
        driver["api_key"],
        {"vehicle": "CT1", "control_point": "SBC", "ccrns": [ccrn]},
    )
    assert made.status_code == 201, made.text
    switched = post(first, "/api/v1/control-points/SBC/contingency", officer["api_key"], {"active": True})
    assert switched.status_code == 200, switched.text
    arrival = {"control_point": "SBC", "lane": "1", "vehicle": "CT1", "driver_document": "K1234567"}
    decided = post(second, "/api/v1/kiosk/clearances", kiosk["api_key"], arrival)
    assert decided.json()["decision"] == "NOT_READY" and decided.json()["reasons"] == ["CONTINGENCY"]
    crossed_at = datetime.now(HONG_KONG).isoformat()
    body = {"control_point": "SBC", "vehicle": "CT1", "ccrns": [ccrn], "crossed_at": crossed_at, "lane": "1"}
    recorded = post(second, "/api/v1/crossings", officer["api_key"], body)
    assert recorded.status_code == 201, recorded.text
    assert recorded.json()["consignments"] == [{"ccrn": ccrn, "status": "CROSSED", "status_version": 3}]
    again = post(first, "/api/v1/crossings", officer["api_key"], body)  # a retry through the other process
    assert again.status_code == 200 and again.json()["crossing_id"] == recorded.json()["crossing_id"]
    feed = httpx.get(
        f"{first}/api/v1/events", params={"after": 0, "limit": 1000}, headers=bearer(officer["api_key"])
    ).json()["events"]
    assert [e["type"] for e in feed if e.get("ccrn") == ccrn] == ["LODGED", "BUNDLED", "CROSSED"]
    off = post(second, "/api/v1/control-points/SBC/contingency", officer["api_key"], {"active": False})
    assert off.status_code == 200
