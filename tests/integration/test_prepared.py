"""gateway.prepared runs hot statements on the driver's cursor: what it stores and reads must be exactly
what SQLAlchemy's ``Connection.execute`` stores and reads, and its errors SQLAlchemy's, on both
storages."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from sqlalchemy import bindparam, event, insert, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from gateway import db, tables
from gateway.clock import HONG_KONG
from gateway.context import Gateway
from gateway.prepared import Prepared, pipeline

_E = tables.events
_PARTIES = tables.parties
_BY_CCRN = Prepared(
    select(_E.c.cursor, _E.c.at, _E.c.ccrn, _E.c.vehicle, _E.c.status_version)
    .where(_E.c.ccrn.in_(bindparam("ccrns", expanding=True)))
    .order_by(_E.c.cursor)
)
_ADD_EVENT = Prepared(insert(_E))
_SINCE = Prepared(select(_E.c.ccrn).where(_E.c.at >= bindparam("since")).order_by(_E.c.cursor))
_ADD_PARTY = Prepared(insert(_PARTIES))
_RENAME = Prepared(
    update(_PARTIES).where(_PARTIES.c.party_id == bindparam("key")).values(name=bindparam("name"), status="X")
)


def _event(ccrn: str, at: datetime, vehicle: str | None = "AB1234") -> dict[str, object]:
    return {
        "at": at,
        "type": "BUNDLED",
        "ccrn": ccrn,
        "vehicle": vehicle,
        "status": "BUNDLED",
        "status_version": 2,
        "data": "{}",
    }


def test_rows_written_and_read_are_the_ones_sqlalchemy_writes_and_reads(gw: Gateway) -> None:
    at = datetime(2026, 11, 26, 8, 30, 15, 123456, tzinfo=UTC)
    local = at.astimezone(HONG_KONG)
    with gw.engine.begin() as conn:
        first = _ADD_EVENT.insert(conn, _event("C1", local))  # an aware time in any zone is stored as UTC
        conn.execute(insert(_E), _event("C2", at, vehicle=None))  # the same through SQLAlchemy
        _ADD_EVENT.run(conn, [_event("C3", at), _event("C4", at + timedelta(seconds=1))])
    with gw.engine.connect() as conn:
        ours = _BY_CCRN.all(conn, {"ccrns": ["C1", "C2", "C3", "C4"]})
        theirs = conn.execute(_BY_CCRN.statement, {"ccrns": ["C1", "C2", "C3", "C4"]}).all()
    assert [tuple(r) for r in ours] == [tuple(r) for r in theirs]
    assert [r.ccrn for r in ours] == ["C1", "C2", "C3", "C4"]
    assert ours[0].cursor == first
    assert ours[0].at == at and ours[0].at.tzinfo is not None  # aware, UTC, microseconds kept
    assert ours[1].vehicle is None
    assert ours[3].at == at + timedelta(seconds=1)
    with gw.engine.connect() as conn:  # a time compared in a WHERE: any zone, to the microsecond
        assert _SINCE.all(conn, {"since": local + timedelta(microseconds=1)}) == [("C4",)]
        assert [r.ccrn for r in _SINCE.all(conn, {"since": local})] == ["C1", "C2", "C3", "C4"]


def test_a_datetime_given_to_a_text_column_is_stored_as_sqlalchemy_stores_it(gw: Gateway) -> None:
    """On PostgreSQL times go in binary form only where the statement casts them to a time: one given to a
    text column is stored as its text (the same instant as through ``Connection.execute``), not as the
    bytes of a binary time."""
    at = datetime(2026, 11, 26, 8, 30, 15, 123456, tzinfo=UTC)
    with gw.engine.begin() as conn:
        _ADD_EVENT.insert(conn, {**_event("T1", at), "data": at})
        conn.execute(insert(_E), {**_event("T2", at), "data": at})
    with gw.engine.connect() as conn:
        stored = conn.execute(select(_E.c.ccrn, _E.c.data).where(_E.c.ccrn.in_(["T1", "T2"]))).all()
    ours, theirs = sorted(stored)
    assert datetime.fromisoformat(ours.data) == datetime.fromisoformat(theirs.data) == at


def test_in_lists_of_every_length_and_an_empty_one(gw: Gateway) -> None:
    at = datetime(2026, 11, 26, tzinfo=UTC)
    with gw.engine.begin() as conn:
        _ADD_EVENT.run(conn, [_event(f"L{i}", at) for i in range(12)])
    with gw.engine.connect() as conn:
        for n in (1, 2, 3, 12):
            wanted = [f"L{i}" for i in range(n)]
            assert [r.ccrn for r in _BY_CCRN.all(conn, {"ccrns": wanted})] == wanted
        assert _BY_CCRN.all(conn, {"ccrns": []}) == []
        assert _BY_CCRN.first(conn, {"ccrns": ["nothing"]}) is None
        assert _BY_CCRN.scalar(conn, {"ccrns": ["L5"]}) is not None


def test_update_counts_rows_and_fills_in_the_statements_own_values(gw: Gateway) -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    with gw.engine.begin() as conn:
        for key in ("P0000001", "P0000002"):
            _ADD_PARTY.run(
                conn, {"party_id": key, "role": "driver", "name": "A", "status": "ACTIVE", "created_at": now}
            )
        assert _RENAME.run(conn, {"key": "P0000001", "name": "Renamed"}) == 1
        assert _RENAME.run(conn, {"key": "P9999999", "name": "Nobody"}) == 0
    with gw.engine.connect() as conn:
        row = conn.execute(select(_PARTIES).where(_PARTIES.c.party_id == "P0000001")).one()
    assert (row.name, row.status, row.pin_failures) == ("Renamed", "X", 0)  # server default applied


def test_a_missing_parameter_is_named() -> None:
    with pytest.raises(KeyError, match="name"):
        _RENAME._plan(sqlite.dialect(), {"key": "P1"}).values({"key": "P1"})


def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_rolls_back(gw: Gateway) -> None:
    now = datetime(2026, 11, 26, tzinfo=UTC)
    row = {"party_id": "P0000009", "role": "driver", "name": "A", "status": "ACTIVE", "created_at": now}
    with gw.engine.begin() as conn:
        _ADD_PARTY.run(conn, row)
    with pytest.raises(IntegrityError), gw.engine.begin() as conn:
        _RENAME.run(conn, {"key": "P0000009", "name": "Changed"})
        _ADD_PARTY.run(conn, row)  # the same key again
    with gw.engine.connect() as conn:
        assert conn.scalar(select(_PARTIES.c.name).where(_PARTIES.c.party_id == "P0000009")) == "A"


def test_a_lost_postgresql_connection_is_invalidated_and_the_next_one_works(gw: Gateway) -> None:
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("a server connection to lose is PostgreSQL's")
    with gw.engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        with gw.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        with pytest.raises(DBAPIError) as caught:
            _BY_CCRN.all(conn, {"ccrns": ["C1"]})
        assert caught.value.connection_invalidated
    with gw.engine.connect() as conn:  # the pool hands out a working connection again
        assert _BY_CCRN.all(conn, {"ccrns": ["C1"]}) == []


def test_a_sqlite_writer_kept_waiting_past_the_busy_timeout_gets_sqlalchemys_error(gw: Gateway) -> None:
    """The BEGIN IMMEDIATE that gateway.db sends on the driver's connection: a database locked by
    another process past busy_timeout is OperationalError (the HTTP edge's 503), not a driver error."""
    if gw.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    other = db.make_engine(gw.engine.url.render_as_string(hide_password=False))

    @event.listens_for(other, "connect")
    def _impatient(dbapi_connection: object, _record: object) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]

    holder = sqlite3.connect(gw.engine.url.database or "", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        with pytest.raises(OperationalError, match="locked"), other.begin():
            pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with other.begin() as conn:  # once the lock is gone, writing works again
        assert _RENAME.run(conn, {"key": "nobody", "name": "x"}) == 0
    other.dispose()


def test_many_rows_in_one_call_are_all_stored_in_order(gw: Gateway) -> None:
    """Many rows at once (on PostgreSQL one INSERT with a VALUES list per 500 rows)."""
    at = datetime(2026, 11, 26, tzinfo=UTC)
    rows = [_event(f"M{i:04d}", at + timedelta(microseconds=i)) for i in range(1203)]
    with gw.engine.begin() as conn:
        assert _ADD_EVENT.run(conn, rows) == 1203
        assert _ADD_EVENT.run(conn, []) == 0
    with gw.engine.connect() as conn:
        stored = conn.execute(select(_E.c.ccrn, _E.c.at).order_by(_E.c.cursor)).all()
    assert [(r.ccrn, r.at) for r in stored] == [(r["ccrn"], r["at"]) for r in rows]


def test_statements_sent_together_read_and_write_as_one_by_one(gw: Gateway) -> None:
    """A pipeline (one round trip on PostgreSQL, nothing different on SQLite): every answer is read
    after the block, and a COMMIT in the block commits what was sent before it."""
    at = datetime(2026, 11, 26, tzinfo=UTC)
    now = datetime(2026, 11, 26, tzinfo=UTC)
    party = {"party_id": "P0000021", "role": "driver", "name": "A", "status": "ACTIVE", "created_at": now}
    with gw.engine.begin() as conn:
        with pipeline(conn):
            key = _ADD_EVENT.send(conn, _event("S1", at), returning=True)
            many = _ADD_EVENT.send(conn, [_event("S2", at), _event("S3", at)])
            added = _ADD_PARTY.send(conn, party)
            renamed = _RENAME.send(conn, {"key": "P0000021", "name": "Renamed"})  # sees the row sent above
            missed = _RENAME.send(conn, {"key": "P9999999", "name": "Nobody"})
            read = _BY_CCRN.send(conn, {"ccrns": ["S1", "S2", "S3"]})
            first = _BY_CCRN.send(conn, {"ccrns": ["S3"]})
            conn.commit()
        assert (many.rowcount(), added.rowcount(), renamed.rowcount(), missed.rowcount()) == (2, 1, 1, 0)
        rows = read.all()
        assert [r.ccrn for r in rows] == ["S1", "S2", "S3"]
        assert rows[0].cursor == key.key()
        assert first.first().ccrn == "S3"
    with gw.engine.connect() as conn:
        assert conn.scalar(select(_PARTIES.c.name).where(_PARTIES.c.party_id == "P0000021")) == "Renamed"
        assert len(_BY_CCRN.all(conn, {"ccrns": ["S1", "S2", "S3"]})) == 3


@pytest.mark.parametrize("commit", [False, True])
def test_a_failure_in_a_pipeline_is_sqlalchemys_error_and_nothing_of_it_is_kept(
    gw: Gateway, commit: bool
) -> None:
    """The first error aborts what was sent after it, the COMMIT too; the connection goes back to the
    pool usable (a COMMIT skipped after an error would otherwise leave its transaction aborted)."""
    now = datetime(2026, 11, 26, tzinfo=UTC)
    row = {"party_id": "P0000022", "role": "driver", "name": "A", "status": "ACTIVE", "created_at": now}
    with gw.engine.begin() as conn:
        _ADD_PARTY.run(conn, row)
    with pytest.raises(IntegrityError), gw.engine.begin() as conn, pipeline(conn):
        _RENAME.send(conn, {"key": "P0000022", "name": "Changed"})
        _ADD_PARTY.send(conn, row)  # the same key again
        _ADD_EVENT.send(conn, _event("F1", now))
        if commit:
            conn.commit()
    for _ in range(3):  # whichever pooled connection comes next
        with gw.engine.connect() as conn:
            assert conn.scalar(select(_PARTIES.c.name).where(_PARTIES.c.party_id == "P0000022")) == "A"
            assert _BY_CCRN.all(conn, {"ccrns": ["F1"]}) == []


def test_an_empty_in_list_cannot_be_sent(gw: Gateway) -> None:
    with gw.engine.connect() as conn, pytest.raises(ValueError, match="empty IN list"):
        _BY_CCRN.send(conn, {"ccrns": []})


def _postgresql_only(gw: Gateway) -> None:
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("the pipeline is PostgreSQL's")


def test_a_statement_through_sqlalchemy_in_a_block_runs_after_what_was_sent_before_it(gw: Gateway) -> None:
    _postgresql_only(gw)
    at = datetime(2026, 11, 26, tzinfo=UTC)
    with gw.engine.begin() as conn, pipeline(conn):
        _ADD_EVENT.send(conn, _event("O1", at))
        seen = conn.execute(select(_E.c.ccrn).where(_E.c.ccrn == "O1")).scalar()
        _ADD_EVENT.send(conn, _event("O2", at))
        conn.commit()
    assert seen == "O1"
    with gw.engine.connect() as conn:
        assert [r.ccrn for r in _BY_CCRN.all(conn, {"ccrns": ["O1", "O2"]})] == ["O1", "O2"]


def _ours_prepared(conn: object) -> list[str]:
    query = text("SELECT statement FROM pg_prepared_statements WHERE name LIKE '\\_rc\\_%'")
    return list(conn.execute(query).scalars())  # type: ignore[attr-defined]


def test_a_statement_is_prepared_once_per_connection_and_again_after_its_preparation_failed(
    gw: Gateway,
) -> None:
    _postgresql_only(gw)
    at = datetime(2026, 11, 26, tzinfo=UTC)
    now = datetime(2026, 11, 26, tzinfo=UTC)
    row = {"party_id": "P0000031", "role": "driver", "name": "A", "status": "ACTIVE", "created_at": now}
    with gw.engine.connect() as conn:
        for i in range(3):  # three transactions on one connection
            with pipeline(conn):
                _ADD_EVENT.send(conn, _event(f"R{i}", at))
                conn.commit()
        assert len([s for s in _ours_prepared(conn) if "INSERT INTO events" in s]) == 1
        # A failure before a statement's first use aborts its preparation too: it is prepared next time.
        _ADD_PARTY.run(conn, row)
        conn.commit()
        with pytest.raises(IntegrityError), pipeline(conn):
            _ADD_PARTY.send(conn, row)
            _RENAME.send(conn, {"key": "P0000031", "name": "never"})
        conn.rollback()
        assert not [s for s in _ours_prepared(conn) if s.startswith("UPDATE parties")]
        with pipeline(conn):
            renamed = _RENAME.send(conn, {"key": "P0000031", "name": "Renamed"})
            conn.commit()
        assert renamed.rowcount() == 1
        assert conn.scalar(select(_PARTIES.c.name).where(_PARTIES.c.party_id == "P0000031")) == "Renamed"


def test_a_value_that_cannot_be_sent_fails_before_anything_of_the_block_is_sent(gw: Gateway) -> None:
    _postgresql_only(gw)
    at = datetime(2026, 11, 26, tzinfo=UTC)
    with pytest.raises(DBAPIError, match="NUL"), gw.engine.begin() as conn, pipeline(conn):
        _ADD_EVENT.send(conn, _event("N1", at))
        _ADD_EVENT.send(conn, {**_event("N2", at), "data": "a\x00b"})
    with gw.engine.connect() as conn:  # nothing kept, and the connections still work
        assert _BY_CCRN.all(conn, {"ccrns": ["N1", "N2"]}) == []


def test_a_connection_lost_in_a_pipeline_is_invalidated_and_the_next_one_works(gw: Gateway) -> None:
    _postgresql_only(gw)
    at = datetime(2026, 11, 26, tzinfo=UTC)
    with gw.engine.connect() as conn:
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        conn.commit()
        with gw.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        with pytest.raises(DBAPIError) as caught, pipeline(conn):
            _ADD_EVENT.send(conn, _event("X1", at))
            conn.commit()
        assert caught.value.connection_invalidated
    with gw.engine.begin() as conn, pipeline(conn):
        _ADD_EVENT.send(conn, _event("X2", at))
    with gw.engine.connect() as conn:
        assert [r.ccrn for r in _BY_CCRN.all(conn, {"ccrns": ["X1", "X2"]})] == ["X2"]


def test_what_a_connection_prepares_stays_bounded_and_the_rest_still_runs(gw: Gateway) -> None:
    """IN lists of every length up to past the bound, and rows past it: all answered right, and the
    server keeps at most PREPARED_PARAMETERS-sized statements, at most PREPARED of them."""
    _postgresql_only(gw)
    from gateway import prepared

    at = datetime(2026, 11, 26, tzinfo=UTC)
    with gw.engine.begin() as conn:
        _ADD_EVENT.run(conn, [_event(f"B{i:03d}", at) for i in range(150)])
    with gw.engine.connect() as conn:
        for n in range(1, 150):
            wanted = [f"B{i:03d}" for i in range(n)]
            assert [r.ccrn for r in _BY_CCRN.all(conn, {"ccrns": wanted})] == wanted
        statements = _ours_prepared(conn)
        assert {r.at for r in _BY_CCRN.all(conn, {"ccrns": wanted})} == {at}  # the rows past the bound too
    assert len(statements) <= prepared.PREPARED
    assert all(s.count("$") <= prepared.PREPARED_PARAMETERS for s in statements)
    assert sum("FROM events" in s for s in statements) == prepared.PREPARED_PARAMETERS


def test_a_failure_half_way_through_the_answers_leaves_no_half_read_connection(gw: Gateway) -> None:
    """Anything that stops the reading of a pipeline's answers (here a loader that fails) discards the
    connection, whose state cannot be told; the next one works."""
    _postgresql_only(gw)
    from gateway import prepared

    class FailingLoader:
        def __init__(self, real: object) -> None:
            self.real = real

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

        def load_rows(self, *_args: object) -> list[object]:
            raise RuntimeError("a loader failed")

    with gw.engine.connect() as conn:
        assert _BY_CCRN.all(conn, {"ccrns": ["none"]}) == []  # the connection's adaptation context exists
        conn.info[prepared._TRANSFORMER] = FailingLoader(conn.info[prepared._TRANSFORMER])
        with pytest.raises(RuntimeError, match="a loader failed"):
            _BY_CCRN.all(conn, {"ccrns": ["none"]})
        assert conn.invalidated
    for _ in range(3):
        with gw.engine.connect() as conn:
            assert _BY_CCRN.all(conn, {"ccrns": ["none"]}) == []


def test_a_statement_sent_ahead_goes_first_committed_on_its_own_and_only_once(gw: Gateway) -> None:
    """``send_ahead``: the next round trip of the thread (here through SQLAlchemy) sends it first and
    commits it, whatever happens to that round trip's transaction; ``flush_ahead`` then has nothing."""
    _postgresql_only(gw)
    from gateway import prepared

    at = datetime(2026, 11, 26, tzinfo=UTC)
    now = datetime(2026, 11, 26, tzinfo=UTC)
    row = {"party_id": "P0000041", "role": "driver", "name": "A", "status": "ACTIVE", "created_at": now}
    with gw.engine.begin() as conn:
        _ADD_PARTY.run(conn, row)
    prepared.send_ahead(gw.engine, _ADD_EVENT, _event("A1", at))
    with pytest.raises(IntegrityError), gw.engine.begin() as conn:
        seen = conn.execute(select(_E.c.ccrn).where(_E.c.ccrn == "A1")).scalar()
        _ADD_PARTY.run(conn, row)  # fails: this transaction rolls back, the statement sent ahead stays
    assert seen == "A1"
    prepared.flush_ahead(gw.engine)
    prepared.send_ahead(gw.engine, _ADD_EVENT, _event("A2", at))
    prepared.flush_ahead(gw.engine)  # nothing took it: sent alone
    prepared.flush_ahead(gw.engine)
    with gw.engine.connect() as conn:
        assert [r.ccrn for r in _BY_CCRN.all(conn, {"ccrns": ["A1", "A2"]})] == ["A1", "A2"]


@pytest.mark.parametrize("through", ["sqlalchemy", "prepared"])
def test_database_work_on_the_event_loop_waits_for_a_lock_without_stopping_the_loop(
    gw: Gateway, through: str
) -> None:
    """Two requests' database work in greenlets of one event loop (``on_loop``, as the kiosk's runs on
    PostgreSQL): the second waits for a row the first holds while the first awaits something else (an
    Immigration answer). Were the second's wait the thread's, the first could never go on: the second
    would give up at its lock timeout. Through SQLAlchemy's ``Connection.execute`` and through a
    pipeline."""
    _postgresql_only(gw)
    import asyncio
    import time

    from sqlalchemy.util.concurrency import await_only

    from adapters.http_api import on_loop

    now = datetime(2026, 11, 26, tzinfo=UTC)
    row = {"party_id": "P0000051", "role": "driver", "name": "A", "status": "ACTIVE", "created_at": now}
    with gw.engine.begin() as conn:
        _ADD_PARTY.run(conn, row)
    lock = select(_PARTIES.c.name).where(_PARTIES.c.party_id == "P0000051").with_for_update()

    def first() -> None:
        with gw.engine.begin() as conn:
            conn.execute(lock)
            await_only(asyncio.sleep(0.3))  # the rows stay locked meanwhile
            conn.execute(update(_PARTIES).where(_PARTIES.c.party_id == "P0000051").values(name="first"))

    def second() -> str:
        with gw.engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '3s'"))
            if through == "sqlalchemy":
                return str(conn.execute(lock).scalar())
            return str(_RENAME.send(conn, {"key": "P0000051", "name": "second"}).rowcount())

    async def both() -> tuple[None, str]:
        one = asyncio.ensure_future(on_loop(gw, first))
        await asyncio.sleep(0.05)  # the first holds the row
        return await asyncio.gather(one, on_loop(gw, second))

    started = time.monotonic()
    _none, seen = asyncio.run(both())
    assert time.monotonic() - started < 2.5
    assert seen == ("first" if through == "sqlalchemy" else "1")  # it waited for the first's change


def test_opening_a_connection_from_the_event_loop_does_not_stop_it() -> None:
    """A server that takes the connection and never answers (as one gone unreachable mid-failover):
    the connection opened from a greenlet of the event loop fails at its connect timeout with
    SQLAlchemy's error, and the event loop goes on meanwhile."""
    import asyncio
    import socket
    from types import SimpleNamespace

    from adapters.http_api import on_loop

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    engine = db.make_engine(f"postgresql+psycopg://u@127.0.0.1:{silent.getsockname()[1]}/x?connect_timeout=1")

    def connect() -> None:
        with engine.connect():
            pass

    async def meanwhile() -> int:
        ticks = 0
        opening = asyncio.ensure_future(on_loop(cast(Gateway, SimpleNamespace(engine=engine)), connect))
        while not opening.done():
            await asyncio.sleep(0.01)
            ticks += 1
        with pytest.raises(OperationalError, match="timeout"):
            opening.result()
        return ticks

    try:
        assert asyncio.run(meanwhile()) >= 30  # about a second of ticks
    finally:
        silent.close()
        engine.dispose()
