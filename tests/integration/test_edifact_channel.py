"""The EDIFACT channel end to end: CUSCAR interchanges posted over HTTP and ingested with the CLI, on
SQLite and PostgreSQL, answered with CONTRL and CUSRES."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydifact.parser import Parser
from pydifact.segments import Segment
from sqlalchemy import func, select
from starlette.testclient import TestClient

from adapters import edifact_channel
from gateway import consignments, parties, tables
from gateway.app import create_app
from gateway.clock import HONG_KONG
from gateway.context import SYSTEM, Gateway, store_raw_stream
from gateway.errors import GatewayError
from gateway.identifiers import parse_ccrn
from mappings.edifact import reading, structure, syntax

SENDER = "FWDEDI01"
CROSSING = "20261202"  # the day after the fixed clock's today
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = Path("/work/shared/samples/edifact")


# -- building interchanges -------------------------------------------------------------------------


def consignment(
    seq: int, reference: str, *, ccrn: str | None = None, items: int = 1, **bad: str
) -> list[str]:
    """One CNI group after the guide; ``bad`` replaces a segment by its tag (e.g. GID=...)."""
    lines = [
        f"CNI+{seq}+{reference}",
        f"RFF+XC:{ccrn}" if ccrn else f"RFF+CMR:{reference}",
        "LOC+9+CNSZX",
        "LOC+11+HKHKG",
        "LOC+27+CN",
        "NAD+CZ+++SHENZHEN BRIGHT TOYS MANUFACTURING:CO LTD+18 INDUSTRIAL AVENUE+SHENZHEN++518000+CN",
        "NAD+CN+++HARBOUR TRADERS LTD+2 HARBOUR ROAD, WAN CHAI+HONG KONG+++HK",
    ]
    for n in range(1, items + 1):
        lines += [
            f"GID+{n}+40:CT::6:CARTONS",
            "FTX+AAA+++PLASTIC TOY BUILDING BLOCKS",
            "MEA+AAE+G+KGM:480.5",
            "MOA+40:12500.00:HKD",
            "CST++950300",
        ]
    for tag, line in bad.items():
        lines = [line if existing.startswith(tag) else existing for existing in lines]
    return lines


def message(
    ref: str,
    groups: list[list[str]],
    function: str = "9",
    doc: str = "MAN0001",
    kind: str = "CUSCAR:D:96B:UN",
    crossing: str = CROSSING,
) -> list[str]:
    body = [
        f"UNH+{ref}+{kind}",
        f"BGM+85+{doc}+{function}",
        "DTM+137:202612011000:203",
        "TDT+20++3+++++AB1234",
        "LOC+41+LMC",
        f"DTM+132:{crossing}:102",
        "GIS+23",
    ]
    for group in groups:
        body += group
    return [*body, f"UNT+{len(body) + 1}+{ref}"]


def interchange(
    messages: list[list[str]],
    ref: str = "IC0001",
    *,
    sender: str = SENDER,
    recipient: str = "HKCUSTOMS",
    syntax_id: str = "UNOC:3",
    unz: int | None = None,
) -> bytes:
    lines = [f"UNB+{syntax_id}+{sender}:ZZZ+{recipient}:ZZZ+261201:1000+{ref}"]
    for m in messages:
        lines += m
    lines.append(f"UNZ+{len(messages) if unz is None else unz}+{ref}")
    charset = "utf-8" if "UNOY" in syntax_id or "UNOW" in syntax_id else "latin-1"
    return ("UNA:+.? '" + "'".join(lines) + "'").encode(charset)


@dataclass
class Replies:
    contrl: list[Segment]
    cusres: list[Segment]

    def tag(self, which: str, tag: str) -> list[Segment]:
        return [s for s in getattr(self, which) if s.tag == tag]


def split_replies(body: bytes) -> Replies:
    """The HTTP answer is the CONTRL interchange followed by the CUSRES interchange; every reply is
    checked against the D.96B directory (CUSRES) and the syntax's CONTRL structure on the way."""
    second = body.find(b"UNA", 3)
    contrl, cusres = (body, b"") if second < 0 else (body[:second], body[second:])
    for reply in (contrl, cusres):
        if reply:
            assert structure.validate_interchange(reply) == [], reply[:300]
    return Replies(_segments(contrl), _segments(cusres) if cusres else [])


def _segments(data: bytes) -> list[Segment]:
    return [p.segment for p in syntax.tokenize(data)]


