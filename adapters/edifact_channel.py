"""The EDIFACT channel (design section 9): a CUSCAR interchange in, a CONTRL and CUSRES interchanges out.

The raw interchange is stored with its SHA-256 before anything is read. Messages are read one at a time
and their consignments submitted to the core in batches, each batch one transaction, so memory stays
bounded and a crash loses at most the batch in flight; a rerun of the same file then creates nothing
twice, because every action is idempotent. Replies are stored before they are returned, and a resent
interchange (same sender, same control reference, same SHA-256) gets them again.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from gateway import consignments, parties, tables
from gateway.consignments import require_filer
from gateway.context import Actor, Gateway, store_raw_stream
from gateway.errors import GatewayError, Problem, Unavailable
from mappings.edifact import reading, syntax
from mappings.edifact.cuscar import Consignment
from mappings.edifact.replies import (
    DUPLICATE_DETECTED,
    Addressee,
    ConsignmentResult,
    Fault,
    MessageReport,
    ResponseMessage,
    contrl_interchange,
    cusres_interchange,
    cusres_message_bytes,
)

log = logging.getLogger("roadcargo.edifact")

BATCH = 500  # consignments per core transaction: big enough to be fast, small enough to bound memory
DIRECTORIES = reading.DIRECTORIES
CHARSETS = {3: {"UNOA", "UNOB", "UNOC"}, 4: {"UNOA", "UNOB", "UNOC", "UNOW", "UNOY"}}
MEDIA_TYPE = "application/EDIFACT"
_I = tables.edifact_interchanges
_R = tables.edifact_replies

# Syntax error codes of UNSL 0085 this channel raises itself.
SYNTAX_NOT_SUPPORTED = 2
MESSAGE_VERSION_NOT_SUPPORTED = reading.MESSAGE_VERSION_NOT_SUPPORTED
RECIPIENT_NOT_ACTUAL = 7
VALUE_NOT_SUPPORTED = reading.VALUE_NOT_SUPPORTED
LOWER_LEVEL_EMPTY = 32


@dataclass
class IngestResult:
    """What an interchange got: its replies, and how its consignments fared."""

    interchange_id: int | None
    contrl: bytes
    cusres: bytes | None
    replayed: bool = False
    messages: int = 0
    consignments: int = 0
    accepted: int = 0
    problems: list[Problem] = field(default_factory=list)  # interchange level, e.g. a duplicate

    @property
    def body(self) -> bytes:
        return self.contrl + (self.cusres or b"")


# -- the service ---------------------------------------------------------------------------------


def ingest(
    gw: Gateway,
    actor: Actor,
    source: bytes | BinaryIO,
    content_type: str | None = MEDIA_TYPE,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Process one interchange as ``actor``. Raises GatewayError only when no CONTRL can be addressed
    (no readable UNB: MALFORMED), when the UNB sender is not the actor's (SENDER_MISMATCH), or when the
    actor may not file (FORBIDDEN); every other fault is answered in the CONTRL."""
    start = 0 if isinstance(source, bytes) else source.tell()
    stored = store_raw_stream(gw, actor, content_type, source)  # streamed: never a second copy
    require_filer(actor)
    body = _Body(source, start)
    head = body.head()
    if stored.size == 0 or (stored.size <= len(head) and head.isspace()):  # not strip(): no copy
        raise GatewayError.one("MALFORMED", "the interchange is empty: send UNB ... UNZ")
    to, header_fault = _address(gw, body)
    _check_sender(gw, actor, to.sender)
    claimed = _claim(gw, actor, to, stored.sha256, stored.message_id)
    if isinstance(claimed, IngestResult):
        return claimed
    run = _Run(gw, actor, to, claimed, stored.message_id)
    if header_fault is None and to.recipient != gw.config.edifact.identifier:
        header_fault = Fault(RECIPIENT_NOT_ACTUAL, segment_tag="UNB")
    if header_fault is not None:
        return run.finish(interchange_fault=header_fault, reject=True)
    with _bulk_allocation(stored.size > BULK_BYTES):
        return run.read(body.reader(), stored.size, progress)


class _Body:
    """The interchange as given: bytes, or a binary file read again from where it stood, a chunk at
    a time (the raw message is already stored: the body is never held whole a second time)."""

    def __init__(self, source: bytes | BinaryIO, start: int) -> None:
        self.source = source
        self.start = start

    def reader(self) -> bytes | BinaryIO:
        if not isinstance(self.source, bytes):
            self.source.seek(self.start)
        return self.source

    def head(self, size: int = 65_536) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[:size]
        self.source.seek(self.start)
        return self.source.read(size)


