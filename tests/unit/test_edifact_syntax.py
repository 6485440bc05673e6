"""The EDIFACT tokenizer, envelope checks and writer (ISO 9735 syntax versions 3 and 4)."""

from __future__ import annotations

import io
import re
import tracemalloc
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydifact.parser import Parser
from pydifact.segments import Segment

from mappings.edifact.syntax import (
    Delimiters,
    EdifactSyntaxError,
    Finding,
    Message,
    build_interchange,
    build_message,
    read_header,
    read_interchange,
    serialize,
    tokenize,
    tokenize_segments,
)

SAMPLES = Path("/work/shared/samples/edifact")
SYNTHETIC = SAMPLES / "cuscar_D96B_synthetic_1msg_generated.edi"

BODY = (
    b"UNH+M1+CUSCAR:D:96B:UN'BGM+85+MAN1+9'DTM+137:202501151200:203'"
    b"CNI+1+HBL1'RFF+CMR:REF?+1'NAD+CZ+++SHIPPER?'S CO?:LTD'GID+1+10:CT'UNT+8+M1'"
)


def interchange(
    body: bytes = BODY,
    *,
    head: bytes = b"UNA:+.? '",
    charset: bytes = b"UNOC:3",
    count: bytes = b"1",
    ref: bytes = b"IC1",
    trailer: bytes | None = None,
) -> bytes:
    unz = trailer if trailer is not None else b"UNZ+" + count + b"+" + ref + b"'"
    return head + b"UNB+" + charset + b"+SENDERID:ZZZ+HKCUSTOMS:ZZZ+250115:1200+" + ref + b"'" + body + unz


def messages(data: bytes) -> list[Message]:
    return list(read_interchange(data).messages())


def error(data: bytes | Iterator[bytes], **kwargs: int) -> EdifactSyntaxError:
    with pytest.raises(EdifactSyntaxError) as caught:
        reader = read_interchange(data, **kwargs)
        for _ in reader.messages():
            pass
    return caught.value


# --- reading what partners send -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::Warning")  # pydifact warns it has no D.24A/service XML
def test_segments_come_out_in_pydifacts_own_shapes_with_their_positions() -> None:
    data = SYNTHETIC.read_bytes()
    ours = list(tokenize(data))
    theirs = [s for s in Parser().parse(data.decode("latin-1")) if s.tag != "UNA"]
    assert [(p.segment.tag, p.segment.elements) for p in ours] == [(s.tag, s.elements) for s in theirs]
    assert all(isinstance(p.segment, Segment) for p in ours)
    assert [p.number for p in ours[:3]] == [1, 2, 3]
    assert data[ours[1].offset : ours[1].offset + 4] == b"UNH+"


def test_the_release_character_is_honoured_everywhere() -> None:
    (message,) = messages(interchange())
    segments = message.plain_segments()
    assert segments[4].elements == [["CMR", "REF+1"]]
    assert segments[5].elements == ["CZ", "", "", "SHIPPER'S CO:LTD"]
    assert message.findings == []


def test_a_released_release_character_ends_before_the_terminator() -> None:
    body = b"UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++50?? OFF??'UNT+3+M1'"
    (message,) = messages(interchange(body))
    assert message.plain_segments()[1].elements == ["AAA", "", "", "50? OFF?"]


def test_without_una_the_iso_9735_defaults_apply() -> None:
    (message,) = messages(interchange(head=b""))
    assert message.plain_segments()[4].elements == [["CMR", "REF+1"]]


def test_custom_una_separators_are_honoured() -> None:
    custom = (
        interchange()
        .replace(b"?", b"\x00")
        .replace(b"+", b"|")
        .replace(b":", b"^")
        .replace(b"'", b"~")
        .replace(b"\x00", b"!")
        .replace(b"UNA^|.! ~", b"UNA^|.! ~")
    )
    assert custom.startswith(b"UNA^|.! ~UNB|UNOC^3")
    reader = read_interchange(custom)
    assert reader.delimiters == Delimiters("^", "|", ".", "!", None, "~")
    (message,) = list(reader.messages())
    assert message.plain_segments()[4].elements == [["CMR", "REF|1"]]
    assert message.plain_segments()[5].elements == ["CZ", "", "", "SHIPPER~S CO^LTD"]


