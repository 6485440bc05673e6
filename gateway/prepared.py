"""The statements of the hot paths, run on the database driver's cursor.

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
each other's answers are sent together in a ``pipeline`` block (psycopg's pipeline mode): ``send``
sends a statement and returns its ``Pending`` answer, read once the block has ended; the block's end
is one round trip for all of them, and a COMMIT inside the block goes with them. Elsewhere (SQLite) a
``pipeline`` block changes nothing: each statement runs when it is sent.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Connection, bindparam
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import BindParameter, ClauseElement

_REQUIRED = object()  # a bound parameter the caller must give
MANY_ROWS = 500  # rows per INSERT of many rows (PostgreSQL takes at most 65,535 parameters a statement)

Binder = tuple[str, int | None, Callable[[Any], Any] | None, Any]


class _Plan:
    """One statement compiled for one dialect, one set of INSERT columns and one length of each
    ``IN`` list."""

    __slots__ = ("binders", "named", "processors", "row", "sql")

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
        self.named = named
        self.row = row
        self.processors = processors

    def values(self, params: Mapping[str, Any]) -> Any:
        out: list[Any] = []
        for name, index, processor, default in self.binders:
            value = params.get(name, default)
            if value is _REQUIRED:
                raise KeyError(f"bound parameter {name!r} was not given")
            if index is not None:
                value = value[index]
            out.append(processor(value) if processor is not None else value)
        if self.named:
            return {
                _named(name, index): v for (name, index, _p, _d), v in zip(self.binders, out, strict=True)
            }
        return out


def _named(name: str, index: int | None) -> str:
    return name if index is None else f"{name}__{index}"


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
            flat = {_named(k, i): row[k] for i, row in enumerate(chunk) for k in keys}
            cursors.append(self._execute(conn, plan, plan.values(flat)))
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
        if self._cursors:
            dbapi = self._conn.connection.driver_connection
            if getattr(getattr(dbapi, "pgconn", None), "pipeline_status", 0):
                self._read(None, lambda: _sync(dbapi))
        count = 0
        for cursor in self._cursors:
            count += int(cursor.rowcount)
            cursor.close()
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


def _sync(dbapi: Any) -> None:
    with dbapi.pipeline() as pipe:
        pipe.sync()


@contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """Statements sent in the block go to PostgreSQL together, without waiting for each one's answer: the
    block ends once all are answered, one round trip for all of them (a COMMIT in the block included).

    Only ``Prepared.send`` (and ``Connection.commit``) belong in the block: a statement run through
    SQLAlchemy's ``Connection.execute`` cannot be read before its answer arrives. The first error
    aborts the statements after it and is raised as SQLAlchemy's exception, by the block's end or by
    reading its answer. Elsewhere than PostgreSQL with psycopg the block changes nothing."""
    if conn.dialect.driver != "psycopg":
        yield
        return
    if not conn.in_transaction():
        conn.begin()  # as Connection.execute would begin it
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    try:
        with dbapi.pipeline():
            yield
    except conn.dialect.loaded_dbapi.Error as exc:
        conn._handle_dbapi_exception(exc, "(pipeline)", (), None, None)
    finally:
        # A COMMIT sent after a statement that failed is skipped, and the transaction stays aborted;
        # SQLAlchemy, whose commit failed, counts it as ended and would not roll it back.
        if not conn.in_transaction() and not dbapi.closed and dbapi.pgconn.transaction_status == _INERROR:
            dbapi.rollback()


_INERROR = 3  # libpq's PQTRANS_INERROR: in a failed transaction block


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
