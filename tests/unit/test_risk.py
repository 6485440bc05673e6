"""Risk profiling rules (design section 7): every operator, every derived field, targets over profiles,
the HMAC draw and its rate."""

import hashlib
import hmac
import math
from datetime import datetime, timedelta

import pytest

from gateway.clock import HONG_KONG
from gateway.errors import GatewayError
from gateway.risk import Rules, Subject, Target, draw, evaluate, value_per_kg
from gateway.risk_admin import parse_profile
from tests.factories import record

SECRET = b"0123456789abcdef0123456789abcdef"
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=HONG_KONG)


def subject(data=None, **kw):
    return Subject("123456789012", 1, data or record(), "11111111", **kw)


def profile(*conditions, weight=100, pid=1):
    name, weight, parsed = parse_profile(
        {"name": f"p{pid}", "weight": weight, "conditions": list(conditions)}
    )
    from gateway.risk import Profile

    return Profile(pid, name, 1, weight, parsed)


def hits(condition, subj=None):
    return profile(condition).hits(subj or subject())


def rules(*profiles, targets=(), threshold=100, rate=0.0):
    return Rules(tuple(profiles), tuple(targets), threshold, rate, SECRET)


# -- operators -----------------------------------------------------------------------------------------


def test_prefix_hits_an_hs_code_of_any_item():
    data = record()
    data["items"].append({**data["items"][0], "hs_code": "24022000"})
    assert hits({"field": "items.hs_code", "op": "prefix", "values": ["2402"]}, subject(data))
    assert not hits({"field": "items.hs_code", "op": "prefix", "values": ["2402"]})


def test_in_matches_one_of_the_values_whatever_the_case():
    assert hits({"field": "items.origin_country", "op": "in", "values": ["KP", "cn"]})
    assert not hits({"field": "items.origin_country", "op": "in", "values": ["KP", "IR"]})


def test_contains_any_matches_whole_words_case_insensitively():
    cond = {"field": "items.description", "op": "contains_any", "values": ["TOY", "cigarettes"]}
    assert hits(cond)  # "plastic toy building blocks"
    assert not hits({"field": "items.description", "op": "contains_any", "values": ["bloc"]})
    assert hits({"field": "items.description", "op": "contains_any", "values": ["Building Blocks"]})


def test_lt_and_gt_compare_numbers_including_decimal_strings():
    assert hits({"field": "items.gross_mass_kg", "op": "lt", "values": [500]})
    assert not hits({"field": "items.gross_mass_kg", "op": "lt", "values": [480.5]})
    assert hits({"field": "items.value.amount", "op": "gt", "values": [12000]})
    assert not hits({"field": "items.value.amount", "op": "gt", "values": [12500]})


def test_eq_compares_text_numbers_and_truth_values():
    assert hits({"field": "consignor.country", "op": "eq", "values": ["cn"]})
    assert hits({"field": "items.package_count", "op": "eq", "values": [40]})
    assert not hits({"field": "items.package_count", "op": "eq", "values": [41]})
    assert hits({"field": "first_time_filer", "op": "eq", "values": [True]}, subject(first_time_filer=True))
    assert not hits(
        {"field": "first_time_filer", "op": "eq", "values": [True]}, subject(first_time_filer=False)
    )


def test_a_profile_hits_only_when_all_its_conditions_hold():
    both = profile(
        {"field": "consignor.name", "op": "prefix", "values": ["Shenzhen"]},
        {"field": "items.hs_code", "op": "prefix", "values": ["2402"]},
    )
    assert not both.hits(subject())


# -- derived fields ------------------------------------------------------------------------------------


def test_value_per_kg_is_value_over_mass_in_one_currency():
    assert value_per_kg(record()) == pytest.approx(12500 / 480.5)
    assert hits({"field": "value_per_kg", "op": "gt", "values": [20]})
    mixed = record()
    mixed["items"].append({**mixed["items"][0], "value": {"amount": "1", "currency": "USD"}})
    assert value_per_kg(mixed) is None
    assert not hits({"field": "value_per_kg", "op": "gt", "values": [0]}, subject(mixed))


def test_first_time_filer_is_a_truth_value():
    cond = {"field": "first_time_filer", "op": "eq", "values": [True]}
    assert hits(cond, subject(first_time_filer=True))
    assert not hits(cond, subject())


def test_hours_from_amendment_to_crossing():
    cond = {"field": "hours_from_amendment_to_crossing", "op": "lt", "values": [2]}
    assert hits(cond, subject(amended_at=NOW, crossing_at=NOW + timedelta(minutes=90)))
    assert not hits(cond, subject(amended_at=NOW, crossing_at=NOW + timedelta(hours=30)))
    assert not hits(cond, subject())  # unknown crossing: no value, no hit


def test_vehicle_is_the_bundled_vehicle():
    cond = {"field": "vehicle", "op": "in", "values": ["AB1234"]}
    assert hits(cond, subject(vehicle="AB1234"))
    assert not hits(cond, subject(vehicle="XY1"))
    assert not hits(cond, subject())


