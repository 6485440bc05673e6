"""Database engines and migrations: SQLite (WAL) under the data directory by default, PostgreSQL in
production (design section 11)."""

from __future__ import annotations

import fcntl
import logging
import os
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway import prepared
from gateway.errors import Unavailable


def default_url(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir) / 'gateway.db'}"


# Connections a process may hold at once: its eight database threads, eight kiosk decisions on the event
# loop, sixteen service threads (adapters.http_api) and the background work's few threads. Past that a
# request waits for one (``POOL_WAIT`` seconds at most) and is then answered 503 UNAVAILABLE; with fewer
# than that (twenty kept and ten more, before), a busy process could make its event loop wait.
POOL_KEPT = 20
POOL_MOST = 40
POOL_WAIT = 30.0


def make_engine(url: str, pool_wait: float = POOL_WAIT) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        on_disk = _sqlite_file(parsed)
        if on_disk:
            Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            **({"pool_size": 5, "max_overflow": POOL_MOST - 5, "pool_timeout": pool_wait} if on_disk else {}),
        )
        _sqlite_pragmas(engine, parsed.database if on_disk else None)
        return engine
    engine = create_engine(url, **_server_engine_options(parsed.query), pool_timeout=pool_wait)
    if engine.dialect.driver == "psycopg":
        _quiet_socket_ping(engine)
        prepared.attach(engine)  # its pipeline blocks keep their statements in order
    return engine


# -- engine options of a database server ---------------------------------------------------
# After PostgreSQL restarts, fails over or has its backends terminated, the gateway recovers by itself:
# every connection is pinged as it leaves the pool (a dead one is replaced, the request never sees it),
# and the first disconnect seen on a connection in use invalidates the whole pool, so the others are
# not tried one by one. The request that was using that connection fails with OperationalError, which
# the HTTP edge answers 503 UNAVAILABLE with Retry-After (its transaction rolled back, unless the break
# came during the COMMIT itself: a retry tells). Connecting gives
# up after CONNECT_TIMEOUT seconds instead of hanging, and TCP keepalives notice a server that vanished
# without closing its connections (a failover to another machine). The URL's own query parameters win.
# Twenty connections are kept open (``POOL_KEPT``), as many as a process's requests use at once but in
# bursts, and up to ``POOL_MOST`` opened: a pool that kept fewer would close the extra connections as they
# come back and open new ones for the next requests, each a new PostgreSQL backend that has lost the
# statements gateway.prepared prepared on it.
CONNECT_TIMEOUT = 10
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def _server_engine_options(query: Any) -> dict[str, Any]:
    connect_args: dict[str, Any] = {
        key: value
        for key, value in {"connect_timeout": CONNECT_TIMEOUT, **_KEEPALIVES}.items()
        if key not in query
    }
    # The hot statements are prepared by gateway.prepared, not by psycopg: psycopg's ROLLBACK deallocates
    # every prepared statement of its connection (ours too) once it has prepared any of its own.
    connect_args["prepare_threshold"] = None
    return {
        "pool_pre_ping": True,
        "pool_size": POOL_KEPT,
        "max_overflow": POOL_MOST - POOL_KEPT,
        "connect_args": connect_args,
    }


def _quiet_socket_ping(engine: Engine) -> None:
    """The pre-ping of a pooled PostgreSQL connection without a round trip when it can tell.

    An idle connection in the pool has nothing to read: the server writes to it only when it is going
    away (a terminated backend, a shutdown or restart: a FATAL message, then the close) or the socket
    broke. So a connection whose socket has nothing to read and is open is alive, as ``SELECT 1`` would
    say (it cannot notice a server gone without closing its connections either: the keepalives do);
    one with something to read gets the full ``SELECT 1`` ping, which tells. This saves a round trip on
    every checkout, two a typical request."""
    full_ping = engine.dialect.do_ping

    def do_ping(dbapi_connection: Any) -> bool:
        pgconn = getattr(dbapi_connection, "pgconn", None)
        if pgconn is None or dbapi_connection.closed or pgconn.status != 0:  # 0: CONNECTION_OK
            return full_ping(dbapi_connection)
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            return full_ping(dbapi_connection)
        return True

    engine.dialect.do_ping = do_ping  # type: ignore[method-assign]


_writing = threading.local()

log = logging.getLogger("roadcargo.db")

# PostgreSQL's SQLSTATEs for a transaction it undid because of another one: a deadlock (two requests
# locking the same rows in opposite orders) and a serialization failure. The request did nothing; the
# same request again normally goes through.
_COLLISIONS = frozenset({"40P01", "40001"})


