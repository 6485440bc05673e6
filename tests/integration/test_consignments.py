"""The lifecycle of design section 5 through the service layer, on SQLite and PostgreSQL."""

import hashlib
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from gateway import consignments, parties, tables
from gateway.context import SYSTEM, store_raw
from gateway.errors import GatewayError
from gateway.identifiers import damm_digit
from tests.factories import record


def codes(exc_info):
    return [p.code for p in exc_info.value.problems]


def count(gw, table, *where):
    with gw.engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(table).where(*where))


def test_lodge_issues_a_valid_ccrn_version_1(gw, party):
    actor, _ = party.add()
    out = consignments.lodge(gw, actor, record())
    view = out.view
    assert out.changed
    assert len(view["ccrn"]) == 12 and damm_digit(view["ccrn"]) == 0
    assert (view["version"], view["status"], view["status_version"]) == (1, "LODGED", 1)
    assert view["filer"] == actor.party_id
    assert view["record"]["items"][0]["hs_code"] == "950300"
    assert consignments.get(gw, actor, view["ccrn"]) == view


def test_same_reference_same_content_returns_the_existing_ccrn(gw, party):
    actor, _ = party.add()
    first = consignments.lodge(gw, actor, record())
    again = consignments.lodge(gw, actor, record())
    assert not again.changed
    assert again.view["ccrn"] == first.view["ccrn"]
    assert count(gw, tables.consignments) == 1


def test_same_reference_other_content_is_duplicate_reference(gw, party):
    actor, _ = party.add()
    consignments.lodge(gw, actor, record())
    with pytest.raises(GatewayError) as err:
        consignments.lodge(gw, actor, record(control_point="MKT"))
    assert codes(err) == ["DUPLICATE_REFERENCE"]
    assert err.value.problems[0].field == "submitter_reference"


def test_references_are_per_filer(gw, party):
    a, _ = party.add(name="A")
    b, _ = party.add(name="B")
    assert (
        consignments.lodge(gw, a, record()).view["ccrn"] != consignments.lodge(gw, b, record()).view["ccrn"]
    )


def test_amend_makes_version_2_and_keeps_history(gw, party):
    actor, _ = party.add()
    ccrn = consignments.lodge(gw, actor, record()).view["ccrn"]
    changed = record()
    changed["items"][0]["package_count"] = 41
    out = consignments.amend(gw, actor, ccrn, changed)
    assert out.changed
    assert (out.view["version"], out.view["status_version"]) == (2, 2)
    history = consignments.history(gw, actor, ccrn)
    assert [h["version"] for h in history] == [1, 2]
    assert history[0]["record"]["items"][0]["package_count"] == 40
    assert history[1]["record"]["items"][0]["package_count"] == 41


def test_identical_amendment_changes_nothing(gw, party):
    actor, _ = party.add()
    ccrn = consignments.lodge(gw, actor, record()).view["ccrn"]
    events_before = count(gw, tables.events)
    out = consignments.amend(gw, actor, ccrn, record())
    assert not out.changed
    assert (out.view["version"], out.view["status_version"]) == (1, 1)
    assert count(gw, tables.events) == events_before
    assert count(gw, tables.consignment_versions) == 1


def test_cancel_then_nothing_more_and_the_reference_is_free_again(gw, party):
    actor, _ = party.add()
    ccrn = consignments.lodge(gw, actor, record()).view["ccrn"]
    out = consignments.cancel(gw, actor, ccrn)
    assert (out.view["status"], out.view["status_version"]) == ("CANCELLED", 2)
    assert not consignments.cancel(gw, actor, ccrn).changed
    with pytest.raises(GatewayError) as err:
        consignments.amend(gw, actor, ccrn, record(control_point="MKT"))
    assert codes(err) == ["INVALID_STATE"]
    relodged = consignments.lodge(gw, actor, record())
    assert relodged.changed and relodged.view["ccrn"] != ccrn


