"""Operations of real ``roadcargo serve`` processes over HTTP: JSON logs with request ids and no secrets,
429 with Retry-After, metrics summed over two processes, 503 when the database is dropped mid-run (and
the gateway back by itself when it returns), 507 when the disk of the database is full."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL
from tests.e2e.conftest import ROADCARGO, start_gateway
from tests.factories import record

TOMORROW = (date.today() + timedelta(days=1)).isoformat()
_TEXT_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_json_logs_carry_the_request_id_and_never_a_secret(tmp_path):
    config = (
        'log_format = "json"\n'
        "[limits]\nrequests_per_second = 0.001\nburst = 6\nlogin_per_minute = 0.01\nlogin_burst = 2\n"
    )
    with start_gateway(tmp_path, config) as gw:
        filer = gw.add_party("forwarder", "Logged Freight")
        driver = gw.add_party("driver", "Logged Driver")
        key = filer["api_key"]
        r = httpx.post(
            f"{gw.url}/api/v1/consignments",
            json=record(expected_crossing=TOMORROW),
            headers={**bearer(key), "X-Request-ID": "e2e-lodge-1"},
        )
        assert r.status_code == 201 and r.headers["x-request-id"] == "e2e-lodge-1"
        # Secrets in the places a careless log would catch them: a query string, a form, a header.
        assert (
            httpx.get(
                f"{gw.url}/ivr/login", params={"party": driver["party_id"], "pin": driver["pin"]}
            ).status_code
            == 200
        )
        with httpx.Client(base_url=gw.url) as browser:
            page = browser.get("/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            form = {"csrf": csrf, "party_id": filer["party_id"], "secret": "my secret password 1"}
            assert browser.post("/login", data=form).status_code == 401
            assert browser.post("/login", data=form).status_code == 401
            limited = browser.post("/login", data=form)
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 60
        answers = [httpx.get(f"{gw.url}/api/v1/consignments", headers=bearer(key)) for _ in range(6)]
        over = answers[-1]
        assert over.status_code == 429 and over.json()["errors"][0]["code"] == "RATE_LIMITED"
        assert int(over.headers["retry-after"]) > 60
        gw.process.send_signal(signal.SIGTERM)
        gw.process.wait(timeout=20)
    log = gw.log.read_text()
    for secret in (key, key[4:], driver["pin"], driver["api_key"], "my secret password 1"):
        assert secret not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert not [line for line in log.splitlines() if _TEXT_LOG.match(line)]  # every log line is JSON
    lodged = [
        entry for entry in lines if entry.get("path") == "/api/v1/consignments" and entry.get("status") == 201
    ]
    assert len(lodged) == 1 and lodged[0]["request_id"] == "e2e-lodge-1" and lodged[0]["method"] == "POST"
    assert {"time", "level", "logger", "message"} <= set(lodged[0])
    ivr = [entry for entry in lines if entry.get("path") == "/ivr/login"]
    assert ivr and re.fullmatch(r"[0-9a-f]{32}", ivr[0]["request_id"])
    assert [
        entry["status"] for entry in lines if entry.get("path") == "/login" and entry.get("method") == "POST"
    ] == [
        401,
        401,
        429,
    ]


def scrape(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def sample(metrics: str, line_start: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in the metrics")


def test_two_processes_sum_their_metrics_in_multiprocess_mode(tmp_path, monkeypatch):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    db_url = f"sqlite:///{tmp_path / 'shared.db'}"
    with start_gateway(tmp_path / "a", db_url=db_url) as a, start_gateway(tmp_path / "b", db_url=db_url) as b:
        key = a.add_party("forwarder", "Counted Freight")["api_key"]
        for n, url in enumerate((a.url, b.url, b.url)):
            lodged = httpx.post(
                f"{url}/api/v1/consignments",
                json=record(expected_crossing=TOMORROW, submitter_reference=f"MP-{n}"),
                headers=bearer(key),
            )
            assert lodged.status_code == 201, lodged.text
        accepted = 'roadcargo_ingest_requests_total{channel="json",outcome="accepted"}'
        assert sample(scrape(a.url), accepted) == 3  # a lodged one, b two: either answers the sum
        assert sample(scrape(b.url), accepted) == 3
        assert sample(scrape(a.url), "roadcargo_database_up") == 1


@pytest.mark.pg
def test_a_database_dropped_mid_run_gives_503_and_the_gateway_recovers_by_itself(tmp_path):
    if not PG_URL:
        pytest.skip("ROADCARGO_TEST_PG is not set")
    name = f"roadcargo_drop_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        with start_gateway(tmp_path, db_url=url) as gw:
            key = gw.add_party("forwarder", "Before Freight")["api_key"]
            first = httpx.post(
                f"{gw.url}/api/v1/consignments", json=record(expected_crossing=TOMORROW), headers=bearer(key)
            )
            assert first.status_code == 201
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            for _ in range(3):  # each request finds the database gone: a clear 503, never a 500
                r = httpx.post(
                    f"{gw.url}/api/v1/consignments",
                    json=record(expected_crossing=TOMORROW, submitter_reference="DURING"),
                    headers=bearer(key),
                )
                assert r.status_code == 503 and r.json()["errors"][0]["code"] == "UNAVAILABLE", r.text
                assert r.headers["retry-after"] == "5"
            assert httpx.get(f"{gw.url}/readyz").status_code == 503
            assert httpx.get(f"{gw.url}/healthz").status_code == 200
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            assert (
                subprocess.run(
                    [ROADCARGO, "db", "upgrade", "--db", url], capture_output=True, timeout=120
                ).returncode
                == 0
            )
            again = gw.add_party("forwarder", "After Freight")["api_key"]
            back = httpx.post(
                f"{gw.url}/api/v1/consignments",
                json=record(expected_crossing=TOMORROW),
                headers=bearer(again),
            )
            assert back.status_code == 201, back.text  # the same process, reconnected by itself
            assert httpx.get(f"{gw.url}/readyz").status_code == 200
            gw.process.send_signal(signal.SIGTERM)
            gw.process.wait(timeout=20)
        log = gw.log.read_text()  # no request failed with a 500 (the background work logs its retries)
        assert "unexpected error" not in log and not re.search(r"roadcargo\.access .*: \S+ \S+ 500 ", log)
        assert re.search(r"roadcargo\.access .*: POST /api/v1/consignments 503 ", log)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MB tmpfs (root only); skipped where mounting is not permitted."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            pass
    return filler


def test_a_full_disk_refuses_with_507_and_loses_nothing_acknowledged(tmp_path, small_disk):
    with start_gateway(tmp_path / "gw", db_url=f"sqlite:///{small_disk / 'gateway.db'}") as gw:
        key = gw.add_party("forwarder", "Full Freight")["api_key"]
        filler = fill(small_disk)
        acknowledged, statuses = [], []
        for n in range(400):
            r = httpx.post(
                f"{gw.url}/api/v1/consignments",
                json=record(expected_crossing=TOMORROW, submitter_reference=f"FULL-{n}"),
                headers=bearer(key),
                timeout=30,
            )
            statuses.append(r.status_code)
            if r.status_code == 201:
                acknowledged.append(r.json()["ccrn"])
            elif r.status_code == 507:
                assert r.json()["errors"][0]["code"] == "STORAGE_FULL"
                break
        assert statuses[-1] == 507 and set(statuses) <= {201, 507}, statuses
        filler.unlink()
        after = httpx.post(
            f"{gw.url}/api/v1/consignments",
            json=record(expected_crossing=TOMORROW, submitter_reference="AFTER"),
            headers=bearer(key),
        )
        assert after.status_code == 201
        for ccrn in acknowledged:  # everything acknowledged before the disk filled is still there
            assert httpx.get(f"{gw.url}/api/v1/consignments/{ccrn}", headers=bearer(key)).status_code == 200
        gw.process.send_signal(signal.SIGTERM)
        gw.process.wait(timeout=20)
