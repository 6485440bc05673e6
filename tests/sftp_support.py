"""What the SFTP tests share: real OpenSSH tools, keys made with ssh-keygen, CUSCAR files after the
implementation guide of design section 9, and reading the replies."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mappings.edifact import syntax

HKCUSTOMS = "HKCUSTOMS"


def tool(name: str) -> str:
    """The path of an OpenSSH program. Missing tools fail the test: the SFTP channel is tested for real."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        pytest.fail(
            f"{name} is not installed: run scripts/setup.sh test (it installs openssh-client/-server)"
        )
    return found


def make_key(folder: Path, name: str) -> tuple[Path, str]:
    """An Ed25519 key pair made with ssh-keygen: the private key's path and the public key line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    subprocess.run(
        [tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path, path.with_name(name + ".pub").read_text()


def consignment_lines(seq: int, reference: str) -> list[str]:
    return [
        f"CNI+{seq}+{reference}",
        f"RFF+CMR:{reference}",
        "LOC+9+CNSZX",
        "LOC+11+HKHKG",
        "LOC+27+CN",
        "NAD+CZ+++SHENZHEN BRIGHT TOYS MANUFACTURING:CO LTD+18 INDUSTRIAL AVENUE+SHENZHEN++518000+CN",
        "NAD+CN+++HARBOUR TRADERS LTD+2 HARBOUR ROAD, WAN CHAI+HONG KONG+++HK",
        "GID+1+40:CT::6:CARTONS",
        "FTX+AAA+++PLASTIC TOY BUILDING BLOCKS",
        "MEA+AAE+G+KGM:480.5",
        "MOA+40:12500.00:HKD",
        "CST++950300",
    ]


def cuscar(
    sender: str,
    control_reference: str,
    crossing: str,
    consignments: int = 2,
    per_message: int = 500,
    prefix: str = "CMR",
) -> bytes:
    """A CUSCAR D.96B interchange lodging ``consignments`` consignments (references PREFIX-000001, ...)
    for an import at Lok Ma Chau on ``crossing`` (CCYYMMDD, Hong Kong time), ``per_message`` per message."""
    lines = [f"UNB+UNOC:3+{sender}:ZZZ+{HKCUSTOMS}:ZZZ+261201:1000+{control_reference}"]
    messages = 0
    for start in range(0, consignments, per_message):
        messages += 1
        body = [
            f"UNH+{messages}+CUSCAR:D:96B:UN",
            f"BGM+85+MAN{control_reference}{messages}+9",
            "DTM+137:202611261000:203",
            "TDT+20++3+++++AB1234",
            "LOC+41+LMC",
            f"DTM+132:{crossing}:102",
            "GIS+23",
        ]
        for seq, n in enumerate(range(start, min(start + per_message, consignments)), start=1):
            body += consignment_lines(seq, f"{prefix}-{n + 1:06d}")
        lines += [*body, f"UNT+{len(body) + 1}+{messages}"]
    lines.append(f"UNZ+{messages}+{control_reference}")
    return ("UNA:+.? '" + "'".join(lines) + "'").encode("latin-1")


def segments(data: bytes) -> list[list[str]]:
    """An interchange's segments as [tag, element, ...] with components joined by ':'."""
    out = []
    for positioned in syntax.tokenize(data):
        seg = positioned.segment
        out.append([seg.tag, *(":".join(e) if isinstance(e, list) else str(e) for e in seg.elements)])
    return out


def cusres_ccrns(data: bytes) -> dict[str, str]:
    """submitter_reference -> CCRN from a CUSRES interchange (SG6 DOC+730 followed by RFF+XC)."""
    found: dict[str, str] = {}
    reference = None
    for seg in segments(data):
        if seg[0] == "DOC":
            reference = seg[2]
        elif seg[0] == "RFF" and seg[1].startswith("XC:") and reference is not None:
            found[reference] = seg[1][3:]
    return found


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- another gateway process doing SFTP background work ------------------------------------------------

# What `roadcargo worker` runs for the SFTP channel (adapters.sftp_service.start_processing), in a
# process of its own on the given database and data directory, with the real clock; SIGTERM stops it.
WORKER_SCRIPT = """
import dataclasses, logging, signal, sys, threading
from adapters import sftp_service
from gateway import db
from gateway.config import Config, ServerConfig
from gateway.context import Gateway

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s: %(message)s")
url, data_dir, lease, rescan = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
gw = Gateway(db.make_engine(url), dataclasses.replace(Config(), server=ServerConfig(data_dir=data_dir)))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
service = sftp_service.start_processing(gw, threads=2, rescan_seconds=rescan, lease_seconds=lease)
print("started", flush=True)
stop.wait()
service.stop()
print("stopped", flush=True)
"""


def start_worker_process(
    db_url: str, data_dir: Path, log: Path, lease_seconds: float = 60.0, rescan_seconds: float = 0.3
) -> subprocess.Popen[str]:
    """A separate gateway process running the SFTP mailbox worker; returns once it has started (its
    start files orphaned uploads and scans the mailboxes)."""
    out = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, db_url, str(data_dir), str(lease_seconds), str(rescan_seconds)],
        stdout=subprocess.PIPE,
        stderr=out,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    out.close()
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "started":
        process.kill()
        pytest.fail(f"the worker process did not start: {log.read_text()[-3000:]}")
    return process


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
