"""Declaration reuse (design sections 5 and 9) on SQLite and PostgreSQL: the prefill from the record and
its crossing, grants, the write-off ledger with partial, repeated and concurrent declarations, and the
deadlines under an injected clock."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from adapters import edifact_channel, xml_channel
from gateway import consignments, declarations, tables
from gateway.errors import GatewayError
from mappings import xml_eci
from tests.border_support import border
from tests.declaration_support import complete, cross
from tests.factories import record
from tests.integration.test_edifact_channel import SENDER, consignment, interchange, message


@pytest.fixture
def b(gw, party):
    return border(gw, party)


def codes(exc: pytest.ExceptionInfo[GatewayError]) -> list[tuple[str, str | None]]:
    return [(p.code, p.field) for p in exc.value.problems]


def status_of(gw, ccrn):
    with gw.engine.connect() as conn:
        return conn.execute(
            select(tables.consignments.c.status, tables.consignments.c.status_version).where(
                tables.consignments.c.ccrn == ccrn
            )
        ).one()


def two_items():
    items = copy.deepcopy(record()["items"])
    second = {
        "package_count": 10,
        "package_type": "PK",
        "package_description": "packages",
        "description": "wooden puzzles",
        "hs_code": "95030090",
        "origin_country": "CN",
    }
    return [*items, second]


# -- prefill ------------------------------------------------------------------------------------------


def test_prefill_holds_the_record_and_its_crossing_and_marks_only_what_is_missing(b, gw):
    ccrn = b.lodge(items=two_items())
    cross(b, [ccrn], vehicle="XY987")
    doc = declarations.prefill(gw, b.filer, ccrn, "import")
    assert doc["kind"] == "IMPORT" and doc["ccrn"] == ccrn and doc["record_version"] == 1
    assert doc["declarant"] == {"party_id": b.filer.party_id, "name": "Forwarder"}
    assert doc["importer"]["name"] == "Harbour Traders Ltd" and doc["importer"]["country"] == "HK"
    assert doc["consignor"]["country"] == "CN" and doc["consignee"]["name"] == "Harbour Traders Ltd"
    assert doc["transport"] == {
        "mode": "ROAD",
        "document_reference": ccrn,
        "vehicle": "XY987",
        "control_point": "LMC",
        "crossed_at": "2026-12-01T10:31:00+08:00",
        "crossing_date": "2026-12-01",
    }
    first, second = doc["lines"]
    assert first["packages"] == {"count": 40, "type": "CT", "description": "cartons"}
    assert first["gross_mass_kg"] == 480.5 and first["value"] == {"amount": "12500.00", "currency": "HKD"}
    assert second["hs_code"] == "95030090" and second["origin_country"] == "CN"
    # Never invented: what the record does not hold is marked, with what the declarant must give.
    assert [m["field"] for m in doc["missing_fields"]] == [
        "importer.id",
        "lines[0].hs_code",
        "lines[0].quantity",
        "lines[1].quantity",
        "lines[1].gross_mass_kg",
        "lines[1].value",
    ]
    assert first["hs_code"] == {
        "missing": True,
        "supply": "the 8-digit Hong Kong HS code (the record gives the subheading 950300)",
    }
    assert "business registration" in doc["importer"]["id"]["supply"]


def test_export_prefill_names_the_exporter_and_the_destination(b, gw):
    data = record(direction="EXPORT")
    data["consignor"], data["consignee"] = data["consignee"], data["consignor"]
    del data["consignee"]["country"]
    ccrn = b.lodge(**{k: v for k, v in data.items() if k != "submitter_reference"})
    cross(b, [ccrn])
    doc = declarations.prefill(gw, b.filer, ccrn)
    assert doc["kind"] == "EXPORT" and doc["exporter"]["name"] == "Harbour Traders Ltd"
    assert "importer" not in doc
    assert doc["destination_country"]["missing"] is True
    with pytest.raises(GatewayError) as exc:
        declarations.prefill(gw, b.filer, ccrn, "import")
    assert codes(exc) == [("INVALID_VALUE", "kind")]


def test_prefill_is_the_same_whichever_channel_lodged_the_record(b, gw, party):
    filer, _key = party.add(role="forwarder", name="Three Channel Forwarder", edi_ids=(SENDER,))
    edi = dataclasses.replace(filer, channel="edifact")
    result = edifact_channel.ingest(gw, edi, interchange([message("1", [consignment(1, "EDI-1")])]))
    assert result.accepted == 1
    (row,) = consignments.list_consignments(gw, filer, reference="EDI-1")
    as_read = consignments.get(gw, filer, row["ccrn"])["record"]
    by_json = consignments.lodge(gw, filer, {**as_read, "submitter_reference": "JSON-1"}).view["ccrn"]
    document = xml_eci.cargo_information(
        [xml_eci.consignment_to_xml("lodge", {**as_read, "submitter_reference": "XML-1"})]
    )
    xml_channel.ingest(gw, dataclasses.replace(filer, channel="xml"), xml_eci.to_bytes(document))
    (by_xml,) = [r["ccrn"] for r in consignments.list_consignments(gw, filer, reference="XML-1")]
    ccrns = [row["ccrn"], by_json, by_xml]
    cross(b, ccrns)

    def without_ccrn(doc):
        doc = copy.deepcopy(doc)
        del doc["ccrn"], doc["transport"]["document_reference"]
        return doc

    docs = [without_ccrn(declarations.prefill(gw, filer, c)) for c in ccrns]
    assert docs[0] == docs[1] == docs[2]
    assert docs[0]["lines"][0]["description"] == "PLASTIC TOY BUILDING BLOCKS"
    assert docs[0]["transport"]["vehicle"] == "AB1234"


def test_no_declaration_before_crossing_and_none_for_transhipment_cargo(b, gw):
    waiting = b.lodge()
    with pytest.raises(GatewayError) as exc:
        declarations.prefill(gw, b.filer, waiting)
    assert codes(exc) == [("NOT_CROSSED", "ccrn")]
    tranship = b.lodge(transhipment={"mode": "LAND_TO_AIR", "air_waybill": "16012345675", "flight": "CX100"})
    cross(b, [tranship], elock_id="EL-1")
    with pytest.raises(GatewayError) as exc:
        declarations.prefill(gw, b.filer, tranship)
    assert codes(exc) == [("INVALID_STATE", "ccrn")]
    plain = b.lodge()
    cross(b, [plain], vehicle="CD5678")
    doc = complete(declarations.prefill(gw, b.filer, plain))
    doc["ccrn"] = doc["transport"]["document_reference"] = waiting
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, doc)
    assert codes(exc) == [("NOT_CROSSED", "ccrn")]
    doc["ccrn"] = doc["transport"]["document_reference"] = tranship
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, doc)
    assert codes(exc) == [("INVALID_STATE", "ccrn")]


# -- access -------------------------------------------------------------------------------------------


def test_another_filer_gets_not_found_and_a_granted_agent_gets_the_declaration(b, gw, party):
    ccrn = b.lodge()
    cross(b, [ccrn])
    other, _ = party.add(role="forwarder", name="Other Forwarder")
    agent, _ = party.add(role="service_provider", name="Declaration Agent")
    for who in (other, agent):
        with pytest.raises(GatewayError) as exc:
            declarations.prefill(gw, who, ccrn)
        assert codes(exc) == [("NOT_FOUND", "ccrn")]
    with pytest.raises(GatewayError) as exc:
        declarations.grant(gw, other, ccrn, agent.party_id)  # only the filer grants
    assert codes(exc) == [("NOT_FOUND", "ccrn")]
    assert declarations.grant(gw, b.filer, ccrn, agent.party_id)["created"] is True
    assert declarations.grant(gw, b.filer, ccrn, agent.party_id)["created"] is False
    doc = declarations.prefill(gw, agent, ccrn)
    assert doc["declarant"] == {"party_id": agent.party_id, "name": "Declaration Agent"}
    lodged = declarations.lodge(gw, agent, complete(doc, packages=[40], mass=[480.5]))
    assert lodged["fully_declared"] is True
    with pytest.raises(GatewayError) as exc:
        declarations.prefill(gw, other, ccrn)
    assert codes(exc) == [("NOT_FOUND", "ccrn")]
    with pytest.raises(GatewayError) as exc:
        declarations.grant(gw, b.filer, ccrn, b.driver.party_id)
    assert codes(exc) == [("INVALID_VALUE", "party")]
    with pytest.raises(GatewayError) as exc:
        declarations.grant(gw, b.filer, ccrn, "99999999")
    assert codes(exc) == [("NOT_FOUND", "party")]
    with pytest.raises(GatewayError) as exc:
        declarations.prefill(gw, b.driver, ccrn)
    assert codes(exc)[0][0] == "FORBIDDEN"
    with gw.engine.connect() as conn:
        actions = conn.scalars(
            select(tables.audit_log.c.action).where(tables.audit_log.c.entity_id == ccrn)
        ).all()
    assert "declaration.grant" in actions


# -- the ledger ---------------------------------------------------------------------------------------


def test_two_partial_declarations_write_off_the_ledger_and_the_consignment_becomes_declared(b, gw):
    ccrn = b.lodge(items=two_items())
    cross(b, [ccrn])
    before = status_of(gw, ccrn)
    prefilled = declarations.prefill(gw, b.filer, ccrn)
    first = declarations.lodge(gw, b.filer, complete(prefilled, only=[0], packages=[25], mass=[300]))
    assert first["fully_declared"] is False and first["status"] == "CROSSED"
    assert first["declaration_number"].startswith("TD261201") and len(first["declaration_number"]) == 15
    assert first["ledger"][0] == {
        "item": 1,
        "packages": 40,
        "packages_declared": 25,
        "packages_remaining": 15,
        "gross_mass_kg": 480.5,
        "gross_mass_declared_kg": 300,
    }
    assert first["ledger"][1]["packages_declared"] == 0
    assert status_of(gw, ccrn) == before  # nothing changes status until all is declared
    second = declarations.lodge(gw, b.filer, complete(prefilled, packages=[15, 10], mass=[180.5, 55]))
    assert second["fully_declared"] is True and second["status"] == "DECLARED"
    assert second["declaration_number"] != first["declaration_number"]
    after = status_of(gw, ccrn)
    assert after.status == "DECLARED" and after.status_version == before.status_version + 1
    listed = declarations.declarations_of(gw, b.filer, ccrn)
    assert [d["packages"] for d in listed["declarations"]] == [25, 25]
    assert [r["packages_remaining"] for r in listed["ledger"]] == [0, 0]
    with gw.engine.connect() as conn:
        event = conn.execute(
            select(tables.events).where(tables.events.c.ccrn == ccrn).order_by(tables.events.c.cursor.desc())
        ).first()
        audits = conn.scalars(
            select(tables.audit_log.c.action).where(tables.audit_log.c.action.like("%declar%"))
        ).all()
    assert event.type == "DECLARED" and event.status_version == after.status_version
    assert json.loads(event.data)["declaration_number"] == second["declaration_number"]
    assert sorted(audits) == ["consignment.declared", "declaration.lodge", "declaration.lodge"]
    stored = declarations.get_declaration(gw, b.filer, first["declaration_number"])
    assert stored["document"]["lines"][0]["packages"]["count"] == 25


def test_over_declaration_is_refused_and_changes_nothing(b, gw):
    ccrn = b.lodge(items=two_items())
    cross(b, [ccrn])
    prefilled = declarations.prefill(gw, b.filer, ccrn)
    declarations.lodge(gw, b.filer, complete(prefilled, only=[0], packages=[30], mass=[400]))
    doc = complete(prefilled, packages=[11, 10], mass=[80.5, 5])
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, doc)
    assert codes(exc) == [("OVER_DECLARATION", "lines[0].packages.count")]
    assert "only 10 of 40 remain" in exc.value.problems[0].message
    doc = complete(prefilled, packages=[10, 10], mass=[80.6, 5])
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, doc)
    assert codes(exc) == [("OVER_DECLARATION", "lines[0].gross_mass_kg")]
    # Two lines of one item count together.
    doc = complete(prefilled, only=[0, 0], packages=[6, 6], mass=[1, 1])
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, doc)
    assert codes(exc) == [("OVER_DECLARATION", "lines[0].packages.count")]
    ledger = declarations.declarations_of(gw, b.filer, ccrn)["ledger"]
    assert [(r["packages_declared"], r["gross_mass_declared_kg"]) for r in ledger] == [(30, 400), (0, 0)]
    declarations.lodge(gw, b.filer, complete(prefilled, packages=[10, 10], mass=[80.5, 5]))
    with pytest.raises(GatewayError) as exc:  # declared in full: nothing is left
        declarations.lodge(gw, b.filer, complete(prefilled, only=[1], packages=[1]))
    assert codes(exc) == [("OVER_DECLARATION", "lines[0].packages.count")]


def test_a_completed_declaration_is_validated_and_missing_fields_are_named(b, gw):
    ccrn = b.lodge()
    cross(b, [ccrn])
    prefilled = declarations.prefill(gw, b.filer, ccrn)
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, prefilled)
    assert codes(exc) == [
        ("MISSING_FIELD", "importer.id"),
        ("MISSING_FIELD", "lines[0].hs_code"),
        ("MISSING_FIELD", "lines[0].quantity"),
    ]
    assert exc.value.problems[1].message.startswith("still missing: the 8-digit Hong Kong HS code")
    doc = complete(prefilled)
    doc["lines"][0]["hs_code"] = "950300"
    doc["lines"][0]["quantity"] = {"amount": "0", "unit": "XXX"}
    doc["lines"][0]["item"] = 2
    del doc["lines"][0]["value"]
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, doc)
    assert codes(exc) == [
        ("INVALID_VALUE", "lines[0].hs_code"),
        ("INVALID_VALUE", "lines[0].quantity.amount"),
        ("INVALID_CODE", "lines[0].quantity.unit"),
        ("MISSING_FIELD", "lines[0].value"),
    ]
    doc = complete(prefilled)
    doc["lines"][0]["item"] = 2
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, doc)
    assert codes(exc) == [("INVALID_VALUE", "lines[0].item")]
    doc = complete(prefilled)
    doc["declarant"]["party_id"] = b.driver.party_id
    with pytest.raises(GatewayError) as exc:
        declarations.lodge(gw, b.filer, doc)
    assert codes(exc) == [("INVALID_VALUE", "declarant.party_id")]
    assert declarations.declarations_of(gw, b.filer, ccrn)["declarations"] == []


def test_concurrent_declarations_never_declare_more_than_the_record_holds(b, gw):
    ccrn = b.lodge()  # 40 cartons, 480.5 kg
    cross(b, [ccrn])
    doc = complete(declarations.prefill(gw, b.filer, ccrn), packages=[3], mass=[10])
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def declare() -> None:
        start.wait()
        try:
            declarations.lodge(gw, b.filer, doc)
            result = "ok"
        except GatewayError as exc:
            result = exc.problems[0].code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=declare) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(outcomes)) == ["OVER_DECLARATION", "ok"]
    assert outcomes.count("ok") == 13  # 13 x 3 = 39 of 40 cartons; a 14th would be 42
    (row,) = declarations.declarations_of(gw, b.filer, ccrn)["ledger"]
    assert row["packages_declared"] == 39 and row["gross_mass_declared_kg"] == 130
    last = complete(declarations.prefill(gw, b.filer, ccrn), packages=[1], mass=[1])
    assert declarations.lodge(gw, b.filer, last)["status"] == "DECLARED"


# -- deadlines ----------------------------------------------------------------------------------------


def test_overdue_after_the_deadline_and_due_soon_within_48_hours(b, gw, party, clock):
    undeclared, declared, partial = b.lodge(), b.lodge(), b.lodge()
    tranship = b.lodge(transhipment={"mode": "LAND_TO_AIR", "air_waybill": "16012345675"})
    cross(b, [undeclared, declared, partial, tranship], elock_id="EL-2")
    crossed = clock.now()
    declarations.lodge(
        gw, b.filer, complete(declarations.prefill(gw, b.filer, declared), packages=[40], mass=[1])
    )
    declarations.lodge(
        gw, b.filer, complete(declarations.prefill(gw, b.filer, partial), packages=[5], mass=[1])
    )
    other, _ = party.add(role="shipper", name="Someone Else")

    def listed(who):
        out = declarations.overdue(gw, who)
        return [e["ccrn"] for e in out["overdue"]], [e["ccrn"] for e in out["due_soon"]]

    clock.advance(timedelta(days=11, hours=23))
    assert listed(b.officer) == ([], [])
    clock.advance(timedelta(hours=2))  # 12 days 1 hour: due within 48 hours
    assert listed(b.officer) == ([], sorted([undeclared, partial], key=lambda c: c))
    clock.at = crossed + timedelta(days=14)
    late, soon = listed(b.officer)
    assert sorted(late) == sorted([undeclared, partial]) and soon == []
    entry = next(e for e in declarations.overdue(gw, b.filer)["overdue"] if e["ccrn"] == partial)
    assert entry["packages_declared"] == 5 and entry["packages"] == 40
    assert entry["due_at"] == "2026-12-15T10:31:00+08:00"
    assert listed(other) == ([], [])  # filers see their own only
    with pytest.raises(GatewayError) as exc:
        declarations.overdue(gw, b.driver)
    assert codes(exc)[0][0] == "FORBIDDEN"
    short = dataclasses.replace(gw.config.rules, declaration_deadline_days=20)
    gw.config = dataclasses.replace(gw.config, rules=short)
    assert listed(b.officer) == ([], [])  # the deadline is configured


# -- reuse in bulk --------------------------------------------------------------------------------------


def test_cli_exports_the_prefilled_declarations_of_a_period(b, gw, db_url, tmp_path, party):
    import subprocess
    import sys
    from pathlib import Path

    from lxml import etree

    from mappings import declaration_xml
    from mappings.edifact import structure

    roadcargo = str(Path(sys.executable).with_name("roadcargo"))
    first, second = b.lodge(), b.lodge()
    cross(b, [first, second])
    done = b.lodge()
    cross(b, [done], vehicle="CD5678")
    declarations.lodge(
        gw, b.filer, complete(declarations.prefill(gw, b.filer, done), packages=[40], mass=[1])
    )
    xsd = etree.XMLSchema(
        etree.parse(str(Path(declaration_xml.__file__).parents[1] / "schemas/declaration.xsd"))
    )

    def export(form: str, *extra: str) -> subprocess.CompletedProcess[str]:
        out = tmp_path / form
        return subprocess.run(
            [
                roadcargo,
                "declarations",
                "export",
                "--db",
                db_url,
                "--party",
                b.filer.party_id,
                "--crossed-since",
                "2026-12-01",
                "--format",
                form,
                "--out",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    for form, suffix in (("json", "json"), ("xml", "xml"), ("edifact", "edi")):
        result = export(form)
        assert result.returncode == 0, result.stderr
        files = sorted((tmp_path / form).iterdir())
        assert [f.name for f in files] == sorted(f"declaration-{c}.{suffix}" for c in (first, second))
        for f in files:
            if form == "json":
                doc = json.loads(f.read_text())
                expected = declarations.prefill(gw, b.filer, doc["ccrn"])
                assert {k: v for k, v in doc.items() if k != "prepared_at"} == {
                    k: v for k, v in expected.items() if k != "prepared_at"
                }
            elif form == "xml":
                assert xsd.validate(etree.parse(str(f))), xsd.error_log
            else:
                assert structure.validate_interchange(f.read_bytes()) == []
    assert "2 prefilled declarations" in export("json").stdout
    assert "3 prefilled declarations" in export("json", "--include-declared").stdout
    later = subprocess.run(
        [
            roadcargo,
            "declarations",
            "export",
            "--db",
            db_url,
            "--party",
            b.filer.party_id,
            "--crossed-since",
            "2026-12-02",
            "--out",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert later.returncode == 0 and "0 prefilled declarations" in later.stdout
    stranger, _ = party.add(name="Stranger")
    other = subprocess.run(
        [
            roadcargo,
            "declarations",
            "export",
            "--db",
            db_url,
            "--party",
            stranger.party_id,
            "--crossed-since",
            "2026-12-01",
            "--out",
            str(tmp_path / "stranger"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0 and list((tmp_path / "stranger").iterdir()) == []
    bad = subprocess.run(
        [
            roadcargo,
            "declarations",
            "export",
            "--db",
            db_url,
            "--party",
            b.filer.party_id,
            "--crossed-since",
            "yesterday",
            "--out",
            str(tmp_path / "bad"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "INVALID_VALUE (crossed_since)" in bad.stderr
