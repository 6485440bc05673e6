"""Instructions (valgrind's callgrind) a kiosk decision costs `roadcargo serve` over HTTP, with the
Immigration simulator answering, against a /healthz request of the same server as the baseline.

    .venv/bin/python bench/instructions.py [--decisions 200] [--pg URL] [--skip-sqlite]

Seconds on this machine vary by a third from one minute to the next (bench/RESULTS.md); instructions
do not: the same code, database and requests give the same count within about 1-2%, so a change of a
few percent is seen in one run instead of in ten. For each storage it lodges and bundles the trucks
once (not counted), then starts `roadcargo serve --no-background` under callgrind three times on copies of
that database (a file copy on SQLite, ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL), each after 20
kiosk requests and 20 /healthz requests to warm it up: once with nothing more, once with ``--decisions``
more kiosk requests, once with as many more /healthz requests. The differences, over the number of
requests, are the instructions a decision and a /healthz request cost, start-up and warm-up taken out.
The requests are sent one at a time (callgrind runs the server about fifty times slower). It takes
two to four minutes per storage; valgrind must be installed (Debian's ``valgrind``).
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
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import free_port, machine, storages, wait_until_up  # noqa: E402
from bench.kiosk import _config, _prepare  # noqa: E402

WARM = 20


def _copy(url: str, tag: str, workdir: Path) -> str:
    """A copy of the prepared database, for one server run."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        target = workdir / f"{tag}.db"
        shutil.copy(parsed.database or "", target)
        return f"sqlite:///{target}"
    name = f"{parsed.database}_{tag}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{parsed.database}"'))
    admin.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def _drop(url: str, original: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        admin = create_engine(original, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        admin.dispose()


def _counted(
    url: str, config: Path, key: str, point: str, trucks: list[tuple[str, str]], healthz: int
) -> tuple[int, dict[str, int]]:
    """Instructions of one server run that answers these kiosk requests and ``healthz`` /healthz ones,
    after the warm-up, and the decisions' mix."""
    port = free_port()
    env = {**os.environ, "ROADCARGO_DB": url, "ROADCARGO_CONFIG": str(config)}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--http-port", str(port), "--sftp-port", "0"]
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command, "--no-background"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    mix: dict[str, int] = {}
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", "the gateway under callgrind", seconds=600)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            time.sleep(2)  # the Immigration WSDL loaded in the background, as in a running gateway
            headers = {"Authorization": f"Bearer {key}"}
            for i, (vehicle, document) in enumerate(trucks):
                body = {"control_point": point, "lane": "1", "vehicle": vehicle, "driver_document": document}
                answer = client.post("/api/v1/kiosk/clearances", json=body, headers=headers)
                answer.raise_for_status()
                if i >= WARM:
                    decision = answer.json()["decision"]
                    mix[decision] = mix.get(decision, 0) + 1
            for _ in range(healthz):
                client.get("/healthz").raise_for_status()
    finally:
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=300)
    found = re.search(rb"Collected : (\d+)", err)
    if found is None:
        raise SystemExit(f"callgrind gave no count: {err[-500:].decode(errors='replace')}")
    return int(found.group(1)), mix


def measure(label: str, url: str, decisions: int, workdir: Path) -> dict[str, Any]:
    config = workdir / f"{label}.toml"
    sim_port = free_port()
    _config(config, workdir / label, sim_port)
    with config.open("a") as out:  # one kiosk sends every request: no rate limit in the way
        out.write("[limits]\nrequests_per_second = 0\n")
    keys, points, plan = _prepare(url, config, WARM + decisions, 1)
    trucks = plan[0]
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "simulate", "immigration", "--port", str(sim_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    counts: dict[str, int] = {}
    mix: dict[str, int] = {}
    try:
        wait_until_up(f"http://127.0.0.1:{sim_port}/immigration?wsdl", "the Immigration simulator")
        for tag, kiosk, healthz in (
            ("base", WARM, WARM),
            ("kiosk", WARM + decisions, WARM),
            ("healthz", WARM, WARM + decisions),
        ):
            copy = _copy(url, tag, workdir)
            try:
                counts[tag], seen = _counted(copy, config, keys[0], points[0], trucks[:kiosk], healthz)
            finally:
                _drop(copy, url)
            if tag == "kiosk":
                mix = seen
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    return {
        "decision": (counts["kiosk"] - counts["base"]) / decisions,
        "healthz": (counts["healthz"] - counts["base"]) / decisions,
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
