"""Runtime behaviour through the public API, on every store, under asyncio and trio."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable import errors
from coro_durable.testing import wait_for_status

pytestmark = pytest.mark.anyio

CALLS: Counter[str] = Counter()
KEYS: list[str] = []


@pytest.fixture(autouse=True)
def _reset_counters() -> None:
    CALLS.clear()
    KEYS.clear()


@pytest.fixture
def runtime(make_store: Callable[[], cd.Store]) -> Callable[..., Any]:
    """Open Runtimes on the test's store (several may share it, like processes would)."""

    @asynccontextmanager
    async def open_rt(**options: Any) -> AsyncIterator[cd.Runtime]:
        options.setdefault("poll_interval", 0.02)
        options.setdefault("lease_ttl", 2.0)
        async with cd.Runtime(make_store(), **options) as rt:
            yield rt

    return open_rt


# -- steps --------------------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    CALLS["add"] += 1
    KEYS.append(cd.idempotency_key())
    return a + b


async def double(x: int) -> int:
    CALLS["double"] += 1
    KEYS.append(cd.idempotency_key())
    return 2 * x


def flaky(fail_times: int, tag: str) -> str:
    CALLS[tag] += 1
    if CALLS[tag] <= fail_times:
        raise ConnectionError(f"attempt {CALLS[tag]} of {tag} failed")
    return f"{tag} ok after {CALLS[tag]}"


async def slow(seconds: float) -> str:
    CALLS["slow"] += 1
    await anyio.sleep(seconds)
    return "slow done"


@dataclasses.dataclass
class Report:
    title: str
    score: float
    tags: tuple[str, ...]
    at: dt.datetime


def make_report(title: str) -> Report:
    return Report(title, 0.5, ("a", "b"), dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC))


def unserialisable() -> object:
    CALLS["unserialisable"] += 1
    return object()


# -- workflows ------------------------------------------------------------------------------------------


@cd.workflow
async def arithmetic(x: int) -> list[int]:
    a = await cd.call(add, x, 1)
    b = await cd.call(double, a)
    c = await cd.call(add, b, b)
    return [a, b, c]


@cd.workflow
async def retrying(fail_times: int, attempts: int) -> str:
    policy = cd.RetryPolicy(max_attempts=attempts, initial_interval=0.01, backoff_coefficient=1)
    try:
        return await cd.call(flaky, fail_times, "flaky", retry=policy)
    except cd.StepError as exc:
        return f"caught {exc.type_name}: {exc.message} ({exc.attempts} attempts)"


@cd.workflow
async def failing() -> None:
    await cd.call(add, 1, 2)
    raise ValueError("the workflow gave up")


@cd.workflow
async def gathering(fail: bool) -> Any:
    results = await cd.gather(
        cd.call(add, 1, 1),
        cd.call(double, 5),
        cd.gather(cd.call(add, 2, 2), cd.now()),
        cd.call(flaky, 5 if fail else 0, "g", retry=cd.RetryPolicy(max_attempts=1)),
    )
    return [*results[:2], results[2][0], results[3]]


@cd.workflow
async def gathering_exceptions() -> list[str]:
    results = await cd.gather(
        cd.call(flaky, 9, "x", retry=cd.RetryPolicy(max_attempts=1)),
        cd.call(add, 1, 1),
        return_exceptions=True,
    )
    return [type(r).__name__ for r in results]


@cd.workflow
async def sleeper(seconds: float) -> str:
    before = await cd.now()
    await cd.sleep(seconds)
    after = await cd.now()
    return "slept" if (after - before).total_seconds() >= seconds else "too early"


@cd.workflow
async def sleeper_until(when: dt.datetime) -> str:
    await cd.sleep_until(when)
    now = await cd.now()
    return "on time" if now >= when else "too early"


@cd.workflow
async def approval(timeout: float | None) -> Any:
    draft = await cd.call(add, 20, 1)
    try:
        verdict = await cd.await_signal("approval", timeout=timeout)
    except cd.SignalTimeout:
        return {"draft": draft, "verdict": "timed out"}
    return {"draft": draft, "verdict": verdict}


@cd.workflow
async def two_signals() -> list[Any]:
    first = await cd.await_signal("msg")
    second = await cd.await_signal("msg")
    return [first, second]


@cd.workflow
async def randomness() -> list[Any]:
    u = await cd.uuid4()
    r = await cd.random()
    t = await cd.now()
    await cd.await_signal("go")
    return [str(u), r, t.isoformat()]


class _Foreign:
    def __await__(self) -> Any:
        yield "not an effect"


@cd.workflow
async def awaits_foreign() -> str:
    try:
        await _Foreign()
    except errors.NotAnEffectError as exc:
        return str(exc)
    return "no error"


@cd.workflow
async def awaits_anyio_sleep() -> None:
    await anyio.sleep(0.01)


