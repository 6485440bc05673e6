"""Polling of a partner's own SFTP server: a real OpenSSH sshd started by the test (a chrooted
internal-sftp user on a free port), polled by the gateway's paramiko client, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, update
from starlette.testclient import TestClient

from adapters.sftp_pull import Poller, PullService, backoff, spool
from adapters.sftp_service import SftpService, status, status_text
from gateway import tables
from gateway.app import create_app
from gateway.config import ServerConfig, SftpConfig, SftpPullConfig
from gateway.context import SYSTEM, Gateway
from gateway.parties import reinstate, suspend
from tests.factories import Parties
from tests.sftp_support import cuscar, cusres_ccrns, make_key, tool, wait_for

USER = "rcpartner"
SENDER = "BIGFWD01"
CROSSING = "20261202"  # the day after the fixed clock's today
ROOTS = Path("/var/lib/roadcargo-test")  # a chroot's every parent must be root's and not writable by others


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    port: int
    chroot: Path
    host_key: str  # "ssh-ed25519 AAAA..."
    authorized: Path

    @property
    def inbox(self) -> Path:
        return self.chroot / "to-customs"

    @property
    def outbox(self) -> Path:
        return self.chroot / "from-customs"

    def put(self, name: str, data: bytes) -> None:
        path = self.inbox / name
        path.write_bytes(data)
        shutil.chown(path, USER, USER)


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    """OpenSSH's sshd on a free port with one chrooted internal-sftp user; stopped by its PID."""
    if os.geteuid() != 0:
        pytest.fail("the SFTP polling tests start a real sshd with a chrooted user: run them as root")
    server = tool("sshd")
    tool("ssh-keygen")
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
    # A locked account (no password at all) is refused even for keys when PAM is off: '*' is "no password".
    subprocess.run(["usermod", "-p", "*", USER], check=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    ROOTS.mkdir(mode=0o755, parents=True, exist_ok=True)
    home = ROOTS / f"sshd-{secrets.token_hex(4)}"
    home.mkdir(mode=0o755)
    chroot = home / "chroot"
    chroot.mkdir(mode=0o755)
    for folder in ("to-customs", "from-customs"):
        (chroot / folder).mkdir(mode=0o755)
        shutil.chown(chroot / folder, USER, USER)
    (home / "authorized").mkdir(mode=0o755)
    host_key_path, host_key = make_key(home, "host_ed25519")
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key_path}\nPidFile {home / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {home / 'authorized'}/%u\nUsePAM no\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "Subsystem sftp internal-sftp\n"
        f"Match User {USER}\n  ChrootDirectory {chroot}\n  ForceCommand internal-sftp\n"
        "  AllowTcpForwarding no\n  X11Forwarding no\n"
    )
    check = subprocess.run([server, "-t", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    log = (home / "sshd.log").open("w")
    process = subprocess.Popen([server, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _listening(port) or process.poll() is not None, 10, "sshd to listen")
        assert process.poll() is None, (home / "sshd.log").read_text()
        yield Sshd(port, chroot, " ".join(host_key.split()[:2]), home / "authorized" / USER)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Setting:
    gw: Gateway
    party_id: str
    pull: SftpPullConfig


@pytest.fixture
def setting(gw: Gateway, sshd: Sshd, tmp_path: Path) -> Iterator[Setting]:
    for folder in (sshd.inbox, sshd.outbox):
        for leftover in folder.iterdir():
            leftover.unlink()
    key, public = make_key(tmp_path / "keys", "gateway")
    sshd.authorized.write_text(public)
    actor, _ = Parties(gw).add(role="forwarder", name="Big Forwarder", edi_ids=(SENDER,))
    pull = SftpPullConfig(
        name="bigforwarder",
        party=str(actor.party_id),
        host="127.0.0.1",
        port=sshd.port,
        user=USER,
        private_key=str(key),
        host_key=sshd.host_key,
        remote_inbox="/to-customs",
        remote_outbox="/from-customs",
        interval_seconds=1,
    )
    config = dataclasses.replace(
        gw.config, server=ServerConfig(data_dir=str(tmp_path / "var")), sftp=SftpConfig(pull=(pull,))
    )
    yield Setting(Gateway(gw.engine, config, gw.clock), str(actor.party_id), pull)


def consignment_count(gw: Gateway) -> int:
    with gw.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(tables.consignments)) or 0)


def test_files_on_the_partners_server_are_fetched_processed_and_answered(setting, sshd):
    sshd.put("m1.edi", cuscar(SENDER, "PULL0001", CROSSING, consignments=3))
    sshd.put("later.edi.part", b"UNA:+.? 'UNB+UNOC:3+")  # still being written by the partner
    poller = Poller(setting.gw, setting.pull, stopping=_never())
    assert poller.round() == 1.0  # success: next round after the interval
    assert sorted(p.name for p in sshd.inbox.iterdir()) == ["later.edi.part"]
    assert sorted(p.name for p in sshd.outbox.iterdir()) == ["m1.edi.contrl.edi", "m1.edi.cusres.edi"]
    ccrns = cusres_ccrns((sshd.outbox / "m1.edi.cusres.edi").read_bytes())
    assert len(ccrns) == 3 and consignment_count(setting.gw) == 3
    assert (spool(setting.gw, "bigforwarder").archive / "m1.edi").exists()
    report = status(setting.gw)["pull"][0]
    assert report["files_fetched"] == 1 and report["last_success"] and report["last_error"] is None

    sshd.put("d1.xml", b"<notcargo/>")  # readable, but not a CargoInformation: refused with the reason
    assert poller.round() == 1.0
    assert "d1.xml.error.txt" in {p.name for p in sshd.outbox.iterdir()}
    assert "CargoInformation" in (sshd.outbox / "d1.xml.error.txt").read_text()
    assert "d1.xml" not in {p.name for p in sshd.inbox.iterdir()}


def test_a_file_left_in_the_spool_by_a_crash_is_finished_without_duplicates(setting, sshd):
    data = cuscar(SENDER, "PULL0002", CROSSING, consignments=4)
    sshd.put("m2.edi", data)
    # The gateway died after downloading m2.edi, before processing it or removing the partner's copy.
    local = spool(setting.gw, "bigforwarder")
    local.create()
    (local.inbox / "m2.edi").write_bytes(data)
    poller = Poller(setting.gw, setting.pull, stopping=_never())
    assert poller.round() == 1.0
    assert consignment_count(setting.gw) == 4
    assert list(sshd.inbox.iterdir()) == []
    assert len(cusres_ccrns((sshd.outbox / "m2.edi.cusres.edi").read_bytes())) == 4
    assert list(local.inbox.iterdir()) == [] and list(local.outbox.iterdir()) == []


def test_a_server_with_another_host_key_is_refused(setting, sshd, tmp_path):
    _, impostor = make_key(tmp_path / "keys", "impostor")
    sshd.put("m3.edi", cuscar(SENDER, "PULL0003", CROSSING))
    pull = dataclasses.replace(setting.pull, host_key=" ".join(impostor.split()[:2]))
    poller = Poller(setting.gw, pull, stopping=_never())
    assert poller.round() == 1.0  # first failure: retried after the interval
    state = poller.snapshot()
    assert (
        state.up is False and "host key" in (state.last_error or "") and "refused" in (state.last_error or "")
    )
    assert [p.name for p in sshd.inbox.iterdir()] == ["m3.edi"] and consignment_count(setting.gw) == 0
    assert "host key" in status(setting.gw)["pull"][0]["last_error"]["error"]


def test_a_partner_that_is_down_is_retried_with_backoff_and_others_go_on(setting, sshd, caplog):
    down = dataclasses.replace(setting.pull, name="downforwarder", port=free_port())
    config = dataclasses.replace(setting.gw.config, sftp=SftpConfig(pull=(down, setting.pull)))
    gw = Gateway(setting.gw.engine, config, setting.gw.clock)
    sshd.put("m4.edi", cuscar(SENDER, "PULL0004", CROSSING, consignments=2))
    caplog.set_level(logging.WARNING, logger="roadcargo.sftp.pull")
    service = PullService(gw)
    service.start()
    try:
        wait_for(lambda: (sshd.outbox / "m4.edi.cusres.edi").exists(), 15, "the reachable partner's replies")
        wait_for(lambda: service.pollers[0].snapshot().consecutive_failures >= 3, 15, "three failed rounds")
    finally:
        service.stop()
    state = service.pollers[0].snapshot()
    gaps = [b - a for a, b in zip(state.attempts, state.attempts[1:], strict=False)]
    assert gaps[1] > gaps[0] * 1.5, gaps  # 1 s, then 2 s: backing off
    assert "connection refused" in (state.last_error or "")
    assert any("downforwarder" in r.getMessage() and "round failed" in r.getMessage() for r in caplog.records)
    assert consignment_count(gw) == 2

    sftp = SftpService(gw)
    sftp.pull = service
    app = create_app(gw)
    app.state.metrics.registry.register(sftp.collector())
    metrics = TestClient(app).get("/metrics").text
    assert 'roadcargo_sftp_pull_up{partner="downforwarder"} 0.0' in metrics
    assert 'roadcargo_sftp_pull_up{partner="bigforwarder"} 1.0' in metrics
    assert 'roadcargo_sftp_pull_files_total{partner="bigforwarder"} 1.0' in metrics
    text = status_text(status(gw))
    assert "downforwarder" in text and "connection refused" in text


def test_a_partner_polled_by_another_process_is_left_to_it(setting, sshd):
    now = datetime.now(UTC)
    with setting.gw.engine.begin() as conn:
        conn.execute(
            insert(tables.sftp_claims).values(
                source="pull:bigforwarder",
                party_id=setting.party_id,
                owner="gw-node-2.example/0badf00d/4026531836/pid:4242/abcdef",
                claimed_at=now,
                lease_until=now + timedelta(hours=1),
            )
        )
    sshd.put("m5.edi", cuscar(SENDER, "PULL0005", CROSSING, consignments=2))
    poller = Poller(setting.gw, setting.pull, stopping=_never())
    assert poller.round() == 1.0  # not a failure: the next round after the interval
    assert poller.snapshot().elsewhere == 1 and poller.snapshot().consecutive_failures == 0
    assert [p.name for p in sshd.inbox.iterdir()] == ["m5.edi"] and consignment_count(setting.gw) == 0
    assert status(setting.gw)["pull"][0]["at_work"]["process"].startswith("gw-node-2.example/")
    with setting.gw.engine.begin() as conn:  # that process died an hour ago: its lease has run out
        conn.execute(update(tables.sftp_claims).values(lease_until=now - timedelta(seconds=1)))
    assert poller.round() == 1.0
    assert list(sshd.inbox.iterdir()) == [] and consignment_count(setting.gw) == 2
    with setting.gw.engine.connect() as conn:  # released after the round
        assert conn.scalar(select(func.count()).select_from(tables.sftp_claims)) == 0


def test_a_suspended_partys_server_is_not_polled(setting, sshd):
    suspend(setting.gw, SYSTEM, setting.party_id)
    sshd.put("m6.edi", cuscar(SENDER, "PULL0006", CROSSING, consignments=2))
    poller = Poller(setting.gw, setting.pull, stopping=_never())
    poller.round()
    assert poller.snapshot().consecutive_failures == 1  # a failed round, retried with backoff
    assert "suspended" in (poller.snapshot().last_error or "")
    assert [p.name for p in sshd.inbox.iterdir()] == ["m6.edi"] and consignment_count(setting.gw) == 0
    assert "suspended" in status(setting.gw)["pull"][0]["last_error"]["error"]
    reinstate(setting.gw, SYSTEM, setting.party_id)
    assert poller.round() == 1.0 and consignment_count(setting.gw) == 2


def test_backoff_doubles_up_to_a_ceiling():
    assert [backoff(60, n) for n in range(5)] == [60, 60, 120, 240, 480]
    assert backoff(60, 30) == 900 and backoff(3600, 5) == 3600


def _never() -> threading.Event:
    return threading.Event()