def ccrns_of(replies: Replies) -> dict[str, str]:
    """DOC+730 reference -> CCRN, from the CUSRES."""
    out, current = {}, None
    for s in replies.cusres:
        if s.tag == "DOC":
            current = s.elements[1] if len(s.elements) > 1 else ""
        elif s.tag == "RFF" and s.elements[0][0] == "XC":
            out[current] = s.elements[0][1]
    return out


def errors_of(replies: Replies) -> dict[str, list[tuple[str, str]]]:
    """DOC+730 reference -> [(ERC code, FTX text)]."""
    out: dict[str, list[tuple[str, str]]] = {}
    current, code = None, None
    for s in replies.cusres:
        if s.tag == "DOC":
            current = s.elements[1] if len(s.elements) > 1 else ""
        elif s.tag == "ERC":
            code = s.elements[0][0] if isinstance(s.elements[0], list) else s.elements[0]
        elif s.tag == "FTX" and s.elements[0] == "AAO":
            text = s.elements[3]
            out.setdefault(current, []).append((code, "".join(text) if isinstance(text, list) else text))
    return out


def uci(replies: Replies) -> Segment:
    (segment,) = replies.tag("contrl", "UCI")
    return segment


def count(gw: Gateway) -> int:
    with gw.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(tables.consignments)) or 0)


@pytest.fixture
def filer(party):
    actor, key = party.add(role="forwarder", name="EDI Forwarder", edi_ids=(SENDER,))
    return actor, key


@pytest.fixture
def client(gw):
    return TestClient(create_app(gw))


def post(client, filer, body: bytes):
    return client.post(
        "/api/v1/edifact",
        content=body,
        headers={"Authorization": f"Bearer {filer[1]}", "Content-Type": "application/EDIFACT"},
    )


# -- the happy path --------------------------------------------------------------------------------


