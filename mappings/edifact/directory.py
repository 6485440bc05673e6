"""The UN/EDIFACT D.96B directory, read from the UN's own text files (package data in ``d96b/``).

The UN publishes each directory as fixed-layout text in code page 437: message structures in
``<TYPE>_D.96B`` (section 4.3.1, the segment table, whose box-drawing characters open and close the
segment groups), segments in ``TRSD``, composites in ``TRCD``, elements in ``TRED``, code lists in
``UNCL`` and service code lists (0085 syntax errors, ...) in ``UNSL``. Nothing here is typed in by hand:
every table comes from those files. The service segments (UNB, UNH, UCI, ...) and the CONTRL message
are not part of D.96B; they come from ISO 9735 and live in the files named ``ISO9735_*`` beside the UN
ones, authored by us in the same layouts (each says so at its top).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import ClassVar

_PACKAGE = "mappings.edifact"
_FOLDER = "d96b"
_SEPARATOR = "─"  # the rule line between entries in every UN directory file
_CLOSE_GROUP = ("┘", "┴")


@dataclass(frozen=True)
class Representation:
    """A data element's representation: ``an..35`` is kind "an", up to 35; ``n6`` exactly 6."""

    kind: str  # "a", "n" or "an"
    min_length: int
    max_length: int

    @classmethod
    def parse(cls, text: str) -> Representation:
        match = re.fullmatch(r"(an|a|n)(\.\.)?(\d+)", text)
        if match is None:
            raise ValueError(f"not an EDIFACT representation: {text!r}")
        kind, variable, length = match.group(1), match.group(2), int(match.group(3))
        return cls(kind, 0 if variable else length, length)

    def __str__(self) -> str:
        if self.min_length == self.max_length:
            return f"{self.kind}{self.max_length}"
        return f"{self.kind}..{self.max_length}"


@dataclass(frozen=True)
class ComponentSpec:
    """One component of a composite, or a simple data element of a segment."""

    position: int  # 1-based
    tag: str  # data element number, e.g. "3039"
    name: str
    mandatory: bool
    representation: Representation


@dataclass(frozen=True)
class ElementSpec:
    """A data element position in a segment: a simple element or a composite (``components``)."""

    position: int  # 1-based, the UCD S011 0098 numbering
    tag: str  # "3035" or "C082"
    name: str
    mandatory: bool
    repeats: int
    representation: Representation | None  # for a simple element
    components: tuple[ComponentSpec, ...] = ()

    @property
    def is_composite(self) -> bool:
        return bool(self.components)


@dataclass(frozen=True)
class SegmentSpec:
    tag: str
    name: str
    elements: tuple[ElementSpec, ...]


@dataclass(frozen=True)
class CompositeSpec:
    tag: str
    name: str
    components: tuple[ComponentSpec, ...]


@dataclass(frozen=True)
class DataElementSpec:
    tag: str
    name: str
    representation: Representation


@dataclass(frozen=True)
class SegmentNode:
    """A segment's place in a message structure."""

    position: str  # the directory's "0010"
    tag: str
    name: str
    mandatory: bool
    max_repeats: int


@dataclass(frozen=True)
class GroupNode:
    """A segment group; its first child is its trigger segment (mandatory, once)."""

    position: str
    number: int
    mandatory: bool
    max_repeats: int
    children: tuple[SegmentNode | GroupNode, ...]

    @property
    def trigger(self) -> str:
        first = self.children[0]
        assert isinstance(first, SegmentNode), "a segment group starts with a segment"
        return first.tag


Node = SegmentNode | GroupNode


@dataclass(frozen=True)
class MessageStructure:
    message_type: str
    version: str
    release: str
    children: tuple[Node, ...]

    def walk(self) -> Iterator[Node]:
        """Every node in document order."""
        stack: list[Node] = list(reversed(self.children))
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, GroupNode):
                stack.extend(reversed(node.children))


