"""EDIFACT syntax (ISO 9735 versions 3 and 4): a streaming tokenizer, the interchange envelope, a writer.

The hot path of the EDIFACT channel. pydifact's parser reads about 1,000 CUSCAR messages a second here
and validates nothing (recipes.md), so this module tokenizes itself, chunk by chunk (a terminator is
real when the run of release characters before it is even), and hands out pydifact ``Segment`` objects in
pydifact's own shapes (a simple element is ``str``, a composite ``list[str]``; trailing empty
components and elements are dropped). Memory stays bounded by ``max_segment_length`` plus one read
chunk whatever the size of the interchange.

Every fault in the input surfaces either as a ``Finding`` attached to a segment or message (the
interchange can go on: reject that message in CONTRL) or as ``EdifactSyntaxError`` (reading cannot go
on: reject the interchange). Both carry the UNSL data element 0085 code and the position.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO

from pydifact.segments import Segment

from mappings.edifact.directory import syntax_error_name

Element = str | list[str]
Source = bytes | bytearray | memoryview | BinaryIO | Iterable[bytes]

DEFAULT_MAX_SEGMENT_LENGTH = 1_000_000
_CHUNK_SIZE = 1 << 18  # 256 KiB: each chunk is split into its segments at once

# Syntax identifier (0001) -> Python codec. UNOW and UNOY exist from syntax version 4 only
# (ISO 9735-1:1998); UNOD..UNOK are valid EDIFACT but not accepted by this gateway.
CODECS = {"UNOA": "ascii", "UNOB": "ascii", "UNOC": "latin-1", "UNOW": "utf-8", "UNOY": "utf-8"}
SYNTAX_4_ONLY = frozenset({"UNOW", "UNOY"})
SYNTAX_VERSIONS = frozenset({3, 4})

# ISO 9735 level A: upper case letters, digits, space and . , - ( ) / = ! " % & * ; < > plus the
# service characters ' + : ?; level B adds the lower case letters. Control characters are valid in
# no level (the IS1/IS3/IS4 separators of level B are service characters, removed before checking).
_LEVEL_A = "A-Z0-9 .,\\-()/=!\"%&*;<>'+:?"
_LEVEL_B = _LEVEL_A + "a-z"


# --- findings and errors --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One syntax or structure fault, with its UNSL 0085 code and where it is.

    ``segment_position`` counts the segments of the message with UNH as 1 (CONTRL UCS 0096);
    ``element_position`` and ``component_position`` are 1-based (UCD S011 0098 and 0104);
    ``interchange_segment`` counts the segments of the interchange with UNB as 1 and ``offset`` is
    the byte offset of the segment in the input.
    """

    code: int
    message: str
    segment_position: int | None = None
    segment_tag: str | None = None
    element_position: int | None = None
    component_position: int | None = None
    interchange_segment: int | None = None
    offset: int | None = None

    @property
    def name(self) -> str:
        """The UNSL name of the code, e.g. "Invalid character(s)"."""
        return syntax_error_name(self.code)

    def where(self) -> str:
        parts = []
        if self.segment_tag:
            parts.append(f"segment {self.segment_tag}")
        if self.segment_position is not None:
            parts.append(f"at position {self.segment_position} of its message")
        if self.interchange_segment is not None:
            parts.append(f"(segment {self.interchange_segment} of the interchange)")
        if self.offset is not None:
            parts.append(f"at byte {self.offset}")
        if self.element_position is not None:
            element = f"element {self.element_position}"
            if self.component_position is not None:
                element += f", component {self.component_position}"
            parts.append(element)
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{self.message} [0085 code {self.code}: {self.name}{'; ' + where if where else ''}]"


class EdifactSyntaxError(Exception):
    """The interchange cannot be read further; ``code`` is the UNSL 0085 syntax error code."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        segment_tag: str | None = None,
        interchange_segment: int | None = None,
        offset: int | None = None,
        element_position: int | None = None,
        component_position: int | None = None,
        segment_position: int | None = None,
        message_reference: str | None = None,
    ) -> None:
        self.finding = Finding(
            code,
            message,
            segment_position,
            segment_tag,
            element_position,
            component_position,
            interchange_segment,
            offset,
        )
        self.message_reference = message_reference
        super().__init__(str(self.finding))

    @property
    def code(self) -> int:
        return self.finding.code

    @property
    def message(self) -> str:
        return self.finding.message

    @property
    def segment_tag(self) -> str | None:
        return self.finding.segment_tag

    @property
    def interchange_segment(self) -> int | None:
        return self.finding.interchange_segment

    @property
    def offset(self) -> int | None:
        return self.finding.offset

    @property
    def element_position(self) -> int | None:
        return self.finding.element_position

    @property
    def component_position(self) -> int | None:
        return self.finding.component_position


# --- delimiters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delimiters:
    """The service characters of an interchange (UNA, or the defaults of ISO 9735)."""

    component: str = ":"
    element: str = "+"
    decimal: str = "."
    release: str | None = "?"
    repetition: str | None = None  # syntax 4 only: the fifth character of UNA
    terminator: str = "'"

    @classmethod
    def default(cls, syntax_version: int = 3) -> Delimiters:
        return cls(repetition="*" if syntax_version == 4 else None)

    @classmethod
    def level_b(cls) -> Delimiters:
        """Level B's defaults without UNA: IS3, IS1, IS4 and no release character (ISO 9735)."""
        return cls(component="\x1f", element="\x1d", release=None, terminator="\x1c")

    def una(self) -> str:
        """The service string advice ``UNA:+.? '`` for these characters."""
        return (
            f"UNA{self.component}{self.element}{self.decimal}{self.release or ' '}"
            f"{self.repetition or ' '}{self.terminator}"
        )

    def specials(self) -> str:
        return "".join(
            c for c in (self.component, self.element, self.release, self.repetition, self.terminator) if c
        )


