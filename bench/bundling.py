"""Bundling throughput and latency over real HTTP, against `roadcargo serve` as a process.

    .venv/bin/python bench/bundling.py [--bundles 2000] [--clients 32] [--warmup 20] [--processes 1]
        [--pg URL] [--skip-sqlite] [--rate 300] [--worker]

For each storage (SQLite, and PostgreSQL when --pg or ROADCARGO_TEST_PG names a server), it starts the
gateway on a free port with a fresh database, lodges consignments and registers drivers through the
service layer (setup, not timed), warms the gateway up with ``--warmup`` bundles per client (not timed
either: database connections opened, statements prepared, as in a gateway that has been running), then
runs N bundle requests from C concurrent HTTP clients, each
bundling one to three CCRNs with its own vehicle, spread over the six control points and expected
tomorrow at 08:00 (so that the hour a run starts at does not matter), while the Immigration simulator
takes the advance notices the gateway sends in the background. In the same run it times /healthz round
trips with the same connections, the floor of any request through the stack. It
prints bundles/s, p50/p99 latency, the ratio to /healthz, and the CPU time the gateway's processes,
PostgreSQL (its processes on this machine, "-" on SQLite, whose work is the gateway's own) and the load
generator spent per bundle (on a machine shared with other work, the CPU figures are the steadier ones).
The load generator is harness.RawClient: pre-built requests on keep-alive connections.

Two ways to load it. By default each client sends its next request as soon as its answer is in (closed
loop): that measures the most the gateway can do, and with 32 clients always waiting the latency is
32 / throughput by construction. With ``--rate R`` the requests are due at R per second in all, spread
evenly over the same clients (open loop, as bundles arrive at a border); the latency of each request
counts from the moment it was due, so a gateway that falls behind shows it. The target (300 bundles/s,
p99 < 50 ms) is read as: at least 300/s in the closed loop, and p99 under 50 ms at ``--rate 300``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import (  # noqa: E402
    CONTROL_POINTS,
    Meter,
    RawClient,
    add_timeline_option,
    bench_record,
    children,
    connect_all,
    database_cpu,
    free_port,
    health,
    load,
    machine,
    ms_each,
    report_timeline,
    run_async,
    start_gateways,
    stop,
    storages,
    timed,
    vehicle_number,
    wait_until_up,
)
from gateway import consignments, db, parties  # noqa: E402
from gateway.clock import HONG_KONG, Clock  # noqa: E402
from gateway.context import SYSTEM, Gateway  # noqa: E402


def _prepare(
    url: str, bundles: int, clients: int
) -> tuple[list[str], list[list[tuple[str, str, list[str]]]], str]:
    """Drivers' keys, per client its bundle requests (control point, vehicle, CCRNs), and the expected
    arrival they all give."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    gw = Gateway(engine, clock=Clock())
    forwarder = parties.add_party(gw, SYSTEM, "forwarder", "Bench Forwarder")
    actor = parties.authenticate(gw, forwarder.api_key, "http")
    local_now = Clock().now().astimezone(HONG_KONG)
    today = local_now.date().isoformat()
    # Every bundle asks for tomorrow morning's slots, so the run does not depend on the hour it is started
    # at (late in the evening today's last slots would be full, or past).
    arrival = datetime.combine(local_now.date() + timedelta(days=1), time_of_day(8), HONG_KONG).isoformat()
    rng = random.Random(42)
    plan: list[list[tuple[str, str, list[str]]]] = [[] for _ in range(clients)]
    keys = [parties.add_party(gw, SYSTEM, "driver", f"Driver {i}").api_key for i in range(clients)]
    pending: list[tuple[str, int]] = []
    for b in range(bundles):
        cp = CONTROL_POINTS[b % len(CONTROL_POINTS)]
        for _ in range(rng.randint(1, 3)):
            pending.append((cp, b))
    subs = [
        consignments.Submission("lodge", bench_record(f"BENCH-{i}", cp, today))
        for i, (cp, _b) in enumerate(pending)
    ]
    ccrns: dict[int, list[str]] = {}
    for start in range(0, len(subs), 500):
        results = consignments.submit(gw, actor, subs[start : start + 500])
        for (_cp, b), result in zip(pending[start : start + 500], results, strict=True):
            assert isinstance(result, consignments.Outcome), result
            ccrns.setdefault(b, []).append(result.view["ccrn"])
    for b in range(bundles):
        vehicle = vehicle_number(b)
        plan[b % clients].append((CONTROL_POINTS[b % len(CONTROL_POINTS)], vehicle, ccrns[b]))
    engine.dispose()
    return keys, plan, arrival