BULK_BYTES = 1_000_000
# From this size an interchange in a file (a file ingested, an HTTP body spooled to disk) is read by a
# second process while this one stores (bench/RESULTS.md: "EDIFACT ingest"); below it starting that
# process costs more than it saves. ROADCARGO_EDIFACT_READER_BYTES sets another size; 0 = never.
_READER_DEFAULT = 2_000_000
_reader_setting = os.environ.get("ROADCARGO_EDIFACT_READER_BYTES", "").strip()
READER_PROCESS_BYTES = (int(_reader_setting) if _reader_setting else _READER_DEFAULT) or 1 << 62


def _file_path(source: bytes | BinaryIO) -> str | None:
    """A path the reader process can open the source's file by (with its own file position), or None
    when the source is not a regular file: bytes, a pipe, a spooled body still in memory."""
    if isinstance(source, bytes) or getattr(source, "_rolled", True) is False:
        return None  # a SpooledTemporaryFile in memory: fileno() would write it out
    try:
        fd = source.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
    except (AttributeError, OSError, ValueError):
        return None
    name = getattr(source, "name", None)
    if isinstance(name, str) and os.path.isfile(name) and os.path.samestat(os.stat(name), os.fstat(fd)):
        return name
    # an unnamed temporary file (an HTTP body spooled to disk): opened again through /proc
    proc = f"/proc/{os.getpid()}/fd/{fd}"
    return proc if os.path.exists(proc) else None


@contextmanager
def _bulk_allocation(bulk: bool) -> Iterator[None]:
    """Reading a big interchange allocates millions of short-lived objects without cycles; with the
    default thresholds the cycle collector then runs full scans so often that it costs a third of the
    ingest time (measured in bench/edifact_ingest.py). Collect less often for the duration."""
    if not bulk:
        yield
        return
    saved = gc.get_threshold()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def _address(gw: Gateway, body: _Body) -> tuple[Addressee, Fault | None]:
    """Who the CONTRL goes to. A UNB that cannot be read at all leaves no one to answer: MALFORMED."""
    try:
        header = syntax.read_header(body.reader())
    except syntax.EdifactSyntaxError as exc:
        crude = _crude_unb(body.head(2048))
        if crude is None:
            raise GatewayError.one(
                "MALFORMED", f"no CONTRL can be addressed: the interchange header cannot be read ({exc})"
            ) from None
        return crude, Fault(exc.code, segment_tag=exc.segment_tag or "UNB")
    to = _bounded(
        Addressee(
            sender=header.sender,
            sender_qualifier=header.sender_qualifier,
            recipient=header.recipient,
            recipient_qualifier=header.recipient_qualifier,
            control_reference=header.control_reference,
            syntax_identifier=header.syntax_identifier,
            syntax_version=header.syntax_version,
        )
    )
    if header.syntax_identifier not in CHARSETS.get(header.syntax_version, set()):
        return _safe_syntax(to), Fault(SYNTAX_NOT_SUPPORTED, segment_tag="UNB")
    return to, None


def _bounded(to: Addressee) -> Addressee:
    """What the replies echo of the UNB, within the lengths of UNB and UCI (0004/0010 an..35, 0007
    an..4, 0020 an..14): a CONTRL must stay valid even when the header it answers is not."""

    def qualifier(value: str | None) -> str | None:
        return value if value and len(value) <= 4 else None

    return dataclasses.replace(
        to,
        sender=to.sender[:35],
        sender_qualifier=qualifier(to.sender_qualifier),
        recipient=to.recipient[:35],
        recipient_qualifier=qualifier(to.recipient_qualifier),
        control_reference=to.control_reference[:14],
    )


def _safe_syntax(to: Addressee) -> Addressee:
    """The syntax the CONTRL is written in when the inbound one is not supported."""
    version = to.syntax_version if to.syntax_version in CHARSETS else 3
    return dataclasses.replace(to, syntax_identifier="UNOC", syntax_version=version)


