"""Cancel, step context, heartbeats, timeouts and graceful shutdown, through the public API.

Every test runs on every store under asyncio and trio. Cancel must reach the await that was
pending when it arrived (a step in flight, an inline sleep, a gather, the last step before the
run would complete), promptly, and cleanup awaited after it must run and be journaled.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable import errors

pytestmark = pytest.mark.anyio

EVENTS: Counter[str] = Counter()
SEEN: dict[str, Any] = {}
STARTED = threading.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    EVENTS.clear()
    SEEN.clear()
    STARTED.clear()


@pytest.fixture
def runtime(make_store: Callable[[], cd.Store]) -> Callable[..., Any]:
    @asynccontextmanager
    async def open_rt(**options: Any) -> AsyncIterator[cd.Runtime]:
        options.setdefault("poll_interval", 0.02)
        options.setdefault("lease_ttl", 3.0)
        async with cd.Runtime(make_store(), **options) as rt:
            yield rt

    return open_rt


async def wait_for(predicate: Callable[[], Any], seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not predicate():
            await anyio.sleep(0.01)


# -- steps -------------------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    EVENTS["add"] += 1
    return a + b


async def async_long(seconds: float) -> str:
    EVENTS["async_long started"] += 1
    STARTED.set()
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        EVENTS["async_long cancelled"] += 1
        raise
    EVENTS["async_long finished"] += 1
    return "finished"


def sync_heartbeating(seconds: float) -> str:
    EVENTS["sync started"] += 1
    STARTED.set()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            cd.heartbeat()
            time.sleep(0.01)
    except cd.RunCancelledError:
        EVENTS["sync saw cancel"] += 1
        raise
    except errors.StepTimeoutError:
        EVENTS["sync saw timeout"] += 1
        raise
    EVENTS["sync finished"] += 1
    return "finished"


async def slow_cleanup() -> str:
    EVENTS["cleanup started"] += 1
    STARTED.set()
    await anyio.sleep(0.6)
    EVENTS["cleanup finished"] += 1
    return "cleaned"


# -- workflows ---------------------------------------------------------------------------------------


@cd.workflow
async def cancel_in_step(kind: str) -> str:
    try:
        if kind == "async":
            await cd.call(async_long, 30.0)
        else:
            await cd.call(sync_heartbeating, 30.0)
        return "not cancelled"
    finally:
        await cd.call(add, 1, 2)  # cleanup: runs and is journaled


@cd.workflow
async def cancel_in_sleep() -> str:
    try:
        await cd.sleep(3.0)  # inline (inline_wait is raised in the test)
        return "not cancelled"
    finally:
        await cd.call(add, 2, 2)


@cd.workflow
async def cancel_in_gather() -> str:
    try:
        await cd.gather(
            cd.call(async_long, 30.0), cd.call(async_long, 30.0), cd.await_signal("never")
        )
        return "not cancelled"
    finally:
        await cd.call(add, 3, 3)


@cd.workflow
async def cancel_at_the_end() -> str:
    await cd.call(add, 1, 1)
    await cd.call(async_long, 30.0)  # the last step: the run would complete after it
    return "completed"


@cd.workflow
async def swallow_everything() -> str:
    try:
        await cd.call(async_long, 30.0)
    except Exception:
        return "swallowed"
    return "not cancelled"


@cd.workflow
async def cleanup_is_not_cancelled_again() -> str:
    try:
        await cd.call(async_long, 30.0)
        return "not cancelled"
    except cd.RunCancelledError:
        STARTED.clear()
        return await cd.call(slow_cleanup)


# -- cancel ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("from_client", [False, True], ids=["same-runtime", "client"])
async def test_cancel_interrupts_the_step_in_flight(
    runtime: Any, kind: str, from_client: bool
) -> None:
    """A cancel while a step runs reaches it within about a second (an async step is cancelled,
    a sync one sees RunCancelledError from cd.heartbeat()), the workflow gets RunCancelledError
    at that await, its `finally` cleanup runs and is journaled, and the step's result is not."""
    async with runtime() as rt, runtime(worker=False) as client:
        handle = await rt.start(cancel_in_step, kind, run_id=f"c-{kind}")
        await wait_for(STARTED.is_set)
        began = time.monotonic()
        await (client if from_client else rt).cancel(handle.run_id)
        with pytest.raises(cd.RunCancelledError):
            await handle.result(timeout=10)
        took = time.monotonic() - began
        history = await handle.history()
    assert took < 3.0, f"the cancel took {took:.2f}s to land"
    assert [(e.kind, e.status) for e in history] == [("call", "error"), ("call", "ok")]
    assert (history[0].error_info or {})["type"] == "RunCancelledError"
    assert history[1].value == 3
    if kind == "async":
        assert EVENTS["async_long cancelled"] == 1 and EVENTS["async_long finished"] == 0
    else:
        await wait_for(lambda: EVENTS["sync saw cancel"] == 1)
        assert EVENTS["sync finished"] == 0


