"""Immigration (design section 9): the simulator run as a real ``roadcargo simulate immigration``
process, asked by the gateway's real zeep client; the durable outbox of advance notices, on SQLite and
PostgreSQL."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from lxml import etree
from sqlalchemy import select, text

from adapters import immigration_sim
from adapters.immigration_client import ImmigrationClient
from gateway import advance_notices, bundles, clearance, consignments, tables
from gateway.app import create_app
from gateway.clock import HONG_KONG
from gateway.errors import GatewayError
from gateway.immigration import ClearanceQuery
from tests.border_support import border
from tests.conftest import Asking
from tests.factories import record

ROADCARGO = str(Path(sys.executable).with_name("roadcargo"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def simulator(
    directory: Path,
    *extra: str,
    port: int | None = None,
    started: list[subprocess.Popen[bytes]] | None = None,
) -> Iterator[str]:
    """``roadcargo simulate immigration`` on a free port; yields its service URL (and appends the
    process to ``started``, for a test that kills it)."""
    port = port or free_port()
    log = directory / f"sim-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADCARGO_")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [ROADCARGO, "simulate", "immigration", "--port", str(port), *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if started is not None:
        started.append(process)
    url = f"http://127.0.0.1:{port}/immigration"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}?wsdl", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def notices(url: str) -> dict[str, Any]:
    listing: dict[str, Any] = httpx.get(f"{url}/notices").json()
    return listing


@pytest.fixture(scope="module")
def watched_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("immigration")
    watchlist = directory / "watchlist.txt"
    watchlist.write_text("# wanted\nK7654321\n  x1234567  \n\n")
    with simulator(directory, "--watchlist", str(watchlist)) as url:
        yield url


def ask(asking: Asking, client: ImmigrationClient, document: str, vehicle: str = "AB1234") -> Any:
    return asking(client, ClearanceQuery(document, vehicle, "12345678", "LMC", "3"))


# -- the clearance question -------------------------------------------------------------------------


def test_immigration_clears_refuses_watchlisted_and_refers_r_numbers(watched_sim, asking):
    client = ImmigrationClient(watched_sim, 2000)
    assert ask(asking, client, "P1234567") == "CLEARED"
    assert ask(asking, client, "K7654321") == "REFUSED"
    assert ask(asking, client, "X1234567") == "REFUSED"  # listed with spaces, asked in upper case
    assert ask(asking, client, "R1234567") == "REFER"
    assert asking(client, ClearanceQuery("E9999999", "AB1234", None, "HZM", "1")) == "CLEARED"  # no party


def test_a_fault_from_immigration_gives_no_answer(watched_sim, asking):
    client = ImmigrationClient(watched_sim, 2000)
    assert ask(asking, client, "") is None  # the simulator validates: an empty document is a SOAP fault
    assert ask(asking, client, "P1", vehicle="lowercase-and-long") is None
    assert ask(asking, client, "P1") == "CLEARED"  # and the client is still usable


def test_slow_immigration_gives_no_answer_within_the_timeout(tmp_path, asking):
    with simulator(tmp_path, "--delay-ms", "2000") as url:
        client = ImmigrationClient(url, 300)
        started = time.monotonic()
        assert ask(asking, client, "P1234567") is None
        elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < 1.2, elapsed


def test_immigration_down_gives_no_answer_quickly(asking):
    client = ImmigrationClient(f"http://127.0.0.1:{free_port()}/immigration", 800)
    started = time.monotonic()
    assert ask(asking, client, "P1234567") is None
    assert ask(asking, client, "P1234567") is None  # and again: the failed WSDL load is retried, not cached
    assert time.monotonic() - started < 0.5


def _on_a_thread(*_args: Any) -> None:
    raise AssertionError("the kiosk route asked Immigration on a thread")


def test_the_kiosk_route_asks_immigration_from_its_event_loop(gw, party, watched_sim, monkeypatch):
    """Over HTTP, with the client's WSDL loaded (as ``roadcargo serve`` loads it at start), the route
    awaits the client: each of Immigration's answers makes its decision, and no thread is asked."""
    b = border(gw, party)
    gw.immigration = client = ImmigrationClient(watched_sim, 2000)
    assert client.warm()
    monkeypatch.setattr(clearance, "ask_immigration", _on_a_thread)
    trucks = {"CL1": "P1234567", "RF1": "K7654321", "RE1": "R1234567"}  # cleared, watchlisted, referred
    for vehicle in trucks:
        b.bundle([b.lodge()], vehicle=vehicle)
    b.wait_lead_time()
    with TestClient(create_app(gw)) as http:
        decided = {
            vehicle: http.post(
                "/api/v1/kiosk/clearances",
                json=b.arrive(vehicle=vehicle, driver_document=document),
                headers={"Authorization": f"Bearer {b.kiosk_key}"},
            ).json()
            for vehicle, document in trucks.items()
        }
    assert [(d["decision"], d["reasons"]) for d in decided.values()] == [
        ("RELEASE", []),
        ("REFUSE", ["IMMIGRATION_REFUSED"]),
        ("NOT_READY", ["IMMIGRATION_REFER"]),
    ]


