from datetime import timedelta

import pytest

from gateway import parties
from gateway.context import SYSTEM
from gateway.errors import GatewayError


def test_driver_pin_works_and_three_wrong_pins_lock_the_phone_dialog(gw, clock):
    new = parties.add_party(gw, SYSTEM, "driver", "Chan Tai Man")
    assert new.pin is not None and len(new.pin) == 6
    wrong = f"{(int(new.pin) + 1) % 1_000_000:06d}"
    actor = parties.authenticate_pin(gw, new.party_id, new.pin)
    assert (actor.party_id, actor.role, actor.channel) == (new.party_id, "driver", "ivr")
    for _ in range(2):
        with pytest.raises(GatewayError, match="wrong PIN"):
            parties.authenticate_pin(gw, new.party_id, wrong)
    with pytest.raises(GatewayError, match="locked for 30 minutes"):
        parties.authenticate_pin(gw, new.party_id, wrong)
    with pytest.raises(GatewayError, match="locked") as err:
        parties.authenticate_pin(gw, new.party_id, new.pin)  # even the right PIN, while locked
    assert err.value.problems[0].code == "UNAUTHORIZED"
    clock.advance(timedelta(minutes=31))
    assert parties.authenticate_pin(gw, new.party_id, new.pin).party_id == new.party_id


def test_a_success_resets_the_count(gw):
    new = parties.add_party(gw, SYSTEM, "driver", "D")
    wrong = f"{(int(new.pin) + 1) % 1_000_000:06d}"
    for _ in range(2):
        with pytest.raises(GatewayError):
            parties.authenticate_pin(gw, new.party_id, wrong)
    parties.authenticate_pin(gw, new.party_id, new.pin)
    for _ in range(2):
        with pytest.raises(GatewayError, match="wrong PIN"):
            parties.authenticate_pin(gw, new.party_id, wrong)
    assert parties.authenticate_pin(gw, new.party_id, new.pin)


def test_parties_without_a_pin_and_unknown_ids_are_refused_alike(gw):
    forwarder = parties.add_party(gw, SYSTEM, "forwarder", "F")
    for pid in (forwarder.party_id, "99999999"):
        with pytest.raises(GatewayError, match="unknown party id or wrong PIN"):
            parties.authenticate_pin(gw, pid, "123456")
