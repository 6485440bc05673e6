"""The statements of the hot paths, run on the database driver itself (SQLite's cursor, PostgreSQL's libpq).

Every statement of the gateway is built with SQLAlchemy Core. For the fifteen or so that each bundle and
each kiosk decision runs, SQLAlchemy's work per execution (an execution context, events, parameters built
anew from the compiled statement, a result object with its metadata) took about 40% of the CPU of a
bundle, measured in-process: more than SQLite's own work (bench/RESULTS.md, "session 4"). ``Prepared``
compiles such a statement once per dialect with SQLAlchemy's own compiler and runs it on the DBAPI
connection behind the SQLAlchemy ``Connection``, inside that connection's transaction, with the bind and
result conversions of the statement's column types (so the rows stored and read are the ones
``Connection.execute`` would store and read). Driver errors are raised as SQLAlchemy's exceptions and a
lost connection is invalidated, exactly as ``Connection.execute`` does, so callers and the HTTP error
mapping see no difference.

What it covers is what the hot paths need: SELECT, INSERT (one row, many rows, or one row with its new
primary key), UPDATE and DELETE, with plain and expanding (``IN``) bound parameters. A statement whose
INSERT needs a Python-side column default, or an ``IN`` list that is empty, goes through SQLAlchemy.

On PostgreSQL each statement is a network round trip, and each round trip costs both sides more CPU
than a hot statement's own work (a kiosk decision made fifteen of them). Statements that do not need
each other's answers are sent together in a ``pipeline`` block: ``send`` queues a statement and returns
its ``Pending`` answer, read once the block has ended; the block's end is one round trip for all of them,
and a COMMIT inside the block goes with them. Elsewhere (SQLite) a ``pipeline`` block changes nothing:
each statement runs when it is sent.

On PostgreSQL the statements go through psycopg's low-level ``pq`` interface rather than its cursors:
a block's statements are put in libpq's buffer, flushed once with a Sync, and their answers read in one
go (libpq's pipeline); a statement outside a block is a batch of one, its BEGIN with it. psycopg's own
pipeline mode polls and sends once per statement, waking the server for each: 5x the client CPU and
1.5x the server's for a dozen statements (bench/pg_pipeline.py, bench/RESULTS.md). Each statement is
prepared on the server at its first use on a connection (psycopg's own preparing is off, gateway.db: its
ROLLBACK deallocates every prepared statement of the connection). Parameters go through psycopg's dumpers,
typed by the server from the casts SQLAlchemy writes into the SQL: as text, but a datetime (always aware,
gateway.tables.UtcDateTime) cast to a time with a zone in PostgreSQL's binary form, which psycopg
computes instead of formatting the text (fourteen a kiosk decision); rows come back through psycopg's
loaders; errors are psycopg's, wrapped by SQLAlchemy as ``Connection.execute`` wraps them.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import select
from collections import namedtuple
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, bindparam, event
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import BindParameter, ClauseElement
from sqlalchemy.util.concurrency import await_only, in_greenlet

_REQUIRED = object()  # a bound parameter the caller must give
MANY_ROWS = 500  # rows per INSERT of many rows (PostgreSQL takes at most 65,535 parameters a statement)

Binder = tuple[str, int | None, Callable[[Any], Any] | None, Any]


class _Plan:
    """One statement compiled for one dialect, one set of INSERT columns and one length of each
    ``IN`` list."""

    __slots__ = ("binders", "cells", "processors", "row", "server_sql", "sql")

    def __init__(
        self,
        sql: str,
        binders: list[Binder],
        named: bool,
        row: Any,
        processors: list[tuple[int, Callable[[Any], Any]]],
    ) -> None:
        self.sql = sql
        self.binders = binders
        self.row = row
        self.processors = processors
        self.cells: list[tuple[int, str, Callable[[Any], Any] | None]] | None = None  # see row_values
        # PostgreSQL's own form, $1, $2 ... in the order of ``values``, for the server-side statement
        # (psycopg's dialect writes pyformat, SQLite's qmark).
        self.server_sql = _numbered(sql, binders).encode() if named else b""
        if named:
            _STAMPED[self.server_sql] = tuple(int(n) - 1 for n in _STAMP.findall(self.server_sql))

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        """The statement's parameters in the order of its placeholders (SQLite's ``?``, PostgreSQL's
        ``$n`` of ``server_sql``): the list both send, with no names on the way."""
        out: list[Any] = []
        for name, index, processor, default in self.binders:
            value = params.get(name, default)
            if value is _REQUIRED:
                raise KeyError(f"bound parameter {name!r} was not given")
            if index is not None:
                value = value[index]
            out.append(processor(value) if processor is not None else value)
        return out

    def row_values(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """``values`` of a many-row INSERT (``Prepared._insert_rows``), taken from the rows themselves:
        the binder ``{key}__{i}`` is row i's ``key``."""
        cells = self.cells
        if cells is None:
            split = [(name.rpartition("__"), processor) for name, _index, processor, _default in self.binders]
            cells = self.cells = [(int(i), key, processor) for (key, _sep, i), processor in split]
        return [rows[i][key] if processor is None else processor(rows[i][key]) for i, key, processor in cells]


