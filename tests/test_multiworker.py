"""Scale-out on a shared server store: three worker processes, one SIGKILLed, one SIGSTOPped.

Runs on every installed server store (Postgres, Redis with appendonly on): 300 runs of 10 steps
spread over three workers; every step's idempotent effect is applied exactly once, the killed
worker's runs are taken over after its lease expires, and the paused worker's stale writes are
rejected by fencing (it says so in its log).
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import coro_durable as cd
from conftest import STORES, redis_server_config, redis_test_url
from test_processes import Workers

SERVER_STORES = [kind for kind in STORES if kind in ("postgres", "redis")]

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(not SERVER_STORES, reason="no server store plugin installed"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the parent only starts runs and polls; the workers are processes


@contextlib.contextmanager
def server_store(kind: str) -> Iterator[str]:
    if kind == "redis":
        with redis_server_config(appendonly="yes", appendfsync="everysec"):
            yield redis_test_url(durability="strict")
    else:
        from conftest import pg_test_url

        yield pg_test_url()


@pytest.mark.parametrize("kind", SERVER_STORES or ["none"])
async def test_three_workers_300_runs_with_a_kill_and_a_pause(kind: str, tmp_path: Path) -> None:
    """300 runs x 10 steps on 3 workers; one SIGKILLed, one paused past its lease: every effect
    applied exactly once, every run completes, the paused worker's writes are fenced out."""
    n_runs, steps = 300, 10
    with server_store(kind) as url:
        workers = Workers(tmp_path, PROC_LOG="1", PROC_MAX_CRASHES="20")
        workers.store = url
        logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
        procs = [workers.spawn(log) for log in logs]
        try:
            async with cd.Runtime(url, worker=False) as client:
                for i in range(n_runs):  # allow_unknown: the workers may not have registered yet
                    await client.start("ten_steps", 0.01, run_id=f"mw-{i:03}", allow_unknown=True)

                async def completed() -> int:
                    return len(await client.list_runs(status="completed", limit=n_runs + 1))

                with anyio.fail_after(120):
                    while await completed() < n_runs // 5:
                        await anyio.sleep(0.05)
                procs[0].send_signal(signal.SIGKILL)  # worker 0 dies mid-flight
                procs[0].wait()
                with anyio.fail_after(120):
                    while await completed() < n_runs // 2:
                        await anyio.sleep(0.05)
                procs[1].send_signal(signal.SIGSTOP)  # worker 1 stalls past its 0.5 s lease
                await anyio.sleep(2.0)
                procs[1].send_signal(signal.SIGCONT)
                with anyio.fail_after(180):
                    while await completed() < n_runs:
                        await anyio.sleep(0.1)
                results = [await client.result(f"mw-{i:03}", timeout=5) for i in range(n_runs)]
        finally:
            workers.stop_all()
    assert results == [sum(i * i for i in range(steps))] * n_runs
    applied = workers.sink_rows("SELECT key FROM effects")
    expected = {f"mw-{r:03}:{s}" for r in range(n_runs) for s in range(steps)}
    assert len(applied) == len(expected) and {k for (k,) in applied} == expected
    invocations = workers.sink_rows("SELECT key FROM invocations")
    assert {k for (k,) in invocations} == expected  # re-invocations reuse their step's key
    claimed = [len(re.findall(r"claimed run mw-", log.read_text())) for log in logs]
    assert all(c > 0 for c in claimed), claimed  # the runs spread over all three workers
    paused_log = logs[1].read_text()
    assert "lost" in paused_log and "lease" in paused_log, paused_log[-2000:]
