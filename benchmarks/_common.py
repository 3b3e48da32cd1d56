"""Shared pieces of the benchmark harness: statistics, the step timer, and the measurement subprocess.

Every measurement runs in a fresh Python process (``python -m benchmarks._child MODULE SPEC``):
each peer keeps global state (DBOS's singleton, Temporal's Rust runtime, Restate's endpoint),
a fresh process gives each target the same cold start, and the child's peak RSS is its own.
The child prints one line ``RESULT {json}`` on stdout; the parent (``__main__``) collects it.

Per-step latency is measured the same way on every target: each trivial step appends
``time.perf_counter()`` to ``STAMPS`` when its body runs, and the gap between consecutive steps of
one run is one full step cycle of the engine (journal write, scheduling, feeding the workflow,
dispatching the next step). Steps run in the child's process on every target, so one list works.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULT_MARK = "RESULT "
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

STAMPS: list[float] = []  # perf_counter() at each trivial step's start, in this process


def stamp() -> None:
    """The body of every trivial step: record when it ran."""
    STAMPS.append(time.perf_counter())


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def gap_stats(runs: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Per-step latency from the step stamps of each measured run (gaps within a run only)."""
    gaps = [b - a for stamps in runs for a, b in itertools.pairwise(stamps)]
    if not gaps:
        return {"error": "no step gaps recorded"}
    return {
        "median_us": statistics.median(gaps) * 1e6,
        "p99_us": percentile(gaps, 99) * 1e6,
        "mean_us": statistics.fmean(gaps) * 1e6,
        "gaps": len(gaps),
    }


def w1_params(quick: bool) -> dict[str, int]:
    """W1: one warm-up run, then ``runs`` measured runs of ``steps`` sequential trivial steps."""
    return {"steps": 20, "runs": 2 if quick else 10}


def w2_params(quick: bool) -> dict[str, int]:
    """W2: ``runs`` concurrent runs of ``steps`` trivial steps (after a small warm-up batch)."""
    return {"runs": 20 if quick else 200, "steps": 10, "warmup": 5 if quick else 20}


def rss_mb() -> float:
    """This process's current resident set size in MiB (Linux /proc)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return math.nan


def run_child(
    module: str, spec: dict[str, Any], timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``benchmarks.<module>.run(spec)`` in a fresh interpreter; its result, or an error.

    ``env``: the child's environment (default: this process's); a baseline's child gets one
    whose PYTHONPATH starts with the baseline's source folders.
    """
    command = [sys.executable, "-m", "benchmarks._child", module, json.dumps(spec)]
    began = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout:.0f}s", "stderr": _tail(exc.stderr)}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            result["process_s"] = round(time.perf_counter() - began, 2)
            return result
    return {"error": f"exit code {proc.returncode}, no result", "stderr": _tail(proc.stderr)}


def _tail(text: str | bytes | None, chars: int = 1500) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-chars:]