@cd.workflow
async def bad_result() -> str:
    try:
        await cd.call(unserialisable)
    except errors.SerializationError as exc:
        return f"caught: {exc}"
    return "no error"


@cd.workflow
async def bad_argument() -> str:
    try:
        await cd.call(add, object(), 1)
    except errors.SerializationError as exc:
        second = await cd.call(add, 1, 1)
        return f"caught: {exc}; then {second}"
    return "no error"


@cd.workflow
async def typed_results() -> Any:
    report = await cd.call(make_report, "t")
    assert isinstance(report, Report), report
    return report


@cd.workflow
async def cancellable_run() -> str:
    await cd.call(add, 1, 1)
    try:
        await cd.await_signal("never")
    except cd.RunCancelledError:
        await cd.call(add, 100, 100)  # cleanup still runs, journaled
        raise
    return "not cancelled"


@cd.workflow
async def timed_out_step() -> str:
    try:
        await cd.call(
            slow, 5.0, timeout=0.05, retry=cd.RetryPolicy(max_attempts=2, initial_interval=0)
        )
    except cd.StepError as exc:
        return f"{exc.type_name} after {exc.attempts}"
    return "no timeout"


@cd.workflow
async def backoff_parks() -> str:
    policy = cd.RetryPolicy(max_attempts=2, initial_interval=0.6)
    try:
        await cd.call(flaky, 9, "bp", retry=policy)
    except cd.StepError as exc:
        return f"gave up after {exc.attempts}"
    return "no"


# -- tests ------------------------------------------------------------------------------------------------


async def test_sync_and_async_steps_journal_results_and_keys(runtime: Any) -> None:
    """Sync and async steps run once each, results are fed in order, keys are <run_id>:<seq>."""
    async with runtime() as rt:
        handle = await rt.start(arithmetic, 3, run_id="arith-1")
        assert await handle.result(timeout=10) == [4, 8, 16]
        history = await rt.history("arith-1")
    assert [(e.seq, e.kind, e.name, e.status) for e in history] == [
        (0, "call", "add", "ok"),
        (1, "call", "double", "ok"),
        (2, "call", "add", "ok"),
    ]
    assert [e.value for e in history] == [4, 8, 16]
    assert [e.key for e in history] == KEYS == ["arith-1:0", "arith-1:1", "arith-1:2"]
    assert history[0].arguments == [[3, 1], {}]
    assert CALLS == {"add": 2, "double": 1}


async def test_start_is_idempotent_on_run_id(runtime: Any) -> None:
    """Starting the same run_id again returns the same run; other inputs are refused with an
    error that carries the run_id."""
    async with runtime() as rt:
        first = await rt.start(arithmetic, 1, run_id="same")
        again = await rt.start(arithmetic, 1, run_id="same")
        assert first.created and not again.created
        await again.result(timeout=10)
        with pytest.raises(errors.RunAlreadyExistsError, match="already exists") as refused:
            await rt.start(arithmetic, 2, run_id="same")
        assert refused.value.run_id == "same"
    assert CALLS["add"] == 2


@pytest.mark.parametrize("bad", ["", "x" * 256, "r\x00", "r\n1", 7], ids=repr)
async def test_start_refuses_a_bad_run_id(runtime: Any, bad: Any) -> None:
    """``start(run_id='')`` (or too long, a control character, not a str) raises
    ConfigurationError and creates nothing; only ``run_id=None`` makes a fresh id."""
    async with runtime(worker=False) as rt:
        with pytest.raises(errors.ConfigurationError, match="run_id"):
            await rt.start(arithmetic, 1, run_id=bad)
        assert await rt.list_runs() == []
        made = await rt.start(arithmetic, 1, run_id=None)
        assert made.created and len(made.run_id) == 32
        assert [r.run_id for r in await rt.list_runs()] == [made.run_id]


async def test_retries_journal_every_attempt_then_succeed(runtime: Any) -> None:
    """A step failing twice then succeeding is retried, each attempt counted in the journal."""
    async with runtime() as rt:
        handle = await rt.start(retrying, 2, 5)
        assert await handle.result(timeout=10) == "flaky ok after 3"
        (entry,) = await handle.history()
    assert entry.status == "ok" and entry.attempts == 3


async def test_exhausted_retries_raise_step_error_in_workflow(runtime: Any) -> None:
    """After its last attempt a step raises StepError with the original type and message."""
    async with runtime() as rt:
        handle = await rt.start(retrying, 9, 3)
        result = await handle.result(timeout=10)
        (entry,) = await handle.history()
    assert result == "caught ConnectionError: attempt 3 of flaky failed (3 attempts)"
    assert entry.status == "error" and entry.attempts == 3
    assert entry.error_info == {"type": "ConnectionError", "message": "attempt 3 of flaky failed"}
    assert CALLS["flaky"] == 3


