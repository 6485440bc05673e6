"""Shared fixtures. Every storage test runs on SQLite and, when ROADCARGO_TEST_PG names a PostgreSQL
server, on PostgreSQL too: a database is created for the run and dropped at its end."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from gateway import db, tables
from gateway.clock import HONG_KONG, FixedClock
from gateway.config import Config
from gateway.context import Gateway
from tests.factories import Parties

PG_URL = os.environ.get("ROADCARGO_TEST_PG")
STORAGES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)]
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=HONG_KONG)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "gateway.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this test run, migrated once; dropped (WITH FORCE) at the end."""
    if not PG_URL:
        pytest.skip("ROADCARGO_TEST_PG is not set: PostgreSQL tests skipped")
    name = f"roadcargo_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate(engine: Engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in reversed(tables.metadata.sorted_tables))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=STORAGES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a fresh SQLite file, or the run's PostgreSQL database emptied."""
    if request.param == "sqlite":
        path = tmp_path / "gateway.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("pg_database")
        engine = create_engine(url)
        _truncate(engine)
        engine.dispose()
        yield url


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def gw(db_url: str, clock: FixedClock) -> Iterator[Gateway]:
    engine = db.make_engine(db_url)
    yield Gateway(engine, Config(), clock)
    engine.dispose()


@pytest.fixture
def party(gw: Gateway) -> Parties:
    return Parties(gw)


class Asking:
    """Asks an Immigration client the kiosk's question the way the kiosk route does (``how``):
    ``blocking``, with ``clear`` on the caller's thread; or ``event-loop``, with ``clear_async`` awaited
    on an event loop that lives as long as the test (its kept-alive connections too), the client's WSDL
    loaded first (``warm``) as it is in a serving process, and ``clear`` only when the client cannot be
    awaited (its WSDL would not load), as the route falls back."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.loop = asyncio.new_event_loop() if how == "event-loop" else None

    def __call__(self, client: Any, query: Any) -> Any:
        if self.loop is None:
            return client.clear(query)
        client.warm()
        if not client.asynchronous():
            return client.clear(query)
        return self.loop.run_until_complete(client.clear_async(query))


@pytest.fixture(params=["blocking", "event-loop"])
def asking(request: pytest.FixtureRequest) -> Iterator[Asking]:
    how = Asking(request.param)
    yield how
    if how.loop is not None:
        how.loop.close()