def _parse_una(text: str, offset: int) -> Delimiters:
    """The six characters after ``UNA``; the fifth is the repetition separator or reserved."""
    component, element, decimal, release, repetition, terminator = tuple(text)
    chosen = [component, element, terminator]
    if release != " ":
        chosen.append(release)
    if repetition != " ":
        chosen.append(repetition)
    for char in chosen:
        # beyond ASCII a separator would be ambiguous under UTF-8 (UNOW, UNOY)
        if char.isalnum() or char in "\r\n" or ord(char) > 0x7E or len(chosen) != len(set(chosen)):
            raise EdifactSyntaxError(
                20,
                f"the service string advice UNA{text} uses {char!r} as a separator: separators must be "
                "distinct and neither letters nor digits",
                segment_tag="UNA",
                offset=offset,
            )
    if decimal not in ".,":
        raise EdifactSyntaxError(
            19,
            f"the decimal mark in UNA must be '.' or ',', not {decimal!r}",
            segment_tag="UNA",
            offset=offset,
        )
    return Delimiters(
        component,
        element,
        decimal,
        None if release == " " else release,
        None if repetition == " " else repetition,
        terminator,
    )


# --- segments ------------------------------------------------------------------------------------


@dataclass(slots=True)
class PositionedSegment:
    """A segment and where it stands: ``number`` in the interchange (UNB = 1), byte ``offset``."""

    segment: Segment
    number: int
    offset: int
    findings: tuple[Finding, ...] = ()
    # syntax 4 repeated elements: {element index (0-based): every occurrence}; elements holds the first
    repetitions: dict[int, list[Element]] | None = None

    @property
    def tag(self) -> str:
        return str(self.segment.tag)


def _new_segment(tag: str, elements: list[Element]) -> Segment:
    # Bypasses Segment.__init__, which warns on empty segments and re-validates the tag: we check the
    # tag ourselves and report a bad one as a finding instead of an exception.
    segment = Segment.__new__(Segment)
    segment.tag = tag
    segment.elements = elements
    return segment


def _chunks(source: Source) -> Iterator[bytes]:
    if isinstance(source, str):
        raise TypeError("an interchange is read from bytes or a binary file, not from str")
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), _CHUNK_SIZE):
            yield bytes(view[start : start + _CHUNK_SIZE])
        return
    read = getattr(source, "read", None)
    if read is not None:
        while True:
            chunk = read(_CHUNK_SIZE)
            if not chunk:
                return
            if not isinstance(chunk, bytes | bytearray):
                raise TypeError("read the interchange from a binary file (open it with 'rb')")
            yield bytes(chunk)
    for chunk in source:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError("an iterable source must yield bytes")
        yield bytes(chunk)


_TAG = re.compile(r"[A-Z0-9]{3}")
_LEADING_SPACE = (b"\r", b"\n", b" ", b"\t")
_HEAD = 64  # bytes kept of a segment over the length limit: enough to name its tag in a finding


@dataclass(frozen=True, slots=True)
class Oversize:
    """A segment longer than the limit, read past without being kept: its first bytes and its size."""

    head: bytes
    length: int


def _odd_run(data: bytes, release: bytes) -> bool:
    """Whether ``data`` ends in an odd number of release characters (its last one releases what follows)."""
    return (len(data) - len(data.rstrip(release))) % 2 == 1


def _find_terminator(data: bytes, terminator: bytes, release: bytes | None, start: int = 0) -> int:
    """The first terminator in ``data`` that is not released, or -1."""
    end = data.find(terminator, start)
    while (
        end > 0 and release is not None and data[end - 1 : end] == release and _odd_run(data[:end], release)
    ):
        end = data.find(terminator, end + 1)
    return end


class _Splitter:
    """Splits decoded segment text into tag and elements, honouring the release character."""

    def __init__(self, delimiters: Delimiters, charset: str) -> None:
        d = delimiters
        self.d = d
        self.codec = CODECS[charset]
        self.element = d.element
        self.component = d.component
        self.release = d.release
        self.repetition = d.repetition
        allowed = {"UNOA": _LEVEL_A, "UNOB": _LEVEL_B}.get(charset)
        # the characters a UNA advises are service characters, valid in any level
        extra = re.escape("".join(c for c in d.specials() if c))
        if allowed is not None:
            self.invalid: re.Pattern[str] = re.compile(f"[^{allowed}{extra}]")
        else:
            self.invalid = re.compile("[\\x00-\\x1f\\x7f\\ufffd]")
        # what sends a segment off the hot path: an invalid character, a release or repetition character
        marks = re.escape("".join(c for c in (d.release, d.repetition) if c))
        self.unusual = re.compile(f"{self.invalid.pattern}|[{marks}]" if marks else self.invalid.pattern)
        specials = [c for c in (d.element, d.component, d.repetition) if c]
        pattern = "|".join(re.escape(c) for c in specials)
        if d.release:
            pattern = f"{re.escape(d.release)}(.)|" + pattern
        self.token = re.compile(f"({pattern})", re.S)
        specials_all = [c for c in (d.element, d.component, d.repetition, d.release, d.terminator) if c]
        self.protect = {char: chr(0xE000 + index) for index, char in enumerate(specials_all)}
        self.restore_pairs = [(chr(0xE000 + index), char) for index, char in enumerate(specials_all)]
        self.released = re.compile(f"{re.escape(d.release)}(.)", re.S) if d.release else re.compile("(?!)")
        # private-use characters can only occur in the text under UTF-8 (UNOW, UNOY)
        self.clash = re.compile("[\ue000-\ue00f]") if self.codec == "utf-8" else None

    def split(self, text: str) -> tuple[str, list[Element], dict[int, list[Element]] | None]:
        release, repetition = self.release, self.repetition
        if release is not None and release in text:
            return self._split_released(text)
        if repetition is not None and repetition in text:
            return self._split_slow(text)
        return self._split_plain(text)

    def _split_plain(self, text: str) -> tuple[str, list[Element], dict[int, list[Element]] | None]:
        parts = text.split(self.element)
        component = self.component
        elements: list[Element] = []
        for part in parts[1:]:
            if component in part:
                components = part.split(component)
                while len(components) > 1 and components[-1] == "":
                    components.pop()
                elements.append(components[0] if len(components) == 1 else components)
            else:
                elements.append(part)
        while elements and elements[-1] == "":
            elements.pop()
        return parts[0], elements, None

    def _split_released(self, text: str) -> tuple[str, list[Element], dict[int, list[Element]] | None]:
        # Released service characters become private-use placeholders, the text is split like
        # plain text, and the placeholders turn back into the characters they stand for.
        if self.clash is not None and self.clash.search(text):
            return self._split_slow(text)
        protect = self.protect
        protected = self.released.sub(lambda m: protect.get(m.group(1), m.group(1)), text)
        if self.repetition is not None and self.repetition in protected:
            return self._split_slow(text)
        tag, elements, _ = self._split_plain(protected)
        restore = self._restore
        for index, element in enumerate(elements):
            if isinstance(element, str):
                elements[index] = restore(element)
            else:
                elements[index] = [restore(component) for component in element]
        return restore(tag), elements, None

    def _restore(self, text: str) -> str:
        # str.replace per placeholder runs in C; translate() would look up every character
        for placeholder, char in self.restore_pairs:
            if placeholder in text:
                text = text.replace(placeholder, char)
        return text

    def _split_slow(self, text: str) -> tuple[str, list[Element], dict[int, list[Element]] | None]:
        # occurrences[e] = list of repetitions, each a list of components
        occurrences: list[list[list[str]]] = [[[""]]]
        position = 0
        buffer: list[str] = []
        d = self.d
        for match in self.token.finditer(text):
            buffer.append(text[position : match.start()])
            position = match.end()
            token = match.group(0)
            if d.release and token[0] == d.release and len(token) == 2:
                buffer.append(token[1])
                continue
            current = occurrences[-1][-1]
            current[-1] += "".join(buffer)
            buffer = []
            if token == d.element:
                occurrences.append([[""]])
            elif token == d.component:
                current.append("")
            else:  # repetition separator
                occurrences[-1].append([""])
        buffer.append(text[position:])
        occurrences[-1][-1][-1] += "".join(buffer)
        tag_parts = occurrences[0][0]
        elements: list[Element] = []
        repeats: dict[int, list[Element]] = {}
        for index, element in enumerate(occurrences[1:]):
            values = [_compact(list(components)) for components in element]
            elements.append(values[0])
            if len(values) > 1:
                repeats[index] = values
        while elements and elements[-1] == "" and (len(elements) - 1) not in repeats:
            elements.pop()
        return tag_parts[0], elements, repeats or None

    def locate(self, text: str, index: int) -> tuple[int | None, int | None]:
        """Element and component position (1-based) of the character at ``index``."""
        element, component = 0, 1
        released = False
        d = self.d
        for char in text[:index]:
            if released:
                released = False
            elif d.release and char == d.release:
                released = True
            elif char == d.element:
                element, component = element + 1, 1
            elif char == d.component:
                component += 1
        if element == 0:
            return None, None
        return element, component