def test_syntax_4_una_fifth_character_separates_repetitions() -> None:
    body = b"UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++ONE*TWO?*THREE'UNT+3+M1'"
    data = interchange(body, head=b"UNA:+.?*'", charset=b"UNOC:4").replace(b"250115", b"20250115")
    (message,) = messages(data)
    ftx = message.segments[1]
    assert ftx.segment.elements == ["AAA", "", "", "ONE"]
    assert ftx.repetitions == {3: ["ONE", "TWO*THREE"]}


def test_syntax_4_without_una_uses_the_default_repetition_separator() -> None:
    body = b"UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++ONE*TWO'UNT+3+M1'"
    data = interchange(body, head=b"", charset=b"UNOC:4").replace(b"250115", b"20250115")
    (message,) = messages(data)
    assert message.segments[1].repetitions == {3: ["ONE", "TWO"]}


def test_in_syntax_3_the_fifth_una_character_is_reserved_not_a_separator() -> None:
    body = b"UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++A*B'UNT+3+M1'"
    (message,) = messages(interchange(body, head=b"UNA:+.?*'"))
    assert message.plain_segments()[1].elements == ["AAA", "", "", "A*B"]


def test_line_breaks_between_segments_are_tolerated() -> None:
    data = interchange().replace(b"'", b"'\r\n").replace(b"?'\r\n", b"?'")
    (message,) = messages(data)
    assert [s.tag for s in message.plain_segments()] == [
        "UNH",
        "BGM",
        "DTM",
        "CNI",
        "RFF",
        "NAD",
        "GID",
        "UNT",
    ]
    assert message.findings == []


def test_unoy_text_is_decoded_as_utf8_and_offsets_stay_in_bytes() -> None:
    body = "UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++電子零件 香港'GID+1+10:CT'UNT+4+M1'".encode()
    data = interchange(body, charset=b"UNOY:4").replace(b"250115", b"20250115")
    reader = read_interchange(data)
    (message,) = list(reader.messages())
    assert message.plain_segments()[1].elements == ["AAA", "", "", "電子零件 香港"]
    gid = message.segments[2]
    assert data[gid.offset : gid.offset + 4] == b"GID+"


def test_unoc_text_is_decoded_as_latin_1() -> None:
    body = "UNH+M1+CUSCAR:D:96B:UN'NAD+CZ+++MÜLLER GMBH'UNT+3+M1'".encode("latin-1")
    (message,) = messages(interchange(body))
    assert message.plain_segments()[1].elements[3] == "MÜLLER GMBH"
    assert message.findings == []


def test_lower_case_in_unoa_is_an_invalid_character_with_its_position() -> None:
    body = b"UNH+M1+CUSCAR:D:96B:UN'NAD+CZ+++SHIPPER:Acme'UNT+3+M1'"
    (message,) = messages(interchange(body, charset=b"UNOA:3"))
    (finding,) = message.findings
    assert (finding.code, finding.segment_tag, finding.segment_position) == (21, "NAD", 2)
    assert (finding.element_position, finding.component_position) == (4, 2)
    assert "'c'" in finding.message and "UNOA" in finding.message


def test_unob_allows_lower_case() -> None:
    body = b"UNH+M1+CUSCAR:D:96B:UN'NAD+CZ+++Shipper Ltd'UNT+3+M1'"
    (message,) = messages(interchange(body, charset=b"UNOB:3"))
    assert message.findings == []


