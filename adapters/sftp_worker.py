"""Processing of files that arrive over SFTP, crash-safe (design sections 9 and 11).

A file is processed where it lies (the mailbox inbox, or a poller's local spool), its replies (or the
reason it failed) are committed in ``sftp_files``/``sftp_replies``, then written to the outbox, and only
then does the input leave the inbox. A crash at any point leaves the file in the inbox: the restart
processes it again (every business action is idempotent, and committed replies are reused), so nothing is
lost and nothing is done twice. A file that keeps crashing the process is failed after MAX_ATTEMPTS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from adapters.ingest import IngestError, ingest_file
from gateway import tables
from gateway.context import Actor, Gateway, iso_hk

log = logging.getLogger("roadcargo.sftp")

FOLDERS = ("inbox", "outbox", "archive", "failed")
PART = ".part"
ERROR_SUFFIX = ".error.txt"
MAX_ATTEMPTS = 5
MAX_NAME = 200
_PARTY_DIR = re.compile(r"^[0-9]{8}$")
_F = tables.sftp_files
_R = tables.sftp_replies


# -- the places ------------------------------------------------------------------------------------


def sftp_root(gw: Gateway) -> Path:
    return gw.config.data_path / "sftp"


@dataclass(frozen=True)
class Layout:
    """Where a stream of files lives: waiting, answered, kept, failed; ``work`` is private scratch space
    on the same file system (temporary files, uploads in progress) that clients never see."""

    inbox: Path
    outbox: Path
    archive: Path
    failed: Path
    work: Path

    def create(self) -> None:
        for folder in (self.inbox, self.outbox, self.archive, self.failed, self.work):
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)

    @property
    def uploads(self) -> Path:
        return self.work / "uploads"


def mailbox(gw: Gateway, party_id: str) -> Layout:
    """A party's hosted mailbox: DATA_DIR/sftp/PARTY/{inbox,outbox,archive,failed}."""
    root = sftp_root(gw) / party_id
    return Layout(
        root / "inbox", root / "outbox", root / "archive", root / "failed", sftp_root(gw) / ".work" / party_id
    )


def mailbox_parties(gw: Gateway) -> list[str]:
    root = sftp_root(gw)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _PARTY_DIR.match(p.name))


def name_problem(name: str) -> str | None:
    """Why a client's file name is not acceptable, or None. Names are plain: no folders, no hidden
    files, printable, short enough to carry the reply suffixes."""
    if not name or name in (".", ".."):
        return "a file needs a name"
    if "/" in name or "\\" in name or "\x00" in name:
        return "a file name may not contain '/', '\\' or NUL"
    if name.startswith("."):
        return "hidden file names (starting with '.') are not accepted"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        return f"a file name is at most {MAX_NAME} bytes"
    if not name.isprintable():
        return "a file name may contain printable characters only"
    return None


def is_waiting(name: str) -> bool:
    """A file in an inbox that is to be processed: complete, named properly, not a ``*.part``."""
    return not name.endswith(PART) and name_problem(name) is None


def waiting_files(inbox: Path) -> list[str]:
    """Names to process, oldest first, so that a partner's amendments follow their lodgements."""
    try:
        entries = [e for e in os.scandir(inbox) if e.is_file(follow_symlinks=False) and is_waiting(e.name)]
    except FileNotFoundError:
        return []
    return [e.name for e in sorted(entries, key=lambda e: (e.stat().st_mtime_ns, e.name))]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, data: bytes, work: Path) -> None:
    """``target`` holds all of ``data`` or its previous content, never a part (a reader may be there)."""
    work.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp = work / f"tmp-{secrets.token_hex(8)}"
    try:
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def move(source: Path, target: Path) -> None:
    os.replace(source, target)
    _fsync_dir(target.parent)
    if source.parent != target.parent:
        _fsync_dir(source.parent)


# -- the record of processed files ------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What became of a file: its replies by suffix, or why it failed."""

    file_id: int
    replies: dict[str, bytes] | None
    error: str | None


def digest(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def party_actor(gw: Gateway, party_id: str) -> Actor | None:
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(tables.parties.c.role, tables.parties.c.status).where(
                tables.parties.c.party_id == party_id
            )
        ).first()
    return None if row is None else Actor(party_id, row.role, "sftp", row.status)


