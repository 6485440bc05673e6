"""The CUSCAR mapping, segment by segment: one test per row of the segment-to-field table in
mappings/edifact/cuscar.py, on messages read by pydifact's own parser."""

from __future__ import annotations

import pytest
from pydifact.parser import Parser

from gateway.config import Config
from gateway.record import validate_record
from mappings.edifact.cuscar import Consignment, CuscarReader, edifact_datetime, join_text

# pydifact's own parser warns that it has no service segment definitions: not what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore::pydifact.exceptions.MissingImplementationWarning")

HEADER = [
    "UNH+1+CUSCAR:D:96B:UN",
    "BGM+85+MAN0001+9",
    "DTM+137:202612011000:203",
    "TDT+20++3+++++AB1234",
    "LOC+41+LMC",
    "DTM+132:20261202:102",
    "GIS+23",
    "EQD+CN+CSQU3054383",
    "SEL+SEAL0001",
]
CONSIGNMENT = [
    "CNI+1+CMR-2026-0001",
    "RFF+CMR:CMR-2026-0001",
    "LOC+9+CNSZX",
    "LOC+11+HKHKG",
    "LOC+27+CN",
    "NAD+CZ+BRN123++SHENZHEN BRIGHT TOYS MANUFACTURING:CO LTD+18 INDUSTRIAL AVENUE:BAO'AN DISTRICT"
    "+SHENZHEN++518000+CN",
    "NAD+CN+++HARBOUR TRADERS LTD+2 HARBOUR ROAD, WAN CHAI+HONG KONG+++HK",
    "GID+1+40:CT::6:CARTONS",
    "FTX+AAA+++PLASTIC TOY BUILDING BLOCKS",
    "MEA+AAE+G+KGM:480.5",
    "MOA+40:12500.00:HKD",
    "SGP+CSQU3054383+40",
    "PCI+24+BT/HK 1-40",
    "CST++950300",
]


def read(segments: list[str]) -> list[Consignment]:
    text = "".join(s.replace("BAO'AN", "BAO?'AN") + "'" for s in segments)
    reader = CuscarReader()
    out = []
    for position, segment in enumerate(Parser().parse(text), start=1):
        done = reader.feed(position, segment)
        if done is not None:
            out.append(done)
    last = reader.close()
    if last is not None:
        out.append(last)
    return out


def one(header: list[str] = HEADER, consignment: list[str] = CONSIGNMENT) -> Consignment:
    (c,) = read([*header, *consignment, "UNT+99+1"])
    return c


def record(header: list[str] = HEADER, consignment: list[str] = CONSIGNMENT) -> dict:
    c = one(header, consignment)
    assert c.submission is not None, c.problems
    return dict(c.submission.record)


def replace(lines: list[str], prefix: str, new: str | None) -> list[str]:
    out = [new if line.startswith(prefix) else line for line in lines]
    return [line for line in out if line is not None]


def test_the_whole_message_maps_to_a_valid_record():
    data = record()
    validated = validate_record(data, Config().control_points)
    assert validated.submitter_reference == "CMR-2026-0001"


def test_bgm_document_number_is_read_for_the_cusres():
    reader = CuscarReader()
    for position, segment in enumerate(Parser().parse("UNH+1+CUSCAR:D:96B:UN'BGM+85+MAN0001+9'"), 1):
        reader.feed(position, segment)
    assert reader.doc_number == "MAN0001"


@pytest.mark.parametrize(("function", "action"), [("9", "lodge"), ("5", "amend"), ("1", "cancel")])
def test_bgm_message_function_chooses_the_action(function, action):
    header = replace(HEADER, "BGM", f"BGM+85+MAN0001+{function}")
    consignment = replace(CONSIGNMENT, "RFF", "RFF+XC:123456789018") if action != "lodge" else CONSIGNMENT
    c = one(header, consignment)
    assert c.submission is not None and c.submission.action == action


def test_bgm_unsupported_function_is_an_error_of_each_consignment():
    c = one(replace(HEADER, "BGM", "BGM+85+MAN0001+2"))
    assert c.submission is None
    assert [p.code for p in c.problems] == ["INVALID_CODE"]
    assert "1225" in c.problems[0].message


def test_sg4_tdt_main_carriage_gives_the_vehicle_hint():
    assert record()["vehicle_hint"] == "AB1234"
    assert "vehicle_hint" not in record(replace(HEADER, "TDT", "TDT+10++3+++++AB1234"))