async def test_cancel_during_an_inline_sleep(runtime: Any) -> None:
    """A cancel during a timer waited in-process ends the wait at once with RunCancelledError."""
    async with runtime(inline_wait=10.0) as rt:
        handle = await rt.start(cancel_in_sleep, run_id="sleeper")
        await wait_for(lambda: EVENTS["add"] == 0 and rt.active_runs == 1)
        await anyio.sleep(0.2)  # the timer is being waited now
        began = time.monotonic()
        await rt.cancel("sleeper")
        with pytest.raises(cd.RunCancelledError):
            await handle.result(timeout=10)
        history = await handle.history()
    assert time.monotonic() - began < 2.0
    assert [(e.kind, e.status) for e in history] == [("sleep", "error"), ("call", "ok")]
    assert history[1].value == 4


async def test_cancel_during_a_gather_cancels_every_branch(runtime: Any) -> None:
    """Cancelling a run inside a gather cancels every sub-effect still going (running steps and
    a signal wait alike), each journaled as cancelled, then the cleanup runs."""
    async with runtime() as rt, runtime(worker=False) as client:
        handle = await rt.start(cancel_in_gather, run_id="gathered")
        await wait_for(lambda: EVENTS["async_long started"] == 2)
        await client.cancel("gathered")
        with pytest.raises(cd.RunCancelledError):
            await handle.result(timeout=10)
        history = await handle.history()
    assert [(e.kind, e.status) for e in history] == [
        ("call", "error"),
        ("call", "error"),
        ("signal", "error"),
        ("call", "ok"),
    ]
    assert all((e.error_info or {})["type"] == "RunCancelledError" for e in history[:3])
    assert EVENTS["async_long cancelled"] == 2 and EVENTS["add"] == 1


async def test_cancel_just_before_the_run_would_complete(runtime: Any) -> None:
    """A cancel during the last step is not lost because the run was about to end: the run is
    cancelled, not completed."""
    async with runtime() as rt, runtime(worker=False) as client:
        handle = await rt.start(cancel_at_the_end, run_id="almost")
        await wait_for(STARTED.is_set)
        await client.cancel("almost")
        with pytest.raises(cd.RunCancelledError):
            await handle.result(timeout=10)
        info = await rt.describe("almost")
    assert info.status == cd.RunStatus.CANCELLED


async def test_except_exception_does_not_swallow_a_cancel(runtime: Any) -> None:
    """RunCancelledError is a BaseException: `except Exception:` in a workflow does not catch it."""
    assert not issubclass(cd.RunCancelledError, Exception)
    async with runtime() as rt:
        handle = await rt.start(swallow_everything, run_id="swallow")
        await wait_for(STARTED.is_set)
        await rt.cancel("swallow")
        with pytest.raises(cd.RunCancelledError):
            await handle.result(timeout=10)


async def test_a_second_cancel_is_not_raised_into_cleanup(runtime: Any) -> None:
    """Once the workflow has seen RunCancelledError, cancelling again does not interrupt the
    cleanup it awaits; the cleanup's result is journaled and returned."""
    async with runtime() as rt:
        handle = await rt.start(cleanup_is_not_cancelled_again, run_id="twice")
        await wait_for(STARTED.is_set)
        await rt.cancel("twice")
        await wait_for(lambda: EVENTS["cleanup started"] == 1)
        await rt.cancel("twice")
        assert await handle.result(timeout=10) == "cleaned"
    assert EVENTS["cleanup finished"] == 1


# -- step context, heartbeats, timeouts ---------------------------------------------------------


def report_info(fail_first: bool) -> dict[str, Any]:
    info = cd.step_info()
    SEEN.setdefault("infos", []).append(info)
    cd.heartbeat({"page": info.attempt * 10})
    if fail_first and info.attempt == 1:
        raise ConnectionError("first attempt fails")
    return {"attempt": info.attempt, "details": info.heartbeat_details}


@cd.workflow
async def uses_step_info() -> Any:
    wi = cd.workflow_info()
    SEEN["workflow_info"] = wi
    return await cd.call(
        report_info, True, retry=cd.RetryPolicy(max_attempts=3, initial_interval=0)
    )


