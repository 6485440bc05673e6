"""Several gateway processes on one data directory and one database (issue 10): mailboxes claimed by
one process at a time, a dead claimant's work taken over, uploads of live processes left alone, an SFTP
listener without a worker answered by a worker process. Real processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paramiko
import pytest
from sqlalchemy import func, insert, select, update

from adapters import sftp_service
from adapters.sftp_claims import Claims, owner_is_dead
from adapters.sftp_server import SftpServer
from adapters.sftp_worker import MailboxWorker, mailbox, recover_uploads
from gateway import db, tables
from gateway.clock import HONG_KONG
from gateway.config import Config, ServerConfig
from gateway.context import Gateway
from tests.factories import Parties
from tests.sftp_support import (
    cuscar,
    cusres_ccrns,
    make_key,
    start_worker_process,
    stop_process,
    tool,
    wait_for,
)


def _tomorrow() -> str:
    """The processes run on the real clock: cargo crossing tomorrow, Hong Kong time."""
    return (datetime.now(HONG_KONG) + timedelta(days=1)).strftime("%Y%m%d")


@pytest.fixture
def site(db_url: str, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway on the real clock with its data directory, as every process of the site sees it."""
    engine = db.make_engine(db_url)
    config = dataclasses.replace(Config(), server=ServerConfig(data_dir=str(tmp_path / "var")))
    yield Gateway(engine, config)
    engine.dispose()


def _url(gw: Gateway) -> str:
    return gw.engine.url.render_as_string(hide_password=False)


def _forwarder(gw: Gateway, edi: str) -> str:
    actor, _ = Parties(gw).add(role="forwarder", name=f"Forwarder {edi}", edi_ids=(edi,))
    assert actor.party_id is not None
    return actor.party_id


def _drop(gw: Gateway, party_id: str, name: str, data: bytes) -> None:
    """A complete file enters the inbox at once (as the SFTP server moves a closed upload in)."""
    box = mailbox(gw, party_id)
    box.create()
    box.work.mkdir(parents=True, exist_ok=True)
    staged = box.work / f"drop-{name}"
    staged.write_bytes(data)
    os.link(staged, box.inbox / name)
    staged.unlink()


def _scalar(gw: Gateway, query: object) -> int:
    with gw.engine.connect() as conn:
        return int(conn.scalar(query) or 0)  # type: ignore[call-overload]


def _consignments(gw: Gateway) -> tuple[int, int, int]:
    c = tables.consignments
    return (
        _scalar(gw, select(func.count()).select_from(c)),
        _scalar(gw, select(func.count(func.distinct(c.c.submitter_reference)))),
        _scalar(gw, select(func.count()).select_from(tables.consignment_versions)),
    )


def _settled(gw: Gateway, party_id: str, names: list[str]) -> bool:
    box = mailbox(gw, party_id)
    return all((box.archive / n).exists() for n in names) and not any(box.inbox.iterdir())


def test_two_worker_processes_take_every_file_once(site, tmp_path):
    """Two processes race for the same mailboxes: every file is ingested once, answered once, and every
    consignment gets exactly one CCRN."""
    files = {}
    for p in range(3):
        edi = f"SCALE{p}"
        party_id = _forwarder(site, edi)
        files[party_id] = [
            (f"m{f}.edi", cuscar(edi, f"SC{p}{f:03d}", _tomorrow(), consignments=120, prefix=f"P{p}F{f}"))
            for f in range(4)
        ]
        mailbox(site, party_id).create()
    workers = [
        start_worker_process(_url(site), site.config.data_path, tmp_path / f"worker-{i}.log")
        for i in range(2)
    ]
    try:
        for f in range(4):  # both processes' rescans find the files at about the same time
            for party_id, batch in files.items():
                _drop(site, party_id, *batch[f])
        names = {party_id: [n for n, _ in batch] for party_id, batch in files.items()}
        wait_for(lambda: all(_settled(site, p, n) for p, n in names.items()), 180, "every file to be filed")
    finally:
        for worker in workers:
            stop_process(worker)

    total = 3 * 4 * 120
    assert _consignments(site) == (total, total, total)
    f = tables.sftp_files
    with site.engine.connect() as conn:
        rows = conn.execute(select(f.c.party_id, f.c.name, f.c.status, f.c.attempts)).all()
    assert sorted((r.party_id, r.name) for r in rows) == sorted(
        (party_id, name) for party_id, batch in files.items() for name, _ in batch
    )  # one record per file: no file was taken by both processes
    assert {(r.status, r.attempts) for r in rows} == {("DONE", 1)}
    assert _scalar(site, select(func.count()).select_from(tables.edifact_interchanges)) == 12
    for party_id, batch in files.items():
        box = mailbox(site, party_id)
        assert sorted(p.name for p in box.outbox.iterdir()) == sorted(
            f"{name}{suffix}" for name, _ in batch for suffix in (".contrl.edi", ".cusres.edi")
        )
        for name, _ in batch:
            assert len(cusres_ccrns((box.outbox / f"{name}.cusres.edi").read_bytes())) == 120
    assert _scalar(site, select(func.count()).select_from(tables.sftp_claims)) == 0  # all released
    logs = "".join((tmp_path / f"worker-{i}.log").read_text() for i in range(2))
    assert "Traceback" not in logs