def test_good_interchange_gets_contrl_acceptance_and_cusres_with_ccrns(gw, client, filer):
    body = interchange([message("M1", [consignment(1, "CMR-1"), consignment(2, "CMR-2", items=3)])])
    response = post(client, filer, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/EDIFACT")
    replies = split_replies(response.content)
    assert replies.contrl[1].elements[1] == ["CONTRL", "D", "3", "UN"]
    assert uci(replies).elements[3] == "7"
    assert [s.elements[2] for s in replies.tag("contrl", "UCM")] == ["7"]
    assert replies.tag("cusres", "BGM")[0].elements[0] == "962"
    assert replies.tag("cusres", "RFF")[0].elements[0] == ["ACW", "MAN0001"]
    found = ccrns_of(replies)
    assert set(found) == {"CMR-1", "CMR-2"}
    for reference, ccrn in found.items():
        assert parse_ccrn(ccrn) == ccrn
        view = consignments.get(gw, filer[0], ccrn)
        assert view["submitter_reference"] == reference
    assert len(consignments.get(gw, filer[0], found["CMR-2"])["record"]["items"]) == 3


def test_mixed_good_and_bad_consignments_get_ccrns_and_precise_errors(gw, client, filer):
    groups = [
        consignment(1, "GOOD-1"),
        consignment(2, "BAD-TYPE", GID="GID+1+40:XX::6:CARTONS"),
        consignment(3, "BAD-COUNT", GID="GID+1+0:CT::6:CARTONS"),
        consignment(4, "NO-CONSIGNEE", **{"NAD+CN": "NAD+CN"}),
        consignment(5, "GOOD-2"),
    ]
    response = post(client, filer, interchange([message("M1", groups)]))
    replies = split_replies(response.content)
    assert set(ccrns_of(replies)) == {"GOOD-1", "GOOD-2"}
    errors = errors_of(replies)
    assert errors["BAD-TYPE"] == [
        (
            "E003",
            "INVALID_CODE: items[0].package_type 'XX' is not a UN/ECE Recommendation 21 package type code",
        )
    ]
    assert errors["BAD-COUNT"][0][0] == "E002"
    assert "items[0].package_count" in errors["BAD-COUNT"][0][1]
    assert errors["NO-CONSIGNEE"] == [("E001", "MISSING_FIELD: consignee is required")]
    # ERP points at the goods item and the GID segment it came from
    erps = replies.tag("cusres", "ERP")
    assert erps[0].elements[0] == ["2", "1"] and erps[0].elements[1][0] == "GID"
    assert count(gw) == 2


def test_amend_and_cancel_by_rff_xc(gw, client, filer):
    first = split_replies(
        post(client, filer, interchange([message("M1", [consignment(1, "CMR-A")])])).content
    )
    ccrn = ccrns_of(first)["CMR-A"]
    changed = consignment(1, "CMR-A", ccrn=ccrn, FTX="FTX+AAA+++WOODEN TOY TRAINS")
    amended = split_replies(
        post(client, filer, interchange([message("M2", [changed], function="5")], ref="IC0002")).content
    )
    assert ccrns_of(amended) == {"CMR-A": ccrn}
    view = consignments.get(gw, filer[0], ccrn)
    assert view["version"] == 2
    assert view["record"]["items"][0]["description"] == "WOODEN TOY TRAINS"
    bad_digit = ccrn[:-1] + str((int(ccrn[-1]) + 1) % 10)
    cancel = [consignment(1, "CMR-A", ccrn=ccrn), consignment(2, "CMR-X", ccrn=bad_digit)]
    cancelled = split_replies(
        post(client, filer, interchange([message("M3", cancel, function="1")], ref="IC0003")).content
    )
    assert ccrns_of(cancelled) == {"CMR-A": ccrn}
    assert errors_of(cancelled)["CMR-X"][0][0] == "E010"  # CCRN_CHECK_DIGIT, before any lookup
    assert consignments.get(gw, filer[0], ccrn)["status"] == "CANCELLED"


def test_replay_creates_nothing_and_returns_the_same_replies(gw, client, filer):
    body = interchange([message("M1", [consignment(1, "CMR-1"), consignment(2, "CMR-2")])])
    first = post(client, filer, body)
    again = post(client, filer, body)
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers["X-Roadcargo-Replayed"] == "true"
    assert count(gw) == 2


def test_same_reference_other_content_is_rejected_as_duplicate(gw, client, filer):
    post(client, filer, interchange([message("M1", [consignment(1, "CMR-1")])]))
    other = post(client, filer, interchange([message("M1", [consignment(1, "CMR-OTHER")])]))
    assert other.status_code == 200
    assert other.headers["X-Roadcargo-Errors"] == "DUPLICATE_INTERCHANGE"
    replies = split_replies(other.content)
    assert uci(replies).elements[3:5] == ["4", "26"]
    assert replies.cusres == []
    assert count(gw) == 1


def test_sender_not_the_callers_is_403(gw, client, filer, party):
    party.add(role="forwarder", name="Someone Else", edi_ids=("OTHERID",))
    response = post(client, filer, interchange([message("M1", [consignment(1, "CMR-1")])], sender="OTHERID"))
    assert response.status_code == 403
    assert response.json()["errors"][0]["code"] == "SENDER_MISMATCH"
    assert count(gw) == 0


# -- bad input: CONTRL rejections, never a 500, good messages kept ---------------------------------


def test_wrong_unt_count_rejects_that_message_only(gw, client, filer):
    bad = message("M2", [consignment(1, "CMR-2")])
    bad[-1] = "UNT+99+M2"
    body = interchange([message("M1", [consignment(1, "CMR-1")]), bad])
    replies = split_replies(post(client, filer, body).content)
    ucms = replies.tag("contrl", "UCM")
    assert [u.elements[2] for u in ucms] == ["7", "4"]
    assert ucms[1].elements[3] == "29"
    assert set(ccrns_of(replies)) == {"CMR-1"}
    assert count(gw) == 1


def test_wrong_unz_count_is_reported_and_good_messages_kept(gw, client, filer):
    body = interchange([message("M1", [consignment(1, "CMR-1")])], unz=5)
    replies = split_replies(post(client, filer, body).content)
    assert uci(replies).elements[4:6] == ["29", "UNZ"]
    assert set(ccrns_of(replies)) == {"CMR-1"}


def test_missing_unz_and_truncated_file_keep_the_complete_messages(gw, client, filer):
    body = interchange([message("M1", [consignment(1, "CMR-1")]), message("M2", [consignment(1, "CMR-2")])])
    no_unz = body[: body.rfind(b"UNZ")]
    replies = split_replies(post(client, filer, no_unz).content)
    assert uci(replies).elements[4:6] == ["13", "UNZ"]
    assert set(ccrns_of(replies)) == {"CMR-1", "CMR-2"}
    truncated = interchange(
        [message("M1", [consignment(1, "CMR-3")]), message("M2", [consignment(1, "CMR-4")])], ref="IC0002"
    )
    cut = truncated[: truncated.find(b"CNI+1+CMR-4") + 8]
    replies = split_replies(post(client, filer, cut).content)
    assert uci(replies).elements[3:5] == ["7", "6"]  # acknowledged as far as it goes: segment missing
    assert set(ccrns_of(replies)) == {"CMR-3"}
    assert count(gw) == 3


@pytest.mark.parametrize("body", [b"", b"   \r\n", b"\x00\xff\xfe garbage \x01", b"UNH+1+CUSCAR:D:96B:UN'"])
def test_no_readable_unb_is_a_clear_400(gw, client, filer, body):
    response = post(client, filer, body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "MALFORMED"


def test_unknown_message_type_and_directory_are_rejected_in_the_contrl(gw, client, filer):
    body = interchange(
        [
            message("M1", [consignment(1, "CMR-1")], kind="IFTMIN:D:96B:UN"),
            message("M2", [consignment(1, "CMR-2")], kind="CUSCAR:D:99B:UN"),
            message("M3", [consignment(1, "CMR-3")]),
        ]
    )
    replies = split_replies(post(client, filer, body).content)
    ucms = replies.tag("contrl", "UCM")
    assert [(u.elements[2], u.elements[3] if len(u.elements) > 3 else None) for u in ucms] == [
        ("4", "14"),
        ("4", "3"),
        ("7", None),
    ]
    assert set(ccrns_of(replies)) == {"CMR-3"}


def test_unoy_under_syntax_3_is_rejected(gw, client, filer):
    body = interchange([message("M1", [consignment(1, "CMR-1")])], syntax_id="UNOY:3")
    response = post(client, filer, body)
    assert response.status_code == 200
    replies = split_replies(response.content)
    assert uci(replies).elements[3:5] == ["4", "2"]
    assert count(gw) == 0


def test_wrong_recipient_is_rejected(gw, client, filer):
    body = interchange([message("M1", [consignment(1, "CMR-1")])], recipient="SOMEONEELSE")
    replies = split_replies(post(client, filer, body).content)
    assert uci(replies).elements[3:5] == ["4", "7"]
    assert count(gw) == 0


def test_syntax_4_unoy_with_chinese_text_gets_a_syntax_4_contrl(gw, client, filer):
    group = consignment(
        1, "CMR-ZH", **{"NAD+CZ": "NAD+CZ+++深圳光明玩具制造有限公司+宝安区工业大道18号+深圳++518000+CN"}
    )
    body = interchange([message("M1", [group])], syntax_id="UNOY:4")
    replies = split_replies(post(client, filer, body).content)
    assert replies.contrl[1].elements[1] == ["CONTRL", "4", "1", "UN"]
    ccrn = ccrns_of(replies)["CMR-ZH"]
    assert consignments.get(gw, filer[0], ccrn)["record"]["consignor"]["name"] == "深圳光明玩具制造有限公司"


def test_structure_error_rejects_the_message_with_its_position(gw, client, filer):
    groups = [consignment(1, "CMR-1")]
    groups[0] = [line for line in groups[0] if not line.startswith("GID")]  # SG14 is mandatory
    replies = split_replies(post(client, filer, interchange([message("M1", groups)])).content)
    (ucm,) = replies.tag("contrl", "UCM")
    assert ucm.elements[2] == "4"
    assert replies.tag("contrl", "UCS")
    assert count(gw) == 0


def test_characters_outside_the_declared_set_reject_the_message(gw, client, filer):
    lower = consignment(1, "CMR-2", FTX="FTX+AAA+++plastic toys")  # lower case is not UNOA
    bad_type = consignment(2, "CMR-3", GID="GID+1+40:XX::6:CARTONS")
    body = interchange(
        [message("M1", [consignment(1, "CMR-1"), bad_type]), message("M2", [lower])], syntax_id="UNOA:3"
    )
    replies = split_replies(post(client, filer, body).content)  # valid UNOA text in the CUSRES too
    assert errors_of(replies)["CMR-3"][0][1].startswith("INVALID CODE: ITEMS(0).PACKAGE TYPE 'XX'")
    ucms = replies.tag("contrl", "UCM")
    assert [u.elements[2] for u in ucms] == ["7", "4"]
    (ucd,) = replies.tag("contrl", "UCD")
    assert ucd.elements[0] == "21"
    assert set(ccrns_of(replies)) == {"CMR-1"}


def test_messages_in_functional_groups_are_acknowledged_per_group(gw, client, filer):
    body = interchange([message("M1", [consignment(1, "CMR-1")])])
    body = body.replace(b"UNH+M1", b"UNG+CUSCAR+FWDEDI01+HKCUSTOMS+261201:1000+G1+UN+D:96B'UNH+M1")
    body = body.replace(b"UNZ+1", b"UNE+1+G1'UNZ+1")
    replies = split_replies(post(client, filer, body).content)
    (ucf,) = replies.tag("contrl", "UCF")
    assert ucf.elements[0] == "G1" and ucf.elements[3] == "7"
    assert set(ccrns_of(replies)) == {"CMR-1"}


def test_a_nul_byte_in_the_sender_is_a_sender_mismatch_not_a_crash(gw, filer):
    """Found by the fuzz test below: PostgreSQL text cannot hold NUL, and the look-up failed."""
    body = interchange([message("M1", [consignment(1, "F-1")])]).replace(b"FWDEDI01", b"F\x00WDEDI01", 1)
    actor = dataclasses.replace(filer[0], channel="edifact")
    with pytest.raises(GatewayError) as caught:
        edifact_channel.ingest(gw, actor, body)
    assert caught.value.problems[0].code == "SENDER_MISMATCH"


def test_a_damaged_message_identifier_is_echoed_within_the_contrl_lengths(gw, filer):
    """Found by the fuzz test below: a UNH whose agency (0051, an..2) and type (0065, an..6) came in too
    long was echoed as it came, and the CONTRL rejecting it was itself invalid."""
    body = interchange([message("M1", [consignment(1, "F-1")]), message("M2", [consignment(1, "F-2")])])
    body = body.replace(b"UNH+M1+CUSCAR:D:96B:UN'", b"UNH+M1+CUSCARXX:D:96B:UNxs'", 1)
    actor = dataclasses.replace(filer[0], channel="edifact")
    result = edifact_channel.ingest(gw, actor, body)
    assert structure.validate_interchange(result.contrl) == []
    assert b"UCM+M1+CUSCAR:D:96B:UN+4" in result.contrl  # rejected, its identifier cut to length
    assert b"UCM+M2+CUSCAR:D:96B:UN+7" in result.contrl  # the other message is acknowledged


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_damaged_interchanges_never_crash_and_always_get_a_valid_contrl(gw, filer, data):
    """Bytes deleted, replaced or inserted anywhere, or the file cut short: the answer is a valid CONTRL
    (or MALFORMED when no UNB is left to address one), never another exception."""
    body = bytearray(
        interchange([message("M1", [consignment(1, "F-1")]), message("M2", [consignment(1, "F-2")])])
    )
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body) - 1))
        kind = data.draw(st.sampled_from(["delete", "replace", "insert", "truncate"]))
        byte = data.draw(st.binary(min_size=1, max_size=3))
        if kind == "delete":
            del body[at]
        elif kind == "replace":
            body[at : at + len(byte)] = byte
        elif kind == "insert":
            body[at:at] = byte
        else:
            del body[at:]
        if not body:
            break
    actor = dataclasses.replace(filer[0], channel="edifact")
    try:
        result = edifact_channel.ingest(gw, actor, bytes(body))
    except GatewayError as exc:
        assert exc.problems[0].code in ("MALFORMED", "SENDER_MISMATCH")
        return
    assert structure.validate_interchange(result.contrl) == []
    if result.cusres is not None:
        assert structure.validate_interchange(result.cusres) == []