def process(gw: Gateway, party_id: str, source: str, path: Path) -> Outcome:
    """Process one complete file as ``party_id`` and commit what became of it. Raises only for faults
    outside the file (the database is down, ...): the file then stays where it is, for a retry."""
    name = path.name
    sha, size = digest(path)
    now = gw.now()
    with gw.engine.begin() as conn:
        row = conn.execute(
            select(_F)
            .where(
                _F.c.party_id == party_id,
                _F.c.source == source,
                _F.c.name == name,
                _F.c.sha256 == sha,
                _F.c.filed_at.is_(None),
            )
            .order_by(_F.c.file_id.desc())
            .limit(1)
        ).first()
        if row is not None and row.status in ("DONE", "FAILED"):
            # Committed before a crash that came before the input was filed: answer it again.
            replies = {
                r.suffix: bytes(r.body)
                for r in conn.execute(select(_R.c.suffix, _R.c.body).where(_R.c.file_id == row.file_id))
            }
            return Outcome(row.file_id, replies if row.status == "DONE" else None, row.error)
        if row is not None and row.status == "PROCESSING":
            file_id, attempts = int(row.file_id), int(row.attempts) + 1
            conn.execute(update(_F).where(_F.c.file_id == file_id).values(attempts=attempts))
        else:
            result = conn.execute(
                insert(_F).values(
                    party_id=party_id,
                    source=source,
                    name=name,
                    sha256=sha,
                    size=size,
                    status="PROCESSING",
                    attempts=1,
                    started_at=now,
                )
            )
            file_id, attempts = int(result.inserted_primary_key[0]), 1  # type: ignore[index]
    if attempts > MAX_ATTEMPTS:
        log.error(
            "sftp file %d (%s of party %s) failed %d times: given up", file_id, name, party_id, MAX_ATTEMPTS
        )
        return _fail(
            gw,
            file_id,
            f"processing this file could not be finished in {MAX_ATTEMPTS} attempts because of a fault in "
            f"the gateway (reference {file_id}); customs has been told. Consignments it already lodged keep "
            "their CCRN.",
        )
    actor = party_actor(gw, party_id)
    if actor is None:
        return _fail(gw, file_id, f"there is no party {party_id}")
    log.info("sftp: processing %s of party %s (%d bytes, file %d)", name, party_id, size, file_id)
    started = time.monotonic()
    try:
        replies = ingest_file(gw, actor, path)
    except IngestError as exc:
        log.info("sftp: %s of party %s refused: %s", name, party_id, exc)
        return _fail(gw, file_id, str(exc))
    with gw.engine.begin() as conn:
        if replies:
            conn.execute(
                insert(_R), [{"file_id": file_id, "suffix": s, "body": b} for s, b in replies.items()]
            )
        conn.execute(update(_F).where(_F.c.file_id == file_id).values(status="DONE", completed_at=gw.now()))
    log.info("sftp: %s of party %s processed in %.1f s", name, party_id, time.monotonic() - started)
    return Outcome(file_id, replies, None)


def _fail(gw: Gateway, file_id: int, error: str) -> Outcome:
    with gw.engine.begin() as conn:
        conn.execute(
            update(_F)
            .where(_F.c.file_id == file_id)
            .values(status="FAILED", error=error, completed_at=gw.now())
        )
    return Outcome(file_id, None, error)


def record_aborted(gw: Gateway, party_id: str, source: str, name: str, size: int, error: str) -> None:
    """An upload that never completed: not processed, but remembered for ``roadcargo sftp status``."""
    now = gw.now()
    with gw.engine.begin() as conn:
        conn.execute(
            insert(_F).values(
                party_id=party_id,
                source=source,
                name=name[:255],
                sha256="",
                size=size,
                status="ABORTED",
                attempts=0,
                error=error,
                started_at=now,
                completed_at=now,
                filed_at=now,
            )
        )


def error_text(name: str, reason: str, gw: Gateway) -> bytes:
    return (
        f"File: {name}\n"
        f"At: {iso_hk(gw.now())}\n"
        f"Not processed: {reason}\n"
        "Nothing in this file was accepted. Correct it and upload it again.\n"
    ).encode()


def settle(gw: Gateway, layout: Layout, name: str, outcome: Outcome, error_to_outbox: bool = False) -> None:
    """Write the replies (or the reason) and move the input out of the inbox, in that order."""
    source = layout.inbox / name
    if outcome.replies is not None:
        for suffix, body in sorted(outcome.replies.items()):
            atomic_write(layout.outbox / (name + suffix), body, layout.work)
        move(source, layout.archive / name)
    else:
        text = error_text(name, outcome.error or "unknown", gw)
        atomic_write(layout.failed / (name + ERROR_SUFFIX), text, layout.work)
        if error_to_outbox:
            atomic_write(layout.outbox / (name + ERROR_SUFFIX), text, layout.work)
        move(source, layout.failed / name)
    with gw.engine.begin() as conn:
        conn.execute(update(_F).where(_F.c.file_id == outcome.file_id).values(filed_at=gw.now()))


def fail_upload(
    gw: Gateway, layout: Layout, party_id: str, source: str, staged: Path, name: str, why: str
) -> None:
    """An upload that did not complete goes to ``failed`` with the reason, never to the inbox."""
    size = staged.stat().st_size if staged.exists() else 0
    reason = f"the upload did not complete: {why} ({size} bytes received). Upload the file again."
    log.warning("sftp: upload of %s by party %s not completed: %s (%d bytes)", name, party_id, why, size)
    try:
        layout.failed.mkdir(parents=True, exist_ok=True)
        atomic_write(layout.failed / (name + ERROR_SUFFIX), error_text(name, reason, gw), layout.work)
        if staged.exists():
            move(staged, layout.failed / name)
        record_aborted(gw, party_id, source, name, size, reason)
    except (OSError, SQLAlchemyError):
        log.exception("sftp: could not file the incomplete upload %s of party %s", name, party_id)