def test_offences_last_90_days():
    cond = {"field": "offences_last_90_days", "op": "gt", "values": [1]}
    assert hits(cond, subject(offences=2))
    assert not hits(cond, subject(offences=1))


# -- profiles as officers write them -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"name": "x", "weight": 1, "conditions": [{"field": "items.nope", "op": "eq", "values": [1]}]},
            "conditions[0].field",
        ),
        (
            {"name": "x", "weight": 1, "conditions": [{"field": "items", "op": "eq", "values": [1]}]},
            "conditions[0].field",
        ),
        (
            {"name": "x", "weight": 1, "conditions": [{"field": "vehicle", "op": "like", "values": ["a"]}]},
            "conditions[0].op",
        ),
        (
            {
                "name": "x",
                "weight": 1,
                "conditions": [{"field": "value_per_kg", "op": "lt", "values": ["a"]}],
            },
            "conditions[0].values",
        ),
        (
            {"name": "x", "weight": 1, "conditions": [{"field": "vehicle", "op": "eq", "values": [1, 2]}]},
            "conditions[0].values",
        ),
        ({"name": "x", "weight": 1, "conditions": []}, "conditions"),
        (
            {"name": "", "weight": 1, "conditions": [{"field": "vehicle", "op": "eq", "values": ["A"]}]},
            "name",
        ),
        (
            {"name": "x", "weight": "1", "conditions": [{"field": "vehicle", "op": "eq", "values": ["A"]}]},
            "weight",
        ),
    ],
)
def test_a_bad_profile_is_refused_naming_the_field(body, field):
    with pytest.raises(GatewayError) as err:
        parse_profile(body)
    assert field in [p.field for p in err.value.problems]


# -- selection: score, targets, draw --------------------------------------------------------------------

TOBACCO = {"field": "items.hs_code", "op": "prefix", "values": ["9503"]}


def test_score_reaching_the_threshold_selects():
    result = evaluate(subject(), rules(profile(TOBACCO, weight=60), profile(TOBACCO, weight=40, pid=2)))
    assert result.score == 100 and result.selected and result.why == ("SCORE",)
    assert [h["profile_id"] for h in result.hits] == [1, 2]
    assert not evaluate(subject(), rules(profile(TOBACCO, weight=99))).selected


def test_an_inspect_target_selects_without_any_profile():
    target = Target(7, "VEHICLE", "AB1234", "INSPECT", None, "intelligence")
    result = evaluate(subject(vehicle="AB1234"), rules(targets=[target]))
    assert result.selected and result.why == ("TARGET 7",)
    assert not evaluate(subject(vehicle="CD1"), rules(targets=[target])).selected


def test_a_release_target_overrides_the_profile_it_names():
    p = profile(TOBACCO, weight=150)
    release = Target(8, "PARTY", "11111111", "RELEASE", 1, "trusted trader")
    result = evaluate(subject(), rules(p, targets=[release]))
    assert not result.selected and result.score == 0 and result.hits[0]["released"]
    other = Target(9, "PARTY", "11111111", "RELEASE", 99, "another profile")
    assert evaluate(subject(), rules(p, targets=[other])).selected


def test_a_release_target_without_profile_releases_from_score_and_draw_but_not_inspect_targets():
    release = Target(8, "CCRN", "123456789012", "RELEASE", None, "checked at origin")
    result = evaluate(subject(), rules(profile(TOBACCO, weight=500), targets=[release], rate=1.0))
    assert not result.selected
    inspect = Target(9, "CCRN", "123456789012", "INSPECT", None, "tip-off")
    assert evaluate(subject(), rules(targets=[release, inspect])).why == ("TARGET 9",)


def test_the_draw_is_the_hmac_of_ccrn_and_version():
    digest = hmac.new(SECRET, b"123456789012:1", hashlib.sha256).digest()
    assert draw(SECRET, "123456789012", 1) == int.from_bytes(digest[:8], "big") / 2**64
    assert draw(SECRET, "123456789012", 1) != draw(SECRET, "123456789012", 2)
    assert draw(SECRET, "123456789012", 1) != draw(b"another secret of some length", "123456789012", 1)
    assert 0 <= draw(SECRET, "123456789012", 1) < 1


def test_the_random_rate_holds_over_ten_thousand_draws():
    rate = 0.02
    n = 10_000
    picked = sum(
        evaluate(Subject(f"{i:012d}", 1, record(), "11111111"), rules(rate=rate)).selected for i in range(n)
    )
    # Binomial(10000, 0.02): mean 200, sd 14; 4.5 sd either side fails a correct draw once in 150,000 runs.
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(picked - n * rate) < 4.5 * sd, picked


def test_a_selection_by_draw_is_replayed_from_the_recorded_draw():
    found = next(
        s
        for s in (Subject(f"{i:012d}", 1, record(), "11111111") for i in range(1000))
        if evaluate(s, rules(rate=0.02)).selected
    )
    first = evaluate(found, rules(rate=0.02))
    assert first.why == ("RANDOM",) and first.draw < 0.02
    again = evaluate(found, rules(rate=0.02))
    assert again == first