@pytest.mark.parametrize(
    ("loc", "dtm", "gis", "direction"), [("41", "132", "23", "IMPORT"), ("42", "133", "22", "EXPORT")]
)
def test_sg4_loc_and_dtm_and_gis_give_control_point_crossing_and_direction(loc, dtm, gis, direction):
    header = replace(HEADER, "LOC+41", f"LOC+{loc}+MKT")
    header = replace(header, "DTM+132", f"DTM+{dtm}:20261203:102")
    header = replace(header, "GIS", f"GIS+{gis}")
    data = record(header)
    assert (data["control_point"], data["expected_crossing"], data["direction"]) == (
        "MKT",
        "2026-12-03",
        direction,
    )


def test_sg4_dtm_formats_203_and_303():
    assert record(replace(HEADER, "DTM+132", "DTM+132:202612021430:203"))["expected_crossing"] == (
        "2026-12-02T14:30:00+08:00"
    )
    assert edifact_datetime("202612021430+01", "303") == "2026-12-02T14:30:00+01:00"
    assert edifact_datetime("202612021430UTC", "303") == "2026-12-02T14:30:00+00:00"
    assert edifact_datetime("2026120", "102") == "2026120"  # left for validation to refuse


def test_sg5_eqd_and_sel_give_equipment_and_seals():
    assert record()["equipment"] == [{"number": "CSQU3054383", "seals": ["SEAL0001"]}]


def test_sg5_sel_issued_by_customs_is_the_elock_of_a_transhipment():
    header = [*HEADER, "SEL+ELOCK77+CU"]
    consignment = [
        *CONSIGNMENT[:5],
        "GIS+28",
        "TDT+30+CX123+4",
        "LOC+8+HKHKG",
        "RFF+AWB:160-12345675",
        *CONSIGNMENT[5:],
    ]
    data = record(header, consignment)
    assert data["transhipment"] == {
        "mode": "LAND_TO_AIR",
        "flight": "CX123",
        "airport": "HKHKG",
        "air_waybill": "160-12345675",
        "elock_id": "ELOCK77",
    }
    assert data["equipment"] == [{"number": "CSQU3054383", "seals": ["SEAL0001"]}]
    validate_record(data, Config().control_points)


def test_sg9_tdt_10_is_air_to_land():
    consignment = [*CONSIGNMENT[:5], "GIS+28", "TDT+10+CX124+4", "LOC+9+HKHKG", *CONSIGNMENT[5:]]
    assert record(consignment=consignment)["transhipment"]["mode"] == "AIR_TO_LAND"


def test_sg7_cni_reference_is_the_submitter_reference():
    assert record()["submitter_reference"] == "CMR-2026-0001"
    c = one(consignment=replace(CONSIGNMENT, "CNI", "CNI+7+CMR-9"))
    assert (c.sequence, c.reference) == ("7", "CMR-9")
    assert [p.field for p in c.problems] == ["submitter_reference"]  # differs from RFF+CMR


def test_sg8_rff_cmr_alone_gives_the_reference():
    data = record(consignment=replace(CONSIGNMENT, "CNI", "CNI+1"))
    assert data["submitter_reference"] == "CMR-2026-0001"


def test_sg8_rff_xc_carries_the_ccrn_for_amend_and_cancel():
    header = replace(HEADER, "BGM", "BGM+85+MAN0001+5")
    c = one(header, replace(CONSIGNMENT, "RFF", "RFF+XC:123456789018"))
    assert c.submission is not None and c.submission.ccrn == "123456789018"
    missing = one(header)
    assert missing.submission is None
    assert [(p.code, p.field) for p in missing.problems] == [("MISSING_FIELD", "ccrn")]


def test_sg8_rff_other_qualifier_is_refused():
    c = one(consignment=replace(CONSIGNMENT, "RFF", "RFF+BM:X1"))
    assert [p.code for p in c.problems] == ["INVALID_CODE"]


def test_sg8_loc_9_11_27_give_places_and_origin():
    data = record()
    assert (data["place_of_loading"], data["place_of_discharge"]) == ("CNSZX", "HKHKG")
    assert data["items"][0]["origin_country"] == "CN"


def test_sg8_gis_direction_overrides_the_message():
    consignment = [*CONSIGNMENT[:5], "GIS+22", *CONSIGNMENT[5:]]
    assert record(consignment=consignment)["direction"] == "EXPORT"


