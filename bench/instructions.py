"""Instructions (valgrind's callgrind) a kiosk decision costs `roadcargo serve` over HTTP, with the
Immigration simulator answering, against a /healthz request of the same server as the baseline.

    .venv/bin/python bench/instructions.py [--decisions 200] [--pg URL] [--skip-sqlite]

Seconds on this machine vary by a third from one minute to the next (bench/RESULTS.md); instructions do
not. For each storage it lodges and bundles the trucks (not counted), starts `roadcargo serve
--no-background` under callgrind, warms it up with 20 kiosk requests and 20 /healthz requests, then zeroes
callgrind's counters (``callgrind_control --zero``), sends ``--decisions`` kiosk requests and dumps the
count, sends as many /healthz requests and dumps again: the instructions of exactly those requests, over
their number, with nothing of the start-up or warm-up in them (a start-up alone costs about 6,000 M
instructions and varies by 1%, as much as a decision's whole count over 100 requests). The requests are
sent one at a time (callgrind runs the server about fifty times slower). No truck is drawn at random
(``[risk] random_rate = 0``): every decision is a RELEASE, the same work in every run. It takes about two
minutes per storage; valgrind must be installed (Debian's ``valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import free_port, machine, storages, wait_until_up  # noqa: E402
from bench.kiosk import _config, _prepare  # noqa: E402

WARM = 20


def _control(pid: int, command: str) -> None:
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True, timeout=300)


def _dumped(path: Path) -> int:
    found = re.search(r"^summary: (\d+)$", path.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        raise SystemExit(f"callgrind wrote no count to {path}")
    return int(found.group(1))


def measure(label: str, url: str, decisions: int, workdir: Path) -> dict[str, Any]:
    """Instructions a kiosk decision and a /healthz request cost one server, and the decisions' mix."""
    config = workdir / f"{label}.toml"
    sim_port = free_port()
    _config(config, workdir / label, sim_port)
    # One kiosk sends every request: no rate limit in the way. No random selection: every truck is
    # clean, so every decision is a RELEASE (98% of them at the default rate) and two runs count the same
    # work (with the random 2%, 0 to 6 INSPECTs in 100 moved the count by up to 10%).
    with config.open("a") as out:
        out.write("[limits]\nrequests_per_second = 0\n[risk]\nrandom_rate = 0\n")
    keys, points, plan = _prepare(url, config, WARM + decisions, 1)
    trucks = plan[0]
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "simulate", "immigration", "--port", str(sim_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port = free_port()
    counts = workdir / f"{label}.callgrind"
    env = {**os.environ, "ROADCARGO_DB": url, "ROADCARGO_CONFIG": str(config)}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--http-port", str(port), "--sftp-port", "0"]
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}", *command, "--no-background"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mix: dict[str, int] = {}
    try:
        wait_until_up(f"http://127.0.0.1:{sim_port}/immigration?wsdl", "the Immigration simulator")
        wait_until_up(f"http://127.0.0.1:{port}/healthz", "the gateway under callgrind", seconds=600)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            time.sleep(2)  # the Immigration WSDL loaded in the background, as in a running gateway
            headers = {"Authorization": f"Bearer {keys[0]}"}

            def kiosk(vehicle: str, document: str) -> str:
                body = {
                    "control_point": points[0],
                    "lane": "1",
                    "vehicle": vehicle,
                    "driver_document": document,
                }
                answer = client.post("/api/v1/kiosk/clearances", json=body, headers=headers)
                answer.raise_for_status()
                return str(answer.json()["decision"])

            for vehicle, document in trucks[:WARM]:
                kiosk(vehicle, document)
            for _ in range(WARM):
                client.get("/healthz").raise_for_status()
            _control(server.pid, "--zero")
            for vehicle, document in trucks[WARM:]:
                decision = kiosk(vehicle, document)
                mix[decision] = mix.get(decision, 0) + 1
            _control(server.pid, "--dump=kiosk")
            for _ in range(decisions):
                client.get("/healthz").raise_for_status()
            _control(server.pid, "--dump=healthz")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=300)
        sim.terminate()
        sim.wait(timeout=30)
    return {
        "decision": _dumped(counts.with_name(counts.name + ".1")) / decisions,
        "healthz": _dumped(counts.with_name(counts.name + ".2")) / decisions,
        "mix": mix,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=200)
    parser.add_argument("--pg", default=os.environ.get("ROADCARGO_TEST_PG"), help="PostgreSQL server URL")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    print(
        f"# instructions per request of roadcargo serve under callgrind, one kiosk, {args.decisions} "
        "decisions (Immigration simulator answering) and as many /healthz requests, after 20 of each"
    )
    print(f"# {machine()}")
    print("| storage | instructions per decision | instructions per /healthz | vs /healthz | decisions |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, storages(Path(tmp), args.pg, args.skip_sqlite) as runs:
        for label, url in runs:
            r = measure(label, url, args.decisions, Path(tmp))
            print(
                f"| {label} | {r['decision'] / 1e6:.2f} M | {r['healthz'] / 1e6:.3f} M | "
                f"{r['decision'] / r['healthz']:.1f}x | {json.dumps(r['mix'])} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
