"""Latency of the Redis store, per event loop and transport.

    .venv/bin/python backends/redis/benchmarks/latency.py [redis://127.0.0.1:6379/0 [rounds]]

For asyncio with each transport (``asyncio``: redis-py's asyncio client; ``native``: the store's
RESP client on anyio streams; ``thread``: redis-py's sync client in worker threads) and for trio
(``native`` and ``thread``), it measures the median of:

* a raw ``SET`` round trip through the store's transport, and one with redis-py's sync client
  and no event loop at all, for comparison;
* one fenced ``append`` of a journal entry (one EVALSHA);
* the per-step time of sequential runs of 200 trivial async steps, end to end through a Runtime
  (claim, journal load, 200 appends, finish), with the memory store as the baseline.

Rounds are interleaved so a busy moment does not favour one configuration; the table shows the
best round and every round. Keys live under a fresh ``cdt_bench_<hex>:`` prefix, deleted at the end.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
import redis
from coro_durable_redis import RedisStore

import coro_durable as cd
from coro_durable.store import ClaimRequest, JournalEntry, RunRecord

BASE = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
PREFIX = f"cdt_bench_{uuid.uuid4().hex[:8]}:"
N_CALLS = 2000
N_STEPS = 200
N_RUNS = 5


async def noop(i: int) -> int:
    return i


@cd.workflow(name="bench_sequential")
async def sequential(n: int) -> int:
    for i in range(n):
        await cd.call(noop, i)
    return n


def url(**params: str) -> str:
    query = "&".join(
        f"{k}={v}" for k, v in {"prefix": PREFIX, "durability": "volatile", **params}.items()
    )
    return f"{BASE}?{query}"


async def timed(fn: Callable[[int], Awaitable[object]], n: int) -> float:
    """Median seconds of ``n`` sequential calls."""
    out = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


async def per_call(transport: str) -> tuple[float, float]:
    """(median raw SET, median fenced append) through one store's transport."""
    store = RedisStore(url(transport=transport))
    await store.open()
    io = store._transport()
    key = f"{PREFIX}bench".encode()
    raw = await timed(lambda i: io.command("SET", key, str(i)), N_CALLS)
    run_id = f"append-{uuid.uuid4().hex[:6]}"
    await store.create_run(RunRecord(run_id, "bench", "{}"))
    (run,) = await store.claim(ClaimRequest("bench", ("bench",), 1, 600, 3))

    async def append(i: int) -> None:
        entry = JournalEntry(i, "call", "noop", "d", "ok", "[1]", "1", key=f"{run_id}:{i}").sealed()
        await store.append(run_id, run.epoch, [entry])

    appends = await timed(append, N_CALLS)
    await store.close()
    return raw, appends


async def per_step(store_url: str) -> float:
    """Median seconds per step of sequential 200-step runs, end to end through a Runtime."""
    per: list[float] = []
    async with cd.Runtime(store_url, poll_interval=0.05) as rt:
        for _ in range(N_RUNS):
            t = time.perf_counter()
            handle = await rt.start(sequential, N_STEPS)
            await handle.result(timeout=120)
            per.append((time.perf_counter() - t) / N_STEPS)
    return statistics.median(per)


def sync_set() -> float:
    client = redis.Redis.from_url(BASE)
    out = []
    for i in range(N_CALLS):
        t = time.perf_counter()
        client.set(f"{PREFIX}bench", i)
        out.append(time.perf_counter() - t)
    client.close()
    return statistics.median(out)


CONFIGS = [
    ("asyncio", "asyncio"),
    ("asyncio", "native"),
    ("asyncio", "thread"),
    ("trio", "native"),
    ("trio", "thread"),
]


def main() -> None:
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        results.setdefault(name, []).append(value * 1e6)

    try:
        for _ in range(rounds):  # interleaved, so a busy moment does not favour one config
            note("sync redis-py SET, no event loop", sync_set())
            for backend, transport in CONFIGS:
                raw, append = anyio.run(per_call, transport, backend=backend)
                note(f"{backend:7s} {transport:7s} raw SET", raw)
                note(f"{backend:7s} {transport:7s} append", append)
            for backend in ("asyncio", "trio"):
                note(
                    f"{backend:7s} memory  per step",
                    anyio.run(per_step, "memory://", backend=backend),
                )
            for backend, transport in CONFIGS:
                step = anyio.run(per_step, url(transport=transport), backend=backend)
                note(f"{backend:7s} {transport:7s} per step", step)
    finally:
        client = redis.Redis.from_url(BASE)
        keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()
    print(f"{'microseconds, median of ' + str(N_CALLS) + ' calls / 5 runs':42s} best  rounds")
    for name, values in results.items():
        print(f"{name:42s} {min(values):5.0f}  {' '.join(f'{v:5.0f}' for v in values)}")


if __name__ == "__main__":
    main()