def _crude_unb(data: bytes) -> Addressee | None:
    """Sender, recipient and reference of a UNB the syntax layer refused (an unsupported syntax level,
    say): enough to address a CONTRL that says why. Read with the default or UNA separators."""
    text = data[:2048].decode("latin-1").lstrip()
    component, element, release, terminator = ":", "+", "?", "'"
    if text.startswith("UNA") and len(text) >= 9:
        component, element, release, terminator = text[3], text[4], text[6], text[8]
        text = text[9:].lstrip()
    if not text.startswith("UNB"):
        return None
    end = _unescaped(text, terminator, release)
    if end < 0:
        return None
    parts = [_unrelease(p, release) for p in _split_unescaped(text[:end], element, release)]
    if len(parts) < 6:
        return None
    s001, s002, s003 = (_split_unescaped(p, component, release) for p in parts[1:4])
    version = s001[1] if len(s001) > 1 else ""
    if not (s002[0] and s003[0] and parts[5]):
        return None
    return _bounded(
        Addressee(
            sender=_unrelease(s002[0], release)[:35],
            sender_qualifier=(_unrelease(s002[1], release) or None) if len(s002) > 1 else None,
            recipient=_unrelease(s003[0], release)[:35],
            recipient_qualifier=(_unrelease(s003[1], release) or None) if len(s003) > 1 else None,
            control_reference=parts[5][:14],
            syntax_identifier="UNOC",
            syntax_version=4 if version == "4" else 3,
        )
    )


def _unescaped(text: str, char: str, release: str, start: int = 0) -> int:
    i = start
    while i < len(text):
        if text[i] == release:
            i += 2
            continue
        if text[i] == char:
            return i
        i += 1
    return -1


def _split_unescaped(text: str, char: str, release: str) -> list[str]:
    out, start = [], 0
    while True:
        end = _unescaped(text, char, release, start)
        if end < 0:
            out.append(text[start:])
            return out
        out.append(text[start:end])
        start = end + 1


