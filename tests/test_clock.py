"""The runtime's clock: with coro_durable.testing.FakeClock, durable timers, signal timeouts, retry
backoff and cd.now() follow the test's clock (no real sleeping), while leases keep real time; the
stores that keep time by their server refuse a fake clock."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
from conftest import STORES, pg_test_url, redis_test_url
from coro_durable.errors import ConfigurationError
from coro_durable.testing import FakeClock, wait_for_status

pytestmark = pytest.mark.anyio

DAY = 86400.0
START = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
ATTEMPTS: list[int] = []
GATE: list[anyio.Event] = []


def stamp(label: str) -> str:
    return label


@cd.workflow(name="clock_reminder")
async def reminder() -> dict[str, Any]:
    before = await cd.now()
    await cd.sleep(DAY)
    after = await cd.now()
    sent = await cd.call(stamp, "sent")
    return {"before": before.isoformat(), "after": after.isoformat(), "sent": sent}


@cd.workflow(name="clock_approval")
async def approval() -> str:
    try:
        return str(await cd.await_signal("approve", timeout=3600))
    except cd.errors.SignalTimeout:
        return "timed out"


def flaky() -> str:
    ATTEMPTS.append(cd.step_info().attempt)
    if len(ATTEMPTS) == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@cd.workflow(name="clock_backoff")
async def backoff() -> str:
    return str(await cd.call(flaky, retry=cd.RetryPolicy(max_attempts=2, initial_interval=600)))


@cd.workflow(name="clock_short_sleep")
async def short_sleep() -> str:
    await cd.sleep(0.5)  # shorter than inline_wait: waited in-process, on the clock
    return "woke"


async def held_step() -> str:
    await GATE[0].wait()
    return "done"


@cd.workflow(name="clock_held")
async def held() -> str:
    return str(await cd.call(held_step))


@pytest.fixture(params=[s for s in STORES if s in ("memory", "sqlite")])
def local_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], cd.Store]:
    """The stores that keep time by the process's clock: fresh, then shared by each call."""
    shared: list[cd.Store] = []

    def make() -> cd.Store:
        if request.param == "memory":
            if not shared:
                shared.append(cd.MemoryStore())
            return shared[0]
        return cd.open_store(f"sqlite:///{tmp_path / 'runs.db'}")

    return make


async def test_a_one_day_timer_fires_when_the_clock_is_advanced(
    local_store: Callable[[], cd.Store],
) -> None:
    """A run sleeping one day parks (holding nothing) until the fake clock passes its due time,
    then completes at once; cd.now() and the journal's timestamps are the clock's, not the
    machine's, and no real day (nor second) passes."""
    clock = FakeClock(START)
    started = time.monotonic()
    async with cd.Runtime(local_store(), clock=clock, poll_interval=5.0) as rt:
        handle = await rt.start(reminder, run_id="remind")
        info = await wait_for_status(rt, "remind", cd.RunStatus.WAITING)
        assert info.wake_at == START + dt.timedelta(days=1)
        clock.advance(DAY - 1)
        await anyio.sleep(0.2)
        assert (await handle.describe()).status == cd.RunStatus.WAITING  # not due yet
        clock.advance(1)  # due: the worker looks at once, not at its next 5 s poll
        result = await handle.result(timeout=3)
        history = await handle.history()
    assert time.monotonic() - started < 3
    assert result == {
        "before": START.isoformat(),
        "after": (START + dt.timedelta(days=1)).isoformat(),
        "sent": "sent",
    }
    assert history[-1].finished_at == pytest.approx(START.timestamp() + DAY)
    assert history[0].started_at == pytest.approx(START.timestamp())


