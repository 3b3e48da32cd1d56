"""Per-step latency of the same workflow on the embedded runtime and on every adapter, in one run.

``python -m benchmarks.engines`` (after ``make bench-deps``) starts a Temporal dev server, a
restate-server and the Inngest test double of ``tests/inngest_executor.py`` (no real Inngest server
can be installed here: its figure is the adapter and SDK's cost against that double, not
Inngest's), then runs W1 (one warm-up run, then 10 runs of 20 trivial steps; median gap between
consecutive steps) on memory, SQLite, PostgreSQL and Redis (the machine's servers, Redis with
``durability=volatile`` so any Redis will do) and on each adapter, in two interleaved rounds, all in
this one process. It prints one markdown table; nothing is written.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from benchmarks._workloads import _open, w1

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from inngest_executor import FakeInngest
from restate_server import restate_server
from temporal_server import dev_server

ROUNDS = 2
PG = os.environ.get("BENCH_PG", "postgresql://127.0.0.1:5432/test?schema=bench_engines")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/8?durability=volatile")


async def _w1(url: str) -> dict[str, Any]:
    async with _open(url, "w1") as rt:  # the harness's own W1 runtime options
        return await w1(rt, {"quick": False})


async def main() -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        dev_server("default") as temporal,
        restate_server() as restate,
    ):
        async with FakeInngest() as fake:
            targets = {
                "memory": "memory://",
                "sqlite": f"sqlite:///{tmp}/engines.db",
                "postgres": PG,
                "redis": REDIS,
                "temporal": temporal.url("default", task_queue="bench-engines"),
                "restate": restate.url(),
                "inngest (test double)": f"inngest://127.0.0.1:{fake.port}?app_id=bench-engines",
            }
            medians: dict[str, list[float]] = {name: [] for name in targets}
            p99s: dict[str, list[float]] = {name: [] for name in targets}
            for round_ in range(ROUNDS):
                for name, url in targets.items():
                    result = await _w1(url)
                    medians[name].append(result["median_us"])
                    p99s[name].append(result["p99_us"])
                    print(
                        f"round {round_ + 1}: {name}: {result['median_us']:,.0f} us/step",
                        flush=True,
                    )
    base = statistics.median(medians["memory"])
    print("\n| engine | W1 median us/step | W1 p99 us | x memory |\n| --- | ---: | ---: | ---: |")
    for name in targets:
        median = statistics.median(medians[name])
        print(
            f"| {name} | {median:,.0f} | {statistics.median(p99s[name]):,.0f} | {median / base:,.0f} |"
        )


if __name__ == "__main__":
    anyio.run(main)