def test_the_kiosk_route_gives_not_ready_when_immigration_is_slow(gw, party, tmp_path, monkeypatch):
    b = border(gw, party)
    b.bundle([b.lodge()])
    b.wait_lead_time()
    with simulator(tmp_path, "--delay-ms", "2000") as url, TestClient(create_app(gw)) as http:
        gw.immigration = client = ImmigrationClient(url, 300)
        assert client.warm()  # the WSDL comes at once; the answers are late
        monkeypatch.setattr(clearance, "ask_immigration", _on_a_thread)
        started = time.monotonic()
        r = http.post(
            "/api/v1/kiosk/clearances", json=b.arrive(), headers={"Authorization": f"Bearer {b.kiosk_key}"}
        )
        elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert (r.json()["decision"], r.json()["reasons"]) == ("NOT_READY", ["IMMIGRATION_UNAVAILABLE"])
    assert 0.3 <= elapsed < 1.5, elapsed


def test_two_lanes_asking_for_the_same_truck_at_once_release_it_once(gw, party, tmp_path):
    """Two kiosk requests for one vehicle at the same moment, Immigration taking 300 ms over each: one
    RELEASE, the other finds the bundle gone (NO_BUNDLE), and each consignment crosses once. On
    PostgreSQL the second waits for the first's rows; on SQLite it reads them again under lock."""
    b = border(gw, party)
    ccrns = [b.lodge(), b.lodge()]
    b.bundle(ccrns)
    b.wait_lead_time()
    with simulator(tmp_path, "--delay-ms", "300") as url, TestClient(create_app(gw)) as http:
        gw.immigration = client = ImmigrationClient(url, 2000)
        assert client.warm()

        def arrive(lane: str) -> Any:
            return http.post(
                "/api/v1/kiosk/clearances",
                json=b.arrive(lane=lane),
                headers={"Authorization": f"Bearer {b.kiosk_key}"},
            )

        with ThreadPoolExecutor(2) as pool:
            answers = [r.json() for r in pool.map(arrive, ["1", "2"])]
    assert sorted((a["decision"], a["reasons"]) for a in answers) == [
        ("NOT_READY", ["NO_BUNDLE"]),
        ("RELEASE", []),
    ]
    assert next(a for a in answers if a["decision"] == "RELEASE")["ccrns"] == sorted(ccrns)
    with gw.engine.connect() as conn:
        crossed = (
            conn.execute(select(tables.events.c.ccrn).where(tables.events.c.type == "CROSSED"))
            .scalars()
            .all()
        )
        statuses = (
            conn.execute(select(tables.consignments.c.status).where(tables.consignments.c.ccrn.in_(ccrns)))
            .scalars()
            .all()
        )
    assert sorted(crossed) == sorted(ccrns) and statuses == ["CROSSED", "CROSSED"]