async def test_per_attempt_timeout(runtime: Any) -> None:
    """`timeout=` bounds each attempt; a timed-out attempt counts as a failure."""
    async with runtime() as rt:
        assert await (await rt.start(timed_out_step)).result(timeout=10) == "TimeoutError after 2"
    assert CALLS["slow"] == 2


async def test_crash_during_backoff_keeps_the_attempt_count(runtime: Any) -> None:
    """A long backoff parks the run with its failed attempt journaled; a new worker goes on
    from that count instead of starting over."""
    async with runtime(inline_wait=0.1) as rt:
        handle = await rt.start(backoff_parks, run_id="bp")
        await wait_for_status(rt, "bp", cd.RunStatus.WAITING)
        (entry,) = await rt.history("bp")
        assert entry.status == "pending" and entry.attempts == 1 and entry.due_at
    assert CALLS["bp"] == 1
    async with runtime(inline_wait=0.1) as rt2:  # "a new process"
        assert await rt2.result("bp", timeout=10) == "gave up after 2"
    assert CALLS["bp"] == 2
    del handle


async def test_uncaught_exception_fails_the_run(runtime: Any) -> None:
    """An exception escaping the workflow fails the run with its type and message recorded."""
    async with runtime() as rt:
        handle = await rt.start(failing, run_id="fails")
        with pytest.raises(cd.RunFailedError) as info:
            await handle.result(timeout=10)
        assert info.value.type_name == "ValueError"
        assert info.value.message == "the workflow gave up"
        described = await rt.describe("fails")
    assert described.status == cd.RunStatus.FAILED
    assert described.error == {"type": "ValueError", "message": "the workflow gave up"}


async def test_gather_runs_each_effect_with_its_own_seq(runtime: Any) -> None:
    """gather returns results in argument order; every sub-effect has its own journal entry."""
    async with runtime() as rt:
        handle = await rt.start(gathering, False)
        assert await handle.result(timeout=10) == [2, 10, 4, "g ok after 1"]
        history = await handle.history()
    assert [e.seq for e in history] == [0, 1, 2, 3, 4]
    assert [e.kind for e in history] == ["call", "call", "call", "now", "call"]


async def test_gather_failure_raises_first_failure_after_all_finish(runtime: Any) -> None:
    """A failing sub-effect fails the gather, but only after every sibling was journaled."""
    async with runtime() as rt:
        handle = await rt.start(gathering, True)
        with pytest.raises(cd.RunFailedError, match="ConnectionError"):
            await handle.result(timeout=10)
        history = await handle.history()
    assert [e.status for e in history] == ["ok", "ok", "ok", "ok", "error"]


async def test_gather_return_exceptions(runtime: Any) -> None:
    """With return_exceptions=True failures come back in place of results."""
    async with runtime() as rt:
        assert await (await rt.start(gathering_exceptions)).result(timeout=10) == [
            "StepError",
            "int",
        ]


async def test_short_sleep_waits_in_process(runtime: Any) -> None:
    """A sleep shorter than inline_wait completes without parking; its due time is journaled."""
    async with runtime() as rt:
        handle = await rt.start(sleeper, 0.1)
        assert await handle.result(timeout=10) == "slept"
        history = await handle.history()
    assert history[1].kind == "sleep" and history[1].due_at is not None


async def test_long_sleep_parks_the_run_holding_nothing(runtime: Any) -> None:
    """A sleep longer than inline_wait parks the run: waiting, no owner, wake time set."""
    async with runtime(inline_wait=0.05) as rt:
        handle = await rt.start(sleeper, 0.4, run_id="nap")
        info = await wait_for_status(rt, "nap", cd.RunStatus.WAITING, timeout=5)
        assert info.owner is None and info.wake_at is not None
        assert info.waiting_on is not None and "timer" in info.waiting_on
        assert await handle.result(timeout=10) == "slept"


