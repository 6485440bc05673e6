import pytest

from gateway.config import DEFAULT_CONTROL_POINTS
from gateway.errors import GatewayError
from gateway.record import record_json_schema, validate_record
from tests.factories import record

CPS = DEFAULT_CONTROL_POINTS.keys()


def problems(data):
    with pytest.raises(GatewayError) as err:
        validate_record(data, CPS)
    return {(p.code, p.field) for p in err.value.problems}


def test_a_full_record_is_accepted_and_normalised():
    data = record(vehicle_hint="ab 1234")
    data["items"][0]["hs_code"] = "9503.00"
    data["consignor"]["country"] = "cn"
    rec = validate_record(data, CPS)
    assert rec.data["vehicle_hint"] == "AB1234"
    assert rec.data["items"][0]["hs_code"] == "950300"
    assert rec.data["consignor"]["country"] == "CN"
    assert rec.direction == "IMPORT" and rec.control_point == "LMC"


def test_every_missing_required_field_is_reported_at_once():
    found = problems({"items": [{}]})
    assert {
        ("MISSING_FIELD", "direction"),
        ("MISSING_FIELD", "submitter_reference"),
        ("MISSING_FIELD", "consignor"),
        ("MISSING_FIELD", "consignee"),
        ("MISSING_FIELD", "expected_crossing"),
        ("MISSING_FIELD", "items[0].package_count"),
        ("MISSING_FIELD", "items[0].package_type"),
        ("MISSING_FIELD", "items[0].package_description"),
        ("MISSING_FIELD", "items[0].description"),
    } <= found


def test_empty_text_counts_as_missing():
    assert ("MISSING_FIELD", "consignor.name") in problems(record(consignor={"name": "  ", "address": "x"}))


def test_problems_name_the_exact_path_of_each_item():
    data = record()
    data["items"] = [dict(data["items"][0]) for _ in range(3)]
    data["items"][2]["package_count"] = 0
    data["items"][1]["gross_mass_kg"] = -5
    assert problems(data) == {
        ("INVALID_VALUE", "items[2].package_count"),
        ("INVALID_VALUE", "items[1].gross_mass_kg"),
    }


@pytest.mark.parametrize(
    ("path", "value", "code"),
    [
        ("consignor.country", "XX", "INVALID_CODE"),
        ("items.0.value.currency", "ABC", "INVALID_CODE"),
        ("items.0.origin_country", "UK", "INVALID_CODE"),
        ("items.0.package_type", "ZZZ", "INVALID_CODE"),
        ("place_of_loading", "CNSZ1", "INVALID_CODE"),
        ("place_of_discharge", "QQABC", "INVALID_CODE"),
        ("control_point", "XYZ", "INVALID_CODE"),
        ("equipment.0.number", "CSQU3054384", "CHECK_DIGIT"),
        ("equipment.0.number", "CSQ3054383", "INVALID_VALUE"),
        ("items.0.hs_code", "95030", "INVALID_VALUE"),
        ("items.0.hs_code", "9503001", "INVALID_VALUE"),
        ("items.0.package_count", 1.5, "INVALID_VALUE"),
        ("items.0.package_count", "40", "INVALID_VALUE"),
        ("items.0.package_count", True, "INVALID_VALUE"),
        ("items.0.gross_mass_kg", 0, "INVALID_VALUE"),
        ("items.0.value.amount", "-1", "INVALID_VALUE"),
        ("items.0.value.amount", 12.5, "INVALID_VALUE"),
        ("direction", "SIDEWAYS", "INVALID_VALUE"),
        ("expected_crossing", "2026-02-30", "INVALID_VALUE"),
        ("expected_crossing", "2026-12-02T10:00:00", "INVALID_VALUE"),
        ("expected_crossing", "next tuesday", "INVALID_VALUE"),
        ("submitter_reference", "R" * 36, "INVALID_VALUE"),
        ("consignor.name", "N" * 71, "INVALID_VALUE"),
        ("consignor.address", "A" * 141, "INVALID_VALUE"),
        ("items.0.description", "D" * 351, "INVALID_VALUE"),
        ("items.0.package_description", "P" * 36, "INVALID_VALUE"),
        ("consignee.name", "bell\x07", "INVALID_VALUE"),
        ("vehicle_hint", "IO 123", "INVALID_VALUE"),
        ("consignee", "Harbour Traders", "INVALID_VALUE"),
        ("items", {"package_count": 1}, "INVALID_VALUE"),
    ],
)
def test_each_rule_has_its_code_and_path(path, value, code):
    data = record()
    target = data
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    target[parts[-1]] = value
    field = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".")
    assert problems(data) == {(code, field)}


def test_unknown_fields_are_refused_by_name():
    data = record(colour="red")
    data["items"][0]["weight"] = 3
    assert problems(data) == {("INVALID_VALUE", "colour"), ("INVALID_VALUE", "items[0].weight")}


def test_items_one_to_999():
    assert ("MISSING_FIELD", "items") in problems(record(items=[]))
    item = record()["items"][0]
    assert ("INVALID_VALUE", "items") in problems(record(items=[item] * 1000))
    assert len(validate_record(record(items=[item] * 999), CPS).data["items"]) == 999


def test_transhipment_mode_must_match_direction():
    ok = validate_record(record(transhipment={"mode": "LAND_TO_AIR", "air_waybill": "160-12345675"}), CPS)
    assert ok.data["transhipment"]["airport"] == "HKHKG"
    assert problems(record(transhipment={"mode": "AIR_TO_LAND"})) == {("INVALID_VALUE", "transhipment.mode")}


def test_a_record_that_is_not_an_object_is_refused():
    assert problems([1, 2]) == {("INVALID_VALUE", None)}


def test_bare_date_is_the_whole_hong_kong_day():
    start, end = validate_record(record(expected_crossing="2026-12-02"), CPS).crossing_window()
    assert start.isoformat() == "2026-12-02T00:00:00+08:00"
    assert (end - start).total_seconds() == 86400


def test_content_hash_ignores_key_order_and_normalisation():
    a = validate_record(record(), CPS)
    data = record()
    data["consignor"]["country"] = "cn"
    b = validate_record(dict(reversed(list(data.items()))), CPS)
    assert a.content_hash() == b.content_hash()


def test_json_schema_is_derived_from_the_same_table():
    schema = record_json_schema()
    assert set(schema["required"]) == {
        "direction",
        "submitter_reference",
        "consignor",
        "consignee",
        "expected_crossing",
        "items",
    }
    item = schema["properties"]["items"]["items"]
    assert item["properties"]["package_count"]["minimum"] == 1
    assert item["additionalProperties"] is False