# --- reading the files -------------------------------------------------------------------------


def _read(name: str) -> str:
    data = resources.files(_PACKAGE).joinpath(_FOLDER).joinpath(name).read_bytes()
    return data.decode("cp437").replace("\r\n", "\n")


def _entries(text: str) -> Iterator[list[str]]:
    """The entries between the rule lines; the preamble before the first rule is skipped."""
    blocks = re.split(rf"^{_SEPARATOR}+\s*$", text, flags=re.MULTILINE)
    for block in blocks[1:]:
        lines = [line.rstrip() for line in block.split("\n")]
        if any(lines):
            yield lines


_SEGMENT_HEADER = re.compile(r"^[ *+#|X-]{0,6}([A-Z]{3})\s{2,}(\S.*)$")
_SEGMENT_ELEMENT = re.compile(r"^(\d{3}) (.) ([C0-9S]\d{3}) +(.+?) +([MC])(?: +(\d+))?(?: +(\S+))?$")
_SEGMENT_COMPONENT = re.compile(r"^ {4}(.) (\d{4}) +(.+?) +([MC]) +(\S+)$")
_COMPOSITE_HEADER = re.compile(r"^[ *+#|X-]{0,6}([CS]\d{3})\s{2,}(\S.*)$")
_COMPOSITE_COMPONENT = re.compile(r"^(\d{3}) (.) (\d{4}) +(.+?) +([MC]) +(\S+)$")
_ELEMENT_HEADER = re.compile(r"^[ *+#|X-]{0,6}(\d{4})\s{2,}(\S.*)$")


def _element_spec(line: re.Match[str], components: list[ComponentSpec]) -> ElementSpec:
    position = int(line.group(1)) // 10
    repeats = int(line.group(6)) if line.group(6) else 1
    tag, name, mandatory = line.group(3), line.group(4), line.group(5) == "M"
    if components:
        return ElementSpec(position, tag, name, mandatory, repeats, None, tuple(components))
    return ElementSpec(position, tag, name, mandatory, repeats, Representation.parse(line.group(7) or ""))


def _parse_segments(text: str) -> dict[str, SegmentSpec]:
    """TRSD layout: a header line, then ``010   C082  NAME  C`` with the components indented below."""
    specs: dict[str, SegmentSpec] = {}
    for lines in _entries(text):
        header = next(line for line in lines if line.strip())
        head = _SEGMENT_HEADER.match(header)
        if head is None:
            continue
        elements: list[ElementSpec] = []
        components: list[ComponentSpec] = []
        current: re.Match[str] | None = None
        for line in lines:
            element = _SEGMENT_ELEMENT.match(line)
            if element:
                if current is not None:
                    elements.append(_element_spec(current, components))
                current, components = element, []
                continue
            component = _SEGMENT_COMPONENT.match(line)
            if component and current is not None:
                components.append(
                    ComponentSpec(
                        len(components) + 1,
                        component.group(2),
                        component.group(3),
                        component.group(4) == "M",
                        Representation.parse(component.group(5)),
                    )
                )
        if current is not None:
            elements.append(_element_spec(current, components))
        specs[head.group(1)] = SegmentSpec(head.group(1), head.group(2).strip(), tuple(elements))
    return specs


def _parse_composites(text: str) -> dict[str, CompositeSpec]:
    specs: dict[str, CompositeSpec] = {}
    for lines in _entries(text):
        header = next(line for line in lines if line.strip())
        head = _COMPOSITE_HEADER.match(header)
        if head is None:
            continue
        components = []
        for line in lines:
            match = _COMPOSITE_COMPONENT.match(line)
            if match:
                components.append(
                    ComponentSpec(
                        int(match.group(1)) // 10,
                        match.group(3),
                        match.group(4),
                        match.group(5) == "M",
                        Representation.parse(match.group(6)),
                    )
                )
        specs[head.group(1)] = CompositeSpec(head.group(1), head.group(2).strip(), tuple(components))
    return specs