def unavailable(exc: OperationalError | PoolTimeout) -> Unavailable:
    """What every channel answers a request the database failed (``OperationalError``) or that found
    every connection of the process in use (``PoolTimeout``): UNAVAILABLE, nothing accepted, retry; soon
    when another change collided with it or the connections were busy, later when the database is away."""
    if isinstance(exc, PoolTimeout):
        log.warning("request refused: all %d database connections of the process stayed in use", POOL_MOST)
        return Unavailable(
            "the gateway is too busy to reach its database now; nothing was accepted, retry", 1
        )
    if getattr(exc.orig, "sqlstate", None) in _COLLISIONS:
        log.warning("request undone by the database, in a collision: %s", exc.orig)
        return Unavailable(
            "another change to the same records collided with this one and the database undid this one; "
            "nothing was accepted, retry",
            1,
        )
    log.warning("database unavailable: %s", exc.orig)
    return Unavailable("the database is unavailable; nothing was accepted, retry", 5)


# SQLite's write-ahead log is copied back into the database file by a checkpoint, which syncs both files
# to disk. Left to SQLite, the transaction whose COMMIT takes the log past 1,000 pages does it, holding the
# writers' lock (``_WriterQueue``) for it: every write of every process then waits for the disk, 3 to 10 ms
# a time and hundreds when the disk is busy, about every 250 writes at kiosk rates (bench/RESULTS.md,
# session 9). Instead the background work checkpoints every ``CHECKPOINT_EVERY`` seconds, outside any
# writer's turn (``checkpoint``, gateway.worker), and a writer checkpoints only past ``WAL_SAFETY_NET``
# pages (40 MB): a process group that runs no background work at all (every ``serve`` with
# ``--no-background`` and no ``roadcargo worker``) still bounds its log.
WAL_SAFETY_NET = 10_000
CHECKPOINT_EVERY = 0.5
# The log starts again from its beginning only when a writer begins with all of it in the database file.
# A checkpoint outside the writers' turn leaves the frames written while it ran (a 20 ms copy at kiosk
# rates: ten writers), so under a steady stream of writers that moment never came: the log grew by 28
# pages a kiosk decision to the safety net, every copy of it took longer, and the writer that met the
# safety net held every other write up for 25-40 ms, every 0.75 s at 500 decisions a second (bench/
# RESULTS.md, session 11). So once the log is past ``RESTART_PAGES``, the checkpoint copies the bulk
# outside the writers' turn and then the few frames written meanwhile inside it, writing nothing: the
# next writer finds the whole log copied and starts it again from its beginning.
RESTART_PAGES = 1_000


def _sqlite_file(url: URL) -> bool:
    """Whether a SQLite URL names a file (not an in-memory database)."""
    return url.database not in (None, "", ":memory:")


def checkpoint_wanted(engine: Engine) -> bool:
    """Whether ``engine`` is a SQLite file, whose log the background work checkpoints."""
    return engine.dialect.name == "sqlite" and _sqlite_file(engine.url)


def checkpoint(engine: Engine) -> tuple[int, int, int] | None:
    """Copy what SQLite's write-ahead log holds back into the database file without waiting for a
    writer (a PASSIVE checkpoint: pages a reader still needs are copied next time), and, once the log
    is past ``RESTART_PAGES``, what was written meanwhile in the writers' turn (they wait for that
    copy, a few milliseconds): SQLite's (busy, pages in the log, pages copied) of the last copy; None
    for a database with no such log (PostgreSQL, an in-memory SQLite)."""
    if not checkpoint_wanted(engine):
        return None
    done = _passive(engine)
    busy, logged, copied = done
    if not busy and copied == logged >= RESTART_PAGES:  # (a reader still on older pages: next time)
        with engine.begin():  # the writers' turn, taken and given back without writing: no writer
            done = _passive(engine)  # between this copy and the next writer, who starts the log again
    return done


def _passive(engine: Engine) -> tuple[int, int, int]:
    raw = engine.raw_connection()  # autocommit (isolation_level None): no BEGIN, no lock of ours
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        busy, logged, copied = cursor.fetchone() or (1, -1, -1)  # (one row, always)
        cursor.close()
    finally:
        raw.close()
    return (int(busy), int(logged), int(copied))