# -- replies are valid and look like real ones ----------------------------------------------------


def test_replies_are_valid_against_the_directory_and_shaped_like_the_samples(gw, client, filer):
    groups = [consignment(1, "GOOD-1"), consignment(2, "BAD-1", GID="GID+1+40:XX::6:CARTONS")]
    body = post(client, filer, interchange([message("M1", groups)])).content
    second = body.find(b"UNA", 3)
    contrl, cusres = body[:second], body[second:]
    assert structure.validate_interchange(contrl) == []
    assert structure.validate_interchange(cusres) == []
    sample_contrl = _sample("contrl_D3_generated_by_pydifact_for_missing_gid.edi")
    ours = _segments(contrl)
    assert [s.tag for s in ours][:4] == [s.tag for s in sample_contrl][:4]  # UNB UNH UCI UCM
    assert ours[1].elements[1] == sample_contrl[1].elements[1]
    sample_cusres = _sample("cusres_D96B_error_NZ.edi")
    theirs = [s.tag for s in sample_cusres]
    mine = [s.tag for s in _segments(cusres)]
    assert mine[theirs.index("ERP") - 2 :].count("ERP") == 1
    assert theirs.index("ERC") == theirs.index("ERP") + 1 and mine.index("ERC") == mine.index("ERP") + 1