def test_bytes_that_are_not_utf8_in_unoy_are_invalid_characters() -> None:
    body = b"UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++BAD \xff BYTE'UNT+3+M1'"
    data = interchange(body, charset=b"UNOY:4").replace(b"250115", b"20250115")
    (message,) = messages(data)
    assert [(f.code, f.segment_tag, f.element_position) for f in message.findings] == [(21, "FTX", 4)]


def test_unoy_or_unow_under_syntax_3_is_refused() -> None:
    for charset in (b"UNOY:3", b"UNOW:3"):
        err = error(interchange(charset=charset))
        assert (err.code, err.segment_tag, err.element_position) == (2, "UNB", 1)
        assert "syntax version 4 only" in str(err)


def test_unknown_syntax_identifier_and_version_are_refused() -> None:
    assert error(interchange(charset=b"UNOD:3")).code == 2
    err = error(interchange(charset=b"UNOC:2"))
    assert (err.code, err.component_position) == (2, 2)


def test_the_header_can_be_read_before_the_rest() -> None:
    header = read_header(io.BytesIO(interchange(charset=b"UNOY:4").replace(b"250115", b"20250115")))
    assert (header.sender, header.sender_qualifier, header.recipient) == ("SENDERID", "ZZZ", "HKCUSTOMS")
    assert (header.syntax_identifier, header.syntax_version) == ("UNOY", 4)
    assert header.control_reference == "IC1"
    assert header.prepared == datetime(2025, 1, 15, 12, 0)
    assert header.una


def test_messages_in_functional_groups_are_read_with_their_group() -> None:
    group = (
        b"UNG+CUSCAR+SENDERID+HKCUSTOMS+250115:1200+G1+UN+D:96B'"
        + BODY
        + BODY.replace(b"M1", b"M2")
        + b"UNE+2+G1'"
    )
    reader = read_interchange(interchange(group))
    found = list(reader.messages())
    assert [m.reference for m in found] == ["M1", "M2"]
    assert found[0].group is not None and found[0].group.reference == "G1"
    assert reader.trailer is not None and reader.trailer.count == 1


def test_messages_are_read_lazily_one_at_a_time() -> None:
    pulled = []

    def chunks() -> Iterator[bytes]:
        yield interchange(trailer=b"")
        for number in range(2, 100):
            pulled.append(number)
            yield BODY.replace(b"M1", b"M%d" % number)
        yield b"UNZ+99+IC1'"

    reader = read_interchange(chunks())
    iterator = reader.messages()
    assert next(iterator).reference == "M1"
    assert next(iterator).reference == "M2"
    assert len(pulled) <= 2 and reader.trailer is None
    assert sum(1 for _ in iterator) == 97
    assert reader.trailer is not None and reader.trailer.count == 99


# --- integrity ----------------------------------------------------------------------------------------


def test_a_wrong_unt_count_rejects_that_message_only() -> None:
    bad = BODY.replace(b"UNT+8+M1", b"UNT+9+M1")
    found = messages(interchange(bad + BODY.replace(b"M1", b"M2"), count=b"2"))
    assert [(f.code, f.segment_tag, f.segment_position) for f in found[0].findings] == [(29, "UNT", 8)]
    assert found[1].findings == []


def test_a_unt_reference_that_differs_from_unh_is_reported() -> None:
    (message,) = messages(interchange(BODY.replace(b"UNT+8+M1", b"UNT+8+M9")))
    assert [(f.code, f.element_position) for f in message.findings] == [(28, 2)]


def test_a_missing_unt_is_reported_on_its_message_and_the_next_is_read() -> None:
    first = BODY.replace(b"UNT+8+M1'", b"")
    found = messages(interchange(first + BODY.replace(b"M1", b"M2"), count=b"2"))
    assert [(f.code, f.segment_tag) for f in found[0].findings] == [(13, "UNT")]
    assert found[1].reference == "M2" and found[1].findings == []