async def test_step_info_and_heartbeat_details_reach_the_next_attempt(runtime: Any) -> None:
    """cd.step_info() gives run_id, workflow, seq, attempt (1-based) and the idempotency key; the
    details of an attempt's last heartbeat reach the next attempt; cd.workflow_info() names the
    run from the workflow's side. Nobody needs to parse the idempotency key."""
    async with runtime() as rt:
        result = await (await rt.start(uses_step_info, run_id="info-run")).result(timeout=10)
    assert result == {"attempt": 2, "details": {"page": 10}}
    first, second = SEEN["infos"]
    assert (first.run_id, first.workflow, first.seq, first.attempt) == (
        "info-run",
        "uses_step_info",
        0,
        1,
    )
    assert first.idempotency_key == second.idempotency_key == "info-run:0"
    assert first.heartbeat_details is None and second.attempt == 2
    wi = SEEN["workflow_info"]
    assert (wi.run_id, wi.workflow) == ("info-run", "uses_step_info")
    assert wi.started_at is not None


def silent_after_one_beat() -> str:
    attempt = cd.step_info().attempt
    cd.heartbeat()
    if attempt == 1:
        time.sleep(2.5)  # goes silent: the attempt times out
        EVENTS["late result"] += 1
        return "late"
    return f"attempt {attempt}"


@cd.workflow
async def heartbeat_timeout_wf() -> str:
    return await cd.call(
        silent_after_one_beat,
        heartbeat_timeout=0.6,
        retry=cd.RetryPolicy(max_attempts=2, initial_interval=0),
    )


async def test_a_step_whose_heartbeats_stop_times_out_and_is_retried(runtime: Any) -> None:
    """With heartbeat_timeout, an attempt silent for longer is a timed-out attempt: it is
    retried per its policy, and the abandoned attempt's late result is never journaled."""
    async with runtime() as rt:
        handle = await rt.start(heartbeat_timeout_wf, run_id="hb")
        assert await handle.result(timeout=10) == "attempt 2"
        history = await handle.history()
        await wait_for(lambda: EVENTS["late result"] == 1)
        assert (await handle.history()) == history  # nothing written after the late return
    assert history[0].attempts == 2 and history[0].value == "attempt 2"


@cd.workflow
async def sync_timeout_wf() -> str:
    return await cd.call(sync_heartbeating, 2.0, timeout=0.3, retry=cd.RetryPolicy(max_attempts=1))


async def test_a_timed_out_sync_step_is_told_by_heartbeat_and_its_result_dropped(
    runtime: Any,
) -> None:
    """A sync step past its timeout is abandoned (Python cannot kill a thread): the workflow gets
    the StepError at once, the step's next cd.heartbeat() raises StepTimeoutError."""
    async with runtime() as rt:
        handle = await rt.start(sync_timeout_wf, run_id="sync-timeout")
        with pytest.raises(cd.RunFailedError) as failed:
            await handle.result(timeout=10)
        await wait_for(lambda: EVENTS["sync saw timeout"] == 1)
    assert failed.value.type_name == "TimeoutError"
    assert "timed out" in failed.value.message
    assert EVENTS["sync finished"] == 0


async def async_slow_effect(seconds: float) -> str:
    EVENTS["async started"] += 1
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        EVENTS["async cancelled"] += 1
        raise
    EVENTS["async side effect"] += 1  # must never happen: the attempt timed out before
    return "late"


@cd.workflow
async def async_timeout_wf() -> str:
    try:
        await cd.call(async_slow_effect, 1.0, timeout=0.1, retry=cd.RetryPolicy(max_attempts=1))
    except cd.StepError as exc:
        return f"{exc.type_name}: {exc.attempts}"
    return "no timeout"


async def test_a_timed_out_async_step_is_cancelled_at_its_timeout(runtime: Any) -> None:
    """An async step past its timeout is cancelled where it awaits: its body stops (the code
    after its await never runs, even once the sleep would have ended) and the workflow gets
    the StepError."""
    async with runtime() as rt:
        handle = await rt.start(async_timeout_wf, run_id="async-timeout")
        assert await handle.result(timeout=10) == "TimeoutError: 1"
        await anyio.sleep(1.2)  # past the end of the step's sleep
        (entry,) = await handle.history()
    assert (EVENTS["async started"], EVENTS["async cancelled"]) == (1, 1)
    assert EVENTS["async side effect"] == 0
    assert entry.status == "error" and entry.attempts == 1


def sync_silent(seconds: float) -> str:
    time.sleep(seconds)  # no heartbeat: nothing tells it that it timed out
    EVENTS["silent returned"] += 1
    return "late"


@cd.workflow
async def silent_timeout_wf() -> str:
    try:
        await cd.call(sync_silent, 0.6, timeout=0.1, retry=cd.RetryPolicy(max_attempts=1))
    except cd.StepError as exc:
        return f"{exc.type_name}: {exc.attempts}"
    return "no timeout"


