"""Throughput of the embedded runtime: `python -m benchmarks.throughput [--runs 200 --steps 10]`.

200 concurrent runs of 10 trivial async steps on one worker (concurrency 200), per store, under
asyncio and trio; prints steps/s from the first start to the last result. Every step is one
fenced journal append, so this measures how many durable appends the store and scheduler sustain.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import anyio

import coro_durable as cd


async def nothing() -> None:
    return None


@cd.workflow(name="bench_ten")
async def ten(n: int) -> int:
    for _ in range(n):
        await cd.call(nothing)
    return n


async def measure(url: str, runs: int, steps: int) -> float:
    async with cd.Runtime(url, concurrency=runs, poll_interval=0.01) as rt:
        tag = uuid.uuid4().hex[:6]
        began = time.perf_counter()
        for i in range(runs):
            await rt.start(ten, steps, run_id=f"{tag}-{i}")
        for i in range(runs):
            await rt.result(f"{tag}-{i}", timeout=600)
        return runs * steps / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--stores", default="memory,sqlite,postgres,redis")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    print(f"{'store':8} {'loop':8} {'steps/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores.split(","):
            for backend in ("asyncio", "trio"):
                url = {
                    "memory": "memory://",
                    "sqlite": f"sqlite:///{Path(tmp) / f'{backend}.db'}",
                    "postgres": f"{args.pg}?schema=bench_tp_{backend}",
                    "redis": f"{args.redis}?prefix=bench:tp:{backend}:&durability=volatile",
                }[store]
                rate = anyio.run(measure, url, args.runs, args.steps, backend=backend)
                print(f"{store:8} {backend:8} {rate:10.0f}")


if __name__ == "__main__":
    main()