def _sample(name: str) -> list[Segment]:
    """A partner's sample, read with pydifact's own parser (the NZ one is syntax 2, which we refuse)."""
    return [s for s in Parser().parse((SAMPLES / name).read_text("latin-1")) if s.tag != "UNA"]


# -- scale ----------------------------------------------------------------------------------------


def test_ten_thousand_consignments_get_ten_thousand_ccrns(gw, client, filer):
    messages = [
        message(f"M{m}", [consignment(c, f"CMR-{m:03d}-{c:03d}", items=1 + c % 3) for c in range(1, 101)])
        for m in range(100)
    ]
    body = interchange(messages)
    response = post(client, filer, body)
    replies = split_replies(response.content)
    found = ccrns_of(replies)
    assert len(found) == 10_000 and len(set(found.values())) == 10_000
    assert count(gw) == 10_000  # no timing here: bench/edifact_ingest.py measures speed


# -- the CLI ---------------------------------------------------------------------------------------


def _cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    url = gw.engine.url.render_as_string(hide_password=False)
    return subprocess.run(
        [str(ROOT / ".venv/bin/roadcargo"), *args, "--db", url], capture_output=True, text=True, timeout=120
    )


def _tomorrow() -> str:
    """The CLI runs on the real clock, not the tests' fixed one."""
    return (datetime.now(HONG_KONG) + timedelta(days=1)).strftime("%Y%m%d")


