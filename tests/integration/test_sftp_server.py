"""The hosted SFTP mailbox, started in-process on a free port, driven by the real OpenSSH ``sftp`` client
in batch mode and by paramiko's client, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import paramiko
import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from adapters import sftp_keys
from adapters.sftp_server import SftpServer
from adapters.sftp_worker import MailboxWorker, mailbox, process
from gateway import parties as party_service
from gateway import tables
from gateway.app import create_app
from gateway.cli import main
from gateway.config import ServerConfig
from gateway.context import SYSTEM, Gateway
from gateway.errors import GatewayError
from mappings import xml_eci
from mappings.xml_eci import consignment_to_xml
from tests.factories import Parties, record
from tests.sftp_support import cuscar, cusres_ccrns, make_key, segments, tool, wait_for

SENDER = "FWDSFTP1"
CROSSING = "20261202"  # the day after the fixed clock's today


@dataclass
class Mailboxes:
    gw: Gateway
    server: SftpServer
    worker: MailboxWorker
    known_hosts: Path
    folder: Path

    @property
    def port(self) -> int:
        return self.server.port

    def sftp(self, user: str, key: Path, *commands: str) -> subprocess.CompletedProcess[str]:
        """Run commands with OpenSSH ``sftp -b``: strict host key checking against the real host key."""
        batch = self.folder / f"batch-{time.monotonic_ns()}"
        batch.write_text("\n".join(commands) + "\n")
        return subprocess.run(
            [
                tool("sftp"),
                "-b", str(batch),
                "-i", str(key),
                "-P", str(self.port),
                "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes",
                "-o", "ConnectTimeout=10",
                f"{user}@127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.folder,
        )  # fmt: skip

    def paramiko(self, user: str, key: Path) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
        transport = paramiko.Transport(("127.0.0.1", self.port))
        transport.connect()
        server_key = transport.get_remote_server_key()
        assert server_key.asbytes() == self.server.host_key.asbytes()  # host key verified
        transport.auth_publickey(user, paramiko.Ed25519Key.from_private_key_file(str(key)))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        return transport, client

    def idle(self) -> None:
        wait_for(self.worker.idle, 60, "the SFTP worker to finish")


@pytest.fixture
def boxes(gw: Gateway, tmp_path: Path) -> Iterator[Mailboxes]:
    with _serve(gw, tmp_path, ServerConfig(data_dir=str(tmp_path / "var"))) as started:
        yield started


@contextmanager
def _serve(gw: Gateway, tmp_path: Path, server_config: ServerConfig) -> Iterator[Mailboxes]:
    tool("sftp")
    hosted = Gateway(gw.engine, dataclasses.replace(gw.config, server=server_config), gw.clock)
    worker = MailboxWorker(hosted, threads=2, rescan_seconds=0.3)
    worker.start()
    server = SftpServer(hosted, worker, "127.0.0.1", 0)
    server.start()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_key_line}\n")
    try:
        yield Mailboxes(hosted, server, worker, known_hosts, tmp_path)
    finally:
        server.stop()
        worker.stop()


@dataclass
class Partner:
    party_id: str
    key: Path


def _partner(boxes: Mailboxes, name: str, edi: str) -> Partner:
    actor, _api_key = Parties(boxes.gw).add(role="forwarder", name=name, edi_ids=(edi,))
    assert actor.party_id is not None
    key, public = make_key(boxes.folder / "keys", f"key-{edi}")
    sftp_keys.register_ssh_key(boxes.gw, SYSTEM, actor.party_id, public)
    return Partner(actor.party_id, key)


@pytest.fixture
def forwarder(boxes: Mailboxes) -> Partner:
    return _partner(boxes, "ACME Freight", SENDER)


def count(gw: Gateway, table: tables.Table, *where: object) -> int:
    with gw.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)  # type: ignore[arg-type]


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# -- processing -------------------------------------------------------------------------------------


def test_a_cuscar_uploaded_with_openssh_gets_contrl_and_cusres_with_ccrns(boxes, forwarder):
    write(boxes.folder, "m1.edi", cuscar(SENDER, "IC0001", CROSSING, consignments=3))
    done = boxes.sftp(forwarder.party_id, forwarder.key, "put m1.edi inbox/m1.edi")
    assert done.returncode == 0, done.stderr
    box = mailbox(boxes.gw, forwarder.party_id)
    wait_for(lambda: (box.archive / "m1.edi").exists(), what="m1.edi to be archived")

    got = boxes.sftp(
        forwarder.party_id,
        forwarder.key,
        "ls -1 outbox",
        "get outbox/m1.edi.contrl.edi",
        "get outbox/m1.edi.cusres.edi",
        "ls -1 inbox",
        "ls -1 archive",
    )
    assert got.returncode == 0, got.stderr
    assert "m1.edi.contrl.edi" in got.stdout and "m1.edi.cusres.edi" in got.stdout
    contrl = segments((boxes.folder / "m1.edi.contrl.edi").read_bytes())
    assert next(s for s in contrl if s[0] == "UCI")[4] == "7"  # 0083 = 7: the interchange is accepted
    ccrns = cusres_ccrns((boxes.folder / "m1.edi.cusres.edi").read_bytes())
    assert sorted(ccrns) == ["CMR-000001", "CMR-000002", "CMR-000003"]
    with boxes.gw.engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(tables.consignments.c.submitter_reference, tables.consignments.c.ccrn).where(
                    tables.consignments.c.filer_id == forwarder.party_id
                )
            ).all()
        )
    assert stored == ccrns
    assert list(box.inbox.iterdir()) == []


def test_an_xml_document_gets_its_acknowledgement(boxes, forwarder):
    doc = xml_eci.to_bytes(
        xml_eci.cargo_information([consignment_to_xml("lodge", record(submitter_reference="XML-1"))]),
        pretty=True,
    )
    write(boxes.folder, "d1.xml", doc)
    assert boxes.sftp(forwarder.party_id, forwarder.key, "put d1.xml inbox/").returncode == 0
    box = mailbox(boxes.gw, forwarder.party_id)
    wait_for(lambda: (box.archive / "d1.xml").exists(), what="d1.xml to be archived")
    ack = (box.outbox / "d1.xml.ack.xml").read_bytes()
    (result,) = xml_eci.read_acknowledgement(xml_eci_root(ack))
    assert result["SubmitterReference"] == "XML-1" and len(result["Ccrn"]) == 12


def xml_eci_root(data: bytes):  # type: ignore[no-untyped-def]
    from adapters.xml_channel import parse_xml

    return parse_xml(data, 10**8)


def test_an_unreadable_file_goes_to_failed_with_the_reason(boxes, forwarder):
    write(boxes.folder, "junk.edi", b"hello, customs\n")
    write(boxes.folder, "empty.edi", b"")
    assert (
        boxes.sftp(
            forwarder.party_id, forwarder.key, "put junk.edi inbox/", "put empty.edi inbox/"
        ).returncode
        == 0
    )
    box = mailbox(boxes.gw, forwarder.party_id)
    # The reason is written before the input moves: wait for both inputs to have moved.
    wait_for(lambda: (box.failed / "empty.edi").exists() and (box.failed / "junk.edi").exists())
    reason = (box.failed / "junk.edi.error.txt").read_text()
    assert "neither EDIFACT" in reason and "hello" in reason
    assert "empty" in (box.failed / "empty.edi.error.txt").read_text()
    assert list(box.outbox.iterdir()) == [] and list(box.inbox.iterdir()) == []
    got = boxes.sftp(forwarder.party_id, forwarder.key, "get failed/junk.edi.error.txt", "rm failed/junk.edi")
    assert got.returncode == 0, got.stderr


def test_a_sender_that_is_not_the_partys_is_refused_in_failed(boxes, forwarder):
    write(boxes.folder, "other.edi", cuscar("SOMEONEELSE", "IC0009", CROSSING))
    assert boxes.sftp(forwarder.party_id, forwarder.key, "put other.edi inbox/").returncode == 0
    box = mailbox(boxes.gw, forwarder.party_id)
    wait_for(lambda: (box.failed / "other.edi.error.txt").exists())
    assert "SENDER_MISMATCH" in (box.failed / "other.edi.error.txt").read_text()
    assert count(boxes.gw, tables.consignments) == 0


def test_a_part_file_waits_until_it_is_renamed(boxes, forwarder):
    write(boxes.folder, "m2.edi", cuscar(SENDER, "IC0002", CROSSING))
    assert boxes.sftp(forwarder.party_id, forwarder.key, "put m2.edi inbox/m2.edi.part").returncode == 0
    box = mailbox(boxes.gw, forwarder.party_id)
    time.sleep(1.0)  # three rescans
    assert (box.inbox / "m2.edi.part").exists() and list(box.outbox.iterdir()) == []
    assert count(boxes.gw, tables.consignments) == 0
    assert (
        boxes.sftp(forwarder.party_id, forwarder.key, "rename inbox/m2.edi.part inbox/m2.edi").returncode == 0
    )
    wait_for(lambda: (box.outbox / "m2.edi.cusres.edi").exists(), what="the replies of m2.edi")
    assert count(boxes.gw, tables.consignments) == 2


def test_put_p_keeps_the_modification_time(boxes, forwarder):
    local = write(boxes.folder, "m3.edi", cuscar(SENDER, "IC0003", CROSSING))
    os.utime(local, (1_700_000_000, 1_700_000_000))
    done = boxes.sftp(forwarder.party_id, forwarder.key, "put -p m3.edi inbox/m3.edi")
    assert done.returncode == 0, done.stderr
    box = mailbox(boxes.gw, forwarder.party_id)
    wait_for(lambda: (box.archive / "m3.edi").exists())
    assert (box.archive / "m3.edi").stat().st_mtime == 1_700_000_000
    assert (box.outbox / "m3.edi.cusres.edi").exists()


def test_an_aborted_upload_is_not_processed(boxes, forwarder):
    data = cuscar(SENDER, "IC0004", CROSSING, consignments=50)
    transport, client = boxes.paramiko(forwarder.party_id, forwarder.key)
    handle = client.open("inbox/cut.edi", "wb")
    handle.write(data[: len(data) // 2])
    handle.flush()
    transport.close()  # the connection drops with the file still open
    box = mailbox(boxes.gw, forwarder.party_id)
    wait_for(lambda: (box.failed / "cut.edi.error.txt").exists(), what="the aborted upload to be filed")
    assert "did not complete" in (box.failed / "cut.edi.error.txt").read_text()
    time.sleep(0.5)
    boxes.idle()
    assert list(box.inbox.iterdir()) == [] and list(box.outbox.iterdir()) == []
    assert count(boxes.gw, tables.consignments) == 0


def test_an_upload_over_the_size_limit_is_refused_as_it_grows(gw, tmp_path):
    small = ServerConfig(data_dir=str(tmp_path / "var"), max_body_bytes=2000)
    with _serve(gw, tmp_path, small) as boxes:
        forwarder = _partner(boxes, "ACME Freight", SENDER)
        write(boxes.folder, "huge.edi", cuscar(SENDER, "IC0012", CROSSING, consignments=10))
        refused = boxes.sftp(forwarder.party_id, forwarder.key, "put huge.edi inbox/")
        assert refused.returncode != 0
        box = mailbox(boxes.gw, forwarder.party_id)
        wait_for(lambda: (box.failed / "huge.edi.error.txt").exists(), what="the refusal to be filed")
        assert "over the limit of 2000 bytes" in (box.failed / "huge.edi.error.txt").read_text()
        assert list(box.inbox.iterdir()) == [] and count(boxes.gw, tables.consignments) == 0


def test_uploads_rename_list_get_and_remove_with_paramiko(boxes, forwarder):
    transport, client = boxes.paramiko(forwarder.party_id, forwarder.key)
    try:
        assert sorted(client.listdir("/")) == ["archive", "failed", "inbox", "outbox"]
        with client.open("inbox/m5.edi.part", "wb") as f:
            f.write(cuscar(SENDER, "IC0005", CROSSING))
        client.utime("inbox/m5.edi.part", (1_700_000_000, 1_700_000_000))  # SETSTAT on a path
        client.chmod("inbox/m5.edi.part", 0o777)  # permissions are the gateway's: accepted, not applied
        assert client.stat("inbox/m5.edi.part").st_mtime == 1_700_000_000
        client.rename("inbox/m5.edi.part", "inbox/m5.edi")
        box = mailbox(boxes.gw, forwarder.party_id)
        wait_for(lambda: (box.outbox / "m5.edi.contrl.edi").exists())
        boxes.idle()
        assert sorted(client.listdir("outbox")) == ["m5.edi.contrl.edi", "m5.edi.cusres.edi"]
        with client.open("outbox/m5.edi.cusres.edi", "rb") as f:
            assert len(cusres_ccrns(f.read())) == 2
        client.remove("outbox/m5.edi.contrl.edi")
        assert client.listdir("outbox") == ["m5.edi.cusres.edi"]
        with pytest.raises(PermissionError, match="outbox"):
            client.open("outbox/forged.edi", "wb")
        with pytest.raises(PermissionError, match="waiting"):
            with client.open("inbox/w.edi.part", "wb") as f:
                f.write(b"UNB")
            client.rename("inbox/w.edi.part", "inbox/w.edi")
            client.remove("inbox/w.edi")
    finally:
        transport.close()


# -- confinement and authentication ------------------------------------------------------------------


def test_no_path_leads_out_of_the_mailbox(boxes, forwarder, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for partners")
    box = mailbox(boxes.gw, forwarder.party_id)
    box.create()
    (box.outbox / "leak").symlink_to(secret)  # put there by other means: still not followed
    for command in (
        "get ../../secret.txt",
        f"get {secret}",
        "get /../../../etc/passwd",
        "get outbox/leak",
        "put /etc/hostname ../escaped",
        "put /etc/hostname /escaped",
        "symlink /etc/passwd inbox/passwd",
        "mkdir inbox/sub",
        "cd /etc",
    ):
        result = boxes.sftp(forwarder.party_id, forwarder.key, command)
        assert result.returncode != 0, command
    assert not (boxes.folder / "escaped").exists() and not (box.inbox / "passwd").exists()
    listing = boxes.sftp(forwarder.party_id, forwarder.key, "ls -1 ..", "ls -1 /../..", "ls -1 outbox")
    assert listing.returncode == 0, listing.stderr
    assert "leak" not in listing.stdout and "secret" not in listing.stdout
    assert set(listing.stdout.split()) - {"sftp>", "ls", "-1", "..", "/../..", "outbox"} == {
        "../archive", "../failed", "../inbox", "../outbox", "/../../archive", "/../../failed",
        "/../../inbox", "/../../outbox",
    }  # fmt: skip


def test_another_partys_mailbox_is_invisible(boxes, forwarder):
    other = _partner(boxes, "Other Freight", "OTHEREDI")
    write(boxes.folder, "mine.edi", cuscar(SENDER, "IC0006", CROSSING))
    assert boxes.sftp(forwarder.party_id, forwarder.key, "put mine.edi inbox/").returncode == 0
    wait_for(lambda: (mailbox(boxes.gw, forwarder.party_id).archive / "mine.edi").exists())
    seen = boxes.sftp(other.party_id, other.key, "ls -1 archive", "ls -1 outbox")
    assert seen.returncode == 0 and "mine.edi" not in seen.stdout
    for path in (f"../{forwarder.party_id}/archive/mine.edi", f"/{forwarder.party_id}/archive/mine.edi"):
        assert boxes.sftp(other.party_id, other.key, f"get {path}").returncode != 0


def test_a_wrong_key_or_another_partys_name_is_refused(boxes, forwarder):
    stranger, _ = make_key(boxes.folder / "keys", "stranger")
    refused = boxes.sftp(forwarder.party_id, stranger, "ls")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    other = _partner(boxes, "Other Freight", "OTHEREDI")
    assert boxes.sftp(other.party_id, forwarder.key, "ls").returncode != 0  # a key opens its own box only
    assert boxes.sftp("root", forwarder.key, "ls").returncode != 0
    with pytest.raises(paramiko.AuthenticationException):
        boxes.paramiko(forwarder.party_id, stranger)


def test_a_changed_host_key_is_noticed_by_the_client(boxes, forwarder):
    _other, public = make_key(boxes.folder / "keys", "impostor")
    boxes.known_hosts.write_text(f"[127.0.0.1]:{boxes.port} {' '.join(public.split()[:2])}\n")
    result = boxes.sftp(forwarder.party_id, forwarder.key, "ls")
    assert result.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in result.stderr


def test_the_host_key_is_kept_across_restarts(boxes):
    again = SftpServer(boxes.gw, boxes.worker, "127.0.0.1", 0)
    assert again.host_key.asbytes() == boxes.server.host_key.asbytes()


# -- crash safety -------------------------------------------------------------------------------------


def test_files_left_in_an_inbox_are_processed_at_start(gw, tmp_path):
    config = dataclasses.replace(gw.config, server=ServerConfig(data_dir=str(tmp_path / "var")))
    hosted = Gateway(gw.engine, config, gw.clock)
    actor, _ = Parties(hosted).add(role="forwarder", name="ACME", edi_ids=(SENDER,))
    box = mailbox(hosted, str(actor.party_id))
    box.create()
    write(box.inbox, "left.edi", cuscar(SENDER, "IC0007", CROSSING))
    # A crash after the replies were committed but before the input left the inbox:
    left2 = write(box.inbox, "left2.edi", cuscar(SENDER, "IC0008", CROSSING, prefix="B"))
    done = process(hosted, str(actor.party_id), "mailbox", left2)
    assert done.replies is not None
    raw_before = count(hosted, tables.raw_messages)
    worker = MailboxWorker(hosted, threads=1, rescan_seconds=0.3)
    worker.start()
    try:
        wait_for(lambda: not any(box.inbox.iterdir()), what="the inbox to empty")
        wait_for(worker.idle)
    finally:
        worker.stop()
    assert sorted(p.name for p in box.archive.iterdir()) == ["left.edi", "left2.edi"]
    assert (box.outbox / "left2.edi.cusres.edi").read_bytes() == done.replies[".cusres.edi"]
    assert count(hosted, tables.raw_messages) == raw_before + 1  # left2.edi was not ingested again
    assert count(hosted, tables.consignments) == 4


# -- keys ---------------------------------------------------------------------------------------------


def test_malformed_and_private_keys_are_refused_clearly(boxes, forwarder):
    private, public = make_key(boxes.folder / "keys", "k2")
    cases = {
        "": "empty",
        "ssh-ed25519": "TYPE BASE64",
        "ssh-ed25519 AAAA!!!": "base64",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP": "not accepted",
        "ssh-ed25519 " + base64.b64encode(base64.b64decode(public.split()[1])[:-3]).decode(): "not a valid",
        private.read_text(): "private key",
        public + public: "one SSH public key",
    }
    for text, expected in cases.items():
        with pytest.raises(GatewayError) as caught:
            sftp_keys.register_ssh_key(boxes.gw, SYSTEM, forwarder.party_id, text)
        assert expected in caught.value.problems[0].message, text
        assert "PRIVATE" not in caught.value.problems[0].message
    again = sftp_keys.register_ssh_key(boxes.gw, SYSTEM, forwarder.party_id, public)
    assert again["created"] and again["fingerprint"].startswith("SHA256:")
    assert not sftp_keys.register_ssh_key(boxes.gw, SYSTEM, forwarder.party_id, public)["created"]
    other = _partner(boxes, "Other", "OTHEREDI")
    with pytest.raises(GatewayError, match="another party"):
        sftp_keys.register_ssh_key(boxes.gw, SYSTEM, other.party_id, public)


def test_the_server_answers_other_partners_while_a_big_file_is_processed(boxes, forwarder):
    other = _partner(boxes, "Other Freight", "OTHEREDI")
    write(boxes.folder, "big.edi", cuscar(SENDER, "IC0010", CROSSING, consignments=12_000))
    assert boxes.sftp(forwarder.party_id, forwarder.key, "put big.edi inbox/").returncode == 0
    big = mailbox(boxes.gw, forwarder.party_id)

    def big_at_work() -> bool:
        with boxes.gw.engine.connect() as conn:
            claim = conn.scalar(
                select(tables.sftp_claims.c.file_name).where(
                    tables.sftp_claims.c.party_id == forwarder.party_id
                )
            )
        mine = tables.consignments.c.filer_id == forwarder.party_id
        return claim == "big.edi" and count(boxes.gw, tables.consignments, mine) > 0

    wait_for(big_at_work, 60, "the big file to be at work")
    # While it is: another partner logs in, lists, uploads, and is answered.
    write(boxes.folder, "small.edi", cuscar("OTHEREDI", "IC0011", CROSSING, consignments=1))
    session = boxes.sftp(other.party_id, other.key, "ls -1 outbox", "put small.edi inbox/", "ls -1 inbox")
    assert session.returncode == 0, session.stderr
    small = mailbox(boxes.gw, other.party_id)
    wait_for(lambda: (small.outbox / "small.edi.cusres.edi").exists(), 60, "the small file's replies")
    assert not (big.archive / "big.edi").exists()  # the big file was still at work all that time
    assert (big.inbox / "big.edi").exists()
    boxes.idle()
    assert len(cusres_ccrns((big.outbox / "big.edi.cusres.edi").read_bytes())) == 12_000


# -- revoking keys, suspending parties ----------------------------------------------------------------


def test_a_revoked_key_no_longer_opens_the_mailbox(db_url, boxes, forwarder, capsys):
    config = boxes.folder / "gateway.toml"
    config.write_text(f'[server]\ndata_dir = "{boxes.gw.config.data_path}"\n')
    where = ["--db", db_url, "--config", str(config)]
    spare, spare_public = make_key(boxes.folder / "keys", "spare")
    sftp_keys.register_ssh_key(boxes.gw, SYSTEM, forwarder.party_id, spare_public)
    assert boxes.sftp(forwarder.party_id, forwarder.key, "ls").returncode == 0
    transport, client = boxes.paramiko(forwarder.party_id, forwarder.key)  # a session left open
    try:
        assert main(["party", "ssh-key", "list", forwarder.party_id, "--json", *where]) == 0
        keys = json.loads(capsys.readouterr().out)
        assert [k["revoked_at"] for k in keys] == [None, None]
        lost = keys[0]["fingerprint"]
        assert main(["party", "ssh-key", "revoke", forwarder.party_id, lost, *where]) == 0
        assert "is revoked" in capsys.readouterr().out
        assert main(["party", "ssh-key", "revoke", forwarder.party_id, lost, *where]) == 0
        assert "revoked already" in capsys.readouterr().out
        assert main(["party", "ssh-key", "revoke", forwarder.party_id, "SHA256:nosuchkey", *where]) == 1
        assert "has no SSH key" in capsys.readouterr().err
        assert main(["party", "ssh-key", "list", forwarder.party_id, *where]) == 0
        listed = capsys.readouterr().out
        assert f"{lost}  ssh-ed25519  revoked 20" in listed and "live" in listed

        refused = boxes.sftp(forwarder.party_id, forwarder.key, "ls")
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
        with pytest.raises(paramiko.AuthenticationException):
            boxes.paramiko(forwarder.party_id, forwarder.key)
        assert boxes.sftp(forwarder.party_id, spare, "ls").returncode == 0  # the other key still opens it
        assert boxes.server.recheck_logins() == 1  # the session opened with the revoked key is closed
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            client.listdir("outbox")
    finally:
        transport.close()
    # An officer registering it again makes it live again.
    public = Path(f"{forwarder.key}.pub").read_text()
    assert sftp_keys.register_ssh_key(boxes.gw, SYSTEM, forwarder.party_id, public)["created"]
    assert boxes.sftp(forwarder.party_id, forwarder.key, "ls").returncode == 0


def test_a_suspended_party_cannot_log_in(boxes, forwarder):
    transport, client = boxes.paramiko(forwarder.party_id, forwarder.key)
    try:
        party_service.suspend(boxes.gw, SYSTEM, forwarder.party_id)
        refused = boxes.sftp(forwarder.party_id, forwarder.key, "ls")
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
        with pytest.raises(paramiko.AuthenticationException):
            boxes.paramiko(forwarder.party_id, forwarder.key)
        assert boxes.server.recheck_logins() == 1
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            client.listdir("outbox")
    finally:
        transport.close()
    party_service.reinstate(boxes.gw, SYSTEM, forwarder.party_id)
    assert boxes.sftp(forwarder.party_id, forwarder.key, "ls").returncode == 0


# -- registering keys: command line and HTTP ------------------------------------------------------------


def test_keys_are_registered_and_the_status_shown_from_the_command_line(db_url, gw, tmp_path, capsys):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    where = ["--db", db_url, "--config", str(config)]
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 AAAA\n")
    add = ["party", "add", "--role", "forwarder", "--name", "Key Freight", "--edi-id", SENDER]
    assert main([*add, "--ssh-key", str(bad), *where]) == 1
    assert "ssh_key" in capsys.readouterr().err
    assert count(gw, tables.parties) == 0  # a bad key registers nothing, not even the party

    first, _ = make_key(tmp_path / "keys", "first")
    assert main([*add, "--ssh-key", f"{first}.pub", "--json", *where]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["ssh_key"].startswith("SHA256:") and added["api_key"]
    second, _ = make_key(tmp_path / "keys", "second")
    assert main(["party", "ssh-key", "add", added["party_id"], f"{second}.pub", *where]) == 0
    assert "registered for party" in capsys.readouterr().out
    assert main(["party", "ssh-key", "add", added["party_id"], str(tmp_path / "none.pub"), *where]) == 1
    assert "cannot read the SSH key file" in capsys.readouterr().err
    assert len(sftp_keys.list_ssh_keys(gw, SYSTEM, added["party_id"])) == 2

    assert main(["sftp", "status", *where]) == 0
    shown = capsys.readouterr().out
    assert f"{added['party_id']}: 0 waiting" in shown and "(none configured" in shown
    assert main(["sftp", "status", "--json", *where]) == 0
    assert json.loads(capsys.readouterr().out)["mailboxes"][0]["party_id"] == added["party_id"]


def test_officers_register_ssh_keys_over_http(gw, tmp_path):
    config = dataclasses.replace(gw.config, server=ServerConfig(data_dir=str(tmp_path / "var")))
    hosted = Gateway(gw.engine, config, gw.clock)
    parties = Parties(hosted)
    _officer, officer_key = parties.add(role="officer", name="Officer Chan")
    filer, filer_key = parties.add(role="forwarder", name="ACME Freight")
    as_officer = {"Authorization": f"Bearer {officer_key}"}
    as_filer = {"Authorization": f"Bearer {filer_key}"}
    client = TestClient(create_app(hosted))
    _, public = make_key(tmp_path / "keys", "http")
    url = f"/api/v1/parties/{filer.party_id}/ssh-keys"

    created = client.post(url, json={"public_key": public}, headers=as_officer)
    assert created.status_code == 201, created.text
    assert (
        created.json()["fingerprint"].startswith("SHA256:") and created.json()["algorithm"] == "ssh-ed25519"
    )
    assert client.post(url, json={"public_key": public}, headers=as_officer).status_code == 200
    _, other = make_key(tmp_path / "keys", "plain")
    plain = client.post(url, content=other, headers={**as_officer, "Content-Type": "text/plain"})
    assert plain.status_code == 201

    refused = client.post(url, json={"public_key": public}, headers=as_filer)
    assert refused.status_code == 403 and refused.json()["errors"][0]["code"] == "FORBIDDEN"
    bad = client.post(url, json={"public_key": "ssh-ed25519 AAAA"}, headers=as_officer)
    assert bad.status_code == 422
    assert (
        bad.json()["errors"][0]["code"] == "INVALID_VALUE" and bad.json()["errors"][0]["field"] == "ssh_key"
    )
    missing = client.post(url, json={"key": public}, headers=as_officer)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "public_key"
    unknown = client.post(
        "/api/v1/parties/99999999/ssh-keys", json={"public_key": public}, headers=as_officer
    )
    assert unknown.status_code == 404

    assert len(client.get(url, headers=as_filer).json()) == 2

    assert client.get("/api/v1/sftp/status", headers=as_filer).status_code == 403
    report = client.get("/api/v1/sftp/status", headers=as_officer).json()
    assert [m["party_id"] for m in report["mailboxes"]] == [filer.party_id]

    fingerprint = created.json()["fingerprint"]
    _other_filer, other_key = parties.add(role="forwarder", name="Other Freight")
    as_other = {"Authorization": f"Bearer {other_key}"}
    by_fingerprint = f"{url}/{quote(fingerprint, safe='')}"
    assert client.delete(by_fingerprint, headers=as_other).status_code == 404  # not theirs to see
    revoked = client.delete(by_fingerprint, headers=as_officer)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] and revoked.json()["revoked_at"]
    again = client.delete(by_fingerprint, headers=as_officer)
    assert again.status_code == 200 and not again.json()["revoked"]
    second_id = next(k for k in client.get(url, headers=as_filer).json() if not k["revoked_at"])["key_id"]
    own = client.delete(f"{url}/{second_id}", headers=as_filer)  # a party may revoke its own lost key
    assert own.status_code == 200 and own.json()["revoked"]
    missing_key = client.delete(f"{url}/SHA256:nosuchkey", headers=as_officer)
    assert missing_key.status_code == 404 and missing_key.json()["errors"][0]["field"] == "fingerprint"
    assert all(k["revoked_at"] for k in client.get(url, headers=as_officer).json())
    assert not sftp_keys.key_is_registered(hosted, str(filer.party_id), base64.b64decode(public.split()[1]))
