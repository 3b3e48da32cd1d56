"""cd.first: a race of effects whose winner is journaled, so every replay picks the same one.

Every test runs on every store under asyncio and trio: a signal against a timer (either may win),
a fast step against a slow one (the loser is cancelled), a failing winner (its error is raised),
a crash between the winner's entry and the decision (the resumed run keeps that winner), a
cancel during a race, and the checks on what may be raced.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable import errors
from coro_durable.testing import wait_for_status

pytestmark = pytest.mark.anyio

EVENTS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    EVENTS.clear()


def quick(label: str) -> str:
    EVENTS[f"{label} ran"] += 1
    return label


async def slow(label: str, seconds: float) -> str:
    EVENTS[f"{label} started"] += 1
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        EVENTS[f"{label} cancelled"] += 1
        raise
    EVENTS[f"{label} finished"] += 1  # a loser must never get here
    return label


def broken() -> None:
    raise ValueError("no luck")


@cd.workflow
async def approval_or_timeout(seconds: float) -> list[Any]:
    i, value = await cd.first(cd.await_signal("approve"), cd.sleep(seconds))
    return [i, value]


@cd.workflow
async def timeout_then_late_signal() -> list[Any]:
    i, _ = await cd.first(cd.await_signal("approve"), cd.sleep(0.2))
    late = await cd.await_signal("approve")  # the signal the race did not take is still there
    return [i, late]


@cd.workflow
async def fast_against_slow() -> list[Any]:
    i, value = await cd.first(cd.call(slow, "slow", 5.0), cd.call(quick, "fast"))
    after = await cd.call(quick, "after")
    return [i, value, after]


@cd.workflow
async def failing_winner() -> str:
    try:
        await cd.first(cd.call(broken), cd.sleep(30))
    except cd.StepError as exc:
        return f"{exc.type_name}: {exc.message}"
    return "no error"


async def test_a_signal_beats_the_timer(runtime: Any) -> None:
    """The signal arrives while the run waits on both: index 0 and its payload win; the
    decision is journaled, the timer is journaled as having lost the race, a replay matches."""
    async with runtime() as rt:
        handle = await rt.start(approval_or_timeout, 3600.0, run_id="race")
        await wait_for_status(rt, "race", cd.RunStatus.WAITING, timeout=10)
        info = await rt.describe("race")
        assert [w.kind for w in info.waits] == [cd.WaitKind.SIGNAL, cd.WaitKind.TIMER]
        await rt.signal("race", "approve", {"by": "ada"})
        assert await handle.result(timeout=10) == [0, {"by": "ada"}]
        history = {e.seq: e for e in await rt.history("race")}
        report = await rt.replay("race")
    assert (history[0].kind, history[0].name, history[0].value) == ("first", "2", 0)
    assert history[1].kind == "signal" and history[1].status == "ok"
    loser = history[2]  # stopped, and journaled as such for the audit
    assert loser.kind == "sleep" and loser.status == "error" and loser.error_info is not None
    assert loser.error_info["type"] == "RaceLost" and "seq 1" in loser.error_info["message"]
    assert report.matched, report.detail


async def test_the_timer_wins_and_the_signal_stays_for_later(runtime: Any) -> None:
    """No signal in time: the timer wins (index 1, after the run parked on both); a signal
    sent afterwards was not taken by the finished race and a later await_signal gets it."""
    async with runtime(inline_wait=0.05) as rt:
        handle = await rt.start(timeout_then_late_signal, run_id="late")
        with anyio.fail_after(10):
            while not [e for e in await rt.history("late") if e.kind == "first"]:  # decided
                await anyio.sleep(0.02)
        await rt.signal("late", "approve", "yes")
        assert await handle.result(timeout=10) == [1, "yes"]


async def test_the_fast_step_wins_and_the_slow_one_is_cancelled(runtime: Any) -> None:
    """A quick step beats a slow async one: (1, "fast"); the slow step's body is cancelled where
    it awaits and never finishes, and the run goes on."""
    async with runtime() as rt:
        assert await (await rt.start(fast_against_slow)).result(timeout=10) == [1, "fast", "after"]
    assert EVENTS["slow started"] == 1 and EVENTS["slow cancelled"] == 1
    assert EVENTS["slow finished"] == 0 and EVENTS["fast ran"] == 1


async def test_a_failing_winner_raises_its_error(runtime: Any) -> None:
    """The first effect to complete failed: its StepError is raised at the await."""
    async with runtime() as rt:
        handle = await rt.start(failing_winner)
        assert await handle.result(timeout=10) == "ValueError: no luck"


class CrashBeforeTheDecision(cd.Instrument):
    """Crash the activation once, just after the winner's entry was committed (X5) and before
    the race's decision was written."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.crashed = 0

    def fault_point(self, event: cd.FaultPoint) -> None:
        if event.point == "X5" and event.seq == self.seq and not self.crashed:
            self.crashed += 1
            raise RuntimeError("crash between the winner's entry and the decision")


async def test_a_crash_before_the_decision_keeps_the_winner(runtime: Any) -> None:
    """The worker dies after the winner's entry and before the decision: the resumed run
    decides for the same winner (not by racing again), the step does not run again."""
    crash = CrashBeforeTheDecision(seq=2)  # the quick step: decision 0, slow 1, quick 2
    async with runtime(instruments=[crash]) as rt:
        assert await (await rt.start(fast_against_slow)).result(timeout=10) == [1, "fast", "after"]
    assert crash.crashed == 1
    assert EVENTS["fast ran"] == 1 and EVENTS["slow finished"] == 0


@cd.workflow
async def cancellable_race() -> str:
    try:
        await cd.first(cd.await_signal("never"), cd.call(slow, "held", 30.0))
    except cd.RunCancelledError:
        await cd.call(quick, "cleanup")
        raise
    return "not cancelled"


async def test_a_cancel_during_a_race_reaches_it(runtime: Any) -> None:
    """A cancel while the race runs: RunCancelledError at the race's await (the running step is
    cancelled), and the cleanup after it runs."""
    async with runtime() as rt:
        handle = await rt.start(cancellable_race, run_id="cx")
        with anyio.fail_after(10):
            while EVENTS["held started"] == 0:
                await anyio.sleep(0.02)
        await rt.cancel("cx")
        with pytest.raises(cd.RunCancelledError):
            await handle.result(timeout=10)
    assert EVENTS["held cancelled"] == 1 and EVENTS["cleanup ran"] == 1


def test_first_checks_what_it_races() -> None:
    """Nothing to race, or an effect that completes at once, a gather or another first: refused
    where the workflow builds the race; a first inside a gather too."""
    with pytest.raises(errors.ConfigurationError, match="at least one"):
        cd.first()
    for bad in (cd.gather(cd.sleep(1)), cd.first(cd.sleep(1)), cd.now(), cd.send("r", "s")):
        with pytest.raises(errors.EffectNotAllowedError, match=r"cd\.first races"):
            cd.first(cd.sleep(1), bad)
    with pytest.raises(errors.EffectNotAllowedError, match=r"not a cd\.first"):
        cd.gather(cd.first(cd.sleep(1)))