def _compact(components: list[str]) -> Element:  # the shape pydifact gives composites
    """pydifact's shape: trailing empty components dropped, a lone first component as a string."""
    while len(components) > 1 and components[-1] == "":
        components.pop()
    if len(components) == 1:
        return components[0]
    return components


class _Tokenizer:
    """Finds segments in a byte stream; knows the delimiters and the character set once UNB is read."""

    def __init__(self, source: Source, max_segment_length: int) -> None:
        self.chunks = _chunks(source)
        self.max = max_segment_length
        self.buffer = bytearray()
        self.base = 0  # offset of buffer[0] in the input
        self.exhausted = False
        self.count = 0
        self.delimiters = Delimiters.default()
        self.una = False
        self.charset = "UNOC"
        self.syntax_version = 3
        self.splitter: _Splitter | None = None
        self.tags: dict[str, str] = {}  # tags already seen valid: skips the regex on the hot path

    # reading -----------------------------------------------------------------------------------
    def _more(self) -> bool:
        chunk = self._next_chunk()
        if chunk is None:
            return False
        self.buffer += chunk
        return True

    def start(self, bare: bool = False) -> None:
        """Reads the optional UNA and sets the delimiters for UNB (``bare``: no UNB expected)."""
        while len(self.buffer) < 12 and self._more():
            pass
        stripped = bytes(self.buffer).lstrip(b"\r\n\t ")
        skipped = len(self.buffer) - len(stripped)
        if not stripped and not bare:
            raise EdifactSyntaxError(
                13, "the interchange is empty: no UNB interchange header", segment_tag="UNB", offset=0
            )
        if stripped.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark some editors add
            stripped = stripped[3:]
            skipped += 3
        if stripped.startswith(b"UNA"):
            if len(stripped) < 9:
                raise EdifactSyntaxError(
                    1, "the service string advice UNA is cut short", segment_tag="UNA", offset=skipped
                )
            self.delimiters = _parse_una(stripped[3:9].decode("latin-1"), skipped)
            self.una = True
            skipped += 9
            stripped = stripped[9:]
        elif bare:
            pass
        elif stripped.startswith(b"UNB\x1d"):
            self.delimiters = Delimiters.level_b()
        elif not stripped.startswith(b"UNB"):
            raise EdifactSyntaxError(
                4,
                f"the interchange must start with UNA or UNB, not {_show(stripped[:12])}",
                segment_tag="UNB",
                offset=skipped,
            )
        del self.buffer[:skipped]
        self.base = skipped
        self.splitter = _Splitter(self.delimiters, "UNOC")

    def set_syntax(self, charset: str, syntax_version: int) -> None:
        self.charset = charset
        self.syntax_version = syntax_version
        d = self.delimiters
        if syntax_version == 3 and d.repetition is not None:
            # in syntax 3 the fifth UNA character is reserved, not a separator
            d = Delimiters(d.component, d.element, d.decimal, d.release, None, d.terminator)
        elif syntax_version == 4 and not self.una and d.repetition is None and d.release is not None:
            d = Delimiters.default(4)
        self.delimiters = d
        self.splitter = _Splitter(d, charset)

    def _next_chunk(self) -> bytes | None:
        if self.exhausted:
            return None
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.exhausted = True
            return None
        except OSError as exc:
            raise EdifactSyntaxError(18, f"the interchange could not be read: {exc}") from None
        return chunk

    def raw_segments(self) -> Iterator[tuple[int, bytes | Oversize]]:
        """(offset, bytes) of each segment, without its terminator and leading line breaks.

        Each chunk read is split at the terminator in one call; a piece that ends in an odd run of
        release characters had its terminator released and is joined to the next. A segment longer
        than ``max_segment_length`` is skipped without being kept (``Oversize`` stands in for it), so
        a 50 MB segment costs one chunk of memory and the segments after it are read as usual.
        """
        d = self.delimiters
        terminator = d.terminator.encode("latin-1")
        release = d.release.encode("latin-1") if d.release else None
        limit = self.max
        pending = bytes(self.buffer)  # the start of a segment not yet terminated
        self.buffer = bytearray()
        start = self.base  # offset of pending[0] in the input
        while True:
            pieces = pending.split(terminator)
            pending = pieces.pop()
            carry: bytes | None = None
            for piece in pieces:
                if carry is not None:
                    piece = carry + terminator + piece
                    carry = None
                if release is not None and piece[-1:] == release and _odd_run(piece, release):
                    carry = piece  # a released terminator is data
                    continue
                size = len(piece)
                if piece[:1] in _LEADING_SPACE:
                    trimmed = piece.lstrip(b"\r\n \t")
                    yield_at = start + size - len(trimmed)
                    piece = trimmed
                else:
                    yield_at = start
                start += size + 1
                if len(piece) > limit:
                    yield yield_at, Oversize(piece[:_HEAD], len(piece))
                else:
                    yield yield_at, piece
            if carry is not None:
                pending = carry + terminator + pending
            if len(pending) > limit:
                skipped = yield from self._skip(start, pending, terminator, release)
                if skipped is None:
                    return
                start, pending = skipped
                continue
            chunk = self._next_chunk()
            if chunk is None:
                self._end_of_input(start, pending)
                return
            pending = pending + chunk if pending else chunk

    def _skip(
        self, start: int, pending: bytes, terminator: bytes, release: bytes | None
    ) -> Generator[tuple[int, bytes | Oversize], None, tuple[int, bytes] | None]:
        """Reads past a segment longer than the limit, keeping only its first and last bytes; yields
        it as ``Oversize`` once its terminator is found. Returns where reading goes on."""
        stripped = pending.lstrip(b"\r\n \t")
        at = start + len(pending) - len(stripped)
        head = stripped[:_HEAD]
        data = stripped[-_HEAD:]  # the tail tells whether a terminator right after it is released
        base = len(stripped) - len(data)  # offset of data[0] within the segment
        while True:
            end = _find_terminator(data, terminator, release)
            if end >= 0:
                length = base + end
                yield at, Oversize(head, length)
                return at + length + 1, data[end + 1 :]
            chunk = self._next_chunk()
            if chunk is None:
                raise EdifactSyntaxError(
                    6,
                    f"the interchange is truncated: segment {self.count + 1} at byte {at} is longer "
                    f"than {self.max} bytes and has no segment terminator {self.delimiters.terminator!r}",
                    segment_tag=_tag_of(head),
                    offset=at,
                    interchange_segment=self.count + 1,
                )
            keep = data[-_HEAD:]
            base += len(data) - len(keep)
            data = keep + chunk

    def _end_of_input(self, start: int, pending: bytes) -> None:
        rest = pending.strip(b"\r\n \t\x00")
        if rest:
            offset = start + len(pending) - len(pending.lstrip(b"\r\n \t\x00"))
            raise EdifactSyntaxError(
                6,
                f"the interchange is truncated: {_show(rest[:20])} at byte {offset} is not "
                f"closed by the segment terminator {self.delimiters.terminator!r}",
                segment_tag=_tag_of(rest),
                offset=offset,
                interchange_segment=self.count + 1,
            )

    def segments(self) -> Iterator[PositionedSegment]:
        yield from self.decoded(self.raw_segments())

    def decoded(self, raws: Iterator[tuple[int, bytes | Oversize]]) -> Iterator[PositionedSegment]:
        """The hot loop: plain segments inline, anything unusual through ``decode``."""
        splitter = self.splitter
        assert splitter is not None
        codec, unusual, tags = splitter.codec, splitter.unusual.search, self.tags
        element, component = splitter.element, splitter.component
        new = Segment.__new__
        for offset, raw in raws:
            self.count += 1
            if raw.__class__ is not bytes:
                yield self.oversize(offset, raw)  # type: ignore[arg-type]
                continue
            try:
                text = raw.decode(codec)
            except UnicodeDecodeError:
                yield self.decode(offset, raw)
                continue
            if unusual(text) is not None:  # a release or repetition character, or an invalid one
                yield self.decode(offset, raw)
                continue
            parts = text.split(element)
            tag = tags.get(parts[0])  # the one string object per tag: caches keep no copies alive
            if tag is None:
                yield self.decode(offset, raw)
                continue
            elements: list[Element] = []
            for part in parts[1:]:
                if component in part:
                    components = part.split(component)
                    while len(components) > 1 and components[-1] == "":
                        components.pop()
                    elements.append(components[0] if len(components) == 1 else components)
                else:
                    elements.append(part)
            while elements and elements[-1] == "":
                elements.pop()
            segment = new(Segment)
            segment.tag = tag
            segment.elements = elements
            yield PositionedSegment(segment, self.count, offset)

    def oversize(self, offset: int, raw: Oversize) -> PositionedSegment:
        """A segment over the length limit: an empty stand-in with its fault, so that its message is
        rejected and the messages after it are read as usual."""
        tag = _tag_of(raw.head)
        finding = Finding(
            6,
            f"segment {self.count} at byte {offset} is {raw.length} bytes long, longer than the limit of "
            f"{self.max} bytes: it was not read",
            None,
            tag,
            None,
            None,
            self.count,
            offset,
        )
        return PositionedSegment(_new_segment(tag or "", []), self.count, offset, (finding,))

    def decode(self, offset: int, raw: bytes) -> PositionedSegment:
        splitter = self.splitter
        assert splitter is not None
        findings: tuple[Finding, ...] = ()
        try:
            text = raw.decode(splitter.codec)
            bad = splitter.invalid.search(text)
        except UnicodeDecodeError:
            text = raw.decode(splitter.codec, "replace")
            bad = re.search("\ufffd", text) or splitter.invalid.search(text)
        tag, elements, repeats = splitter.split(text)
        if bad is not None:
            element, component = splitter.locate(text, bad.start())
            char = raw[bad.start() : bad.start() + 1] if splitter.codec != "utf-8" else bad.group(0)
            findings += (
                Finding(
                    21,
                    f"character {_show_char(char)} is not valid in character set {self.charset}",
                    None,
                    _safe_tag(tag),
                    element,
                    component,
                    self.count,
                    offset,
                ),
            )
        if tag not in self.tags and _TAG.fullmatch(tag):
            self.tags[tag] = tag
        tag = self.tags.get(tag, tag)
        if tag not in self.tags:
            if self.delimiters.component in tag and _TAG.fullmatch(tag.split(self.delimiters.component)[0]):
                tag = tag.split(self.delimiters.component)[0]
                findings += (
                    Finding(
                        34,
                        "explicit nesting in the segment tag is not used",
                        None,
                        tag,
                        None,
                        None,
                        self.count,
                        offset,
                    ),
                )
            else:
                findings += (
                    Finding(
                        6,
                        f"{tag[:20]!r} is not a segment tag (three capital letters or digits)",
                        None,
                        None,
                        None,
                        None,
                        self.count,
                        offset,
                    ),
                )
        # a garbage "tag" can be megabytes long: keep what error messages can show
        return PositionedSegment(_new_segment(tag[:20], elements), self.count, offset, findings, repeats)


