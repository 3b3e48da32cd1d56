"""A real Restate server for the tests: `restate-server` from npm (@restatedev/restate-server-linux-x64).

``bash scripts/ensure-restate.sh`` installs the static binary under ``.tools/`` once (``make
setup`` runs it) and prints its path; nothing is downloaded when it is already there. The server
is started once per test session in a temporary base directory, binds 127.0.0.1 on free ports
(ingress, admin, node), runs with the small-footprint settings (one partition, 32 MB of RocksDB
memory, warnings only, TCP only), is given a bounded start-up time, and is killed with its whole
process group at the end. Endpoints register themselves (RestateRuntime does on open).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 60.0  # generous: the machine may be loaded by other test runs
INSTALL_TIMEOUT = 600.0  # only the first time, when npm has to fetch the package


def restate_server_binary() -> str:
    """The restate-server binary, installed by scripts/ensure-restate.sh if missing."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-restate.sh")],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
    )
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"scripts/ensure-restate.sh could not install restate-server (exit "
            f"{done.returncode}): {done.stderr[-2000:]}"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RestateServer:
    ingress: str  # host:port
    admin: str  # http://host:port
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, listen: str | None = None, **params: object) -> str:
        """A restate:// URL for this server; ``listen`` defaults to a free port."""
        listen = listen or f"127.0.0.1:{free_port()}"
        query = "&".join([f"admin={self.admin}", f"listen={listen}"] + [f"{k}={v}" for k, v in params.items()])  # fmt: skip
        return f"restate://{self.ingress}?{query}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def restate_server() -> Iterator[RestateServer]:
    """Start restate-server, wait until ingress and admin answer, kill it afterwards."""
    binary = restate_server_binary()
    ingress, admin, node = free_port(), free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="cd-restate-"))
    log = workdir / "server.log"
    env = {
        **os.environ,
        "RESTATE_BASE_DIR": str(workdir / "data"),
        "RESTATE_LISTEN_MODE": "tcp",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{node}/",
        # small footprint: one partition, little RocksDB memory, quiet logs
        "RESTATE_DEFAULT_NUM_PARTITIONS": "1",
        "RESTATE_BOOTSTRAP_NUM_PARTITIONS": "1",
        "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "32 MB",
        "RESTATE_ADMIN__QUERY_ENGINE__MEMORY_SIZE": "64 MB",
        "RESTATE_LOG_FILTER": "warn",
        "RESTATE_DISABLE_TELEMETRY": "true",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "--no-logo"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
            start_new_session=True,  # our own process group: killed as a whole
        )
    server = RestateServer(f"127.0.0.1:{ingress}", f"http://127.0.0.1:{admin}", proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (
            _healthy(f"{server.admin}/health")
            and _healthy(f"http://{server.ingress}/restate/health")
        ):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"restate-server exited with code {proc.returncode}:\n{server.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"restate-server was not healthy within {START_TIMEOUT}s:\n{server.log_tail()}"
                )
            time.sleep(0.05)
        yield server
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