class _Garbage(http.server.BaseHTTPRequestHandler):
    """Answers GET with the real WSDL (or nonsense) and POST with ``reply``."""

    wsdl = True
    reply = b"<html>oops"

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        body = immigration_sim.wsdl_for(f"http://127.0.0.1:{port}") if self.wsdl else b"\x00\x01 nonsense"
        if self.path.endswith(".xsd"):
            body = immigration_sim._schema_file("immigration.xsd")
        self._send(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(self.reply)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def garbage_server(wsdl: bool, reply: bytes) -> Iterator[str]:
    handler = type("Handler", (_Garbage,), {"wsdl": wsdl, "reply": reply})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/immigration"
    finally:
        server.shutdown()
        server.server_close()


_ENVELOPE = (
    b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
    b"<soap:Body>%s</soap:Body></soap:Envelope>"
)


@pytest.mark.parametrize(
    "wsdl, reply",
    [
        (False, b"nonsense"),  # not even a WSDL
        (True, b"<html><body>502 Bad Gateway</body></html>"),  # a proxy's error page
        (True, b"\xff\xfe not xml at all"),
        (True, _ENVELOPE % b'<x:Other xmlns:x="urn:elsewhere">CLEARED</x:Other>'),  # another element
        (
            True,  # the right element with an answer outside the contract
            _ENVELOPE % b'<imm:ClearDriverResponse xmlns:imm="urn:roadcargo:immigration:1">'
            b"<imm:Answer>PROBABLY</imm:Answer></imm:ClearDriverResponse>",
        ),
    ],
    ids=["no-wsdl", "html", "bytes", "wrong-element", "unknown-answer"],
)
def test_garbage_from_immigration_gives_no_answer(wsdl, reply, asking):
    with garbage_server(wsdl, reply) as url:
        assert ask(asking, ImmigrationClient(url, 800), "P1234567") is None


def test_simulator_serves_its_wsdl_with_absolute_addresses(watched_sim):
    wsdl = httpx.get(f"{watched_sim}?wsdl").text
    base = watched_sim.rsplit("/immigration", 1)[0]
    assert f'schemaLocation="{base}/immigration/immigration.xsd"' in wsdl
    assert f'location="{watched_sim}"' in wsdl
    assert "ClearDriver" in wsdl and "AdviseBundle" in wsdl and "AdviseBundles" in wsdl
    xsd = httpx.get(f"{watched_sim}/immigration.xsd")
    assert xsd.status_code == 200 and b'targetNamespace="urn:roadcargo:immigration:1"' in xsd.content


def test_the_wsdl_takes_every_type_from_the_xsd():
    wsdl = etree.fromstring(immigration_sim._schema_file("immigration.wsdl"))
    xsd = etree.fromstring(immigration_sim._schema_file("immigration.xsd"))
    xs = "{http://www.w3.org/2001/XMLSchema}"
    (schema,) = wsdl.iter(f"{xs}schema")
    assert [child.tag for child in schema] == [f"{xs}import"]  # nothing defined in the WSDL itself
    declared = {e.get("name") for e in xsd.findall(f"{xs}element")}
    parts = {p.get("element").split(":")[1] for p in wsdl.iter("{http://schemas.xmlsoap.org/wsdl/}part")}
    assert parts == {
        "ClearDriver",
        "ClearDriverResponse",
        "AdviseBundle",
        "AdviseBundleResponse",
        "AdviseBundles",
        "AdviseBundlesResponse",
        "ImmigrationFault",
    }
    assert parts <= declared


def test_simulator_refuses_dtds_with_a_fault(watched_sim):
    body = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&e;</soap:Body>'
        b"</soap:Envelope>"
    )
    reply = httpx.post(watched_sim, content=body, headers={"Content-Type": "text/xml"})
    assert reply.status_code == 500
    assert b"soap:Fault" in reply.content and b"XML_FORBIDDEN" in reply.content
    assert b"root:" not in reply.content


