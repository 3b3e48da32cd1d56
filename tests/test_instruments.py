"""Instruments: what a Runtime's instruments see (every step attempt, each event of a run in
order, parks and wake-ups), that a raising instrument does not break a run, and that faults
given to one Runtime stay with it; on every store, under asyncio and trio."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable._core.hooks import HOOK_NAMES
from coro_durable.testing import Fault, FaultPlan

pytestmark = pytest.mark.anyio

# A lease far longer than any run here, so that no takeover under load adds events; the test
# that crashes a worker gives the crashed one a short lease (see _CRASHING).
OPTIONS: dict[str, Any] = {"lease_ttl": 10.0, "poll_interval": 0.01}
_CRASHING: dict[str, Any] = {**OPTIONS, "lease_ttl": 1.0}
FAILURES: Counter[str] = Counter()  # failed attempts so far, per idempotency key


@pytest.fixture(autouse=True)
def _reset() -> None:
    FAILURES.clear()


class Recorder(cd.Instrument):
    """Records every event but fault points, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def of(self, run_id: str) -> list[Any]:
        return [e for e in self.events if getattr(e, "run_id", None) == run_id]

    def kinds(self, run_id: str) -> list[str]:
        return [type(e).__name__ for e in self.of(run_id)]


def _record(self: Recorder, event: Any) -> None:
    self.events.append(event)


for _hook in HOOK_NAMES:
    if _hook != "fault_point":
        setattr(Recorder, _hook, _record)


def flaky(tag: str) -> str:
    """Fails its first two attempts."""
    key = cd.idempotency_key()
    if FAILURES[key] < 2:
        FAILURES[key] += 1
        raise ConnectionError(f"attempt {FAILURES[key]} of {tag} failed")
    return f"did {tag}"


def step(tag: str) -> str:
    return f"did {tag}"


@cd.workflow(name="instr_retried_then_crashed")
async def retried_then_crashed() -> list[str]:
    first = await cd.call(flaky, "a", retry=cd.RetryPolicy(max_attempts=3, initial_interval=0))
    second = await cd.call(step, "b")
    return [first, second]


async def _until_crashed(rt: cd.Runtime) -> None:
    with anyio.fail_after(10):
        while rt._crashed is None:
            await anyio.sleep(0.01)


async def test_an_instrument_sees_every_step_attempt_of_a_run(
    make_store: Callable[[], cd.Store],
) -> None:
    """Each attempt of each step, retries and the attempt a crash interrupted included, is one
    StepStarted and one StepFinished with its seq, attempt and idempotency key: the worker dies
    at X4 (step b's body returned, its result not journaled) and the Runtime that resumes the
    run runs b again under the same key, seen by the same instrument on both Runtimes."""
    seen = Recorder()
    plan = FaultPlan(Fault("X4", seq=1))
    async with cd.Runtime(make_store(), instruments=[plan, seen], **_CRASHING) as rt:
        await rt.start(retried_then_crashed, run_id="attempts")
        await _until_crashed(rt)
    async with cd.Runtime(make_store(), instruments=[seen], **OPTIONS) as rt:
        assert await rt.result("attempts", timeout=10) == ["did a", "did b"]
    started = [
        (e.seq, e.attempt, e.idempotency_key)
        for e in seen.of("attempts")
        if isinstance(e, cd.StepStarted)
    ]
    assert started == [
        (0, 1, "attempts:0"),
        (0, 2, "attempts:0"),
        (0, 3, "attempts:0"),
        (1, 1, "attempts:1"),  # crashed at X4 after this attempt
        (1, 1, "attempts:1"),  # the resumed run's attempt: same attempt number, same key
    ]
    finished = [e for e in seen.of("attempts") if isinstance(e, cd.StepFinished)]
    assert [(e.seq, e.attempt, e.ok) for e in finished] == [
        (0, 1, False),
        (0, 2, False),
        (0, 3, True),
        (1, 1, True),
        (1, 1, True),
    ]
    assert finished[0].error == "ConnectionError: attempt 1 of a failed"
    assert all(e.name == "step" for e in finished[3:]) and all(e.duration >= 0 for e in finished)
    epochs = {e.epoch for e in finished}
    assert len(epochs) == 2, "two claims, each attempt attributed to its own"


@cd.workflow(name="instr_two_steps")
async def two_steps() -> str:
    await cd.call(step, "a")
    return await cd.call(step, "b")


def _finished(seen: Recorder) -> int:
    """The index of the first RunFinished event seen (the end of the list if none yet)."""
    kinds = [type(e).__name__ for e in seen.events]
    return kinds.index("RunFinished") if "RunFinished" in kinds else len(kinds)


