"""Peer: Temporal (temporalio SDK), W1 and W2, on the harness's ``temporal server start-dev``.

The same shape as ours written directly against Temporal: a workflow running ``n`` trivial
activities one after another, as regular activities (each one a task dispatched through the
server) or as local activities (run by the workflow's own worker, recorded in the workflow's
history when the workflow task completes). The activity body is the same ``stamp()`` as ours.
One worker in this process, with the SDK's defaults (sandboxed workflows, 1000 cached runs).

``spec``: ``workload`` (w1|w2), ``address`` (host:port of the dev server), ``local`` (bool),
``quick``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from benchmarks._common import STAMPS, gap_stats, stamp, w1_params, w2_params


@activity.defn(name="bench_tick")
async def tick_activity() -> None:
    stamp()


@workflow.defn(name="bench_steps")
class StepsWorkflow:
    @workflow.run
    async def run(self, n: int, local: bool) -> int:
        for _ in range(n):
            if local:
                await workflow.execute_local_activity(
                    tick_activity, start_to_close_timeout=timedelta(seconds=30)
                )
            else:
                await workflow.execute_activity(
                    tick_activity, start_to_close_timeout=timedelta(seconds=30)
                )
        return n


async def _start(client: Any, queue: str, n: int, local: bool, workflow_id: str) -> Any:
    return await client.start_workflow(
        StepsWorkflow.run, args=[n, local], id=workflow_id, task_queue=queue
    )


async def w1(client: Any, queue: str, spec: dict[str, Any]) -> dict[str, Any]:
    p = w1_params(spec.get("quick", False))
    tag, local = uuid.uuid4().hex[:8], bool(spec["local"])
    runs: list[list[float]] = []
    for i in range(p["runs"] + 1):  # run 0 warms up
        STAMPS.clear()
        handle = await _start(client, queue, p["steps"], local, f"w1-{tag}-{i}")
        await handle.result()
        if i:
            runs.append(list(STAMPS))
    return {**gap_stats(runs), "steps": p["steps"], "runs": p["runs"]}


async def _batch(client: Any, queue: str, prefix: str, runs: int, steps: int, local: bool) -> None:
    handles = [await _start(client, queue, steps, local, f"{prefix}-{i}") for i in range(runs)]
    for handle in handles:
        await handle.result()


async def w2(client: Any, queue: str, spec: dict[str, Any]) -> dict[str, Any]:
    p = w2_params(spec.get("quick", False))
    tag, local = uuid.uuid4().hex[:8], bool(spec["local"])
    await _batch(client, queue, f"w2w-{tag}", p["warmup"], p["steps"], local)
    began = time.perf_counter()
    await _batch(client, queue, f"w2-{tag}", p["runs"], p["steps"], local)
    elapsed = time.perf_counter() - began
    return {"steps_per_s": p["runs"] * p["steps"] / elapsed, "seconds": elapsed, **p}


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(spec["address"])
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[StepsWorkflow],
        activities=[tick_activity],
        max_concurrent_activities=200,
    ):
        return await {"w1": w1, "w2": w2}[spec["workload"]](client, queue, spec)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_main(spec))