def test_a_wrong_unz_count_or_reference_rejects_the_interchange() -> None:
    err = error(interchange(count=b"2"))
    assert (err.code, err.segment_tag, err.element_position) == (29, "UNZ", 1)
    err = error(interchange(trailer=b"UNZ+1+IC2'"))
    assert (err.code, err.segment_tag, err.element_position) == (28, "UNZ", 2)


def test_a_wrong_une_count_is_reported() -> None:
    group = b"UNG+CUSCAR+S+R+250115:1200+G1+UN+D:96B'" + BODY + b"UNE+2+G1'"
    assert (error(interchange(group)).code, error(interchange(group)).segment_tag) == (29, "UNE")


def test_groups_and_loose_messages_may_not_be_mixed() -> None:
    group = b"UNG+CUSCAR+S+R+250115:1200+G1+UN+D:96B'" + BODY + b"UNE+1+G1'"
    assert error(interchange(BODY + group, count=b"2")).code == 30


def test_a_missing_unz_is_reported() -> None:
    err = error(interchange(trailer=b""))
    assert (err.code, err.segment_tag) == (13, "UNZ")


def test_a_truncated_file_is_reported_with_its_offset() -> None:
    data = interchange()
    cut = data[: data.index(b"GID+")] + b"GID+1+10:C"
    err = error(cut)
    assert err.code == 6 and err.offset == data.index(b"GID+")
    assert "truncated" in str(err)


def test_a_file_ending_inside_a_message_names_the_message() -> None:
    data = interchange()
    err = error(data[: data.index(b"GID+")])
    assert (err.code, err.segment_tag) == (13, "UNZ") and "'M1'" in err.message


def test_an_empty_file_is_reported() -> None:
    for empty in (b"", b"\r\n  \n"):
        err = error(empty)
        assert (err.code, err.segment_tag) == (13, "UNB")


