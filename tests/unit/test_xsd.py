"""schemas/eci.xsd is a valid schema, says what the canonical record says, and every published example
validates against it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from lxml import etree

from adapters.xml_channel import parse_xml, schema
from gateway.errors import Problem
from gateway.identifiers import _VRN
from gateway.record import RECORD
from mappings import xml_eci
from mappings.xml_eci import ConsignmentResult, Located, element_name
from tests.factories import record

ROOT = Path(__file__).resolve().parents[2]
XSD = ROOT / "schemas" / "eci.xsd"
WSDL = ROOT / "schemas" / "cargo.wsdl"


@pytest.fixture(scope="module")
def xsd() -> xmlschema.XMLSchema10:
    return xmlschema.XMLSchema10(str(XSD))


def assert_valid(element: etree._Element) -> None:
    compiled = schema()
    assert compiled.validate(element), [str(e) for e in compiled.error_log]


def test_the_schema_loads_in_xmlschema_and_lxml(xsd):
    assert xsd.target_namespace == "urn:roadcargo:eci:1"
    for name in (
        "CargoInformation",
        "Acknowledgement",
        "GetConsignmentStatus",
        "GetConsignmentStatusResponse",
        "BundleVehicle",
        "BundleVehicleResponse",
        "GatewayFault",
    ):
        assert name in xsd.elements
    assert isinstance(etree.XMLSchema(etree.parse(str(XSD))), etree.XMLSchema)


def test_every_named_type_and_document_is_documented(xsd):
    assert [name for name, t in xsd.types.items() if t.annotation is None] == []
    assert [
        name for name, e in xsd.elements.items() if e.annotation is None and e.type.annotation is None
    ] == []


def _check_mirror(json_schema: dict[str, Any], xsd_type: Any, where: str) -> None:
    """The XSD type of a record field has the record table's shape and limits."""
    if json_schema.get("type") == "object":
        children = {e.local_name: e for e in xsd_type.content.iter_elements()}
        properties = json_schema["properties"]
        assert set(children) == {element_name(n) for n in properties}, where
        assert [e.local_name for e in xsd_type.content.iter_elements()] == [
            element_name(n) for n in properties
        ], f"{where}: the XSD sequence follows the record table's order"
        for name, sub in properties.items():
            element = children[element_name(name)]
            required = name in json_schema["required"]
            if sub.get("type") == "array":
                assert element.max_occurs == sub["maxItems"], f"{where}.{name}"
                assert element.min_occurs == (sub["minItems"] if required else 0), f"{where}.{name}"
                sub = sub["items"]
            else:
                assert element.max_occurs == 1
                assert element.min_occurs == (1 if required else 0), f"{where}.{name}"
            _check_mirror(sub, element.type, f"{where}.{name}")
        return
    if "maxLength" in json_schema:
        assert (xsd_type.min_length, xsd_type.max_length) == (
            json_schema["minLength"],
            json_schema["maxLength"],
        ), where
    if "pattern" in json_schema:
        assert xsd_type.patterns.regexps == [json_schema["pattern"].strip("^$")], where
    if "enum" in json_schema:
        assert list(xsd_type.enumeration) == json_schema["enum"], where
    if json_schema.get("type") == "integer":
        assert (xsd_type.min_value, xsd_type.max_value) == (json_schema["minimum"], json_schema["maximum"])
    if "exclusiveMinimum" in json_schema:
        assert xsd_type.min_value == json_schema["exclusiveMinimum"], where


def test_the_record_types_mirror_the_record_table_field_by_field(xsd):
    _check_mirror(RECORD.schema(), xsd.types["CargoRecord"], "record")


def test_limits_the_record_checks_in_code_are_the_schemas_too(xsd):
    assert xsd.types["VehicleRegistration"].patterns.regexps == [_VRN.pattern.strip("^$")]
    assert xsd.types["MassKg"].max_value == 10**9  # the record refuses 10^9 kg and more
    assert xsd.types["Ccrn"].patterns.regexps == ["[0-9]{12}"]


