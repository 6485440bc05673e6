"""Reading a CUSCAR interchange into what the channel submits: per message, its CONTRL report and, when
it is accepted, its consignments as mapped, in order. The core (``gateway.consignments.submit``) is
not called here, so the reading can run in a process of its own.

``read_messages`` reads in the calling process. ``read_in_process`` runs the same reading in a second
process (the second CPU) for a file on disk, and hands the results over in small batches through a
pipe: the reader blocks when it is a pipe's buffer ahead, so memory stays bounded. The
reader holds no database connection; everything is committed by the caller as before, so a crash of
either process loses at most the batch in flight, and a rerun creates nothing twice.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from mappings.edifact import structure, syntax
from mappings.edifact.cuscar import Consignment, CuscarReader
from mappings.edifact.replies import Fault, MessageReport, ResponseMessage

DIRECTORIES = {("D", "96B"), ("D", "01B")}
MESSAGE_VERSION_NOT_SUPPORTED = 3
VALUE_NOT_SUPPORTED = 14
BATCH_MESSAGES = 10  # messages per hand-over between the processes


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
# length-prefixed pickles to its standard output; the pipe's buffer is the bound on how far ahead it
# reads (it blocks when the caller has not taken the last frames yet).

_FRAME = struct.Struct("<I")
# imported by name, not run as __main__: the pickles must name this module's classes
_CHILD = "import sys; from mappings.edifact.reading import main; main(sys.argv[1:])"


def _send(out: BinaryIO, kind: str, payload: object) -> None:
    data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_FRAME.pack(len(data)))
    out.write(data)


def _reader(path: str, start: int, syntax_version: int, out: BinaryIO) -> None:
    """The reader process: batches of messages, then ("end", None) or ("fault", (code, tag))."""
    batch: list[ReadMessage] = []
    try:
        with open(path, "rb") as source:
            source.seek(start)
            for read in read_messages(source, syntax_version):
                batch.append(read)
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
    try:
        while True:
            head = frames.read(_FRAME.size)
            if len(head) < _FRAME.size:
                raise ReaderFailed(f"the reader process ended with exit code {process.wait()}")
            (length,) = _FRAME.unpack(head)
            data = frames.read(length)
            if len(data) < length:
                raise ReaderFailed(f"the reader process ended with exit code {process.wait()}")
            kind, payload = pickle.loads(data)  # from our own child process only
            if kind == "messages":
                yield from payload
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
        frames.close()


def main(argv: list[str]) -> None:
    _reader(argv[0], int(argv[1]), int(argv[2]), sys.stdout.buffer)
