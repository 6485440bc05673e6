"""The web portal in a real browser (Debian's Chromium driven by Playwright) against a real
``roadcargo serve``: a filer lodges through the form and gets a CCRN whose printed barcode a barcode
reader decodes, a driver bundles it, and the kiosk display shows the decision made through the API; the
essential flows also work with JavaScript switched off. Screenshots of every page go to
``test-artifacts/portal/``.

Chromium is required: without ``/usr/bin/chromium`` these tests fail (``apt-get install chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from gateway.clock import HONG_KONG
from gateway.identifiers import damm_digit, format_ccrn
from tests.e2e.conftest import GatewayProcess, start_gateway
from tests.factories import record

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "portal"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (see scripts/test-packages.txt)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield launched
        launched.close()


class Visitor:
    """One browser context (its own cookies) that records every request it makes."""

    def __init__(self, browser: Browser, server: GatewayProcess, javascript: bool = True, **kw: Any) -> None:
        self.server = server
        self.context = browser.new_context(java_script_enabled=javascript, **kw)
        self.page: Page = self.context.new_page()
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        # A Content-Security-Policy violation (an inline style or script, a foreign request) is a
        # console error: none is allowed.
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        # Pages may answer 4xx (a form with errors is 422); the files a page loads may not.
        self.page.on(
            "response",
            lambda r: (
                self.errors.append(f"{r.status} {r.url}")
                if r.status >= 400 and r.request.resource_type != "document"
                else None
            ),
        )

    def goto(self, path: str) -> None:
        self.page.goto(self.server.url + path)

    def login(self, party_id: str, secret: str) -> None:
        self.goto("/login")
        self.page.get_by_label("Party id").fill(party_id)
        self.page.get_by_label("API key or password").fill(secret)
        self.page.get_by_role("button", name="Log in").click()
        self.page.wait_for_url(self.server.url + "/")

    def shot(self, name: str) -> Path:
        """A screenshot of the page, once every control on it is known to have a label."""
        assert_accessible(self.page)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        assert not self.errors, self.errors
        outside = [
            u for u in self.requests if not u.startswith(self.server.url) and not u.startswith("data:")
        ]
        assert not outside, f"requests outside the gateway: {outside}"
        self.context.close()


_UNLABELLED = """() => Array.from(
    document.querySelectorAll('input:not([type=hidden]), select, textarea, button'))
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !el.getAttribute('aria-labelledby') && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map(el => el.name || el.id || el.outerHTML.slice(0, 80))"""


def assert_accessible(page: Page) -> None:
    """Every control has a label (or a button its text), the page has a language and one h1."""
    assert page.evaluate(_UNLABELLED) == []
    assert page.get_attribute("html", "lang")
    assert page.locator("h1").count() == 1


def today_hk() -> str:
    return datetime.now(HONG_KONG).date().isoformat()


def fill_record(page: Page, reference: str) -> None:
    """Fill every required field of the form, and a few optional ones, as a person would."""
    page.get_by_label("Direction").select_option("IMPORT")
    page.get_by_label("Your reference").fill(reference)
    page.get_by_label("Expected crossing").fill(today_hk())
    page.get_by_label("Control point").select_option("LMC")
    consignor = page.locator("fieldset", has=page.locator("legend", has_text="Consignor"))
    consignor.get_by_label("Name").fill("Shenzhen Bright Toys Co Ltd")
    consignor.get_by_label("Street address").fill("18 Industrial Avenue, Bao'an")
    consignor.get_by_label("Country (ISO code)").fill("CN")
    consignee = page.locator("fieldset", has=page.locator("legend", has_text="Consignee"))
    consignee.get_by_label("Name").fill("Harbour Traders Ltd")
    consignee.get_by_label("Street address").fill("2 Harbour Road, Wan Chai")
    item = page.locator("fieldset.row", has=page.locator("legend", has_text="Goods item 1"))
    item.get_by_label("Number of packages").fill("40")
    item.get_by_label("Package type (code)").fill("CT")
    item.get_by_label("Package description").fill("cartons")
    item.get_by_label("Description of the goods").fill("plastic toy building blocks")
    item.get_by_label("HS code").fill("950300")


def ccrn_of(page: Page) -> str:
    ccrn = page.locator("#ccrn").inner_text().replace(" ", "")
    assert re.fullmatch(r"[0-9]{12}", ccrn) and damm_digit(ccrn) == 0
    return ccrn


def test_a_filer_lodges_a_driver_bundles_and_the_kiosk_shows_the_decision(
    browser: Browser, gateway_server: GatewayProcess
) -> None:
    filer = gateway_server.add_party("forwarder", "Browser Freight")
    driver = gateway_server.add_party("driver", "Browser Driver")
    kiosk = gateway_server.add_party("kiosk", "LMC kiosk 3", "--control-point", "LMC")

    # The filer: the live checks answer as they type; the server's own errors land next to the field.
    desk = Visitor(browser, gateway_server)
    desk.login(filer["party_id"], filer["api_key"])
    desk.goto("/consignments/new")
    fill_record(desk.page, "CMR-BROWSER-1")
    desk.page.get_by_role("button", name="Add a container").click()  # the first row comes from the server
    box = desk.page.get_by_label("Container number")
    box.fill("CSQU3054384")
    assert "check digit is wrong" in desk.page.locator("#f-equipment-0-number-live").inner_text()
    desk.page.get_by_role("button", name="Add a goods item").click()  # in the page, by JavaScript
    second = desk.page.locator("fieldset.row", has=desk.page.locator("legend", has_text="Goods item 2"))
    assert second.get_by_label("Number of packages").input_value() == ""
    desk.page.get_by_role("button", name="Remove goods item 2").click()
    assert desk.page.locator("fieldset.row[data-row=items]").count() == 1
    desk.page.get_by_role("button", name="Lodge and get a CCRN").click()
    desk.page.wait_for_load_state()
    errors = desk.page.locator("#f-equipment-0-number-err")
    assert "the ISO 6346 check digit is wrong" in errors.inner_text()
    desk.shot("01-lodge-form-errors")
    desk.page.get_by_label("Container number").fill("CSQU3054383")
    assert "Check digit correct" in desk.page.locator("#f-equipment-0-number-live").inner_text()
    desk.page.get_by_role("button", name="Lodge and get a CCRN").click()
    desk.page.wait_for_url(re.compile(r".*/consignments/[0-9]{12}\?lodged=1"))
    ccrn = ccrn_of(desk.page)
    assert desk.page.locator("#ccrn").inner_text() == format_ccrn(ccrn)
    shot = desk.shot("02-consignment-ccrn")
    desk.page.emulate_media(media="print")
    desk.shot("03-consignment-print")
    desk.page.emulate_media(media="screen")
    # zbarimg, a barcode reader of its own, decodes the bars as the browser drew them on the screen.
    assert f"CODE-128:{ccrn}" in _read_barcodes(shot)
    desk.goto("/consignments")
    assert format_ccrn(ccrn) in desk.page.locator("table").inner_text()
    desk.shot("04-consignment-list")
    desk.close()

    # The driver pastes the CCRN with its spaces and sees the check digit confirmed before sending.
    cab = Visitor(browser, gateway_server, viewport={"width": 390, "height": 844}, is_mobile=True)
    cab.login(driver["party_id"], driver["api_key"])
    cab.goto("/bundles")
    cab.page.get_by_label("Vehicle registration").fill("XY 4321")
    cab.page.get_by_label("Control point").select_option("LMC")
    cab.page.get_by_label("CCRNs").fill(format_ccrn(ccrn))
    assert "check digit correct" in cab.page.locator("#f-ccrns-live").inner_text()
    wrong = ccrn[:-1] + str((int(ccrn[-1]) + 1) % 10)
    cab.page.get_by_label("CCRNs").fill(f"{format_ccrn(ccrn)}\n{wrong}")
    assert "wrong check digit" in cab.page.locator("#f-ccrns-live").inner_text()
    cab.page.get_by_label("CCRNs").fill(format_ccrn(ccrn))
    cab.page.get_by_role("button", name="Bundle", exact=True).click()
    cab.page.wait_for_url(re.compile(r".*/bundles\?made=B[0-9]+"))
    bundle = cab.page.locator("article.bundle").first
    assert "XY4321" in bundle.inner_text() and "Earliest crossing" in bundle.inner_text()
    cab.shot("05-driver-bundle-phone")

    # The kiosk display waits, then shows the decision the kiosk got through the API.
    screen = Visitor(browser, gateway_server, viewport={"width": 1280, "height": 720})
    screen.login(kiosk["party_id"], kiosk["api_key"])  # the lane screen logs in once, as its kiosk
    screen.goto("/kiosk/LMC/3")
    assert "Waiting for the next vehicle" in screen.page.locator("#decision").inner_text()
    screen.shot("06-kiosk-waiting")
    answer = httpx.post(
        gateway_server.url + "/api/v1/kiosk/clearances",
        json={"control_point": "LMC", "lane": "3", "vehicle": "XY4321", "driver_document": "K1234567"},
        headers={"Authorization": f"Bearer {kiosk['api_key']}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    decision = answer.json()["decision"]
    assert decision == "NOT_READY"  # within the 30-minute lead time: too early, come back later
    screen.goto("/kiosk/LMC/3")
    assert screen.page.locator("#decision").inner_text() == "NOT READY"
    assert "kiosk-NOT_READY" in (screen.page.locator("body").get_attribute("class") or "")
    assert "XY4321" in screen.page.inner_text("main")
    screen.shot("07-kiosk-decision")
    cab.goto("/bundles")
    assert "NOT READY" in cab.page.locator("article.bundle").first.inner_text()
    cab.shot("08-driver-decision")
    cab.close()
    screen.close()


def test_lodging_and_bundling_work_without_javascript(
    browser: Browser, gateway_server: GatewayProcess
) -> None:
    filer = gateway_server.add_party("shipper", "No Script Shipper")
    driver = gateway_server.add_party("driver", "No Script Driver")
    desk = Visitor(browser, gateway_server, javascript=False)
    desk.login(filer["party_id"], filer["api_key"])
    desk.goto("/consignments/new")
    fill_record(desk.page, "CMR-NOSCRIPT-1")
    desk.page.get_by_role("button", name="Add a goods item").click()  # the server re-renders the form
    desk.page.wait_for_load_state()
    assert desk.page.get_by_label("Your reference").input_value() == "CMR-NOSCRIPT-1"
    second = desk.page.locator("fieldset.row", has=desk.page.locator("legend", has_text="Goods item 2"))
    second.get_by_label("Number of packages").fill("3")
    second.get_by_label("Package type (code)").fill("PK")
    second.get_by_label("Package description").fill("packages")
    second.get_by_label("Description of the goods").fill("spare parts")
    desk.shot("11-noscript-two-items")
    desk.page.get_by_role("button", name="Lodge and get a CCRN").click()
    desk.page.wait_for_url(re.compile(r".*/consignments/[0-9]{12}\?lodged=1"))
    ccrn = ccrn_of(desk.page)
    assert "spare parts" in desk.page.inner_text("main")
    desk.close()

    cab = Visitor(browser, gateway_server, javascript=False)
    cab.login(driver["party_id"], driver["api_key"])
    cab.goto("/bundles")
    cab.page.get_by_label("Vehicle registration").fill("NS 1")
    cab.page.get_by_label("Control point").select_option("LMC")
    cab.page.get_by_label("CCRNs").fill(ccrn)
    cab.page.get_by_role("button", name="Bundle", exact=True).click()
    cab.page.wait_for_url(re.compile(r".*/bundles\?made=B[0-9]+"))
    assert "NS1" in cab.page.locator("article.bundle").first.inner_text()
    cab.shot("12-noscript-bundle")
    cab.close()


def test_the_portal_reads_in_traditional_chinese(browser: Browser, gateway_server: GatewayProcess) -> None:
    filer = gateway_server.add_party("forwarder", "Chinese Reader")
    visitor = Visitor(browser, gateway_server)
    visitor.login(filer["party_id"], filer["api_key"])
    visitor.goto("/consignments/new")
    visitor.page.get_by_role("link", name="繁體中文").click()
    visitor.page.wait_for_url(gateway_server.url + "/consignments/new")
    assert visitor.page.locator("h1").inner_text() == "遞交貨物資料"
    assert visitor.page.get_attribute("html", "lang") == "zh-Hant-HK"
    visitor.shot("21-lodge-form-zh-hant")
    visitor.close()


def _read_barcodes(image: Path) -> str:
    """What zbarimg (Debian's zbar-tools, in scripts/test-packages.txt) reads in the image."""
    zbarimg = shutil.which("zbarimg")
    if zbarimg is None:
        pytest.fail("zbarimg is missing: apt-get install zbar-tools (see scripts/test-packages.txt)")
    done = subprocess.run([zbarimg, "--quiet", str(image)], capture_output=True, text=True, timeout=60)
    return done.stdout


def test_an_officer_creates_a_profile_and_the_dashboard_charts_count_right(
    browser: Browser, tmp_path: Path
) -> None:
    with start_gateway(tmp_path / "gateway") as server:
        filer = server.add_party("forwarder", "Dashboard Freight")
        driver = server.add_party("driver", "Dashboard Driver")
        kiosk = server.add_party("kiosk", "LMC kiosk 5", "--control-point", "LMC")
        officer = server.add_party("officer", "Duty Officer")
        api = httpx.Client(base_url=server.url, timeout=10)
        tobacco = record(submitter_reference="TOBACCO-1", expected_crossing=today_hk())
        tobacco["items"][0].update(hs_code="240220", description="cigarettes")
        lodged = []
        for data in (tobacco, record(submitter_reference="TOYS-1", expected_crossing=today_hk())):
            answer = api.post(
                "/api/v1/consignments", json=data, headers={"Authorization": f"Bearer {filer['api_key']}"}
            )
            assert answer.status_code == 201, answer.text
            lodged.append(answer.json()["ccrn"])
        made = api.post(
            "/api/v1/bundles",
            json={"vehicle": "DB1", "control_point": "LMC", "ccrns": lodged[1:]},
            headers={"Authorization": f"Bearer {driver['api_key']}"},
        )
        assert made.status_code == 201, made.text
        early = api.post(
            "/api/v1/kiosk/clearances",
            json={"control_point": "LMC", "lane": "5", "vehicle": "DB1", "driver_document": "K7654321"},
            headers={"Authorization": f"Bearer {kiosk['api_key']}"},
        )
        assert early.json()["decision"] == "NOT_READY"

        desk = Visitor(browser, server)
        desk.login(officer["party_id"], officer["api_key"])
        desk.page.get_by_role("link", name="Risk profiles").first.click()
        desk.page.get_by_label("Name").fill("tobacco")
        desk.page.get_by_label("Weight").fill("100")
        first = desk.page.locator("fieldset.row", has=desk.page.locator("legend", has_text="Condition 1"))
        first.get_by_label("Field").fill("items.hs_code")
        first.get_by_label("Operator").select_option("prefix")
        first.get_by_label("Values").fill("2402")
        desk.page.get_by_role("button", name="Dry run: which live consignments would it select?").click()
        desk.page.wait_for_load_state()
        assert "1 live consignment(s) hit; 1 would be selected." in desk.page.locator("#dry-run").inner_text()
        assert format_ccrn(lodged[0]) in desk.page.locator("#dry-run").inner_text()
        desk.shot("31-officer-profile-dry-run")
        desk.page.get_by_role("button", name="Save the profile").click()
        desk.page.wait_for_url(re.compile(r".*/officer/profiles/[0-9]+\?saved=1"))
        assert "Saved; 1 live consignment(s) profiled again." in desk.page.inner_text("main")
        desk.shot("32-officer-profile-saved")

        desk.page.get_by_role("link", name="Dashboard").first.click()
        desk.page.wait_for_load_state()

        def bar(chart: str, label: str) -> int:
            return int(
                desk.page.locator(f'#{chart} text.chart-value[data-label="{label}"]').text_content() or ""
            )

        assert bar("decisions", "NOT READY") == 1 and bar("decisions", "RELEASE") == 0
        assert bar("ingest", "http") == 4  # two lodgements, a bundle and a kiosk request, each kept raw
        assert bar("ingest", "portal") == 1  # the profile saved through the portal
        slots = desk.page.locator("#slots-LMC text.chart-value")
        assert slots.count() == 1 and slots.first.text_content() == "1"
        assert desk.page.locator("svg.chart").count() >= 9  # six control points, decisions, slots, ingest
        assert desk.page.locator("#decisions").bounding_box()["width"] > 200  # type: ignore[index]
        desk.shot("33-officer-dashboard")
        desk.close()