def test_simulator_names_an_unreadable_watchlist(tmp_path):
    done = subprocess.run(
        [ROADCARGO, "simulate", "immigration", "--port", "0", "--watchlist", str(tmp_path / "missing.txt")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "missing.txt" in done.stderr


# -- advance notices through the outbox -----------------------------------------------------------


@pytest.fixture
def filer(party):
    return party.add(name="Forwarder")[0]


@pytest.fixture
def driver(party):
    return party.add(role="driver", name="Driver One")[0]


def bundle_some(gw, filer, driver, n: int, prefix: str = "B") -> list[dict[str, Any]]:
    made = []
    for i in range(n):
        ccrn = consignments.lodge(gw, filer, record(submitter_reference=f"{prefix}REF{i}")).view["ccrn"]
        made.append(bundles.bundle(gw, driver, f"{prefix}K{i:04d}", "LMC", [ccrn]))
    return made


def outbox_rows(gw) -> list[Any]:
    with gw.engine.connect() as conn:
        return list(conn.execute(select(tables.immigration_outbox).order_by("notice_id")))


def test_bundling_sends_immigration_an_advance_notice(gw, filer, driver, tmp_path):
    (made,) = bundle_some(gw, filer, driver, 1)
    (row,) = outbox_rows(gw)
    assert (row.bundle_id, row.delivered_at, row.attempts) == (made["bundle_id"], None, 0)
    with simulator(tmp_path) as url:
        sent = advance_notices.deliver_due(gw, ImmigrationClient(url, 2000))
        assert (sent.delivered, sent.failed) == (1, 0)
        listing = notices(url)
    (notice,) = listing["notices"]
    assert notice["bundle_id"] == made["bundle_id"]
    assert notice["vehicle"] == made["vehicle"] and notice["driver_party"] == driver.party_id
    assert notice["control_point"] == "LMC" and notice["direction"] == "IMPORT"
    assert notice["slot_start"] == made["slot"]["start"] and notice["slot_end"] == made["slot"]["end"]
    (row,) = outbox_rows(gw)
    assert row.delivered_at == gw.now() and row.attempts == 1 and row.last_error is None
    assert advance_notices.pending(gw) == 0


def test_a_failed_bundle_queues_no_notice(gw, filer, driver):
    (made,) = bundle_some(gw, filer, driver, 1)
    with pytest.raises(GatewayError) as refused:
        bundles.bundle(gw, driver, "ZZ9999", "LMC", made["ccrns"])
    assert refused.value.problems[0].code == "ALREADY_BUNDLED"
    assert len(outbox_rows(gw)) == 1


def test_notices_wait_while_immigration_is_down_and_arrive_once_when_it_is_up(
    gw, filer, driver, clock, tmp_path
):
    made = bundle_some(gw, filer, driver, 2)
    bundles.unbundle(gw, driver, made[1]["bundle_id"])  # unbundled before delivery: still delivered
    port = free_port()
    client = ImmigrationClient(f"http://127.0.0.1:{port}/immigration", 800)
    sent = advance_notices.deliver_due(gw, client)
    assert (sent.delivered, sent.failed) == (0, 2)
    rows = outbox_rows(gw)
    assert all(r.delivered_at is None and r.attempts == 1 and "Connection" in r.last_error for r in rows)
    assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(0, 0)  # backing off
    clock.advance(timedelta(seconds=1))
    assert advance_notices.deliver_due(gw, client).failed == 2  # second attempt, still down
    clock.advance(timedelta(seconds=1))
    assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(0, 0)  # now waits 2 s
    clock.advance(timedelta(seconds=1))
    with simulator(tmp_path, port=port) as url:
        assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(2, 0)
        clock.advance(timedelta(minutes=10))
        assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(0, 0)
        listing = notices(url)
    assert listing["deliveries"] == 2
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made)
    assert [r.attempts for r in outbox_rows(gw)] == [3, 3]
    assert advance_notices.pending(gw) == 0


def test_two_workers_deliver_every_notice_exactly_once(gw, filer, driver, tmp_path):
    made = bundle_some(gw, filer, driver, 30)
    with simulator(tmp_path) as url:
        errors: list[BaseException] = []

        def worker() -> None:
            client = ImmigrationClient(url, 2000)
            try:
                while advance_notices.deliver_due(gw, client, limit=3).delivered:
                    pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        listing = notices(url)
    assert errors == []
    assert listing["deliveries"] == 30  # no notice sent twice, not even as a recognised duplicate
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made)
    assert {r.attempts for r in outbox_rows(gw)} == {1}