def test_sg11_nad_cz_and_cn_give_consignor_and_consignee():
    data = record()
    assert data["consignor"] == {
        "id": "BRN123",
        "name": "SHENZHEN BRIGHT TOYS MANUFACTURING CO LTD",
        "address": "18 INDUSTRIAL AVENUE BAO'AN DISTRICT",
        "city": "SHENZHEN",
        "postcode": "518000",
        "country": "CN",
    }
    assert data["consignee"] == {
        "name": "HARBOUR TRADERS LTD",
        "address": "2 HARBOUR ROAD, WAN CHAI",
        "city": "HONG KONG",
        "country": "HK",
    }


def test_sg11_nad_unstructured_name_and_address():
    consignment = replace(CONSIGNMENT, "NAD+CN", "NAD+CN++HARBOUR TRADERS LTD:2 HARBOUR ROAD:WAN CHAI")
    assert record(consignment=consignment)["consignee"] == {
        "name": "HARBOUR TRADERS LTD",
        "address": "2 HARBOUR ROAD WAN CHAI",
    }


def test_sg14_gid_gives_packages_type_and_package_description():
    item = record()["items"][0]
    assert (item["package_count"], item["package_type"], item["package_description"]) == (40, "CT", "CARTONS")


def test_sg14_gid_unreadable_count_is_left_for_validation_to_name():
    data = record(consignment=replace(CONSIGNMENT, "GID", "GID+1+4X:CT::6:CARTONS"))
    with pytest.raises(Exception) as raised:
        validate_record(data, Config().control_points)
    assert [p.field for p in raised.value.problems] == ["items[0].package_count"]


def test_sg14_ftx_aaa_gives_the_description_joined_over_components():
    long = "A" * 70
    consignment = replace(CONSIGNMENT, "FTX", f"FTX+AAA+++{long}:BCD:EFG")
    assert record(consignment=consignment)["items"][0]["description"] == long + "BCD EFG"


def test_sg14_mea_gives_gross_mass_in_kilograms():
    assert record()["items"][0]["gross_mass_kg"] == 480.5
    consignment = replace(CONSIGNMENT, "MEA", "MEA+AAE+G+TNE:2")
    assert record(consignment=consignment)["items"][0]["gross_mass_kg"] == 2000


def test_sg14_moa_40_gives_the_customs_value():
    assert record()["items"][0]["value"] == {"amount": "12500.00", "currency": "HKD"}


def test_sg14_sgp_selects_the_consignment_equipment():
    header = [*HEADER, "EQD+CN+TGHU9876547"]
    assert [e["number"] for e in record(header)["equipment"]] == ["CSQU3054383"]
    no_sgp = [line for line in CONSIGNMENT if not line.startswith("SGP")]
    assert [e["number"] for e in record(header, no_sgp)["equipment"]] == ["CSQU3054383", "TGHU9876547"]


def test_sg14_pci_gives_the_marks():
    assert record()["items"][0]["marks"] == "BT/HK 1-40"


def test_sg14_cst_gives_the_hs_code():
    assert record()["items"][0]["hs_code"] == "950300"


def test_several_goods_items_and_consignments():
    second_item = ["GID+2+5:PK::6:PACKAGES", "FTX+AAA+++SPARE PARTS"]
    second = replace(replace(CONSIGNMENT, "CNI", "CNI+2+CMR-2"), "RFF", "RFF+CMR:CMR-2")
    found = read([*HEADER, *CONSIGNMENT, *second_item, *second, "UNT+99+1"])
    assert [c.reference for c in found] == ["CMR-2026-0001", "CMR-2"]
    items = found[0].submission.record["items"]
    assert [i["package_type"] for i in items] == ["CT", "PK"]
    assert items[1]["origin_country"] == "CN"


def test_error_points_name_the_segment_a_field_came_from():
    c = one()
    gid = 10 + CONSIGNMENT.index("GID+1+40:CT::6:CARTONS")
    assert c.error_point("items[0].package_count") == ("GID", gid)
    assert c.error_point("items[0].hs_code")[0] == "CST"
    assert c.error_point("consignor.name")[0] == "NAD"
    assert c.error_point("expected_crossing") == ("DTM", 6)
    assert c.error_point(None) == ("CNI", 10)


def test_join_text_puts_spaces_back_only_between_short_parts():
    assert join_text(["ABC", "DEF"], 35) == "ABC DEF"
    assert join_text(["A" * 35, "BC"], 35) == "A" * 35 + "BC"
