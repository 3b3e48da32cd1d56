"""Real worker processes on SQLite: SIGKILLed at random moments, and a run that kills its worker."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

APP = Path(__file__).with_name("proc_app.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the parent only polls; the workers are separate processes


class Workers:
    """Spawns worker processes of tests/proc_app.py on one store and sink."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.store = f"sqlite:///{tmp_path / 'runs.db'}"
        self.sink = tmp_path / "sink.db"
        self.env = {**os.environ, "PROC_SINK": str(self.sink), **env}
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, log: Path | None = None) -> subprocess.Popen[bytes]:
        stderr = log.open("wb") if log else None
        proc = subprocess.Popen(
            [sys.executable, str(APP), self.store],
            env=self.env,
            stderr=stderr or subprocess.DEVNULL,
        )
        if stderr:
            stderr.close()  # the child has its own copy
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def sink_rows(self, sql: str) -> list[Any]:
        db = sqlite3.connect(self.sink)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()


async def test_sigkilled_worker_resumes_with_every_effect_applied_once(tmp_path: Path) -> None:
    """A 20-step run whose worker is SIGKILLed at 10 random moments completes with the right
    result; every step's effect is applied exactly once, and step invocations <= 20 + kills."""
    workers = Workers(tmp_path)
    rng = random.Random(int(os.environ.get("KILL_SEED", time.time())))
    kills = 0
    try:
        async with cd.Runtime(workers.store, worker=False) as client:
            # allow_unknown: the worker process that serves it is started afterwards
            await client.start("twenty_steps", 0.08, run_id="kill-me", allow_unknown=True)
            while kills < 10:
                proc = workers.spawn()
                before = (await client.describe("kill-me")).step
                with anyio.fail_after(30):  # wait for this worker to make progress
                    while (await client.describe("kill-me")).step <= before:
                        await anyio.sleep(0.005)
                await anyio.sleep(rng.uniform(0.0, 0.12))  # then kill it at a random moment
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                assert (await client.describe("kill-me")).status != cd.RunStatus.COMPLETED, (
                    "the run finished before all kills happened; make the steps slower"
                )
            workers.spawn()
            result = await client.result("kill-me", timeout=60)
    finally:
        workers.stop_all()
    assert result == sum(i * i for i in range(20))
    applied = workers.sink_rows("SELECT key, step FROM effects ORDER BY step")
    assert applied == [(f"kill-me:{i}", i) for i in range(20)]
    invocations = workers.sink_rows("SELECT key, step FROM invocations")
    assert {key for key, _ in invocations} == {key for key, _ in applied}  # keys never drift
    assert 20 <= len(invocations) <= 20 + kills, invocations


async def test_run_that_kills_its_worker_is_quarantined_while_others_flow(tmp_path: Path) -> None:
    """A run whose step kills the worker process on every resume is quarantined after
    max_crashes with its last error; other runs complete; after the fix, resume completes it."""
    marker = tmp_path / "poison"
    marker.touch()
    workers = Workers(tmp_path, PROC_MARKER=str(marker), PROC_MAX_CRASHES="3")
    deaths = 0
    try:
        async with cd.Runtime(workers.store, worker=False) as client:
            # allow_unknown: the worker is started afterwards, and restarted after each death
            await client.start("poisoned", run_id="poison", allow_unknown=True)
            proc = workers.spawn()
            healthy = 0
            with anyio.fail_after(60):
                while (await client.describe("poison")).status != cd.RunStatus.QUARANTINED:
                    await client.start(
                        "healthy", healthy, run_id=f"healthy-{healthy}", allow_unknown=True
                    )
                    healthy += 1
                    await anyio.sleep(0.1)
                    if proc.poll() is not None:  # a supervisor restarting the dead worker
                        assert proc.returncode == 3
                        deaths += 1
                        proc = workers.spawn()
            info = await client.describe("poison")
            assert info.crash_count >= 3 and info.last_error is not None
            assert "lost its lease" in info.last_error
            for i in range(healthy):
                assert await client.result(f"healthy-{i}", timeout=30) == (1000 + i) ** 2
            marker.unlink()  # "deploy the fix"
            await client.resume("poison")
            assert await client.result("poison", timeout=30) == "survived"
    finally:
        workers.stop_all()
    assert deaths == 3


async def test_paused_worker_past_its_lease_cannot_write(tmp_path: Path) -> None:
    """A worker SIGSTOPped past its lease is fenced out: another worker takes the run over, and
    when the first one resumes its writes are rejected and it logs that it lost the lease."""
    workers = Workers(tmp_path)
    log_a = tmp_path / "worker-a.log"
    try:
        async with cd.Runtime(workers.store, worker=False) as client:
            await client.start("twenty_steps", 0.25, run_id="paused", allow_unknown=True)
            worker_a = workers.spawn(log_a)
            with anyio.fail_after(30):
                while (await client.describe("paused")).step < 2:
                    await anyio.sleep(0.005)
            await anyio.sleep(0.1)  # A is inside a step now
            worker_a.send_signal(signal.SIGSTOP)
            paused_at = (await client.describe("paused")).step
            await anyio.sleep(1.0)  # twice the lease
            workers.spawn()
            with anyio.fail_after(30):  # B took over and made progress
                while (await client.describe("paused")).step < paused_at + 2:
                    await anyio.sleep(0.01)
            worker_a.send_signal(signal.SIGCONT)
            result = await client.result("paused", timeout=60)
            history = await client.history("paused")
            await anyio.sleep(0.5)  # let A notice and log
    finally:
        workers.stop_all()
    assert result == sum(i * i for i in range(20))
    assert [e.seq for e in history] == list(range(20))
    applied = workers.sink_rows("SELECT key, step FROM effects ORDER BY step")
    assert applied == [(f"paused:{i}", i) for i in range(20)]
    assert "lease" in log_a.read_text() and "lost" in log_a.read_text()