def _parse_elements(text: str) -> dict[str, DataElementSpec]:
    specs: dict[str, DataElementSpec] = {}
    for lines in _entries(text):
        header = next(line for line in lines if line.strip())
        head = _ELEMENT_HEADER.match(header)
        if head is None:
            continue
        for line in lines:
            repr_match = re.match(r"^\s*Repr:\s*(\S+)", line)
            if repr_match:
                specs[head.group(1)] = DataElementSpec(
                    head.group(1), head.group(2).strip(), Representation.parse(repr_match.group(1))
                )
                break
    return specs


def _parse_code_lists(text: str) -> dict[str, dict[str, str]]:
    """UNCL/UNSL layout: header, Desc/Repr/Note paragraphs, then one code per line.

    A code line has its code left of column 10 and its name from column 10; a line with text from
    column 10 exactly continues the name, and descriptions start at column 13.
    """
    lists: dict[str, dict[str, str]] = {}
    for lines in _entries(text):
        header = next(line for line in lines if line.strip())
        head = _ELEMENT_HEADER.match(header)
        if head is None:
            continue
        codes: dict[str, str] = {}
        in_codes = False
        in_paragraph = False
        last: str | None = None
        for line in lines[lines.index(header) + 1 :]:
            if not line.strip():
                in_paragraph = False
                continue
            # columns 0-1 carry the change indicators (+, *, #, |, X, -)
            body = re.sub(r"^[*+#|X-]{1,2}", lambda m: " " * len(m.group(0)), line)
            stripped = body.lstrip()
            if re.match(r"(Desc|Repr|Note):", stripped):
                in_paragraph = True
                if stripped.startswith("Repr:"):
                    in_codes = True
                continue
            if in_paragraph or not in_codes:
                continue
            column = len(body) - len(stripped)
            if column < 10:
                match = re.match(r"(\S+)\s+(.*)$", stripped)
                if match:
                    last = match.group(1)
                    codes[last] = match.group(2).strip()
            elif column == 10 and last is not None:
                codes[last] = f"{codes[last]} {stripped}"
        lists[head.group(1)] = codes
    return lists


_STRUCTURE_LINE = re.compile(r"^(\d{4}) (.) ([A-Z]{3}) (.+?) +([MC]) +(\d+)(.*)$")
_GROUP_LINE = re.compile(r"^(\d{4}) (.) +\W+ Segment group (\d+) +\W+ ([MC]) +(\d+)(.*)$")


def _parse_structure(text: str, message_type: str) -> MessageStructure:
    """Section 4.3.1 of a UN message file: the segment table.

    A group line ends in ``┐`` (the group opens); each ``┘`` or ``┴`` at the end of a segment line
    closes one group. Nesting is read from those characters only, never from the indentation.
    """
    start = text.index("4.3.1  Segment table")
    head = re.search(r"Version\s*:\s*(\S+)\s+Release\s*:\s*(\S+)", text)
    version, release = (head.group(1), head.group(2)) if head else ("D", "96B")
    root: list[Node] = []
    # each open group: its header line, the list it belongs to, and its own children so far
    stack: list[tuple[re.Match[str], list[Node], list[Node]]] = []
    current = root
    for line in text[start:].split("\n"):
        group = _GROUP_LINE.match(line)
        if group:
            children: list[Node] = []
            stack.append((group, current, children))
            current = children
            continue
        segment = _STRUCTURE_LINE.match(line)
        if not segment:
            continue
        current.append(
            SegmentNode(
                segment.group(1),
                segment.group(3),
                segment.group(4).strip(),
                segment.group(5) == "M",
                int(segment.group(6)),
            )
        )
        closes = sum(segment.group(7).count(mark) for mark in _CLOSE_GROUP)
        for _ in range(closes):
            opened, parent, children = stack.pop()
            parent.append(
                GroupNode(
                    opened.group(1),
                    int(opened.group(3)),
                    opened.group(4) == "M",
                    int(opened.group(5)),
                    tuple(children),
                )
            )
            current = parent
    if stack:
        raise ValueError(f"{message_type}: {len(stack)} segment group(s) never closed")
    return MessageStructure(message_type, version, release, tuple(root))


