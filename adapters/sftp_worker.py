"""Processing of files that arrive over SFTP, crash-safe (design sections 9 and 11).

A file is processed where it lies (the mailbox inbox, or a poller's local spool), its replies (or the
reason it failed) are committed in ``sftp_files``/``sftp_replies``, then written to the outbox, and only
then does the input leave the inbox. A crash at any point leaves the file in the inbox: the restart
processes it again (every business action is idempotent, and committed replies are reused), so nothing is
lost and nothing is done twice. A file that keeps crashing the process is failed after MAX_ATTEMPTS.

Several gateway processes may share one data directory and database: a mailbox (or a polled partner) is
claimed by one of them at a time (``adapters.sftp_claims``), so no file is processed twice at once, and
an upload in progress holds a ``flock`` on its staged file, so that only the uploads of dead processes are
filed as incomplete.
"""

from __future__ import annotations

import fcntl
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
from adapters.sftp_claims import LEASE_SECONDS, Claims
from gateway import metrics, tables
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
    dated = []
    for entry in entries:
        try:
            dated.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
        except FileNotFoundError:  # filed meanwhile by the process working on this mailbox
            continue
    return [name for _mtime, name in sorted(dated)]


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
        metrics.observe_ingest("sftp", 422, time.monotonic() - started)
        return _fail(gw, file_id, str(exc))
    with gw.engine.begin() as conn:
        if replies:
            conn.execute(
                insert(_R), [{"file_id": file_id, "suffix": s, "body": b} for s, b in replies.items()]
            )
        conn.execute(update(_F).where(_F.c.file_id == file_id).values(status="DONE", completed_at=gw.now()))
    log.info("sftp: %s of party %s processed in %.1f s", name, party_id, time.monotonic() - started)
    metrics.observe_ingest("sftp", 200, time.monotonic() - started)
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


# -- uploads in progress, across processes -----------------------------------------------------------


def lock_upload(fd: int) -> bool:
    """Mark an open upload as in progress with an exclusive ``flock``, held until its process closes it
    or dies; False when another open handle (of any process) holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def upload_in_progress(path: Path) -> bool:
    """Whether some process (this one included) is writing ``path``: its upload lock is held."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not lock_upload(fd):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


ORPHAN_AGE = 5.0  # seconds an unlocked staged upload is left alone after its last change (creation, lock)


def recover_uploads(gw: Gateway, min_age: float = ORPHAN_AGE) -> int:
    """Uploads whose process stopped or died with the file open never reach an inbox: file them as
    failed. An upload another process is still writing holds its lock and is left alone."""
    filed = 0
    for party_id in mailbox_parties(gw):
        layout = mailbox(gw, party_id)
        for staged in _entries(layout.uploads):
            try:
                if time.time() - staged.stat().st_ctime < min_age or upload_in_progress(staged):
                    continue
            except FileNotFoundError:
                continue  # completed meanwhile
            name = staged.name.partition("-")[2] or staged.name
            fail_upload(gw, layout, party_id, "mailbox", staged, name, "the gateway stopped during it")
            filed += 1
    return filed


# -- the queue ---------------------------------------------------------------------------------------

MAILBOX = "mailbox"


