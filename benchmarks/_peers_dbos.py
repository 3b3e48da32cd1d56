"""Peer: DBOS Transact (PyPI ``dbos``), W1 and W2, on the same PostgreSQL or on a SQLite file.

DBOS keeps a process-wide singleton, so each measurement is its own process (the harness runs
this module through ``benchmarks._child``). Its system database is given by ``spec['db']``: a
fresh PostgreSQL database the harness created (and drops after), or ``sqlite:///file``. Steps
and workflows are ``async def`` (DBOS runs their database writes in its thread pool); the step
body is the same ``stamp()`` as ours. DBOS's defaults otherwise: on SQLite, its own connection
settings (rollback journal, SQLite's default ``synchronous=FULL``); on PostgreSQL,
``synchronous_commit`` as the server has it.

``spec``: ``workload`` (w1|w2), ``db``, ``quick``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID

from benchmarks._common import STAMPS, gap_stats, stamp, w1_params, w2_params


@DBOS.step()
async def tick_step() -> None:
    stamp()


@DBOS.workflow()
async def steps_workflow(n: int) -> int:
    for _ in range(n):
        await tick_step()
    return n


async def _start(n: int, workflow_id: str) -> Any:
    with SetWorkflowID(workflow_id):
        return await DBOS.start_workflow_async(steps_workflow, n)


async def w1(spec: dict[str, Any]) -> dict[str, Any]:
    p = w1_params(spec.get("quick", False))
    tag = uuid.uuid4().hex[:8]
    runs: list[list[float]] = []
    for i in range(p["runs"] + 1):  # run 0 warms up
        STAMPS.clear()
        handle = await _start(p["steps"], f"w1-{tag}-{i}")
        await handle.get_result()
        if i:
            runs.append(list(STAMPS))
    return {**gap_stats(runs), "steps": p["steps"], "runs": p["runs"]}


async def _batch(prefix: str, runs: int, steps: int) -> None:
    handles = [await _start(steps, f"{prefix}-{i}") for i in range(runs)]
    for handle in handles:
        await handle.get_result()


async def w2(spec: dict[str, Any]) -> dict[str, Any]:
    p = w2_params(spec.get("quick", False))
    tag = uuid.uuid4().hex[:8]
    await _batch(f"w2w-{tag}", p["warmup"], p["steps"])
    began = time.perf_counter()
    await _batch(f"w2-{tag}", p["runs"], p["steps"])
    elapsed = time.perf_counter() - began
    return {"steps_per_s": p["runs"] * p["steps"] / elapsed, "seconds": elapsed, **p}


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    config: DBOSConfig = {
        "name": "coro-durable-bench",
        "system_database_url": spec["db"],
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        return await {"w1": w1, "w2": w2}[spec["workload"]](spec)
    finally:
        DBOS.destroy()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    logging.getLogger("dbos").setLevel(logging.WARNING)
    return asyncio.run(_main(spec))