async def test_a_late_result_of_a_timed_out_sync_step_is_never_journaled(runtime: Any) -> None:
    """A sync step that never heartbeats runs on past its timeout (Python cannot kill a thread)
    and returns later: that late result is dropped, the journal keeps the timeout."""
    async with runtime() as rt:
        handle = await rt.start(silent_timeout_wf, run_id="silent-timeout")
        assert await handle.result(timeout=10) == "TimeoutError: 1"
        history = await handle.history()
        await wait_for(lambda: EVENTS["silent returned"] == 1)
        await anyio.sleep(0.2)
        assert await handle.history() == history
    (entry,) = history
    assert entry.status == "error" and entry.result is None


def beats_with_progress(seconds: float) -> str:
    STARTED.set()
    end = time.monotonic() + seconds
    page = 0
    while time.monotonic() < end:
        page += 1
        cd.heartbeat({"page": page})
        time.sleep(0.05)
    return "done"


@cd.workflow
async def long_running() -> str:
    await cd.call(add, 0, 0)
    return await cd.call(beats_with_progress, 2.5)


async def test_describe_names_the_step_executing_now(runtime: Any) -> None:
    """describe (from another Runtime: the store alone) of a running run names the step in
    flight: seq, name, attempt, start, last heartbeat with its details, and the worker."""
    async with runtime() as rt, runtime(worker=False) as client:
        handle = await rt.start(long_running, run_id="busy")
        await wait_for(STARTED.is_set)
        with anyio.fail_after(5):
            while not (info := await client.describe("busy")).executing:
                await anyio.sleep(0.05)
        step = info.executing[0]
        assert (step.seq, step.name, step.attempt) == (1, "beats_with_progress", 1)
        assert step.worker == rt.worker_id and step.started_at is not None
        with anyio.fail_after(5):
            while (await client.describe("busy")).executing[0].heartbeat_at is None:
                await anyio.sleep(0.05)
        assert (await client.describe("busy")).executing[0].details["page"] >= 1
        assert await handle.result(timeout=10) == "done"
        assert (await client.describe("busy")).executing == ()


async def test_effects_outside_a_workflow_raise_not_in_workflow() -> None:
    """Awaiting an effect in ordinary async code says what to do instead of an event-loop error."""
    with pytest.raises(errors.NotInWorkflowError, match="outside a workflow"):
        await cd.call(add, 1, 2)
    with pytest.raises(errors.NotInWorkflowError):
        await cd.sleep(1)
    with pytest.raises(errors.EffectNotAllowedError):
        cd.step_info()
    with pytest.raises(errors.EffectNotAllowedError):
        cd.heartbeat()
    with pytest.raises(errors.EffectNotAllowedError):
        cd.workflow_info()


@pytest.mark.parametrize(
    "option", ["max_payload_bytes", "inline_wait", "poll_interval", "store_deadline"]
)
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_runtime_options_are_refused(option: str, value: int) -> None:
    """Zero or negative sizes and intervals are configuration errors, not silent misbehaviour."""
    with pytest.raises(errors.ConfigurationError, match=option):
        cd.Runtime("memory://", **{option: value})  # type: ignore[arg-type]


# -- errors out of the block and graceful shutdown ---------------------------------------------------


@cd.workflow
async def fails() -> None:
    await cd.call(add, 0, 0)
    raise ValueError("boom")


async def test_errors_leave_the_runtime_block_unwrapped(runtime: Any) -> None:
    """`except cd.RunFailedError:` around `async with cd.Runtime(...)` catches the run's failure:
    the block re-raises the user's exception itself, not an ExceptionGroup."""
    with pytest.raises(cd.RunFailedError) as caught:
        async with runtime() as rt:
            await (await rt.start(fails, run_id="fails")).result(timeout=10)
    assert type(caught.value) is cd.RunFailedError
    with pytest.raises(KeyError):
        async with runtime():
            raise KeyError("mine")


def journaled_sync_step(seconds: float) -> str:
    EVENTS["body"] += 1
    STARTED.set()
    time.sleep(seconds)
    return "step result"


@cd.workflow
async def two_slow_steps() -> list[str]:
    first = await cd.call(journaled_sync_step, 1.0)
    second = await cd.call(add, 20, 22)
    return [first, str(second)]


async def test_leaving_the_block_finishes_steps_in_flight_then_hands_back(runtime: Any) -> None:
    """On exit, a worker lets the step in flight finish, journals its result, then hands the run
    back (it starts nothing new); the next worker resumes without running the step again."""
    async with runtime(shutdown_grace=10.0) as rt:
        await rt.start(two_slow_steps, run_id="drained")
        await wait_for(STARTED.is_set)
    async with runtime(worker=False) as client:
        history = await client.history("drained")
        info = await client.describe("drained")
    assert [(e.name, e.status) for e in history] == [("journaled_sync_step", "ok")]
    assert info.status in (cd.RunStatus.PENDING, cd.RunStatus.WAITING)
    assert EVENTS["add"] == 0
    async with runtime() as rt:
        assert await rt.result("drained", timeout=10) == ["step result", "42"]
    assert EVENTS["body"] == 1