def _sqlite_pragmas(engine: Engine, path: str | None = None) -> None:
    """SQLite transactions: ``engine.begin()`` (the writers) is ``BEGIN IMMEDIATE``, ``engine.connect()``
    (the readers) a plain deferred ``BEGIN`` that takes no lock at all in WAL mode.

    pysqlite's own transaction handling defers BEGIN and cannot take the write lock up front; two
    writers that both read first would then deadlock. So a writer takes the write lock up front and
    others queue: first on a lock of this process (they wait their turn instead of polling in SQLite's
    busy handler, whose sleeps of up to 100 ms made the tail latency), then, against other processes on
    the same file (``path``), on ``_WriterQueue``. Readers never wait for writers. Rule for code: every
    write goes in ``engine.begin()``; ``engine.connect()`` is for reading.
    """
    queue = threading.RLock()  # re-entrant: a nested writer fails on busy_timeout as before, not here
    dbapi_errors = engine.dialect.loaded_dbapi.Error

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_NET}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        statement = "BEGIN IMMEDIATE" if getattr(_writing, "depth", 0) else "BEGIN"
        # On the driver's connection: SQLAlchemy's execution machinery for a statement without
        # parameters or rows cost more than the BEGIN (a tenth of a kiosk decision's CPU). A failure
        # (the database locked past busy_timeout, the disk gone) is raised as SQLAlchemy's exception.
        dbapi = conn.connection.driver_connection
        try:
            dbapi.execute(statement)
        except dbapi_errors as exc:
            conn._handle_dbapi_exception(exc, statement, (), None, None)

    connect = engine.connect
    across = _WriterQueue(f"{path}-writers.lock") if path else None

    @contextmanager
    def begin() -> Iterator[Connection]:
        with queue, across.turn() if across is not None else nullcontext(), connect() as conn:
            _writing.depth = getattr(_writing, "depth", 0) + 1
            try:
                with conn.begin():
                    _writing.depth -= 1  # BEGIN IMMEDIATE is sent; what runs inside reads normally
                    try:
                        yield conn
                    finally:
                        _writing.depth += 1
            finally:
                _writing.depth -= 1

    engine.begin = begin  # type: ignore[method-assign]


class _WriterQueue:
    """The queue of SQLite writers across processes: an exclusive ``flock`` on a file beside the
    database (``<database>-writers.lock``), taken before ``BEGIN IMMEDIATE`` and let go after the
    COMMIT or ROLLBACK.

    Within a process, writers queue on a lock of the process. Between processes (``serve`` with a
    ``roadcargo worker``, or two ``serve --no-background``), they used to meet in SQLite's busy
    handler, which sleeps 1, 2, 5, 10 ... up to 100 ms between tries: a writer that found the lock
    taken for the half millisecond of another's transaction slept for milliseconds, and the queue
    behind it grew. Here a waiter tries again after 50 us, doubling to at most 1 ms, so it gets its
    turn about when the other's transaction ends (bench/RESULTS.md: kiosk decisions with two
    processes and a worker). The kernel lets go of the lock of a process that dies. A holder that
    hangs keeps the others waiting no longer than SQLite would have (``WAIT``); then they go on to
    SQLite's own lock and its ``busy_timeout``, as before. Only the outermost transaction of a thread
    takes the lock (a nested writer fails in SQLite as before), and a process opens the file for itself
    (a child of ``fork`` would share its parent's lock)."""

    FIRST_PAUSE = 0.00005
    LONGEST_PAUSE = 0.001
    WAIT = 30.0  # seconds: SQLite's busy_timeout (make_engine)

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._pid = 0
        self._depth = 0  # changed only under the process's lock of writers

    @contextmanager
    def turn(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        fd = self._file()
        held = self._take(fd)
        self._depth = 1
        try:
            yield
        finally:
            self._depth = 0
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _file(self) -> int:
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def _take(self, fd: int) -> bool:
        pause = self.FIRST_PAUSE
        deadline = 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.WAIT
                elif now >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, self.LONGEST_PAUSE)


@contextmanager
def immediate(engine: Engine) -> Iterator[None]:
    """Within this block every transaction ``engine.connect()`` starts is ``BEGIN IMMEDIATE`` too (for
    code that writes through a connection it did not get from ``engine.begin()``, such as Alembic)."""
    _writing.depth = getattr(_writing, "depth", 0) + 1
    try:
        yield
    finally:
        _writing.depth -= 1


def _alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("gateway").joinpath("migrations")))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (``roadcargo db upgrade``)."""
    with immediate(engine):
        command.upgrade(_alembic_config(engine), "head")


def head_revisions() -> set[str]:
    script = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://")))
    return set(script.get_heads())


def current_revisions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def current_revision(engine: Engine) -> str:
    """The schema's revision(s), for people to read."""
    return ", ".join(sorted(current_revisions(engine))) or "none"


def schema_is_current(engine: Engine) -> bool:
    return current_revisions(engine) == head_revisions()
