"""`roadcargo serve` as a real process, driven over HTTP the way the README's quick start does."""

from __future__ import annotations

import signal
import subprocess
from datetime import date, timedelta

import httpx
import pytest
from sqlalchemy import create_engine

from gateway.identifiers import damm_digit
from tests.conftest import _truncate
from tests.e2e.conftest import ROADCARGO, start_gateway
from tests.factories import record


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def served(request, tmp_path):
    """A gateway process on a free port, on a fresh SQLite file or the run's PostgreSQL database
    emptied (serve must still find its schema current)."""
    db_url = None
    if request.param == "postgresql":
        db_url = request.getfixturevalue("pg_database")
        engine = create_engine(db_url)
        _truncate(engine)
        engine.dispose()
    with start_gateway(tmp_path, db_url=db_url) as server:
        yield server


def test_readme_quick_start_over_real_http(served):
    base, proc = served.url, served.process
    creds = served.add_party("forwarder", "ACME Freight")
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
    proc.wait(timeout=20)
    out = served.log.read_text()
    assert proc.returncode == 0
    assert "Finished server process" in out
    assert creds["api_key"] not in out  # keys never reach the logs


def test_suspended_party_over_real_http(served):
    base = served.url
    creds = served.add_party("shipper", "S")
    assert served.cli("party", "suspend", creds["party_id"]).returncode == 0
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