# --- the directory ----------------------------------------------------------------------------


class Directory:
    """One directory: D.96B plus the ISO 9735 service segments and CONTRL. Loaded lazily, cached."""

    name = "D96B"
    _MESSAGE_FILES: ClassVar[dict[str, str]] = {
        "CUSCAR": "CUSCAR_D.96B",
        "CUSRES": "CUSRES_D.96B",
        "CUSDEC": "CUSDEC_D.96B",
        "CONTRL": "ISO9735_CONTRL_v3.txt",
        "CONTRL:4": "ISO9735_CONTRL_v4.txt",
    }

    def __init__(self) -> None:
        self._messages: dict[str, MessageStructure] = {}
        self._segments: dict[str, SegmentSpec] | None = None
        self._service: dict[int, dict[str, SegmentSpec]] = {}
        self._composites: dict[str, CompositeSpec] | None = None
        self._elements: dict[str, DataElementSpec] | None = None
        self._codes: dict[str, dict[str, str]] | None = None

    @property
    def message_types(self) -> tuple[str, ...]:
        return ("CUSCAR", "CUSRES", "CUSDEC", "CONTRL")

    def message(self, message_type: str, syntax_version: int = 3) -> MessageStructure:
        """The segment table of CUSCAR, CUSRES, CUSDEC (D.96B) or CONTRL (of the syntax version)."""
        key = "CONTRL:4" if message_type == "CONTRL" and syntax_version == 4 else message_type
        if key not in self._MESSAGE_FILES:
            raise KeyError(f"message type {message_type!r} is not in this directory")
        if key not in self._messages:
            self._messages[key] = _parse_structure(_read(self._MESSAGE_FILES[key]), message_type)
        return self._messages[key]

    def segment(self, tag: str, syntax_version: int = 3) -> SegmentSpec:
        """A segment's specification; service segments (UNB, UNH, UCI, ...) by syntax version."""
        if syntax_version not in self._service:
            name = (
                "ISO9735_service_segments_v4.txt"
                if syntax_version == 4
                else "ISO9735_service_segments_v3.txt"
            )
            self._service[syntax_version] = _parse_segments(_read(name))
        service = self._service[syntax_version]
        if tag in service:
            return service[tag]
        if self._segments is None:
            self._segments = _parse_segments(_read("TRSD.96B"))
        return self._segments[tag]

    def composite(self, tag: str) -> CompositeSpec:
        if self._composites is None:
            self._composites = _parse_composites(_read("TRCD.96B"))
        return self._composites[tag]

    def element(self, tag: str) -> DataElementSpec:
        if self._elements is None:
            self._elements = _parse_elements(_read("TRED.96B"))
        return self._elements[tag]

    def code_list(self, element_tag: str) -> dict[str, str]:
        """Codes of a coded element (code -> name); empty when the directory lists none."""
        if self._codes is None:
            codes: dict[str, dict[str, str]] = {}
            for name in ("UNCL-1.96B", "UNCL-2.96B", "UNSL.96B"):
                codes.update(_parse_code_lists(_read(name)))
            self._codes = codes
        return self._codes.get(element_tag, {})


@cache
def d96b() -> Directory:
    """The D.96B directory, loaded once per process (each file on first use)."""
    return Directory()


def syntax_error_name(code: int) -> str:
    """The UNSL name of a 0085 syntax error code, e.g. 29 -> "Control count does not match ..."."""
    return d96b().code_list("0085").get(str(code), "Unspecified error")
