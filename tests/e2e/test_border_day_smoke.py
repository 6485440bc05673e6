"""The simulated border day (bench/border_day.py) at a tiny scale on SQLite: every channel, bundling, the
kiosk with the Immigration simulator, inspections and transhipments through real processes and real
transports, and every consignment accounted for at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _replay(tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    """A day of 34 trucks (seed 7) on SQLite with one serve process: its JSON result and the report's end."""
    out = tmp_path / "day"
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "border_day.py"), "--scale", "0.002", "--sqlite"),
            *("--processes", "1", "--seed", "7", "--out", str(out), *options),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(out.with_suffix(".json").read_text()), done.stdout[-4000:]


def test_a_tiny_border_day_replays_without_errors_and_accounts_for_every_consignment(tmp_path: Path) -> None:
    result, _ = _replay(tmp_path)
    out = tmp_path / "day"
    books = result["accounting"]
    assert books["accounted_for"] and books["consignments"] == books["ccrns_in_database"] > 0
    assert books["bundled"] + books["cancelled"] + books["still_waiting"] == books["consignments"]
    assert result["errors"] == 0
    operations = result["operations"]
    for op in ("edifact.lodge", "xml.lodge", "sftp.lodge", "json.lodge", "bundle", "kiosk"):
        assert operations[op]["n"] > 0, op
    assert "transhipment.airport" in operations and "transhipment.arrival" in operations
    assert sum(n for d, n in result["decisions"].items() if d.startswith("RELEASE")) > 0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tiny_border_day_survives_a_gateway_and_a_worker_killed_during_it(tmp_path: Path) -> None:
    """SIGKILL of the serve process and then of the worker mid-replay, each replaced a second later on
    the same ports, as a supervisor would: clients resend (connection refused, replies lost), the new
    worker takes over the killed one's SFTP claims, and nothing is lost or created twice."""
    result, report = _replay(
        tmp_path, "--kill-serve-at", "0.3", "--kill-worker-at", "0.6", "--fault-pause", "1"
    )
    books = result["accounting"]
    assert books["accounted_for"] and books["consignments"] == books["ccrns_in_database"] > 0, report
    assert books["not_as_expected_count"] == 0, report
    assert result["errors"] == 0 and result["dead_processes"] == [], report
    faults = {f["kind"]: f for f in result["faults"]}
    assert set(faults) == {"serve", "worker"}, report
    # with the only serve process gone, clients saw it fail, and were answered once it was back
    assert faults["serve"]["failed_requests"] > 0, report
    assert all(f["down_s"] > 1 for f in faults.values()), report
    assert sum(n for d, n in result["decisions"].items() if d.startswith("RELEASE")) > 0