def _show(data: bytes) -> str:
    text = data.decode("latin-1")
    return repr(text) if text.isprintable() else repr(data)


def _show_char(char: bytes | str) -> str:
    if isinstance(char, bytes):
        value = char[0] if char else 0
        shown = chr(value)
        return f"{shown!r} (byte 0x{value:02X})" if shown.isprintable() else f"byte 0x{value:02X}"
    return f"{char!r} (U+{ord(char):04X})"


def _safe_tag(tag: str) -> str | None:
    """The tag if it is one (3 capitals or digits): findings go into CONTRL, whose 0013 is a3."""
    return tag if _TAG.fullmatch(tag) else None


def _tag_of(rest: bytes) -> str | None:
    tag = rest[:3].decode("latin-1")
    return tag if _TAG.fullmatch(tag) else None


# --- public reading API -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InterchangeHeader:
    """What UNB says (and UNA, if present)."""

    syntax_identifier: str
    syntax_version: int
    sender: str
    sender_qualifier: str | None
    recipient: str
    recipient_qualifier: str | None
    date: str
    time: str
    prepared: datetime | None
    control_reference: str
    application_reference: str | None
    test_indicator: str | None
    delimiters: Delimiters
    una: bool
    segment: Segment
    offset: int = 0


@dataclass(frozen=True)
class InterchangeTrailer:
    count: int
    control_reference: str
    number: int
    offset: int


