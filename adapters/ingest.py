"""One file in, its replies out: the ingest path shared by the SFTP mailbox, SFTP polling and files
given on the command line.

The format is told by the first bytes that are not blank: ``UNA`` or ``UNB`` is an EDIFACT interchange
(answered by a CONTRL and, when any message was accepted, a CUSRES), ``<`` an XML ``CargoInformation``
document (answered by an ``Acknowledgement``). Replies are keyed by the suffix their file gets after the
whole input name (design section 9: ``m1.edi`` -> ``m1.edi.contrl.edi``, ``m1.edi.cusres.edi``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adapters import edifact_channel, xml_channel
from gateway.context import Actor, Gateway
from gateway.errors import GatewayError, Problem

CONTRL = ".contrl.edi"
CUSRES = ".cusres.edi"
ACK = ".ack.xml"
REPLY_SUFFIXES = (CONTRL, CUSRES, ACK)
_SNIFF = 4096
_TRANSIENT = frozenset({"UNAVAILABLE", "STORAGE_FULL", "INTERNAL"})
_BOM = b"\xef\xbb\xbf"


class IngestError(Exception):
    """The file cannot be processed at all (empty, neither EDIFACT nor XML, no one to answer, not the
    sender's, too large): nothing in it was accepted. The message says why, for a person to read."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def detect(head: bytes) -> str:
    """``"edifact"`` or ``"xml"`` from a file's first bytes; IngestError for anything else."""
    text = head[len(_BOM) :] if head.startswith(_BOM) else head
    text = text.lstrip(b" \t\r\n\x00")
    if not text:
        raise IngestError("the file is empty (or blank): nothing to process")
    if text[:3] in (b"UNA", b"UNB"):
        return "edifact"
    if text[:1] == b"<":
        return "xml"
    shown = text[:16].decode("latin-1").encode("unicode_escape").decode("ascii")
    raise IngestError(
        f"the file is neither EDIFACT (which starts with UNA or UNB) nor XML (which starts with '<'); "
        f"it starts with {shown!r}"
    )


def _explain(error: GatewayError) -> IngestError:
    text = "; ".join(f"{p.code}{f' ({p.field})' if p.field else ''}: {p.message}" for p in error.problems)
    return IngestError(text or "the file was refused", error.problems)


def ingest_file(gw: Gateway, actor: Actor, path: Path) -> dict[str, bytes]:
    """Process the file at ``path`` as ``actor`` and return its replies by suffix.

    Raises IngestError when nothing in the file could be processed; database errors and the gateway's
    own transient trouble (GatewayError UNAVAILABLE, STORAGE_FULL) pass through: nothing was lost, the
    caller keeps the file and tries again later. Every business action is
    idempotent, so running a file again after a crash creates nothing twice."""
    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            kind = detect(stream.read(_SNIFF))
            limit = gw.config.server.max_body_bytes
            if size > limit:
                raise IngestError(
                    f"TOO_LARGE: the file is {size} bytes; the limit is {limit} bytes "
                    "([server] max_body_bytes): split it into smaller files"
                )
            stream.seek(0)
            try:
                if kind == "edifact":
                    # Streamed: stored and read a chunk at a time, never held whole (docs/edifact.md).
                    result = edifact_channel.ingest(gw, actor, stream, edifact_channel.MEDIA_TYPE)
                    replies = {CONTRL: result.contrl}
                    if result.cusres is not None:
                        replies[CUSRES] = result.cusres
                    return replies
                ack = xml_channel.ingest_xml(gw, actor, stream.read())
                return {ACK: ack}
            except GatewayError as exc:
                if any(p.code in _TRANSIENT for p in exc.problems):
                    raise  # the gateway's own trouble, not the file's: the caller keeps it and retries
                raise _explain(exc) from None
    except OSError as exc:
        raise IngestError(f"the file cannot be read: {exc.strerror or exc}") from None
