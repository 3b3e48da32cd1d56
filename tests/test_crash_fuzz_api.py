"""coro_durable.testing: the fault-injection API, each catalogued fault through a real Runtime on
every store, and crash_fuzz's report."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable._core.hooks import Hooks, installed_now
from coro_durable.errors import ConfigurationError, StoreError
from coro_durable.testing import (
    CRASH_POINTS,
    POINTS,
    Fault,
    FaultPlan,
    SimulatedCrash,
    Trace,
    corrupt_row,
    crash_fuzz,
    crash_fuzz_async,
    crash_fuzzer,  # noqa: F401 - the pytest fixture, used by a test below
    inject,
    no_faults,
    wait_for_status,
)

CALLS: Counter[str] = Counter()  # physical calls per idempotency key
LEDGER: dict[str, str] = {}  # idempotency key -> effect: an API honouring Idempotency-Key


def reset() -> None:
    CALLS.clear()
    LEDGER.clear()


@pytest.fixture(autouse=True)
def _reset() -> None:
    reset()


def effect(tag: str) -> str:
    key = cd.idempotency_key()
    CALLS[key] += 1
    LEDGER.setdefault(key, tag)
    return f"did {tag}"


async def slow_effect(tag: str, seconds: float) -> str:
    await anyio.sleep(seconds)
    return effect(tag)


@cd.workflow(name="api_three_steps")
async def three_steps() -> list[str]:
    a = await cd.call(effect, "a")
    b, c = await cd.gather(cd.call(effect, "b"), cd.call(effect, "c"))
    return [a, b, c]


@cd.workflow(name="api_signalled")
async def signalled() -> str:
    before = await cd.call(effect, "before")
    got = await cd.await_signal("go")
    return f"{before}, then {got}"


@cd.workflow(name="api_slow")
async def slow_steps(n: int, seconds: float) -> list[str]:
    return [await cd.call(slow_effect, f"s{i}", seconds) for i in range(n)]


# -- the fault API ------------------------------------------------------------------------------------


def test_fault_fires_on_its_nth_matching_hit_then_stops() -> None:
    """nth counts matching hits from when the fault was armed; times limits the firings."""
    plan = FaultPlan(Fault("X4", seq=2, nth=2), Fault("X5", times=2))
    plan("X4", "r", 1)  # another seq: no match
    plan("X4", "r", 2)  # first match
    with pytest.raises(SimulatedCrash) as crash:
        plan("X4", "r", 2)
    assert (crash.value.point, crash.value.run_id, crash.value.seq) == ("X4", "r", 2)
    plan("X4", "r", 2)  # fired once: spent
    for _ in range(2):
        with pytest.raises(StoreError, match="acknowledgement was lost"):
            plan("X5", "r", 0)
    plan("X5", "r", 0)
    assert [f.point for f in plan.fired] == ["X4", "X5", "X5"]
    assert plan.crashes == 1 and plan.errors == 2
    assert len(plan.hits) == 7


def test_fault_plan_filters_runs_and_is_quiet_under_no_faults() -> None:
    """A plan restricted to some runs ignores others (renewals always pass: their id is a
    worker's); hooks inside no_faults() neither fire nor count."""
    plan = FaultPlan(Fault("X1"), Fault("renew", run_id="w1"), runs={"mine"})
    plan("X1", "theirs", 0)
    with no_faults():
        plan("X1", "mine", 0)
    with pytest.raises(SimulatedCrash):
        plan("X1", "mine", 0)
    plan("renew", "w2", None)
    with pytest.raises(StoreError, match="renewal was lost"):
        plan("renew", "w1", None)
    assert plan.hits == [("X1", "mine", 0), ("renew", "w2", None), ("renew", "w1", None)]


def test_fault_validation_names_the_points() -> None:
    with pytest.raises(ConfigurationError, match="X1, invoke, X2"):
        Fault("X13")
    with pytest.raises(ConfigurationError, match="lost renewal"):
        Fault("renew", action="crash")
    with pytest.raises(ConfigurationError):
        Fault("X1", nth=0)
    assert Fault("X5").kind == "error" and Fault("X5", action="crash").kind == "crash"
    assert Fault("X4").kind == "crash"
    assert str(Fault("X4", seq=3, nth=2)) == "crash at X4 (seq 3, 2nd hit)"
    assert str(Fault("renew", run_id="w1", times=4)) == (
        "error at renew (worker w1, 4 hits in a row)"
    )
    assert set(CRASH_POINTS) < set(POINTS)


def _fault(point: str, run_id: str, seq: int | None) -> None:
    """Pass a fault point as a Runtime created here would (with the instruments installed)."""
    Hooks(installed_now()).fault(point, run_id, seq)


def test_inject_chains_injectors_and_restores_them() -> None:
    """Nested injectors all see the hits (the inner one first); leaving restores the outer one,
    and leaving the outermost leaves the runtime's hooks free again."""
    outer = FaultPlan()
    assert not installed_now()
    with inject(outer):
        with inject(Fault("X7")) as inner:
            with pytest.raises(SimulatedCrash):
                _fault("X7", "r", 1)
            _fault("X6", "r", 1)
        assert inner.hits == [("X7", "r", 1), ("X6", "r", 1)]
        assert outer.hits == [("X6", "r", 1)]  # the crash hid the X7 hit from it
        _fault("X1", "r", 0)
        assert inner.hits[-1] == ("X6", "r", 1)
    assert not installed_now()
    assert outer.hits == [("X6", "r", 1), ("X1", "r", 0)]
    with pytest.raises(ConfigurationError), inject(Fault("X1"), FaultPlan()):
        pass


# -- each fault through a real Runtime, on every store -------------------------------------------------


@pytest.fixture
def cluster(make_store: Callable[[], cd.Store]) -> Callable[..., Any]:
    """``async with cluster(trace) as (client, restart)``: a client Runtime, and restart() which
    runs worker Runtimes (a new one after each simulated crash) until the block ends."""

    @asynccontextmanager
    async def open_cluster(
        trace: Trace, workers: int = 1, **options: Any
    ) -> AsyncIterator[cd.Runtime]:
        options = {"lease_ttl": 0.2, "poll_interval": 0.01, **options}

        async def supervise(n: int) -> None:
            for i in range(1000):
                name = f"w{n}.{i}"
                rt = cd.Runtime(trace.store(make_store(), name), worker_id=name, **options)
                async with rt:
                    while rt._crashed is None:
                        await anyio.sleep(0.01)

        async with (
            cd.Runtime(make_store(), worker=False, poll_interval=0.01) as client,
            anyio.create_task_group() as tg,
        ):
            for n in range(workers):
                tg.start_soon(supervise, n)
            yield client
            tg.cancel_scope.cancel()

    return open_cluster


async def _run(
    cluster: Callable[..., Any], faults: tuple[Fault, ...], workflow: Any, *args: Any
) -> tuple[Any, FaultPlan, Trace, list[cd.JournalEntry]]:
    trace = Trace()
    with inject(trace), inject(*faults) as plan:
        async with cluster(trace) as client:
            handle = await client.start(workflow, *args)
            if workflow is signalled:  # once the run waits (parked, holding nothing)
                with anyio.fail_after(10):
                    while (await handle.describe()).waiting_on is None:
                        await anyio.sleep(0.01)
                assert await handle.signal("go", "went", signal_id="go-1")
                assert not await handle.signal("go", "again", signal_id="go-1")  # X12
            result = await handle.result(timeout=20)
            history = await handle.history()
            with no_faults():
                assert (await client.replay(handle.run_id)).matched
    assert not trace.violations, trace.violations
    return result, plan, trace, history


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "reruns"),
    [
        (Fault("X1", seq=0), (0, 0)),  # before the step starts: nothing ran
        (Fault("X1", seq=1), (0, 1)),  # in a gather: a sibling may already be in flight
        (Fault("X3", seq=0), (1, 1)),  # during: the body returned, the worker died
        (Fault("X4", seq=0), (1, 1)),  # done but not journaled: the classic
        (Fault("X4", seq=1), (1, 2)),  # in a gather: its sibling may be in flight too
        (Fault("commit.fail", seq=0), (0, 0)),  # the commit failed and is retried
        (Fault("X5", seq=0), (0, 0)),  # the commit landed, its acknowledgement was lost
        (Fault("X5", seq=0, action="crash"), (0, 0)),  # landed, then the worker died
        (Fault("X6", seq=2), (0, 0)),  # journaled, not yet fed
        (Fault("X7", seq=1), (0, 0)),  # fed seq 0, before the next effect (seq 1)
        (Fault("X8"), (0, 0)),  # before the run's result is committed
        (Fault("X9"), (0, 0)),  # the result committed, its acknowledgement lost
        (Fault("X10"), (0, 0)),  # claimed, then died before processing
    ],
    ids=str,
)
async def test_each_crash_point_resumes_with_every_effect_applied_once(
    cluster: Callable[..., Any], fault: Fault, reruns: tuple[int, int]
) -> None:
    """At every crash point a fresh worker resumes the run from the store: the result is the
    crash-free one, each effect is applied once under its key, and only a step in flight at the
    crash runs again, with the same key.

    The leases here are short (0.2 s) so that takeovers are quick; on a loaded machine a worker
    may miss a renewal and lose its lease once more, which is another takeover: the trace counts
    the claims, and each claim beyond the crash's own may re-run the steps in flight then (at
    most the two of the gather), still under the same keys."""
    result, plan, trace, history = await _run(cluster, (fault,), three_steps)
    assert result == ["did a", "did b", "did c"]
    assert len(plan.fired) == 1
    assert sorted(LEDGER.values()) == ["a", "b", "c"]
    assert sorted(LEDGER) == sorted(e.key for e in history)
    takeovers = trace.claims - 1 - plan.crashes  # leases lost to load, not to the fault
    assert takeovers >= 0, trace.claims
    assert reruns[0] <= sum(CALLS.values()) - 3 <= reruns[1] + 2 * takeovers, CALLS
    if reruns[0]:
        assert CALLS[history[fault.seq or 0].key] == 2  # the same key both times