@dataclass(frozen=True)
class GroupHeader:
    """A functional group (UNG): its reference (0048) and identification."""

    reference: str
    message_group: str | None
    segment: Segment
    number: int
    offset: int

    @property
    def sender(self) -> tuple[str, str | None]:
        """The application sender of the group (UNG S006: 0040 and its qualifier 0007)."""
        return _value(self.segment, 1), _value(self.segment, 1, 1) or None

    @property
    def recipient(self) -> tuple[str, str | None]:
        """The application recipient of the group (UNG S007: 0044 and its qualifier 0007)."""
        return _value(self.segment, 2), _value(self.segment, 2, 1) or None


@dataclass
class Message:
    """One message, UNH to UNT; ``findings`` are its own syntax faults (reject it, go on)."""

    reference: str
    message_type: str
    version: str
    release: str
    agency: str
    association: str | None
    segments: list[PositionedSegment]
    number: int
    group: GroupHeader | None = None
    findings: list[Finding] = field(default_factory=list)

    def plain_segments(self) -> list[Segment]:
        return [positioned.segment for positioned in self.segments]

    @property
    def identifier(self) -> tuple[str, str, str, str]:
        """S009 as (0065, 0052, 0054, 0051), e.g. ("CUSCAR", "D", "96B", "UN")."""
        return (self.message_type, self.version, self.release, self.agency)


def _component(element: Element | None, index: int) -> str:
    if element is None:
        return ""
    if isinstance(element, str):
        return element if index == 0 else ""
    return element[index] if index < len(element) else ""


def _value(segment: Segment, index: int, component: int = 0) -> str:
    elements = segment.elements
    return _component(elements[index] if index < len(elements) else None, component)


def _prepared(date: str, time: str, syntax_version: int) -> datetime | None:
    formats = {6: "%y%m%d", 8: "%Y%m%d"}
    try:
        return datetime.strptime(date + time, formats[len(date)] + "%H%M")
    except (KeyError, ValueError):
        return None