@pytest.mark.pg
def test_a_worker_skips_notices_another_worker_holds(gw, filer, driver, tmp_path):
    if gw.engine.dialect.name != "postgresql":
        pytest.skip("SKIP LOCKED is PostgreSQL's; SQLite serialises the claim instead")
    made = bundle_some(gw, filer, driver, 3)
    first = outbox_rows(gw)[0].notice_id
    with simulator(tmp_path) as url, gw.engine.connect() as other:
        other.execute(text("SELECT 1 FROM immigration_outbox WHERE notice_id = :n FOR UPDATE"), {"n": first})
        sent: list[advance_notices.Delivery] = []
        worker = threading.Thread(
            target=lambda: sent.append(advance_notices.deliver_due(gw, ImmigrationClient(url, 2000))),
            daemon=True,
        )
        worker.start()
        worker.join(10)
        other.rollback()  # (a worker that waited for the lock would finish only now, too late)
        assert sent == [advance_notices.Delivery(2, 0)]
        assert advance_notices.deliver_due(gw, ImmigrationClient(url, 2000)) == advance_notices.Delivery(1, 0)
        listing = notices(url)
    assert listing["deliveries"] == 3
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made)


def test_roadcargo_serve_delivers_advance_notices_to_immigration(tmp_path):
    """The composition root: ``roadcargo serve`` runs the outbox worker with the zeep client."""
    from tests.e2e.conftest import start_gateway

    tomorrow = (datetime.now(HONG_KONG) + timedelta(days=1)).date().isoformat()
    with simulator(tmp_path) as sim_url:
        config = f'[immigration]\nurl = "{sim_url}"\ntimeout_ms = 2000\n'
        with start_gateway(tmp_path / "gw", config) as server:
            filer = server.add_party("forwarder", "Forwarder")
            driver = server.add_party("driver", "Driver")
            lodged = httpx.post(
                f"{server.url}/api/v1/consignments",
                json=record(expected_crossing=tomorrow),
                headers={"Authorization": f"Bearer {filer['api_key']}"},
            )
            assert lodged.status_code == 201, lodged.text
            made = httpx.post(
                f"{server.url}/api/v1/bundles",
                json={"vehicle": "XY4321", "control_point": "LMC", "ccrns": [lodged.json()["ccrn"]]},
                headers={"Authorization": f"Bearer {driver['api_key']}"},
            )
            assert made.status_code == 201, made.text
            deadline = time.monotonic() + 15
            while not (listing := notices(sim_url))["notices"]:
                assert time.monotonic() < deadline, "no advance notice reached Immigration"
                time.sleep(0.1)
    (notice,) = listing["notices"]
    assert notice["bundle_id"] == made.json()["bundle_id"] and notice["vehicle"] == "XY4321"
    assert notice["driver_party"] == driver["party_id"] and listing["deliveries"] == 1


# -- advance notices in batches (AdviseBundles) --------------------------------------------------


def test_one_round_sends_its_notices_in_one_request_and_each_is_listed_once(gw, filer, driver, tmp_path):
    made = bundle_some(gw, filer, driver, 12)
    # Every request waits 400 ms: twelve requests would take 4.8 s, one takes a little over 0.4 s.
    with simulator(tmp_path, "--delay-ms", "400") as url:
        started = time.monotonic()
        assert advance_notices.deliver_due(gw, ImmigrationClient(url, 3000)) == advance_notices.Delivery(
            12, 0
        )
        elapsed = time.monotonic() - started
        listing = notices(url)
    assert elapsed < 2.5, elapsed
    assert listing["deliveries"] == 12
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made)
    assert {n["deliveries"] for n in listing["notices"]} == {1}
    assert len({n["notice_id"] for n in listing["notices"]}) == 12
    assert advance_notices.pending(gw) == 0