async def test_sleep_until(runtime: Any) -> None:
    """sleep_until waits for an absolute, timezone-aware time."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2)
    async with runtime(inline_wait=0.05) as rt:
        assert await (await rt.start(sleeper_until, when)).result(timeout=10) == "on time"
    with pytest.raises(errors.ConfigurationError, match="timezone-aware"):
        cd.sleep_until(dt.datetime(2030, 1, 1))


class CountActivations(cd.Instrument):
    def __init__(self) -> None:
        self.count = 0

    def activation_started(self, event: cd.ActivationStarted) -> None:
        self.count += 1


@cd.workflow
async def nap_then_approval(seconds: float) -> Any:
    await cd.sleep(seconds)
    return await cd.await_signal("approval")


async def test_a_signal_sent_early_is_kept_without_waking_the_run(runtime: Any) -> None:
    """A signal sent while the run sleeps on a timer, for an await_signal it reaches later, is
    kept and wakes nothing (it used to re-wake the parked run thousands of times a second:
    every park found an unconsumed signal); when the timer fires the run takes it at once."""
    activations = CountActivations()
    async with runtime(inline_wait=0.05, instruments=[activations]) as rt:
        handle = await rt.start(nap_then_approval, 1.5, run_id="early")
        await wait_for_status(rt, "early", cd.RunStatus.WAITING, timeout=10)
        before = activations.count
        await rt.signal("early", "approval", "yes")
        await anyio.sleep(0.5)
        assert activations.count - before <= 1  # at most one spurious replay, no spinning
        info = await rt.describe("early")
        assert info.status == cd.RunStatus.WAITING and info.waits[0].kind == cd.WaitKind.TIMER
        assert await handle.result(timeout=10) == "yes"


async def test_signal_wakes_a_waiting_run(runtime: Any) -> None:
    """await_signal returns the payload of a signal sent while the run waits."""
    async with runtime() as rt:
        handle = await rt.start(approval, None, run_id="appr")
        info = await wait_for_status(rt, "appr", cd.RunStatus.WAITING, timeout=5)
        assert info.waiting_on == "signal 'approval'"
        await rt.signal("appr", "approval", {"ok": True, "by": "editor"})
        assert await handle.result(timeout=10) == {
            "draft": 21,
            "verdict": {"ok": True, "by": "editor"},
        }


async def test_signal_sent_before_the_wait_is_kept(runtime: Any) -> None:
    """A signal that arrives before the workflow reaches its wait is consumed when it gets there."""
    async with runtime(worker=False) as client:
        await client.start(approval, None, run_id="early")
        await client.signal("early", "approval", "yes")
    async with runtime() as rt:
        assert await rt.result("early", timeout=10) == {"draft": 21, "verdict": "yes"}


async def test_signals_are_deduplicated_by_signal_id(runtime: Any) -> None:
    """The same signal_id delivered twice counts once; signals are consumed in arrival order."""
    async with runtime() as rt:
        handle = await rt.start(two_signals, run_id="dup")
        assert await rt.signal("dup", "msg", "first", signal_id="s-1") is True
        assert await rt.signal("dup", "msg", "first again", signal_id="s-1") is False
        with pytest.raises(errors.ResultTimeoutError) as timed_out:
            await handle.result(timeout=0.3)
        assert timed_out.value.run_id == "dup"
        await rt.signal("dup", "msg", "second", signal_id="s-2")
        assert await handle.result(timeout=10) == ["first", "second"]


async def test_signal_timeout_raises_signal_timeout(runtime: Any) -> None:
    """await_signal(timeout=) raises SignalTimeout, a TimeoutError the workflow can catch."""
    assert issubclass(cd.SignalTimeout, TimeoutError)
    assert issubclass(cd.SignalTimeout, cd.CoroDurableError)
    async with runtime(inline_wait=0.05) as rt:
        handle = await rt.start(approval, 0.2)
        assert await handle.result(timeout=10) == {"draft": 21, "verdict": "timed out"}
        entry = (await handle.history())[1]
    assert entry.status == "error" and entry.error_info is not None
    assert entry.error_info["type"] == "SignalTimeout"


async def test_now_uuid_random_are_journaled_and_replayed(runtime: Any) -> None:
    """now/uuid4/random return recorded values when the run is replayed after a park."""
    async with runtime() as rt:
        handle = await rt.start(randomness, run_id="rand")
        await wait_for_status(rt, "rand", cd.RunStatus.WAITING, timeout=5)
        recorded = [e.value for e in await rt.history("rand")]
        await rt.signal("rand", "go")
        u, r, t = await handle.result(timeout=10)
    assert recorded == [uuid.UUID(u), r, dt.datetime.fromisoformat(t)]


async def test_awaiting_a_non_effect_raises_a_clear_error(runtime: Any) -> None:
    """Awaiting something that is not an effect raises NotAnEffectError naming the object."""
    async with runtime() as rt:
        message = await (await rt.start(awaits_foreign)).result(timeout=10)
        assert "'not an effect'" in message and "cd.sleep" in message
        with pytest.raises(cd.RunFailedError, match="NotAnEffectError"):
            await (await rt.start(awaits_anyio_sleep)).result(timeout=10)


async def test_unserialisable_result_is_a_typed_terminal_error(runtime: Any) -> None:
    """A step result the codec cannot encode raises SerializationError (naming the step and the
    type) once, without retrying, and the journal records it."""
    async with runtime() as rt:
        handle = await rt.start(bad_result)
        message = await handle.result(timeout=10)
        (entry,) = await handle.history()
    assert "unserialisable" in message and "builtins.object" in message
    assert entry.status == "error" and CALLS["unserialisable"] == 1


async def test_unserialisable_argument_writes_nothing(runtime: Any) -> None:
    """A step argument that cannot be journaled raises at the await and takes no seq."""
    async with runtime() as rt:
        handle = await rt.start(bad_argument)
        message = await handle.result(timeout=10)
        history = await handle.history()
    assert "arguments of step add" in message and message.endswith("then 2")
    assert [e.seq for e in history] == [0] and CALLS["add"] == 1


async def test_dataclass_results_round_trip(runtime: Any) -> None:
    """Dataclasses (with tuples and datetimes inside) come back as the same types."""
    async with runtime() as rt:
        result = await (await rt.start(typed_results)).result(timeout=10)
    assert result == make_report("t")


async def test_cancel_a_waiting_run(runtime: Any) -> None:
    """cancel raises RunCancelledError at the pending await; cleanup effects still run."""
    async with runtime() as rt:
        handle = await rt.start(cancellable_run, run_id="cx")
        await wait_for_status(rt, "cx", cd.RunStatus.WAITING, timeout=5)
        await rt.cancel("cx")
        with pytest.raises(cd.RunCancelledError):
            await handle.result(timeout=10)
        history = await handle.history()
        info = await rt.describe("cx")
    assert info.status == cd.RunStatus.CANCELLED
    assert [(e.kind, e.status) for e in history] == [
        ("call", "ok"),
        ("signal", "error"),
        ("call", "ok"),
    ]
    assert history[2].value == 200


async def test_cancel_a_run_that_never_started(runtime: Any) -> None:
    """A run no worker has picked up yet is cancelled on the spot."""
    async with runtime(worker=False) as client:
        await client.start(arithmetic, 1, run_id="never")
        await client.cancel("never")
        assert (await client.describe("never")).status == cd.RunStatus.CANCELLED
        with pytest.raises(cd.RunCancelledError):
            await client.result("never", timeout=1)


async def test_client_only_runtime_executes_nothing(runtime: Any) -> None:
    """worker=False starts runs without executing them; a worker elsewhere picks them up."""
    async with runtime(worker=False) as client:
        await client.start(arithmetic, 5, run_id="later")
        await anyio.sleep(0.1)
        assert (await client.describe("later")).status == cd.RunStatus.PENDING
        async with runtime() as _worker:
            assert await client.result("later", timeout=10) == [6, 12, 24]


async def test_describe_and_list_runs(runtime: Any) -> None:
    """describe answers status, step and inputs; list_runs filters by status and workflow."""
    async with runtime() as rt:
        await (await rt.start(arithmetic, 1, run_id="l1")).result(timeout=10)
        await rt.start(approval, None, run_id="l2")
        await wait_for_status(rt, "l2", cd.RunStatus.WAITING, timeout=5)
        info = await rt.describe("l1")
        assert (info.status, info.step, info.inputs, info.result) == (
            cd.RunStatus.COMPLETED,
            3,
            {"args": [1], "kwargs": {}},
            [2, 4, 8],
        )
        waiting = await rt.list_runs(status="waiting")
        assert [r.run_id for r in waiting] == ["l2"]
        assert {r.run_id for r in await rt.list_runs(workflow="arithmetic")} == {"l1"}
        with pytest.raises(errors.RunNotFoundError):
            await rt.describe("nope")


@cd.workflow
async def approval_or_reminder(name: str) -> Any:
    return await cd.gather(cd.await_signal(name, timeout=3600), cd.sleep(7200))


async def test_list_runs_finds_the_runs_waiting_on_a_signal(runtime: Any) -> None:
    """What a parked run waits for is data: describe() gives its waits (a gather's several,
    with their seqs and deadlines), and list_runs(waiting_for="signal", wait_name=...) answers
    the runs waiting on that signal, newest first, and no run waiting on another or done."""
    async with runtime(inline_wait=0.05) as rt:
        await rt.start(approval, None, run_id="a1")
        await rt.start(approval_or_reminder, "approval", run_id="a2")
        await rt.start(approval_or_reminder, "review", run_id="a3")
        await rt.start(approval, None, run_id="a4")
        for run_id in ("a1", "a2", "a3", "a4"):
            await wait_for_status(rt, run_id, cd.RunStatus.WAITING, timeout=10)
        await rt.signal("a4", "approval", True)
        await rt.result("a4", timeout=10)

        async def ids(**filters: Any) -> list[str]:
            return [r.run_id for r in await rt.list_runs(**filters)]

        assert await ids(waiting_for="signal", wait_name="approval") == ["a2", "a1"]
        assert await ids(waiting_for=cd.WaitKind.SIGNAL) == ["a3", "a2", "a1"]
        assert await ids(waiting_for="timer") == ["a3", "a2"]
        assert await ids(waiting_for="signal", workflow="approval") == ["a1"]
        info = await rt.describe("a2")
        signal, timer = info.waits
        assert (signal.kind, signal.name, timer.kind) == (
            cd.WaitKind.SIGNAL,
            "approval",
            cd.WaitKind.TIMER,
        )
        assert signal.seq is not None and timer.seq == signal.seq + 1
        assert signal.until is not None and timer.until is not None
        assert 3000 < timer.until - signal.until < 4000  # one hour apart, as the code asked
        assert info.wake_at is not None and abs(info.wake_at.timestamp() - signal.until) < 1e-3
        assert info.waiting_on is not None and info.waiting_on.startswith(
            "signal 'approval', timer"
        )
        assert (await rt.describe("a4")).waits == ()
        with pytest.raises(errors.ConfigurationError, match="unknown wait kind 'bogus'"):
            await rt.list_runs(waiting_for="bogus")
        with pytest.raises(errors.ConfigurationError, match="needs waiting_for"):
            await rt.list_runs(wait_name="approval")


@cd.workflow
async def tagged_info() -> dict[str, str]:
    return cd.workflow_info().tags


async def test_tags_are_searchable_run_metadata(runtime: Any) -> None:
    """start(tags=) stores a run's tags: list_runs(tags=) finds the runs with every one of
    them (with the status and workflow filters too), describe and cd.workflow_info() show
    them, a second start of the run keeps the first tags, bad tags are refused up front."""
    async with runtime() as rt:
        a = await rt.start(tagged_info, run_id="t1", tags={"tenant": "acme", "tier": "gold"})
        await rt.start(tagged_info, run_id="t2", tags={"tenant": "acme"})
        await rt.start(tagged_info, run_id="t3", tags={"tenant": "zeta", "tier": "gold"})
        await rt.start(approval, None, run_id="t4", tags={"tenant": "acme"})
        assert await a.result(timeout=10) == {"tenant": "acme", "tier": "gold"}
        for run_id in ("t2", "t3"):
            await rt.result(run_id, timeout=10)
        await wait_for_status(rt, "t4", cd.RunStatus.WAITING, timeout=10)

        async def ids(**filters: Any) -> list[str]:
            return [r.run_id for r in await rt.list_runs(**filters)]

        assert await ids(tags={"tenant": "acme"}) == ["t4", "t2", "t1"]
        assert await ids(tags={"tenant": "acme", "tier": "gold"}) == ["t1"]
        assert await ids(tags={"tier": "gold"}) == ["t3", "t1"]
        assert await ids(tags={"tenant": "acme"}, status="waiting") == ["t4"]
        assert await ids(tags={"tenant": "acme"}, workflow="tagged_info", limit=1) == ["t2"]
        assert await ids(tags={"tenant": "nobody"}) == []
        assert (await rt.describe("t1")).tags == {"tenant": "acme", "tier": "gold"}
        again = await rt.start(tagged_info, run_id="t1", tags={"tenant": "other"})
        assert not again.created and (await rt.describe("t1")).tags["tenant"] == "acme"
        for bad in ({"": "x"}, {"a.b": "x"}, {"k": 1}, {"k": "x" * 257}, {"k": "a\nb"}):
            with pytest.raises(errors.ConfigurationError, match="tag"):
                await rt.start(tagged_info, tags=bad)


async def test_result_timeout(runtime: Any) -> None:
    """result(timeout=) raises ResultTimeoutError (a TimeoutError) for a run still going."""
    async with runtime() as rt:
        await rt.start(approval, None, run_id="slowpoke")
        with pytest.raises(TimeoutError, match="slowpoke"):
            await rt.result("slowpoke", timeout=0.2)


async def test_resume_after_restart_does_not_rerun_completed_steps(runtime: Any) -> None:
    """A run parked on a signal resumes in a new Runtime without re-running its steps."""
    async with runtime() as rt:
        await rt.start(approval, None, run_id="restart")
        await wait_for_status(rt, "restart", cd.RunStatus.WAITING, timeout=5)
    assert CALLS["add"] == 1
    async with runtime() as rt2:
        await rt2.signal("restart", "approval", "go")
        assert await rt2.result("restart", timeout=10) == {"draft": 21, "verdict": "go"}
    assert CALLS["add"] == 1


async def test_replay_matches_a_completed_run(runtime: Any) -> None:
    """Runtime.replay re-executes against the journal with no side effects and reports a match."""
    async with runtime() as rt:
        await (await rt.start(arithmetic, 2, run_id="rp")).result(timeout=10)
        before = dict(CALLS)
        report = await rt.replay("rp")
    assert report.matched and report.replayed == 3 and before == CALLS


# -- non-determinism ----------------------------------------------------------------------------------


@cd.workflow(name="evolving")
async def evolving_v1() -> int:
    a = await cd.call(add, 1, 1)
    await cd.await_signal("go")
    return a


async def _v2_kind() -> int:
    await cd.await_signal("go")
    return await cd.call(add, 1, 1)


async def _v2_identity() -> int:
    a = await cd.call(double, 1)
    await cd.await_signal("go")
    return a


async def _v2_arguments() -> int:
    a = await cd.call(add, 1, 2)
    await cd.await_signal("go")
    return a


@pytest.mark.parametrize(
    ("changed", "issued"),
    [
        (_v2_kind, "signal(go)"),
        (_v2_identity, "call(double)"),
        (_v2_arguments, "call(add) with arguments"),
    ],
)
async def test_changed_code_raises_non_determinism_and_writes_nothing(
    runtime: Any, changed: Any, issued: str
) -> None:
    """Resuming a run under code whose effects differ raises NonDeterminismError naming the seq and
    both effects, quarantines the run, and leaves its journal unchanged; the old code resumes it."""
    async with runtime() as rt:
        handle = await rt.start(evolving_v1, run_id="evo")
        await wait_for_status(rt, "evo", cd.RunStatus.WAITING, timeout=5)
        before = await rt.history("evo")
        cd.workflow(name="evolving")(changed)  # "deploy" the changed code
        try:
            await rt.signal("evo", "go")
            with pytest.raises(errors.RunQuarantinedError) as info:
                await handle.result(timeout=10)
            assert "NonDeterminismError" in info.value.last_error
            assert "seq 0" in info.value.last_error and "call(add)" in info.value.last_error
            assert issued in info.value.last_error
            assert await rt.history("evo") == before
            report = await rt.replay("evo")
            assert not report.matched and report.replayed == 0 and issued in report.detail
        finally:
            cd.workflow(name="evolving")(evolving_v1)  # roll back
        await rt.resume("evo")
        assert await handle.result(timeout=10) == 2
    assert CALLS == {"add": 1}


async def test_replay_of_changed_code_reports_the_divergence_directly(runtime: Any) -> None:
    """Runtime.replay raises nothing: it reports the first divergence and writes nothing."""
    async with runtime() as rt:
        await rt.start(evolving_v1, run_id="evo2")
        await wait_for_status(rt, "evo2", cd.RunStatus.WAITING, timeout=5)
        report = await rt.replay("evo2")
        assert report.matched and "seq 1, next effect signal(go)" in report.detail
        cd.workflow(name="evolving")(_v2_kind)
        try:
            report = await rt.replay("evo2")
        finally:
            cd.workflow(name="evolving")(evolving_v1)
        assert not report.matched and "seq 0" in report.detail
        assert (await rt.describe("evo2")).status == cd.RunStatus.WAITING


# -- many parked runs -------------------------------------------------------------------------------------


@cd.workflow
async def parked(i: int) -> int:
    return int(await cd.await_signal("wake")) + i


async def test_ten_thousand_parked_runs_hold_no_task_and_no_lease(
    runtime: Any, store_kind: str
) -> None:
    """10,000 runs waiting on a signal hold no task and no lease; signalling all completes all.
    (2,000 on the server stores, whose round trips would make 10,000 cost minutes per loop.)"""
    n = 10_000 if store_kind in ("memory", "sqlite") else 2_000
    async with runtime(concurrency=200, poll_interval=0.05) as rt:
        for i in range(n):
            await rt.start(parked, i, run_id=f"p-{i}")
        with anyio.fail_after(240):
            while len(await rt.list_runs(status="waiting", limit=n + 1)) < n:
                await anyio.sleep(0.2)
        waiting = await rt.list_runs(status="waiting", limit=n + 1)
        assert all(r.owner is None and r.waiting_on == "signal 'wake'" for r in waiting)
        assert len(anyio.get_running_tasks()) < 20  # the worker's own tasks, not one per run
        for i in range(n):
            await rt.signal(f"p-{i}", "wake", 1)
        with anyio.fail_after(240):
            while len(await rt.list_runs(status="completed", limit=n + 1)) < n:
                await anyio.sleep(0.2)
        assert await rt.result("p-1234", timeout=1) == 1235


@cd.workflow
async def one_slow_step() -> str:
    return await cd.call(slow, 0.2)


async def test_step_duration_is_journaled(runtime: Any) -> None:
    """A step's entry records when it started and finished, for the audit trail."""
    async with runtime() as rt:
        handle = await rt.start(one_slow_step)
        await handle.result(timeout=10)
        (entry,) = await handle.history()
    assert entry.finished_at is not None
    assert entry.finished_at - entry.started_at >= 0.2


