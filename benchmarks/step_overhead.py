"""Per-step overhead of the embedded runtime: `python -m benchmarks.step_overhead [--steps N]`.

One run of N sequential trivial steps per (store, event loop, step kind). Each step records
`perf_counter()` when it is invoked; the gap between consecutive invocations is one full step
cycle: journal append (durable on SQLite: WAL + synchronous=FULL; Postgres: one commit; Redis:
as durable as the server is configured, `durability=volatile` here), round trip through the codec,
feeding the coroutine, and building the next effect. Prints median and p99 per step.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import anyio

import coro_durable as cd

STAMPS: list[float] = []


async def tick_async() -> None:
    STAMPS.append(time.perf_counter())


def tick_sync() -> None:
    STAMPS.append(time.perf_counter())


@cd.workflow(name="bench_sequential")
async def sequential(n: int, sync: bool) -> int:
    step = tick_sync if sync else tick_async
    for _ in range(n):
        await cd.call(step)
    return n


async def measure(url: str, n: int, sync: bool) -> tuple[float, float]:
    STAMPS.clear()
    async with cd.Runtime(url, poll_interval=0.01) as rt:
        handle = await rt.start(sequential, n, sync)
        await handle.result(timeout=600)
    gaps = sorted(b - a for a, b in itertools.pairwise(STAMPS[10:]))  # after warm-up
    return statistics.median(gaps), gaps[int(len(gaps) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--stores", default="memory,sqlite,postgres,redis")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    print(f"{'store':8} {'loop':8} {'step':6} {'median':>10} {'p99':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores.split(","):
            for backend in ("asyncio", "trio"):
                for sync in (False, True):
                    url = {
                        "memory": "memory://",
                        "sqlite": f"sqlite:///{Path(tmp) / f'{backend}{sync}.db'}",
                        "postgres": f"{args.pg}?schema=bench_{backend}_{int(sync)}",
                        "redis": f"{args.redis}?prefix=bench:{backend}:{int(sync)}:&durability=volatile",
                    }[store]
                    med, p99 = anyio.run(measure, url, args.steps, sync, backend=backend)
                    kind = "sync" if sync else "async"
                    print(f"{store:8} {backend:8} {kind:6} {med * 1e6:8.1f}us {p99 * 1e6:8.1f}us")


if __name__ == "__main__":
    main()
