"""Per-step latency: the same 20-step workflow on the embedded SQLite runtime and on Restate.

    python adapters/restate/bench_steps.py [--runs 5] [--steps 20] [--url restate://...]

Each run is one workflow doing ``--steps`` trivial sequential steps; every step records when it
starts, and the latency of a step is the time from one step's start to the next one's: the
journaling of the previous result plus dispatching the next step. The figure is the median over
all steps of all runs, per engine, with the median whole-run time (start to result) beside it.
Both engines run in this process: SQLite in a temporary file, Restate through a RestateRuntime
serving its endpoint here (without ``--url`` a throwaway restate-server is started, as in
examples/research_on_restate.py). Nothing is asserted: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import coro_durable as cd

STARTS: dict[str, list[float]] = {}


def noop(run_tag: str) -> None:
    STARTS.setdefault(run_tag, []).append(time.perf_counter())


@cd.workflow
async def twenty_steps(run_tag: str, steps: int) -> int:
    for _ in range(steps):
        await cd.call(noop, run_tag)
    return steps


async def measure(url: str, runs: int, steps: int) -> tuple[list[float], list[float]]:
    """(per-step latencies, whole-run times) in seconds."""
    gaps: list[float] = []
    totals: list[float] = []
    async with cd.Runtime(url) as rt:
        await (await rt.start(twenty_steps, "warm-up", 2)).result(timeout=60)
        for _ in range(runs):
            tag = uuid.uuid4().hex
            began = time.perf_counter()
            handle = await rt.start(twenty_steps, tag, steps, run_id=tag)
            assert await handle.result(timeout=120) == steps
            totals.append(time.perf_counter() - began)
            starts = STARTS[tag]
            gaps += [b - a for a, b in itertools.pairwise(starts)]
    return gaps, totals


def _start_server(workdir: str) -> tuple[str, Any]:
    path = Path(__file__).parent / "examples" / "research_on_restate.py"
    spec = importlib.util.spec_from_file_location("research_on_restate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url, proc = module.start_server(workdir)
    return str(url), proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--url", help="restate://HOST:PORT?admin=...&listen=... (default: start one)"
    )
    args = parser.parse_args(argv)
    workdir = tempfile.TemporaryDirectory(prefix="cd-bench-steps-")
    server = None
    url = args.url
    try:
        if url is None:
            url, server = _start_server(workdir.name)
        engines = {
            "embedded sqlite": f"sqlite:///{Path(workdir.name) / 'runs.db'}",
            "restate": url,
        }
        print(f"{args.runs} runs x {args.steps} sequential trivial steps, per engine")
        for name, engine_url in engines.items():
            gaps, totals = asyncio.run(measure(engine_url, args.runs, args.steps))
            print(
                f"{name:>16}: per-step median {statistics.median(gaps) * 1000:7.2f} ms "
                f"(p90 {statistics.quantiles(gaps, n=10)[-1] * 1000:7.2f} ms), "
                f"whole run median {statistics.median(totals) * 1000:8.1f} ms"
            )
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        workdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
