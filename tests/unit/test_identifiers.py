import itertools
import random

import pytest

from gateway.errors import GatewayError
from gateway.identifiers import (
    container_check_digit_ok,
    damm_digit,
    format_ccrn,
    iso6346_check_digit,
    new_ccrn,
    new_party_id,
    normalise_vrn,
    parse_ccrn,
    vrn_problem,
)

SAMPLE = [new_ccrn() for _ in range(200)]


def test_new_ccrns_are_twelve_digits_that_check():
    for ccrn in SAMPLE:
        assert len(ccrn) == 12 and ccrn.isdigit()
        assert damm_digit(ccrn) == 0
        assert parse_ccrn(ccrn) == ccrn


def test_ccrns_are_not_sequential():
    bodies = sorted(int(c[:11]) for c in SAMPLE)
    gaps = {b - a for a, b in itertools.pairwise(bodies)}
    assert len(set(SAMPLE)) == len(SAMPLE)
    assert 1 not in gaps or len(gaps) > 100


def test_damm_known_value():
    # The worked example of the Damm algorithm: 572 has check digit 4.
    assert damm_digit("572") == 4
    assert damm_digit("5724") == 0


@pytest.mark.parametrize("ccrn", SAMPLE[:50])
def test_every_single_digit_error_is_caught(ccrn):
    for pos in range(12):
        for digit in "0123456789":
            if digit == ccrn[pos]:
                continue
            wrong = ccrn[:pos] + digit + ccrn[pos + 1 :]
            with pytest.raises(GatewayError) as err:
                parse_ccrn(wrong)
            assert err.value.problems[0].code == "CCRN_CHECK_DIGIT"


@pytest.mark.parametrize("ccrn", SAMPLE[:50])
def test_every_adjacent_transposition_is_caught(ccrn):
    for pos in range(11):
        a, b = ccrn[pos], ccrn[pos + 1]
        if a == b:
            continue
        swapped = ccrn[:pos] + b + a + ccrn[pos + 2 :]
        with pytest.raises(GatewayError) as err:
            parse_ccrn(swapped)
        assert err.value.problems[0].code == "CCRN_CHECK_DIGIT"


def test_ccrn_typed_with_spaces_is_accepted_and_shown_grouped():
    ccrn = SAMPLE[0]
    assert parse_ccrn(format_ccrn(ccrn)) == ccrn
    assert format_ccrn(ccrn) == f"{ccrn[:4]} {ccrn[4:8]} {ccrn[8:]}"


@pytest.mark.parametrize("bad", ["12345", "12345678901A", "1234567890123", "", "١٢٣٤٥٦٧٨٩٠١٢"])
def test_malformed_ccrn_is_invalid_value_not_a_crash(bad):
    with pytest.raises(GatewayError) as err:
        parse_ccrn(bad)
    assert err.value.problems[0].code in ("INVALID_VALUE", "MISSING_FIELD")


def test_party_ids_are_eight_digits():
    ids = {new_party_id() for _ in range(100)}
    assert all(len(i) == 8 and i.isdigit() for i in ids)
    assert len(ids) > 95


@pytest.mark.parametrize("number", ["CSQU3054383", "MSKU9070323", "BICU1234565"])
def test_iso6346_check_digits_of_real_containers(number):
    assert iso6346_check_digit(number[:10]) == int(number[10])
    assert container_check_digit_ok(number)


def test_iso6346_wrong_digit_is_caught():
    assert not container_check_digit_ok("CSQU3054384")


def test_vrn_is_normalised_and_validated():
    assert normalise_vrn(" ab 1234 ") == "AB1234"
    assert vrn_problem("ab 1234") is None
    assert vrn_problem("XY") is None
    assert "I, O or Q" in (vrn_problem("IO1234") or "")
    assert vrn_problem("ABCDEFGH9") is not None
    assert vrn_problem("  ") is not None


def test_random_digit_strings_check_one_time_in_ten():
    rng = random.Random(7)
    hits = sum(damm_digit("".join(rng.choice("0123456789") for _ in range(12))) == 0 for _ in range(5000))
    assert 350 < hits < 650