async def test_a_signal_timeout_and_a_retry_backoff_follow_the_clock(
    local_store: Callable[[], cd.Store],
) -> None:
    """A one-hour signal timeout expires when the clock passes it (not before), and a step's
    ten-minute retry backoff ends when the clock is advanced by ten minutes."""
    ATTEMPTS.clear()
    clock = FakeClock(START)
    async with cd.Runtime(local_store(), clock=clock) as rt:
        waiting = await rt.start(approval, run_id="approve")
        retried = await rt.start(backoff, run_id="backoff")
        await wait_for_status(rt, "approve", cd.RunStatus.WAITING)
        await wait_for_status(rt, "backoff", cd.RunStatus.WAITING)
        assert ATTEMPTS == [1]
        clock.advance(600)
        assert await retried.result(timeout=3) == "ok"
        assert ATTEMPTS == [1, 2]
        assert (await waiting.describe()).status == cd.RunStatus.WAITING  # 50 minutes to go
        clock.advance(3000)
        assert await waiting.result(timeout=3) == "timed out"


async def test_a_short_in_process_wait_also_follows_the_clock(
    local_store: Callable[[], cd.Store],
) -> None:
    """A sleep shorter than inline_wait is waited in-process (the run keeps its lease), and it
    ends when the clock passes it: a real wait never ends it."""
    clock = FakeClock(START)
    async with cd.Runtime(local_store(), clock=clock) as rt:
        handle = await rt.start(short_sleep)
        await wait_for_status(rt, handle.run_id, cd.RunStatus.RUNNING)
        await anyio.sleep(0.8)  # longer than the sleep, in real time
        assert (await handle.describe()).status == cd.RunStatus.RUNNING
        clock.advance(0.5)
        assert await handle.result(timeout=3) == "woke"


async def test_a_jump_of_the_clock_never_takes_a_run_from_its_live_worker(
    local_store: Callable[[], cd.Store],
) -> None:
    """Leases are measured in real time: advancing the fake clock by a day while a step runs
    leaves the run with its worker (no takeover, no crash counted, the step runs once)."""
    GATE[:] = [anyio.Event()]
    clock = FakeClock(START)
    async with cd.Runtime(local_store(), clock=clock, lease_ttl=0.3, poll_interval=0.01) as rt:
        handle = await rt.start(held)
        await wait_for_status(rt, handle.run_id, cd.RunStatus.RUNNING)
        clock.advance(DAY)
        await anyio.sleep(0.5)  # more than a lease: renewals carry on in real time
        GATE[0].set()
        assert await handle.result(timeout=3) == "done"
        history = await handle.history()
    assert history[0].attempts == 1
    run = await local_store().get_run(handle.run_id)
    assert run is not None and run.epoch == 1 and run.crash_count == 0


async def test_every_runtime_on_a_store_shares_its_clock(
    local_store: Callable[[], cd.Store],
) -> None:
    """A client Runtime opened without a clock on a store a worker runs with a fake clock reads
    the same time; a second, different fake clock on the same store is refused."""
    store = local_store()
    clock = FakeClock(START)
    async with cd.Runtime(store, clock=clock) as worker:
        client = cd.Runtime(store, worker=False)
        assert client.clock is clock is worker.clock
        with pytest.raises(ConfigurationError, match="same clock"):
            cd.Runtime(store, clock=FakeClock(START))


@pytest.mark.parametrize("kind", [s for s in STORES if s in ("postgres", "redis")])
def test_a_store_on_its_servers_clock_refuses_a_fake_clock(kind: str) -> None:
    """Postgres and Redis decide due times and leases by their server's clock, so a Runtime on
    them refuses a fake clock with a message saying which stores take one."""
    url = pg_test_url() if kind == "postgres" else redis_test_url()
    with pytest.raises(ConfigurationError, match=r"server.s clock.*memory:// or sqlite://"):
        cd.Runtime(url, clock=FakeClock())


def test_the_fake_clock_only_runs_forward() -> None:
    """advance takes seconds >= 0 and advance_to a time not in the past; a naive start is
    refused (it would be read in the machine's local time zone)."""
    clock = FakeClock(START)
    clock.advance_to(START + dt.timedelta(hours=1))
    assert clock.time() == START.timestamp() + 3600
    with pytest.raises(ConfigurationError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ConfigurationError, match="past"):
        clock.advance_to(START)
    with pytest.raises(ConfigurationError, match="aware"):
        FakeClock(dt.datetime(2030, 1, 1))
