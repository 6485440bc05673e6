"""Kill -9 in the middle of a big file: ``roadcargo serve`` as a process, a 10,000-consignment CUSCAR
uploaded with OpenSSH ``sftp``, the gateway SIGKILLed while it processes the file, then restarted. The
file is processed to the end, every consignment has exactly one CCRN, the replies are complete. And
with two ``roadcargo serve`` processes on one site: the one at work is killed, the other finishes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from gateway import tables
from tests.e2e.conftest import free_port
from tests.sftp_support import cuscar, cusres_ccrns, make_key, segments, tool, wait_for

ROADCARGO = str(Path(sys.executable).with_name("roadcargo"))
SENDER = "CRASHFWD"
CONSIGNMENTS = 10_000


@dataclass
class Site:
    folder: Path
    db_url: str
    config: Path
    sftp_port: int

    @property
    def data(self) -> Path:
        return self.folder / "var"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ROADCARGO, *args, "--db", self.db_url, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n')
    db_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    if request.param == "postgresql":
        db_url = request.getfixturevalue("pg_database")
        from tests.conftest import _truncate

        engine = create_engine(db_url)
        _truncate(engine)
        engine.dispose()
    return Site(tmp_path, db_url, config, free_port())


@contextmanager
def serving(site: Site, log_name: str) -> Iterator[subprocess.Popen[str]]:
    """``roadcargo serve`` with its SFTP mailbox on the site's port, until /healthz answers."""
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADCARGO_")}
    with (site.folder / log_name).open("w") as out:
        process = subprocess.Popen(
            [
                *(ROADCARGO, "serve", "--http-port", str(http_port), "--sftp-port", str(site.sftp_port)),
                *("--db", site.db_url, "--config", str(site.config)),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"roadcargo serve exited: {(site.folder / log_name).read_text()}")
        try:
            return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 30, "roadcargo serve to answer /healthz")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def counts(site: Site, party_id: str) -> tuple[int, int, int]:
    """Consignments, distinct references and versions of the party, straight from the database."""
    engine = create_engine(site.db_url)
    try:
        with engine.connect() as conn:
            c = tables.consignments
            rows = conn.scalar(select(func.count()).select_from(c).where(c.c.filer_id == party_id))
            refs = conn.scalar(
                select(func.count(func.distinct(c.c.submitter_reference))).where(c.c.filer_id == party_id)
            )
            versions = conn.scalar(select(func.count()).select_from(tables.consignment_versions))
            return int(rows or 0), int(refs or 0), int(versions or 0)
    finally:
        engine.dispose()


def test_a_gateway_killed_mid_file_finishes_it_after_restart_without_loss_or_duplicates(site):
    tool("sftp")
    key, public = make_key(site.folder / "keys", "crashfwd")
    (site.folder / "crashfwd.pub").write_text(public)
    tomorrow = (date.today() + timedelta(days=1)).strftime("%Y%m%d")
    big = site.folder / "big.edi"
    big.write_bytes(cuscar(SENDER, "CRASH0001", tomorrow, consignments=CONSIGNMENTS, per_message=500))

    with serving(site, "serve-1.log") as first:
        added = site.cli(
            "party", "add", "--role", "forwarder", "--name", "Crash Freight", "--edi-id", SENDER,
            "--ssh-key", str(site.folder / "crashfwd.pub"), "--json",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        party_id = json.loads(added.stdout)["party_id"]
        known_hosts = site.folder / "known_hosts"
        host_key = (site.data / "sftp_host_ed25519_key.pub").read_text().split()[:2]
        known_hosts.write_text(f"[127.0.0.1]:{site.sftp_port} {' '.join(host_key)}\n")

        def sftp(commands: str) -> subprocess.CompletedProcess[str]:
            """OpenSSH sftp in batch mode, the commands read from stdin, the host key checked."""
            return subprocess.run(
                [
                    tool("sftp"), "-b", "-", "-i", str(key), "-P", str(site.sftp_port), "-o", "BatchMode=yes",
                    "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "IdentitiesOnly=yes", f"{party_id}@127.0.0.1",
                ],
                input=commands,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=site.folder,
            )  # fmt: skip

        put = sftp("put big.edi inbox/big.edi\n")
        assert put.returncode == 0, put.stderr

        # Kill -9 once some batches are committed and the rest are not.
        deadline = time.monotonic() + 60
        while (done := counts(site, party_id)[0]) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert 0 < done < CONSIGNMENTS, f"the kill came too late or too early: {done} consignments"
    interrupted = counts(site, party_id)[0]
    assert interrupted < CONSIGNMENTS
    mailbox = site.data / "sftp" / party_id
    assert (mailbox / "inbox" / "big.edi").exists()  # not gone with the crash
    assert not (mailbox / "outbox" / "big.edi.cusres.edi").exists()

    with serving(site, "serve-2.log") as second:
        finished = mailbox / "archive" / "big.edi"
        wait_for(finished.exists, 90, "the file to be finished after restart")
        got = sftp("get outbox/big.edi.contrl.edi\nget outbox/big.edi.cusres.edi\nls -1 inbox\n")
        assert got.returncode == 0, got.stderr
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0

    rows, references, versions = counts(site, party_id)
    assert rows == references == versions == CONSIGNMENTS  # exactly one CCRN (and one version) each
    ccrns = cusres_ccrns((site.folder / "big.edi.cusres.edi").read_bytes())
    assert len(ccrns) == CONSIGNMENTS and len(set(ccrns.values())) == CONSIGNMENTS
    engine = create_engine(site.db_url)
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(tables.consignments.c.submitter_reference, tables.consignments.c.ccrn).where(
                    tables.consignments.c.filer_id == party_id
                )
            ).all()
        )
        files = tables.sftp_files
        attempts = conn.scalar(select(files.c.attempts).where(files.c.name == "big.edi"))
    engine.dispose()
    assert stored == ccrns
    assert attempts == 2
    contrl = segments((site.folder / "big.edi.contrl.edi").read_bytes())
    assert next(s for s in contrl if s[0] == "UCI")[4] == "7"  # the interchange accepted
    assert "big.edi" not in got.stdout.split("ls -1 inbox")[-1]


