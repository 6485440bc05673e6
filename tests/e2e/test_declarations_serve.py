"""Declaration reuse as a user would try it (issue 8, "done when"), over real HTTP against a real
``roadcargo serve`` with the real Immigration simulator: a consignment lodged by EDIFACT crosses, its
filer downloads the prefilled import declaration in JSON, XML and CUSDEC, completes the missing values,
lodges it in two partial declarations, and the consignment becomes DECLARED; an undeclared one shows as
overdue 14 days later.

The served gateway runs on the wall clock, so the last step asks the same database through a second
gateway, started on a real port in this process, whose injected clock stands 14 days after the
crossing: the design's one injectable clock, over the same HTTP API."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn
from lxml import etree

from gateway import db
from gateway.app import create_app
from gateway.clock import HONG_KONG, FixedClock
from gateway.config import load_config
from gateway.context import Gateway
from mappings import declaration_xml
from mappings.edifact import structure, syntax
from tests.declaration_support import SUPPLIED
from tests.e2e.conftest import free_port, start_gateway
from tests.factories import record
from tests.integration.test_edifact_channel import SENDER, consignment, interchange, message
from tests.integration.test_immigration import simulator

XSD = etree.XMLSchema(etree.parse(str(Path(declaration_xml.__file__).parents[1] / "schemas/declaration.xsd")))


@contextmanager
def gateway_at(db_url: str, config: Path, now: datetime) -> Iterator[str]:
    """The same gateway application on a free port in this process, its clock fixed at ``now``."""
    engine = db.make_engine(db_url)
    app = create_app(Gateway(engine, load_config(config), FixedClock(now)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the second gateway did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def fill(value, name=""):
    """What the importer supplies for each field marked missing."""
    if isinstance(value, dict) and value.get("missing") is True:
        return copy.deepcopy(SUPPLIED[name])
    if isinstance(value, dict):
        return {k: fill(v, k) for k, v in value.items() if k != "missing_fields"}
    if isinstance(value, list):
        return [fill(v, name) for v in value]
    return value


def test_lodged_by_edifact_crossed_declared_in_two_parts_and_the_undeclared_one_overdue(tmp_path):
    with simulator(tmp_path) as immigration:
        # No lead time, so the truck may cross at once; no random selection, so it is released.
        config = (
            "[rules]\nbundle_lead_minutes = 0\n[risk]\nrandom_rate = 0.0\n"
            f'[immigration]\nurl = "{immigration}"\n'
        )
        with start_gateway(tmp_path / "gw", config) as served:
            base = served.url + "/api/v1"
            forwarder = served.add_party("forwarder", "EDI Forwarder", "--edi-id", SENDER)
            driver = served.add_party("driver", "Driver Chan")
            kiosk = served.add_party("kiosk", "LMC kiosk 2", "--control-point", "LMC")
            officer = served.add_party("officer", "Officer Wong")

            def auth(who):
                return {"Authorization": f"Bearer {who['api_key']}"}

            # Lodged by EDIFACT (and a second one by JSON, that nobody will declare).
            tomorrow = date.today() + timedelta(days=1)
            edi = interchange([message("1", [consignment(1, "EDI-1")], crossing=tomorrow.strftime("%Y%m%d"))])
            answer = httpx.post(
                f"{base}/edifact",
                content=edi,
                headers={**auth(forwarder), "Content-Type": "application/EDIFACT"},
            )
            assert answer.status_code == 200 and b"RFF+XC:" in answer.content
            (lodged,) = httpx.get(
                f"{base}/consignments", params={"reference": "EDI-1"}, headers=auth(forwarder)
            ).json()["consignments"]
            ccrn = lodged["ccrn"]
            other = httpx.post(
                f"{base}/consignments",
                json=record(submitter_reference="JSON-9", expected_crossing=tomorrow.isoformat()),
                headers=auth(forwarder),
            ).json()["ccrn"]
            early = httpx.get(f"{base}/consignments/{ccrn}/declaration", headers=auth(forwarder))
            assert early.status_code == 409 and early.json()["errors"][0]["code"] == "NOT_CROSSED"

            # It crosses: bundled, and released at the kiosk with Immigration answering.
            bundle = httpx.post(
                f"{base}/bundles",
                json={"vehicle": "XY 987", "control_point": "LMC", "ccrns": [ccrn, other]},
                headers=auth(driver),
            )
            assert bundle.status_code == 201, bundle.text
            decision = httpx.post(
                f"{base}/kiosk/clearances",
                json={"control_point": "LMC", "lane": "2", "vehicle": "XY987", "driver_document": "K7654321"},
                headers=auth(kiosk),
            ).json()
            assert decision["decision"] == "RELEASE", decision
            assert (
                httpx.get(f"{base}/consignments/{ccrn}", headers=auth(forwarder)).json()["status"]
                == "CROSSED"
            )

            # The importer's declaration, prefilled, in all three formats.
            url = f"{base}/consignments/{ccrn}/declaration"
            doc = httpx.get(url, params={"kind": "import"}, headers=auth(forwarder)).json()
            assert doc["transport"]["vehicle"] == "XY987" and doc["transport"]["control_point"] == "LMC"
            assert doc["lines"][0]["packages"] == {"count": 40, "type": "CT", "description": "CARTONS"}
            assert {m["field"] for m in doc["missing_fields"]} == {
                "importer.id",
                "lines[0].hs_code",
                "lines[0].quantity",
            }
            assert doc["lines"][0]["origin_country"] == "CN"  # LOC+27 of the CUSCAR
            as_xml = httpx.get(url, params={"kind": "import", "format": "xml"}, headers=auth(forwarder))
            assert XSD.validate(etree.fromstring(as_xml.content)), XSD.error_log
            as_edi = httpx.get(url, params={"kind": "import", "format": "edifact"}, headers=auth(forwarder))
            assert structure.validate_interchange(as_edi.content) == []
            bgm = next(p.segment for p in syntax.tokenize(as_edi.content) if p.segment.tag == "BGM")
            assert bgm.elements[0] == "929"

            # Completed, and lodged in two parts: 25 cartons by JSON, the other 15 by XML.
            completed = fill(doc)
            first = copy.deepcopy(completed)
            first["lines"][0]["packages"]["count"], first["lines"][0]["gross_mass_kg"] = 25, 300
            answer = httpx.post(f"{base}/declarations", json=first, headers=auth(forwarder))
            assert answer.status_code == 201, answer.text
            assert (
                answer.json()["status"] == "CROSSED"
                and answer.json()["ledger"][0]["packages_remaining"] == 15
            )
            second = copy.deepcopy(completed)
            second["lines"][0]["packages"]["count"], second["lines"][0]["gross_mass_kg"] = 15, 180.5
            answer = httpx.post(
                f"{base}/declarations",
                content=declaration_xml.to_xml(second),
                headers={**auth(forwarder), "Content-Type": "application/xml"},
            )
            assert answer.status_code == 201, answer.text
            assert answer.json()["fully_declared"] is True
            assert (
                httpx.get(f"{base}/consignments/{ccrn}", headers=auth(forwarder)).json()["status"]
                == "DECLARED"
            )
            over = httpx.post(f"{base}/declarations", json=first, headers=auth(forwarder))
            assert over.status_code == 409 and over.json()["errors"][0]["code"] == "OVER_DECLARATION"

            # Today nothing is overdue yet.
            now = httpx.get(f"{base}/declarations/overdue", headers=auth(officer)).json()
            assert now["overdue"] == [] and now["due_soon"] == []
            crossed_at = datetime.fromisoformat(doc["transport"]["crossed_at"])

        # Fourteen days after the crossing, the same database says: the undeclared one is overdue.
        with gateway_at(served.db_url, served.config, crossed_at + timedelta(days=14, minutes=1)) as later:
            listed = httpx.get(f"{later}/api/v1/declarations/overdue", headers=auth(officer)).json()
            assert [e["ccrn"] for e in listed["overdue"]] == [other]
            assert (
                listed["overdue"][0]["due_at"]
                == (crossed_at + timedelta(days=14)).astimezone(HONG_KONG).isoformat()
            )
            mine = httpx.get(f"{later}/api/v1/declarations/overdue", headers=auth(forwarder)).json()
            assert [e["ccrn"] for e in mine["overdue"]] == [other]
        with gateway_at(served.db_url, served.config, crossed_at + timedelta(days=12, hours=1)) as sooner:
            listed = httpx.get(f"{sooner}/api/v1/declarations/overdue", headers=auth(officer)).json()
            assert listed["overdue"] == [] and [e["ccrn"] for e in listed["due_soon"]] == [other]