def test_immigration_down_during_a_batch_loses_no_notice(gw, filer, driver, clock, tmp_path):
    made = bundle_some(gw, filer, driver, 8)
    port = free_port()
    client = ImmigrationClient(f"http://127.0.0.1:{port}/immigration", 800)
    with simulator(tmp_path, port=port):
        client.warm()  # the WSDL is loaded while Immigration is up; it goes down before the batch
    assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(0, 8)
    assert {r.last_error is not None and r.delivered_at is None for r in outbox_rows(gw)} == {True}
    clock.advance(timedelta(seconds=1))
    with simulator(tmp_path, port=port) as url:
        assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(8, 0)
        listing = notices(url)
    assert listing["deliveries"] == 8
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made)
    assert [r.attempts for r in outbox_rows(gw)] == [2] * 8
    assert advance_notices.pending(gw) == 0


def test_immigration_dying_with_a_batch_in_hand_loses_no_notice(gw, filer, driver, clock, tmp_path):
    made = bundle_some(gw, filer, driver, 6)
    port = free_port()
    client = ImmigrationClient(f"http://127.0.0.1:{port}/immigration", 3000)
    sent: list[advance_notices.Delivery] = []
    started: list[subprocess.Popen[bytes]] = []
    with simulator(tmp_path, "--delay-ms", "1500", port=port, started=started):
        client.warm()
        sending = threading.Thread(target=lambda: sent.append(advance_notices.deliver_due(gw, client)))
        sending.start()
        time.sleep(0.5)  # the batch has arrived and waits out the delay: Immigration dies now
        started[0].kill()
        sending.join(10)
    assert sent == [advance_notices.Delivery(0, 6)]
    clock.advance(timedelta(seconds=1))
    with simulator(tmp_path, port=port) as url:
        assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(6, 0)
        listing = notices(url)
    assert listing["deliveries"] == 6 and {n["deliveries"] for n in listing["notices"]} == {1}
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made)
    assert advance_notices.pending(gw) == 0


def test_a_batch_whose_acknowledgement_is_lost_is_sent_again_and_recognised(
    gw, filer, driver, clock, tmp_path
):
    """Immigration records the batch but answers after the gateway gave up: the notices are sent again
    and acknowledged as duplicates; none is recorded twice."""
    made = bundle_some(gw, filer, driver, 5)
    with simulator(tmp_path, "--delay-ms", "600") as url:
        assert advance_notices.deliver_due(gw, ImmigrationClient(url, 300)).failed == 5
        time.sleep(0.6)  # the simulator records the batch once its delay is over
        assert notices(url)["deliveries"] == 5
        clock.advance(timedelta(seconds=1))
        assert advance_notices.deliver_due(gw, ImmigrationClient(url, 3000)) == advance_notices.Delivery(5, 0)
        listing = notices(url)
    assert len(listing["notices"]) == 5 and listing["deliveries"] == 10
    assert {n["deliveries"] for n in listing["notices"]} == {2}
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made)


def _advise_bundles(*notices_xml: bytes) -> bytes:
    return _ENVELOPE % (
        b'<imm:AdviseBundles xmlns:imm="urn:roadcargo:immigration:1">%s</imm:AdviseBundles>'
        % b"".join(notices_xml)
    )


def _notice_xml(notice_id: int, slot_end: str = "2026-12-02T11:00:00+08:00") -> bytes:
    return (
        b"<imm:Notice><imm:NoticeId>%d</imm:NoticeId><imm:BundleId>B0000000001</imm:BundleId>"
        b"<imm:Vehicle>AB1234</imm:Vehicle><imm:DriverParty>12345678</imm:DriverParty>"
        b"<imm:ControlPoint>LMC</imm:ControlPoint><imm:Direction>IMPORT</imm:Direction>"
        b"<imm:SlotStart>2026-12-02T10:30:00+08:00</imm:SlotStart><imm:SlotEnd>%s</imm:SlotEnd></imm:Notice>"
    ) % (notice_id, slot_end.encode())


