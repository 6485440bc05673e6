"""XML <-> canonical record (mappings/xml_eci.py) and the hardened parser's refusals."""

from __future__ import annotations

import pytest
from lxml import etree

from adapters.xml_channel import MAX_DEPTH, parse_xml
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.record import validate_record
from mappings import xml_eci
from mappings.xml_eci import q
from tests.factories import record
from tests.unit.test_xsd import _full_record

NS = "urn:roadcargo:eci:1"


def test_a_full_record_round_trips_through_xml_unchanged():
    data = _full_record()
    text = xml_eci.to_bytes(xml_eci.record_to_xml(data))
    back = xml_eci.record_from_xml(parse_xml(text, 10**6))
    assert back == data
    control_points = Config().control_points
    assert validate_record(back, control_points) == validate_record(data, control_points)


def test_numbers_are_read_as_numbers_and_text_left_to_the_record_checks():
    data = record()
    element = xml_eci.record_to_xml(data)
    item = element.find(q("Item"))
    item.find(q("GrossMassKg")).text = "480.500"
    item.find(q("PackageCount")).text = " 40 "
    element.find(q("Consignor")).find(q("Name")).text = "  Shenzhen   Bright Toys  "
    back = xml_eci.record_from_xml(element)
    assert back["items"][0]["gross_mass_kg"] == 480.5
    assert back["items"][0]["package_count"] == 40
    assert validate_record(back, ["LMC"]).data["consignor"]["name"] == "Shenzhen Bright Toys"


def test_a_whole_number_of_kilograms_stays_whole():
    data = record()
    data["items"][0]["gross_mass_kg"] = 480
    element = xml_eci.record_to_xml(data)
    assert element.find(q("Item")).find(q("GrossMassKg")).text == "480"
    assert xml_eci.record_from_xml(element)["items"][0]["gross_mass_kg"] == 480


def test_lists_become_repeated_elements_in_the_tables_order():
    data = _full_record()
    data["equipment"] = [
        {"number": "CSQU3054383", "seals": ["S1", "S2"]},
        {"number": "MSKU0000004"},
    ]
    element = xml_eci.record_to_xml(data)
    names = [etree.QName(c).localname for c in element]
    assert names[:7] == [
        "Direction",
        "SubmitterReference",
        "Consignor",
        "Consignee",
        "ExpectedCrossing",
        "ControlPoint",
        "Item",
    ]
    assert names.count("Item") == 2 and names.count("Equipment") == 2
    assert [s.text for s in element.find(q("Equipment")).findall(q("Seal"))] == ["S1", "S2"]
    assert xml_eci.record_from_xml(element)["equipment"] == data["equipment"]


def test_unknown_elements_reach_the_record_checks_by_name():
    element = xml_eci.record_to_xml(record())
    etree.SubElement(element, q("Colour")).text = "red"
    with pytest.raises(GatewayError) as caught:
        validate_record(xml_eci.record_from_xml(element), ["LMC"])
    assert [(p.code, p.field) for p in caught.value.problems] == [("INVALID_VALUE", "Colour")]


def test_field_paths_and_element_paths_name_the_same_place():
    data = _full_record()
    consignment = xml_eci.consignment_to_xml("amend", data, ccrn="504127796023")
    xml_eci.cargo_information([xml_eci.consignment_to_xml("cancel", ccrn="504127796023"), consignment])
    amount = consignment.find(q("Record")).findall(q("Item"))[0].find(q("Value")).find(q("Amount"))
    assert xml_eci.field_path(amount) == "items[0].value.amount"
    assert xml_eci.xml_path(amount) == "/CargoInformation/Consignment[2]/Record/Item[1]/Value/Amount"
    second = consignment.find(q("Record")).findall(q("Item"))[1]
    assert xml_eci.field_path(second.find(q("PackageType"))) == "items[1].package_type"
    assert xml_eci.element_for_field(consignment, "items[1].package_type") is second.find(q("PackageType"))
    assert xml_eci.element_for_field(consignment, "ccrn") is consignment.find(q("Ccrn"))
    assert xml_eci.field_path(consignment.find(q("Ccrn"))) == "ccrn"
    party = consignment.find(q("Record")).find(q("Consignor"))
    assert xml_eci.child_field(party, "Address") == "consignor.address"
    # A path deeper than the document goes as far as the document does.
    assert xml_eci.element_for_field(consignment, "items[7].package_type") is consignment.find(q("Record"))


