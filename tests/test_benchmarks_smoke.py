"""Smoke test of the benchmark harness: `python -m benchmarks --quick` runs end to end.

It only checks that the harness runs and writes results of the expected shape; it never looks
at a figure (speed is not asserted anywhere). The peers (DBOS, Temporal, Restate) are not part
of it: they are benchmark-only dependencies (`pip install -e '.[bench]'`), run by `make bench`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_run_writes_every_table(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "benchmarks", "--quick", "--only", "ours,raw",
        "--stores", "memory,sqlite", "--out", str(tmp_path), "--no-chart",
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"started_at", "duration_s", "command", "machine", "versions", "measurements"} <= set(
        results
    )
    assert results["machine"]["cores"] >= 1
    done = {(m["target"], m["workload"]): m["result"] for m in results["measurements"]}
    for loop in ("asyncio", "trio"):
        for store in ("memory", "sqlite"):
            assert {"median_us", "p99_us", "gaps"} <= set(done[(f"ours {store} {loop}", "w1")])
            assert {"steps_per_s", "seconds"} <= set(done[(f"ours {store} {loop}", "w2")])
    for store in ("memory", "sqlite"):
        w3 = done[(f"ours {store} asyncio", "w3")]
        assert {"runs", "park_s", "complete_s", "peak_rss_mb"} <= set(w3)
        assert {"overhead_median_ms", "makespan_ms"} <= set(done[(f"ours {store} asyncio", "w4")])
    assert {"median_us", "rate_per_s"} <= set(done[("raw sqlite", "raw")])
    assert not [m for m in results["measurements"] if "error" in m["result"]]
    table = (tmp_path / "table.md").read_text()
    for title in ("W1 sequential", "Physical limit", "W3 waits", "W4 AI pipeline"):
        assert title in table and title in proc.stdout