# The parameters PostgreSQL is told are times with a zone (SQLAlchemy casts every typed parameter in the
# SQL), by statement: theirs go in binary form (``_Batch._exchange``). The same text is typed the same
# way, so the statement's text is its key.
_STAMP = re.compile(rb"\$(\d+)::TIMESTAMP WITH TIME ZONE")
_STAMPED: dict[bytes, tuple[int, ...]] = {}


def _named(name: str, index: int | None) -> str:
    return name if index is None else f"{name}__{index}"


_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s|%%")


def _numbered(sql: str, binders: list[Binder]) -> str:
    """pyformat SQL (``%(name)s``, ``%%``) as PostgreSQL's numbered parameters, numbered as ``values``
    gives them."""
    number = {_named(name, index): i + 1 for i, (name, index, _p, _d) in enumerate(binders)}
    return _PLACEHOLDER.sub(lambda m: f"${number[m.group(1)]}" if m.group(1) else "%", sql)


class Prepared:
    """A Core statement, compiled once per dialect and executed on the driver's cursor."""

    __slots__ = ("_expanding", "_insert", "_plans", "_returning", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement: Any = statement
        self._plans: dict[Any, _Plan] = {}
        self._expanding = tuple(
            dict.fromkeys(
                b.key for b in visitors.iterate(statement) if isinstance(b, BindParameter) and b.expanding
            )
        )
        self._returning: Any = None
        self._insert = isinstance(statement, Insert)
        if isinstance(statement, Insert):
            # An INSERT is compiled "inline", without the implicit RETURNING of its key; one asked for
            # its new key returns it (PostgreSQL) or reads lastrowid (SQLite).
            keys = list(statement.table.primary_key.columns)  # type: ignore[attr-defined]
            if len(keys) == 1:
                self._returning = statement.returning(keys[0])
            self.statement = statement.inline()

    # -- running --------------------------------------------------------------------------------------

    def all(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        """Every row, as named tuples (attribute access like SQLAlchemy's rows)."""
        params = params or {}
        if self._empty_list(params):
            return list(conn.execute(self.statement, params))
        return self.send(conn, params).all()

    def first(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first row, or None."""
        params = params or {}
        if self._empty_list(params):
            return conn.execute(self.statement, params).first()
        return self.send(conn, params).first()

    def scalar(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        row = self.first(conn, params)
        return None if row is None else row[0]

    def run(
        self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    ) -> int:
        """Execute for its effect: one set of parameters, or a list of them (executemany). Returns the
        number of rows affected."""
        if (params is None or isinstance(params, Mapping)) and self._empty_list(params or {}):
            return conn.execute(self.statement, params or {}).rowcount
        return self.send(conn, params).rowcount()

    def insert(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """INSERT one row and return its new (integer) primary key."""
        return self.send(conn, params, returning=True).key()

    def send(
        self,
        conn: Connection,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        returning: bool = False,
    ) -> Pending:
        """Send the statement (one set of parameters, or a list of them) and return its answer to read
        later: in a ``pipeline`` block, once the block has ended (reading it earlier waits for it);
        elsewhere it has run already. ``returning``: an INSERT of one row whose new key ``key()`` gives.
        An empty ``IN`` list cannot be sent: read it with ``all``, ``first`` or ``run``."""
        dialect = conn.dialect
        if params is None or isinstance(params, Mapping):
            one: Mapping[str, Any] = params or {}
            if self._empty_list(one):
                raise ValueError("an empty IN list cannot be sent: run it with all(), first() or run()")
            if returning:
                if self._returning is None:
                    raise TypeError("returning is for INSERTs into a table with a one-column key")
                if dialect.name == "sqlite":  # SQLite gives the key as lastrowid
                    plan = self._plan(dialect, one)
                    cursor = self._execute(conn, plan, plan.values(one))
                    return Pending(conn, plan, [cursor], cursor.lastrowid)
                plan = self._plan(dialect, one, returning=True)
            else:
                plan = self._plan(dialect, one)
            return Pending(conn, plan, [self._execute(conn, plan, plan.values(one))])
        if returning:
            raise TypeError("returning is for one row")
        if not params:
            return Pending(conn, None, [])
        if self._expanding:
            raise TypeError("an IN list cannot run with many parameter sets")
        if self._insert and dialect.name == "postgresql":
            return self._insert_rows(conn, params)
        plan = self._plan(dialect, params[0])
        cursor = self._execute(conn, plan, [plan.values(p) for p in params], many=True)
        return Pending(conn, plan, [cursor])

    def _insert_rows(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> Pending:
        """Many rows into PostgreSQL as one INSERT with a VALUES list per chunk: psycopg's executemany
        (a pipeline) cost four times the client CPU of one statement for the one to three rows of a
        bundle's events or audit rows."""
        keys = tuple(rows[0])
        cursors = []
        plan = None
        for start in range(0, len(rows), MANY_ROWS):
            chunk = rows[start : start + MANY_ROWS]
            key = (conn.dialect.name, "rows", keys, len(chunk))
            plan = self._plans.get(key)
            if plan is None:
                table = self.statement.table
                listed = self.statement.values(
                    [
                        {k: bindparam(_named(k, i), type_=table.c[k].type) for k in keys}
                        for i in range(len(chunk))
                    ]
                )
                plan = self._plans[key] = _compile(listed, conn.dialect, None, {})
            cursors.append(self._execute(conn, plan, plan.row_values(chunk)))
        return Pending(conn, plan, cursors)

    # -- internals ------------------------------------------------------------------------------------

    def _empty_list(self, params: Mapping[str, Any]) -> bool:
        return any(not params.get(name) for name in self._expanding)

    @staticmethod
    def _row(plan: _Plan, raw: Sequence[Any]) -> Any:
        if plan.processors:
            values = list(raw)
            for i, processor in plan.processors:
                values[i] = processor(values[i])
            return plan.row._make(values)
        return plan.row._make(raw)

    @staticmethod
    def _execute(conn: Connection, plan: _Plan, values: Any, many: bool = False) -> Any:
        if not conn.in_transaction():
            conn.begin()  # as Connection.execute would begin it (and our SQLite BEGIN with it)
        if plan.server_sql:  # PostgreSQL: through libpq, in the block's batch or in one of its own
            sets = values if many else [values]
            batch = conn.info.get(_BATCH)
            if batch is not None:
                return batch.add(plan, sets)
            alone = _Batch(conn, conn.connection.driver_connection)
            answer = alone.add(plan, sets)
            alone.run()
            return answer
        dbapi = conn.connection.driver_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            if many:
                cursor.executemany(plan.sql, values)
            else:
                cursor.execute(plan.sql, values)
        except conn.dialect.loaded_dbapi.Error as exc:
            cursor.close()
            # SQLAlchemy's own handling: wrap in its exception classes, invalidate a lost connection.
            conn._handle_dbapi_exception(exc, plan.sql, values, None, None)
        return cursor

    def _plan(self, dialect: Dialect, params: Mapping[str, Any], returning: bool = False) -> _Plan:
        insert_keys = tuple(params) if self._insert else None
        sizes = tuple(len(params[name]) for name in self._expanding)
        key = (dialect.name, returning, insert_keys, sizes)
        plan = self._plans.get(key)
        if plan is None:
            statement = self._returning if returning else self.statement
            assert statement is not None
            plan = self._plans[key] = _compile(
                statement, dialect, insert_keys, dict(zip(self._expanding, sizes, strict=True))
            )
        return plan


class Pending:
    """The answer of a statement sent with ``Prepared.send``: read it once (rows, a count, a new key)."""

    __slots__ = ("_conn", "_cursors", "_lastrowid", "_plan")

    def __init__(
        self, conn: Connection, plan: _Plan | None, cursors: list[Any], lastrowid: Any = None
    ) -> None:
        self._conn = conn
        self._plan = plan
        self._cursors = cursors
        self._lastrowid = lastrowid

    def all(self) -> list[Any]:
        """Every row, as named tuples."""
        (cursor,) = self._cursors
        rows = self._read(cursor, cursor.fetchall)
        plan = self._plan
        assert plan is not None
        return [Prepared._row(plan, r) for r in rows]

    def first(self) -> Any:
        """The first row, or None."""
        (cursor,) = self._cursors
        row = self._read(cursor, cursor.fetchone)
        plan = self._plan
        assert plan is not None
        return None if row is None else Prepared._row(plan, row)

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]

    def key(self) -> int:
        """The new primary key of an INSERT sent with ``returning=True``."""
        if self._lastrowid is not None:
            (cursor,) = self._cursors
            cursor.close()
            return int(self._lastrowid)
        row = self.first()
        return int(row[0])

    def rowcount(self) -> int:
        """The number of rows the statement affected (in a pipeline, waiting for the answer)."""
        count = 0
        for cursor in self._cursors:
            count += int(self._read(cursor, _rowcount(cursor)))
        return count

    def _read(self, cursor: Any, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except self._conn.dialect.loaded_dbapi.Error as exc:
            # An error of a pipelined statement arrives with its answer, not when it was sent.
            self._conn._handle_dbapi_exception(exc, self._plan.sql if self._plan else "", (), None, None)
        finally:
            if cursor is not None:
                cursor.close()


def _rowcount(cursor: Any) -> Callable[[], int]:
    return lambda: int(cursor.rowcount)


@contextmanager
def each_statement_alone(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements each commit (or read) on their own: on PostgreSQL in autocommit,
    with no BEGIN and ROLLBACK round trips around them (read committed gives each statement its own
    snapshot anyway), for work of one statement or reads that are checked again later. Elsewhere a
    plain ``engine.connect()``."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """Statements sent in the block go to PostgreSQL together, without waiting for each one's answer: the
    block ends once all are answered, one round trip for all of them (a COMMIT in the block included).

    ``Prepared.send`` (and ``Connection.commit``) are what belong in the block. A statement run through
    SQLAlchemy's ``Connection.execute`` in it first sends what the block holds (a round trip), so that the
    statements still run in their order. The first error aborts the statements after it and is raised as
    SQLAlchemy's exception, by the block's end, by the COMMIT or by reading its answer; a block left by an
    exception sends nothing. Elsewhere than PostgreSQL with psycopg the block changes nothing."""
    if conn.dialect.driver != "psycopg":
        yield
        return
    if not conn.in_transaction():
        conn.begin()  # as Connection.execute would begin it
    info = conn.info  # the connection's own: it may be invalidated in the block
    if info.get(_BATCH) is not None:  # within another block: one batch
        yield
        return
    dbapi: Any = conn.connection.driver_connection
    batch = info[_BATCH] = _Batch(conn, dbapi)
    try:
        yield
        batch.run()
    finally:
        batch.closed = True
        info.pop(_BATCH, None)
        # A COMMIT sent after a statement that failed is skipped, and the transaction stays aborted;
        # SQLAlchemy, whose commit failed, counts it as ended and would not roll it back.
        if not dbapi.closed and not conn.in_transaction() and dbapi.pgconn.transaction_status == _INERROR:
            dbapi.rollback()


_INERROR = 3  # libpq's PQTRANS_INERROR: in a failed transaction block
_IDLE = 0  # PQTRANS_IDLE: no transaction open
_BATCH = "roadcargo.pipeline"  # Connection.info: the block's batch while it is open
_STATEMENTS = "roadcargo.statements"  # Connection.info: SQL -> name of the statements prepared on it
_TRANSFORMER = "roadcargo.transformer"  # Connection.info: psycopg's adaptation context of the connection
_NAMES = itertools.count(1)
# One step of a batch: (kind, SQL or command, parameters in $n order, answer). Kinds: "execute" (a
# statement), "command" (BEGIN, COMMIT), "begin" (where the batch's own statements start: a BEGIN if no
# transaction is open).
_Step = tuple[str, bytes, list[Any], "_Answer | None"]
# What a connection prepares, so that the server's memory for them stays bounded: a hot statement has
# a few dozen parameters (three rows of events, an IN list of a bundle's CCRNs); one with more (a bulk
# INSERT of hundreds of rows, an IN list of a thousand) is parsed for each use, as are statements past
# the hundredth on a connection (psycopg's own default bound).
PREPARED_PARAMETERS = 64
PREPARED = 100


def attach(engine: Engine) -> None:
    """Let a PostgreSQL engine's connections keep a ``pipeline`` block in order: a COMMIT in the block is
    sent with the block's statements, and a statement through ``Connection.execute`` after them."""

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Dialect, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        connect = _loop_connection().connect
        if in_greenlet():  # up to the connect timeout (a server gone): on a thread, not the event loop's
            return await_only(asyncio.to_thread(connect, *cargs, **cparams))
        return connect(*cargs, **cparams)

    @event.listens_for(engine, "commit")
    def _commit(conn: Connection) -> None:
        batch = conn.info.get(_BATCH)
        if batch is not None:
            batch.commit()  # psycopg's own commit then finds the transaction ended and sends nothing

    @event.listens_for(engine, "before_cursor_execute")
    def _execute(conn: Connection, *_args: Any) -> None:
        batch = conn.info.get(_BATCH)
        if batch is not None:
            batch.run()
        elif _ahead.get() is not None:
            _Batch(conn, conn.connection.driver_connection).run()  # the statement sent ahead goes first


class _Answer:
    """What one queued statement (or a list of parameter sets of one statement) answers: read like a
    cursor, once its batch has run (reading it earlier runs the batch)."""

    __slots__ = ("_batch", "_count", "error", "rows")

    def __init__(self, batch: _Batch) -> None:
        self._batch = batch
        self.rows: list[tuple[Any, ...]] = []
        self._count = 0
        self.error: Exception | None = None

    def _ready(self) -> None:
        if self._batch.holding():
            self._batch.run()
        if self.error is not None:
            raise self.error

    def fetchall(self) -> list[tuple[Any, ...]]:
        self._ready()
        return self.rows

    def fetchone(self) -> tuple[Any, ...] | None:
        self._ready()
        return self.rows[0] if self.rows else None

    @property
    def rowcount(self) -> int:
        self._ready()
        return self._count

    def close(self) -> None:
        pass


class _Batch:
    """The statements of one ``pipeline`` block on one psycopg connection, sent with libpq's pipeline."""

    def __init__(self, conn: Connection, dbapi: Any) -> None:
        self.conn = conn
        self.dbapi = dbapi
        self.closed = False
        self._queue: list[_Step] = []

    def add(self, plan: _Plan, parameter_sets: list[Any]) -> _Answer:
        answer = _Answer(self)
        self._queue += [("execute", plan.server_sql, values, answer) for values in parameter_sets]
        return answer

    def holding(self) -> bool:
        """Whether statements wait to be sent."""
        return bool(self._queue)

    def commit(self) -> None:
        if not self.dbapi.autocommit:
            self._queue.append(("command", b"COMMIT", [], None))
        self.run()

    def run(self) -> None:
        """Send what is queued and read every answer; raises the first error as SQLAlchemy's."""
        lead = _claim_ahead(self.conn.engine) if self.dbapi.pgconn.transaction_status == _IDLE else []
        if not self._queue and not lead:
            return
        if self.closed and self._queue:  # left by an exception: its statements were never sent
            raise RuntimeError("the statements of this pipeline block were not sent: it ended with an error")
        own: list[_Step] = [("begin", b"", [], None), *self._queue] if self._queue else []
        queue, self._queue = [*lead, *own], []
        dbapi, conn = self.dbapi, self.conn
        pgconn = dbapi.pgconn
        from psycopg import Error

        try:
            first, failed_sql = self._exchange(pgconn, queue)
        except BaseException as exc:
            if not dbapi.closed and pgconn.pipeline_status:
                # Stopped half-way through the exchange (a broken connection, or anything else): what the
                # connection still holds cannot be told, so it is not used again.
                conn.invalidate(exc if isinstance(exc, Exception) else None)
            if isinstance(exc, Error):  # SQLAlchemy's exception, as for any statement
                conn._handle_dbapi_exception(exc, "(pipeline)", (), None, None)
            raise
        if first is not None:
            conn._handle_dbapi_exception(first, failed_sql.decode(errors="replace"), (), None, None)

    def _exchange(self, pgconn: Any, queue: list[_Step]) -> tuple[Exception | None, bytes]:
        """Send the steps, read their answers: the first error, if any, with its statement's SQL."""
        from psycopg import errors, pq
        from psycopg.adapt import PyFormat, Transformer

        info = self.conn.info
        transformer = info.get(_TRANSFORMER)
        if transformer is None:  # one a connection: it keeps the dumpers and loaders it has looked up
            transformer = info[_TRANSFORMER] = Transformer(self.dbapi)
        # The parameters first: one that cannot be sent (a NUL in a text) fails before anything is.
        # Times with a zone go in binary form where the statement casts them so: psycopg's binary dumper
        # is arithmetic, its text one CPython's str(), 0.19 against 2.5 us each here (bench/RESULTS.md,
        # session 10); everything else as text, typed by the server from the casts.
        text, binary = PyFormat.TEXT, PyFormat.BINARY
        dumped: list[tuple[list[Any], list[Any] | None]] = []
        for kind, sql, values, _answer in queue:
            if kind != "execute":
                dumped.append(([], None))
                continue
            wanted = [text] * len(values)
            stamped = _STAMPED.get(sql, ())
            for i in stamped:
                if type(values[i]) is datetime:
                    wanted[i] = binary
            params = list(transformer.dump_sequence(values, wanted))
            dumped.append((params, list(transformer.formats or ()) if stamped else None))
        prepared: dict[bytes, bytes] = info.setdefault(_STATEMENTS, {})
        steps: list[tuple[str, bytes, _Answer | None]] = []  # what each answer read back belongs to
        idle = pgconn.transaction_status == _IDLE and not self.dbapi.autocommit
        pgconn.enter_pipeline_mode()
        preparing: dict[bytes, bytes] = {}
        for (kind, sql, _values, answer), (params, formats) in zip(queue, dumped, strict=True):
            if kind == "begin":  # where the queue's own statements start: their transaction, if none is open
                if idle:
                    pgconn.send_query_params(_begin(self.dbapi), None)
                    steps.append(("command", b"BEGIN", None))
                continue
            if kind == "command":
                pgconn.send_query_params(sql, None)
                steps.append((kind, sql, None))
                continue
            name = prepared.get(sql) or preparing.get(sql)
            if (
                name is None
                and len(params) <= PREPARED_PARAMETERS
                and len(prepared) + len(preparing) < PREPARED
            ):
                name = preparing[sql] = f"_rc_{next(_NAMES)}".encode()
                pgconn.send_prepare(name, sql, None)  # typed by the server, from the SQL's casts
                steps.append(("prepare", sql, None))
            if name is None:  # parsed and planned for this use only
                pgconn.send_query_params(sql, params, None, formats)
            else:
                pgconn.send_query_prepared(name, params, formats)
            steps.append(("execute", sql, answer))
        pgconn.pipeline_sync()
        while pgconn.flush():  # what did not fit the socket: send it as the server reads, reading too
            if _wait(pgconn.socket, write=True):
                pgconn.consume_input()
        first: Exception | None = None
        failed_sql = b""
        results: list[Any] = []
        index = 0
        # The statuses compared for every answer, looked up once (enum members are attribute lookups).
        sync, fatal, aborted, tuples = (
            pq.ExecStatus.PIPELINE_SYNC,
            pq.ExecStatus.FATAL_ERROR,
            pq.ExecStatus.PIPELINE_ABORTED,
            pq.ExecStatus.TUPLES_OK,
        )
        text_format = pq.Format.TEXT
        while True:
            while pgconn.is_busy():
                _wait(pgconn.socket, write=False)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is not None:
                if result.status == sync:
                    break
                results.append(result)
                continue
            kind, sql, answer = steps[index]  # the answers of one step end with None
            index += 1
            for result in results:
                status = result.status
                if status == fatal:
                    error = errors.error_from_result(result, encoding=self.dbapi.info.encoding)
                    if first is None:
                        first, failed_sql = error, sql
                    if answer is not None:
                        answer.error = error
                elif status == aborted:
                    if answer is not None and answer.error is None:
                        answer.error = errors.PipelineAborted("not run: a statement before it failed")
                elif kind == "prepare":
                    prepared[sql] = preparing[sql]
                elif answer is not None and status == tuples:
                    transformer.set_pgresult(result, format=text_format)
                    answer.rows += transformer.load_rows(0, result.ntuples, tuple)
                    answer._count += result.ntuples
                elif answer is not None:
                    answer._count += result.command_tuples or 0
            results = []
        pgconn.exit_pipeline_mode()
        return first, failed_sql


# -- a statement sent ahead of a request's own work ---------------------------------------------------

# The statement of this request (a context: a worker thread's job, or a request's greenlet on the event
# loop) waiting to go: (engine, server SQL, values).
_ahead: ContextVar[tuple[Engine, bytes, list[Any]] | None] = ContextVar("roadcargo_ahead", default=None)


def send_ahead(engine: Engine, statement: Prepared, params: Mapping[str, Any]) -> None:
    """Have ``statement`` (an INSERT) committed, in a transaction of its own, at the start of this request's
    next round trip to PostgreSQL on ``engine``, before anything else that round trip holds; ``flush_ahead``
    sends it alone if no round trip has taken it. A request's raw message goes this way: stored and
    committed before its processing runs, without a round trip of its own."""
    plan = statement._plan(engine.dialect, params)
    _ahead.set((engine, plan.server_sql, plan.values(params)))


def flush_ahead(engine: Engine) -> None:
    """Send the statement ``send_ahead`` queued in this request, if it is still waiting."""
    pending = _ahead.get()
    if pending is None or pending[0] is not engine:
        return
    try:
        with each_statement_alone(engine) as conn:
            _Batch(conn, conn.connection.driver_connection).run()  # takes it and nothing else
    finally:
        _ahead.set(None)  # sent, or failed with the request: never left for the context's next one


def _claim_ahead(engine: Engine) -> list[_Step]:
    pending = _ahead.get()
    if pending is None or pending[0] is not engine:
        return []
    _ahead.set(None)
    _engine, sql, values = pending
    return [
        ("command", b"BEGIN", [], None),
        ("command", _NO_WAIT_FOR_DISK, [], None),
        ("execute", sql, values, None),
        ("command", b"COMMIT", [], None),
    ]


# The statement sent ahead is committed without waiting for its WAL to reach the disk: the request's
# own transaction, which comes after it in the same WAL and commits the usual way, flushes it with its
# own, and so does the WAL writer within ``wal_writer_delay`` (200 ms) when the request writes nothing.
# Only a crash of PostgreSQL's machine in that moment loses it, and then the request has had no answer:
# its sender sends it again. Kiosk decisions at 500 a second, two processes and a worker, interleaved:
# p99 27-77 ms (median of five 36) against 53-88 ms (68) waiting for the disk twice a request, p50 7-10
# against 10-13 ms (bench/RESULTS.md, session 8).
_NO_WAIT_FOR_DISK = b"SET LOCAL synchronous_commit TO OFF"


# -- waiting for the server ---------------------------------------------------------------------------


def _wait(sock: int, write: bool) -> bool:
    """Wait until the connection's socket can be read (or, with ``write``, written): whether it can be
    read. In a greenlet of ``adapters.http_api.on_loop`` the wait is the event loop's (psycopg's own
    asyncio wait, as ``_loop_connection``'s), which runs other requests meanwhile; elsewhere the thread
    sleeps in ``select``, the interpreter's lock let go."""
    if in_greenlet():
        from psycopg import waiting

        wanted = waiting.Wait.RW if write else waiting.Wait.R
        ready = await_only(waiting.wait_async(_once(wanted), sock, interval=_WAIT_INTERVAL))
        return bool(ready & waiting.Ready.R)
    readable, _w, _x = select.select([sock], [sock] if write else [], [])
    return bool(readable)


def _once(wanted: Any) -> Generator[Any, Any, Any]:
    """A psycopg waiting generator that waits once: what the socket was ready for."""
    return (yield wanted)


_WAIT_INTERVAL = 0.1  # psycopg's own: how often a wait wakes to check for interruptions


_LOOP_CONNECTION: Any = None


def _loop_connection() -> Any:
    """psycopg's connection class, whose waits for the server (a statement through ``Connection.execute``,
    a commit, a ping) are, in a greenlet of ``on_loop``, the event loop's (psycopg's own asyncio wait), so
    that no statement there stops the event loop: one waiting for a row another greenlet of the same loop
    has locked would otherwise wait for ever. Elsewhere psycopg's own. Opening one (psycopg's
    ``connect``, which waits in place) goes to a thread from such a greenlet (``attach``)."""
    global _LOOP_CONNECTION
    if _LOOP_CONNECTION is None:
        import psycopg
        from psycopg import waiting

        class LoopConnection(psycopg.Connection):
            def wait(self, gen: Any, interval: float = _WAIT_INTERVAL, timeout: float | None = None) -> Any:
                if in_greenlet():
                    wait = waiting.wait_async(gen, self.pgconn.socket, interval=interval, timeout=timeout)
                    return await_only(wait)
                return super().wait(gen, interval, timeout)

        _LOOP_CONNECTION = LoopConnection
    return _LOOP_CONNECTION


def _begin(dbapi: Any) -> bytes:
    """The BEGIN psycopg would send for this connection's settings."""
    parts = ["BEGIN"]
    if dbapi.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + dbapi.isolation_level.name.replace("_", " "))
    if dbapi.read_only is not None:
        parts.append("READ ONLY" if dbapi.read_only else "READ WRITE")
    if dbapi.deferrable is not None:
        parts.append("DEFERRABLE" if dbapi.deferrable else "NOT DEFERRABLE")
    return " ".join(parts).encode()


def _compile(
    statement: ClauseElement, dialect: Dialect, insert_keys: tuple[str, ...] | None, sizes: dict[str, int]
) -> _Plan:
    compiled = cast(
        SQLCompiler,
        statement.compile(dialect=dialect, column_keys=list(insert_keys) if insert_keys else None),
    )
    if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
        raise TypeError("a statement with Python-side column defaults: run it with Connection.execute")
    sql = compiled.string
    positions = compiled.positiontup
    named = positions is None
    order = list(dict.fromkeys(compiled.bind_names.values())) if positions is None else list(positions)
    binders: list[Binder] = []
    for name in order:
        bind = compiled.binds[name]
        processor = bind.type._cached_bind_processor(dialect)
        default = _REQUIRED if bind.required else bind.effective_value
        if bind.expanding:
            marks = []
            for i in range(sizes[name]):
                binders.append((name, i, processor, default))
                marks.append(f"%({_named(name, i)})s" if named else "?")
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join(marks))
        else:
            binders.append((name, None, processor, default))
    if "__[POSTCOMPILE_" in sql:
        raise TypeError(f"a bound parameter could not be expanded in {sql!r}")
    columns = list(getattr(compiled, "_result_columns", None) or [])
    row = namedtuple("Row", [c.keyname for c in columns], rename=True) if columns else None
    processors = []
    for i, column in enumerate(columns):
        processor = column.type._cached_result_processor(dialect, None)
        if processor is not None:
            processors.append((i, processor))
    return _Plan(sql, binders, named, row, processors)