@pytest.mark.anyio
@pytest.mark.parametrize("fault", [Fault("X11"), Fault("X10", nth=2)], ids=str)
async def test_a_signal_survives_a_crash_before_it_is_consumed(
    cluster: Callable[..., Any], fault: Fault
) -> None:
    """X11 (the signal is stored, the waiter dies before consuming it) and a crash right after
    the wake-up claim (X10): the signal is neither lost nor consumed twice; a duplicate delivery
    of the same signal id is refused (X12)."""
    result, plan, _, history = await _run(cluster, (fault,), signalled)
    assert result == "did before, then went"
    assert len(plan.fired) == 1
    assert [e.kind for e in history] == ["call", "signal"]
    assert sum(CALLS.values()) == 1


@pytest.mark.anyio
async def test_lost_renewals_hand_the_run_over_and_fence_the_old_worker(
    cluster: Callable[..., Any],
) -> None:
    """A worker whose renewals are lost for longer than its lease loses the run mid-step; it is
    taken over, the old activation's writes are refused (the trace saw no stale write), and
    each effect is applied once."""
    result, plan, trace, history = await _run(
        cluster, (Fault("renew", times=6),), slow_steps, 4, 0.15
    )
    assert result == [f"did s{i}" for i in range(4)]
    assert plan.errors == 6
    assert trace.claims >= 2  # taken over at least once
    assert sorted(LEDGER.values()) == [f"s{i}" for i in range(4)]
    assert len(history) == 4