async def test_a_runs_events_come_in_order(make_store: Callable[[], cd.Store]) -> None:
    """start() reports the run; the worker claims it, starts the activation, runs each step's
    attempt between StepStarted and StepFinished, ends the activation and finishes the run,
    each event once and naming the worker and its fencing token. (The client reports
    RunStarted as start() returns, so the worker's claim, on a store that notifies it as the
    run is committed, may come first.)"""
    seen = Recorder()
    async with cd.Runtime(make_store(), instruments=[seen], **OPTIONS) as rt:
        await rt.start(two_steps, run_id="order")
        assert await rt.result("order", timeout=10) == "did b"
        await rt.start(two_steps, run_id="order")  # started again: found, not created
        with anyio.fail_after(10):  # the worker's next look at the store finds nothing to do
            while "WorkerIdle" not in [type(e).__name__ for e in seen.events][_finished(seen) :]:
                await anyio.sleep(0.01)
    kinds = seen.kinds("order")
    first = kinds.index("RunStarted")
    assert kinds[first + 1 :].count("RunStarted") == 1, kinds
    in_order = [k for k in kinds if k != "RunStarted"] + ["RunStarted"]
    assert ["RunStarted", *in_order] == [
        "RunStarted",
        "RunClaimed",
        "ActivationStarted",
        "StepStarted",
        "StepFinished",
        "StepStarted",
        "StepFinished",
        "ActivationEnded",
        "RunFinished",
        "RunStarted",
    ]
    events = seen.of("order")
    events.insert(0, events.pop(first))  # RunStarted first, as in the list above
    started, claimed, activation, *_, ended, finished, again = events
    assert (started.workflow, started.created, again.created) == ("instr_two_steps", True, False)
    assert (claimed.worker_id, claimed.steps) == (rt.worker_id, 0)
    assert (activation.replaying, activation.restart) == (0, False)
    assert ended.how == "completed"
    assert (finished.status, finished.error, finished.epoch) == ("completed", None, claimed.epoch)
    worker = [type(e).__name__ for e in seen.events if not hasattr(e, "run_id")]
    assert worker[0] == "WorkerStarted" and worker[-1] == "WorkerStopped", worker
    assert set(worker[1:-1]) == {"WorkerIdle"}, worker  # before the claim (maybe), and after


@cd.workflow(name="instr_waits")
async def waits() -> str:
    await cd.sleep(0.3)
    return str(await cd.await_signal("go"))


async def test_parks_and_wake_ups_for_a_timer_and_a_signal(
    make_store: Callable[[], cd.Store],
) -> None:
    """A timer longer than inline_wait parks the run until its due time, a signal wait parks it
    with no due time; each wake-up is a new claim resuming further on, and the signal taken is
    reported with its seq."""
    seen = Recorder()
    async with cd.Runtime(make_store(), instruments=[seen], inline_wait=0.05, **OPTIONS) as rt:
        await rt.start(waits, run_id="waits")
        with anyio.fail_after(10):
            while (await rt.describe("waits")).waiting_on != "signal 'go'":
                await anyio.sleep(0.01)
        await rt.signal("waits", "go", "went")
        assert await rt.result("waits", timeout=10) == "went"
    kinds = seen.kinds("waits")
    assert kinds[1:] == [
        "RunClaimed",
        "ActivationStarted",
        "ActivationEnded",
        "RunParked",  # the timer
        "RunClaimed",
        "ActivationStarted",
        "ActivationEnded",
        "RunParked",  # the signal
        "RunClaimed",
        "ActivationStarted",
        "SignalConsumed",
        "ActivationEnded",
        "RunFinished",
    ]
    events = seen.of("waits")
    timer, signal = [e for e in events if isinstance(e, cd.RunParked)]
    assert (timer.waiting_on or "").startswith("timer until") and timer.wake_at is not None
    assert (signal.waiting_on, signal.wake_at) == ("signal 'go'", None)
    claims = [e.steps for e in events if isinstance(e, cd.RunClaimed)]
    assert claims == [0, 1, 1]  # the second wake-up resumes after the timer's entry
    (consumed,) = [e for e in events if isinstance(e, cd.SignalConsumed)]
    assert (consumed.seq, consumed.name) == (1, "go")
    ends = [e.how for e in events if isinstance(e, cd.ActivationEnded)]
    assert ends == ["parked", "parked", "completed"]


class Broken(cd.Instrument):
    """Raises in its first hook of a step."""

    def __init__(self) -> None:
        self.calls = 0

    def step_started(self, event: cd.StepStarted) -> None:
        self.calls += 1
        raise RuntimeError("instrument bug")


async def test_a_raising_instrument_is_logged_once_and_the_run_goes_on(
    make_store: Callable[[], cd.Store], caplog: pytest.LogCaptureFixture
) -> None:
    """An instrument that raises is logged once with its traceback and removed from the
    Runtime; the run completes, and the instruments after it still see every event."""
    broken, seen = Broken(), Recorder()
    with caplog.at_level(logging.ERROR, logger="coro_durable.runtime"):
        async with cd.Runtime(make_store(), instruments=[broken, seen], **OPTIONS) as rt:
            await rt.start(two_steps, run_id="broken")
            assert await rt.result("broken", timeout=10) == "did b"
    assert broken.calls == 1
    reports = [r for r in caplog.records if "instrument" in r.getMessage()]
    assert len(reports) == 1 and reports[0].exc_info is not None
    assert "raised in step_started(StepStarted)" in reports[0].getMessage()
    assert seen.kinds("broken").count("StepStarted") == 2


async def test_faults_given_to_one_runtime_stay_with_it() -> None:
    """Two Runtimes in one event loop, a fault plan given to one of them: only that one crashes
    and only its run's points reach the plan; the other completes its run untouched."""
    plan = FaultPlan(Fault("X4", times=None))
    faulty_store, healthy_store = cd.MemoryStore(), cd.MemoryStore()
    async with (
        cd.Runtime(faulty_store, instruments=[plan], **OPTIONS) as faulty,
        cd.Runtime(healthy_store, **OPTIONS) as healthy,
    ):
        await faulty.start(two_steps, run_id="faulty")
        await healthy.start(two_steps, run_id="healthy")
        assert await healthy.result("healthy", timeout=10) == "did b"
        await _until_crashed(faulty)
        assert healthy._crashed is None
    assert plan.crashes == 1
    assert {run_id for point, run_id, _ in plan.hits if point != "renew"} == {"faulty"}