def test_status_version_strictly_increases(gw, party):
    actor, _ = party.add()
    ccrn = consignments.lodge(gw, actor, record()).view["ccrn"]
    seen = [1]
    for n in (41, 42, 43):
        data = record()
        data["items"][0]["package_count"] = n
        seen.append(consignments.amend(gw, actor, ccrn, data).view["status_version"])
    seen.append(consignments.cancel(gw, actor, ccrn).view["status_version"])
    assert seen == sorted(set(seen)) and len(seen) == 5


def test_another_filers_ccrn_is_answered_exactly_like_an_unknown_one(gw, party):
    owner, _ = party.add(name="Owner")
    other, _ = party.add(name="Other")
    ccrn = consignments.lodge(gw, owner, record()).view["ccrn"]
    unknown = "000000000000"
    results = []
    for target in (ccrn, unknown):
        for call in (
            lambda c: consignments.get(gw, other, c),
            lambda c: consignments.amend(gw, other, c, record(control_point="MKT")),
            lambda c: consignments.cancel(gw, other, c),
        ):
            with pytest.raises(GatewayError) as err:
                call(target)
            results.append((err.value.problems[0].code, err.value.problems[0].message.replace(target, "X")))
    assert results[:3] == results[3:]
    assert {r[0] for r in results} == {"NOT_FOUND"}
    assert consignments.get(gw, owner, ccrn)["status"] == "LODGED"


def test_officers_see_every_consignment(gw, party):
    filer, _ = party.add()
    officer, _ = party.add(role="officer", name="Officer")
    ccrn = consignments.lodge(gw, filer, record()).view["ccrn"]
    assert consignments.get(gw, officer, ccrn)["ccrn"] == ccrn
    with pytest.raises(GatewayError) as err:
        consignments.lodge(gw, officer, record())
    assert codes(err) == ["FORBIDDEN"]


def test_wrong_check_digit_is_refused_before_any_lookup(gw, party):
    actor, _ = party.add()
    ccrn = consignments.lodge(gw, actor, record()).view["ccrn"]
    wrong = ccrn[:11] + str((int(ccrn[11]) + 1) % 10)
    with pytest.raises(GatewayError) as err:
        consignments.get(gw, actor, wrong)
    assert codes(err) == ["CCRN_CHECK_DIGIT"]


def test_lodgement_window(gw, party, clock):
    actor, _ = party.add()
    today = clock.now().date().isoformat()  # 2026-12-01, also the date in Hong Kong
    assert consignments.lodge(gw, actor, record(submitter_reference="T", expected_crossing=today)).changed
    for ref, when in (
        ("PAST", "2026-11-30"),
        ("FAR", "2026-12-16"),
        ("EARLIER", "2026-11-30T23:00:00+08:00"),
    ):
        with pytest.raises(GatewayError) as err:
            consignments.lodge(gw, actor, record(submitter_reference=ref, expected_crossing=when))
        assert codes(err) == ["LODGEMENT_WINDOW"], when
    assert consignments.lodge(
        gw, actor, record(submitter_reference="EDGE", expected_crossing="2026-12-15")
    ).changed


def test_a_date_time_later_today_in_utc_can_be_tomorrow_in_hong_kong(gw, party, clock):
    actor, _ = party.add()
    # 2026-11-30T20:00Z is 2026-12-01T04:00 in Hong Kong: today there, so accepted.
    assert consignments.lodge(gw, actor, record(expected_crossing="2026-11-30T20:00:00+00:00")).changed


def test_expiry_after_the_configured_days(gw, party, clock):
    actor, _ = party.add()
    ccrn = consignments.lodge(gw, actor, record(expected_crossing="2026-12-02")).view["ccrn"]
    # The whole day 2026-12-02 (HKT) ends at 2026-12-03 00:00; seven days later is 2026-12-10 00:00.
    clock.advance(timedelta(days=8, hours=13, minutes=59))  # 2026-12-09 23:59 HKT
    assert consignments.expire_due(gw) == 0
    clock.advance(timedelta(minutes=1))
    assert consignments.expire_due(gw) == 1
    view = consignments.get(gw, actor, ccrn)
    assert (view["status"], view["status_version"]) == ("EXPIRED", 2)
    with pytest.raises(GatewayError) as err:
        consignments.amend(gw, actor, ccrn, record(control_point="MKT"))
    assert codes(err) == ["EXPIRED"]