async def test_misuse_gets_clear_errors(runtime: Any) -> None:
    """Signalling a finished run, resuming a healthy one and an unknown status are refused."""
    async with runtime() as rt:
        await (await rt.start(arithmetic, 1, run_id="done")).result(timeout=10)
        with pytest.raises(errors.RunError, match="already completed"):
            await rt.signal("done", "late", 1)
        with pytest.raises(errors.RunError, match="not quarantined"):
            await rt.resume("done")
        with pytest.raises(errors.ConfigurationError, match="unknown run status"):
            await rt.list_runs(status="bogus")
        with pytest.raises(errors.RunNotFoundError):
            await rt.signal("ghost", "x", 1)


class _LostConsumeAck(cd.MemoryStore):
    """A store whose first consume_signal commits but reports a connection error."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def consume_signal(self, run_id: str, epoch: int, name: str, entry: Any) -> Any:
        got = await super().consume_signal(run_id, epoch, name, entry)
        if got is not None and not self.failed:
            self.failed = True
            raise errors.StoreError("connection lost after commit (simulated)")
        return got


async def test_signal_consumed_with_a_lost_acknowledgement_is_not_lost() -> None:
    """A consume_signal whose commit landed but whose reply was lost is recognised on retry:
    the workflow gets the payload instead of waiting forever."""
    store = _LostConsumeAck()
    async with cd.Runtime(store, poll_interval=0.02) as rt:
        await rt.start(approval, None, run_id="ack")
        await rt.signal("ack", "approval", "yes")
        assert await rt.result("ack", timeout=10) == {"draft": 21, "verdict": "yes"}
    assert store.failed


# -- an overloaded worker claims fewer runs -------------------------------------------------------------


class _LosingRenewals(cd.MemoryStore):
    """A store whose first ``bad`` renewals answer that every lease was lost (what a live worker
    sees when it is too slow to renew in time and another worker took its runs)."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad = bad

    async def renew(self, worker: str, leases: dict[str, int], lease_ttl: float) -> dict[str, bool]:
        held = await super().renew(worker, leases, lease_ttl)
        if self.bad > 0 and leases:
            self.bad -= 1
            return {}
        return held


