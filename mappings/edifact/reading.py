"""Reading a CUSCAR interchange into what the channel submits: per message, its CONTRL report and, when
it is accepted, its consignments as mapped, in order. The core (``gateway.consignments.submit``) is
not called here, so the reading can run in a process of its own.

``read_messages`` reads in the calling process. ``read_in_process`` runs the same reading in a second
process (the second CPU) for a file on disk, and hands the results over in small batches through a
pipe: the reader blocks when it is a few batches ahead, so memory stays bounded. The
reader holds no database connection; everything is committed by the caller as before, so a crash of
either process loses at most the batch in flight, and a rerun creates nothing twice.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from mappings.edifact import structure, syntax
from mappings.edifact.cuscar import Consignment, CuscarReader
from mappings.edifact.replies import Fault, MessageReport, ResponseMessage

DIRECTORIES = {("D", "96B"), ("D", "01B")}
MESSAGE_VERSION_NOT_SUPPORTED = 3
VALUE_NOT_SUPPORTED = 14
BATCH_MESSAGES = 4  # messages per hand-over between the processes
FRAMES_AHEAD = 16  # hand-overs read off the pipe ahead of their use: a few MB at most


@dataclass
class ReadMessage:
    """One message as read: its report; for an accepted CUSCAR its response and consignments."""

    report: MessageReport
    response: ResponseMessage | None
    consignments: list[Consignment] = field(default_factory=list)
    offset: int = 0  # of its last segment in the input: for a progress bar


class ReaderFailed(Exception):
    """The reader process ended without finishing (killed, out of memory, a bug): nothing of what it
    did not hand over was submitted, and a rerun of the interchange picks up where it stopped."""


def fault_of(finding: syntax.Finding) -> Fault:
    return Fault(
        finding.code,
        segment_position=finding.segment_position,
        segment_tag=finding.segment_tag,
        element_position=finding.element_position,
        component_position=finding.component_position,
    )


def read_messages(source: bytes | BinaryIO, syntax_version: int) -> Iterator[ReadMessage]:
    """Every message of the interchange, read, checked and mapped; raises EdifactSyntaxError where
    reading cannot go on (what was yielded before stands)."""
    reader = syntax.read_interchange(source)
    decimal_mark = reader.header.delimiters.decimal
    for message in reader.messages():
        yield read_message(message, decimal_mark, syntax_version)


def read_message(message: syntax.Message, decimal_mark: str, syntax_version: int) -> ReadMessage:
    group = message.group
    report = MessageReport(
        message.reference,
        message.identifier,
        [fault_of(f) for f in message.findings],
        group=group.reference if group is not None else None,
        group_sender=group.sender if group is not None else None,
        group_recipient=group.recipient if group is not None else None,
    )
    offset = message.segments[-1].offset if message.segments else 0
    if not report.faults:
        if message.message_type != "CUSCAR" or message.agency != "UN":
            report.faults.append(Fault(VALUE_NOT_SUPPORTED, segment_tag="UNH"))
        elif (message.version, message.release) not in DIRECTORIES:
            report.faults.append(Fault(MESSAGE_VERSION_NOT_SUPPORTED, segment_tag="UNH"))
        elif not structure.conforms(message.segments, "CUSCAR", syntax_version):
            # the full check, which names every fault, runs only for messages that do not conform
            found = structure.validate_message(message.segments, "CUSCAR", syntax_version=syntax_version)
            report.faults += [fault_of(f) for f in found]
    if report.faults:
        return ReadMessage(report, None, offset=offset)
    mapper = CuscarReader(decimal_mark=decimal_mark)
    response = ResponseMessage("", (message.version, message.release))
    read = ReadMessage(report, response, offset=offset)
    for position, positioned in enumerate(message.segments[1:], start=2):
        done = mapper.feed(position, positioned.segment)
        if done is not None:
            read.consignments.append(done)
    last = mapper.close()
    if last is not None:
        read.consignments.append(last)
    response.doc_number = mapper.doc_number
    return read


# -- the reader process ------------------------------------------------------------------------------
# A plain child interpreter (``python -c ... PATH START VERSION``, see ``_CHILD``), not
# multiprocessing: it must not import the caller's main module again, whatever that is. It writes
# length-prefixed pickles to its standard output; the pipe's buffer and ``FRAMES_AHEAD`` frames taken
# off it are the bound on how far ahead it reads (it blocks when the caller has not taken them yet).
#
# What crosses the pipe is cheap to pickle and to unpickle: per message its report (a few small
# objects), per consignment a flat tuple of strings, the record as mapped (plain dicts and lists) and
# where its fields came from. Records are validated by the core in the caller, as usual: validating
# them here instead would leave this process with most of the work (bench/edifact_ingest.py).

_FRAME = struct.Struct("<I")
# imported by name, not run as __main__: the pickles must name this module's classes
_CHILD = "import sys; from mappings.edifact.reading import main; main(sys.argv[1:])"

# Consignment's fields in order: (sequence, reference, position, action, problems, sources,
# item_sources, submits)
_Packed = tuple[Any, ...]


def _send(out: BinaryIO, kind: str, payload: object) -> None:
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_FRAME.pack(len(data)))
    out.write(data)


def _pack(c: Consignment) -> _Packed:
    """A consignment as plain values for the pipe (``Consignment`` objects pickle slowly)."""
    return (c.sequence, c.reference, c.position, c.action, c.problems, c.sources, c.item_sources, c.submits)


def _unpack(packed: _Packed) -> Consignment:
    return Consignment(*packed)


def _reader(path: str, start: int, syntax_version: int, out: BinaryIO) -> None:
    """The reader process: batches of messages, then ("end", None) or ("fault", (code, tag))."""
    batch: list[tuple[MessageReport, tuple[str, str] | None, str, int, list[_Packed]]] = []
    try:
        with open(path, "rb") as source:
            source.seek(start)
            for read in read_messages(source, syntax_version):
                response = read.response
                batch.append(
                    (
                        read.report,
                        response.directory if response is not None else None,
                        response.doc_number if response is not None else "",
                        read.offset,
                        [_pack(c) for c in read.consignments],
                    )
                )
                if len(batch) >= BATCH_MESSAGES:
                    _send(out, "messages", batch)
                    batch = []
        _send(out, "messages", batch)
        _send(out, "end", None)
    except syntax.EdifactSyntaxError as exc:
        _send(out, "messages", batch)
        _send(out, "fault", (exc.code, exc.segment_tag))
    except Exception as exc:  # reported to the caller, which raises ReaderFailed
        _send(out, "failed", f"{type(exc).__name__}: {exc}")
    out.flush()


def read_in_process(path: str, start: int, syntax_version: int) -> Iterator[ReadMessage]:
    """``read_messages`` of the file at ``path`` (from byte ``start``), read by a second process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, path, str(start), str(syntax_version)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None
    frames = process.stdout
    # A thread takes whole frames off the pipe as they come, so that the reader goes on while this
    # process is busy committing a batch (the pipe's own buffer holds less than one frame).
    ahead: queue.Queue[bytes | None] = queue.Queue(maxsize=FRAMES_AHEAD)
    taker = threading.Thread(target=_take_frames, args=(frames, ahead), daemon=True)
    taker.start()
    try:
        while True:
            data = ahead.get()
            if data is None:
                raise ReaderFailed(f"the reader process ended with exit code {process.wait()}")
            kind, payload = pickle.loads(data)  # from our own child process only
            if kind == "messages":
                for report, directory, doc_number, offset, packed in payload:
                    response = ResponseMessage(doc_number, directory) if directory is not None else None
                    yield ReadMessage(report, response, [_unpack(p) for p in packed], offset)
            elif kind == "end":
                return
            elif kind == "fault":
                code, tag = payload
                raise syntax.EdifactSyntaxError(code, "reading stopped", segment_tag=tag)
            else:
                raise ReaderFailed(f"the reader process failed: {payload}")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        while taker.is_alive():  # let it end: it may wait to put a frame nobody will take
            with contextlib.suppress(queue.Empty):
                ahead.get(timeout=0.1)
        taker.join()
        frames.close()


def _take_frames(frames: BinaryIO, ahead: queue.Queue[bytes | None]) -> None:
    """Whole frames off the pipe into ``ahead``; None at the end of the pipe (or a frame cut short)."""
    try:
        while True:
            head = frames.read(_FRAME.size)
            if len(head) < _FRAME.size:
                return
            (length,) = _FRAME.unpack(head)
            data = frames.read(length)
            if len(data) < length:
                return
            ahead.put(data)
    except (OSError, ValueError):
        return
    finally:
        ahead.put(None)


def main(argv: list[str]) -> None:
    # millions of short-lived objects without cycles: collect less often (adapters/edifact_channel.py
    # _bulk_allocation, for the same reason)
    gc.set_threshold(50_000, 20, 100)
    _reader(argv[0], int(argv[1]), int(argv[2]), sys.stdout.buffer)
