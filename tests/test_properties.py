"""Properties of the scheduler over generated workflows (Hypothesis), plus a native trio test."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coro_durable as cd
from coro_durable.testing import wait_for_status

INVOKED: Counter[str] = Counter()


def step(name: str, value: int, fail_times: int) -> int:
    INVOKED[name] += 1
    if INVOKED[name] <= fail_times:
        raise RuntimeError(f"{name} attempt {INVOKED[name]}")
    return value


# A plan is a list of groups; a group of one is a plain call, a longer group is a gather.
plans = st.lists(
    st.lists(st.tuples(st.integers(-50, 50), st.integers(0, 3)), min_size=1, max_size=3),
    min_size=1,
    max_size=5,
)

RETRY = cd.RetryPolicy(max_attempts=3, initial_interval=0)


@cd.workflow(name="generated")
async def generated(plan: list[list[tuple[int, int]]]) -> list[Any]:
    out: list[Any] = []
    for g, group in enumerate(plan):
        calls = [cd.call(step, f"{g}.{i}", v, f, retry=RETRY) for i, (v, f) in enumerate(group)]
        try:
            if len(calls) == 1:
                out.append(await calls[0])
            else:
                out.append(await cd.gather(*calls))
        except cd.StepError as exc:
            out.append(f"failed: {exc.message}")
        if g == 1:
            out.append(await cd.await_signal("mid"))
    return out


def expected(plan: list[list[tuple[int, int]]]) -> list[Any]:
    out: list[Any] = []
    for g, group in enumerate(plan):
        failing = [(i, f) for i, (_, f) in enumerate(group) if f >= 3]
        if failing:
            i = failing[0][0]
            out.append(f"failed: {g}.{i} attempt 3")
        else:
            values = [v for v, _ in group]
            out.append(values[0] if len(group) == 1 else values)
        if g == 1:
            out.append("go")
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans, backend=st.sampled_from(["asyncio", "trio"]))
def test_generated_workflows_match_direct_execution(
    plan: list[list[tuple[int, int]]], backend: str
) -> None:
    """Any mix of calls, gathers, retries and a signal wait (which parks and replays the run)
    gives the same result as running the plan directly, and no step runs more than its retries."""
    INVOKED.clear()

    async def run() -> list[Any]:
        async with cd.Runtime("memory://", poll_interval=0.01) as rt:
            handle = await rt.start(generated, plan)
            if len(plan) > 1:  # signal once the run is parked, so it replays from its journal
                await wait_for_status(rt, handle.run_id, cd.RunStatus.WAITING, timeout=30)
                await rt.signal(handle.run_id, "mid", "go")
            result: list[Any] = await handle.result(timeout=30)
            return result

    assert anyio.run(run, backend=backend) == expected(plan)
    for g, group in enumerate(plan):
        for i, (_, fail_times) in enumerate(group):
            assert INVOKED[f"{g}.{i}"] == min(fail_times + 1, 3)


@pytest.mark.trio
async def test_runtime_inside_a_trio_nursery() -> None:
    """A Runtime lives inside a plain trio program next to its own tasks (pytest-trio)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        async with cd.Runtime("memory://", poll_interval=0.01) as rt:
            handle = await rt.start(generated, [[(1, 0)]])
            assert await handle.result(timeout=10) == [1]
        nursery.cancel_scope.cancel()
    assert ticks > 0