async def _slow_step(i: int) -> int:
    await anyio.sleep(0.15)
    return i


@cd.workflow(name="rt_slow_steps")
async def slow_steps(n: int) -> int:
    total = 0
    for i in range(n):
        total += await cd.call(_slow_step, i)
    return total


@pytest.mark.anyio
async def test_a_worker_losing_leases_claims_fewer_runs_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A live worker whose renewals keep failing halves how many runs it claims instead of
    grabbing them all back (overloaded workers would otherwise take runs from each other
    forever); once renewals succeed it grows back and every run completes."""
    store = _LosingRenewals(bad=3)
    peak_after_trouble = 0
    async with cd.Runtime(store, lease_ttl=0.3, poll_interval=0.01, concurrency=16) as rt:
        for i in range(16):
            await rt.start(slow_steps, 4, run_id=f"ov-{i}")
        with anyio.fail_after(60):
            while store.bad > 0:
                await anyio.sleep(0.01)
            while True:
                peak_after_trouble = max(peak_after_trouble, rt.active_runs)
                infos = [await rt.describe(f"ov-{i}") for i in range(16)]
                if all(info.status == cd.RunStatus.COMPLETED for info in infos):
                    break
                await anyio.sleep(0.01)
    assert all(info.result == 6 for info in infos)
    throttled = [r.getMessage() for r in caplog.records if "claiming at most" in r.getMessage()]
    assert throttled, "the worker never reduced how many runs it claims"
    assert "leases lost at renewal" in throttled[0]
    assert peak_after_trouble < 16, "it claimed every run again right after losing them"


class _CountingReads(cd.MemoryStore):
    """A memory store that counts ``get_run`` calls per run."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    async def get_run(self, run_id: str) -> Any:
        self.reads[run_id] += 1
        return await super().get_run(run_id)