# -- the queue ---------------------------------------------------------------------------------------


class MailboxWorker:
    """Processes the files of the hosted mailboxes in background threads: one file at a time per party
    (in arrival order, so an amendment follows its lodgement), several parties at once, so that one
    partner's big file never holds up the others. Files left in inboxes are taken at start (resume);
    a rescan every few seconds takes anything a notification missed and retries what failed."""

    def __init__(self, gw: Gateway, threads: int = 2, rescan_seconds: float = 5.0) -> None:
        self.gw = gw
        self.threads = max(1, threads)
        self.rescan_seconds = rescan_seconds
        self._cond = threading.Condition()
        self._pending: dict[str, list[str]] = {}
        self._busy: set[str] = set()
        self._retry_at: dict[tuple[str, str], float] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._stopping = False
        self._stopped = threading.Event()
        self._workers: list[threading.Thread] = []
        self.processed = 0
        self.failed = 0

    # the public face

    def start(self) -> None:
        self._recover_uploads()
        self.scan()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"roadcargo-sftp-worker-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        scanner = threading.Thread(target=self._rescan, name="roadcargo-sftp-rescan", daemon=True)
        scanner.start()
        self._workers.append(scanner)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking files; a file being processed is left to finish within ``timeout`` (if it does not,
        it stays in its inbox and the next start resumes it)."""
        self._stopped.set()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))

    def submit(self, party_id: str, name: str) -> None:
        """A complete file is in the party's inbox."""
        with self._cond:
            if self._retry_at.get((party_id, name), 0.0) > time.monotonic():
                return
            queue = self._pending.setdefault(party_id, [])
            if name not in queue:
                queue.append(name)
                self._cond.notify_all()

    def scan(self) -> None:
        for party_id in mailbox_parties(self.gw):
            for name in waiting_files(mailbox(self.gw, party_id).inbox):
                self.submit(party_id, name)

    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not any(self._pending.values())

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.05)
        return self.idle()

    def waiting(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._pending.values()) + len(self._busy)

    # the threads

    def _next(self) -> tuple[str, str] | None:
        with self._cond:
            while not self._stopping:
                for party_id, queue in self._pending.items():
                    if queue and party_id not in self._busy:
                        self._busy.add(party_id)
                        return party_id, queue.pop(0)
                self._cond.wait()
        return None

    def _run(self) -> None:
        while (job := self._next()) is not None:
            party_id, name = job
            try:
                self._handle(party_id, name)
            except Exception:  # the thread must survive anything one file does
                log.exception("sftp: unexpected fault with %s of party %s", name, party_id)
                self._retry_later(party_id, name)
            finally:
                with self._cond:
                    self._busy.discard(party_id)
                    self._cond.notify_all()

    def _rescan(self) -> None:
        # Sleeps on its own event: waiting on the queue's condition would swallow a notify meant for a
        # worker, leaving a file to wait for the next one.
        while not self._stopped.wait(self.rescan_seconds):
            try:
                self.scan()
            except OSError:
                log.exception("sftp: rescan of the mailboxes failed")

    def _retry_later(self, party_id: str, name: str) -> None:
        key = (party_id, name)
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = min(300.0, 2.0 ** min(failures, 9))
        log.warning("sftp: %s of party %s stays in the inbox; retried in %.0f s", name, party_id, delay)
        with self._cond:
            self._retry_at[key] = time.monotonic() + delay

    def _handle(self, party_id: str, name: str) -> None:
        layout = mailbox(self.gw, party_id)
        path = layout.inbox / name
        if not path.is_file() or path.is_symlink():
            return  # already filed (a duplicate notification), or not a file we take
        try:
            outcome = process(self.gw, party_id, "mailbox", path)
            layout.create()
            settle(self.gw, layout, name, outcome)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("sftp: %s of party %s not processed now: %s", name, party_id, exc)
            self._retry_later(party_id, name)
            return
        with self._cond:
            self._retry_at.pop((party_id, name), None)
            self._failures.pop((party_id, name), None)
            if outcome.replies is None:
                self.failed += 1
            else:
                self.processed += 1

    def _recover_uploads(self) -> None:
        """Uploads cut short by a stop or crash of the gateway never reached an inbox: file them as failed."""
        for party_id in mailbox_parties(self.gw):
            layout = mailbox(self.gw, party_id)
            for staged in _entries(layout.uploads):
                name = staged.name.partition("-")[2] or staged.name
                fail_upload(
                    self.gw, layout, party_id, "mailbox", staged, name, "the gateway restarted during it"
                )


def _entries(folder: Path) -> Iterator[Path]:
    try:
        yield from sorted(p for p in folder.iterdir() if p.is_file())
    except FileNotFoundError:
        return
