"""Latency of the PostgreSQL store: ``python backends/postgres/bench/pg_latency.py [URL]``.

URL defaults to ``$CORO_DURABLE_TEST_PG`` or postgresql://postgres@127.0.0.1:5432/test; every
measurement uses its own schema, dropped afterwards. Prints, per (event loop, driver):

* ``raw insert``: a single-row INSERT in autocommit (one round trip, one commit) with psycopg
  directly, the floor any durable append pays on this server;
* ``append``: ``PostgresStore.append`` of one journal entry (fence check + insert + run
  bookkeeping, one round trip);
* ``step``: the gap between consecutive steps of one run of N sequential trivial async steps
  through the Runtime (append + codec + scheduler);
* ``concurrent``: steps/s of R runs of 10 steps each, all started at once.

Each latency is the per-operation median of one repetition; the best of ``--repeat``
repetitions is printed, with their median in brackets (the machine may be shared).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
import psycopg
from coro_durable_postgres import PostgresStore

import coro_durable as cd
from coro_durable.store import ClaimRequest, JournalEntry, RunRecord

URL = os.environ.get("CORO_DURABLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
STAMPS: list[float] = []


async def tick() -> None:
    STAMPS.append(time.perf_counter())


async def nothing() -> None:
    return None


@cd.workflow(name="pg_bench_sequential")
async def sequential(n: int) -> int:
    for _ in range(n):
        await cd.call(tick)
    return n


@cd.workflow(name="pg_bench_ten")
async def ten_steps() -> int:
    for _ in range(10):
        await cd.call(nothing)
    return 10


def schema_url(base: str, driver: str) -> tuple[str, str]:
    schema = f"cdt_bench_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in base else "?"
    return schema, f"{base}{sep}schema={schema}&driver={driver}&pool_max=20"


def drop(base: str, schema: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def raw_insert(base: str, driver: str, n: int) -> float:
    """Median seconds of one autocommit single-row INSERT."""
    table = f"cdt_bench_raw_{uuid.uuid4().hex[:8]}"
    ddl = f"CREATE TABLE {table} (run_id text, seq int, payload text, PRIMARY KEY (run_id, seq))"
    insert = f"INSERT INTO {table} VALUES (%s, %s, %s)"
    times: list[float] = []
    if driver == "async":
        aconn = await psycopg.AsyncConnection.connect(base, autocommit=True)
        try:
            await aconn.execute(ddl)
            for i in range(n):
                t = time.perf_counter()
                await aconn.execute(insert, ["r", i, "x" * 200])
                times.append(time.perf_counter() - t)
            await aconn.execute(f"DROP TABLE {table}")
        finally:
            await aconn.close()
    else:
        conn = await anyio.to_thread.run_sync(lambda: psycopg.connect(base, autocommit=True))
        try:
            await anyio.to_thread.run_sync(conn.execute, ddl)
            for i in range(n):
                t = time.perf_counter()
                await anyio.to_thread.run_sync(conn.execute, insert, ["r", i, "x" * 200])
                times.append(time.perf_counter() - t)
            await anyio.to_thread.run_sync(conn.execute, f"DROP TABLE {table}")
        finally:
            conn.close()
    return statistics.median(times[10:])


async def store_append(base: str, driver: str, n: int) -> float:
    """Median seconds of PostgresStore.append of one entry."""
    schema, url = schema_url(base, driver)
    store = PostgresStore(url)
    try:
        await store.open()
        await store.create_run(RunRecord("r", "wf", "{}"))
        (run,) = await store.claim(ClaimRequest("w", ("wf",), 1, 600, 3))
        times: list[float] = []
        for i in range(n):
            entry = JournalEntry(
                i, "call", "step", "d0", "ok", "[[],{}]", "null", None, 1, f"r:{i}",
                time.time(), time.time(),
            ).sealed()  # fmt: skip
            t = time.perf_counter()
            await store.append("r", run.epoch, [entry])
            times.append(time.perf_counter() - t)
        return statistics.median(times[10:])
    finally:
        await store.close()
        drop(base, schema)


async def sequential_steps(base: str, driver: str, n: int) -> float:
    """Median seconds between consecutive steps of one run of n trivial async steps."""
    schema, url = schema_url(base, driver)
    STAMPS.clear()
    try:
        async with cd.Runtime(url, poll_interval=0.01) as rt:
            await (await rt.start(sequential, n)).result(timeout=600)
    finally:
        drop(base, schema)
    gaps = [b - a for a, b in itertools.pairwise(STAMPS[10:])]
    return statistics.median(gaps)


async def concurrent_runs(base: str, driver: str, runs: int) -> float:
    """Steps per second of `runs` runs of 10 steps started together."""
    schema, url = schema_url(base, driver)
    try:
        async with cd.Runtime(url, poll_interval=0.01, concurrency=runs) as rt:
            t = time.perf_counter()
            handles = [await rt.start(ten_steps) for _ in range(runs)]
            for handle in handles:
                await handle.result(timeout=600)
            elapsed = time.perf_counter() - t
    finally:
        drop(base, schema)
    return runs * 10 / elapsed


def repeat(
    fn: Callable[[str, str, int], Awaitable[float]], backend: str, base: str, driver: str, n: int,
    times: int, best: Callable[[list[float]], float],
) -> tuple[float, float]:  # fmt: skip
    """(best, median) over `times` repetitions: on a shared machine the best one is the least
    disturbed by other load."""
    results = [anyio.run(fn, base, driver, n, backend=backend) for _ in range(times)]
    return best(results), statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url", nargs="?", default=URL)
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    combos = [("asyncio", "async"), ("asyncio", "thread"), ("trio", "thread")]
    print(f"best of {args.repeat} (median of the repetitions in brackets)")
    print(
        f"{'loop':8} {'driver':7} {'raw insert':>16} {'append':>16} {'step':>16} {'concurrent':>22}"
    )
    for backend, driver in combos:
        raw = repeat(raw_insert, backend, args.url, driver, args.appends, args.repeat, min)
        append = repeat(store_append, backend, args.url, driver, args.appends, args.repeat, min)
        step = repeat(sequential_steps, backend, args.url, driver, args.steps, args.repeat, min)
        rate = repeat(concurrent_runs, backend, args.url, driver, args.runs, args.repeat, max)
        print(
            f"{backend:8} {driver:7} "
            + " ".join(f"{b * 1e6:6.0f}us ({m * 1e6:5.0f})" for b, m in (raw, append, step))
            + f" {rate[0]:6.0f} steps/s ({rate[1]:5.0f})"
        )


if __name__ == "__main__":
    main()
