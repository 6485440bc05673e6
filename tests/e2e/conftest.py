"""A real ``roadcargo serve`` process for end-to-end tests: a free port, a temporary SQLite database and
data directory, stopped with SIGTERM at the end. ``gateway_server`` is shared by the tests of a module;
``start_gateway`` starts one more where a test needs its own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROADCARGO = str(Path(sys.executable).with_name("roadcargo"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayProcess:
    """A running gateway: its base URL, database URL and configuration file."""

    url: str
    db_url: str
    config: Path
    log: Path
    process: subprocess.Popen[str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a ``roadcargo`` command against this gateway's database and configuration."""
        return subprocess.run(
            [ROADCARGO, *args, "--db", self.db_url, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def add_party(self, role: str = "forwarder", name: str = "Test Party", *extra: str) -> dict[str, Any]:
        """Register a party with ``roadcargo party add --json``: its party_id and api_key (and pin)."""
        done = self.cli("party", "add", "--role", role, "--name", name, "--json", *extra)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result


@contextmanager
def start_gateway(
    directory: Path, config_text: str = "", db_url: str | None = None
) -> Iterator[GatewayProcess]:
    """``roadcargo serve`` on a free port (HTTP and SFTP) with its own data directory and its own
    SQLite file, or the database ``db_url`` names; waits for /healthz and stops the process (SIGTERM,
    then kill) on the way out."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gateway.toml"
    config.write_text(f'[server]\ndata_dir = "{directory / "var"}"\n{config_text}')
    db_url = db_url or f"sqlite:///{directory / 'gateway.db'}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADCARGO_")}
    log = directory / "serve.log"  # a file, not a pipe: a full pipe would block the server's logging
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                ROADCARGO,
                "serve",
                "--http-port",
                str(port),
                "--sftp-port",
                "0",
                "--db",
                db_url,
                "--config",
                str(config),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"roadcargo serve exited with {process.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("roadcargo serve did not answer /healthz within 30 s")
            time.sleep(0.2)
        yield GatewayProcess(url, db_url, config, log, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with start_gateway(tmp_path_factory.mktemp("gateway")) as server:
        yield server
