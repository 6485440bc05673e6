"""`roadcargo serve` as a real process, driven over HTTP the way the README's quick start does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from gateway.identifiers import damm_digit
from tests.factories import record

ROADCARGO = str(Path(sys.executable).with_name("roadcargo"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ROADCARGO, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def served(request, tmp_path):
    """A gateway process on a free port, on a fresh SQLite file or a fresh PostgreSQL database."""
    env = {**os.environ, "ROADCARGO_CONFIG": str(tmp_path / "gateway.toml")}
    (tmp_path / "gateway.toml").write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    if request.param == "postgresql":
        env["ROADCARGO_DB"] = request.getfixturevalue("pg_database")
        from sqlalchemy import create_engine

        from tests.conftest import _truncate  # an emptied database: serve must still find it current

        engine = create_engine(env["ROADCARGO_DB"])
        _truncate(engine)
        engine.dispose()
    port = free_port()
    proc = subprocess.Popen(
        [ROADCARGO, "serve", "--http-port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            pytest.fail(f"roadcargo serve exited: {proc.stdout.read() if proc.stdout else ''}")
    else:
        proc.kill()
        pytest.fail("roadcargo serve did not answer /healthz within 30 s")
    yield base, env, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_readme_quick_start_over_real_http(served):
    base, env, proc = served
    added = run_cli("party", "add", "--role", "forwarder", "--name", "ACME Freight", "--json", env=env)
    assert added.returncode == 0, added.stderr
    creds = json.loads(added.stdout)
    auth = {"Authorization": f"Bearer {creds['api_key']}"}

    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    r = httpx.post(f"{base}/api/v1/consignments", json=record(expected_crossing=tomorrow), headers=auth)
    assert r.status_code == 201, r.text
    ccrn = r.json()["ccrn"]
    assert len(ccrn) == 12 and damm_digit(ccrn) == 0

    amended = record(expected_crossing=tomorrow, control_point="MKT")
    r = httpx.put(f"{base}/api/v1/consignments/{ccrn}", json=amended, headers=auth)
    assert r.status_code == 200 and r.json()["version"] == 2

    r = httpx.delete(f"{base}/api/v1/consignments/{ccrn}", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
    assert httpx.get(f"{base}/api/v1/consignments/{ccrn}", headers=auth).json()["version"] == 2

    # SIGTERM stops it cleanly.
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "Finished server process" in out
    assert creds["api_key"] not in out  # keys never reach the logs


def test_suspended_party_over_real_http(served):
    base, env, _proc = served
    creds = json.loads(run_cli("party", "add", "--role", "shipper", "--name", "S", "--json", env=env).stdout)
    assert run_cli("party", "suspend", creds["party_id"], env=env).returncode == 0
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    r = httpx.post(
        f"{base}/api/v1/consignments",
        json=record(expected_crossing=tomorrow),
        headers={"Authorization": f"Bearer {creds['api_key']}"},
    )
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "FORBIDDEN"


def test_unknown_configuration_key_stops_serve_with_its_name(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[rules]\nlodgment_window_days = 3\n")
    result = subprocess.run(
        [ROADCARGO, "serve", "--config", str(cfg), "--db", f"sqlite:///{tmp_path / 'g.db'}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "rules.lodgment_window_days" in result.stderr


def test_cli_refuses_an_unmigrated_database_clearly(tmp_path):
    result = subprocess.run(
        [
            ROADCARGO,
            "party",
            "add",
            "--role",
            "forwarder",
            "--name",
            "X",
            "--db",
            f"sqlite:///{tmp_path / 'new.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "roadcargo db upgrade" in result.stderr
