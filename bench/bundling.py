"""Bundling throughput and latency over real HTTP, against `roadcargo serve` as a process.

    .venv/bin/python bench/bundling.py [--bundles 2000] [--clients 32] [--pg URL] [--skip-sqlite]

For each storage (SQLite, and PostgreSQL when --pg or ROADCARGO_TEST_PG names a server), it starts the
gateway on a free port with a fresh database, lodges consignments and registers drivers through the
service layer (setup, not timed), then runs N bundle requests from C concurrent HTTP clients, each
bundling one to three CCRNs with its own vehicle, spread over the six control points. In the same run it
times /healthz round trips with the same clients, the floor of any request through the stack. It
prints bundles/s, p50/p99 latency, and the ratios to /healthz.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.harness import free_port, machine, storages  # noqa: E402
from gateway import consignments, db, parties  # noqa: E402
from gateway.clock import HONG_KONG, Clock  # noqa: E402
from gateway.context import SYSTEM, Gateway  # noqa: E402

CONTROL_POINTS = ["LMC", "MKT", "STK", "SBC", "HYW", "HZM"]
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


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
            }
        ],
    }


def _prepare(
    url: str, bundles: int, clients: int
) -> tuple[list[str], list[list[tuple[str, str, list[str]]]]]:
    """Drivers' keys and, per client, its bundle requests (control point, vehicle, CCRNs)."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    gw = Gateway(engine, clock=Clock())
    forwarder = parties.add_party(gw, SYSTEM, "forwarder", "Bench Forwarder")
    actor = parties.authenticate(gw, forwarder.api_key, "http")
    today = Clock().now().astimezone(HONG_KONG).date().isoformat()
    rng = random.Random(42)
    plan: list[list[tuple[str, str, list[str]]]] = [[] for _ in range(clients)]
    keys = [parties.add_party(gw, SYSTEM, "driver", f"Driver {i}").api_key for i in range(clients)]
    pending: list[tuple[str, int]] = []
    for b in range(bundles):
        cp = CONTROL_POINTS[b % len(CONTROL_POINTS)]
        for _ in range(rng.randint(1, 3)):
            pending.append((cp, b))
    subs = [
        consignments.Submission("lodge", _record(f"BENCH-{i}", cp, today))
        for i, (cp, _b) in enumerate(pending)
    ]
    ccrns: dict[int, list[str]] = {}
    for start in range(0, len(subs), 500):
        results = consignments.submit(gw, actor, subs[start : start + 500])
        for (_cp, b), result in zip(pending[start : start + 500], results, strict=True):
            assert isinstance(result, consignments.Outcome), result
            ccrns.setdefault(b, []).append(result.view["ccrn"])
    for b in range(bundles):
        vehicle = f"{LETTERS[b // 9999 % 23]}{LETTERS[b // 9999 // 23 % 23]}{b % 9999 + 1}"
        plan[b % clients].append((CONTROL_POINTS[b % len(CONTROL_POINTS)], vehicle, ccrns[b]))
    engine.dispose()
    return keys, plan


async def _run(base: str, keys: list[str], plan: list[list[tuple[str, str, list[str]]]]) -> dict[str, object]:
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

        async def bundler(key: str, work: list[tuple[str, str, list[str]]]) -> list[float]:
            out = []
            for cp, vehicle, ccrns in work:
                t = time.perf_counter()
                r = await client.post(
                    "/api/v1/bundles",
                    json={"vehicle": vehicle, "control_point": cp, "ccrns": ccrns},
                    headers={"Authorization": f"Bearer {key}"},
                )
                out.append(time.perf_counter() - t)
                if r.status_code != 201:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            return out

        started = time.perf_counter()
        lat = [
            x
            for xs in await asyncio.gather(*(bundler(k, w) for k, w in zip(keys, plan, strict=True)))
            for x in xs
        ]
        elapsed = time.perf_counter() - started
    return {
        "bundles": len(lat),
        "errors": errors,
        "bundles_per_s": len(lat) / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": statistics.quantiles(lat, n=100)[98] * 1000,
        "health_per_s": len(health_lat) / health_elapsed,
        "health_p50_ms": statistics.median(health_lat) * 1000,
        "health_p99_ms": statistics.quantiles(health_lat, n=100)[98] * 1000,
    }


def bench(label: str, url: str, bundles: int, clients: int, workdir: Path) -> dict[str, object]:
    keys, plan = _prepare(url, bundles, clients)
    port = free_port()
    cfg = workdir / f"{label}.toml"
    cfg.write_text(f'[server]\ndata_dir = "{workdir / label}"\n')
    env = {**os.environ, "ROADCARGO_DB": url, "ROADCARGO_CONFIG": str(cfg)}
    roadcargo = str(Path(sys.executable).with_name("roadcargo"))
    proc = subprocess.Popen(
        [roadcargo, "serve", "--http-port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(150):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"{label}: the gateway did not start")
        return asyncio.run(_run(base, keys, plan))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundles", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--pg", default=os.environ.get("ROADCARGO_TEST_PG"), help="PostgreSQL server URL")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    print(f"# bundling over HTTP, {args.clients} clients, {args.bundles} bundles")
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory() as tmp, storages(Path(tmp), args.pg, args.skip_sqlite) as runs:
        print(
            "| storage | bundles/s | p50 ms | p99 ms | /healthz/s | /healthz p99 ms "
            "| throughput vs /healthz | errors |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for label, url in runs:
            r = bench(label, url, args.bundles, args.clients, Path(tmp))
            print(
                f"| {label} | {r['bundles_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['health_per_s']:.0f} | {r['health_p99_ms']:.1f} | "
                f"{r['bundles_per_s'] / r['health_per_s']:.2f}x | {len(r['errors'])} |",  # type: ignore[operator]
                flush=True,
            )
            for e in r["errors"][:5]:  # type: ignore[index]
                print(f"  error: {e}")


if __name__ == "__main__":
    main()