def test_garbage_bytes_instead_of_an_interchange_are_reported() -> None:
    err = error(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert (err.code, err.segment_tag, err.offset) == (4, "UNB", 0)


def test_garbage_between_messages_is_an_invalid_occurrence() -> None:
    err = error(interchange(BODY + b"XX\x00\xffGARBAGE'" + BODY.replace(b"M1", b"M2"), count=b"2"))
    assert err.code == 33 and err.interchange_segment == 10


def test_garbage_inside_a_message_rejects_that_message() -> None:
    bad = BODY.replace(b"GID+1+10:CT'", b"G\x01D+1'")
    (message,) = messages(interchange(bad))
    assert {(f.code, f.segment_position) for f in message.findings} >= {(6, 7)}


def test_a_second_concatenated_interchange_is_refused() -> None:
    data = interchange()
    err = error(data + data)
    assert err.code == 33 and "second interchange" in err.message
    assert err.offset == len(data)


def test_an_interchange_without_messages_is_lower_level_empty() -> None:
    assert error(interchange(b"", count=b"0")).code == 32


def test_bad_una_service_characters_are_refused() -> None:
    assert error(interchange(head=b"UNA:+.?+'")).code == 20  # '+' twice
    assert error(interchange(head=b"UNAA+.? '")).code == 20  # a letter
    assert error(interchange(head=b"UNA:+;? '")).code == 19  # decimal mark
    assert error(interchange(head=b"UNA:+.? \xa7")).code == 20  # not ASCII


def test_a_huge_segment_rejects_its_message_in_bounded_memory_and_later_messages_are_read() -> None:
    size = 50 * 1024 * 1024
    head = interchange(b"UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++", trailer=b"")

    def chunks() -> Iterator[bytes]:
        yield head
        block = b"A" * (1024 * 1024)
        for _ in range(size // len(block)):
            yield block
        yield b"?'released'UNT+3+M1'"  # a released terminator inside the big segment is data
        yield b"UNH+M2+CUSCAR:D:96B:UN'BGM+85+DOC2+9'UNT+3+M2'UNZ+2+IC1'"

    tracemalloc.start()
    try:
        reader = read_interchange(chunks(), max_segment_length=1_000_000)
        messages = list(reader.messages())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    first, second = messages
    (finding,) = first.findings
    assert finding.code == 6 and finding.segment_tag == "FTX" and finding.segment_position == 2
    assert f"is {size + 20} bytes long, longer than the limit of 1000000 bytes" in finding.message
    assert [s.tag for s in first.segments] == ["UNH", "FTX", "UNT"]  # UNT counts it: no count fault
    assert second.findings == [] and [s.tag for s in second.segments] == ["UNH", "BGM", "UNT"]
    assert reader.trailer is not None and reader.trailer.count == 2
    assert peak < 10 * 1024 * 1024


def test_a_huge_segment_without_terminator_is_a_truncated_interchange() -> None:
    def chunks() -> Iterator[bytes]:
        yield interchange(b"UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++", trailer=b"")
        for _ in range(3):
            yield b"A" * 1000

    err = error(chunks(), max_segment_length=1000)
    assert err.code == 6 and "longer than 1000 bytes and has no segment terminator" in err.message


def test_an_oversized_interchange_header_is_refused() -> None:
    err = error(interchange(head=b"UNA:+.? 'UNB+" + b"X" * 2000 + b"'"), max_segment_length=1000)
    assert err.code == 6 and "no interchange header UNB can be read" in err.message


def test_segments_around_chunk_boundaries_and_released_terminators_are_read_alike() -> None:
    body = b"UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++IT?'S A ?'QUOTE?'??'" + b"\r\nUNT+3+M1'"
    data = interchange(body)
    whole = [(p.segment.tag, p.segment.elements, p.offset) for p in tokenize(data)]
    for size in (1, 2, 3, 7):
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        assert [(p.segment.tag, p.segment.elements, p.offset) for p in tokenize(iter(pieces))] == whole
    ftx = whole[2]
    assert ftx[1] == ["AAA", "", "", "IT'S A 'QUOTE'?"]


def test_a_large_interchange_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.edi"
    with path.open("wb") as out:
        out.write(b"UNA:+.? 'UNB+UNOC:3+S+R+250115:1200+IC1'")
        for number in range(20_000):
            out.write(BODY.replace(b"M1", b"M%d" % number))
        out.write(b"UNZ+20000+IC1'")
    tracemalloc.start()
    try:
        with path.open("rb") as source:
            reader = read_interchange(source)
            count = sum(1 for _ in reader.messages())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000 and path.stat().st_size > 2_000_000
    assert peak < 8 * 1024 * 1024


# --- writing ------------------------------------------------------------------------------------------


def test_replies_are_written_with_release_characters_and_read_back() -> None:
    body = [Segment("BGM", "962", "NO+1", "9"), Segment("FTX", "AAO", "", "", "E002: it's 5:30? no")]
    data = build_interchange(
        [build_message("R1", ("CUSRES", "D", "96B", "UN"), body)],
        sender="HKCUSTOMS",
        recipient="SENDERID",
        control_reference="C1",
        prepared=datetime(2026, 12, 1, 10, 0),
    )
    assert b"NO?+1" in data and b"IT?'S 5?:30?? NO" not in data and b"it?'s 5?:30?? no" in data
    (message,) = messages(data)
    assert message.plain_segments()[2].elements == ["AAO", "", "", "E002: it's 5:30? no"]
    assert message.findings == []


def test_syntax_4_interchanges_get_an_eight_digit_date() -> None:
    data = build_interchange(
        [build_message("1", ("CONTRL", "4", "1", "UN"), [Segment("UCI", "IC1", "S", "R", "7")])],
        sender="HKCUSTOMS",
        recipient="SENDERID",
        control_reference="C1",
        prepared=datetime(2026, 12, 1, 10, 5),
        syntax_version=4,
        charset="UNOY",
    )
    assert data.startswith(b"UNA:+.?*'UNB+UNOY:4+HKCUSTOMS+SENDERID+20261201:1005+C1'")
    assert read_header(data).prepared == datetime(2026, 12, 1, 10, 5)


def test_trailing_empty_elements_and_components_are_not_written() -> None:
    data = serialize(
        [Segment("DTM", ["137", "", ""], "", ""), Segment("TDT", "20", "", "", ["", "X", ""])], una=False
    )
    assert data == b"DTM+137'TDT+20+++:X'"


def test_text_a_unoa_reply_cannot_carry_is_fitted() -> None:
    assert (
        serialize([Segment("FTX", "AAO", "", "", "naïve")], charset="UNOA", una=False) == b"FTX+AAO+++NA.VE'"
    )
    with pytest.raises(ValueError, match="cannot be written"):
        serialize([Segment("FTX", "AAO", "", "", "香港")], charset="UNOC", una=False, fit=False)


def test_fitting_a_unoa_reply_keeps_custom_separators() -> None:
    delimiters = Delimiters("^", "|", ".", "!", None, "~")
    data = serialize([Segment("FTX", "AAO", "", "", "a|b~c")], delimiters=delimiters, charset="UNOA")
    assert data == b"UNA^|.! ~FTX|AAO|||A!|B!~C~"


def test_control_characters_never_reach_a_reply() -> None:
    assert (
        serialize([Segment("FTX", "AAO", "", "", "a\x00b\tc")], charset="UNOY", una=False)
        == b"FTX+AAO+++a.b.c'"
    )


def test_level_b_default_separators_without_una_are_understood() -> None:
    body = b"UNH\x1dM1\x1dCUSCAR\x1fD\x1f96B\x1fUN\x1cNAD\x1dCZ\x1d\x1d\x1dShipper+Co\x1cUNT\x1d3\x1dM1\x1c"
    data = b"UNB\x1dUNOB\x1f3\x1dS\x1dR\x1d250115\x1f1200\x1dIC1\x1c" + body + b"UNZ\x1d1\x1dIC1\x1c"
    reader = read_interchange(data)
    assert reader.delimiters == Delimiters.level_b()
    (message,) = list(reader.messages())
    assert message.plain_segments()[1].elements == ["CZ", "", "", "Shipper+Co"]
    assert message.findings == []


def test_bare_messages_without_envelope_can_be_tokenized() -> None:
    data = (SAMPLES / "cusres_D96B_response_ZA_sars.msg").read_bytes()
    segments = list(tokenize_segments(data))
    assert segments[0].segment.tag == "UNH" and segments[-1].segment.elements == ["21", "1"]


# --- properties ---------------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(codec="latin-1", exclude_categories=("Cc",)), max_size=12)
COMPOSITE = st.lists(TEXT, min_size=2, max_size=4)
ELEMENT = st.one_of(TEXT, COMPOSITE)
TAG = st.from_regex(r"[A-Z]{3}", fullmatch=True).filter(lambda t: not t.startswith("UN"))
SEGMENT = st.builds(lambda tag, elements: (tag, elements), TAG, st.lists(ELEMENT, min_size=1, max_size=6))
SEPARATORS = st.permutations(list(":+?'|^!~*")).map(lambda c: Delimiters(c[0], c[1], ".", c[2], c[4], c[3]))


def _normal(element: str | list[str]) -> str | list[str]:
    """What pydifact's shapes make of an element: trailing empty components dropped, lone -> str."""
    if isinstance(element, str):
        return element
    components = list(element)
    while len(components) > 1 and components[-1] == "":
        components.pop()
    return components[0] if len(components) == 1 else components


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SEGMENT, min_size=1, max_size=8), SEPARATORS, st.booleans(), st.sampled_from([3, 4]))
def test_any_segments_survive_a_round_trip_through_writer_and_reader(
    segments: list[tuple[str, list[str | list[str]]]], delimiters: Delimiters, line_breaks: bool, version: int
) -> None:
    """Syntax 4 also escapes the repetition separator; in syntax 3 that character is plain data."""
    body = [Segment(tag, *elements) for tag, elements in segments]
    data = build_interchange(
        [build_message("M1", ("CUSCAR", "D", "96B", "UN"), body)],
        sender="S",
        recipient="R",
        control_reference="C1",
        prepared=datetime(2026, 12, 1, 10, 0),
        delimiters=delimiters,
        line_breaks=line_breaks,
        syntax_version=version,
    )
    (message,) = messages(data)
    assert message.findings == []
    read = message.plain_segments()[1:-1]
    for written, got in zip(body, read, strict=True):
        expected = [_normal(e) for e in written.elements]
        while expected and expected[-1] in ("", [""]):
            expected.pop()
        assert got.tag == written.tag
        assert got.elements == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(SEGMENT, min_size=1, max_size=5), st.text(max_size=20))