def _unrelease(text: str, release: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == release and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _check_sender(gw: Gateway, actor: Actor, sender: str) -> None:
    owner = None
    if "\x00" not in sender:  # no registered identifier holds a NUL, and PostgreSQL text cannot
        with gw.engine.connect() as conn:
            owner = conn.scalar(
                select(tables.edi_identifiers.c.party_id).where(tables.edi_identifiers.c.identifier == sender)
            )
    if owner is None or owner != actor.party_id:
        raise GatewayError.one(
            "SENDER_MISMATCH",
            f"the interchange sender {sender!r} (UNB 0004) is not one of your registered EDI identifiers",
            "UNB.0004",
        )


def _claim(gw: Gateway, actor: Actor, to: Addressee, digest: str, raw_id: int) -> int | IngestResult:
    """Take the sender's control reference for this interchange, or answer a resent one."""
    for _attempt in range(3):
        with gw.engine.begin() as conn:
            row = conn.execute(
                select(_I).where(_I.c.sender == to.sender, _I.c.claim == to.control_reference)
            ).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        result = conn.execute(
                            insert(_I).values(
                                raw_message_id=raw_id,
                                party_id=actor.party_id,
                                sender=to.sender,
                                control_reference=to.control_reference,
                                claim=to.control_reference,
                                sha256=digest,
                                syntax=f"{to.syntax_identifier}:{to.syntax_version}"[:6],
                                status="PROCESSING",
                                messages=0,
                                consignments=0,
                                accepted=0,
                                received_at=gw.now(),
                            )
                        )
                except IntegrityError:
                    continue  # another process claimed it first: look again
                return int(result.inserted_primary_key[0])  # type: ignore[index]
        if row.sha256 != digest:
            return _duplicate(gw, actor, to, digest, raw_id, row.interchange_id)
        if row.status == "PROCESSING":
            return int(row.interchange_id)  # a run that did not finish: its actions are idempotent
        return _stored(gw, row)
    raise Unavailable("the interchange reference is being claimed concurrently; retry", 1)


def _stored(gw: Gateway, row: Any) -> IngestResult:
    with gw.engine.connect() as conn:
        replies = {
            r.kind: r.body
            for r in conn.execute(
                select(_R.c.kind, _R.c.body).where(_R.c.interchange_id == row.interchange_id)
            )
        }
    return IngestResult(
        row.interchange_id,
        bytes(replies["CONTRL"]),
        bytes(replies["CUSRES"]) if "CUSRES" in replies else None,
        replayed=True,
        messages=row.messages,
        consignments=row.consignments,
        accepted=row.accepted,
    )


def _duplicate(
    gw: Gateway, actor: Actor, to: Addressee, digest: str, raw_id: int, first: int
) -> IngestResult:
    problem = Problem(
        "DUPLICATE_INTERCHANGE",
        "UNB.0020",
        f"interchange control reference {to.control_reference!r} was already used by sender {to.sender!r} "
        f"for an interchange with other content (interchange {first}); nothing of this one was processed",
    )
    with gw.engine.begin() as conn:
        result = conn.execute(
            insert(_I).values(
                raw_message_id=raw_id,
                party_id=actor.party_id,
                sender=to.sender,
                control_reference=to.control_reference,
                claim=None,
                sha256=digest,
                syntax=f"{to.syntax_identifier}:{to.syntax_version}"[:6],
                status="DUPLICATE",
                messages=0,
                consignments=0,
                accepted=0,
                received_at=gw.now(),
            )
        )
        interchange_id = int(result.inserted_primary_key[0])  # type: ignore[index]
        contrl = contrl_interchange(
            to,
            _our_reference("C", interchange_id),
            gw.now(),
            [],
            Fault(DUPLICATE_DETECTED, segment_tag="UNB"),
            reject_interchange=True,
        )
        _store_replies(conn, gw, interchange_id, contrl, None)
        conn.execute(update(_I).where(_I.c.interchange_id == interchange_id).values(completed_at=gw.now()))
    return IngestResult(interchange_id, contrl, None, problems=[problem])


def _our_reference(kind: str, interchange_id: int) -> str:
    return f"{kind}{interchange_id:013d}"


def _store_replies(conn: Any, gw: Gateway, interchange_id: int, contrl: bytes, cusres: bytes | None) -> None:
    rows = [("CONTRL", "C", contrl)] + ([("CUSRES", "R", cusres)] if cusres is not None else [])
    conn.execute(
        insert(_R),
        [
            {
                "interchange_id": interchange_id,
                "kind": kind,
                "control_reference": _our_reference(prefix, interchange_id),
                "body": body,
                "created_at": gw.now(),
            }
            for kind, prefix, body in rows
        ],
    )


@dataclass
class _Pending:
    consignment: Consignment
    result: ConsignmentResult


class _Run:
    """One pass over an interchange's messages."""

    def __init__(self, gw: Gateway, actor: Actor, to: Addressee, interchange_id: int, raw_id: int) -> None:
        self.gw = gw
        self.actor = actor
        self.to = to
        self.interchange_id = interchange_id
        self.raw_id = raw_id
        self.reports: list[MessageReport] = []
        self.responses: list[ResponseMessage] = []  # complete, waiting for their batch's outcomes
        self.cusres: list[bytes] = []  # rendered CUSRES messages
        self.prepared = gw.now()
        self.pending: list[_Pending] = []
        self.consignments = 0
        self.accepted = 0
        self.decimal_mark = "."

    def read(
        self, source: bytes | BinaryIO, size: int, progress: Callable[[int], None] | None
    ) -> IngestResult:
        fault: Fault | None = None
        try:
            for read in self._messages(source, size):
                self.reports.append(read.report)
                if read.response is not None:
                    for consignment in read.consignments:
                        self._take(read.response, consignment)
                    self.responses.append(read.response)
                if len(self.pending) >= BATCH:
                    self._flush()
                if progress is not None:
                    progress(read.offset)
        except syntax.EdifactSyntaxError as exc:
            fault = Fault(exc.code, segment_tag=exc.segment_tag or "UNZ")
        except reading.ReaderFailed as exc:
            self._flush()  # keep what was read: a rerun goes on from there, creating nothing twice
            log.error("interchange %s: %s", self.interchange_id, exc)
            raise Unavailable("the interchange could not be read to its end; send it again", 1) from None
        self._flush()
        if fault is None and not self.reports:
            fault = Fault(LOWER_LEVEL_EMPTY, segment_tag="UNZ")
        if progress is not None:
            progress(size)
        accepted = any(r.accepted for r in self.reports)
        return self.finish(interchange_fault=fault, reject=fault is not None and not accepted)

    def _messages(self, source: bytes | BinaryIO, size: int) -> Iterator[reading.ReadMessage]:
        """Read here, or by a second process when the interchange is big and in a file (the second
        CPU then tokenizes, checks and maps while this process validates and stores)."""
        version = self.to.syntax_version
        path = _file_path(source) if size >= READER_PROCESS_BYTES and (os.cpu_count() or 1) > 1 else None
        if path is not None:
            assert not isinstance(source, bytes)
            source.flush()  # a spooled body's last writes may still be in its buffer
            return reading.read_in_process(path, source.tell(), version)
        return reading.read_messages(source, version)

    def _take(self, response: ResponseMessage, consignment: Consignment) -> None:
        result = ConsignmentResult(consignment.reference)
        response.consignments.append(result)
        self.consignments += 1
        if consignment.submits is None:
            result.errors = [_error(consignment, p) for p in consignment.problems]
        else:
            self.pending.append(_Pending(consignment, result))

    def _flush(self) -> None:
        """Submit the pending consignments; then every complete message can have its CUSRES."""
        self._submit()
        for response in self.responses:
            self.cusres.append(
                cusres_message_bytes(
                    self.to,
                    _our_reference("R", self.interchange_id),
                    self.prepared,
                    len(self.cusres) + 1,
                    response,
                )
            )
        self.responses = []

    def _submit(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        subs = [s for s in (p.consignment.submission for p in batch) if s is not None]
        outcomes = consignments.submit(self.gw, self.actor, subs, self.raw_id)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, GatewayError):
                pending.result.errors = [_error(pending.consignment, p) for p in outcome.problems]
            else:
                pending.result.ccrn = str(outcome.view["ccrn"])
                self.accepted += 1

    def finish(self, interchange_fault: Fault | None, reject: bool) -> IngestResult:
        now = self.prepared
        contrl = contrl_interchange(
            self.to,
            _our_reference("C", self.interchange_id),
            now,
            self.reports,
            interchange_fault,
            reject_interchange=reject,
        )
        cusres = cusres_interchange(self.to, _our_reference("R", self.interchange_id), now, self.cusres)
        with self.gw.engine.begin() as conn:
            conn.execute(_R.delete().where(_R.c.interchange_id == self.interchange_id))
            _store_replies(conn, self.gw, self.interchange_id, contrl, cusres)
            conn.execute(
                update(_I)
                .where(_I.c.interchange_id == self.interchange_id)
                .values(
                    status="REJECTED" if reject else "DONE",
                    messages=len(self.reports),
                    consignments=self.consignments,
                    accepted=self.accepted,
                    completed_at=now,
                )
            )
        return IngestResult(
            self.interchange_id,
            contrl,
            cusres,
            messages=len(self.reports),
            consignments=self.consignments,
            accepted=self.accepted,
        )


def _error(consignment: Consignment, problem: Problem) -> tuple[Problem, str, int, int | None]:
    tag, position = consignment.error_point(problem.field)
    item = None
    if problem.field and problem.field.startswith("items["):
        digits = problem.field[6 : problem.field.find("]")]
        item = int(digits) + 1 if digits.isdigit() else None
    return problem, tag, position, item


# -- HTTP: POST /api/v1/edifact --------------------------------------------------------------------

router = APIRouter(prefix="/api/v1")


@router.post(
    "/edifact",
    summary="Send a CUSCAR interchange; get the CONTRL and CUSRES interchanges",
    openapi_extra={
        "requestBody": {"required": True, "content": {MEDIA_TYPE: {"schema": {"type": "string"}}}}
    },
    responses={
        200: {
            "description": "the CONTRL interchange followed by the CUSRES interchange (when any message "
            "was accepted), also when the interchange is rejected",
            "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        400: {"description": "no CONTRL can be addressed (no readable UNB)"},
        403: {"description": "SENDER_MISMATCH: the UNB sender is not yours"},
    },
)
async def post_edifact(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    header = request.headers.get("authorization", "")
    actor = await run_in_threadpool(parties.authenticate_bearer, gw, header, "edifact")
    # Spooled to a temporary file beyond 1 MB: a big interchange is never held in memory whole.
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as body:
        async for chunk in request.stream():
            body.write(chunk)
        body.seek(0)
        result = await run_in_threadpool(
            ingest, gw, actor, cast(BinaryIO, body), request.headers.get("content-type")
        )
    headers = {"X-Roadcargo-Interchange": str(result.interchange_id)}
    if result.problems:
        headers["X-Roadcargo-Errors"] = ",".join(p.code for p in result.problems)
    if result.replayed:
        headers["X-Roadcargo-Replayed"] = "true"
    return Response(result.body, media_type=MEDIA_TYPE, headers=headers)