_GATE: dict[str, anyio.Event] = {}


async def _gated_step(name: str) -> str:
    await _GATE[name].wait()
    return name


@cd.workflow(name="rt_gated")
async def gated(name: str) -> str:
    return await cd.call(_gated_step, name)


@pytest.mark.anyio
async def test_result_waits_for_its_own_run_not_for_every_store_change() -> None:
    """A ``result()`` waiting on a run this worker is driving is woken when that run's activation
    ends, not by every other run's progress: 40 other runs starting and finishing (80+ store
    changes) must not make it re-read its run each time."""
    store = _CountingReads()
    _GATE["slow"] = anyio.Event()
    async with cd.Runtime(store, poll_interval=5.0, concurrency=50) as rt:
        slow = await rt.start(gated, "slow", run_id="slow")
        got: list[str] = []

        async def wait_slow() -> None:
            got.append(await slow.result(timeout=30))

        async with anyio.create_task_group() as tg:
            await wait_for_status(rt, "slow", cd.RunStatus.RUNNING, timeout=30)
            tg.start_soon(wait_slow)
            await anyio.sleep(0.05)
            reads_before = store.reads["slow"]
            for i in range(40):
                _GATE[f"o{i}"] = anyio.Event()
                _GATE[f"o{i}"].set()
                handle = await rt.start(gated, f"o{i}", run_id=f"o{i}")
                assert await handle.result(timeout=30) == f"o{i}"
            reads_during = store.reads["slow"] - reads_before
            _GATE["slow"].set()
        assert got == ["slow"]
    assert reads_during <= 2, f"result() re-read its run {reads_during} times for others' changes"
