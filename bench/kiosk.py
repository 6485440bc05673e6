"""Kiosk decisions per second and their latency over real HTTP, against `roadcargo serve` as a process,
with the Immigration simulator (`roadcargo simulate immigration`) answering every driver.

    .venv/bin/python bench/kiosk.py [--decisions 2000] [--kiosks 32] [--pg URL] [--skip-sqlite]

For each storage (SQLite, and PostgreSQL when --pg or ROADCARGO_TEST_PG names a server), it starts the
simulator and the gateway on free ports with a fresh database, lodges and bundles one to three
consignments per vehicle through the service layer (setup, not timed; a lead time of 0 minutes and
roomy slots so that every truck may cross at once), then sends one kiosk request per vehicle from K
concurrent kiosks, each a kiosk party bound to its control point, spread over the six control points.
In the same run it times /healthz round trips with the same clients, the floor of any request through
the stack. It prints decisions/s, p50/p99 latency, the ratio to /healthz, and the decisions' mix.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import free_port, machine, storages, wait_until_up  # noqa: E402
from gateway import bundles, consignments, db, parties  # noqa: E402
from gateway.clock import HONG_KONG, Clock  # noqa: E402
from gateway.config import load_config  # noqa: E402
from gateway.context import SYSTEM, Gateway  # noqa: E402

CONTROL_POINTS = ["LMC", "MKT", "STK", "SBC", "HYW", "HZM"]
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
Work = list[tuple[str, str]]  # per kiosk: (vehicle, driver document)


def _record(ref: str, cp: str, day: str) -> dict[str, object]:
    return {
        "direction": "IMPORT",
        "submitter_reference": ref,
        "consignor": {
            "name": "Shenzhen Bright Toys Co Ltd",
            "address": "18 Industrial Avenue",
            "country": "CN",
        },
        "consignee": {"name": "Harbour Traders Ltd", "address": "2 Harbour Road", "country": "HK"},
        "expected_crossing": day,
        "control_point": cp,
        "items": [
            {
                "package_count": 40,
                "package_type": "CT",
                "package_description": "cartons",
                "description": "plastic toy building blocks",
                "hs_code": "950300",
            }
        ],
    }


def _config(path: Path, data_dir: Path, immigration_port: int) -> None:
    lines = [
        "[server]",
        f'data_dir = "{data_dir}"',
        "[rules]",
        "bundle_lead_minutes = 0",
        "[immigration]",
        f'url = "http://127.0.0.1:{immigration_port}/immigration"',
    ]
    for cp in CONTROL_POINTS:
        lines += [f"[control_points.{cp}]", "slot_capacity = 1000000"]
    path.write_text("\n".join(lines) + "\n")


def _prepare(url: str, config: Path, decisions: int, kiosks: int) -> tuple[list[str], list[str], list[Work]]:
    """Kiosk keys with their control points, and per kiosk the vehicles that will arrive at it."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    gw = Gateway(engine, load_config(config), Clock())
    forwarder = parties.add_party(gw, SYSTEM, "forwarder", "Bench Forwarder")
    actor = parties.authenticate(gw, forwarder.api_key, "http")
    driver_new = parties.add_party(gw, SYSTEM, "driver", "Bench Driver")
    driver = parties.authenticate(gw, driver_new.api_key, "http")
    points = [CONTROL_POINTS[i % len(CONTROL_POINTS)] for i in range(kiosks)]
    keys = [
        parties.add_party(gw, SYSTEM, "kiosk", f"Kiosk {i}", control_point=cp).api_key
        for i, cp in enumerate(points)
    ]
    today = Clock().now().astimezone(HONG_KONG).date().isoformat()
    rng = random.Random(7)
    pending: list[tuple[int, str]] = []
    for v in range(decisions):
        cp = points[v % kiosks]
        pending += [(v, cp)] * rng.randint(1, 3)
    subs = [
        consignments.Submission("lodge", _record(f"K-{i}", cp, today)) for i, (_v, cp) in enumerate(pending)
    ]
    ccrns: dict[int, list[str]] = collections.defaultdict(list)
    for start in range(0, len(subs), 500):
        results = consignments.submit(gw, actor, subs[start : start + 500])
        for (v, _cp), result in zip(pending[start : start + 500], results, strict=True):
            assert isinstance(result, consignments.Outcome), result
            ccrns[v].append(result.view["ccrn"])
    plan: list[Work] = [[] for _ in range(kiosks)]
    for v in range(decisions):
        vehicle = f"{LETTERS[v // 9999 % 23]}{LETTERS[v // 9999 // 23 % 23]}{v % 9999 + 1}"
        bundles.bundle(gw, driver, vehicle, points[v % kiosks], ccrns[v])
        plan[v % kiosks].append((vehicle, f"K{v:07d}"))
    engine.dispose()
    return keys, points, plan


