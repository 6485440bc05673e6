"""Replies to a CUSCAR interchange (design section 9): one CONTRL interchange of the inbound syntax
version, then one CUSRES per accepted CUSCAR message in a second interchange.

CONTRL (syntax 3: ``CONTRL:D:3:UN``; syntax 4: ``CONTRL:4:1:UN``), codes from UNSL.96B:
``UCI`` the interchange (0083 action: 7 acknowledged, 4 rejected; 0085 the syntax error; 0013 the service
segment at fault), per message ``UCM`` (same fields for the message), and for each fault inside a message
``UCS`` (0096 segment position, UNH = 1; 0085) with ``UCD`` (0085; S011 element and component position)
for a faulty element. Messages inside ``UNG`` groups are reported under their group's ``UCF``.

CUSRES D.96B (CUSRES_D.96B), one per accepted CUSCAR message:

| pos  | group | segment                      | content                                             |
|------|-------|------------------------------|-----------------------------------------------------|
| 0020 | -     | BGM+962+NO+9 (963)           | customs response; 963 when no consignment accepted  |
| 0030 | -     | DTM+137:CCYYMMDDHHMM:203     | when the response was made, Hong Kong time          |
| 0150 | SG3   | RFF+ACW:DOCNO                | the CUSCAR's BGM document number                    |
| 0280 | SG6   | DOC+730+REF                  | one per consignment: its road consignment note      |
| 0300 | SG6   | RFF+XC:CCRN                  | its CCRN when accepted (lodge, amend, cancel)       |
| 0570 | SG12  | ERP+2:ITEM+TAG:POSITION      | per error: goods item, segment tag and position     |
| 0590 | SG12  | ERC+SHORT::ZZZ               | the catalogue's short code (9321, an..8)            |
| 0600 | SG12  | FTX+AAO+++NAME: MESSAGE      | the catalogue name, the field and the message       |
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pydifact.segments import Segment

from gateway.clock import HONG_KONG
from gateway.errors import Problem
from mappings.edifact import syntax

ACKNOWLEDGED, REJECTED = "7", "4"
DUPLICATE_DETECTED = 26
SERVICE_SEGMENTS = frozenset({"UNA", "UNB", "UNG", "UNH", "UNT", "UNE", "UNZ"})

# UNOA (ISO 9735 level A) is upper case letters, digits, space and these; level B adds lower case.
_UNOA = re.compile(r"[^A-Z0-9 .,\-()/'+:=?!\"%&*;<>]")


@dataclass(frozen=True)
class Addressee:
    """Who the replies go to and how: read from the inbound UNB."""

    sender: str  # the partner (inbound UNB 0004)
    sender_qualifier: str | None
    recipient: str  # the gateway (inbound 0010)
    recipient_qualifier: str | None
    control_reference: str  # inbound 0020
    syntax_identifier: str  # UNOA ... UNOY, as the inbound declared when supported
    syntax_version: int


@dataclass(frozen=True)
class Fault:
    """A syntax error at one place: 0085 code, the segment (position in message, UNH = 1), element and
    component (1-based), or the service segment tag for interchange and message level faults."""

    code: int
    segment_position: int | None = None
    segment_tag: str | None = None
    element_position: int | None = None
    component_position: int | None = None


@dataclass
class MessageReport:
    """One inbound message as CONTRL reports it."""

    reference: str
    message_type: tuple[str, ...]  # (0065, 0052, 0054, 0051)
    faults: list[Fault] = field(default_factory=list)
    group: str | None = None  # UNG 0048, when the message was in a functional group
    # UNG S006 and S007 (identification, qualifier), echoed in the group's UCF
    group_sender: tuple[str, str | None] | None = None
    group_recipient: tuple[str, str | None] | None = None

    @property
    def accepted(self) -> bool:
        return not self.faults


@dataclass
class ConsignmentResult:
    """One consignment as CUSRES reports it: its CCRN, or its errors with the segment each concerns."""

    reference: str
    ccrn: str | None = None
    errors: list[tuple[Problem, str, int, int | None]] = field(default_factory=list)  # tag, pos, item


@dataclass
class ResponseMessage:
    """The CUSRES for one accepted CUSCAR message."""

    doc_number: str
    directory: tuple[str, str]  # ("D", "96B") or ("D", "01B"): CUSRES answers in the CUSCAR's
    consignments: list[ConsignmentResult] = field(default_factory=list)


def fit_text(text: str, charset: str) -> str:
    """Text in the repertoire the interchange declared: UNOA is upper case without ``_ [ ]``; UNOB is
    ASCII; UNOC Latin-1; UNOW and UNOY take any character."""
    if charset in ("UNOW", "UNOY"):
        return text
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    if charset == "UNOA":
        return _UNOA.sub(" ", plain.upper().replace("[", "(").replace("]", ")"))
    if charset == "UNOB":
        return plain
    return text.encode("latin-1", "replace").decode("latin-1")


def _split(text: str, width: int, parts: int) -> list[str]:
    if len(text) > width * parts:
        text = text[: width * parts - 3] + "..."
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def contrl_message(
    to: Addressee,
    messages: Sequence[MessageReport],
    interchange_fault: Fault | None = None,
    reject_interchange: bool = False,
) -> list[Segment]:
    """The body of a CONTRL (UCI..): acknowledges or rejects the interchange and each message."""
    uci_action = REJECTED if reject_interchange else ACKNOWLEDGED
    uci: list[str | list[str]] = [
        to.control_reference,
        _qualified(to.sender, to.sender_qualifier),
        _qualified(to.recipient, to.recipient_qualifier),
        uci_action,
    ]
    if interchange_fault is not None:
        # 0013 names a service segment; a fault in a data segment (a truncated one) has none to name
        tag = interchange_fault.segment_tag or ""
        uci += [str(interchange_fault.code), tag if tag in SERVICE_SEGMENTS else ""]
    body = [Segment("UCI", *uci)]
    grouped: dict[str | None, list[MessageReport]] = {}
    for report in messages:
        grouped.setdefault(report.group, []).append(report)
    for report in grouped.get(None, []):
        body += _ucm(report)
    for group, reports in grouped.items():
        if group is None:
            continue
        action = ACKNOWLEDGED if any(r.accepted for r in reports) else REJECTED
        # UCF S006/S007 echo the group's own UNG addresses (they may differ from the UNB ones)
        first = reports[0]
        sender = first.group_sender or (to.sender, to.sender_qualifier)
        recipient = first.group_recipient or (to.recipient, to.recipient_qualifier)
        body.append(Segment("UCF", group[:14], _address(*sender), _address(*recipient), action))
        for report in reports:
            body += _ucm(report)
    return body


def _qualified(identifier: str, qualifier: str | None) -> str | list[str]:
    return [identifier, qualifier] if qualifier else identifier


def _address(identifier: str, qualifier: str | None) -> str | list[str]:
    """An identification echoed within the lengths of S006/S007 (0040/0044 an..35, 0007 an..4)."""
    return _qualified(identifier[:35], qualifier if qualifier and len(qualifier) <= 4 else None)


# S009 as echoed in UCM: 0065 an..6, 0052 an..3, 0054 an..3, 0051 an..2, 0057 an..6
_S009_LENGTHS = (6, 3, 3, 2, 6)
_S009_EXPECTED = ("CUSCAR", "D", "96B", "UN")


def _ucm(report: MessageReport) -> list[Segment]:
    # echoed within the lengths of UCM's elements: a damaged UNH must not make the CONTRL invalid
    # and its four mandatory components present: one the damage removed is echoed as the message this
    # gateway expects (CUSCAR:D:96B:UN), so that the rejection itself stays a valid CONTRL
    given = [value[:size] for value, size in zip(report.message_type, _S009_LENGTHS, strict=False)]
    given += [""] * (len(_S009_EXPECTED) - len(given))
    s009 = [value or expected for value, expected in zip(given, _S009_EXPECTED, strict=False)]
    s009 += [value for value in given[len(_S009_EXPECTED) :] if value]
    reference = report.reference[:14]  # 0062 an..14
    if report.accepted:
        return [Segment("UCM", reference, s009, ACKNOWLEDGED)]
    # Faults of the message's own envelope (UNH, UNT: counts, references) are the UCM's; the rest UCS/UCD.
    envelope = [f for f in report.faults if f.segment_position is None or f.segment_tag in ("UNH", "UNT")]
    inside = [f for f in report.faults if f not in envelope]
    ucm: list[str | list[str]] = [reference, s009, REJECTED]
    if envelope:
        ucm += [str(envelope[0].code), envelope[0].segment_tag or ""]
    elif not inside:
        ucm += ["18"]  # unspecified error: never reached, a rejected message has a fault
    out = [Segment("UCM", *ucm)]
    by_segment: dict[int, list[Fault]] = {}
    for fault in inside:
        assert fault.segment_position is not None
        by_segment.setdefault(fault.segment_position, []).append(fault)
    for position, faults in list(by_segment.items())[:999]:
        segment_level = [f for f in faults if f.element_position is None]
        element_level = [f for f in faults if f.element_position is not None]
        code = (segment_level or faults)[0].code
        out.append(Segment("UCS", str(position), str(code)))
        for f in element_level[:99]:
            where = [str(f.element_position)]
            if f.component_position:
                where.append(str(f.component_position))
            out.append(Segment("UCD", str(f.code), where if len(where) > 1 else where[0]))
    return out


def contrl_type(syntax_version: int) -> tuple[str, ...]:
    return ("CONTRL", "4", "1", "UN") if syntax_version == 4 else ("CONTRL", "D", "3", "UN")


def contrl_interchange(
    to: Addressee,
    our_reference: str,
    prepared: datetime,
    messages: Sequence[MessageReport],
    interchange_fault: Fault | None = None,
    reject_interchange: bool = False,
) -> bytes:
    body = contrl_message(to, messages, interchange_fault, reject_interchange)
    message = syntax.build_message("1", contrl_type(to.syntax_version), body)
    return _interchange(to, our_reference, prepared, [message])


def cusres_message(response: ResponseMessage, number: str, prepared: datetime, charset: str) -> list[Segment]:
    """The body of one CUSRES (BGM..) answering one CUSCAR message."""
    accepted = any(c.ccrn for c in response.consignments)
    stamp = prepared.astimezone(HONG_KONG).strftime("%Y%m%d%H%M")
    body = [
        Segment("BGM", "962" if accepted else "963", number, "9"),
        Segment("DTM", ["137", stamp, "203"]),
        Segment("RFF", ["ACW", fit_text(response.doc_number, charset)]),
    ]
    for c in response.consignments:
        body.append(
            Segment("DOC", "730", fit_text(c.reference, charset)) if c.reference else Segment("DOC", "730")
        )
        if c.ccrn:
            body.append(Segment("RFF", ["XC", c.ccrn]))
        for problem, tag, position, item in c.errors[:9999]:
            point = ["2", str(item)] if item is not None else "2"
            body.append(Segment("ERP", point, [tag, str(position)]))
            body.append(Segment("ERC", [problem.kind.short, "", "ZZZ"]))
            text = (
                f"{problem.code}: {problem.field} {problem.message}"
                if problem.field
                else (f"{problem.code}: {problem.message}")
            )
            body.append(Segment("FTX", "AAO", "", "", _split(fit_text(text, charset), 70, 5)))
    return body


def cusres_message_bytes(
    to: Addressee, our_reference: str, prepared: datetime, number: int, response: ResponseMessage
) -> bytes:
    """One CUSRES, UNH to UNT, serialized at once: a big interchange's replies are kept as bytes, not as
    segment objects, until they are sent."""
    body = cusres_message(response, f"{our_reference}-{number}", prepared, to.syntax_identifier)
    message = syntax.build_message(str(number), ("CUSRES", *response.directory, "UN"), body)
    return syntax.serialize(
        message, una=False, syntax_version=to.syntax_version, charset=to.syntax_identifier
    )


def cusres_interchange(
    to: Addressee, our_reference: str, prepared: datetime, messages: Sequence[bytes]
) -> bytes | None:
    """The CUSRES messages of one inbound interchange (from ``cusres_message_bytes``) in one
    interchange; None when there is none."""
    if not messages:
        return None
    whole = _interchange(to, our_reference, prepared, [])
    unz = whole.rindex(b"UNZ")
    trailer = syntax.serialize(
        [Segment("UNZ", str(len(messages)), our_reference)],
        una=False,
        syntax_version=to.syntax_version,
        charset=to.syntax_identifier,
    )
    return whole[:unz] + b"".join(messages) + trailer


def _interchange(
    to: Addressee, our_reference: str, prepared: datetime, messages: list[list[Segment]]
) -> bytes:
    return syntax.build_interchange(
        messages,
        sender=to.recipient,
        recipient=to.sender,
        sender_qualifier=to.recipient_qualifier,
        recipient_qualifier=to.sender_qualifier,
        control_reference=our_reference,
        prepared=prepared.astimezone(HONG_KONG).replace(tzinfo=None),
        syntax_version=to.syntax_version,
        charset=to.syntax_identifier,
    )
