"""The phone dialog of a real ``roadcargo serve`` process, walked over real HTTP as an IVR platform
would: a forwarder lodges by API, a driver registered by the CLI bundles by phone and unbundles."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import httpx

from gateway.clock import HONG_KONG
from tests.factories import record
from tests.unit.vxml_walker import Walker


def _spoken_time(iso: str, now: datetime) -> str:
    moment = datetime.fromisoformat(iso).astimezone(HONG_KONG)
    said = f"{moment.hour % 12 or 12}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"
    return said if moment.date() == now.date() else said + " "


def test_driver_bundles_and_unbundles_by_phone_against_a_served_gateway(gateway_server):
    forwarder = gateway_server.add_party("forwarder", "Forwarder")
    driver = gateway_server.add_party("driver", "Chan Tai Man")
    assert re.fullmatch(r"[0-9]{6}", driver["pin"])
    tomorrow = (datetime.now(HONG_KONG) + timedelta(days=1)).date().isoformat()
    with httpx.Client(base_url=gateway_server.url, timeout=10) as client:
        auth = {"Authorization": f"Bearer {forwarder['api_key']}"}
        ccrns = []
        for ref in ("P1", "P2"):
            r = client.post(
                "/api/v1/consignments",
                json=record(submitter_reference=ref, expected_crossing=tomorrow),
                headers=auth,
            )
            assert r.status_code == 201, r.text
            ccrns.append(r.json()["ccrn"])
        mistyped = ccrns[1][:11] + str((int(ccrns[1][11]) + 1) % 10)
        login = [driver["party_id"], driver["pin"]]
        walker = Walker(client)
        call = walker.call(
            "/ivr/start.vxml", [*login, "1", "88#", "2122#", "1", ccrns[0], mistyped, ccrns[1], "*", "9"]
        )
        assert call.said("That number does not check. Please key it again.")
        assert call.said("Done. Vehicle A B 8 8 is bundled with 2 consignments at Lok Ma Chau.")
        seen = client.get(f"/api/v1/consignments/{ccrns[0]}", headers=auth).json()
        assert seen["status"] == "BUNDLED" and seen["bundle"]["vehicle"] == "AB88"
        now = datetime.now(HONG_KONG)
        earliest = _spoken_time(seen["bundle"]["earliest_crossing"], now)
        assert call.said(f"The earliest crossing is at {earliest}".rstrip())
        assert call.said(f"Your slot is from {_spoken_time(seen['bundle']['slot']['start'], now)}".rstrip())

        gone = walker.call("/ivr/start.vxml", [*login, "2", "1", "1", "9"])
        assert gone.said("The bundle of vehicle A B 8 8 is dissolved.") and gone.ended == "exit"
        assert client.get(f"/api/v1/consignments/{ccrns[0]}", headers=auth).json()["status"] == "LODGED"
        assert len(call.documents) > 8 and len(gone.documents) >= 4  # every one checked by the walker
