"""Real worker processes on SQLite, PostgreSQL and Redis, each under asyncio and trio: SIGTERM,
cancel and SIGKILL mid-step.

* SIGTERM during a step: the worker finishes the step, journals its result, hands the run back
  and exits; after a restart every step body has run exactly once (invariant 11).
* A cancel from another process reaches a step running in the worker within about a second:
  the step is interrupted, its effect never happens, the workflow's cleanup runs (invariant 10).
* A worker SIGKILLed during a heartbeating step: another process's `describe` named the step in
  flight, and the next attempt starts from the details of the last heartbeat.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
from conftest import STORES, pg_test_url, redis_test_url

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

APP = Path(__file__).with_name("proc_app.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the parent only polls; the workers are separate processes


@pytest.fixture(params=[kind for kind in STORES if kind != "memory"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store several processes can share."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    if request.param == "postgres":
        return pg_test_url()
    return redis_test_url()


class Procs:
    def __init__(self, url: str, tmp_path: Path, loop: str) -> None:
        self.url = url
        self.sink = tmp_path / "sink.db"
        self.tmp = tmp_path
        self.env = {**os.environ, "PROC_SINK": str(self.sink), "PROC_LOG": "1", "PROC_LOOP": loop}
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(APP), self.url], env={**self.env, **env}, stderr=out
            )
        self.procs.append(proc)
        return proc, log

    def rows(self, sql: str) -> list[Any]:
        if not self.sink.exists():
            return []
        db = sqlite3.connect(self.sink, timeout=30)
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the table does not exist yet
            return []
        finally:
            db.close()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(params=["asyncio", "trio"])
def worker_loop(request: pytest.FixtureRequest) -> str:
    """The event loop the worker processes run (the parent only polls)."""
    return str(request.param)


@pytest.fixture
def procs(shared_url: str, tmp_path: Path, worker_loop: str) -> Iterator[Procs]:
    p = Procs(shared_url, tmp_path, worker_loop)
    try:
        yield p
    finally:
        p.stop_all()


async def until(predicate: Any, seconds: float = 30.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.02)


async def test_sigterm_finishes_the_step_in_flight_then_hands_the_run_back(procs: Procs) -> None:
    """SIGTERM while a sync step runs: the worker lets the step finish, journals its result, hands
    the run back and exits 0 saying so; a new worker resumes it and no step body runs twice."""
    async with cd.Runtime(procs.url, worker=False) as client:
        await client.start("four_steps", 1.0, run_id="term", allow_unknown=True)
        worker, log = procs.spawn("first")
        await until(lambda: procs.rows("SELECT 1 FROM invocations WHERE step = 1"))
        worker.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            while worker.poll() is None:
                await anyio.sleep(0.05)
        assert worker.returncode == 0, log.read_text()
        history = await client.history("term")
        assert [(e.seq, e.status) for e in history] == [(0, "ok"), (1, "ok")]  # step 1 journaled
        assert (await client.describe("term")).status != cd.RunStatus.RUNNING
        text = log.read_text()
        assert "handed back 1 run(s)" in text, text
        procs.spawn("second")
        assert await client.result("term", timeout=30) == sum(i * i for i in range(4))
    invocations = procs.rows("SELECT key, count(*) FROM invocations GROUP BY key ORDER BY key")
    assert invocations == [(f"term:{i}", 1) for i in range(4)]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_cancel_reaches_a_step_running_in_another_process(procs: Procs, kind: str) -> None:
    """A cancel from this process interrupts a step running in the worker process within about a
    second: the step's effect never happens, the workflow's cleanup runs, the run is cancelled."""
    async with cd.Runtime(procs.url, worker=False) as client:
        await client.start("cancellable", kind, 30.0, run_id="c", allow_unknown=True)
        procs.spawn("worker")
        await until(lambda: procs.rows("SELECT 1 FROM invocations WHERE key = 'c:0'"))
        began = time.monotonic()
        await client.cancel("c")
        with pytest.raises(cd.RunCancelledError):
            await client.result("c", timeout=20)
        took = time.monotonic() - began
        history = await client.history("c")
    assert took < 5.0, f"the cancel took {took:.1f}s"
    assert [(e.seq, e.status) for e in history] == [(0, "error"), (1, "ok")]
    assert procs.rows("SELECT key FROM effects ORDER BY key") == [("c:1",)]  # only the cleanup


async def test_heartbeat_details_survive_a_killed_worker(procs: Procs) -> None:
    """describe from another process names the step in flight with its heartbeat details; after
    the worker is SIGKILLed, the step runs again (same attempt number: a crash is not charged to
    the retry policy) starting from those details."""
    async with cd.Runtime(procs.url, worker=False) as client:
        await client.start("paged", 30, run_id="pages", allow_unknown=True)
        worker, _ = procs.spawn("first")
        with anyio.fail_after(30):
            while True:
                info = await client.describe("pages")
                if info.executing and (info.executing[0].details or {}).get("page", 0) >= 5:
                    break
                await anyio.sleep(0.05)
        step = info.executing[0]
        assert (step.seq, step.name, step.attempt) == (0, "paged_work", 1)
        assert step.heartbeat_at is not None and step.worker
        worker.kill()
        worker.wait()
        procs.spawn("second")
        assert await client.result("pages", timeout=60) == 30
    seen = procs.rows("SELECT attempt, details FROM seen ORDER BY rowid")
    assert seen[0] == (1, "null")
    assert seen[1][0] == 1  # a crash is not charged to the retry policy
    assert json.loads(seen[1][1])["page"] >= 5
