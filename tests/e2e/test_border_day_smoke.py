"""The simulated border day (bench/border_day.py) at a tiny scale on SQLite: every channel, bundling, the
kiosk with the Immigration simulator, inspections and transhipments through real processes and real
transports, and every consignment accounted for at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_tiny_border_day_replays_without_errors_and_accounts_for_every_consignment(tmp_path: Path) -> None:
    out = tmp_path / "day"
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "border_day.py"), "--scale", "0.002", "--sqlite"),
            *("--processes", "1", "--seed", "7", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(out.with_suffix(".json").read_text())
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
