"""The web portal (design section 9) on SQLite and PostgreSQL, through its forms as a browser posts them:
login and sessions, CSRF, lodging with errors next to their fields, other filers' CCRNs, escaping,
registration, bundling, the barcode and the kiosk display."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from sqlalchemy import func, select
from starlette.testclient import TestClient

from adapters.portal import forms
from adapters.portal.barcode import PATTERNS, STOP
from gateway import clearance, consignments, tables
from gateway.app import create_app
from gateway.context import Gateway
from gateway.identifiers import damm_digit, format_ccrn
from tests.border_support import border
from tests.factories import Parties, record

PORTAL = Path(__file__).parents[2] / "adapters" / "portal"


class Browser:
    """A TestClient that keeps cookies and reads the CSRF token off the last page, as a browser would."""

    def __init__(self, gw: Gateway) -> None:
        self.client = TestClient(create_app(gw), follow_redirects=False)
        self.csrf = ""

    def get(self, url: str, **kw: Any) -> Any:
        response = self.client.get(url, **kw)
        found = re.search(r'name="csrf" value="([^"]+)"', response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, url: str, data: dict[str, Any], csrf: str | None = None, **kw: Any) -> Any:
        token = self.csrf if csrf is None else csrf
        body = {**data, "csrf": token} if token != "" else dict(data)
        return self.client.post(url, data=body, **kw)

    def login(self, party_id: str, secret: str) -> Any:
        self.get("/login")
        return self.post("/login", {"party_id": party_id, "secret": secret, "next": "/"})


def form_of(data: dict[str, Any]) -> dict[str, str]:
    return dict(forms.from_record(data).values)


def count(gw: Gateway, table: Any) -> int:
    with gw.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


@pytest.fixture
def filer(gw: Gateway, party: Parties) -> tuple[Browser, str]:
    actor, key = party.add(role="forwarder", name="ACME Freight")
    browser = Browser(gw)
    assert browser.login(str(actor.party_id), key).status_code == 303
    return browser, str(actor.party_id)


def lodge_form(browser: Browser, data: dict[str, Any]) -> Any:
    browser.get("/consignments/new")
    return browser.post("/consignments/new", {**form_of(data), "_action": "submit"})


def test_login_with_the_api_key_sets_a_safe_session_cookie_and_logout_ends_it(gw, party):
    actor, key = party.add(role="forwarder", name="ACME Freight")
    browser = Browser(gw)
    assert browser.get("/consignments").headers["location"].startswith("/login?next=")
    response = browser.login(str(actor.party_id), key)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "rcg_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain http here; over https the cookie is Secure (next test)
    assert browser.get("/consignments").status_code == 200
    assert browser.post("/logout", {}).headers["location"] == "/login"
    assert browser.get("/consignments").status_code == 303
    with gw.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(tables.portal_sessions)) == 0


def test_the_session_cookie_is_secure_over_https(gw, party):
    actor, key = party.add(role="forwarder", name="ACME Freight")
    client = TestClient(create_app(gw), base_url="https://portal.example", follow_redirects=False)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)  # type: ignore[union-attr]
    response = client.post("/login", data={"csrf": token, "party_id": actor.party_id, "secret": key})
    assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]


def test_a_wrong_key_or_another_partys_key_is_refused_alike(gw, party):
    actor, _key = party.add(role="forwarder", name="ACME Freight")
    _other, other_key = party.add(role="forwarder", name="Other")
    browser = Browser(gw)
    for secret in ("rcg_wrong", other_key, "not my password"):
        response = browser.login(str(actor.party_id), secret)
        assert response.status_code == 401
        assert "Unknown party id, or wrong key or password." in response.text


def test_a_party_sets_a_password_and_logs_in_with_it(gw, party):
    actor, key = party.add(role="forwarder", name="ACME Freight")
    party_id = str(actor.party_id)
    browser = Browser(gw)
    browser.login(party_id, key)
    browser.get("/account")
    unproven = browser.post(
        "/account/password", {"current": "rcg_guess", "password": "x" * 12, "confirm": "x" * 12}
    )
    assert unproven.status_code == 422 and "not your API key or present password" in unproven.text
    short = browser.post("/account/password", {"current": key, "password": "short", "confirm": "short"})
    assert short.status_code == 422 and "at least 10 characters" in short.text
    done = browser.post(
        "/account/password",
        {"current": key, "password": "correct horse battery", "confirm": "correct horse battery"},
    )
    assert done.status_code == 200 and "Your password is set." in done.text
    with gw.engine.connect() as conn:
        stored = conn.execute(select(tables.portal_passwords)).one()
    assert "correct horse" not in stored.password_hash and len(stored.salt) == 32
    fresh = Browser(gw)
    assert fresh.login(party_id, "correct horse battery").status_code == 303
    assert fresh.login(party_id, "correct horse batterY").status_code == 401


def test_five_wrong_passwords_lock_password_logins_for_fifteen_minutes(gw, party, clock):
    actor, key = party.add(role="forwarder", name="ACME Freight")
    party_id = str(actor.party_id)
    browser = Browser(gw)
    browser.login(party_id, key)
    browser.get("/account")
    new = {"current": key, "password": "correct horse battery", "confirm": "correct horse battery"}
    assert "Your password is set." in browser.post("/account/password", new).text
    guesser = Browser(gw)
    for _ in range(5):
        assert guesser.login(party_id, "wrong guess 123").status_code == 401
    locked = guesser.login(party_id, "correct horse battery")
    assert locked.status_code == 401 and "Unknown party id, or wrong key or password." in locked.text
    clock.advance(timedelta(minutes=16))
    assert guesser.login(party_id, "correct horse battery").status_code == 303


@pytest.mark.parametrize("token", ["", "forged-token"])
def test_a_post_without_the_csrf_token_or_with_a_wrong_one_is_refused(gw, filer, token):
    browser, _party_id = filer
    browser.get("/consignments/new")
    response = browser.post("/consignments/new", {**form_of(record()), "_action": "submit"}, csrf=token)
    assert response.status_code == 403
    assert "did not come from this site" in response.text
    assert count(gw, tables.consignments) == 0
    anonymous = Browser(gw)
    anonymous.get("/apply")
    refused = anonymous.post(
        "/apply", {"role": "driver", "name": "X", "contact": "x@example.com"}, csrf=token
    )
    assert refused.status_code == 403 and count(gw, tables.registration_applications) == 0


def test_a_csrf_token_of_another_session_is_refused(gw, party, filer):
    browser, _ = filer
    actor, key = party.add(role="forwarder", name="Other")
    other = Browser(gw)
    other.login(str(actor.party_id), key)
    other.get("/consignments/new")
    browser.get("/consignments/new")
    stolen = browser.post("/consignments/new", {**form_of(record()), "_action": "submit"}, csrf=other.csrf)
    assert stolen.status_code == 403 and count(gw, tables.consignments) == 0


def test_lodging_through_the_form_gets_a_ccrn_shown_large_with_its_barcode(gw, filer):
    browser, party_id = filer
    response = lodge_form(browser, record())
    assert response.status_code == 303
    ccrn = response.headers["location"].split("/")[2].split("?")[0]
    assert len(ccrn) == 12 and damm_digit(ccrn) == 0
    page = browser.get(response.headers["location"])
    assert page.status_code == 200
    assert f'id="ccrn" aria-describedby="ccrn-label">{format_ccrn(ccrn)}</h1>' in page.text
    assert "<svg" in page.text and "Lodged. Hand this CCRN to the driver." in page.text
    view = consignments.list_consignments(gw, _officer(gw))[0]
    assert view["ccrn"] == ccrn and view["submitter_reference"] == "CMR-2026-0001"
    stored = consignments.get(gw, _officer(gw), ccrn)
    assert stored["record"] == consignments.get(gw, _officer(gw), ccrn)["record"]
    assert stored["record"]["equipment"] == [{"number": "CSQU3054383", "seals": ["SEAL0001"]}]
    assert stored["record"]["items"][0]["gross_mass_kg"] == 480.5
    assert stored["filer"] == party_id
    with gw.engine.connect() as conn:  # the form as posted was kept before it was processed
        raw = conn.execute(select(tables.raw_messages)).one()
    assert raw.channel == "portal" and b"consignor.name=" in raw.body


def _officer(gw: Gateway) -> Any:
    from gateway.context import Actor

    return Actor("00000000", "officer", "portal")


def test_the_servers_errors_are_shown_next_to_their_fields(gw, filer):
    browser, _ = filer
    data = record()
    data["items"].append(dict(data["items"][0], package_count="many", package_type="ZZZ"))
    data["equipment"][0]["number"] = "CSQU3054384"
    data["consignee"] = {"address": "2 Harbour Road"}
    data["expected_crossing"] = "2027-06-01"
    response = lodge_form(browser, data)
    assert response.status_code == 422
    page = response.text

    def errors_of(field_id: str) -> str:
        found = re.search(rf'<ul class="field-errors" id="{field_id}-err">(.*?)</ul>', page, re.S)
        assert found, f"no errors next to {field_id}"
        return html.unescape(found.group(1))

    assert "the ISO 6346 check digit is wrong" in errors_of("f-equipment-0-number")
    assert "must be a whole number" in errors_of("f-items-1-package_count")
    assert "is not a UN/ECE Recommendation 21 package type code" in errors_of("f-items-1-package_type")
    assert "is required" in errors_of("f-consignee-name")
    assert 'aria-invalid="true"' in page
    # Above the form, each problem links to its input.
    assert '<a href="#f-equipment-0-number">Container 1: Container number: CSQU3054384: the ISO 6346' in page
    assert '<a href="#f-consignee-name">Consignee: Name: is required</a>' in page
    assert 'value="CSQU3054384"' in page  # what was typed is kept
    assert count(gw, tables.consignments) == 0
    # The lodgement window is checked after the record's own rules: it shows up once those are right.
    window = lodge_form(browser, record(expected_crossing="2027-06-01"))
    assert "more than 14 days ahead" in html.unescape(window.text)


def test_goods_item_and_container_rows_are_added_and_removed_without_javascript(gw, filer):
    browser, _ = filer
    browser.get("/consignments/new")
    values = form_of(record())
    added = browser.post("/consignments/new", {**values, "_action": "add_item"})
    assert added.status_code == 200 and 'name="items[1].package_count"' in added.text
    assert (
        'value="plastic toy building blocks"'
        not in added.text.split('name="items[1].package_count"')[1][:300]
    )
    resized = browser.post(
        "/consignments/new", {**values, "_action": "rows", "item_count": "3", "equipment_count": "2"}
    )
    assert 'name="items[2].description"' in resized.text and 'name="equipment[1].number"' in resized.text
    two = dict(values)
    two.update(
        {
            f"items[1].{k}": v
            for k, v in form_of(record(items=[dict(record()["items"][0], description="second")])).items()
            if k.startswith("items[0].")
            for k in [k.replace("items[0].", "")]
        }
    )
    removed = browser.post("/consignments/new", {**two, "_action": "remove_items:0"})
    assert "second" in removed.text and "plastic toy building blocks" not in removed.text
    assert 'name="items[1].package_count"' not in removed.text
    # Rows with gaps in their numbering (removed in the browser) are lodged in order.
    gapped = {k.replace("items[0].", "items[5]."): v for k, v in values.items()}
    response = browser.post("/consignments/new", {**gapped, "_action": "submit"})
    assert response.status_code == 303


def test_another_filers_ccrn_in_the_url_is_a_404_page_like_an_unknown_one(gw, party, filer):
    browser, _ = filer
    other, _key = party.add(role="forwarder", name="Other Freight")
    theirs = consignments.lodge(gw, other, record()).view["ccrn"]
    for url in (
        f"/consignments/{theirs}",
        f"/consignments/{theirs}/amend",
        f"/consignments/{theirs}/cancel",
        f"/consignments/{theirs}/barcode.svg",
    ):
        response = browser.get(url)
        assert response.status_code == 404, url
        assert "Not found" in response.text and "Road Cargo Gateway" in response.text
    browser.get("/consignments")
    assert browser.post(f"/consignments/{theirs}/cancel", {}).status_code == 404
    assert consignments.get(gw, other, theirs)["status"] == "LODGED"
    wrong_digit = theirs[:-1] + str((int(theirs[-1]) + 1) % 10)
    refused = browser.get(f"/consignments/{wrong_digit}")
    assert refused.status_code == 422 and "wrong check digit" in refused.text


PAYLOAD = '"><script>alert(1)</script>'
SHORT = "<i>x</i>"  # for fields of 9 characters or fewer


def test_xss_payloads_in_every_text_field_are_rendered_escaped(gw, filer):
    browser, _ = filer
    data = record(submitter_reference="R" + PAYLOAD)
    for who in ("consignor", "consignee"):
        data[who].update(name=PAYLOAD, address=PAYLOAD, city=PAYLOAD, postcode=SHORT, id=PAYLOAD)
    data["items"][0].update(package_description=PAYLOAD, description=PAYLOAD, marks=PAYLOAD)
    data["equipment"][0]["seals"] = [PAYLOAD]
    data["transhipment"] = {
        "mode": "LAND_TO_AIR",
        "air_waybill": PAYLOAD,
        "flight": SHORT,
        "elock_id": PAYLOAD,
    }
    response = lodge_form(browser, data)
    assert response.status_code == 303, response.text
    ccrn = response.headers["location"].split("/")[2].split("?")[0]
    pages = [
        browser.get(f"/consignments/{ccrn}").text,
        browser.get(f"/consignments/{ccrn}/amend").text,
        browser.get(f"/consignments/{ccrn}/cancel").text,
        browser.get("/consignments").text,
    ]
    # The same payloads refused by validation are shown escaped in the form again.
    bad = dict(
        data,
        direction=PAYLOAD,
        expected_crossing=PAYLOAD,
        control_point=PAYLOAD,
        vehicle_hint=PAYLOAD,
        place_of_loading=PAYLOAD,
    )
    bad["items"] = [
        dict(
            data["items"][0],
            package_type=PAYLOAD,
            hs_code=PAYLOAD,
            origin_country=PAYLOAD,
            package_count=PAYLOAD,
            gross_mass_kg=PAYLOAD,
            value={"amount": PAYLOAD, "currency": PAYLOAD},
        )
    ]
    bad["equipment"] = [{"number": PAYLOAD}]
    refused = lodge_form(browser, bad)
    assert refused.status_code == 422
    pages.append(refused.text)
    for page in pages:
        assert "<script>" not in page and SHORT not in page
        assert "&lt;script&gt;" in page or "&#34;&gt;&lt;script&gt;" in page
    assert pages[0].count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10


def test_amend_prefills_the_form_and_saves_a_new_version(gw, filer):
    browser, _ = filer
    ccrn = lodge_form(browser, record()).headers["location"].split("/")[2].split("?")[0]
    form_page = browser.get(f"/consignments/{ccrn}/amend")
    assert 'value="Harbour Traders Ltd"' in form_page.text and 'value="CSQU3054383"' in form_page.text
    data = record()
    data["items"][0]["description"] = "wooden toy trains"
    response = browser.post(f"/consignments/{ccrn}/amend", {**form_of(data), "_action": "submit"})
    assert response.headers["location"] == f"/consignments/{ccrn}?amended=1"
    page = browser.get(response.headers["location"]).text
    assert "wooden toy trains" in page and "Amendment saved." in page
    assert consignments.get(gw, _officer(gw), ccrn)["version"] == 2


def test_cancel_asks_for_confirmation_first(gw, filer):
    browser, _ = filer
    ccrn = lodge_form(browser, record()).headers["location"].split("/")[2].split("?")[0]
    confirm = browser.get(f"/consignments/{ccrn}/cancel")
    assert "cannot be undone" in confirm.text
    assert consignments.get(gw, _officer(gw), ccrn)["status"] == "LODGED"
    assert browser.post(f"/consignments/{ccrn}/cancel", {}).status_code == 303
    page = browser.get(f"/consignments/{ccrn}").text
    assert "Cancelled" in page and f"/consignments/{ccrn}/amend" not in page


def test_the_list_searches_by_reference_and_status(gw, filer):
    browser, _ = filer
    lodge_form(browser, record(submitter_reference="FIRST-1"))
    second = (
        lodge_form(browser, record(submitter_reference="SECOND-2")).headers["location"].split("/")[2][:12]
    )
    browser.get(f"/consignments/{second}/cancel")
    browser.post(f"/consignments/{second}/cancel", {})
    assert "FIRST-1" in browser.get("/consignments?reference=FIRST-1").text
    assert "SECOND-2" not in browser.get("/consignments?reference=FIRST-1").text
    cancelled = browser.get("/consignments?status=CANCELLED").text
    assert "SECOND-2" in cancelled and "FIRST-1" not in cancelled


def decode_barcode(svg: str) -> str:
    """Read the bars of our SVG back into digits: widths in modules, symbols, check symbol, set C."""
    root = etree.fromstring(svg.encode())
    ns = {"s": "http://www.w3.org/2000/svg"}
    bars = [(float(r.get("x")), float(r.get("width"))) for r in root.findall("s:g/s:rect", ns)]
    module = min(w for _x, w in bars)
    runs: list[int] = []
    for i, (x, width) in enumerate(bars):
        if i:
            previous_end = bars[i - 1][0] + bars[i - 1][1]
            runs.append(round((x - previous_end) / module))
        runs.append(round(width / module))
    text = "".join(str(r) for r in runs)
    assert text.endswith(STOP)
    symbols = [PATTERNS.index(text[i : i + 6]) for i in range(0, len(text) - len(STOP), 6)]
    start, *data, check = symbols
    assert start == 105  # Start C
    assert check == (start + sum(i * v for i, v in enumerate(data, start=1))) % 103
    return "".join(f"{v:02d}" for v in data)


def test_the_barcode_svg_decodes_back_to_the_ccrn(gw, filer):
    browser, _ = filer
    ccrn = lodge_form(browser, record()).headers["location"].split("/")[2].split("?")[0]
    response = browser.get(f"/consignments/{ccrn}/barcode.svg")
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert decode_barcode(response.text) == ccrn
    inline = re.search(r"<svg.*?</svg>", browser.get(f"/consignments/{ccrn}").text, re.S)
    assert inline and decode_barcode(inline.group(0)) == ccrn


def test_anyone_applies_and_an_officer_approves_and_hands_over_the_key(gw, party):
    anyone = Browser(gw)
    anyone.get("/apply")
    missing = anyone.post("/apply", {"role": "officer", "name": "", "contact": "x"})
    assert (
        missing.status_code == 422
        and "cannot be applied for" in missing.text
        and "is required" in missing.text
    )
    done = anyone.post("/apply", {"role": "driver", "name": "Chan Tai Man", "contact": "+852 5555 0000"})
    assert done.status_code == 200
    number = re.search(r"application number is (\d+)", done.text).group(1)  # type: ignore[union-attr]
    api = anyone.client.post(
        "/api/v1/registrations", json={"role": "shipper", "name": "Small Shipper Ltd", "contact": "a@b.hk"}
    )
    assert api.status_code == 201 and api.json()["status"] == "PENDING"
    assert anyone.client.post("/api/v1/registrations", json={"role": "kiosk"}).status_code == 422

    officer, key = party.add(role="officer", name="Officer")
    desk = Browser(gw)
    desk.login(str(officer.party_id), key)
    queue = desk.get("/officer/applications")
    assert "Chan Tai Man" in queue.text and "Small Shipper Ltd" in queue.text
    approved = desk.post(f"/officer/applications/{number}/approve", {})
    assert approved.status_code == 200
    party_id = re.search(r'id="new-party-id">(\d{8})<', approved.text).group(1)  # type: ignore[union-attr]
    api_key = html.unescape(re.search(r'id="new-api-key">([^<]+)<', approved.text).group(1))  # type: ignore[union-attr]
    assert re.search(r'id="new-pin">\d{6}<', approved.text)  # a driver gets a phone PIN too
    again = desk.post(f"/officer/applications/{number}/approve", {})
    assert again.status_code == 409 and "already APPROVED" in again.text
    driver = Browser(gw)
    assert driver.login(party_id, api_key).status_code == 303
    assert driver.get("/bundles").status_code == 200
    rejected = desk.post(
        f"/officer/applications/{api.json()['application_id']}/reject", {"reason": "unknown firm"}
    )
    assert rejected.status_code == 303
    assert "unknown firm" in desk.get("/officer/applications?status=REJECTED").text
    assert driver.get("/officer/applications").status_code == 403


def test_an_officer_registers_suspends_reinstates_and_revokes_keys(gw, party):
    officer, key = party.add(role="officer", name="Officer")
    desk = Browser(gw)
    desk.login(str(officer.party_id), key)
    desk.get("/officer/parties")
    issued = desk.post(
        "/officer/parties", {"role": "forwarder", "name": "New Freight", "edi_id": "NEWFREIGHT"}
    )
    party_id = re.search(r'id="new-party-id">(\d{8})<', issued.text).group(1)  # type: ignore[union-attr]
    api_key = html.unescape(re.search(r'id="new-api-key">([^<]+)<', issued.text).group(1))  # type: ignore[union-attr]
    bad = desk.post("/officer/parties", {"role": "kiosk", "name": "Kiosk"})
    assert bad.status_code == 422 and "a kiosk is bound to a control point" in bad.text
    desk.get(f"/officer/parties/{party_id}")
    desk.post(f"/officer/parties/{party_id}/suspend", {})
    assert "Suspended" in desk.get(f"/officer/parties/{party_id}").text
    filer = Browser(gw)
    filer.login(party_id, api_key)
    refused = lodge_form(filer, record())
    assert refused.status_code == 422 and "is suspended" in refused.text
    desk.post(f"/officer/parties/{party_id}/reinstate", {})
    assert lodge_form(filer, record()).status_code == 303
    page = desk.get(f"/officer/parties/{party_id}").text
    key_id = re.search(r'name="key_id" value="(\d+)"', page).group(1)  # type: ignore[union-attr]
    desk.post(f"/officer/parties/{party_id}/revoke", {"key_id": key_id})
    assert Browser(gw).login(party_id, api_key).status_code == 401


def test_a_driver_bundles_pasted_ccrns_and_sees_the_slot_and_then_the_kiosk_decision(gw, party):
    b = border(gw, party)
    first, second = b.lodge(), b.lodge()
    driver = Browser(gw)
    driver.login(str(b.driver.party_id), b.driver_key)
    driver.get("/bundles")
    typo = first[:-1] + str((int(first[-1]) + 1) % 10)
    refused = driver.post(
        "/bundles", {"vehicle": "AB1234", "control_point": "LMC", "ccrns": f"{format_ccrn(second)}\n{typo}"}
    )
    assert refused.status_code == 422 and "wrong check digit" in refused.text
    made = driver.post(
        "/bundles", {"vehicle": "ab 1234", "control_point": "LMC", "ccrns": f"{format_ccrn(first)}, {second}"}
    )
    assert made.status_code == 303
    page = driver.get(made.headers["location"]).text
    assert "AB1234" in page and "Earliest crossing" in page and "2026-12-01 10:30" in page
    assert consignments.get(gw, b.filer, first)["status"] == "BUNDLED"
    b.wait_lead_time()
    decision = clearance.decide(gw, b.kiosk, b.arrive())
    assert decision["decision"] == "RELEASE"
    page = driver.get("/bundles").text
    assert "Kiosk decision" in page and "RELEASE" in page


def test_a_driver_unbundles(gw, party):
    b = border(gw, party)
    ccrn = b.lodge()
    driver = Browser(gw)
    driver.login(str(b.driver.party_id), b.driver_key)
    driver.get("/bundles")
    driver.post("/bundles", {"vehicle": "AB1234", "control_point": "LMC", "ccrns": ccrn})
    page = driver.get("/bundles").text
    bundle_id = re.search(r'action="/bundles/(B\d+)/unbundle"', page).group(1)  # type: ignore[union-attr]
    assert driver.post(f"/bundles/{bundle_id}/unbundle", {}).status_code == 303
    assert consignments.get(gw, b.filer, ccrn)["status"] == "LODGED"
    assert "Unbundled" in driver.get("/bundles").text


def test_the_kiosk_display_waits_then_shows_the_decision_in_words_and_an_icon(gw, party):
    b = border(gw, party)
    assert Browser(gw).get("/kiosk/LMC/1").headers["location"].startswith("/login")  # not public
    screen = Browser(gw)
    screen.login(str(b.kiosk.party_id), b.kiosk_key)
    assert screen.get("/kiosk/MKT/1").status_code == 404  # a kiosk shows its own control point only
    waiting = screen.get("/kiosk/LMC/1")
    assert waiting.status_code == 200 and "Waiting for the next vehicle" in waiting.text
    assert '<meta http-equiv="refresh" content="5">' in waiting.text
    ccrn = b.lodge()
    b.bundle([ccrn])
    early = clearance.decide(gw, b.kiosk, b.arrive())
    assert early["decision"] == "NOT_READY"
    shown = screen.get("/kiosk/LMC/1").text
    assert (
        "kiosk-NOT_READY" in shown
        and "NOT READY" in shown
        and "icon-NOT_READY" in shown
        and "AB1234" in shown
    )
    assert "Come back at" in shown
    b.wait_lead_time()
    clearance.decide(gw, b.kiosk, b.arrive())
    released = screen.get("/kiosk/LMC/1").text
    assert "kiosk-RELEASE" in released and "RELEASE" in released and "icon-RELEASE" in released
    assert "Waiting" in screen.get("/kiosk/LMC/2").text
    assert screen.get("/kiosk/XXX/1").status_code == 404
    assert (
        'href="/kiosk/LMC/8"' in screen.get("/kiosk").text and "/kiosk/MKT/" not in screen.get("/kiosk").text
    )
    assert screen.get("/kiosk/LMC/99").status_code == 404


def test_pages_switch_to_traditional_chinese(gw, filer):
    browser, _ = filer
    browser.get("/lang/zh-Hant?next=/consignments/new")
    page = browser.get("/consignments/new").text
    assert "遞交貨物資料" in page and 'lang="zh-Hant-HK"' in page and "發貨人" in page
    assert browser.get("/lang/en?next=https://evil.example").headers["location"] == "/"


def test_both_catalogues_hold_every_message_the_pages_use():
    english = json.loads((PORTAL / "i18n" / "en.json").read_text("utf-8"))
    chinese = json.loads((PORTAL / "i18n" / "zh-Hant.json").read_text("utf-8"))
    assert set(english) == set(chinese)
    assert all(chinese[k].strip() for k in chinese)
    sources = [p.read_text("utf-8") for p in (PORTAL / "templates").glob("*.html")]
    sources += [p.read_text("utf-8") for p in PORTAL.glob("*.py")]
    used = {
        k
        for text in sources
        for k in re.findall(r"""\bt\(\s*['"]([a-z][a-zA-Z0-9_.-]*[a-zA-Z0-9_])['"]\s*[,)]""", text)
    }
    assert used and used <= set(english), sorted(used - set(english))


