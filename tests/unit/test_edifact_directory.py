"""The D.96B directory as read from the UN's own files (and our ISO 9735 service data)."""

from __future__ import annotations

import pytest

from mappings.edifact.directory import (
    GroupNode,
    MessageStructure,
    Representation,
    SegmentNode,
    d96b,
    syntax_error_name,
)


def group(structure: MessageStructure, number: int) -> GroupNode:
    return next(n for n in structure.walk() if isinstance(n, GroupNode) and n.number == number)


def tags(nodes: tuple[SegmentNode | GroupNode, ...]) -> list[str]:
    return [n.tag if isinstance(n, SegmentNode) else f"SG{n.number}" for n in nodes]


def test_cuscar_segment_table_is_read_with_its_nesting() -> None:
    cuscar = d96b().message("CUSCAR")
    assert (cuscar.message_type, cuscar.version, cuscar.release) == ("CUSCAR", "D", "96B")
    assert tags(cuscar.children) == [
        "UNH", "BGM", "DTM", "SG1", "SG2", "FTX", "SG4", "GIS", "SG5", "CNT", "SG7", "SG17", "UNT",
    ]  # fmt: skip
    assert tags(group(cuscar, 7).children) == ["CNI", "CNT", "SG8"]
    sg8 = group(cuscar, 8)
    assert tags(sg8.children) == [
        "RFF", "CNT", "MOA", "LOC", "GIS", "CUX", "CPI", "SG9", "SG11", "SG13", "SG14",
    ]  # fmt: skip
    goods = group(cuscar, 14)
    assert (goods.mandatory, goods.max_repeats, goods.trigger) == (True, 9999, "GID")
    assert tags(goods.children)[-2:] == ["SG15", "SG16"]
    loc = next(n for n in sg8.children if isinstance(n, SegmentNode) and n.tag == "LOC")
    assert (loc.position, loc.mandatory, loc.max_repeats) == ("0370", False, 99)


def test_every_message_lists_its_segments_in_the_directorys_order() -> None:
    for message_type in ("CUSCAR", "CUSRES", "CUSDEC", "CONTRL"):
        structure = d96b().message(message_type)
        positions = [node.position for node in structure.walk()]
        assert positions == sorted(positions), message_type
        assert positions[0] == "0010"
        first, last = structure.children[0], structure.children[-1]
        assert isinstance(first, SegmentNode) and isinstance(last, SegmentNode)
        assert (first.tag, last.tag) == ("UNH", "UNT")


def test_every_segment_of_the_messages_has_a_specification() -> None:
    directory = d96b()
    for message_type in ("CUSCAR", "CUSRES", "CUSDEC", "CONTRL"):
        for node in directory.message(message_type).walk():
            if isinstance(node, SegmentNode):
                assert directory.segment(node.tag).tag == node.tag


def test_cusres_has_the_groups_the_replies_use() -> None:
    cusres = d96b().message("CUSRES")
    assert tags(group(cusres, 3).children) == ["RFF", "DTM", "LOC"]
    assert tags(group(cusres, 6).children)[:3] == ["DOC", "PAC", "RFF"]
    assert tags(group(cusres, 12).children) == ["ERP", "RFF", "ERC", "FTX"]
    assert group(cusres, 12).max_repeats == 9999


def test_contrl_structures_follow_iso_9735() -> None:
    for version in (3, 4):
        contrl = d96b().message("CONTRL", version)
        assert tags(contrl.children) == ["UNH", "UCI", "SG1", "SG3", "UNT"]
        assert tags(group(contrl, 1).children) == ["UCM", "SG2"]
        assert tags(group(contrl, 2).children) == ["UCS", "UCD"]


def test_segment_elements_and_components_come_from_trsd() -> None:
    nad = d96b().segment("NAD")
    assert [e.tag for e in nad.elements] == [
        "3035",
        "C082",
        "C058",
        "C080",
        "C059",
        "3164",
        "3229",
        "3251",
        "3207",
    ]
    party = nad.elements[1]
    assert party.is_composite and not party.mandatory
    assert [(c.tag, c.mandatory, str(c.representation)) for c in party.components] == [
        ("3039", True, "an..35"),
        ("1131", False, "an..3"),
        ("3055", False, "an..3"),
    ]
    assert nad.elements[0].mandatory and str(nad.elements[0].representation) == "an..3"


def test_trsd_agrees_with_trcd_and_tred() -> None:
    """The three UN files describe the same elements; reading them all the same way proves the reader."""
    directory = d96b()
    checked = 0
    for message_type in ("CUSCAR", "CUSRES", "CUSDEC"):
        for node in directory.message(message_type).walk():
            if not isinstance(node, SegmentNode) or node.tag.startswith("UN"):
                continue
            for element in directory.segment(node.tag).elements:
                if element.is_composite:
                    composite = directory.composite(element.tag)
                    assert element.components == composite.components, (node.tag, element.tag)
                    for component in element.components:
                        assert component.representation == directory.element(component.tag).representation
                else:
                    assert element.representation == directory.element(element.tag).representation
                checked += 1
    assert checked > 300


def test_service_segments_differ_by_syntax_version() -> None:
    v3, v4 = d96b().segment("UNB", 3), d96b().segment("UNB", 4)
    assert str(v3.elements[3].components[0].representation) == "n6"
    assert str(v4.elements[3].components[0].representation) == "n8"
    assert [c.tag for c in v4.elements[1].components] == ["0004", "0007", "0008", "0042"]
    assert [e.tag for e in d96b().segment("UCD").elements] == ["0085", "S011"]


def test_representations_are_parsed() -> None:
    assert Representation.parse("an..35") == Representation("an", 0, 35)
    assert Representation.parse("n6") == Representation("n", 6, 6)
    assert Representation.parse("a..3") == Representation("a", 0, 3)
    with pytest.raises(ValueError):
        Representation.parse("x12")


def test_code_lists_come_from_uncl_and_unsl() -> None:
    directory = d96b()
    assert directory.code_list("1225")["9"] == "Original"
    assert directory.code_list("1225")["5"] == "Replace"
    assert directory.code_list("1001")["85"] == "Customs manifest"
    assert directory.code_list("0065")["CUSCAR"] == "Customs cargo report message"
    assert (
        directory.code_list("3055")["7"] == "CEFIC (Conseil Europeen des Federations de l'Industrie Chimique)"
    )
    assert directory.code_list("9999") == {}


def test_syntax_error_codes_have_their_unsl_names() -> None:
    codes = d96b().code_list("0085")
    assert len(codes) == 44
    assert syntax_error_name(2) == "Syntax version or level not supported"
    assert syntax_error_name(13) == "Missing"
    assert syntax_error_name(26) == "Duplicate detected"
    assert syntax_error_name(29) == "Control count does not match number of instances received"
    assert syntax_error_name(35) == "Too many segment repetitions"


def test_an_unknown_message_type_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        d96b().message("IFTMIN")