class MailboxWorker:
    """Processes the files of the hosted mailboxes in background threads: one file at a time per party
    (in arrival order, so an amendment follows its lodgement), several parties at once, so that one
    partner's big file never holds up the others.

    Any number of processes may run a worker on one data directory and database: a worker claims a
    party's mailbox (``adapters.sftp_claims``) before it touches its files, then processes the waiting
    files oldest first until none is left, and releases it. A mailbox claimed by another live process is
    skipped; one whose claimant died is taken over (at once on the same machine, otherwise when the
    lease runs out). Files left in inboxes are taken at start (resume); a rescan every few seconds takes
    anything a notification missed (uploads received by another process), retries what failed and
    files the uploads of processes that died."""

    def __init__(
        self,
        gw: Gateway,
        threads: int = 2,
        rescan_seconds: float = 5.0,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.gw = gw
        self.threads = max(1, threads)
        self.rescan_seconds = rescan_seconds
        self.claims = Claims(gw, lease_seconds)
        self._cond = threading.Condition()
        self._pending: dict[str, None] = {}  # parties with files to look at, in order of notice
        self._busy: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._stopping = False
        self._stopped = threading.Event()
        self._workers: list[threading.Thread] = []
        self.processed = 0
        self.failed = 0
        self.skipped = 0  # mailboxes found claimed by another process

    # the public face

    def start(self) -> None:
        self.claims.start()
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
        it stays in its inbox, claimed until the process ends, and a restart or another process resumes
        it)."""
        self._stopped.set()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        self.claims.close(release=not any(t.is_alive() for t in self._workers))

    def submit(self, party_id: str, name: str | None = None) -> None:
        """A complete file is in the party's inbox (``name``, kept for the log: the mailbox is taken
        in order as a whole)."""
        with self._cond:
            if self._retry_at.get(party_id, 0.0) > time.monotonic():
                return
            if party_id not in self._pending:
                self._pending[party_id] = None
                self._cond.notify_all()

    def scan(self) -> None:
        for party_id in mailbox_parties(self.gw):
            if waiting_files(mailbox(self.gw, party_id).inbox):
                self.submit(party_id)

    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not self._pending

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.05)
        return self.idle()

    def waiting(self) -> int:
        """Files waiting in the mailboxes this worker has been told of or is working on."""
        with self._cond:
            parties = set(self._pending) | self._busy
        return sum(len(waiting_files(mailbox(self.gw, p).inbox)) for p in parties)

    # the threads

    def _next(self) -> str | None:
        with self._cond:
            while not self._stopping:
                for party_id in self._pending:
                    if party_id not in self._busy:
                        del self._pending[party_id]
                        self._busy.add(party_id)
                        return party_id
                self._cond.wait()
        return None

    def _run(self) -> None:
        while (party_id := self._next()) is not None:
            try:
                self._drain(party_id)
            except Exception:  # the thread must survive anything one file does
                log.exception("sftp: unexpected fault with the mailbox of party %s", party_id)
                self._retry_later(party_id)
            finally:
                with self._cond:
                    self._busy.discard(party_id)
                    self._cond.notify_all()

    def _rescan(self) -> None:
        # Sleeps on its own event: waiting on the queue's condition would swallow a notify meant for a
        # worker, leaving a file to wait for the next one.
        while not self._stopped.wait(self.rescan_seconds):
            try:
                self._recover_uploads()
                self.scan()
            except (OSError, SQLAlchemyError):
                log.exception("sftp: rescan of the mailboxes failed")

    def _retry_later(self, party_id: str) -> None:
        failures = self._failures.get(party_id, 0) + 1
        self._failures[party_id] = failures
        delay = min(300.0, 2.0 ** min(failures, 9))
        log.warning("sftp: the mailbox of party %s waits; retried in %.0f s", party_id, delay)
        with self._cond:
            self._retry_at[party_id] = time.monotonic() + delay

    def _drain(self, party_id: str) -> None:
        """Claim the party's mailbox and process its waiting files, oldest first, until none is left."""
        layout = mailbox(self.gw, party_id)
        if not waiting_files(layout.inbox):
            return
        try:
            claimed = self.claims.acquire(MAILBOX, party_id)
        except SQLAlchemyError as exc:
            log.warning("sftp: cannot claim the mailbox of party %s now: %s", party_id, exc)
            self._retry_later(party_id)
            return
        if not claimed:
            # Another process works on this mailbox and takes its files in turn; the rescan comes back
            # in case it dies.
            with self._cond:
                self.skipped += 1
            return
        try:
            while not self._stopped.is_set():
                names = waiting_files(layout.inbox)
                if not names:
                    return
                if not self._handle(party_id, layout, names[0]):
                    return
        finally:
            try:
                self.claims.release(MAILBOX, party_id)
            except SQLAlchemyError as exc:  # the lease ends it
                log.warning("sftp: cannot release the mailbox of party %s: %s", party_id, exc)

    def _handle(self, party_id: str, layout: Layout, name: str) -> bool:
        """Process and file one waiting file; False when the mailbox must wait (a transient fault)."""
        path = layout.inbox / name
        if not path.is_file() or path.is_symlink():
            return True  # gone meanwhile, or not a file we take
        try:
            self.claims.note(MAILBOX, party_id, name)
            outcome = process(self.gw, party_id, MAILBOX, path)
            if not self.claims.holds(MAILBOX, party_id):
                # Paused past the lease, the mailbox was taken over: the new claimant files this file.
                return False
            layout.create()
            settle(self.gw, layout, name, outcome)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("sftp: %s of party %s not processed now: %s", name, party_id, exc)
            self._retry_later(party_id)
            return False
        with self._cond:
            self._retry_at.pop(party_id, None)
            self._failures.pop(party_id, None)
            if outcome.replies is None:
                self.failed += 1
            else:
                self.processed += 1
        return True

    def _recover_uploads(self) -> None:
        recover_uploads(self.gw)


def _entries(folder: Path) -> Iterator[Path]:
    try:
        yield from sorted(p for p in folder.iterdir() if p.is_file())
    except FileNotFoundError:
        return