def _acknowledgements(reply: httpx.Response) -> list[tuple[str, str, str]]:
    assert reply.status_code == 200, reply.text
    ns = {"imm": "urn:roadcargo:immigration:1"}
    return [
        (
            a.findtext("imm:NoticeId", namespaces=ns),
            a.findtext("imm:Accepted", namespaces=ns),
            a.findtext("imm:Duplicate", namespaces=ns),
        )
        for a in etree.fromstring(reply.content).iterfind(".//imm:Acknowledgement", ns)
    ]


def test_a_duplicate_batch_is_acknowledged_as_duplicates_and_nothing_is_doubled(tmp_path):
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    with simulator(tmp_path) as url:
        batch = _advise_bundles(_notice_xml(101), _notice_xml(102), _notice_xml(101))
        first = _acknowledgements(httpx.post(url, content=batch, headers=headers))
        again = _acknowledgements(httpx.post(url, content=batch, headers=headers))
        listing = notices(url)
    # One acknowledgement per notice sent, in order; the repeat inside the batch is a duplicate already.
    assert first == [("101", "true", "false"), ("102", "true", "false"), ("101", "true", "true")]
    assert again == [("101", "true", "true"), ("102", "true", "true"), ("101", "true", "true")]
    assert sorted(n["notice_id"] for n in listing["notices"]) == [101, 102]
    assert {n["notice_id"]: n["deliveries"] for n in listing["notices"]} == {101: 4, 102: 2}
    assert listing["deliveries"] == 6


def test_the_zeep_client_sends_a_batch_again_without_doubling_anything(tmp_path):
    start = datetime(2026, 12, 2, 10, 30, tzinfo=HONG_KONG)
    batch = [
        advance_notices.AdvanceNotice(
            n, "B0000000001", "AB1234", "12345678", "LMC", "IMPORT", start, start + timedelta(minutes=30)
        )
        for n in (7, 8, 9)
    ]
    with simulator(tmp_path) as url:
        client = ImmigrationClient(url, 2000)
        assert client.advise_all(batch) == {}
        assert client.advise_all(batch) == {}  # acknowledged (as duplicates): nothing to retry
        listing = notices(url)
    assert sorted(n["notice_id"] for n in listing["notices"]) == [7, 8, 9]
    assert {n["deliveries"] for n in listing["notices"]} == {2} and listing["deliveries"] == 6


def test_a_notice_refused_on_its_own_is_retried_alone(gw, filer, driver, clock, tmp_path):
    made = bundle_some(gw, filer, driver, 4)
    bad = outbox_rows(gw)[1]
    with gw.engine.begin() as conn:  # a slot that ends as it starts: Immigration refuses that notice only
        conn.execute(
            tables.immigration_outbox.update()
            .where(tables.immigration_outbox.c.notice_id == bad.notice_id)
            .values(slot_end=bad.slot_start)
        )
    with simulator(tmp_path) as url:
        client = ImmigrationClient(url, 2000)
        assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(3, 1)
        rows = {r.notice_id: r for r in outbox_rows(gw)}
        assert rows[bad.notice_id].delivered_at is None
        assert "INVALID_VALUE" in rows[bad.notice_id].last_error and "slot" in rows[bad.notice_id].last_error
        assert rows[bad.notice_id].next_attempt_at == gw.now() + timedelta(seconds=1)
        assert all(r.delivered_at is not None for n, r in rows.items() if n != bad.notice_id)
        clock.advance(timedelta(seconds=1))
        assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(
            0, 1
        )  # refused again, alone
        with gw.engine.begin() as conn:  # corrected: it goes through
            conn.execute(
                tables.immigration_outbox.update()
                .where(tables.immigration_outbox.c.notice_id == bad.notice_id)
                .values(slot_end=bad.slot_end)
            )
        clock.advance(timedelta(seconds=2))
        assert advance_notices.deliver_due(gw, client) == advance_notices.Delivery(1, 0)
        listing = notices(url)
    assert listing["deliveries"] == 4
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made)


