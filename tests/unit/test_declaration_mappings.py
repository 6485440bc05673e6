"""The prefilled declaration and its formats, without a database: the prefill from a record, XML of
schemas/declaration.xsd both ways, and CUSDEC D.96B checked against the UN directory."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from lxml import etree

from gateway import declaration_document as document
from gateway.clock import HONG_KONG
from gateway.errors import GatewayError
from mappings import declaration_xml
from mappings.edifact import structure, syntax
from mappings.edifact.cusdec import cusdec_interchange, cusdec_message
from tests.declaration_support import complete
from tests.factories import record

CCRN = "123456789018"
CROSSED = datetime(2026, 12, 1, 10, 31, tzinfo=HONG_KONG)
XSD = etree.XMLSchema(etree.parse(str(Path(declaration_xml.__file__).parents[1] / "schemas/declaration.xsd")))
CONTROL_POINTS = ["LMC", "MKT", "STK", "SBC", "HYW", "HZM"]


def prefilled(**overrides):
    data = record(**overrides)
    row = SimpleNamespace(ccrn=CCRN, version=2)
    crossing = document.CrossingFact(CROSSED, "AB1234", "LMC")
    declarant = {"party_id": "12345678", "name": "Harbour Forwarding"}
    return document.build_prefill(row, data, crossing, declarant, CROSSED)


def export_prefill():
    data = record(direction="EXPORT")
    data["consignor"], data["consignee"] = data["consignee"], data["consignor"]
    row = SimpleNamespace(ccrn=CCRN, version=1)
    return document.build_prefill(row, data, document.CrossingFact(CROSSED, None, None), None, CROSSED)


def test_the_prefill_never_invents_what_the_record_does_not_hold():
    bare = record()
    item = bare["items"][0]
    for key in ("hs_code", "gross_mass_kg", "value", "origin_country"):
        del item[key]
    del bare["consignee"]["country"]
    doc = document.build_prefill(SimpleNamespace(ccrn=CCRN, version=1), bare, None, None, CROSSED)
    assert [m["field"] for m in doc["missing_fields"]] == [
        "declarant",
        "importer.country",
        "importer.id",
        "consignee.country",
        "transport.vehicle",
        "transport.crossed_at",
        "transport.crossing_date",
        "lines[0].hs_code",
        "lines[0].quantity",
        "lines[0].gross_mass_kg",
        "lines[0].value",
        "lines[0].origin_country",
    ]
    assert doc["transport"]["control_point"] == "LMC"  # the record's own, with no crossing known
    assert all(m["supply"] for m in doc["missing_fields"])


def test_export_declarations_name_the_exporter_and_the_country_of_destination():
    doc = export_prefill()
    assert doc["exporter"]["name"] == "Harbour Traders Ltd" and "importer" not in doc
    assert doc["destination_country"] == "CN"
    assert doc["declarant"]["missing"] is True
    assert doc["transport"]["vehicle"]["missing"] is True


@pytest.mark.parametrize("make", [prefilled, export_prefill])
def test_the_prefill_and_the_completed_declaration_are_valid_xml_and_read_back_unchanged(make):
    doc = make()
    for version in (doc, complete(doc)):
        root = declaration_xml.to_element(version)
        assert XSD.validate(root), XSD.error_log
        assert declaration_xml.from_element(etree.fromstring(etree.tostring(root))) == {
            k: v for k, v in version.items() if k != "missing_fields" or v
        }
    marked = declaration_xml.to_element(doc).find(f".//{{{declaration_xml.NS}}}Quantity")
    assert marked.get("missing") == "true" and "Rec. 20" in marked.get("supply")


def test_xsd_elements_follow_the_declaration_table():
    """Every field of gateway.declaration_document.DECLARATION has its element in the XSD type, in order."""
    xs = "{http://www.w3.org/2001/XMLSchema}"
    tree = etree.parse(str(Path(declaration_xml.__file__).parents[1] / "schemas/declaration.xsd"))
    types = {t.get("name"): t for t in tree.getroot().iter(f"{xs}complexType")}

    def names(type_name):
        return [e.get("name") for e in types[type_name].iter(f"{xs}element")]

    top = [declaration_xml.element_name(n) for n in document.DECLARATION.fields]
    assert names("Declaration") == top
    line = [declaration_xml.element_name(n) for n in document.LINE.fields]
    assert names("Line") == line


def test_a_completed_declaration_passes_and_a_marker_left_is_named_with_what_to_supply():
    doc = complete(prefilled())
    checked = document.validate_declaration(doc, CONTROL_POINTS)
    assert checked["lines"][0]["hs_code"] == "95030090"
    left = copy.deepcopy(doc)
    left["lines"][0]["value"] = document.missing("the value")
    with pytest.raises(GatewayError) as exc:
        document.validate_declaration(left, CONTROL_POINTS)
    assert [(p.code, p.field, p.message) for p in exc.value.problems] == [
        ("MISSING_FIELD", "lines[0].value", "still missing: the value")
    ]
    wrong = copy.deepcopy(doc)
    wrong["transport"]["document_reference"] = "123456789000"
    wrong["kind"] = "EXPORT"
    with pytest.raises(GatewayError) as exc:
        document.validate_declaration(wrong, CONTROL_POINTS)
    assert {p.field for p in exc.value.problems} == {"transport.document_reference"}
    wrong["transport"]["document_reference"] = CCRN
    with pytest.raises(GatewayError) as exc:
        document.validate_declaration(wrong, CONTROL_POINTS)
    assert [(p.code, p.field) for p in exc.value.problems] == [
        ("MISSING_FIELD", "exporter"),
        ("INVALID_VALUE", "importer"),
        ("MISSING_FIELD", "destination_country"),
    ]


@pytest.mark.parametrize(("make", "bgm"), [(prefilled, "929"), (export_prefill, "830")])
def test_cusdec_is_valid_d96b_with_its_codes_and_lists_the_missing_fields(make, bgm):
    doc = make()
    message = cusdec_message(doc)
    assert structure.validate_message(message, "CUSDEC", check_codes=True) == []
    assert message[1].tag == "BGM" and message[1].elements[0] == bgm
    notes = [s for s in message if s.tag == "FTX" and s.elements[0] == "ACB"]
    assert len(notes) == len(doc["missing_fields"])
    filled = cusdec_message(complete(doc))
    assert structure.validate_message(filled, "CUSDEC", check_codes=True) == []
    assert not [s for s in filled if s.tag == "FTX" and s.elements[0] == "ACB"]
    tags = [s.tag for s in filled]
    assert "MOA" in tags and any(s.tag == "MEA" and s.elements[0] == "AAR" for s in filled)


def test_cusdec_interchange_carries_one_message_per_declaration():
    whole = cusdec_interchange(
        [prefilled(), export_prefill()],
        CROSSED,
        sender="HKCUSTOMS",
        recipient="FWDEDI01",
        control_reference="D1",
    )
    assert structure.validate_interchange(whole, check_codes=True) == []
    segments = [p.segment for p in syntax.tokenize(whole)]
    assert [s.elements[0] for s in segments if s.tag == "BGM"] == ["929", "830"]
    cst = [s for s in segments if s.tag == "CST"]
    assert len(cst) == 2 and cst[0].elements[0] == "1"
