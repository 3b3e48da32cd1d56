"""Our workloads, W1 to W4, on any ``cd.Runtime`` URL: a store (memory, sqlite, postgresql, redis)
or an adapter (temporal://, restate://, ...). Run by the harness in a child process through
``run(spec)``; see ``benchmarks/README.md`` for what each workload means.

- W1 sequential: one warm-up run, then ``runs`` runs of 20 trivial steps one after another;
  per-step latency (median, p99) from the gaps between consecutive steps of a run.
- W2 throughput: a warm-up batch, then 200 runs of 10 trivial steps started at once on one worker
  (concurrency 200); steps/s from the first start to the last result.
- W3 waits: N runs parked on ``await_signal``; time to start and park them all, to signal them all
  and to see them all complete; this process's RSS before and at the end, and its peak.
- W4 realistic: the AI pipeline's shape (plan, three retrievals in parallel, a calculator, a human
  approval, a synthesis) with a fake LLM answering after a fixed 50 ms; 100 runs at once, each
  approved right after its start; per run, the time from start to result minus the 150 ms of
  LLM latency on its critical path is the runtime's overhead.

``spec`` keys: ``workload`` (w1..w4, or ``probe``: only open the URL), ``url``, ``backend`` (asyncio|trio), ``quick``, ``sync``
(W1/W2 with sync steps, one thread hop each), ``w3_runs``, ``profile`` (a path: run the measured
part under pyinstrument and write its text report there).

A baseline run (``--baseline``) runs this module on an earlier checkout's ``coro_durable`` too,
so it uses only public API that earlier versions have (``cd.workflow``, ``cd.call``,
``cd.gather``, ``cd.await_signal``, ``cd.Runtime`` and its client calls, ``cd.RunStatus``,
``errors.ConfigurationError``; all present at 11e0516).
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

import coro_durable as cd
from benchmarks._common import STAMPS, gap_stats, percentile, rss_mb, stamp, w1_params, w2_params
from coro_durable import errors

LLM_LATENCY = 0.05  # W4's fake LLM answers after this many seconds
CRITICAL_PATH_LLM_CALLS = 3  # plan, the parallel retrievals, synthesize


# == steps and workflows =========================================================================


async def tick() -> None:
    stamp()


def tick_sync() -> None:
    stamp()


@cd.workflow(name="bench_steps")
async def steps_workflow(n: int, sync: bool) -> int:
    step = tick_sync if sync else tick
    for _ in range(n):
        await cd.call(step)
    return n


@cd.workflow(name="bench_parked")
async def parked(i: int) -> int:
    return int(await cd.await_signal("wake")) + i


async def fake_llm(prompt: str) -> str:
    await anyio.sleep(LLM_LATENCY)
    return f"answer({len(prompt)})"


async def plan(question: str) -> list[str]:
    await fake_llm(f"PLAN {question}")
    return [f"{question} / part {i}" for i in range(3)]


async def retrieve(sub_question: str) -> dict[str, str]:
    return {"question": sub_question, "summary": await fake_llm(f"SUMMARIZE {sub_question}")}


async def calculate(expression: str) -> float:
    left, _, right = expression.partition("*")
    return round(float(left) * float(right), 2)


async def synthesize(question: str, notes: list[dict[str, str]], figure: float, note: str) -> str:
    return await fake_llm(f"SYNTHESIZE {question} {len(notes)} {figure} {note}")


@cd.workflow(name="bench_pipeline")
async def pipeline(question: str) -> dict[str, Any]:
    sub_questions = await cd.call(plan, question)
    notes = await cd.gather(*(cd.call(retrieve, q) for q in sub_questions))
    figure = await cd.call(calculate, "1200 * 0.42")
    approval = await cd.await_signal("approval", timeout=3600)
    answer = await cd.call(synthesize, question, notes, figure, approval["note"])
    return {"answer": answer, "approved_by": approval["by"]}


# == the workloads ===============================================================================


Runtime = Any  # cd.Runtime or an adapter's runtime: same start/signal/result/describe


async def w1(rt: Runtime, spec: dict[str, Any]) -> dict[str, Any]:
    p = w1_params(spec.get("quick", False))
    tag, sync = uuid.uuid4().hex[:8], bool(spec.get("sync", False))
    runs: list[list[float]] = []
    for i in range(p["runs"] + 1):  # run 0 warms up
        STAMPS.clear()
        with _profiled(spec if i == 1 else {}):
            await rt.start(steps_workflow, p["steps"], sync, run_id=f"w1-{tag}-{i}")
            await rt.result(f"w1-{tag}-{i}", timeout=600)
        if i:
            runs.append(list(STAMPS))
    return {**gap_stats(runs), "steps": p["steps"], "runs": p["runs"]}


async def _batch(rt: Runtime, prefix: str, runs: int, steps: int, sync: bool) -> None:
    for i in range(runs):
        await rt.start(steps_workflow, steps, sync, run_id=f"{prefix}-{i}")
    for i in range(runs):
        await rt.result(f"{prefix}-{i}", timeout=600)


async def w2(rt: Runtime, spec: dict[str, Any]) -> dict[str, Any]:
    p = w2_params(spec.get("quick", False))
    tag, sync = uuid.uuid4().hex[:8], bool(spec.get("sync", False))
    await _batch(rt, f"w2w-{tag}", p["warmup"], p["steps"], sync)
    with _profiled(spec):
        began = time.perf_counter()
        await _batch(rt, f"w2-{tag}", p["runs"], p["steps"], sync)
        elapsed = time.perf_counter() - began
    total = p["runs"] * p["steps"]
    return {"steps_per_s": total / elapsed, "seconds": elapsed, **p}


async def _for_all(ids: list[str], action: Callable[[str], Awaitable[Any]], width: int) -> None:
    """``action(run_id)`` for every id, at most ``width`` at a time."""
    limiter = anyio.CapacityLimiter(width)

    async def one(run_id: str) -> None:
        async with limiter:
            await action(run_id)

    async with anyio.create_task_group() as tg:
        for run_id in ids:
            tg.start_soon(one, run_id)


async def _has_list_runs(rt: Runtime) -> bool:
    try:
        await rt.list_runs(limit=1)
    except errors.ConfigurationError:  # adapters without it (Temporal)
        return False
    return True


async def _until_parked(rt: Runtime, ids: list[str], timeout: float) -> None:
    """Until every run of ``ids`` waits: one list_runs query per poll, or describe() per run
    on targets without list_runs (each run is asked until it answers WAITING once)."""
    with anyio.fail_after(timeout):
        if await _has_list_runs(rt):
            waiting = cd.RunStatus.WAITING
            while len(await rt.list_runs(status=waiting, limit=len(ids) + 1)) < len(ids):
                await anyio.sleep(0.25)
            return

        async def parked(run_id: str) -> None:
            while (await rt.describe(run_id)).status != cd.RunStatus.WAITING:
                await anyio.sleep(0.25)

        await _for_all(ids, parked, 32)


async def _until_completed(rt: Runtime, ids: list[str], timeout: float) -> None:
    with anyio.fail_after(timeout):
        if await _has_list_runs(rt):
            done = cd.RunStatus.COMPLETED
            while len(await rt.list_runs(status=done, limit=len(ids) + 1)) < len(ids):
                await anyio.sleep(0.25)
        else:
            await _for_all(ids, lambda run_id: rt.result(run_id, timeout=timeout), 64)


async def w3(rt: Runtime, spec: dict[str, Any]) -> dict[str, Any]:
    n = int(spec.get("w3_runs", 10_000))
    tag = uuid.uuid4().hex[:8]
    ids = [f"w3-{tag}-{i}" for i in range(n)]
    rss_before = rss_mb()
    began = time.perf_counter()

    async def start(run_id: str) -> None:
        await rt.start(parked, int(run_id.rsplit("-", 1)[1]), run_id=run_id)

    async def wake(run_id: str) -> None:
        await rt.signal(run_id, "wake", 1)

    await _for_all(ids, start, 32)
    started = time.perf_counter()
    await _until_parked(rt, ids, timeout=1800)
    parked_at = time.perf_counter()
    rss_parked = rss_mb()
    await _for_all(ids, wake, 32)
    signalled = time.perf_counter()
    await _until_completed(rt, ids, timeout=1800)
    done = time.perf_counter()
    last = n - 1
    if await rt.result(ids[last], timeout=10) != last + 1:
        raise AssertionError("W3: a parked run returned a wrong result")
    return {
        "runs": n,
        "start_s": started - began,
        "park_s": parked_at - began,
        "signal_s": signalled - parked_at,
        "complete_s": done - parked_at,
        "total_s": done - began,
        "rss_before_mb": rss_before,
        "rss_parked_mb": rss_parked,
    }


async def w4(rt: Runtime, spec: dict[str, Any]) -> dict[str, Any]:
    n = 10 if spec.get("quick") else 100
    tag = uuid.uuid4().hex[:8]
    latencies: list[float] = []

    async def one(i: int) -> None:
        run_id = f"w4-{tag}-{i}"
        t0 = time.perf_counter()
        await rt.start(pipeline, f"question {i}", run_id=run_id)
        await rt.signal(run_id, "approval", {"by": "bench", "note": "ok"})
        result = await rt.result(run_id, timeout=600)
        latencies.append(time.perf_counter() - t0)
        assert result["approved_by"] == "bench"

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    makespan = time.perf_counter() - began
    ideal = CRITICAL_PATH_LLM_CALLS * LLM_LATENCY
    overheads = [latency - ideal for latency in latencies]
    return {
        "runs": n,
        "llm_latency_ms": LLM_LATENCY * 1e3,
        "ideal_ms": ideal * 1e3,
        "makespan_ms": makespan * 1e3,
        "overhead_median_ms": statistics.median(overheads) * 1e3,
        "overhead_p99_ms": percentile(overheads, 99) * 1e3,
        "overhead_makespan_ms": (makespan - ideal) * 1e3,
    }


WORKLOADS: dict[str, Callable[[Runtime, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "w1": w1,
    "w2": w2,
    "w3": w3,
    "w4": w4,
}


RUNTIME_OPTIONS: dict[str, dict[str, Any]] = {
    # one worker whose concurrency covers every run at once
    "w1": {"concurrency": 10},
    "w2": {"concurrency": 200},
    "w3": {"concurrency": 200, "poll_interval": 0.05},
    "w4": {"concurrency": 100},
}


@asynccontextmanager
async def _open(url: str, workload: str) -> AsyncIterator[Runtime]:
    async with cd.Runtime(url, **RUNTIME_OPTIONS[workload]) as rt:
        yield rt


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    workload = spec["workload"]
    if workload == "probe":  # does this URL open? (e.g. a store option this version may not know)
        async with cd.Runtime(spec["url"], worker=False):
            return {"ok": True}
    async with _open(spec["url"], workload) as rt:
        return await WORKLOADS[workload](rt, spec)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        return await _main(spec)

    return anyio.run(main, backend=spec.get("backend", "asyncio"))


class _profiled:
    """Run a block under pyinstrument when ``spec['profile']`` names an output file."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.path = Path(spec["profile"]) if spec.get("profile") else None
        self.profiler: Any = None

    def __enter__(self) -> None:
        if self.path:
            from pyinstrument import Profiler

            self.profiler = Profiler(interval=0.0005, async_mode="disabled")
            self.profiler.start()

    def __exit__(self, *exc: object) -> None:
        if self.profiler is not None and self.path is not None:
            self.profiler.stop()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(
                self.profiler.output_text(unicode=False, color=False, show_all=False)
            )