def test_a_batch_refused_as_a_whole_is_sent_one_by_one_so_one_bad_notice_holds_up_no_other(
    gw, filer, driver, tmp_path
):
    made = bundle_some(gw, filer, driver, 3)
    bad = outbox_rows(gw)[0]
    with gw.engine.begin() as conn:  # a registration Immigration's schema does not take (no letter O)
        conn.execute(
            tables.immigration_outbox.update()
            .where(tables.immigration_outbox.c.notice_id == bad.notice_id)
            .values(vehicle="OO1234")
        )
    with simulator(tmp_path) as url:
        assert advance_notices.deliver_due(gw, ImmigrationClient(url, 2000)) == advance_notices.Delivery(2, 1)
        listing = notices(url)
    (row,) = [r for r in outbox_rows(gw) if r.delivered_at is None]
    assert row.notice_id == bad.notice_id and "SCHEMA_INVALID" in row.last_error
    assert sorted(n["bundle_id"] for n in listing["notices"]) == sorted(b["bundle_id"] for b in made[1:])


def _wsdl_without_batches(port: int) -> bytes:
    """The WSDL as an Immigration from before ``AdviseBundles`` served it."""
    root = etree.fromstring(immigration_sim.wsdl_for(f"http://127.0.0.1:{port}"))
    for element in list(root.iter()):
        if (element.get("name") or "").startswith("AdviseBundles"):
            element.getparent().remove(element)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def test_a_service_without_the_batch_operation_gets_the_notices_one_by_one(gw, filer, driver):
    sim = immigration_sim.ImmigrationSimulator()
    requests: list[str] = []

    class OldImmigration(_Garbage):
        def do_GET(self) -> None:
            if self.path.endswith(".xsd"):
                self._send(immigration_sim._schema_file("immigration.xsd"))
            else:
                self._send(_wsdl_without_batches(self.server.server_address[1]))

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            requests.append(etree.QName(etree.fromstring(body).find(".//{*}Body")[0]).localname)
            self._send(immigration_sim.handle(sim, body))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OldImmigration)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        made = bundle_some(gw, filer, driver, 3)
        url = f"http://127.0.0.1:{server.server_address[1]}/immigration"
        assert advance_notices.deliver_due(gw, ImmigrationClient(url, 2000)) == advance_notices.Delivery(3, 0)
    finally:
        server.shutdown()
        server.server_close()
    assert requests == ["AdviseBundle"] * 3
    assert sorted(n["bundle_id"] for n in sim.listing()["notices"]) == sorted(b["bundle_id"] for b in made)


def test_the_kiosk_asks_the_real_client_directly_and_still_fails_closed_when_it_is_slow(gw, party, tmp_path):
    """With the zeep client's WSDL loaded, the kiosk calls it in the request's own thread (it keeps to
    timeout_ms itself): a normal answer releases, a slow Immigration gives NOT_READY in time."""
    import dataclasses

    from gateway import clearance
    from gateway.config import ImmigrationConfig
    from tests.border_support import border

    b = border(gw, party)
    with simulator(tmp_path) as quick, simulator(tmp_path, "--delay-ms", "2000") as slow:
        gw.config = dataclasses.replace(gw.config, immigration=ImmigrationConfig(timeout_ms=300))
        for url, vehicle, expected in ((quick, "AB1001", "RELEASE"), (slow, "AB1002", "NOT_READY")):
            client = gw.immigration = ImmigrationClient(url, 300)
            client.warm()
            assert client.bounded()
            b.bundle([b.lodge()], vehicle=vehicle)
            b.wait_lead_time()
            started = time.monotonic()
            out = clearance.decide(gw, b.kiosk, b.arrive(vehicle=vehicle))
            elapsed = time.monotonic() - started
            assert out["decision"] == expected, out
            assert elapsed < 1.2, elapsed
        assert out["reasons"] == ["IMMIGRATION_UNAVAILABLE"]
