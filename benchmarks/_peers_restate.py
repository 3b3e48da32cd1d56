"""Peer: Restate (restate-sdk for Python, restate-server from npm), W1 and W2.

The same shape as ours written directly against Restate: a Restate ``Workflow`` whose ``run``
handler executes ``n`` trivial ``ctx.run`` actions one after another; each run's key is its id.
The SDK's ASGI app is served by hypercorn (HTTP/2, bidirectional streaming) in this process and
registered with the harness's restate-server through its admin API; the runs are started and
awaited through the ingress with httpx (``POST /<wf>/<key>/run/send``, then
``GET /restate/workflow/<wf>/<key>/attach``), as a client application would. The action body is
the same ``stamp()`` as ours.

``spec``: ``workload`` (w1|w2), ``ingress`` and ``admin`` (base URLs), ``quick``.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any

import httpx
import restate
from hypercorn.asyncio import serve
from hypercorn.config import Config

from benchmarks._common import STAMPS, gap_stats, stamp, w1_params, w2_params

WORKFLOW = f"bench_steps_{uuid.uuid4().hex[:6]}"  # a fresh service name per process

steps_workflow = restate.Workflow(WORKFLOW)


async def tick() -> None:
    stamp()


@steps_workflow.main(name="run")
async def run_steps(ctx: restate.WorkflowContext, n: int) -> int:
    for _ in range(n):
        await ctx.run_typed("tick", tick, restate.RunOptions(max_attempts=3))
    return n


async def _serve(app: Any, stop: asyncio.Event) -> int:
    """Serve ``app`` with hypercorn on a free port (in this loop); the port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.h2_max_concurrent_streams = 2147483647
    config.keep_alive_max_requests = 2147483647
    config.keep_alive_timeout = 2147483647
    config.accesslog = None
    config.errorlog = None
    asyncio.get_running_loop().create_task(serve(app, config, shutdown_trigger=stop.wait))
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return port
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


class Ingress:
    def __init__(self, client: httpx.AsyncClient, base: str) -> None:
        self.client, self.base = client, base
        self.known = False  # the ingress learns a new deployment's services a moment later

    async def start(self, key: str, n: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            response = await self.client.post(f"{self.base}/{WORKFLOW}/{key}/run/send", json=n)
            if response.status_code != 404 or self.known or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        response.raise_for_status()
        self.known = True

    async def result(self, key: str) -> Any:
        response = await self.client.get(f"{self.base}/restate/workflow/{WORKFLOW}/{key}/attach")
        response.raise_for_status()
        return response.json()


async def w1(ingress: Ingress, spec: dict[str, Any]) -> dict[str, Any]:
    p = w1_params(spec.get("quick", False))
    tag = uuid.uuid4().hex[:8]
    runs: list[list[float]] = []
    for i in range(p["runs"] + 1):  # run 0 warms up
        STAMPS.clear()
        await ingress.start(f"w1-{tag}-{i}", p["steps"])
        await ingress.result(f"w1-{tag}-{i}")
        if i:
            runs.append(list(STAMPS))
    return {**gap_stats(runs), "steps": p["steps"], "runs": p["runs"]}


async def _batch(ingress: Ingress, prefix: str, runs: int, steps: int) -> None:
    for i in range(runs):
        await ingress.start(f"{prefix}-{i}", steps)
    await asyncio.gather(*(ingress.result(f"{prefix}-{i}") for i in range(runs)))


async def w2(ingress: Ingress, spec: dict[str, Any]) -> dict[str, Any]:
    p = w2_params(spec.get("quick", False))
    tag = uuid.uuid4().hex[:8]
    await _batch(ingress, f"w2w-{tag}", p["warmup"], p["steps"])
    began = time.perf_counter()
    await _batch(ingress, f"w2-{tag}", p["runs"], p["steps"])
    elapsed = time.perf_counter() - began
    return {"steps_per_s": p["runs"] * p["steps"] / elapsed, "seconds": elapsed, **p}


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    stop = asyncio.Event()
    port = await _serve(restate.app(services=[steps_workflow]), stop)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        registered = await client.post(
            f"{spec['admin']}/deployments",
            json={"uri": f"http://127.0.0.1:{port}", "force": True},
        )
        registered.raise_for_status()
        ingress = Ingress(client, spec["ingress"])
        try:
            return await {"w1": w1, "w2": w2}[spec["workload"]](ingress, spec)
        finally:
            stop.set()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_main(spec))