def test_unicode_text_round_trips_in_unoy(
    segments: list[tuple[str, list[str | list[str]]]], free: str
) -> None:
    free = "".join(c for c in free if c.isprintable()) or "貨物 香港"
    body = [Segment(tag, *elements, free) for tag, elements in segments]
    data = build_interchange(
        [build_message("M1", ("CUSCAR", "D", "96B", "UN"), body)],
        sender="S",
        recipient="R",
        control_reference="C1",
        prepared=datetime(2026, 12, 1, 10, 0),
        syntax_version=4,
        charset="UNOY",
    )
    (message,) = messages(data)
    assert message.findings == []
    assert [s.elements[-1] for s in message.plain_segments()[1:-1]] == [free] * len(body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_the_typed_error(data: bytes) -> None:
    try:
        reader = read_interchange(data)
        for _ in reader.messages():
            pass
    except EdifactSyntaxError as err:
        assert 1 <= err.code <= 44


def _valid_position(finding: Finding) -> bool:
    """What CONTRL needs: a UNSL code, and a tag fit for 0013 (a3) when there is one."""
    return 1 <= finding.code <= 44 and (
        finding.segment_tag is None or re.fullmatch("[A-Z0-9]{3}", finding.segment_tag)
    )


UNOY_BODY = "UNH+M1+CUSCAR:D:96B:UN'FTX+AAA+++電子零件?'S'UNT+3+M1'".encode()


@settings(max_examples=500, deadline=None)
@given(st.data(), st.sampled_from(["UNOC", "UNOA", "UNOY"]))
def test_mutated_interchanges_only_ever_raise_the_typed_error(data: st.DataObject, charset: str) -> None:
    if charset == "UNOY":
        body = UNOY_BODY + UNOY_BODY.replace(b"M1", b"M2")
        start = interchange(body, charset=b"UNOY:4", count=b"2").replace(b"250115", b"20250115")
    else:
        start = interchange(BODY + BODY.replace(b"M1", b"M2"), charset=charset.encode() + b":3", count=b"2")
    original = bytearray(start)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(original) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        byte = data.draw(st.sampled_from(list("'+:?*\r\n\x00\xff\xc3AZ09 ²".encode())))
        if action == "flip":
            original[position] = byte
        elif action == "delete":
            del original[position]
        else:
            original.insert(position, byte)
    try:
        reader = read_interchange(bytes(original))
        for message in reader.messages():
            assert all(_valid_position(f) for f in message.findings)
    except EdifactSyntaxError as err:
        assert _valid_position(err.finding)


def test_a_count_in_other_digits_is_a_count_mismatch_not_a_crash() -> None:
    data = interchange(UNOY_BODY, charset=b"UNOY:4", trailer="UNZ+¹+IC1'".encode()).replace(
        b"250115", b"20250115"
    )
    assert error(data).code == 29
