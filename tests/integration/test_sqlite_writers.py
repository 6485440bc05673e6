"""SQLite writers in several processes (``serve`` beside a ``roadcargo worker``) queue on a lock file
beside the database instead of SQLite's sleeping busy handler: a writer waits for another process's
transaction to end, then goes on; every write of both gets in; a process that dies lets go."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway import db

# Another process: takes the lock file, says so, waits for the word to let go, marks that it is letting
# go, lets go. It never touches the database itself: the queue is the lock file.
_HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.readline()
    open(sys.argv[2], "w").close()
    fcntl.flock(fd, fcntl.LOCK_UN)
    """
)

# Another process writing: N transactions that each read the counter and write it back one higher.
_WRITER = textwrap.dedent(
    """
    import sys
    from sqlalchemy import text
    from gateway import db
    engine = db.make_engine(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        with engine.begin() as conn:
            value = conn.execute(text("SELECT n FROM counter")).scalar_one()
            conn.execute(text("UPDATE counter SET n = :n"), {"n": value + 1})
    """
)


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def test_a_writer_waits_for_another_processs_transaction_then_writes(tmp_path: Path) -> None:
    engine = db.make_engine(_url(tmp_path))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    lock = tmp_path / "gateway.db-writers.lock"
    assert lock.exists()  # beside the database, made by the first writer
    released = tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock), str(released)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        seen_released: list[bool] = []

        def write() -> None:
            with engine.begin() as conn:
                seen_released.append(released.exists())
                conn.execute(text("INSERT INTO t VALUES (1)"))

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(0.3)
        assert writer.is_alive(), "the writer went ahead while another process held the queue"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        writer.join(10)
        assert not writer.is_alive()
        assert seen_released == [True]  # it got its turn only once the other had let go
    finally:
        holder.kill()
        holder.wait()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    engine.dispose()


def test_a_process_that_dies_holding_the_queue_lets_go(tmp_path: Path) -> None:
    engine = db.make_engine(_url(tmp_path))
    lock = tmp_path / "gateway.db-writers.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock), str(tmp_path / "released")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL while holding: no chance to let go itself
    holder.wait()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT x FROM t")).scalar_one() == 1
    engine.dispose()


def test_writers_in_three_processes_lose_no_update(tmp_path: Path) -> None:
    url = _url(tmp_path)
    engine = db.make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    others = [
        subprocess.Popen([sys.executable, "-c", _WRITER, url, "150"], env=env, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for _ in range(150):  # this process too, at the same time
        with engine.begin() as conn:
            value = conn.execute(text("SELECT n FROM counter")).scalar_one()
            conn.execute(text("UPDATE counter SET n = :n"), {"n": value + 1})
    for other in others:
        _, err = other.communicate(timeout=120)
        assert other.returncode == 0, err.decode()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 450
    engine.dispose()


def _free(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)  # another open file: as another process would see the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_the_queue_is_held_for_the_transaction_and_let_go_after_commit_or_failure(tmp_path: Path) -> None:
    engine = db.make_engine(_url(tmp_path))
    lock = tmp_path / "gateway.db-writers.lock"
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY)"))
        assert not _free(lock)
    assert _free(lock)
    with pytest.raises(Exception, match="UNIQUE"), engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert _free(lock)
    with engine.connect() as conn:  # readers never take it
        conn.execute(text("SELECT count(*) FROM t")).scalar_one()
        assert _free(lock)
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0  # the failed one rolled back
    engine.dispose()