def test_a_killed_claimants_file_is_finished_by_another_process(site, tmp_path):
    party_id = _forwarder(site, "KILLED01")
    big = cuscar("KILLED01", "KILL0001", _tomorrow(), consignments=3000, per_message=250)
    url = _url(site)
    doomed = start_worker_process(url, site.config.data_path, tmp_path / "doomed.log", lease_seconds=3600)
    try:
        _drop(site, party_id, "big.edi", big)
        wait_for(lambda: _consignments(site)[0] > 0, 60, "the first batch to be committed")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
    finally:
        stop_process(doomed)
    box = mailbox(site, party_id)
    assert (box.inbox / "big.edi").exists() and _consignments(site)[0] < 3000
    with site.engine.connect() as conn:
        claim = conn.execute(select(tables.sftp_claims)).one()
    assert claim.party_id == party_id and f"/pid:{doomed.pid}/" in claim.owner
    assert claim.lease_until > datetime.now(UTC)  # still leased: the process is known dead, not timed out
    assert owner_is_dead(claim.owner)

    worker = MailboxWorker(site, threads=1, rescan_seconds=0.3)
    worker.start()
    try:
        wait_for(lambda: _settled(site, party_id, ["big.edi"]), 120, "big.edi to be finished")
        wait_for(worker.idle)
    finally:
        worker.stop()
    assert _consignments(site) == (3000, 3000, 3000)
    assert len(cusres_ccrns((box.outbox / "big.edi.cusres.edi").read_bytes())) == 3000
    f = tables.sftp_files
    assert _scalar(site, select(f.c.attempts).where(f.c.name == "big.edi")) == 2


def test_a_claim_of_another_machine_is_respected_until_its_lease_runs_out(site):
    party_id = _forwarder(site, "LEASED01")
    now = datetime.now(UTC)
    with site.engine.begin() as conn:
        conn.execute(
            insert(tables.sftp_claims).values(
                source="mailbox",
                party_id=party_id,
                owner="gw-node-2.example/0badf00d/4026531836/pid:4242/abcdef",
                file_name="m1.edi",
                claimed_at=now,
                lease_until=now + timedelta(hours=1),
            )
        )
    _drop(site, party_id, "m1.edi", cuscar("LEASED01", "LEASE001", _tomorrow(), consignments=5))
    worker = MailboxWorker(site, threads=1, rescan_seconds=0.2)
    worker.start()
    try:
        wait_for(lambda: worker.skipped >= 2, 30, "the worker to find the mailbox claimed")
        assert (mailbox(site, party_id).inbox / "m1.edi").exists() and _consignments(site)[0] == 0
        status = sftp_service.status(site)["mailboxes"][0]
        assert status["at_work"]["process"].startswith("gw-node-2.example/") and status["waiting"] == 1
        with site.engine.begin() as conn:  # an hour later: the other machine never renewed its lease
            conn.execute(
                update(tables.sftp_claims).values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )
        wait_for(lambda: _settled(site, party_id, ["m1.edi"]), 60, "m1.edi to be taken over")
    finally:
        worker.stop()
    assert _consignments(site)[0] == 5