@pytest.mark.anyio
async def test_a_worker_that_reclaims_its_own_expired_lease_stops_the_older_activation(
    cluster: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose renewals fail past its lease claims the run again itself: it says so, and
    the older activation (fenced already) stops at once instead of running its step on to a write
    that would be refused, so the step's effect is applied once, by the new activation."""
    result, plan, trace, history = await _run(
        cluster, (Fault("renew", times=5),), slow_steps, 1, 0.8
    )
    assert result == ["did s0"]
    assert plan.errors == 5
    assert trace.claims == 2  # the same worker, once more
    assert "was lost: it expired before this worker renewed it" in caplog.text
    assert list(CALLS.values()) == [1], CALLS  # the old activation stopped mid-step
    assert len(history) == 1


class LateSnapshotStore(cd.MemoryStore):
    """A memory store whose first journal load returns its snapshot late, like a reply held up
    in a congested network: the activation reading it has lost its lease by the time it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.late = True

    async def load_journal(self, run_id: str) -> list[cd.JournalEntry]:
        entries = await super().load_journal(run_id)
        if self.late:
            self.late = False
            await anyio.sleep(0.6)
        return entries


TRACE: list[Trace] = []  # the trace of the test below, for its step
STALE: list[bool] = []  # what each invocation of that step saw: was its activation stale?


def sync_effect(tag: str, seconds: float) -> str:
    STALE.append(TRACE[0].stale_here(cd.idempotency_key().rsplit(":", 1)[0]))
    time.sleep(seconds)
    return effect(tag)


@cd.workflow(name="api_stale_reader")
async def stale_reader(n: int) -> list[str]:
    return [await cd.call(sync_effect, f"s{i}", 0.15) for i in range(n)]


@pytest.mark.anyio
async def test_a_worker_that_read_its_journal_late_may_rerun_one_recorded_step() -> None:
    """A stale activation (its claim superseded by another worker while its journal load was in
    flight, its own renewals failing so it cannot know yet) runs the step it read as next
    although the newer activation has recorded it meanwhile: fencing refuses its write, and the
    trace attributes each activation to its own claim instead of reporting a violation
    (regression test of the checker itself)."""
    trace = Trace()
    TRACE[:] = [trace]
    STALE.clear()
    store = LateSnapshotStore()
    options: dict[str, Any] = {"lease_ttl": 0.2, "poll_interval": 0.01}
    # w's renewals fail for longer than its late journal load: it learns of the loss only after
    # its stale activation ran the step; concurrency=1 keeps it from claiming the run back.
    with inject(trace), inject(Fault("renew", run_id="w", times=14)):
        async with cd.Runtime(
            trace.store(store, "w"), worker_id="w", concurrency=1, **options
        ) as rt:
            await rt.start(stale_reader, 2, run_id="late")
            with anyio.fail_after(5):
                while trace.claims < 1:
                    await anyio.sleep(0.01)
            async with cd.Runtime(trace.store(store, "w2"), worker_id="w2", **options):
                assert await rt.result("late", timeout=10) == ["did s0", "did s1"]
                await anyio.sleep(0.8)  # the stale activation finishes its step, its write refused
    assert not trace.violations, trace.violations
    epochs = [i.epoch for i in trace.invocations[("late", 0)]]
    assert epochs[0] == 2 and 1 in epochs, epochs  # the newer activation first, then the stale
    assert STALE.count(True) == 1  # the stale one saw itself stale in its step's thread
    assert LEDGER == {"late:0": "s0", "late:1": "s1"}


@pytest.mark.anyio
async def test_a_corrupt_row_quarantines_the_run_until_it_is_restored(
    make_store: Callable[[], cd.Store],
) -> None:
    """A journal row changed behind coro_durable's back fails its checksum: the run is
    quarantined with a corrupt-journal error rather than replayed with the wrong value; once
    the row is restored, resume completes it without re-running the recorded steps."""
    store = make_store()
    options: dict[str, Any] = {"lease_ttl": 0.2, "poll_interval": 0.01}
    with inject(Fault("X6", seq=2)):  # the worker dies with the whole journal written
        async with cd.Runtime(store, **options) as rt:
            await rt.start(three_steps, run_id="torn")
            with anyio.fail_after(10):
                while rt._crashed is None:
                    await anyio.sleep(0.01)
    async with cd.Runtime(make_store(), worker=False) as client:
        (entry, *_) = await client.history("torn")
    try:
        await corrupt_row(store, "torn", 0, result="did something else")
    except NotImplementedError as exc:  # pragma: no cover - a store corrupt_row cannot reach
        pytest.skip(str(exc))
    async with cd.Runtime(make_store(), **options) as rt:
        with pytest.raises(cd.errors.RunQuarantinedError, match="checksum"):
            await rt.result("torn", timeout=10)
        info = await rt.describe("torn")
        assert info.status == cd.RunStatus.QUARANTINED
        await corrupt_row(store, "torn", 0, result=entry.value)  # restored from a backup
        await rt.resume("torn")
        assert await rt.result("torn", timeout=10) == ["did a", "did b", "did c"]
    assert sum(CALLS.values()) == 3 and sorted(LEDGER.values()) == ["a", "b", "c"]


@pytest.mark.anyio
async def test_a_poisoned_run_is_quarantined_and_resumes_after_the_fix(
    cluster: Callable[..., Any],
) -> None:
    """A run that crashes its worker on every resume is quarantined after max_crashes while
    another run completes; once the fault is gone, resume finishes it with its effects applied
    once (the in-flight step re-ran once per crash, always with the same key)."""
    trace = Trace()
    with inject(trace), inject(Fault("X4", seq=0, run_id="poison", times=None)) as plan:
        async with cluster(trace, max_crashes=3) as client:
            await client.start(three_steps, run_id="poison")
            await wait_for_status(client, "poison", cd.RunStatus.QUARANTINED, timeout=20)
            await client.start(three_steps, run_id="healthy")
            assert await client.result("healthy", timeout=20) == ["did a", "did b", "did c"]
            info = await client.describe("poison")
            assert info.crash_count >= 3 and "lost its lease" in (info.last_error or "")
            plan.disarm()  # "deploy the fix"
            await client.resume("poison")
            assert await client.result("poison", timeout=20) == ["did a", "did b", "did c"]
    assert plan.crashes >= 3
    assert CALLS["poison:0"] == plan.crashes + 1
    assert LEDGER["poison:0"] == "a" and not trace.violations


# -- crash_fuzz ---------------------------------------------------------------------------------------


def test_crash_fuzz_reports_nothing_for_a_correct_workflow() -> None:
    """Every crash point of every effect, store errors, X12 and random schedules: no violation;
    the report says what was injected where."""
    seen: list[Any] = []
    report = crash_fuzz(
        signalled,
        setup=reset,
        check=lambda result: seen.append(result),
        signals={"go": "went"},
        seed=3,
        schedules=3,
    )
    assert report.ok, report.summary()
    assert report.reference == "did before, then went"
    assert report.effects == 2
    assert report.crashes > 0 and report.store_errors > 0 and report.duplicate_signals > 0
    assert set(report.by_point) >= {"X1", "X3", "X4", "X5", "X6", "X7", "X8", "X9", "X10", "X11"}
    assert report.runs == len(seen) and set(seen) == {"did before, then went"}
    assert "violations: 0" in report.summary() and f"seed {report.seed}" in str(report)


def _calls_exactly_once(result: object) -> None:
    duplicated = {k: n for k, n in CALLS.items() if n > 1}
    assert not duplicated, f"called more than once: {duplicated}"


def test_crash_fuzz_names_the_crash_point_step_key_and_shrunk_schedule() -> None:
    """A check that (wrongly) demands at-most-once calls fails exactly where a step was in
    flight at a crash: the violation names the point, seq, step, key, the re-invocation and a
    schedule shrunk to the one fault that matters. crash_fuzz reports it and does not raise."""
    report = crash_fuzz(three_steps, setup=reset, check=_calls_exactly_once, seed=11, schedules=6)
    assert not report.ok
    assert {v.kind for v in report.violations} == {"check"}
    assert {v.point for v in report.violations} == {"X3", "X4"}
    for v in report.violations:
        assert "called more than once" in v.message
        assert v.function == "call(effect)" and v.key == f"{v.run_id}:{v.seq}"
        assert v.invocations == 2 and v.reinvocations == 1
        assert len(v.schedule) == 1 and v.schedule[0].point == v.point
    shrunk = [v for v in report.violations if (v.shrunk_from or 0) > 1]
    assert shrunk, "a random multi-fault schedule should have been shrunk"
    assert "schedule: crash at X" in report.summary()


def test_crash_fuzz_compares_failed_runs_with_the_crash_free_failure() -> None:
    """A workflow that fails is fuzzed too: every crashed run must fail the same way."""

    @cd.workflow(name="api_fails")
    async def fails() -> None:
        await cd.call(effect, "x")
        raise ValueError("no")

    report = crash_fuzz(fails, setup=reset, seed=1, schedules=2, lose_lease=False)
    assert report.ok, report.summary()
    assert isinstance(report.reference, cd.RunFailedError)


def test_crash_fuzz_rejects_unknown_options_and_running_loops() -> None:
    with pytest.raises(ConfigurationError, match="kwargs=") as info:
        crash_fuzz(three_steps, retries=3)
    assert "schedules" in str(info.value)

    async def inside() -> None:
        crash_fuzz(three_steps)

    with pytest.raises(ConfigurationError, match="crash_fuzz_async"):
        asyncio.run(inside())


@pytest.mark.anyio
async def test_crash_fuzz_async_runs_on_the_current_loop(anyio_backend: str) -> None:
    """From async code (asyncio or trio) crash_fuzz_async runs on the caller's event loop."""
    report = await crash_fuzz_async(
        three_steps, setup=reset, seed=5, schedules=1, points=("X4", "X7")
    )
    assert report.ok and report.by_point["X4"] >= 3 and report.by_point["X7"] >= 1


def test_crash_fuzz_on_every_store(store_url: str) -> None:
    """crash_fuzz takes any store URL; each simulated process opens its own store object."""
    report = crash_fuzz(
        signalled,
        setup=reset,
        store=store_url,
        signals={"go": "went"},
        seed=2,
        schedules=2,
        points=("X3", "X4", "X5", "X7", "X10", "X11"),
    )
    assert report.ok, report.summary()
    assert report.crashes >= 4


def test_crash_fuzzer_fixture_fails_the_test_on_violations(
    crash_fuzzer: Callable[..., Any],  # noqa: F811 - the fixture imported above
) -> None:
    """The pytest fixture returns the report when it is clean and fails the test otherwise."""
    assert crash_fuzzer(three_steps, setup=reset, seed=1, schedules=1, points=("X4",)).ok
    with pytest.raises(pytest.fail.Exception, match="called more than once"):
        crash_fuzzer(
            three_steps, setup=reset, check=_calls_exactly_once, seed=1, schedules=0, points=("X4",)
        )