def _header(tokenizer: _Tokenizer, first: tuple[int, bytes | Oversize] | None) -> InterchangeHeader:
    """UNB, read twice: once to learn its character set, once more decoded with it."""
    offset, raw = first if first is not None else (0, b"")
    if isinstance(raw, Oversize):
        raise EdifactSyntaxError(
            6,
            f"the first segment is {raw.length} bytes long, longer than the limit of {tokenizer.max} "
            "bytes: no interchange header UNB can be read",
            segment_tag=_tag_of(raw.head),
            offset=offset,
            interchange_segment=1,
        )
    positioned = tokenizer.decode(offset, raw) if first is not None else None
    if positioned is None or positioned.tag != "UNB":
        raise EdifactSyntaxError(
            13,
            "the interchange header UNB is missing",
            segment_tag="UNB",
            offset=positioned.offset if positioned else 0,
            interchange_segment=1,
        )
    unb = positioned.segment
    where: dict[str, Any] = {
        "segment_tag": "UNB",
        "interchange_segment": positioned.number,
        "offset": positioned.offset,
    }
    charset = _value(unb, 0, 0)
    version_text = _value(unb, 0, 1)
    if charset not in CODECS:
        raise EdifactSyntaxError(
            2,
            f"syntax identifier {charset!r} is not supported: use UNOA, UNOB or UNOC (syntax 3 or 4), "
            "UNOW or UNOY (syntax 4)",
            element_position=1,
            component_position=1,
            **where,
        )
    if version_text not in ("3", "4"):
        raise EdifactSyntaxError(
            2,
            f"syntax version {version_text!r} is not supported: use 3 or 4",
            element_position=1,
            component_position=2,
            **where,
        )
    version = int(version_text)
    if charset in SYNTAX_4_ONLY and version == 3:
        raise EdifactSyntaxError(
            2,
            f"character set {charset} exists in syntax version 4 only, but UNB declares version 3",
            element_position=1,
            component_position=1,
            **where,
        )
    tokenizer.set_syntax(charset, version)
    # decode UNB again with its own character set, now known
    positioned = tokenizer.decode(offset, raw)
    unb = positioned.segment
    for finding in positioned.findings:
        raise EdifactSyntaxError(
            finding.code,
            finding.message,
            element_position=finding.element_position,
            component_position=finding.component_position,
            **where,
        )
    required = {
        (1, 0): "the sender identification (0004)",
        (2, 0): "the recipient identification (0010)",
        (3, 0): "the date of preparation (0017)",
        (3, 1): "the time of preparation (0019)",
        (4, 0): "the interchange control reference (0020)",
    }
    for (index, component), what in required.items():
        if not _value(unb, index, component):
            raise EdifactSyntaxError(
                13,
                f"UNB lacks {what}",
                element_position=index + 1,
                component_position=component + 1 if index != 4 else None,
                **where,
            )
    date, time = _value(unb, 3, 0), _value(unb, 3, 1)
    return InterchangeHeader(
        syntax_identifier=charset,
        syntax_version=version,
        sender=_value(unb, 1, 0),
        sender_qualifier=_value(unb, 1, 1) or None,
        recipient=_value(unb, 2, 0),
        recipient_qualifier=_value(unb, 2, 1) or None,
        date=date,
        time=time,
        prepared=_prepared(date, time, version),
        control_reference=_value(unb, 4),
        application_reference=_value(unb, 6) or None,
        test_indicator=_value(unb, 10) or None,
        delimiters=tokenizer.delimiters,
        una=tokenizer.una,
        segment=unb,
        offset=positioned.offset,
    )


def _open(
    source: Source, max_segment_length: int
) -> tuple[_Tokenizer, Iterator[tuple[int, bytes | Oversize]], InterchangeHeader]:
    tokenizer = _Tokenizer(source, max_segment_length)
    tokenizer.start()
    raw = tokenizer.raw_segments()
    first = next(raw, None)
    tokenizer.count = 1
    return tokenizer, raw, _header(tokenizer, first)


def read_header(source: Source, *, max_segment_length: int = DEFAULT_MAX_SEGMENT_LENGTH) -> InterchangeHeader:
    """UNA and UNB only (sender, recipient, syntax, control reference), before reading the rest."""
    return _open(source, max_segment_length)[2]


def tokenize(
    source: Source, *, max_segment_length: int = DEFAULT_MAX_SEGMENT_LENGTH
) -> Iterator[PositionedSegment]:
    """Every segment of the interchange from UNB on (UNA is not a segment), lazily."""
    tokenizer, raw, header = _open(source, max_segment_length)
    yield PositionedSegment(header.segment, 1, header.offset)
    yield from tokenizer.decoded(raw)


def tokenize_segments(
    source: Source,
    *,
    delimiters: Delimiters | None = None,
    charset: str = "UNOC",
    syntax_version: int = 3,
    max_segment_length: int = DEFAULT_MAX_SEGMENT_LENGTH,
) -> Iterator[PositionedSegment]:
    """Segments of a bare message or fragment without UNB (a leading UNA is honoured), lazily."""
    if charset not in CODECS:
        raise ValueError(f"unsupported character set {charset!r}")
    tokenizer = _Tokenizer(source, max_segment_length)
    tokenizer.delimiters = delimiters or Delimiters.default(syntax_version)
    tokenizer.una = delimiters is not None
    tokenizer.start(bare=True)
    tokenizer.set_syntax(charset, syntax_version)
    yield from tokenizer.segments()