def test_the_wsdl_imports_the_schema_and_defines_no_type_of_its_own():
    wsdl = etree.parse(str(WSDL)).getroot()
    xs = "{http://www.w3.org/2001/XMLSchema}"
    (inline,) = wsdl.iter(f"{xs}schema")
    assert [etree.QName(c).localname for c in inline] == ["import"]
    assert inline[0].get("namespace") == "urn:roadcargo:eci:1"
    assert inline[0].get("schemaLocation") == "eci.xsd"


def _full_record() -> dict[str, Any]:
    data = record()
    data["items"].append(
        {"package_count": 2, "package_type": "PK", "package_description": "parcels", "description": "spares"}
    )
    data["vehicle_hint"] = "AB1234"
    data["transhipment"] = {
        "mode": "LAND_TO_AIR",
        "airport": "HKHKG",
        "air_waybill": "160-12345675",
        "flight": "CX880",
        "elock_id": "EL-77",
    }
    return data


def test_a_full_cargo_information_validates():
    doc = xml_eci.cargo_information(
        [
            xml_eci.consignment_to_xml("lodge", _full_record()),
            xml_eci.consignment_to_xml("amend", record(), ccrn="504127796023"),
            xml_eci.consignment_to_xml("cancel", ccrn="504127796023"),
        ]
    )
    assert_valid(parse_xml(xml_eci.to_bytes(doc), 10**6))


def test_a_consignment_over_the_limits_does_not_validate():
    data = record()
    data["submitter_reference"] = "R" * 36
    doc = xml_eci.cargo_information([xml_eci.consignment_to_xml("lodge", data)])
    assert not schema().validate(doc)


def test_acknowledgements_and_soap_responses_validate():
    view = {"ccrn": "504127796023", "version": 2, "status": "LODGED", "status_version": 3}
    results = [
        ConsignmentResult(1, "lodge", view={**view, "submitter_reference": "CMR-1"}, changed=True),
        ConsignmentResult(2, "amend", view={**view, "submitter_reference": "CMR-2"}, changed=False),
        ConsignmentResult(
            3,
            "lodge",
            "CMR-3",
            errors=[
                Located(
                    Problem("INVALID_VALUE", "items[0].package_count", "must be from 1 to 99999999"),
                    12,
                    "/CargoInformation/Consignment[3]/Record/Item[1]/PackageCount",
                )
            ],
        ),
    ]
    document_errors = [Located(Problem("SCHEMA_INVALID", None, "unexpected element Foo"), 4, "/x/Foo")]
    ack = xml_eci.acknowledgement(results, document_errors)
    assert_valid(ack)
    assert (ack.get("accepted"), ack.get("rejected")) == ("2", "1")
    assert_valid(xml_eci.status_response({**view, "submitter_reference": "CMR-1"}))
    assert_valid(
        xml_eci.bundle_response(
            {
                "bundle_id": "B-1",
                "vehicle": "AB1234",
                "driver": "12345678",
                "ccrns": ["504127796023"],
                "earliest_crossing": "2026-12-01T10:30:00+08:00",
                "slot": {"start": "2026-12-01T10:30:00+08:00", "end": "2026-12-01T10:45:00+08:00"},
            }
        )
    )
    assert_valid(xml_eci.gateway_fault([Located(Problem("NOT_FOUND", "ccrn", "no consignment"))]))


def readme_examples(path: Path = ROOT / "README.md") -> list[str]:
    text = path.read_text("utf-8")
    return [b for b in re.findall(r"```xml\n(.*?)```", text, re.S) if "urn:roadcargo:eci:1" in b]


def assert_example_valid(example: str) -> None:
    """A document of ours validates; in a SOAP envelope, each outermost element of ours does."""
    root = parse_xml(example.strip().encode("utf-8"), 10**6)
    ours = [
        e
        for e in root.iter()
        if isinstance(e.tag, str)
        and etree.QName(e).namespace == "urn:roadcargo:eci:1"
        and (e.getparent() is None or etree.QName(e.getparent()).namespace != "urn:roadcargo:eci:1")
    ]
    assert ours, example[:200]
    for element in ours:
        assert_valid(element)


def test_every_xml_example_in_the_docs_validates():
    """The README and docs/xml-soap.md publish examples of our documents; each must be valid."""
    examples = readme_examples() + readme_examples(ROOT / "docs" / "xml-soap.md")
    assert len(examples) >= 3, "the published XML examples are missing"
    for example in examples:
        assert_example_valid(example)
