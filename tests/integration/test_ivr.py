"""The phone dialog for drivers (design section 9), walked over HTTP as an IVR platform would, with the
generic VoiceXML walker of tests/unit/vxml_walker.py; every document is checked to be VoiceXML 2.1."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
from lxml import etree
from sqlalchemy import func, select
from starlette.testclient import TestClient

from gateway import bundles, consignments, parties, tables
from gateway.app import create_app
from gateway.context import SYSTEM, Gateway
from gateway.identifiers import damm_digit
from tests.factories import record
from tests.unit.vxml_walker import CONTENT_TYPE, VXML_NS, Walker, check_vxml

START = "/ivr/start.vxml"
BUNDLE, UNBUNDLE, HEAR, END = "1", "2", "3", "9"
LMC = "1"  # the first configured control point


@pytest.fixture
def client(gw):
    with TestClient(create_app(gw), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def walker(client):
    return Walker(client)


@pytest.fixture
def filer(party):
    return party.add(name="Forwarder")[0]


@pytest.fixture
def driver(gw):
    return parties.add_party(gw, SYSTEM, "driver", "Chan Tai Man")


def lodge(gw, filer, *refs):
    return [consignments.lodge(gw, filer, record(submitter_reference=r)).view["ccrn"] for r in refs]


def mistype(ccrn):
    return ccrn[:11] + str((int(ccrn[11]) + 1) % 10)


def login(driver):
    return [driver.party_id, driver.pin]


def as_driver(gw, driver):
    return parties.authenticate_pin(gw, driver.party_id, driver.pin)


def token_of(call):
    """The identity token the last document carries, as an IVR platform would submit it."""
    root = etree.fromstring(call.documents[-1][1])
    (var,) = root.iter(f"{{{VXML_NS}}}var")
    assert var.get("name") == "token"
    return json.loads(var.get("expr"))


def test_driver_bundles_two_ccrns_by_phone_with_a_spoken_retry_then_hears_and_unbundles(
    gw, walker, filer, driver
):
    a, _, c, d = lodge(gw, filer, "R1", "R2", "R3", "R4")
    call = walker.call(
        START,
        [*login(driver), BUNDLE, "1234#", "2122#", LMC, c, mistype(d), d, "*", END],
    )
    assert call.said("Welcome")
    assert call.said("Key the letters of the mark, two keys for each letter")
    assert call.said("Vehicle A B 1 2 3 4.")
    assert call.said("The number ending " + " ".join(c[-4:]) + " is noted. That is 1 number.")
    assert call.said("That number does not check. Please key it again.")
    assert call.said("That is 2 numbers.")
    assert call.said("Done. Vehicle A B 1 2 3 4 is bundled with 2 consignments at Lok Ma Chau.")
    assert call.said("The earliest crossing is at 10:30 AM Hong Kong time.")  # the clock says 10:00
    assert call.said("Your slot is from 10:30 AM to 10:45 AM.")
    assert call.spoken[-1] == "Goodbye." and call.ended == "exit"
    me = as_driver(gw, driver)
    view = bundles.live_bundle(gw, me, "AB1234")
    assert view is not None and view["ccrns"] == [c, d] and view["driver"] == driver.party_id
    assert consignments.get(gw, filer, c)["status"] == "BUNDLED"
    assert consignments.get(gw, filer, a)["status"] == "LODGED"
    with gw.engine.connect() as conn:
        audited = conn.execute(
            select(tables.audit_log.c.actor, tables.audit_log.c.channel).where(
                tables.audit_log.c.action == "bundle.create"
            )
        ).all()
        raw = conn.scalars(select(tables.raw_messages.c.body).where(tables.raw_messages.c.channel == "ivr"))
        kept = [json.loads(body) for body in raw]
    assert audited == [(driver.party_id, "ivr")]
    assert kept == [{"vehicle": "AB1234", "control_point": "LMC", "ccrns": [c, d]}]  # never the PIN

    heard = walker.call(START, [*login(driver), HEAR, END])
    assert heard.said(
        "Vehicle A B 1 2 3 4, at Lok Ma Chau, with 2 consignments. Earliest crossing 10:30 AM Hong Kong "
        "time. Your slot is from 10:30 AM to 10:45 AM."
    )

    kept = walker.call(START, [*login(driver), UNBUNDLE, "1", "2", END])
    assert kept.said("For A B 1 2 3 4, press 1.") and kept.said("The bundle is kept.")
    assert bundles.live_bundle(gw, me, "AB1234") is not None

    gone = walker.call(START, [*login(driver), UNBUNDLE, "1", "1", END])
    assert gone.said("The bundle of vehicle A B 1 2 3 4 is dissolved.")
    assert bundles.live_bundle(gw, me, "AB1234") is None
    assert consignments.get(gw, filer, c)["status"] == "LODGED"
    assert walker.call(START, [*login(driver), HEAR, END]).said("You have no live bundle.")


def test_a_vehicle_bundled_before_is_picked_from_a_spoken_list(gw, walker, filer, driver):
    first, second, third = lodge(gw, filer, "R1", "R2", "R3")
    me = as_driver(gw, driver)
    done = bundles.bundle(gw, me, "AB1234", "LMC", [first])
    bundles.unbundle(gw, me, done["bundle_id"])
    call = walker.call(START, [*login(driver), BUNDLE, "1", LMC, second, "*", END])
    assert call.said("For A B 1 2 3 4, press 1. For another vehicle, press 0.")
    assert bundles.live_bundle(gw, me, "AB1234")["ccrns"] == [second]
    bundles.unbundle(gw, me, bundles.live_bundle(gw, me, "AB1234")["bundle_id"])
    # keyed digits: the letters of earlier vehicles with those digits are offered
    call = walker.call(START, [*login(driver), BUNDLE, "0", "1234#", "1", LMC, third, "*", END])
    assert call.said("For A B 1 2 3 4, press 1. To key the letters, press 0.")
    assert bundles.live_bundle(gw, me, "AB1234")["ccrns"] == [third]


def test_a_ccrn_already_bundled_is_explained_and_nothing_changes(gw, walker, filer, driver, party):
    taken, free = lodge(gw, filer, "R1", "R2")
    other, _ = party.add(role="driver", name="Other Driver")
    bundles.bundle(gw, other, "CD5678", "LMC", [taken])
    call = walker.call(START, [*login(driver), BUNDLE, "1234#", "2122#", LMC, free, taken, "*", END])
    ending = " ".join(taken[-4:])
    assert call.said(f"The consignment with the number ending {ending} is already in another live bundle.")
    assert call.said("Nothing was bundled.")
    assert consignments.get(gw, filer, free)["status"] == "LODGED"
    assert bundles.live_bundle(gw, as_driver(gw, driver), "AB1234") is None
    with gw.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tables.bundles)) == 1


def test_unknown_ccrn_and_a_vehicle_with_a_live_bundle_are_explained(gw, walker, filer, driver):
    (ccrn,) = lodge(gw, filer, "R1")
    unknown = "12345678901" + str(damm_digit("12345678901"))
    call = walker.call(START, [*login(driver), BUNDLE, "1234#", "2122#", LMC, unknown, "*", END])
    assert call.said(f"There is no consignment with the number ending {' '.join(unknown[-4:])}.")
    bundles.bundle(gw, as_driver(gw, driver), "AB1234", "LMC", [ccrn])
    (another,) = lodge(gw, filer, "R2")
    call = walker.call(START, [*login(driver), BUNDLE, "1", LMC, another, "*", END])
    assert call.said("Vehicle A B 1 2 3 4 already has a live bundle. Unbundle it first.")


def test_a_full_control_point_is_spoken_as_such(gw, client, filer, driver, clock):
    small = dataclasses.replace(gw.config.control_points["LMC"], closes="10:45", slot_capacity=1)
    narrow = Gateway(gw.engine, dataclasses.replace(gw.config, control_points={"LMC": small}), clock)
    first, second = lodge(gw, filer, "R1", "R2")
    with TestClient(create_app(narrow)) as c:
        early = parties.add_party(gw, SYSTEM, "driver", "Early Bird")
        bundles.bundle(narrow, as_driver(gw, early), "XY1", "LMC", [first])
        call = Walker(c).call(START, [*login(driver), BUNDLE, "1234#", "2122#", "1", second, "*", END])
    assert call.said("Lok Ma Chau has no free slot left today.")
    assert consignments.get(gw, filer, second)["status"] == "LODGED"


def test_three_wrong_pins_lock_the_phone_dialog(gw, walker, driver, clock):
    wrong = f"{(int(driver.pin) + 1) % 1_000_000:06d}"
    call = walker.call(START, [driver.party_id, wrong, driver.party_id, wrong, driver.party_id, wrong])
    assert call.spoken.count("That party number and PIN do not match. Please try again.") == 2
    assert call.said("three wrong PINs for this party number, so the phone service is locked for it for 30")
    assert call.ended == "exit"
    again = walker.call(START, login(driver))  # even the right PIN, while locked
    assert again.said("locked") and again.ended == "exit"
    clock.advance(timedelta(minutes=31))
    assert walker.call(START, [*login(driver), END]).said("To bundle consignments with a vehicle, press 1.")


def test_three_failed_tries_end_the_call_without_locking_an_unknown_number(walker):
    call = walker.call(START, ["99999999", "000000"] * 3)
    assert call.said("Please check them and call again. Goodbye.") and call.ended == "exit"


def test_suspended_driver_is_refused_at_login_and_in_mid_call(gw, walker, client, driver):
    menu = walker.call(START, login(driver))  # the caller hangs up at the menu
    token = token_of(menu)
    parties.suspend(gw, SYSTEM, driver.party_id)
    assert walker.call(START, login(driver)).said("Your registration is suspended. Please contact customs.")
    mid_call = walker.call(f"/ivr/menu?token={token}&choice=bundle", [])
    assert mid_call.said("Your registration is suspended") and mid_call.ended == "exit"


def test_forged_and_expired_tokens_are_refused(gw, walker, driver, clock, party):
    token = token_of(walker.call(START, login(driver)))
    other, _ = party.add(role="driver", name="Someone Else")
    forged = other.party_id + token[len(driver.party_id) :]
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    for bad in (forged, "", "garbage", flipped, "١٢.٣." + "é" * 64, token.upper()):
        call = walker.call(f"/ivr/menu?token={bad}&choice=hear", [])
        assert call.said("Please identify first.") and call.ended == "exit"
    assert walker.call(f"/ivr/menu?token={token}&choice=hear", [END]).said("You have no live bundle.")
    clock.advance(timedelta(minutes=16))
    assert walker.call(f"/ivr/menu?token={token}&choice=hear", []).said("Your call has timed out.")


def test_the_signing_secret_is_made_once_and_kept_in_the_database(gw, walker, driver):
    walker.call(START, login(driver))
    with gw.engine.connect() as conn:
        (secret,) = conn.scalars(
            select(tables.settings.c.value).where(tables.settings.c.name == "ivr_secret")
        )
    assert len(bytes.fromhex(secret)) == 32
    with TestClient(create_app(gw)) as second_process:  # another process finds the same secret
        token = token_of(walker.call(START, login(driver)))
        call = Walker(second_process).call(f"/ivr/menu?token={token}&choice=hear", [END])
    assert call.said("You have no live bundle.")


@pytest.mark.parametrize(
    "step", ["start.vxml", "login", "menu", "vehicle", "ccrn", "unbundle", "nope", "a/b"]
)
def test_any_request_gets_a_valid_voicexml_document(gw, client, driver, step):
    token = token_of(Walker(client).call(START, login(driver)))
    junk = [
        {},
        {"party": "x" * 5000, "pin": "'\"<&>"},
        {"token": token, "purpose": "bundle", "digits": "12", "spelled": "9999"},
        {"token": token, "purpose": "bundle", "pick": "<IOQ>"},
        {"token": token, "vehicle": "AB1234", "control_point": "LMC", "ccrn": "1" * 12, "ccrns": "x y"},
        {"token": token, "vehicle": "AB1234", "control_point": "ZZZ", "ccrn": "*"},
        {"token": token, "bundle_id": "B0", "confirm": "yes"},
        {"token": token, "choice": "unbundle", "tries": "-1"},
    ]
    for data in junk:
        for response in (client.post(f"/ivr/{step}", data=data), client.get(f"/ivr/{step}", params=data)):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith(CONTENT_TYPE)
            assert check_vxml(response.content) == [], response.text
            assert "has a problem. Nothing was changed" not in response.text  # handled, not a crash


def test_letters_keyed_two_keys_each():
    from adapters.ivr import letters_from_keys

    assert letters_from_keys("2122") == "AB"
    assert letters_from_keys("7494") == "SZ"
    assert (
        letters_from_keys("75") is None
        and letters_from_keys("212") is None
        and letters_from_keys("14") is None
    )


def test_unbundling_a_bundle_that_is_gone_meanwhile_is_explained(gw, walker, filer, driver):
    (ccrn,) = lodge(gw, filer, "R1")
    me = as_driver(gw, driver)
    made = bundles.bundle(gw, me, "AB1234", "LMC", [ccrn])
    token = token_of(walker.call(START, login(driver)))
    bundles.unbundle(gw, me, made["bundle_id"])  # by the web or API, while the caller was deciding
    call = walker.call(f"/ivr/unbundle?token={token}&bundle_id={made['bundle_id']}&confirm=yes", [END])
    assert call.said("That bundle is no longer live.") and call.said("Nothing was changed.")
    other = walker.call(f"/ivr/unbundle?token={token}&bundle_id=B0000000000&confirm=yes", [END])
    assert other.said("You have no such bundle.")


def test_a_database_that_is_down_still_gets_a_spoken_answer(tmp_path, clock):
    from sqlalchemy import create_engine

    down = Gateway(create_engine(f"sqlite:///{tmp_path}/missing/dir/gateway.db"), clock=clock)
    with TestClient(create_app(down), raise_server_exceptions=False) as c:
        call = Walker(c).call(START, [])
    assert call.said("Sorry, the phone service has a problem. Nothing was changed. Please call again later.")
    assert call.ended == "exit"