async def _run(
    ports: list[int],
    keys: list[str],
    plan: list[list[tuple[str, str, list[str]]]],
    arrival: str,
    rate: float | None,
    warmup: int,
    meter: Meter,
) -> dict[str, Any]:
    clients = await connect_all(ports, len(keys))
    try:
        health_run = await health(clients, 50)
        requests = [
            [
                RawClient.build(
                    "POST",
                    "/api/v1/bundles",
                    json.dumps(
                        {
                            "vehicle": vehicle,
                            "control_point": cp,
                            "ccrns": ccrns,
                            "expected_arrival": arrival,
                        }
                    ).encode(),
                    {"Authorization": f"Bearer {key}"},
                )
                for cp, vehicle, ccrns in requests
            ]
            for key, requests in zip(keys, plan, strict=True)
        ]
        errors: list[str] = []

        def check(status: int, body: bytes) -> None:
            if status != 201:
                errors.append(f"{status} {body[:200]!r}")

        run, client_cpu, spent = await timed(clients, requests, warmup, check, rate, meter)
    finally:
        for c in clients:
            await c.close()
    return {"run": run, "health": health_run, "errors": errors, "client_cpu": client_cpu, **spent}


def bench(
    label: str,
    url: str,
    bundles: int,
    clients: int,
    workdir: Path,
    processes: int,
    rate: float | None = None,
    worker: bool = False,
    warmup: int = 0,
) -> dict[str, Any]:
    keys, plan, arrival = _prepare(url, bundles + warmup * clients, clients)
    # Every bundle sends Immigration an advance notice (through the outbox, in the background): the
    # simulator takes them, as Immigration would. Without it every notice would fail and be retried
    # throughout the run, which is not the work of a bundle.
    sim_port = free_port()
    cfg = workdir / f"{label}.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{workdir / label}"\n'
        f'[immigration]\nurl = "http://127.0.0.1:{sim_port}/immigration"\n'
    )
    env = {**os.environ, "ROADCARGO_DB": url, "ROADCARGO_CONFIG": str(cfg)}
    roadcargo = str(Path(sys.executable).with_name("roadcargo"))
    sim = subprocess.Popen(
        [roadcargo, "simulate", "immigration", "--port", str(sim_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_until_up(f"http://127.0.0.1:{sim_port}/immigration?wsdl", "the Immigration simulator")
        procs, ports = start_gateways(label, processes, env, workdir, worker)
        pids = [pid for proc in procs for pid in children(proc.pid)]
        meter = Meter(pids, [sim.pid], database_cpu(url))
        result: dict[str, Any] = run_async(lambda: _run(ports, keys, plan, arrival, rate, warmup, meter))
        result["load"] = load()
        return result
    finally:
        stop([*procs, sim])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundles", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--warmup",
        type=int,
        default=20,
        help="bundles per client sent before the clock starts (not counted), so that the run sees the "
        "gateway warm: database connections open, statements prepared",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="gateway processes on one database (clients spread over them)",
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="background work (the advance notices) in a `roadcargo worker` process, the gateway "
        "processes started with --no-background (the production layout of docs/operations.md)",
    )
    parser.add_argument("--pg", default=os.environ.get("ROADCARGO_TEST_PG"), help="PostgreSQL server URL")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--rate",
        type=float,
        help="open loop: offer this many bundles per second in all (the target is 300) instead of "
        "each client sending its next request as soon as its answer is in; latencies count from the "
        "moment a request was due",
    )
    add_timeline_option(parser)
    args = parser.parse_args()
    pacing = "as fast as they are answered" if args.rate is None else f"open loop at {args.rate:g}/s offered"
    print(
        f"# bundling over HTTP, {args.clients} clients, {args.bundles} bundles (after {args.warmup} each "
        "to warm up), "
        f"{args.processes} gateway process(es){' and a worker' if args.worker else ''}, "
        f"requests sent {pacing}"
    )
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp, storages(Path(tmp), args.pg, args.skip_sqlite) as runs:
        print(
            "| storage | bundles/s | p50 ms | p99 ms | /healthz/s | /healthz p99 ms | vs /healthz "
            "| server CPU ms/bundle | database CPU ms/bundle | client CPU ms/bundle | errors |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, url in runs:
            r = bench(
                label,
                url,
                args.bundles,
                args.clients,
                Path(tmp),
                args.processes,
                args.rate,
                args.worker,
                args.warmup,
            )
            run, hz, n = r["run"], r["health"], max(len(r["run"].latencies), 1)
            print(
                f"| {label} | {run.per_s:.0f} | {run.ms(50):.1f} | {run.ms(99):.1f} | "
                f"{hz.per_s:.0f} | {hz.ms(99):.1f} | {run.per_s / hz.per_s:.2f}x | "
                f"{r['server_cpu'] / n * 1000:.2f} | {ms_each(r['db_cpu'], n)} | "
                f"{r['client_cpu'] / n * 1000:.2f} | {len(r['errors'])} |",
                flush=True,
            )
            print(f"  simulator CPU {r['sim_cpu'] / n * 1000:.2f} ms/bundle; {r['load']} at the end")
            report_timeline(args.timeline, label, run, 50)
            for e in r["errors"][:5]:
                print(f"  error: {e}")


if __name__ == "__main__":
    main()