def test_upload_an_xml_file_and_see_the_acknowledgement(gw, filer):
    from mappings import xml_eci
    from mappings.xml_eci import consignment_to_xml

    browser, _ = filer
    document = xml_eci.to_bytes(
        xml_eci.cargo_information([consignment_to_xml("lodge", record())]), pretty=True
    )
    browser.get("/upload")
    response = browser.client.post(
        "/upload", data={"csrf": browser.csrf}, files={"file": ("d1.xml", document, "application/xml")}
    )
    assert response.status_code == 200
    assert "d1.xml.ack.xml" in response.text and "Acknowledgement" in response.text
    assert count(gw, tables.consignments) == 1
    junk = browser.client.post(
        "/upload", data={"csrf": browser.csrf}, files={"file": ("x.txt", b"hello", "text/plain")}
    )
    assert junk.status_code == 422 and "neither EDIFACT" in junk.text


def test_every_portal_route_stays_off_the_reserved_prefixes(gw):
    app = create_app(gw)
    from adapters import portal

    reserved = ("/soap", "/ivr", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
    for route in portal.router.routes:
        path = getattr(route, "path", "")
        assert not path.startswith(reserved), path
        assert not path.startswith("/api/") or path == "/api/v1/registrations", path
    assert app.url_path_for("apply_api") == "/api/v1/registrations"


def officer_desk(gw: Gateway, party: Parties) -> Browser:
    officer, key = party.add(role="officer", name="Officer")
    desk = Browser(gw)
    desk.login(str(officer.party_id), key)
    return desk


def test_an_officer_dry_runs_a_profile_then_creates_changes_and_retires_it(gw, party):
    b = border(gw, party)
    tobacco = record()
    tobacco["items"][0].update(hs_code="240220", description="cigarettes")
    b.lodge(items=tobacco["items"])
    b.lodge()
    desk = officer_desk(gw, party)
    desk.get("/officer/profiles")
    form = {
        "name": "tobacco",
        "weight": "100",
        "conditions[0].field": "items.hs_code",
        "conditions[0].op": "prefix",
        "conditions[0].values": "2402, 2403",
    }
    dry = desk.post("/officer/profiles", {**form, "_action": "dry_run"})
    assert dry.status_code == 200 and "1 live consignment(s) hit; 1 would be selected." in dry.text
    assert "Yes, newly" in dry.text
    with gw.engine.connect() as conn:
        assert (
            conn.scalar(select(func.count()).select_from(tables.risk_profiles)) == 0
        )  # a dry run saves nothing
    bad = desk.post(
        "/officer/profiles",
        {
            **form,
            "conditions[0].op": "",
            "conditions[1].field": "colour",
            "conditions[1].op": "eq",
            "conditions[1].values": "red",
            "_action": "save",
        },
    )
    assert bad.status_code == 422
    assert "is not one of prefix" in html.unescape(
        bad.text
    ) and "is not a field of the cargo record" in html.unescape(bad.text)
    saved = desk.post("/officer/profiles", {**form, "_action": "save"})
    assert saved.status_code == 303
    page = desk.get(saved.headers["location"]).text
    assert "Saved; 1 live consignment(s) profiled again." in page and 'value="2402, 2403"' in page
    profile_id = saved.headers["location"].split("/")[3].split("?")[0]
    changed = desk.post(f"/officer/profiles/{profile_id}", {**form, "weight": "150", "_action": "save"})
    assert changed.status_code == 303 and "Version 2" in desk.get(changed.headers["location"]).text
    desk.post(f"/officer/profiles/{profile_id}/retire", {})
    assert "Version 3, Retired." in desk.get(f"/officer/profiles/{profile_id}").text
    assert "tobacco" not in desk.get("/officer/profiles").text.split("<h2>")[0]


def test_an_officer_adds_and_revokes_a_target(gw, party):
    desk = officer_desk(gw, party)
    desk.get("/officer/targets")
    refused = desk.post(
        "/officer/targets",
        {
            "kind": "VEHICLE",
            "value": "AB1234",
            "action": "INSPECT",
            "reason": "",
            "expires_at": "2026-12-31T23:59:00+08:00",
        },
    )
    assert refused.status_code == 422 and "say why" in refused.text
    done = desk.post(
        "/officer/targets",
        {
            "kind": "VEHICLE",
            "value": "ab 1234",
            "action": "INSPECT",
            "reason": "tip-off",
            "expires_at": "2026-12-31T23:59:00+08:00",
        },
    )
    assert done.status_code == 303
    page = desk.get("/officer/targets").text
    assert "AB1234" in page and "tip-off" in page
    target_id = re.search(r'action="/officer/targets/(\d+)/revoke"', page).group(1)  # type: ignore[union-attr]
    desk.post(f"/officer/targets/{target_id}/revoke", {})
    assert "No live targets." in desk.get("/officer/targets").text


def test_contingency_is_switched_per_control_point_and_shown_on_the_kiosk_display(gw, party):
    desk = officer_desk(gw, party)
    desk.get("/officer/control-points")
    desk.post("/officer/control-points/MKT/contingency", {"active": "on"})
    assert "End contingency at MKT" in desk.get("/officer/control-points").text
    screen = desk  # officers may open any lane's display
    assert "CONTINGENCY" in screen.get("/kiosk/MKT/1").text
    assert "Waiting" in screen.get("/kiosk/LMC/1").text
    desk.get("/officer/control-points")
    desk.post("/officer/control-points/MKT/contingency", {"active": "off"})
    assert "Waiting" in screen.get("/kiosk/MKT/1").text


def chart_values(page: str, chart_id: str) -> dict[str, int]:
    svg = re.search(rf'<svg class="chart" id="{re.escape(chart_id)}".*?</svg>', page, re.S)
    assert svg, f"no chart {chart_id}"
    return {
        html.unescape(label): int(value)
        for label, value in re.findall(r'class="chart-value" data-label="([^"]*)">(\d+)<', svg.group(0))
    }


def test_the_dashboard_charts_show_the_right_numbers(gw, party, filer):
    browser, _ = filer
    lodge_form(browser, record(submitter_reference="PORTAL-1"))
    lodge_form(browser, record(submitter_reference="PORTAL-2"))
    b = border(gw, party)
    api = TestClient(create_app(gw))
    assert (
        api.post(
            "/api/v1/consignments",
            json=record(submitter_reference="API-1"),
            headers={"Authorization": f"Bearer {b.filer_key}"},
        ).status_code
        == 201
    )
    ccrn = b.lodge()
    b.bundle([ccrn])
    clearance.decide(gw, b.kiosk, b.arrive())  # early: NOT_READY
    b.wait_lead_time()
    clearance.decide(gw, b.kiosk, b.arrive())  # RELEASE: the consignment crosses
    desk = officer_desk(gw, party)
    page = desk.get("/officer/dashboard").text
    assert chart_values(page, "decisions") == {"RELEASE": 1, "INSPECT": 0, "NOT READY": 1, "REFUSE": 0}
    assert chart_values(page, "ingest") == {"http": 1, "portal": 2}
    assert chart_values(page, "crossings-LMC")["10:00"] == 1
    assert sum(chart_values(page, "crossings-MKT").values()) == 0
    assert "LMC: 1 crossed" in page
    assert chart_values(page, "slots-LMC") == {"10:30": 1}
    assert "(capacity 120 a slot)" in page


def test_every_dynamic_message_key_is_in_the_catalogue():
    from gateway import risk
    from gateway.context import ROLES
    from gateway.errors import CATALOGUE

    english = json.loads((PORTAL / "i18n" / "en.json").read_text("utf-8"))
    wanted = [f"role.{r}" for r in ROLES] + [f"code.{c}" for c in CATALOGUE]
    wanted += [
        f"status.{s}"
        for s in ("LODGED", "BUNDLED", "ARRIVED", "CROSSED", "HELD", "DECLARED", "CANCELLED", "EXPIRED")
    ]
    wanted += [f"op.{o}" for o in risk.OPERATORS] + [f"tkind.{k}" for k in risk.TARGET_KINDS]
    wanted += [f"taction.{a}" for a in risk.TARGET_ACTIONS]
    wanted += [
        f"{p}.{d}" for d in ("RELEASE", "INSPECT", "NOT_READY", "REFUSE") for p in ("decision", "kiosk.do")
    ]
    source = (Path(__file__).parents[2] / "gateway" / "clearance.py").read_text("utf-8")
    wanted += [f"reason.{r}" for r in re.findall(r'Verdict\("[A-Z_]+", \["([A-Z_]+)"\]', source)]
    assert [k for k in wanted if k not in english] == []


def test_an_officer_finds_any_consignment_by_its_ccrn_but_cannot_change_it(gw, party, filer):
    browser, _ = filer
    ccrn = lodge_form(browser, record()).headers["location"].split("/")[2].split("?")[0]
    desk = officer_desk(gw, party)
    found = desk.get(f"/find?ccrn={format_ccrn(ccrn)}")
    assert found.headers["location"] == f"/consignments/{ccrn}"
    page = desk.get(found.headers["location"]).text
    assert format_ccrn(ccrn) in page and f"/consignments/{ccrn}/amend" not in page
    assert desk.get(f"/consignments/{ccrn}/amend").status_code == 403
    assert desk.get(f"/find?ccrn={ccrn[:-1]}{(int(ccrn[-1]) + 1) % 10}").status_code == 422


JUNK = ["", "x" * 5000, "<>\"'&", "-1", "99999999999999999999", "\u0000", "１２３", "items[0]"]


def test_junk_in_any_form_gets_a_page_never_a_server_error(gw, party):
    b = border(gw, party)
    ccrn = b.lodge()
    pages = {
        "forwarder": (
            b.filer,
            b.filer_key,
            [
                "/consignments/new",
                f"/consignments/{ccrn}/amend",
                f"/consignments/{ccrn}/cancel",
                "/account/password",
                "/logout",
            ],
        ),
        "driver": (b.driver, b.driver_key, ["/bundles", "/bundles/B0000000000/unbundle"]),
        "officer": (
            b.officer,
            b.officer_key,
            [
                "/officer/parties",
                "/officer/parties/12345678/suspend",
                "/officer/parties/12345678/revoke",
                "/officer/applications/1/approve",
                "/officer/applications/x/reject",
                "/officer/profiles",
                "/officer/profiles/1",
                "/officer/targets",
                "/officer/targets/1/revoke",
                "/officer/control-points/LMC/contingency",
                "/officer/inspections/1/hold",
            ],
        ),
    }
    names = [
        "party_id",
        "secret",
        "vehicle",
        "control_point",
        "ccrns",
        "role",
        "name",
        "key_id",
        "reason",
        "weight",
        "conditions[0].field",
        "conditions[0].op",
        "conditions[0].values",
        "kind",
        "value",
        "expires_at",
        "items[0].package_count",
        "items[3].gross_mass_kg",
        "equipment[0].seals",
        "item_count",
        "_action",
        "password",
        "confirm",
        "findings",
    ]
    for _role, (actor, key, urls) in pages.items():
        browser = Browser(gw)
        browser.login(str(actor.party_id), key)
        browser.get("/")
        for url in urls:
            for junk in JUNK:
                response = browser.post(url, {name: junk for name in names})
                assert response.status_code < 500, (url, junk, response.text[:500])
                if response.status_code == 303 and url == "/logout":
                    browser.login(str(actor.party_id), key)
                    browser.get("/")
    anonymous = Browser(gw)
    anonymous.get("/")
    for junk in JUNK:
        for url in ("/login", "/apply"):
            assert anonymous.post(url, {n: junk for n in names}).status_code < 500
        assert anonymous.client.post("/api/v1/registrations", content=junk.encode()).status_code < 500


def test_an_officer_works_the_inspection_queue(gw, party):
    from gateway import risk_admin

    b = border(gw, party)
    first, second = b.lodge(), b.lodge()
    for ccrn in (first, second):
        target = {
            "kind": "CCRN",
            "value": ccrn,
            "action": "INSPECT",
            "reason": "tip",
            "expires_at": "2026-12-09T00:00:00+08:00",
        }
        risk_admin.add_target(gw, b.officer, target)
    b.bundle([first])
    b.bundle([second], vehicle="CD5678")
    b.wait_lead_time()
    assert clearance.decide(gw, b.kiosk, b.arrive())["decision"] == "INSPECT"
    assert clearance.decide(gw, b.kiosk, b.arrive(vehicle="CD5678"))["decision"] == "INSPECT"
    desk = Browser(gw)
    desk.login(str(b.officer.party_id), b.officer_key)
    queue = desk.get("/officer/inspections").text
    ids = re.findall(r'action="/officer/inspections/(\d+)/release"', queue)
    assert len(ids) == 2 and "AB1234" in queue and "CD5678" in queue and format_ccrn(first) in queue
    assert "tip" in queue  # officers see why the truck was selected
    refused = desk.post(f"/officer/inspections/{ids[1]}/hold", {"findings": ""})
    assert refused.status_code == 422 and "say what was found" in refused.text
    desk.post(f"/officer/inspections/{ids[0]}/release", {"findings": "as declared"})
    desk.post(f"/officer/inspections/{ids[1]}/hold", {"findings": "200 cartons", "undeclared_cargo": "on"})
    assert consignments.get(gw, b.filer, first)["status"] == "CROSSED"
    assert consignments.get(gw, b.filer, second)["status"] == "HELD"
    assert "No inspections." in desk.get("/officer/inspections").text
    assert "200 cartons" in desk.get("/officer/inspections?status=HELD").text


def test_upload_an_edifact_interchange_and_see_the_contrl_and_cusres(gw, party):
    from tests.integration.test_edifact_channel import consignment, interchange, message

    actor, key = party.add(role="forwarder", name="EDI Freight", edi_ids=("FWDEDI01",))
    browser = Browser(gw)
    browser.login(str(actor.party_id), key)
    browser.get("/upload")
    body = interchange([message("1", [consignment(1, "CMR-EDI-1")])])
    response = browser.client.post(
        "/upload", data={"csrf": browser.csrf}, files={"file": ("m1.edi", body, "application/edifact")}
    )
    assert response.status_code == 200
    assert "m1.edi.contrl.edi" in response.text and "m1.edi.cusres.edi" in response.text
    assert "CONTRL" in response.text and "CUSRES" in response.text
    (lodged,) = consignments.list_consignments(gw, actor)
    assert lodged["submitter_reference"] == "CMR-EDI-1"
    foreign = interchange([message("1", [consignment(1, "CMR-EDI-2")])], ref="IC0002", sender="SOMEONE")
    refused = browser.client.post("/upload", data={"csrf": browser.csrf}, files={"file": ("m2.edi", foreign)})
    assert refused.status_code == 422 and "m2.edi was not processed" in refused.text
    assert "SENDER_MISMATCH" in refused.text and len(consignments.list_consignments(gw, actor)) == 1
