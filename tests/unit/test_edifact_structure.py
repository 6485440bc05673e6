"""The structure validator, driven by the D.96B directory, on real samples and broken variants."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydifact.segments import Segment

from mappings.edifact.directory import d96b
from mappings.edifact.structure import (
    check_segment,
    conforms,
    summarize,
    validate_interchange,
    validate_message,
)
from mappings.edifact.syntax import (
    Finding,
    PositionedSegment,
    build_interchange,
    build_message,
    read_interchange,
    tokenize_segments,
)

SAMPLES = Path("/work/shared/samples/edifact")


def synthetic() -> list[Segment]:
    (message,) = read_interchange(
        (SAMPLES / "cuscar_D96B_synthetic_1msg_generated.edi").read_bytes()
    ).messages()
    return message.plain_segments()


def bare(name: str) -> list[Segment]:
    """The message of a sample file, without any UNB/UNZ envelope (some samples have none)."""
    return [
        p.segment
        for p in tokenize_segments((SAMPLES / name).read_bytes())
        if p.segment.tag not in ("UNB", "UNZ")
    ]


def found(findings: list[Finding]) -> list[tuple[int, str | None, int | None, int | None, int | None]]:
    return [
        (f.code, f.segment_tag, f.segment_position, f.element_position, f.component_position)
        for f in findings
    ]


def replaced(position: int, *segments: Segment) -> list[Segment]:
    """The synthetic CUSCAR with the segment at ``position`` (UNH = 1) replaced."""
    message = synthetic()
    message[position - 1 : position] = list(segments)
    return message


# --- real messages -------------------------------------------------------------------------------------


def test_the_synthetic_cuscar_is_valid_d96b_including_its_codes() -> None:
    assert validate_message(synthetic(), check_codes=True) == []
    data = (SAMPLES / "cuscar_D96B_synthetic_1msg_generated.edi").read_bytes()
    assert validate_interchange(data, check_codes=True) == []


def test_the_south_african_cusres_is_valid_d96b() -> None:
    assert validate_message(bare("cusres_D96B_response_ZA_sars.msg"), check_codes=True) == []


def test_the_new_zealand_cusres_is_valid_in_structure_but_uses_its_own_error_codes() -> None:
    segments = bare("cusres_D96B_error_NZ.edi")
    assert validate_message(segments) == []
    # ERP+001: 1049 "message section" is coded, and 001 is in no D.96B list
    assert found(validate_message(segments, check_codes=True)) == [
        (12, "ERP", 4, 1, 1),
        (12, "ERP", 6, 1, 1),
    ]


def test_the_south_african_cusdec_is_valid_d96b() -> None:
    assert validate_message(bare("cusdec_D96B_import_ZA_sars.msg")) == []


@pytest.mark.parametrize(
    "name",
    [
        "contrl_D3_generated_by_pydifact_for_missing_gid.edi",
        "contrl_D3_uci_reject_AU_cmr.edi",
        "contrl_D3_ucm_ucs_ucd_for_CUSCAR_D99B_AU_cmr.msg",
    ],
)
def test_real_contrl_messages_are_valid_syntax_3_contrl(name: str) -> None:
    assert validate_message(bare(name)) == []


def test_a_contrl_that_puts_syntax_4_identifiers_in_syntax_3_is_caught() -> None:
    # the South African sample's UCI carries four components in S002 and a 16-character 0008
    assert found(validate_message(bare("contrl_D3_accept_CUSDEC_ZA_sars.msg"))) == [
        (39, "UCI", 2, 2, 3),
        (16, "UCI", 2, 2, 4),
    ]
    assert validate_message(bare("contrl_D3_accept_CUSDEC_ZA_sars.msg"), syntax_version=4) == []


def test_a_d95b_cuscar_with_a_wrong_unt_count_fails_the_envelope_check() -> None:
    data = (SAMPLES / "cuscar_D95B_chrishumphreys_simple.edi").read_bytes().replace(b"UNOB:2", b"UNOB:3")
    codes = [f.code for f in validate_interchange(data)]
    assert 29 in codes  # UNT says 313 segments


# --- broken variants of a valid CUSCAR -----------------------------------------------------------------


def test_a_missing_mandatory_segment_is_reported_where_it_was_expected() -> None:
    message = [s for s in synthetic() if s.tag != "BGM"]
    assert found(validate_message(message)) == [(13, "BGM", 2, None, None)]


def test_a_missing_mandatory_group_is_reported() -> None:
    message = synthetic()
    without_goods = message[:21] + message[-1:]  # drops every GID group
    (finding,) = validate_message(without_goods)
    assert (finding.code, finding.segment_tag) == (13, "GID")
    assert "segment group 14" in finding.message


def test_a_segment_out_of_order_is_not_supported_in_its_position() -> None:
    message = synthetic()
    dtm = message.pop(2)
    message.insert(18, dtm)  # the message date after CNI
    assert found(validate_message(message)) == [(15, "DTM", 19, None, None)]


def test_too_many_segment_repetitions() -> None:
    message = synthetic()
    message[2:3] = [message[2]] * 10  # DTM is C 9 at message level
    assert found(validate_message(message)) == [(35, "DTM", 12, None, None)]


def test_too_many_segment_group_repetitions() -> None:
    message = synthetic()
    message[-1:-1] = [Segment("AUT", "A1"), Segment("AUT", "A2")]  # SG17 is C 1
    assert found(validate_message(message)) == [(36, "AUT", 31, None, None)]


def test_too_many_data_elements() -> None:
    assert found(validate_message(replaced(2, Segment("BGM", "85", "X", "9", "AB", "EXTRA")))) == [
        (16, "BGM", 2, 5, None)
    ]


def test_too_many_components() -> None:
    assert found(validate_message(replaced(23, Segment("GID", "1", ["10", "CT", "", "", "X", "Y"])))) == [
        (16, "GID", 23, 2, 6)
    ]


def test_missing_mandatory_elements_and_components() -> None:
    assert found(validate_message(replaced(6, Segment("NAD", "", ["", "172"])))) == [
        (13, "NAD", 6, 1, None),
        (13, "NAD", 6, 2, 1),
    ]


def test_letters_in_a_numeric_element() -> None:
    assert found(validate_message(replaced(23, Segment("GID", "1A", ["10", "CT"])))) == [
        (37, "GID", 23, 1, None)
    ]


def test_a_decimal_mark_needs_a_digit_in_front() -> None:
    assert found(validate_message(replaced(23, Segment("GID", "1", [".5", "CT"])))) == [(38, "GID", 23, 2, 1)]


def test_sign_and_decimal_mark_do_not_count_towards_the_length() -> None:
    assert validate_message(replaced(23, Segment("GID", "1", ["-1234567.8", "CT"]))) == []
    assert found(validate_message(replaced(23, Segment("GID", "1", ["123456789", "CT"])))) == [
        (39, "GID", 23, 2, 1)
    ]


def test_too_long_and_too_short_values() -> None:
    # BGM's second element is the composite C106, document number 1004 its first component
    assert found(validate_message(replaced(2, Segment("BGM", "85", "X" * 36, "9")))) == [(39, "BGM", 2, 2, 1)]
    unb = Segment("UNB", ["UNOC", "3"], "S", "R", ["25011", "1200"], "C1")
    assert found(check_segment(unb, d96b().segment("UNB"))) == [(40, "UNB", None, 4, 1)]


def test_digits_in_an_alphabetic_element() -> None:
    unb = Segment("UNB", ["UN0C", "3"], "S", "R", ["250115", "1200"], "C1")
    assert found(check_segment(unb, d96b().segment("UNB"))) == [(37, "UNB", None, 1, 1)]


def test_code_values_are_checked_only_when_asked() -> None:
    message = replaced(2, Segment("BGM", "85", "MAN1", "X"))
    assert validate_message(message) == []
    assert found(validate_message(message, check_codes=True)) == [(12, "BGM", 2, 3, None)]
    assert validate_message(message, check_codes={"1001"}) == []


def test_codes_of_another_agency_are_not_checked_against_uncl() -> None:
    # EQD C224 "22G1" is an ISO 6346 size-type code (3055 = 5, ISO), not a UNCL 8155 code
    message = replaced(14, Segment("EQD", "CN", "ABCU0000001", ["22G1", "102", "6"]))
    assert found(validate_message(message, check_codes=True)) == [(12, "EQD", 14, 3, 1)]
    assert validate_message(synthetic(), check_codes=True) == []


def test_several_faults_are_all_reported_in_order() -> None:
    message = synthetic()
    message[1] = Segment("BGM", "85", "X" * 40, "9", "A", "B")
    message[22] = Segment("GID", "X")
    assert found(validate_message(message)) == [
        (39, "BGM", 2, 2, 1),
        (16, "BGM", 2, 5, None),
        (37, "GID", 23, 1, None),
    ]


def test_a_syntax_4_repetition_where_the_directory_allows_none_is_too_many_constituents() -> None:
    data = (
        b"UNA:+.?*'UNB+UNOC:4+S+R+20250115:1200+IC1'UNH+M1+CUSCAR:D:96B:UN'BGM+85+A*B+9'"
        b"CNI+1+HBL1'RFF+CMR:1'GID+1'UNT+6+M1'UNZ+1+IC1'"
    )
    (message,) = read_interchange(data).messages()
    assert found(validate_message(message.segments, syntax_version=4)) == [(16, "BGM", 2, 2, None)]


def test_an_unknown_message_type_is_version_not_supported() -> None:
    message = replaced(1, Segment("UNH", "M1", ["IFTMIN", "D", "96B", "UN"]))
    assert found(validate_message(message)) == [(3, "UNH", 1, 2, 1)]


def test_the_position_in_the_interchange_is_kept() -> None:
    (message,) = read_interchange(
        (SAMPLES / "cuscar_D96B_synthetic_1msg_generated.edi").read_bytes()
    ).messages()
    positioned = list(message.segments)
    del positioned[1]  # BGM
    (finding,) = validate_message(positioned)
    assert (finding.segment_position, finding.interchange_segment) == (2, 4)


# --- replies built with the writer ------------------------------------------------------------------


def contrl(version: int) -> bytes:
    identifier = ("CONTRL", "D", "3", "UN") if version == 3 else ("CONTRL", "4", "1", "UN")
    body = [
        Segment("UCI", "IC1", ["SENDERID", "ZZZ"], ["HKCUSTOMS", "ZZZ"], "4"),
        Segment("UCM", "M1", ["CUSCAR", "D", "96B", "UN"], "4"),
        Segment("UCS", "23", "13"),
        Segment("UCD", "13", ["1", "1"]),
    ]
    return build_interchange(
        [build_message("1", identifier, body)],
        sender="HKCUSTOMS",
        recipient="SENDERID",
        control_reference="R1",
        prepared=datetime(2026, 12, 1, 10, 0),
        syntax_version=version,
    )


@pytest.mark.parametrize("version", [3, 4])
def test_a_contrl_rejection_built_with_the_writer_is_valid(version: int) -> None:
    assert summarize(validate_interchange(contrl(version), check_codes=True)) == []


def test_a_contrl_without_its_uci_is_caught() -> None:
    data = contrl(3).replace(b"UCI+IC1+SENDERID:ZZZ+HKCUSTOMS:ZZZ+4'", b"").replace(b"UNT+6+1", b"UNT+5+1")
    assert found(validate_interchange(data)) == [(13, "UCI", 2, None, None)]


def test_a_cusres_built_with_the_writer_is_valid() -> None:
    body = [
        Segment("BGM", "962", "MAN00000001", "9"),
        Segment("RFF", ["ACW", "MAN00000001"]),
        Segment("DOC", "730", "HBL00000001"),
        Segment("RFF", ["XC", "HK2612010000017"]),
        Segment("DOC", "730", "HBL00000002"),
        Segment("ERP", "1"),
        Segment("ERC", ["E002", "", "ZZZ"]),
        Segment("FTX", "AAO", "", "", "INVALID_VALUE: items[0].package_count must be at least 1"),
    ]
    data = build_interchange(
        [build_message("1", ("CUSRES", "D", "96B", "UN"), body)],
        sender="HKCUSTOMS",
        recipient="SENDERID",
        control_reference="R2",
        prepared=datetime(2026, 12, 1, 10, 0),
    )
    assert summarize(validate_interchange(data)) == []


# --- the fast path agrees with the full check ----------------------------------------------------------

VALUE = st.text(alphabet="A1.-,9 ", max_size=40)
ELEMENT = st.one_of(VALUE, st.lists(VALUE, min_size=2, max_size=7))


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["NAD", "GID", "MEA", "TDT", "BGM", "DTM", "CNI", "UNB", "UCD"]),
    st.lists(ELEMENT, max_size=12),
)
def test_the_quick_check_never_passes_what_the_full_check_rejects(
    tag: str, elements: list[str | list[str]]
) -> None:
    segment = Segment(tag, *elements) if elements else Segment(tag, "")
    spec = d96b().segment(tag)
    # a truthy check_codes naming no element takes the full path without checking codes
    assert check_segment(segment, spec) == check_segment(segment, spec, check_codes={"none"})


# --- the compiled fast path agrees with the full check ------------------------------------------------


def _positioned(segments: list[Segment]) -> list[PositionedSegment]:
    return [PositionedSegment(segment, number, 0) for number, segment in enumerate(segments, start=1)]


def _values() -> st.SearchStrategy[str]:
    return st.sampled_from(["", "1", "12.5", "1,5", "-3", ".5", "AB", "A" * 36, "9" * 19, "X1", "ZZZ"])


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["drop", "repeat", "swap", "element", "component", "extra"]),
            st.integers(min_value=0, max_value=200),
            _values(),
        ),
        max_size=4,
    )
)
def test_conforms_never_passes_a_message_the_full_check_faults(edits) -> None:
    """``conforms`` (transition table learnt from earlier walks, generated element checks) says
    True only for messages on which ``validate_message`` finds nothing, whatever was learnt before."""
    message = synthetic()
    for kind, where, value in edits:
        position = 1 + where % (len(message) - 2)  # never UNH itself
        segment = message[position]
        if kind == "drop":
            del message[position]
        elif kind == "repeat":
            message.insert(position, segment)
        elif kind == "swap" and position + 1 < len(message):
            message[position], message[position + 1] = message[position + 1], message[position]
        elif segment.elements:
            elements = list(segment.elements)
            index = where % len(elements)
            if kind == "element":
                elements[index] = value
            elif kind == "component":
                current = elements[index]
                parts = list(current) if isinstance(current, list) else [current]
                parts[where % len(parts)] = value
                elements[index] = parts
            else:
                elements.append(value)
            message[position] = Segment(segment.tag, *elements)
    full = validate_message(message, "CUSCAR")
    if conforms(_positioned(message), "CUSCAR"):
        assert full == [], summarize(full)


def test_conforms_passes_valid_messages_of_new_shapes() -> None:
    message = synthetic()
    assert validate_message(message, "CUSCAR") == []
    assert conforms(_positioned(message), "CUSCAR")
    cni = next(i for i, s in enumerate(message) if s.tag == "CNI")
    end = next(i for i, s in enumerate(message) if s.tag == "UNT")
    longer = message[:end] + message[cni:end] * 3 + message[end:]  # more consignments: a new shape
    assert validate_message(longer, "CUSCAR") == []
    assert conforms(_positioned(longer), "CUSCAR")
    no_bgm = [s for s in message if s.tag != "BGM"]  # BGM is mandatory
    assert validate_message(no_bgm, "CUSCAR") != []
    assert not conforms(_positioned(no_bgm), "CUSCAR")


def test_conforms_counts_repetitions_exactly() -> None:
    """A segment repeated beyond its maximum is refused also after shorter runs were learnt."""
    message = synthetic()
    dtm = next(i for i, s in enumerate(message) if s.tag == "DTM")
    for times in range(1, 30):
        variant = message[:dtm] + [message[dtm]] * times + message[dtm + 1 :]
        assert conforms(_positioned(variant), "CUSCAR") == (validate_message(variant, "CUSCAR") == [])