async def _run(base: str, keys: list[str], points: list[str], plan: list[Work]) -> dict[str, object]:
    limits = httpx.Limits(max_connections=len(keys), max_keepalive_connections=len(keys))
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def health(n: int) -> list[float]:
            out = []
            for _ in range(n):
                t = time.perf_counter()
                r = await client.get("/healthz")
                out.append(time.perf_counter() - t)
                assert r.status_code == 200
            return out

        started = time.perf_counter()
        health_lat = [x for xs in await asyncio.gather(*(health(50) for _ in keys)) for x in xs]
        health_elapsed = time.perf_counter() - started

        errors: list[str] = []
        mix: collections.Counter[str] = collections.Counter()

        async def kiosk(key: str, cp: str, work: Work) -> list[float]:
            out = []
            for vehicle, document in work:
                t = time.perf_counter()
                r = await client.post(
                    "/api/v1/kiosk/clearances",
                    json={"control_point": cp, "lane": "1", "vehicle": vehicle, "driver_document": document},
                    headers={"Authorization": f"Bearer {key}"},
                )
                out.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                else:
                    body = r.json()
                    mix[f"{body['decision']} {','.join(body['reasons'])}".strip()] += 1
            return out

        started = time.perf_counter()
        runs = await asyncio.gather(*(kiosk(k, cp, w) for k, cp, w in zip(keys, points, plan, strict=True)))
        elapsed = time.perf_counter() - started
        lat = [x for xs in runs for x in xs]
    return {
        "decisions": len(lat),
        "errors": errors,
        "mix": dict(mix),
        "per_s": len(lat) / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": statistics.quantiles(lat, n=100)[98] * 1000,
        "health_per_s": len(health_lat) / health_elapsed,
        "health_p99_ms": statistics.quantiles(health_lat, n=100)[98] * 1000,
    }


def bench(label: str, url: str, decisions: int, kiosks: int, workdir: Path) -> dict[str, object]:
    roadcargo = str(Path(sys.executable).with_name("roadcargo"))
    sim_port, port = free_port(), free_port()
    cfg = workdir / f"{label}.toml"
    _config(cfg, workdir / label, sim_port)
    keys, points, plan = _prepare(url, cfg, decisions, kiosks)
    env = {**os.environ, "ROADCARGO_DB": url, "ROADCARGO_CONFIG": str(cfg)}
    sim = subprocess.Popen(
        [roadcargo, "simulate", "immigration", "--port", str(sim_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = subprocess.Popen(
        [roadcargo, "serve", "--http-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{sim_port}/immigration?wsdl", "the Immigration simulator")
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/healthz", "the gateway")
        return asyncio.run(_run(base, keys, points, plan))
    finally:
        for p in (proc, sim):
            p.terminate()
            p.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--kiosks", type=int, default=32)
    parser.add_argument("--pg", default=os.environ.get("ROADCARGO_TEST_PG"), help="PostgreSQL server URL")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    print(
        f"# kiosk decisions over HTTP, Immigration simulator answering, {args.kiosks} kiosks, "
        f"{args.decisions} trucks"
    )
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp, storages(Path(tmp), args.pg, args.skip_sqlite) as runs:
        print(
            "| storage | decisions/s | p50 ms | p99 ms | /healthz/s | /healthz p99 ms | vs /healthz "
            "| errors |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, url in runs:
            r = bench(label, url, args.decisions, args.kiosks, Path(tmp))
            print(
                f"| {label} | {r['per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['health_per_s']:.0f} | {r['health_p99_ms']:.1f} | "
                f"{r['per_s'] / r['health_per_s']:.2f}x | {len(r['errors'])} |",  # type: ignore[operator]
                flush=True,
            )
            print(f"  decisions: {r['mix']}")
            for e in r["errors"][:5]:  # type: ignore[index]
                print(f"  error: {e}")


if __name__ == "__main__":
    main()
