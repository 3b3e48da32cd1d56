"""coro_durable.testing.wait_for_status: wait until a run reaches a status, on every store, under
asyncio and trio; a clear error when it does not get there in time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import coro_durable as cd
from coro_durable import errors
from coro_durable.store import StoreWrapper
from coro_durable.testing import wait_for_status

pytestmark = pytest.mark.anyio

README = Path(__file__).resolve().parents[1] / "README.md"

GATE: list[anyio.Event] = []  # the event `held` waits on, made by the test that uses it


async def held() -> str:
    await GATE[0].wait()
    return "released"


@cd.workflow(name="wait_for_status.gated")
async def gated() -> str:
    return await cd.call(held)


@cd.workflow(name="wait_for_status.approval")
async def approval() -> object:
    return await cd.await_signal("go")


class Facade:
    """An application's own client: not a cd.Runtime, it answers describe from one."""

    def __init__(self, rt: cd.Runtime) -> None:
        self.rt = rt
        self.calls = 0

    async def describe(self, run_id: str) -> cd.RunInfo:
        self.calls += 1
        return await self.rt.describe(run_id)


class CountingStore(StoreWrapper):
    """A store that tracks how many listeners are subscribed to it right now."""

    def __init__(self, inner: cd.Store) -> None:
        super().__init__(inner)
        self.listeners = 0

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        unsubscribe = self.inner.subscribe(listener)
        self.listeners += 1
        done = False

        def once() -> None:
            nonlocal done
            if not done:
                done = True
                self.listeners -= 1
            unsubscribe()

        return once


async def test_returns_the_run_info_once_the_run_gets_there(
    make_store: Callable[[], cd.Store],
) -> None:
    """wait_for_status returns the RunInfo with the status reached: running while a step holds
    (a claim, which no store notifies), waiting on a signal (a released lease, which stores
    notify), then completed or failed, whichever comes; at once for a run already there."""
    GATE[:] = [anyio.Event()]
    async with cd.Runtime(make_store(), poll_interval=0.05) as rt:
        await rt.start(gated, run_id="g")
        running = await wait_for_status(rt, "g", cd.RunStatus.RUNNING)
        assert running.status == cd.RunStatus.RUNNING and running.owner == rt.worker_id
        GATE[0].set()
        done = await wait_for_status(rt, "g", "completed", "failed")
        assert done.status == cd.RunStatus.COMPLETED and done.result == "released"

        await rt.start(approval, run_id="a")
        waiting = await wait_for_status(rt, "a", "waiting")
        assert waiting.waiting_on == "signal 'go'" and waiting.owner is None
        started = time.monotonic()
        again = await wait_for_status(rt, "a", "waiting", "completed")
        assert again.status == cd.RunStatus.WAITING and time.monotonic() - started < 1.0
        await rt.signal("a", "go", "yes")
        assert (await wait_for_status(rt, "a", "completed")).result == "yes"


async def test_timeout_names_the_run_the_statuses_wanted_and_the_last_seen(
    make_store: Callable[[], cd.Store],
) -> None:
    """When the run does not get there in time, ResultTimeoutError (a TimeoutError carrying the
    run_id) says which run, which statuses were wanted and where the run was last seen."""
    async with cd.Runtime(make_store(), poll_interval=0.05) as rt:
        await rt.start(approval, run_id="stuck")
        await wait_for_status(rt, "stuck", "waiting")
        started = time.monotonic()
        with pytest.raises(errors.ResultTimeoutError) as caught:
            await wait_for_status(rt, "stuck", "completed", cd.RunStatus.FAILED, timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 3.0
    assert isinstance(caught.value, TimeoutError) and caught.value.run_id == "stuck"
    message = str(caught.value)
    assert "run 'stuck' did not become completed or failed within 0.3s" in message
    assert "last seen waiting at step 0, waiting on signal 'go'" in message


async def test_a_run_no_worker_serves_says_so_on_timeout(
    make_store: Callable[[], cd.Store],
) -> None:
    """A run that waits for a worker: the timeout message carries describe's note about it."""
    async with cd.Runtime(make_store(), worker=False) as client:
        await client.start(approval, run_id="orphan")
        with pytest.raises(errors.ResultTimeoutError, match="last seen pending") as caught:
            await wait_for_status(client, "orphan", "waiting", timeout=0.2)
    assert "no live worker serves workflow 'wait_for_status.approval'" in str(caught.value)


async def test_any_runtime_client_is_polled(make_store: Callable[[], cd.Store]) -> None:
    """A client that is not an embedded Runtime (nothing to subscribe to) is polled until the
    run gets there."""
    async with (
        cd.Runtime(make_store(), poll_interval=0.05) as worker,
        cd.Runtime(make_store(), worker=False) as client,
    ):
        facade = Facade(client)
        await worker.start(approval, run_id="polled")
        info = await wait_for_status(facade, "polled", "waiting")
        assert info.status == cd.RunStatus.WAITING and facade.calls >= 1


async def test_leaves_no_listener_on_the_store(make_store: Callable[[], cd.Store]) -> None:
    """On an embedded Runtime the wait listens to the store's change notifications while it
    waits, and unsubscribes when it returns or times out."""
    store = CountingStore(make_store())
    async with cd.Runtime(store, poll_interval=0.05) as rt:
        own = store.listeners  # the Runtime's own subscription
        await rt.start(approval, run_id="l")

        async def watch() -> None:
            await wait_for_status(rt, "l", "completed")

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await wait_for_status(rt, "l", "waiting")
            assert store.listeners == own + 1  # the watcher's
            await rt.signal("l", "go", 1)
        assert store.listeners == own
        with pytest.raises(errors.ResultTimeoutError):
            await wait_for_status(rt, "l", "failed", timeout=0.05)
        assert store.listeners == own


async def test_bad_arguments_are_refused(make_store: Callable[[], cd.Store]) -> None:
    """No status, or a name that is not a run status, is a ConfigurationError listing the
    statuses; an unknown run raises RunNotFoundError."""
    async with cd.Runtime(make_store(), worker=False) as client:
        await client.start(approval, run_id="r")
        with pytest.raises(errors.ConfigurationError, match="at least one status"):
            await wait_for_status(client, "r")
        with pytest.raises(errors.ConfigurationError, match="'done', which is not a run status"):
            await wait_for_status(client, "r", "done")
        with pytest.raises(errors.RunNotFoundError):
            await wait_for_status(client, "nope", "completed")


def readme_block(heading: str) -> str:
    """The first python code block after ``heading`` in the README."""
    text = README.read_text()
    section = text[text.index(f"\n{heading}\n") :]
    match = re.search(r"^```python\n(.*?)^```$", section, re.M | re.S)
    assert match is not None, f"no python block under {heading}"
    return match.group(1)


def test_readme_example_runs(tmp_path: Path) -> None:
    """The README's wait_for_status example, saved as a script and run: it prints what the
    waits returned (the signal the run parked on, then its result)."""
    script = tmp_path / "wait_example.py"
    script.write_text(readme_block("### Wait for a status: `coro_durable.testing.wait_for_status`"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(README.parent / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["signal 'approval'", "approved: yes"]