def test_the_acknowledgement_reads_back_as_plain_data():
    view = {
        "ccrn": "504127796023",
        "version": 1,
        "status": "LODGED",
        "status_version": 1,
        "submitter_reference": "CMR-1",
    }
    ack = xml_eci.acknowledgement([xml_eci.ConsignmentResult(1, "lodge", view=view, changed=True)])
    (entry,) = xml_eci.read_acknowledgement(ack)
    assert entry == {
        "index": "1",
        "action": "lodge",
        "result": "accepted",
        "SubmitterReference": "CMR-1",
        "Ccrn": "504127796023",
        "Version": "1",
        "Status": "LODGED",
        "StatusVersion": "1",
    }


# -- the hardened parser ---------------------------------------------------------------------------


def refused(data: bytes, limit: int = 10**6) -> tuple[str, str]:
    with pytest.raises(GatewayError) as caught:
        parse_xml(data, limit)
    problem = caught.value.problems[0]
    return problem.code, problem.message


def test_a_string_is_never_parsed_it_could_be_read_as_a_path():
    with pytest.raises(TypeError):
        parse_xml("/etc/passwd", 10**6)  # type: ignore[arg-type]


def test_a_dtd_is_refused_even_a_harmless_one():
    assert refused(b'<?xml version="1.0"?><!DOCTYPE a><a/>')[0] == "XML_FORBIDDEN"


def test_depth_is_bounded_below_libxml2s_own_limit():
    ok = b"<a>" * MAX_DEPTH + b"</a>" * MAX_DEPTH
    assert parse_xml(ok, 10**6).tag == "a"
    deep = b"<a>" * (MAX_DEPTH + 1) + b"</a>" * (MAX_DEPTH + 1)
    code, message = refused(deep)
    assert code == "XML_FORBIDDEN" and str(MAX_DEPTH) in message


def test_only_utf8_is_read():
    assert refused("<a>é</a>".encode("latin-1"))[0] == "MALFORMED"
    code, message = refused(b'<?xml version="1.0" encoding="ISO-8859-1"?><a/>')
    assert code == "MALFORMED" and "ISO-8859-1" in message
    assert refused("<a/>".encode("utf-16"))[0] == "MALFORMED"
    assert parse_xml(b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?><a>\xc3\xa9</a>', 100).text == "é"


def test_size_is_bounded():
    assert refused(b"<a>" + b"x" * 100 + b"</a>", limit=100)[0] == "TOO_LARGE"


def test_not_well_formed_is_malformed_with_its_line():
    code, message = refused(b"<a>\n<b></a>")
    assert code == "MALFORMED" and "line 2" in message


def test_a_bundle_request_reads_as_the_json_apis_bundle_body():
    element = parse_xml(
        f"""<BundleVehicle xmlns="{NS}"><Vehicle>AB1234</Vehicle><ControlPoint>LMC</ControlPoint>
        <Ccrn>504127796023</Ccrn><Ccrn>559660139712</Ccrn><Driver>12345678</Driver>
        <ExpectedArrival>2026-12-01T15:00:00+08:00</ExpectedArrival></BundleVehicle>""".encode(),
        10**6,
    )
    assert xml_eci.bundle_request(element) == {
        "vehicle": "AB1234",
        "control_point": "LMC",
        "ccrns": ["504127796023", "559660139712"],
        "driver": "12345678",
        "expected_arrival": "2026-12-01T15:00:00+08:00",
    }
