"""Checks a message against its directory structure: order, groups, repeats, elements, values.

Driven by the D.96B files (``directory.py``); nothing about CUSCAR, CUSRES or CONTRL is written here.
Every fault becomes a ``Finding`` with its UNSL 0085 code and position, ready for CONTRL (UCS, UCD):

- 13 Missing: a mandatory segment, segment group, data element or component is absent
- 15 Not supported in this position: a segment the structure does not allow where it stands
- 16 Too many constituents: more data elements (components) than the segment (composite) defines
- 35 / 36 Too many segment / segment group repetitions
- 37 Invalid type of character(s): letters in a numeric element, digits in an alphabetic one
- 38 Missing digit in front of decimal sign; 39 / 40 Data element too long / too short
- 12 Invalid value: not in the element's UNCL/UNSL code list (only when asked: ``check_codes``)
- 3 Message version/release not supported: a message type this directory does not hold
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Protocol

from pydifact.segments import Segment

from mappings.edifact.directory import (
    ComponentSpec,
    Directory,
    GroupNode,
    Node,
    Representation,
    SegmentNode,
    SegmentSpec,
    d96b,
)
from mappings.edifact.syntax import (
    EdifactSyntaxError,
    Element,
    Finding,
    PositionedSegment,
    Source,
    read_interchange,
)

# Not checked against the D.96B lists even with check_codes: the syntax identifier and message
# versions of syntax 4 and of CONTRL (UNOY, "4", "3", "1") postdate the 1996 UNSL.
_UNCHECKED_CODES = frozenset({"0001", "0002", "0052", "0054"})
# 3055, code list responsible agency: "6" is UN/ECE (the UNCL lists); another agency (5 ISO,
# 139 US DoT, ...) means the coded components of that composite use that agency's list.
_UN_AGENCIES = frozenset({"", "6"})
_NUMERIC = re.compile(r"-?(\d*)(?:[.,](\d*))?")
_DIGIT = re.compile(r"\d")


@dataclass
class _Frame:
    """One open level of the structure: its children, where we stand, how often it has matched."""

    children: tuple[Node, ...]
    index: int
    count: int  # occurrences of children[index] in this instance
    group: GroupNode | None


_POSITIONS: dict[int, tuple[tuple[Node, ...], dict[str, tuple[int, ...]]]] = {}


def _positions(children: tuple[Node, ...]) -> dict[str, tuple[int, ...]]:
    """Where each tag can stand among these children (a group by its trigger), cached per level."""
    cached = _POSITIONS.get(id(children))
    if cached is not None and cached[0] is children:
        return cached[1]
    positions: dict[str, list[int]] = {}
    for index, node in enumerate(children):
        positions.setdefault(_trigger_tag(node), []).append(index)
    result = {tag: tuple(indices) for tag, indices in positions.items()}
    _POSITIONS[id(children)] = (children, result)
    return result


def _describe(node: Node) -> str:
    if isinstance(node, SegmentNode):
        return f"segment {node.tag}"
    return f"segment group {node.number} (starting with {node.trigger})"


def _trigger_tag(node: Node) -> str:
    return node.tag if isinstance(node, SegmentNode) else node.trigger


def validate_message(
    segments: Sequence[Segment | PositionedSegment],
    message_type: str | None = None,
    *,
    syntax_version: int = 3,
    check_codes: bool | Collection[str] = False,
    directory: Directory | None = None,
) -> list[Finding]:
    """Every structure fault of one message (UNH..UNT), in segment order.

    ``message_type`` defaults to the one in UNH (0065). ``check_codes`` checks coded values against
    the code lists of the directory: ``True`` for every coded element the directory lists, or a
    collection of element tags (e.g. ``{"1225", "3035"}``).
    """
    directory = directory or d96b()
    plain = [item.segment if isinstance(item, PositionedSegment) else item for item in segments]
    numbers = [item.number if isinstance(item, PositionedSegment) else None for item in segments]
    if message_type is None:
        message_type = _message_type(plain)
    try:
        structure = directory.message(message_type, syntax_version)
    except KeyError:
        return [
            Finding(
                3,
                f"message type {message_type or '(none)'} is not supported here; "
                f"supported: {', '.join(directory.message_types)}",
                1,
                "UNH",
                2,
                1,
            )
        ]
    tags = tuple(segment.tag for segment in plain)
    if directory is d96b():
        matched, order = _cached_order(message_type, syntax_version, tags)
        findings = list(order)
    else:
        findings = []
        matched = tuple(_check_order(message_type, structure.children, tags, findings))
    if findings and any(numbers):
        findings = [
            replace(f, interchange_segment=numbers[f.segment_position - 1])
            if f.segment_position and f.segment_position <= len(numbers)
            else f
            for f in findings
        ]
    for position, segment in enumerate(plain, start=1):
        if not matched[position - 1]:
            continue
        try:
            spec = directory.segment(segment.tag, syntax_version)
        except KeyError:
            continue
        findings.extend(
            check_segment(
                segment,
                spec,
                position=position,
                interchange_segment=numbers[position - 1],
                check_codes=check_codes,
                directory=directory,
            )
        )
        item = segments[position - 1]
        if isinstance(item, PositionedSegment) and item.repetitions:
            findings.extend(_repetitions(item.repetitions, spec, position, item.number))
    findings.sort(key=lambda f: (f.segment_position or 0, f.element_position or 0, f.component_position or 0))
    return findings


def _repetitions(
    repetitions: dict[int, list[Element]], spec: SegmentSpec, position: int, number: int
) -> list[Finding]:
    """Syntax 4 repeated data elements beyond what the segment allows (D.96B allows none)."""
    findings = []
    for index, occurrences in sorted(repetitions.items()):
        allowed = spec.elements[index].repeats if index < len(spec.elements) else 1
        if len(occurrences) > allowed:
            findings.append(
                Finding(
                    16,
                    f"data element {index + 1} of {spec.tag} occurs {len(occurrences)} times, "
                    f"at most {allowed}",
                    position,
                    spec.tag,
                    index + 1,
                    None,
                    number,
                )
            )
    return findings


def _message_type(segments: Sequence[Segment]) -> str:
    if not segments or segments[0].tag != "UNH":
        return ""
    s009 = segments[0].elements[1] if len(segments[0].elements) > 1 else ""
    return s009[0] if isinstance(s009, list) else s009


@lru_cache(maxsize=256)  # messages that do not conform only: see conforms()
def _cached_order(
    message_type: str, syntax_version: int, tags: tuple[str, ...]
) -> tuple[tuple[bool, ...], tuple[Finding, ...]]:
    # Messages of one shape (the same tag sequence) get the same verdict: a large interchange
    # repeats a few hundred shapes, so the walk runs once per shape.
    findings: list[Finding] = []
    children = d96b().message(message_type, syntax_version).children
    matched = _check_order(message_type, children, tags, findings)
    return tuple(matched), tuple(findings)


def _check_order(
    name: str,
    children: tuple[Node, ...],
    tags: Sequence[str],
    findings: list[Finding],
) -> list[bool]:
    """Walks the tags through the structure; returns which segments found their place."""
    stack = [_Frame(children, 0, 0, None)]
    matched = [_step(name, stack, position, tag, findings) for position, tag in enumerate(tags, start=1)]
    _close_all(stack, len(tags), f"{tags[-1] if tags else 'the end'}, the last segment", findings)
    return matched


def _missing(frame: _Frame, start: int, stop: int, position: int, tag: str, findings: list[Finding]) -> None:
    for node in frame.children[start:stop]:
        if node.mandatory:
            where = f"in segment group {frame.group.number}" if frame.group else "in the message"
            findings.append(
                Finding(
                    13,
                    f"mandatory {_describe(node)} is missing {where} (noticed at {tag})",
                    position,
                    _trigger_tag(node),
                )
            )


def _close(frame: _Frame, position: int, tag: str, findings: list[Finding]) -> None:
    # children after the current one, and the current one if it never occurred
    start = frame.index + 1 if frame.count else frame.index
    _missing(frame, start, len(frame.children), position, tag, findings)


def _close_all(stack: list[_Frame], position: int, tag: str, findings: list[Finding]) -> None:
    while stack:
        _close(stack.pop(), position, tag, findings)


def _step(name: str, stack: list[_Frame], position: int, tag: str, findings: list[Finding]) -> bool:
    """One segment of the walk: moves ``stack`` on, adds what is wrong; False when the tag has no place."""
    found_level = -1
    found_index = -1
    for level in range(len(stack) - 1, -1, -1):
        frame = stack[level]
        # a group's trigger opens a new occurrence at the level above, never repeats here
        first = frame.index
        if frame.group is not None and first == 0:
            first = 1
        for index in _positions(frame.children).get(tag, ()):
            if index >= first:
                found_level, found_index = level, index
                break
        if found_level >= 0:
            break
    if found_level < 0:
        findings.append(
            Finding(
                15,
                f"segment {tag} is not allowed here by the {name} structure "
                "(wrong order, wrong group, or unknown in this message)",
                position,
                tag,
            )
        )
        return False
    while len(stack) - 1 > found_level:
        _close(stack.pop(), position, tag, findings)
    frame = stack[-1]
    if found_index == frame.index:
        frame.count += 1
    else:
        _missing(frame, frame.index + 1 if frame.count else frame.index, found_index, position, tag, findings)
        frame.index, frame.count = found_index, 1
    node = frame.children[found_index]
    if frame.count > node.max_repeats:
        if isinstance(node, GroupNode):
            findings.append(
                Finding(
                    36,
                    f"segment group {node.number} occurs {frame.count} times, at most {node.max_repeats}",
                    position,
                    tag,
                )
            )
        else:
            findings.append(
                Finding(
                    35,
                    f"segment {tag} occurs {frame.count} times here, at most {node.max_repeats}",
                    position,
                    tag,
                )
            )
    if isinstance(node, GroupNode):
        stack.append(_Frame(node.children, 0, 1, node))
    return True


def _key(stack: list[_Frame]) -> tuple[tuple[int, int], ...]:
    """Where the walker stands: at each open level, which child and how often it occurred."""
    return tuple((frame.index, frame.count) for frame in stack)


def check_segment(
    segment: Segment,
    spec: SegmentSpec,
    *,
    position: int | None = None,
    interchange_segment: int | None = None,
    check_codes: bool | Collection[str] = False,
    directory: Directory | None = None,
) -> list[Finding]:
    """Element and component status, count, representation and (optionally) code values."""
    if not check_codes and _looks_valid(segment.elements, _plan(spec)):
        return []
    directory = directory or d96b()
    findings: list[Finding] = []
    tag = segment.tag

    def add(code: int, message: str, element: int | None, component: int | None = None) -> None:
        findings.append(Finding(code, message, position, tag, element, component, interchange_segment))

    elements = segment.elements
    count = len(elements)
    if count > len(spec.elements):
        add(
            16,
            f"{tag} has {count} data elements, the directory defines {len(spec.elements)}",
            len(spec.elements) + 1,
        )
    for element_spec in spec.elements:
        index = element_spec.position
        value: Element | None = elements[index - 1] if index <= count else None
        if not value or (isinstance(value, list) and not any(value)):
            if element_spec.mandatory:
                add(13, f"mandatory {element_spec.tag} ({element_spec.name.lower()}) is missing", index)
            continue
        if not element_spec.components:
            if isinstance(value, list):
                add(16, f"{element_spec.tag} is a simple data element but has {len(value)} components", index)
                value = value[0]
            representation = element_spec.representation
            assert representation is not None
            if (
                representation.kind != "an"
                or not representation.min_length <= len(value) <= representation.max_length
            ):
                _check_value(value, element_spec.tag, representation, add, index, None)
            if check_codes:
                _check_code(value, element_spec.tag, check_codes, directory, add, index, None)
            continue
        components = [value] if isinstance(value, str) else value
        specs = element_spec.components
        if len(components) > len(specs):
            add(
                16,
                f"{element_spec.tag} has {len(components)} components, the directory defines {len(specs)}",
                index,
                len(specs) + 1,
            )
        codes_here = check_codes and _agency(specs, components) in _UN_AGENCIES
        for component_spec, text in zip(specs, components, strict=False):
            if not text:
                if component_spec.mandatory:
                    _missing_component(add, element_spec.tag, component_spec, index)
                continue
            representation = component_spec.representation
            if (
                representation.kind != "an"
                or not representation.min_length <= len(text) <= representation.max_length
            ):
                _check_value(text, component_spec.tag, representation, add, index, component_spec.position)
            if codes_here:
                _check_code(
                    text, component_spec.tag, check_codes, directory, add, index, component_spec.position
                )
        for component_spec in specs[len(components) :]:
            if component_spec.mandatory:
                _missing_component(add, element_spec.tag, component_spec, index)
    return findings


# A segment's checks boiled down to tuples: (mandatory, kind, min, max) per simple element, a tuple
# of those per composite. ``_looks_valid`` runs on it and answers only "nothing to report"; anything
# else goes through ``check_segment``'s full path, which names the fault.
_Check = tuple[bool, str, int, int]
_Entry = tuple[bool, tuple[_Check, ...]]  # (is a composite, its checks: one for a simple element)
_Plan = tuple[int, tuple[int, ...], tuple[_Entry, ...]]
_PLANS: dict[int, tuple[SegmentSpec, _Plan]] = {}
_PLAIN_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def _plan(spec: SegmentSpec) -> _Plan:
    cached = _PLANS.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    entries: list[_Entry] = []
    for element in spec.elements:
        if element.components:
            checks = tuple(
                (c.mandatory, c.representation.kind, c.representation.min_length, c.representation.max_length)
                for c in element.components
            )
            entries.append((True, checks))
        else:
            assert element.representation is not None
            r = element.representation
            entries.append((False, ((element.mandatory, r.kind, r.min_length, r.max_length),)))
    mandatory = tuple(e.position - 1 for e in spec.elements if e.mandatory)
    plan = (len(spec.elements), mandatory, tuple(entries))
    _PLANS[id(spec)] = (spec, plan)
    return plan


def _fits(text: str, check: _Check) -> bool:
    _, kind, low, high = check
    if kind == "an":
        return low <= len(text) <= high
    if kind == "n":
        return (
            _PLAIN_NUMBER.fullmatch(text) is not None
            and low <= len(text) - ("." in text or "," in text) <= high
        )
    return False  # alphabetic: the full path checks for digits


def _looks_valid(elements: list[Element], plan: _Plan) -> bool:
    count, mandatory, entries = plan
    if len(elements) > count:
        return False
    for index in mandatory:
        if index >= len(elements) or not elements[index]:
            return False
    for value, (composite, checks) in zip(elements, entries, strict=False):
        if not value:
            continue
        if not composite:
            if not isinstance(value, str) or not _fits(value, checks[0]):
                return False
            continue
        components = [value] if isinstance(value, str) else value
        if len(components) > len(checks) or not any(components):
            return False
        for text, check in zip(components, checks, strict=False):
            if text:
                if not _fits(text, check):
                    return False
            elif check[0]:
                return False
        for check in checks[len(components) :]:
            if check[0]:
                return False
    return True


def _agency(specs: tuple[ComponentSpec, ...], components: list[str]) -> str:
    for spec in specs:
        if spec.tag == "3055" and spec.position <= len(components):
            return components[spec.position - 1]
    return ""


def _missing_component(add: _Add, element: str, spec: ComponentSpec, index: int) -> None:
    add(
        13,
        f"mandatory component {spec.tag} ({spec.name.lower()}) of {element} is missing",
        index,
        spec.position,
    )


class _Add(Protocol):
    def __call__(
        self, code: int, message: str, element: int | None, component: int | None = None
    ) -> None: ...


def _check_value(
    value: str,
    tag: str,
    representation: Representation,
    add: _Add,
    element: int,
    component: int | None,
) -> None:
    kind = representation.kind
    length = len(value)
    if kind == "n":
        match = _NUMERIC.fullmatch(value)
        if match is None or not (match.group(1) or match.group(2)):
            add(37, f"{tag} must be numeric ({representation}), got {value!r}", element, component)
            return
        if match.group(2) is not None and not match.group(1):
            add(38, f"{tag}: a digit must precede the decimal mark in {value!r}", element, component)
        # sign and decimal mark do not count towards the length (ISO 9735)
        length = len(match.group(1)) + len(match.group(2) or "")
    elif kind == "a" and _DIGIT.search(value):
        add(37, f"{tag} must be alphabetic ({representation}), got {value!r}", element, component)
    if length > representation.max_length:
        add(
            39,
            f"{tag} is {length} characters long, at most {representation.max_length} ({representation})",
            element,
            component,
        )
    elif length < representation.min_length:
        add(
            40,
            f"{tag} is {length} characters long, at least {representation.min_length} ({representation})",
            element,
            component,
        )


def _check_code(
    value: str,
    tag: str,
    check_codes: bool | Collection[str],
    directory: Directory,
    add: _Add,
    element: int,
    component: int | None,
) -> None:
    if not check_codes or (not isinstance(check_codes, bool) and tag not in check_codes):
        return
    if tag in _UNCHECKED_CODES:
        return
    codes = directory.code_list(tag)
    if codes and value not in codes:
        add(12, f"{value!r} is not a code of {tag} in the D.96B code lists", element, component)


def validate_interchange(
    data: Source,
    *,
    check_codes: bool | Collection[str] = False,
    directory: Directory | None = None,
) -> list[Finding]:
    """Reads a whole interchange and checks UNB, UNZ and every message (type from UNH).

    Syntax faults of the envelope come back as one finding instead of an exception, so tests and
    tools can show everything in one list. Message findings keep their positions in the message.
    """
    directory = directory or d96b()
    findings: list[Finding] = []
    try:
        reader = read_interchange(data)
        version = reader.header.syntax_version
        findings.extend(
            check_segment(reader.header.segment, directory.segment("UNB", version), position=None)
        )
        for message in reader.messages():
            findings.extend(message.findings)
            findings.extend(
                validate_message(
                    message.segments, syntax_version=version, check_codes=check_codes, directory=directory
                )
            )
    except EdifactSyntaxError as error:
        findings.append(error.finding)
    return findings


def summarize(findings: Iterable[Finding]) -> list[str]:
    """One line per finding, for logs and assertion messages."""
    return [str(finding) for finding in findings]


__all__ = ["check_segment", "summarize", "validate_interchange", "validate_message"]


# --- the fast path ---------------------------------------------------------------------------------
# ``validate_message`` names every fault; most messages have none. ``conforms`` answers only "nothing to
# report" (True) or "look closer" (False), from two things compiled once per message type: the structure
# as a table of transitions between the walker's states, learnt one step at a time by the walker of
# ``_check_order`` (a step not seen before is walked once, from the state the known steps led to; every
# later message taking it is a dict lookup per segment), and each segment's element checks as one
# generated Python function. Tags are keys of small dicts (a few dozen strings), so nothing of a message
# is kept.

_MAX_STATES = 200_000  # a bound on the transition table; it is rebuilt from scratch beyond it


class _Machine:
    """The walker's states for one message type, numbered, with the clean transitions seen so far.

    A state is the walker's stack as ``_key`` gives it: the stack can be rebuilt from it (each open
    group is the child its parent level stands at), so a step not seen before is walked from the
    state where the known steps ended, one step at a time, and recorded when it found nothing wrong.
    """

    def __init__(self, children: tuple[Node, ...]) -> None:
        self.children = children
        self.keys: list[tuple[tuple[int, int], ...]] = [((0, 0),)]
        self.ids: dict[tuple[tuple[int, int], ...], int] = {self.keys[0]: 0}
        self.moves: list[dict[str, int]] = [{}]
        self.ends: dict[int, bool] = {}  # state -> the message may end there without a finding

    def state(self, key: tuple[tuple[int, int], ...]) -> int:
        number = self.ids.get(key)
        if number is None:
            number = len(self.moves)
            self.ids[key] = number
            self.keys.append(key)
            self.moves.append({})
        return number

    def _stack(self, state: int) -> list[_Frame]:
        key = self.keys[state]
        stack = [_Frame(self.children, key[0][0], key[0][1], None)]
        for index, count in key[1:]:
            parent = stack[-1]
            group = parent.children[parent.index]
            assert isinstance(group, GroupNode)
            stack.append(_Frame(group.children, index, count, group))
        return stack

    def step(self, state: int, tag: str) -> int:
        """The state after ``tag``, learnt by walking it; -1 when the step finds anything wrong."""
        stack = self._stack(state)
        findings: list[Finding] = []
        if not _step("", stack, 1, tag, findings) or findings:
            return -1
        after = self.state(_key(stack))
        self.moves[state][tag] = after
        return after

    def clean_end(self, state: int) -> bool:
        clean = self.ends.get(state)
        if clean is None:
            findings: list[Finding] = []
            _close_all(self._stack(state), 1, "the end", findings)
            clean = self.ends[state] = not findings
        return clean


_MACHINES: dict[tuple[str, int], _Machine] = {}
_CHECKS: dict[int, dict[str, Callable[[list[Element]], bool] | None]] = {}  # by syntax version


def conforms(segments: Sequence[PositionedSegment], message_type: str, syntax_version: int = 3) -> bool:
    """True when ``validate_message(segments, message_type, syntax_version=...)`` would find nothing
    (D.96B, no code checks); False means only that the full check must run."""
    key = (message_type, syntax_version)
    machine = _MACHINES.get(key)
    if machine is None or len(machine.moves) > _MAX_STATES:
        try:
            structure = d96b().message(message_type, syntax_version)
        except KeyError:
            return False
        machine = _MACHINES[key] = _Machine(structure.children)
    moves = machine.moves
    checks = _CHECKS.setdefault(syntax_version, {})
    state = 0
    for positioned in segments:
        segment = positioned.segment
        tag = segment.tag
        after = moves[state].get(tag, -1)
        if after < 0:
            after = machine.step(state, tag)
            if after < 0:
                return False
        state = after
        if positioned.repetitions:
            return False
        check = checks.get(tag, _UNKNOWN)
        if check is _UNKNOWN:
            check = _segment_check(tag, syntax_version)
        if check is None or not check(segment.elements):  # type: ignore[operator]
            return False
    return machine.clean_end(state)


_UNKNOWN = object()


def _segment_check(tag: str, syntax_version: int) -> Callable[[list[Element]], bool] | None:
    checks = _CHECKS.setdefault(syntax_version, {})
    try:
        return checks[tag]
    except KeyError:
        pass
    try:
        spec = d96b().segment(tag, syntax_version)
    except KeyError:
        check = None
    else:
        check = _compile_check(spec)
    if len(checks) < 10_000:  # tags that find their place in a structure: a few dozen
        checks[tag] = check
    return check


def _value_test(name: str, representation: Representation) -> str:
    """A Python expression, true when the non-empty text ``name`` fits ``representation``."""
    low, high = representation.min_length, representation.max_length
    if representation.kind == "an":
        return f"len({name}) <= {high}" if low <= 1 else f"{low} <= len({name}) <= {high}"
    if representation.kind == "n":
        return (
            f"_number({name}) is not None and "
            f"{low} <= len({name}) - ('.' in {name} or ',' in {name}) <= {high}"
        )
    return f"_digit({name}) is None and {low} <= len({name}) <= {high}"


def _compile_check(spec: SegmentSpec) -> Callable[[list[Element]], bool]:
    """One function per segment: the checks of ``check_segment`` unrolled, answering only whether
    there is nothing to report (a False sends the segment through ``check_segment``, which names it)."""
    lines = ["def check(e):", "    n = len(e)", f"    if n > {len(spec.elements)}: return False"]
    for index, element in enumerate(spec.elements):
        lines.append(f"    v = e[{index}] if n > {index} else ''")
        # a composite whose components are all empty is missing, as check_segment has it
        present = "v and (v.__class__ is str or any(v))" if element.components else "v"
        lines.append(f"    if {present}:")
        if not element.components:
            assert element.representation is not None
            lines.append("        if v.__class__ is not str: return False")
            lines.append(f"        if not ({_value_test('v', element.representation)}): return False")
        else:
            count = len(element.components)
            lines.append("        if v.__class__ is str: v = (v,)")
            lines.append(f"        elif len(v) > {count}: return False")
            lines.append("        m = len(v)")
            for position, component in enumerate(element.components):
                lines.append(f"        t = v[{position}] if m > {position} else ''")
                test = _value_test("t", component.representation)
                if component.mandatory:
                    lines.append(f"        if not t or not ({test}): return False")
                else:
                    lines.append(f"        if t and not ({test}): return False")
        if element.mandatory:
            lines.append("    else: return False")
    lines.append("    return True")
    namespace: dict[str, object] = {"_number": _PLAIN_NUMBER.fullmatch, "_digit": _DIGIT.search}
    exec("\n".join(lines), namespace)  # generated from the directory's own tables, nothing else
    return namespace["check"]  # type: ignore[return-value]