def test_a_killed_process_mid_file_is_finished_by_the_other_running_process(site):
    """Two ``roadcargo serve`` processes on one data directory and database (issue 10): the one at work
    on a big file is killed with SIGKILL; the other, still running, takes its claim over and finishes
    the file without loss or duplicates."""
    tool("sftp")
    key, public = make_key(site.folder / "keys", "twofwd")
    (site.folder / "twofwd.pub").write_text(public)
    tomorrow = (date.today() + timedelta(days=1)).strftime("%Y%m%d")
    (site.folder / "big.edi").write_bytes(
        cuscar(SENDER, "TWO00001", tomorrow, consignments=CONSIGNMENTS, per_message=500)
    )
    other = Site(site.folder, site.db_url, site.config, free_port())  # a second listener, same site
    with serving(site, "serve-a.log") as first, serving(other, "serve-b.log") as second:
        added = site.cli(
            "party", "add", "--role", "forwarder", "--name", "Two Freight", "--edi-id", SENDER,
            "--ssh-key", str(site.folder / "twofwd.pub"), "--json",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        party_id = json.loads(added.stdout)["party_id"]
        known_hosts = site.folder / "known_hosts"
        host_key = " ".join((site.data / "sftp_host_ed25519_key.pub").read_text().split()[:2])
        known_hosts.write_text(f"[127.0.0.1]:{site.sftp_port} {host_key}\n")
        put = subprocess.run(
            [
                tool("sftp"), "-b", "-", "-i", str(key), "-P", str(site.sftp_port), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", f"{party_id}@127.0.0.1",
            ],
            input="put big.edi inbox/big.edi\n", capture_output=True, text=True, timeout=60, cwd=site.folder,
        )  # fmt: skip
        assert put.returncode == 0, put.stderr

        def claimant() -> int | None:
            engine = create_engine(site.db_url)
            try:
                with engine.connect() as conn:
                    owner = conn.scalar(select(tables.sftp_claims.c.owner))
            finally:
                engine.dispose()
            return None if owner is None else int(owner.rpartition("/pid:")[2].partition("/")[0])

        wait_for(lambda: counts(site, party_id)[0] > 0 and claimant() is not None, 60, "the file at work")
        pid = claimant()
        victim, survivor = (first, second) if pid == first.pid else (second, first)
        assert pid == victim.pid  # the claim is one of the two servers'
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert counts(site, party_id)[0] < CONSIGNMENTS
        finished = site.data / "sftp" / party_id / "archive" / "big.edi"
        wait_for(finished.exists, 120, "the surviving process to finish the file")
        wait_for(lambda: claimant() is None, 30, "the survivor to release the mailbox")
        assert survivor.poll() is None

    rows, references, versions = counts(site, party_id)
    assert rows == references == versions == CONSIGNMENTS
    outbox = site.data / "sftp" / party_id / "outbox"
    ccrns = cusres_ccrns((outbox / "big.edi.cusres.edi").read_bytes())
    assert len(ccrns) == CONSIGNMENTS and len(set(ccrns.values())) == CONSIGNMENTS
    engine = create_engine(site.db_url)
    with engine.connect() as conn:
        files = tables.sftp_files
        attempts = conn.scalar(select(files.c.attempts).where(files.c.name == "big.edi"))
    engine.dispose()
    assert attempts == 2