class InterchangeReader:
    """An interchange read lazily: ``header`` at once, then ``messages()`` one at a time."""

    def __init__(self, source: Source, *, max_segment_length: int = DEFAULT_MAX_SEGMENT_LENGTH) -> None:
        self._tokenizer, self._raw, self.header = _open(source, max_segment_length)
        self.trailer: InterchangeTrailer | None = None
        self._started = False

    @property
    def delimiters(self) -> Delimiters:
        return self._tokenizer.delimiters

    def _segments(self) -> Iterator[PositionedSegment]:
        return self._tokenizer.decoded(self._raw)

    def messages(self) -> Iterator[Message]:
        """The messages in order, each complete with its findings; checks UNT, UNE and UNZ."""
        if self._started:
            raise RuntimeError("an interchange can be read once")
        self._started = True
        header = self.header
        current: Message | None = None
        group: GroupHeader | None = None
        group_messages = 0
        groups = 0
        loose_messages = 0
        number = 0
        for positioned in self._segments():
            tag = positioned.segment.tag
            if current is not None:
                if tag == "UNT":
                    current.segments.append(positioned)
                    current.findings.extend(_positioned(positioned.findings, len(current.segments)))
                    _check_unt(current, positioned)
                    yield current
                    current = None
                    continue
                if tag not in ("UNH", "UNZ", "UNG", "UNE", "UNB"):
                    current.segments.append(positioned)
                    if positioned.findings:
                        current.findings.extend(_positioned(positioned.findings, len(current.segments)))
                    continue
                current.findings.append(
                    Finding(
                        13,
                        f"message {current.reference!r} has no UNT message trailer before {tag}",
                        len(current.segments) + 1,
                        "UNT",
                        None,
                        None,
                        positioned.number,
                        positioned.offset,
                    )
                )
                yield current
                current = None
            where: dict[str, Any] = {
                "segment_tag": _safe_tag(tag),
                "interchange_segment": positioned.number,
                "offset": positioned.offset,
            }
            if tag == "UNH":
                if groups and group is None:
                    raise EdifactSyntaxError(
                        30, "a message outside a functional group in an interchange that uses groups", **where
                    )
                number += 1
                if group is None:
                    loose_messages += 1
                else:
                    group_messages += 1
                current = _start_message(positioned, number, group)
            elif tag == "UNG":
                _fatal_findings(positioned)
                if loose_messages:
                    raise EdifactSyntaxError(
                        30, "a functional group after messages outside any group", **where
                    )
                if group is not None:
                    raise EdifactSyntaxError(
                        13, f"functional group {group.reference!r} has no UNE before the next UNG", **where
                    )
                groups += 1
                group_messages = 0
                group = GroupHeader(
                    _value(positioned.segment, 4),
                    _value(positioned.segment, 0) or None,
                    positioned.segment,
                    positioned.number,
                    positioned.offset,
                )
            elif tag == "UNE":
                _fatal_findings(positioned)
                if group is None:
                    raise EdifactSyntaxError(33, "UNE without a UNG functional group header", **where)
                _check_trailer(
                    "UNE", "functional group", positioned, group_messages, "messages", group.reference
                )
                if group_messages == 0:
                    raise EdifactSyntaxError(
                        32, f"functional group {group.reference!r} holds no message", **where
                    )
                group = None
            elif tag == "UNZ":
                _fatal_findings(positioned)
                if group is not None:
                    raise EdifactSyntaxError(
                        13, f"functional group {group.reference!r} has no UNE group trailer", **where
                    )
                count, what = (groups, "functional groups") if groups else (loose_messages, "messages")
                if count == 0:
                    raise EdifactSyntaxError(32, "the interchange holds no message", **where)
                _check_trailer("UNZ", "interchange", positioned, count, what, header.control_reference)
                self.trailer = InterchangeTrailer(
                    count, _value(positioned.segment, 1), positioned.number, positioned.offset
                )
                self._after_trailer()
                return
            elif tag == "UNB":
                raise EdifactSyntaxError(
                    33, "a second interchange starts before this one ended with UNZ", **where
                )
            else:
                raise EdifactSyntaxError(
                    33,
                    f"segment {tag} stands outside any message (between UNB/UNG and UNH, or after UNT)",
                    **where,
                )
        if current is not None:
            raise EdifactSyntaxError(
                13,
                f"the interchange ends inside message {current.reference!r}: UNT and UNZ are missing "
                "(truncated file?)",
                segment_tag="UNZ",
                message_reference=current.reference,
                offset=current.segments[-1].offset,
                interchange_segment=current.segments[-1].number,
            )
        raise EdifactSyntaxError(
            13,
            "the interchange trailer UNZ is missing (truncated file?)",
            segment_tag="UNZ",
            interchange_segment=self._tokenizer.count + 1,
        )

    def _after_trailer(self) -> None:
        for positioned in self._segments():
            kind = (
                "a second interchange" if positioned.tag in ("UNA", "UNB") else f"segment {positioned.tag!r}"
            )
            raise EdifactSyntaxError(
                33,
                f"{kind} follows the interchange trailer UNZ: send one interchange per file",
                segment_tag=_safe_tag(positioned.tag),
                interchange_segment=positioned.number,
                offset=positioned.offset,
            )


def read_interchange(
    source: Source, *, max_segment_length: int = DEFAULT_MAX_SEGMENT_LENGTH
) -> InterchangeReader:
    """Reads UNA/UNB now (raising EdifactSyntaxError if unusable); messages lazily afterwards."""
    return InterchangeReader(source, max_segment_length=max_segment_length)


def _positioned(findings: Iterable[Finding], position: int) -> list[Finding]:
    return [
        Finding(
            f.code,
            f.message,
            position,
            f.segment_tag,
            f.element_position,
            f.component_position,
            f.interchange_segment,
            f.offset,
        )
        for f in findings
    ]


def _fatal_findings(positioned: PositionedSegment) -> None:
    for finding in positioned.findings:
        raise EdifactSyntaxError(
            finding.code,
            finding.message,
            segment_tag=finding.segment_tag,
            interchange_segment=finding.interchange_segment,
            offset=finding.offset,
            element_position=finding.element_position,
            component_position=finding.component_position,
        )


def _start_message(positioned: PositionedSegment, number: int, group: GroupHeader | None) -> Message:
    unh = positioned.segment
    message = Message(
        reference=_value(unh, 0),
        message_type=_value(unh, 1, 0),
        version=_value(unh, 1, 1),
        release=_value(unh, 1, 2),
        agency=_value(unh, 1, 3),
        association=_value(unh, 1, 4) or None,
        segments=[positioned],
        number=number,
        group=group,
    )
    message.findings.extend(_positioned(positioned.findings, 1))
    for index, component, what in (
        (0, 0, "message reference number (0062)"),
        (1, 0, "message type (0065)"),
        (1, 1, "message version number (0052)"),
        (1, 2, "message release number (0054)"),
        (1, 3, "controlling agency (0051)"),
    ):
        if not _value(unh, index, component):
            message.findings.append(
                Finding(
                    13,
                    f"UNH lacks the {what}",
                    1,
                    "UNH",
                    index + 1,
                    component + 1 if index else None,
                    positioned.number,
                    positioned.offset,
                )
            )
    return message


def _check_unt(message: Message, positioned: PositionedSegment) -> None:
    unt = positioned.segment
    position = len(message.segments)
    count_text, reference = _value(unt, 0), _value(unt, 1)
    if not (count_text.isascii() and count_text.isdigit() and int(count_text) == position):
        message.findings.append(
            Finding(
                29,
                f"UNT of message {message.reference!r} counts {count_text or 'nothing'} segments, "
                f"the message has {position} (UNH to UNT)",
                position,
                "UNT",
                1,
                None,
                positioned.number,
                positioned.offset,
            )
        )
    if reference != message.reference:
        message.findings.append(
            Finding(
                28,
                f"UNT carries message reference {reference!r}, UNH {message.reference!r}",
                position,
                "UNT",
                2,
                None,
                positioned.number,
                positioned.offset,
            )
        )