def test_a_claim_is_won_by_one_claimant_only(site):
    party_id = _forwarder(site, "RACE0001")
    claimants = [Claims(site, lease_seconds=60) for _ in range(6)]
    barrier = threading.Barrier(len(claimants))
    won: list[bool] = [False] * len(claimants)

    def claim(i: int) -> None:
        barrier.wait()
        won[i] = claimants[i].acquire("mailbox", party_id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(claimants))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 1
    winner = claimants[won.index(True)]
    assert winner.acquire("mailbox", party_id)  # its own claim, renewed
    with site.engine.begin() as conn:  # almost run out: the heartbeat renews it in time
        conn.execute(update(tables.sftp_claims).values(lease_until=datetime.now(UTC) + timedelta(seconds=1)))
    winner.renew_all()
    with site.engine.connect() as conn:
        lease = conn.scalar(select(tables.sftp_claims.c.lease_until))
    assert lease is not None and lease > datetime.now(UTC) + timedelta(seconds=30)
    assert not any(c.acquire("mailbox", party_id) for c in claimants if c is not winner)
    winner.close()  # stopped: released
    loser = claimants[won.index(False)]
    assert loser.acquire("mailbox", party_id)
    for c in claimants:
        c.close()

    beating = Claims(site, lease_seconds=1)  # its heartbeat renews every quarter of the lease
    beating.start()
    try:
        assert beating.acquire("pull:partner", party_id)

        def lease() -> datetime:
            with site.engine.connect() as conn:
                found = conn.scalar(
                    select(tables.sftp_claims.c.lease_until).where(
                        tables.sftp_claims.c.source == "pull:partner"
                    )
                )
            assert found is not None
            return found

        first = lease()
        wait_for(lambda: lease() > first, 30, "the heartbeat to renew the lease")
    finally:
        beating.close()
    assert _scalar(site, select(func.count()).select_from(tables.sftp_claims)) == 0


def test_an_upload_in_progress_is_left_alone_and_an_orphan_is_filed(site, tmp_path):
    tool("sftp")
    party_id = _forwarder(site, "UPLOAD01")
    key, public = make_key(tmp_path / "keys", "upload")
    from adapters.sftp_keys import register_ssh_key
    from gateway.context import SYSTEM

    register_ssh_key(site, SYSTEM, party_id, public)
    server = SftpServer(site, None, "127.0.0.1", 0)  # a listener of another process: no worker here
    server.start()
    transport = paramiko.Transport(("127.0.0.1", server.port))
    try:
        transport.connect(username=party_id, pkey=paramiko.Ed25519Key.from_private_key_file(str(key)))
        client = paramiko.SFTPClient.from_transport(transport)
        assert client is not None
        data = cuscar("UPLOAD01", "UPL00001", _tomorrow(), consignments=3)
        handle = client.open("inbox/slow.edi", "wb")
        handle.write(data[:100])
        handle.flush()
        box = mailbox(site, party_id)
        (box.uploads / "0123456789abcdef-dead.edi").write_bytes(b"UNA:+.? 'UNB+")  # a dead process's
        assert recover_uploads(site, min_age=0) == 1  # another process starting: only the orphan goes
        assert (box.failed / "dead.edi").exists() and (box.failed / "dead.edi.error.txt").exists()
        assert not (box.failed / "slow.edi").exists()
        handle.write(data[100:])
        handle.close()
        wait_for(lambda: (box.inbox / "slow.edi").exists(), 10, "the upload to enter the inbox")
        assert (box.inbox / "slow.edi").read_bytes() == data
    finally:
        transport.close()
        server.stop()


def test_a_listener_without_a_worker_is_answered_by_a_worker_process(site, tmp_path):
    """``roadcargo serve --no-background`` beside ``roadcargo worker``: the upload is taken by the worker
    process, which finds it by its rescan; the partner gets its replies over SFTP."""
    sftp = tool("sftp")
    party_id = _forwarder(site, "SPLIT001")
    key, public = make_key(tmp_path / "keys", "split")
    from adapters.sftp_keys import register_ssh_key
    from gateway.context import SYSTEM

    register_ssh_key(site, SYSTEM, party_id, public)
    listener = sftp_service.SftpService(site, "127.0.0.1", 0, background=False)
    assert listener.start() is None and listener.worker is None and listener.server is not None
    port = listener.server.port
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {listener.server.host_key_line}\n")
    url = _url(site)
    worker = start_worker_process(url, site.config.data_path, tmp_path / "worker.log")
    (tmp_path / "m1.edi").write_bytes(cuscar("SPLIT001", "SPLIT001", _tomorrow(), consignments=4))

    def run(*commands: str) -> str:
        import subprocess

        batch = tmp_path / "batch"
        batch.write_text("\n".join(commands) + "\n")
        done = subprocess.run(
            [
                sftp, "-b", str(batch), "-i", str(key), "-P", str(port), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", f"{party_id}@127.0.0.1",
            ],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        run("put m1.edi inbox/m1.edi")
        box = mailbox(site, party_id)
        wait_for(lambda: (box.archive / "m1.edi").exists(), 60, "the worker process to answer")
        run("get outbox/m1.edi.cusres.edi")
    finally:
        stop_process(worker)
        listener.stop()
    assert len(cusres_ccrns((tmp_path / "m1.edi.cusres.edi").read_bytes())) == 4
    assert "stopped" in (worker.stdout.read() if worker.stdout else "")
