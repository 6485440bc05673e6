"""What the HTTP benchmarks share: free ports, waiting for a server, the storages to run on (a fresh
SQLite file, and a PostgreSQL database made for the run and dropped after it), the machine line."""

from __future__ import annotations

import os
import platform
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, label: str) -> None:
    for _ in range(150):
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{label} did not start")


def machine() -> str:
    return f"{date.today()}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


@contextmanager
def storages(workdir: Path, pg_url: str | None, skip_sqlite: bool = False) -> Iterator[list[tuple[str, str]]]:
    """(label, database URL) pairs to run on; the PostgreSQL database is dropped on the way out."""
    runs: list[tuple[str, str]] = []
    if not skip_sqlite:
        runs.append(("sqlite", f"sqlite:///{workdir / 'bench.db'}"))
    admin = None
    name = f"roadcargo_bench_{uuid.uuid4().hex[:8]}"
    if pg_url:
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        runs.append(("postgresql", make_url(pg_url).set(database=name).render_as_string(hide_password=False)))
    try:
        yield runs
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