def _check_trailer(
    tag: str, what: str, positioned: PositionedSegment, count: int, unit: str, reference: str
) -> None:
    segment = positioned.segment
    where: dict[str, Any] = {
        "segment_tag": tag,
        "interchange_segment": positioned.number,
        "offset": positioned.offset,
    }
    count_text, trailer_reference = _value(segment, 0), _value(segment, 1)
    if not (count_text.isascii() and count_text.isdigit() and int(count_text) == count):
        raise EdifactSyntaxError(
            29,
            f"{tag} counts {count_text or 'nothing'} {unit}, the {what} holds {count}",
            element_position=1,
            **where,
        )
    if trailer_reference != reference:
        raise EdifactSyntaxError(
            28,
            f"{tag} carries control reference {trailer_reference!r}, the header {reference!r}",
            element_position=2,
            **where,
        )


# --- writing -----------------------------------------------------------------------------------------


def _unfit(charset: str, keep: str = "") -> re.Pattern[str]:
    """Characters a character set cannot carry (``keep``: service characters and line breaks)."""
    extra = re.escape(keep)
    allowed = {"UNOA": _LEVEL_A, "UNOB": _LEVEL_B}.get(charset)
    if allowed is not None:
        return re.compile(f"[^{allowed}{extra}]")
    if charset == "UNOC":
        return re.compile(f"[^\x20-\x7e\xa0-\xff{extra}]")
    controls = "".join(chr(c) for c in (*range(0x20), 0x7F) if chr(c) not in keep)
    return re.compile(f"[{re.escape(controls)}]")


def fit_text(text: str, charset: str) -> str:
    """Makes free text representable in a character set: upper case for UNOA, '.' for the rest."""
    if charset == "UNOA":
        text = text.upper()
    return _unfit(charset).sub("." if charset in ("UNOA", "UNOB", "UNOC") else " ", text)


def serialize(
    segments: Iterable[Segment],
    *,
    delimiters: Delimiters | None = None,
    syntax_version: int = 3,
    una: bool = True,
    charset: str = "UNOC",
    line_breaks: bool = False,
    fit: bool = True,
) -> bytes:
    """Segments to bytes: escaped with the release character, trailing empties dropped, encoded.

    ``fit`` makes text the character set cannot carry representable (``fit_text``: UNOA replies
    come out in capitals) instead of raising ``ValueError``.
    """
    d = delimiters or Delimiters.default(syntax_version)
    if syntax_version == 3 and d.repetition:
        d = Delimiters(d.component, d.element, d.decimal, d.release, None, d.terminator)
    if charset not in CODECS:
        raise ValueError(f"unsupported character set {charset!r}")
    specials = "".join(c for c in (d.release, d.component, d.element, d.repetition, d.terminator) if c)
    release = d.release
    # str.translate escapes a value in one C call; without a release character a separator in
    # the data cannot be written at all
    table = {ord(c): release + c for c in specials} if release else None
    unescapable = re.compile(f"[{re.escape(specials)}]")

    def escape(value: str) -> str:
        if table is not None:
            return value.translate(table)
        if unescapable.search(value):
            raise ValueError(f"{value!r} holds a separator and the interchange has no release character")
        return value

    newline = "\n" if line_breaks else ""
    element_separator, component_separator = d.element, d.component
    end = d.terminator + newline
    parts: list[str] = [d.una() + newline] if una else []
    for segment in segments:
        if segment.tag == "UNA":
            continue
        values: list[str] = [segment.tag]
        for element in segment.elements:
            if isinstance(element, list):
                components = [escape(c) if c else "" for c in element]
                while components and components[-1] == "":
                    components.pop()
                values.append(component_separator.join(components))
            else:
                values.append(escape(element) if element else "")
        while len(values) > 1 and values[-1] == "":
            values.pop()
        parts.append(element_separator.join(values) + end)
    text = "".join(parts)
    unfit = _unfit(charset, specials + newline)
    if fit:
        if charset == "UNOA":
            text = text.upper()
        text = unfit.sub("." if "." not in specials else "-", text)
    else:
        bad = unfit.search(text)
        if bad is not None:
            raise ValueError(f"{bad.group(0)!r} cannot be written in {charset}")
    return text.encode(CODECS[charset])


def build_message(reference: str, message_type: Sequence[str], body: Sequence[Segment]) -> list[Segment]:
    """UNH + body + UNT with the segment count, e.g. ``("CUSRES", "D", "96B", "UN")``."""
    return [
        Segment("UNH", reference, list(message_type)),
        *body,
        Segment("UNT", str(len(body) + 2), reference),
    ]


def build_interchange(
    messages: Iterable[Sequence[Segment]],
    *,
    sender: str,
    recipient: str,
    control_reference: str,
    prepared: datetime,
    syntax_version: int = 3,
    charset: str = "UNOC",
    sender_qualifier: str | None = None,
    recipient_qualifier: str | None = None,
    delimiters: Delimiters | None = None,
    una: bool = True,
    line_breaks: bool = False,
) -> bytes:
    """A whole interchange: UNB (date CCYYMMDD in syntax 4, YYMMDD in 3), the messages, UNZ."""
    date = prepared.strftime("%Y%m%d" if syntax_version == 4 else "%y%m%d")
    sender_element: Element = [sender, sender_qualifier] if sender_qualifier else sender
    recipient_element: Element = [recipient, recipient_qualifier] if recipient_qualifier else recipient
    unb = Segment(
        "UNB",
        [charset, str(syntax_version)],
        sender_element,
        recipient_element,
        [date, prepared.strftime("%H%M")],
        control_reference,
    )
    body: list[Segment] = [unb]
    count = 0
    for message in messages:
        body.extend(message)
        count += 1
    body.append(Segment("UNZ", str(count), control_reference))
    return serialize(
        body,
        delimiters=delimiters,
        syntax_version=syntax_version,
        una=una,
        charset=charset,
        line_breaks=line_breaks,
    )


__all__ = [
    "CODECS",
    "DEFAULT_MAX_SEGMENT_LENGTH",
    "Delimiters",
    "EdifactSyntaxError",
    "Element",
    "Finding",
    "GroupHeader",
    "InterchangeHeader",
    "InterchangeReader",
    "InterchangeTrailer",
    "Message",
    "PositionedSegment",
    "Source",
    "build_interchange",
    "build_message",
    "fit_text",
    "read_header",
    "read_interchange",
    "serialize",
    "tokenize",
    "tokenize_segments",
]
