"""What psycopg's pipeline mode costs per statement, against libpq's own pipeline, in the same run.

    .venv/bin/python bench/pg_pipeline.py [--pg URL] [--rounds 2000] [--statements 12]

A bundle or a kiosk decision on PostgreSQL sends its statements in a few ``pipeline`` blocks
(gateway/prepared.py): a dozen prepared statements and a COMMIT, one round trip. This measures one such
round, a transaction of N prepared INSERTs of a small row into an indexed table, two ways on one
connection to a fresh database (dropped after):

- **psycopg**: ``cursor.execute`` of each statement inside ``connection.pipeline()``, as the gateway
  does. psycopg sends each command as it is executed: a poll and a send system call per statement, each
  waking the server for that one statement.
- **libpq**: the same statements put in libpq's buffer with ``PGconn.send_query_prepared`` (psycopg's
  low-level ``pq`` interface, parameters dumped by psycopg's own ``Transformer``), then one flush and
  one read of all the answers: the pipeline as libpq's documentation describes it.

It prints, per round, the client's CPU (this process), the server's CPU (the connection's backend, from
/proc: a local server only) and the wall time, and the ratio psycopg / libpq of each. It is the
measurement behind "the next step" in bench/RESULTS.md: not a path the gateway takes.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import machine, storages  # noqa: E402

INSERT = "INSERT INTO bench_events (at, kind, ccrn, vehicle, status, version, data) VALUES ({})"
ROW = ("ARRIVED", "504127796023", "AB1234", "ARRIVED", 3, '{"decision": "RELEASE", "lane": "1"}')


def _connect(url: str) -> psycopg.Connection:
    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.host or "", port=parsed.port or 5432, user=parsed.username or "", dbname=parsed.database
    )


def _backend_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # a server on another machine: not measured
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_psycopg(conn: psycopg.Connection, statements: int) -> Callable[[], None]:
    query = INSERT.format("now(), %s, %s, %s, %s, %s, %s")
    cursor = conn.cursor()

    def round_trip() -> None:
        with conn.pipeline():
            for _ in range(statements):
                cursor.execute(query, ROW, prepare=True)
            conn.commit()

    return round_trip


def with_libpq(conn: psycopg.Connection, statements: int) -> Callable[[], None]:
    pgconn = conn.pgconn
    transformer = Transformer(conn)
    formats = [PyFormat.TEXT] * len(ROW)
    pgconn.prepare(b"bench_insert", INSERT.format("now(), $1, $2, $3, $4, $5, $6").encode(), None)
    while (result := pgconn.get_result()) is not None:
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise SystemExit(result.error_message.decode())
    conn.commit()

    def round_trip() -> None:
        pgconn.enter_pipeline_mode()
        pgconn.send_query_params(b"BEGIN", None)
        for _ in range(statements):
            pgconn.send_query_prepared(b"bench_insert", transformer.dump_sequence(ROW, formats))
        pgconn.send_query_params(b"COMMIT", None)
        pgconn.pipeline_sync()
        while pgconn.flush():  # what does not fit the socket at once
            select.select([], [pgconn.socket], [])
        synced = False
        while not synced:
            pgconn.consume_input()
            while not synced and not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    continue  # the end of one statement's results
                if result.status == pq.ExecStatus.PIPELINE_SYNC:
                    synced = True
                elif result.status != pq.ExecStatus.COMMAND_OK:
                    raise SystemExit(result.error_message.decode())
            if not synced:
                select.select([pgconn.socket], [], [])
        pgconn.exit_pipeline_mode()

    return round_trip


def measure(round_trip: Callable[[], None], backend: int, rounds: int) -> tuple[float, float, float]:
    """Client CPU, server CPU and wall time of one round, in microseconds."""
    for _ in range(max(rounds // 10, 10)):  # psycopg prepares a statement at its fifth use
        round_trip()
    cpu, server, wall = time.process_time(), _backend_cpu(backend), time.perf_counter()
    for _ in range(rounds):
        round_trip()
    return tuple(  # type: ignore[return-value]
        x / rounds * 1e6
        for x in (time.process_time() - cpu, _backend_cpu(backend) - server, time.perf_counter() - wall)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pg", default=os.environ.get("ROADCARGO_TEST_PG"), help="PostgreSQL server URL")
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--statements", type=int, default=12, help="INSERTs per round, then a COMMIT")
    args = parser.parse_args()
    if not args.pg:
        raise SystemExit("give a PostgreSQL server with --pg URL (or ROADCARGO_TEST_PG)")
    print(f"# one pipelined round: {args.statements} prepared INSERTs and a COMMIT, {args.rounds} rounds")
    print(f"# {machine()}")
    with storages(Path("."), args.pg, skip_sqlite=True) as runs:
        ((_label, url),) = runs
        conn = _connect(url)
        with conn.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE bench_events (cursor bigserial PRIMARY KEY, at timestamptz NOT NULL, "
                "kind text NOT NULL, ccrn text, vehicle text, status text, version int, data text)"
            )
            cursor.execute("CREATE INDEX ix_bench_events_ccrn ON bench_events (ccrn)")
        conn.commit()
        backend = conn.info.backend_pid
        runs_of = {"psycopg": with_psycopg(conn, args.statements), "libpq": with_libpq(conn, args.statements)}
        results = {name: measure(run, backend, args.rounds) for name, run in runs_of.items()}
        conn.close()
    print("| way | client CPU µs/round | server CPU µs/round | wall µs/round |")
    print("|---|---|---|---|")
    for name, (cpu, server, wall) in results.items():
        print(f"| {name} | {cpu:.0f} | {server:.0f} | {wall:.0f} |")
    (a, b) = results["psycopg"], results["libpq"]
    print(
        f"| psycopg / libpq | {a[0] / b[0]:.1f}x | {a[1] / b[1] if b[1] else 0:.1f}x | {a[2] / b[2]:.1f}x |"
    )


if __name__ == "__main__":
    main()