def test_expired_on_read_even_before_the_sweep(gw, party, clock):
    actor, _ = party.add()
    ccrn = consignments.lodge(gw, actor, record()).view["ccrn"]
    clock.advance(timedelta(days=30))
    with pytest.raises(GatewayError) as err:
        consignments.cancel(gw, actor, ccrn)
    assert codes(err) == ["EXPIRED"]
    assert consignments.get(gw, actor, ccrn)["status"] == "EXPIRED"


def test_suspended_party_cannot_lodge_until_reinstated(gw, party):
    actor, key = party.add()
    parties.suspend(gw, SYSTEM, actor.party_id)
    suspended = parties.authenticate(gw, key, "http")
    with pytest.raises(GatewayError) as err:
        consignments.lodge(gw, suspended, record())
    assert codes(err) == ["FORBIDDEN"]
    assert count(gw, tables.consignments) == 0
    parties.reinstate(gw, SYSTEM, actor.party_id)
    assert consignments.lodge(gw, parties.authenticate(gw, key, "http"), record()).changed


def test_every_change_is_audited_with_before_and_after(gw, party):
    actor, _ = party.add()
    ccrn = consignments.lodge(gw, actor, record()).view["ccrn"]
    consignments.amend(gw, actor, ccrn, record(control_point="MKT"))
    consignments.cancel(gw, actor, ccrn)
    with gw.engine.connect() as conn:
        rows = conn.execute(
            select(tables.audit_log)
            .where(tables.audit_log.c.entity_id == ccrn)
            .order_by(tables.audit_log.c.audit_id)
        ).all()
    assert [r.action for r in rows] == ["consignment.lodge", "consignment.amend", "consignment.cancelled"]
    assert all(r.actor == actor.party_id and r.channel == "http" for r in rows)
    amend = rows[1]
    assert json.loads(amend.before)["record"]["control_point"] == "LMC"
    assert json.loads(amend.after)["record"]["control_point"] == "MKT"


def test_batch_keeps_the_good_and_reports_the_bad(gw, party):
    actor, _ = party.add()
    bad = record(submitter_reference="BAD")
    bad["items"][0]["package_count"] = 0
    subs = [
        consignments.Submission("lodge", record(submitter_reference="A")),
        consignments.Submission("lodge", bad),
        consignments.Submission("lodge", record(submitter_reference="B")),
        consignments.Submission("lodge", record(submitter_reference="A")),
        consignments.Submission("lodge", record(submitter_reference="A", control_point="MKT")),
        consignments.Submission("cancel", ccrn="123456789012"),
    ]
    out = consignments.submit(gw, actor, subs)
    assert [type(o).__name__ for o in out] == [
        "Outcome",
        "GatewayError",
        "Outcome",
        "Outcome",
        "GatewayError",
        "GatewayError",
    ]
    assert out[3].view["ccrn"] == out[0].view["ccrn"] and not out[3].changed
    assert out[1].problems[0].field == "items[0].package_count"
    assert out[4].problems[0].code == "DUPLICATE_REFERENCE"
    assert out[5].problems[0].code == "CCRN_CHECK_DIGIT"
    assert count(gw, tables.consignments) == 2


def test_raw_message_is_kept_with_its_sha256(gw, party):
    actor, _ = party.add()
    raw_id = store_raw(gw, actor, "application/json", b'{"x": 1}')
    ccrn = consignments.lodge(gw, actor, record(), raw_id).view["ccrn"]
    with gw.engine.connect() as conn:
        raw = conn.execute(select(tables.raw_messages)).one()
        version = conn.execute(
            select(tables.consignment_versions).where(tables.consignment_versions.c.ccrn == ccrn)
        ).one()
    assert raw.sha256 == hashlib.sha256(b'{"x": 1}').hexdigest()
    assert bytes(raw.body) == b'{"x": 1}'
    assert version.raw_message_id == raw.message_id
