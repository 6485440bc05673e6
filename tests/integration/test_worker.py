"""Background work (design section 12): the jobs of ``gateway.worker`` in-process on both storages, and
``roadcargo worker`` beside an API-only ``roadcargo serve --no-background`` as real processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from gateway import bundles, consignments, db, tables, worker
from gateway.clock import HONG_KONG
from tests.e2e.conftest import ROADCARGO, free_port
from tests.factories import record
from tests.integration.test_immigration import notices, simulator


def _wait(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_background_jobs_expire_and_keep_going_after_a_failed_round(gw, party):
    filer, _key = party.add()
    ccrn = consignments.lodge(gw, filer, record()).view["ccrn"]
    gw.clock.advance(timedelta(days=gw.config.rules.consignment_expiry_days + 2))
    background = worker.Background(gw, None, expiry_every=0.05)
    background.start()
    try:
        _wait("the expiry sweep", lambda: consignments.get(gw, filer, ccrn)["status"] == "EXPIRED")
    finally:
        background.stop()
    (expiry,) = [j for j in background.jobs if j.name == "expiry"]
    assert expiry.rounds >= 1 and expiry.failures == 0
    assert all(not j.thread.is_alive() for j in background.jobs if j.thread is not None)

    # A round that fails is counted, logged and retried with a backoff; the loop lives on.
    broken = worker.Job("broken", 0.01, lambda: 1 / 0 > 0)
    stop = threading.Event()
    thread = threading.Thread(target=worker._loop, args=(broken, stop))
    thread.start()
    _wait("two failed rounds", lambda: broken.failures >= 2, timeout=10)
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and broken.last_error == "ZeroDivisionError: division by zero"
    assert broken.rounds == 0 and broken.consecutive_failures == broken.failures


def test_sqlite_log_is_copied_into_the_database_file_by_the_background_work(gw, party):
    """SQLite's write-ahead log goes into the database file in the background work's checkpoint, outside
    every writer's turn: a writer that did it held every other write of every process up while the disk
    synced (bench/RESULTS.md, session 9). Writers do it themselves only past a safety net."""
    background = worker.Background(gw, None)
    jobs = [j.name for j in background.jobs]
    if gw.engine.dialect.name != "sqlite":  # no such log: nothing to copy, no job
        assert "wal-checkpoint" not in jobs and db.checkpoint(gw.engine) is None
        return
    assert "wal-checkpoint" in jobs
    with gw.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == db.WAL_SAFETY_NET
    path = gw.engine.url.database

    def in_the_file() -> int:  # the consignments the database file itself holds, the log not read
        reader = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return int(reader.execute("SELECT count(*) FROM consignments").fetchone()[0])
        finally:
            reader.close()

    filer, _key = party.add()
    ccrns = [
        consignments.lodge(gw, filer, record(submitter_reference=f"WAL-{i}")).view["ccrn"] for i in range(20)
    ]
    assert all(consignments.get(gw, filer, c)["ccrn"] == c for c in ccrns)  # committed and readable,
    assert in_the_file() == 0  # and still only in the log: no writer copied it
    background.start()
    try:
        _wait("the background checkpoint", lambda: in_the_file() == 20)
    finally:
        background.stop()
    (job,) = [j for j in background.jobs if j.name == "wal-checkpoint"]
    assert job.rounds >= 1 and job.failures == 0
    busy, logged, copied = db.checkpoint(gw.engine)
    assert busy == 0 and copied == logged  # nothing left behind


def test_sqlite_log_starts_again_under_a_steady_stream_of_writers(gw, party, monkeypatch):
    """Under writers that never pause, the background checkpoint still lets the log start again from its
    beginning: a checkpoint outside the writers' turn always left a few frames written while it ran, so
    the log grew by every write until the writers' safety net, which then held them all up (bench/
    RESULTS.md, session 11). Here it stays about one round of writes long."""
    if gw.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL has no such log")
    monkeypatch.setattr(db, "RESTART_PAGES", 1)
    filer, _key = party.add()
    consignments.lodge(gw, filer, record(submitter_reference="LOG-FIRST"))
    db.checkpoint(gw.engine)  # nothing else writes: the next writer starts the log again
    for i in range(5):
        consignments.lodge(gw, filer, record(submitter_reference=f"LOG-PAGES-{i}"))
    pages_a_lodge = db.checkpoint(gw.engine)[1] / 5
    stop = threading.Event()
    lodged = [0]

    def write() -> None:
        while not stop.is_set():
            consignments.lodge(gw, filer, record(submitter_reference=f"LOG-{lodged[0]}"))
            lodged[0] += 1

    writer = threading.Thread(target=write)
    writer.start()
    logs = []
    try:
        for _ in range(20):
            time.sleep(0.05)
            busy, logged, copied = db.checkpoint(gw.engine)
            assert busy == 0 and copied == logged
            logs.append(logged)
    finally:
        stop.set()
        writer.join(30)
    written = lodged[0] * pages_a_lodge
    assert lodged[0] >= 40, "the writer did not keep writing"
    assert max(logs) < written / 4, f"the log grew to {max(logs)} pages of {written:.0f} written: {logs}"


def test_expiry_leaves_a_consignment_whose_bundle_is_held_to_the_next_round(gw, party):
    """The expiry sweep locks a bundle before its consignments, like every other writer, and skips one
    another transaction holds (a kiosk deciding on the truck): it neither waits for it nor holds the
    consignment meanwhile, which deadlocked with that transaction, and expires it in a later round."""
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's row locks (SQLite takes one writer at a time)")
    filer, _key = party.add()
    driver, _dkey = party.add(role="driver")
    loose, bundled = (
        consignments.lodge(gw, filer, record(submitter_reference=f"EXP-{i}")).view["ccrn"] for i in range(2)
    )
    made = bundles.bundle(gw, driver, "AB1234", "LMC", [bundled])
    gw.clock.advance(timedelta(days=gw.config.rules.consignment_expiry_days + 2))
    swept: list[int] = []
    with gw.engine.connect() as kiosk:
        kiosk.execute(text("SELECT 1 FROM bundles WHERE bundle_id = :b FOR UPDATE"), {"b": made["bundle_id"]})
        sweep = threading.Thread(target=lambda: swept.append(consignments.expire_due(gw)))
        sweep.start()
        sweep.join(10)
        waited = sweep.is_alive()
        if not waited:  # and it holds nothing the kiosk's transaction wants
            kiosk.execute(
                text("SELECT 1 FROM consignments WHERE ccrn = :c FOR UPDATE NOWAIT"), {"c": bundled}
            )
        kiosk.rollback()
    sweep.join(10)
    assert not waited, "the sweep waited for the bundle the kiosk held"
    assert swept == [1]
    assert (_status(gw, loose), _status(gw, bundled)) == ("EXPIRED", "BUNDLED")
    assert consignments.expire_due(gw) == 1
    assert _status(gw, bundled) == "EXPIRED"
    assert bundles.get(gw, driver, made["bundle_id"])["status"] == "UNBUNDLED"


def _status(gw, ccrn):
    with gw.engine.connect() as conn:
        return conn.scalar(select(tables.consignments.c.status).where(tables.consignments.c.ccrn == ccrn))


def test_two_workers_expire_each_consignment_once(gw, party):
    """Two workers' sweeps at once (rows claimed with SKIP LOCKED): every consignment expires exactly once."""
    filer, _key = party.add()
    ccrns = [
        consignments.lodge(gw, filer, record(submitter_reference=f"EXP-{i}")).view["ccrn"] for i in range(30)
    ]
    gw.clock.advance(timedelta(days=gw.config.rules.consignment_expiry_days + 2))
    workers = [worker.Background(gw, None, expiry_every=0.01) for _ in range(2)]
    for w in workers:
        w.start()

    def statuses() -> set[str]:  # read from the table: consignments.get would expire on read itself
        with gw.engine.connect() as conn:
            return set(conn.scalars(select(tables.consignments.c.status)))

    try:
        _wait("every expiry", lambda: statuses() == {"EXPIRED"})
    finally:
        for w in workers:
            w.stop()
    with gw.engine.connect() as conn:
        expired = list(conn.scalars(select(tables.events.c.ccrn).where(tables.events.c.type == "EXPIRED")))
    assert sorted(expired) == sorted(ccrns)
    assert all(j.failures == 0 for w in workers for j in w.jobs)


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADCARGO_")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [ROADCARGO, *args], env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_worker_process_delivers_what_api_only_processes_leave(tmp_path):
    """``serve --no-background`` takes the bundle and leaves its advance notice alone; ``roadcargo worker``
    delivers it, and stops cleanly (exit 0) on SIGTERM."""
    tomorrow = (datetime.now(HONG_KONG) + timedelta(days=1)).date().isoformat()
    with simulator(tmp_path) as sim_url:
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'[server]\ndata_dir = "{tmp_path / "var"}"\n'
            f'[immigration]\nurl = "{sim_url}"\ntimeout_ms = 2000\n'
        )
        db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
        common = ["--db", db_url, "--config", str(config)]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve_args = ["serve", "--no-background", "--http-port", str(port), "--sftp-port", "0", *common]
        with _process(serve_args, tmp_path / "serve.log") as serve:

            def up() -> bool:
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait("serve", up)

            def party(role: str) -> str:
                done = subprocess.run(
                    [ROADCARGO, "party", "add", "--role", role, "--name", role, "--json", *common],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert done.returncode == 0, done.stderr
                return str(json.loads(done.stdout)["api_key"])

            filer, driver = party("forwarder"), party("driver")
            lodged = httpx.post(
                f"{url}/api/v1/consignments",
                json=record(expected_crossing=tomorrow),
                headers={"Authorization": f"Bearer {filer}"},
            )
            assert lodged.status_code == 201, lodged.text
            made = httpx.post(
                f"{url}/api/v1/bundles",
                json={"vehicle": "WK4321", "control_point": "LMC", "ccrns": [lodged.json()["ccrn"]]},
                headers={"Authorization": f"Bearer {driver}"},
            )
            assert made.status_code == 201, made.text
            engine = db.make_engine(db_url)

            def outbox() -> list:
                with engine.connect() as conn:
                    return list(conn.execute(select(tables.immigration_outbox)))

            assert [n.attempts for n in outbox()] == [0]  # the API process does not deliver
            with _process(["worker", *common], tmp_path / "worker.log") as work:
                _wait("the delivery", lambda: all(n.delivered_at for n in outbox()))
                (sent,) = notices(sim_url)["notices"]
                work.send_signal(signal.SIGTERM)
                code = work.wait(timeout=20)
            engine.dispose()
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log
    assert sent["bundle_id"] == made.json()["bundle_id"] and sent["vehicle"] == "WK4321"
    assert "worker running" in log and "worker stopped" in log