def test_cli_ingest_writes_contrl_and_cusres(gw, filer, tmp_path):
    groups = [consignment(1, "CLI-1"), consignment(2, "CLI-2")]
    data = interchange([message("M1", groups, crossing=_tomorrow())], ref="CLI0001")
    source = tmp_path / "m1.edi"
    source.write_bytes(data)
    out = tmp_path / "out"
    done = _cli(gw, "ingest", str(source), "--as", filer[0].party_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 accepted" in done.stdout
    replies = Replies(
        _segments((out / "m1.edi.contrl.edi").read_bytes()),
        _segments((out / "m1.edi.cusres.edi").read_bytes()),
    )
    assert set(ccrns_of(replies)) == {"CLI-1", "CLI-2"}
    again = _cli(gw, "ingest", str(source), "--as", filer[0].party_id, "--out", str(out))
    assert again.returncode == 0 and "sent before" in again.stdout
    assert count(gw) == 2


def test_cli_refuses_unknown_and_suspended_parties(gw, filer, tmp_path):
    source = tmp_path / "m1.edi"
    source.write_bytes(interchange([message("M1", [consignment(1, "CLI-1")], crossing=_tomorrow())]))
    done = _cli(gw, "ingest", str(source), "--as", "00000000")
    assert done.returncode != 0
    assert "no party 00000000" in done.stderr
    parties.suspend(gw, SYSTEM, filer[0].party_id)
    done = _cli(gw, "ingest", str(source), "--as", filer[0].party_id)
    assert done.returncode != 0
    assert "suspended" in done.stderr
    assert count(gw) == 0


def test_cli_ingests_ten_thousand_consignments_with_a_progress_bar(gw, filer, tmp_path):
    messages = [
        message(
            f"M{m}", [consignment(c, f"BIG-{m:03d}-{c:03d}") for c in range(1, 101)], crossing=_tomorrow()
        )
        for m in range(100)
    ]
    source = tmp_path / "big.edi"
    source.write_bytes(interchange(messages, ref="BIG0001"))
    assert source.stat().st_size > 1_000_000  # large enough for the progress bar
    done = _cli(gw, "ingest", str(source), "--as", filer[0].party_id)
    assert done.returncode == 0, done.stderr
    assert "10000 accepted" in done.stdout
    assert "big.edi" in done.stderr  # the progress bar, on stderr
    cusres = _segments((tmp_path / "big.edi.cusres.edi").read_bytes())
    ccrns = {s.elements[0][1] for s in cusres if s.tag == "RFF" and s.elements[0][0] == "XC"}
    assert len(ccrns) == 10_000 and all(parse_ccrn(c) == c for c in ccrns)


def test_cli_ingests_an_xml_file_through_the_xml_channel(gw, filer, tmp_path):
    from mappings import xml_eci
    from tests.factories import record

    tomorrow = (datetime.now(HONG_KONG) + timedelta(days=1)).date().isoformat()
    element = xml_eci.consignment_to_xml(
        "lodge", record(submitter_reference="XML-1", expected_crossing=tomorrow)
    )
    source = tmp_path / "d1.xml"
    source.write_bytes(xml_eci.to_bytes(xml_eci.cargo_information([element]), pretty=True))
    done = _cli(gw, "ingest", str(source), "--as", filer[0].party_id)
    assert done.returncode == 0, done.stderr
    ack = (tmp_path / "d1.xml.ack.xml").read_bytes()
    assert b"XML-1" in ack and b"Ccrn" in ack
    assert count(gw) == 1


def test_a_50_mb_segment_rejects_its_message_only_and_later_messages_are_accepted(gw, client, filer):
    huge = consignment(1, "HUGE", FTX="FTX+AAA+++" + "A" * 50_000_000)
    body = interchange(
        [
            message("M1", [consignment(1, "CMR-1")]),
            message("M2", [huge], doc="MAN0002"),
            message("M3", [consignment(1, "CMR-3")], doc="MAN0003"),
        ]
    )
    response = post(client, filer, body)
    assert response.status_code == 200
    replies = split_replies(response.content)
    assert uci(replies).elements[3] == "7"  # the interchange is acknowledged, one message rejected
    ucms = replies.tag("contrl", "UCM")
    assert [(u.elements[0], u.elements[2]) for u in ucms] == [("M1", "7"), ("M2", "4"), ("M3", "7")]
    (ucs,) = replies.tag("contrl", "UCS")
    assert ucs.elements == ["16", "6"]  # the FTX, segment 16 of M2: data segment invalid (too long)
    assert set(ccrns_of(replies)) == {"CMR-1", "CMR-3"}
    assert count(gw) == 2


def test_ucf_echoes_the_group_addresses_of_the_ung(gw, client, filer):
    """UNB names the interchange's sender and recipient, UNG the group's applications: each UCF
    answers its own group, addressed as in its UNG (0048, S006 sender, S007 recipient)."""
    ung = "UNG+CUSCAR+{sender}+{recipient}+261201:1000+{ref}+UN+D:96B'"
    body = interchange(
        [message("M1", [consignment(1, "CMR-1")]), message("M2", [consignment(1, "CMR-2")], doc="MAN2")]
    )
    body = body.replace(
        b"UNH+M1", ung.format(sender="FWDAPP1:ZZ", recipient="HKCCARGO:ZZ", ref="G1").encode() + b"UNH+M1"
    )
    body = body.replace(
        b"UNH+M2",
        b"UNE+1+G1'" + ung.format(sender="FWDAPP2", recipient="HKCMANIFEST", ref="G2").encode() + b"UNH+M2",
    )
    body = body.replace(b"UNZ+2", b"UNE+1+G2'UNZ+2")
    replies = split_replies(post(client, filer, body).content)
    ucfs = replies.tag("contrl", "UCF")
    assert [u.elements for u in ucfs] == [
        ["G1", ["FWDAPP1", "ZZ"], ["HKCCARGO", "ZZ"], "7"],
        ["G2", "FWDAPP2", "HKCMANIFEST", "7"],
    ]
    unb = replies.tag("contrl", "UNB")[0]
    assert unb.elements[2] == [SENDER, "ZZZ"]  # the interchange itself still goes to the UNB sender
    assert set(ccrns_of(replies)) == {"CMR-1", "CMR-2"}


class _Reads:
    """A binary file that remembers how much each read asked for."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("rb")
        self.sizes: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.sizes.append(size)
        return self.file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()


def test_a_file_is_stored_and_read_in_chunks_never_whole(gw, filer, tmp_path):
    """The raw interchange is stored (with its SHA-256) and read a chunk at a time: no read asks
    for the whole file, and what is stored is the file, byte for byte."""
    messages = [
        message(f"M{n}", [consignment(c, f"CMR-{n}-{c}", items=20) for c in range(1, 21)], doc=f"MAN{n}")
        for n in range(30)
    ]
    body = interchange(messages)
    path = tmp_path / "big.edi"
    path.write_bytes(body)
    assert len(body) > 1 << 20  # more than one chunk
    source = _Reads(path)
    result = edifact_channel.ingest(gw, filer[0], source)  # type: ignore[arg-type]
    source.file.close()
    assert result.accepted == 600
    assert source.sizes and all(0 < size <= 1 << 20 for size in source.sizes)
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(tables.raw_messages).where(
                tables.raw_messages.c.message_id
                == select(tables.edifact_interchanges.c.raw_message_id)
                .where(tables.edifact_interchanges.c.interchange_id == result.interchange_id)
                .scalar_subquery()
            )
        ).one()
    assert bytes(row.body) == body and row.size == len(body)
    assert row.sha256 == hashlib.sha256(body).hexdigest()


def test_storing_a_big_raw_message_takes_a_chunk_of_memory_not_the_body(gw, tmp_path):
    path = tmp_path / "raw.bin"
    with path.open("wb") as out:
        for n in range(40):
            out.write(bytes([n]) * (1 << 20))
    tracemalloc.start()
    try:
        with path.open("rb") as source:
            stored = store_raw_stream(gw, SYSTEM, "application/EDIFACT", source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * (1 << 20)  # the file is 40 MB
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert stored.size == 40 << 20 and stored.sha256 == digest
    with gw.engine.connect() as conn:
        row = conn.execute(
            select(tables.raw_messages.c.sha256, tables.raw_messages.c.size).where(
                tables.raw_messages.c.message_id == stored.message_id
            )
        ).one()
        assert tuple(row) == (digest, 40 << 20)


def test_a_big_file_read_by_a_second_process_gets_the_same_replies(gw, filer, tmp_path, monkeypatch):
    """Files from READER_PROCESS_BYTES on are tokenized, checked and mapped by a reader process while
    this one submits: the replies are those of the in-process reading."""
    messages = [
        message(f"M{n}", [consignment(c, f"CMR-{n}-{c}", items=2) for c in range(1, 21)], doc=f"MAN{n}")
        for n in range(10)
    ]
    messages[3][9] = "LOC+9+XXXXXXX"  # one bad consignment: its error comes back too
    replies = {}
    for way, threshold in (("here", 1 << 62), ("reader", 1)):
        monkeypatch.setattr(edifact_channel, "READER_PROCESS_BYTES", threshold)
        path = tmp_path / f"{way}.edi"
        path.write_bytes(interchange(messages, ref=f"IC-{way}").replace(b"CMR-", f"{way}-".encode()))
        with path.open("rb") as source:
            result = edifact_channel.ingest(gw, filer[0], source)
        assert (result.consignments, result.accepted) == (200, 199)
        replies[way] = split_replies(result.body)
    here, reader = replies["here"], replies["reader"]
    assert [s.elements[1:] for s in reader.contrl if s.tag in ("UCM", "UCS", "UCD")] == [
        s.elements[1:] for s in here.contrl if s.tag in ("UCM", "UCS", "UCD")
    ]
    assert len(ccrns_of(reader)) == len(ccrns_of(here)) == 199
    assert {k.replace("reader-", ""): v for k, v in errors_of(reader).items()} == {
        k.replace("here-", ""): v for k, v in errors_of(here).items()
    }
    assert count(gw) == 398


def test_a_reader_process_that_fails_loses_nothing_and_a_rerun_completes(gw, filer, tmp_path, monkeypatch):
    monkeypatch.setattr(edifact_channel, "READER_PROCESS_BYTES", 1)
    body = interchange([message("M1", [consignment(1, "CMR-1")]), message("M2", [consignment(1, "CMR-2")])])
    path = tmp_path / "killed.edi"
    path.write_bytes(body)
    # the reader process dies at once, as if killed (out of memory, say)
    monkeypatch.setattr(reading, "_CHILD", "import os; os._exit(9)")
    with path.open("rb") as source, pytest.raises(GatewayError) as caught:
        edifact_channel.ingest(gw, filer[0], source)
    assert caught.value.problems[0].code == "UNAVAILABLE"
    monkeypatch.setattr(edifact_channel, "READER_PROCESS_BYTES", 1 << 62)
    result = edifact_channel.ingest(gw, filer[0], body)  # the partner sends it again
    assert (result.replayed, result.accepted) == (False, 2)
    assert set(ccrns_of(split_replies(result.body))) == {"CMR-1", "CMR-2"}
    assert count(gw) == 2
