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
from typing import Any

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


# == the baseline comparison (--baseline / --baseline-ref) ===========================================


def _git_head() -> str | None:
    proc = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.mark.slow
def test_baseline_ref_run_measures_base_beside_ours(tmp_path: Path) -> None:
    """`--baseline-ref HEAD` measures each target of ours again on a worktree of HEAD, right after
    ours in the same round, from that worktree's code (each child says which coro_durable it
    imported), prints and writes the "ours vs baseline" section with the commit, and removes the
    worktree at the end."""
    head = _git_head()
    if head is None:
        pytest.skip("not a git checkout")
    command = [
        sys.executable, "-m", "benchmarks", "--quick", "--only", "ours", "--stores", "memory",
        "--loops", "asyncio", "--workloads", "w1,w2", "--baseline-ref", "HEAD",
        "--out", str(tmp_path), "--no-chart",
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    baseline = results["baseline"]
    assert baseline["commit"] == head and baseline["ref"] == "HEAD"
    order = [(m["target"], m["workload"]) for m in results["measurements"]]
    assert order == [
        ("ours memory asyncio", "w1"),
        ("base memory asyncio", "w1"),
        ("ours memory asyncio", "w2"),
        ("base memory asyncio", "w2"),
    ]
    for m in results["measurements"]:
        origin = Path(m["result"]["imported"]["coro_durable"])
        assert origin.is_relative_to(baseline["dir"]) == (m["group"] == "base")
    assert not Path(baseline["dir"]).exists()
    worktrees = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert baseline["dir"] not in worktrees
    table = (tmp_path / "table.md").read_text()
    for text in (table, proc.stdout):
        assert f"ours vs baseline {head[:10]}" in text and f"Baseline: {head}" in text
        assert "W1 sequential" in text  # ours keep their own table; base rows only in the new one
        assert "base memory" not in text


def test_baseline_section_pairs_each_target_with_its_base_twin() -> None:
    """The "ours vs baseline" section shows, per target and workload, ours, base and the median of
    the per-round ours/base ratios (the arithmetic on hand-made figures, no speed measured); the
    base rows stay out of the other tables, which are what they are without a baseline."""
    from benchmarks import _report

    def m(target: str, group: str, workload: str, round_: int, **result: Any) -> dict[str, Any]:
        extra = {"baseline_of": target.replace("base", "ours", 1)} if group == "base" else {}
        return {"target": target, "group": group, "backing": "memory", "loop": "asyncio",
                "workload": workload, "round": round_, **extra, "result": result}  # fmt: skip

    ours, base = "ours memory asyncio", "base memory asyncio"
    measurements = []
    # per-round W2 ratios 2.0, 0.5, 1.1: their median is 1.1 (the ratio of medians would be 1.0)
    for r, (a, b) in enumerate([(200.0, 100.0), (100.0, 200.0), (110.0, 100.0)], start=1):
        measurements += [
            m(ours, "ours", "w1", r, median_us=10.0 * r, p99_us=1.0, peak_rss_mb=30.0),
            m(base, "base", "w1", r, median_us=20.0 * r, p99_us=1.0, peak_rss_mb=30.0),
            m(ours, "ours", "w2", r, steps_per_s=a, peak_rss_mb=30.0),
            m(base, "base", "w2", r, steps_per_s=b, peak_rss_mb=30.0),
        ]
    measurements.append(m(base, "base", "w4", 1, error="boom"))
    plain = {
        "started_at": "2026-12-01T00:00:00+00:00", "duration_s": 1.0, "command": "bench",
        "rounds": 3, "machine": {"cores": 2, "cpu": "x", "memory": "1 GiB", "os": "Linux",
        "python": "3.11", "load_before": [0.0], "load_after": [0.0]}, "versions": {},
        "measurements": [x for x in measurements if x["group"] == "ours"],
    }  # fmt: skip
    compared = {
        **plain,
        "measurements": measurements,
        "baseline": {"dir": "/tmp/base", "commit": "abcdef0123456789", "ref": None},
    }
    tables = _report.tables(compared)
    assert "ours vs baseline abcdef0123" in tables.text
    assert "Baseline: abcdef0123456789 in /tmp/base" in tables.markdown
    rows = {
        tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:7]]
        for line in tables.markdown.splitlines()
        if line.startswith("| memory asyncio")
    }
    assert rows[("memory asyncio", "W1 us/step (median)")] == ["20", "40", "0.50", "<1"]
    assert rows[("memory asyncio", "W2 steps/s")] == ["110", "100", "1.10", ">1"]
    assert rows[("memory asyncio", "W4 overhead median ms")] == ["-", "error", "-", "<1"]
    assert "base memory" not in tables.text
    without = _report.tables(plain)
    assert "baseline" not in without.text
    for part in without.markdown.split("\n\n")[1:]:  # every table but the run's header, unchanged
        assert part in tables.markdown


def test_baseline_verify_catches_mixed_up_code(tmp_path: Path) -> None:
    """A base child that imported our coro_durable (or a plugin from outside the baseline), or a
    child of ours that imported the baseline's, stops the harness with MixedCodeError; children
    that ran the right code, and runs without a baseline, pass."""
    from benchmarks import _baseline

    ours = _baseline.ours_origin()
    assert ours is not None
    checkout = _baseline.Checkout(tmp_path, "abc")
    theirs = str(tmp_path / "src" / "coro_durable" / "__init__.py")
    plugin = str(tmp_path / "backends/redis/src/coro_durable_redis/__init__.py")
    _baseline.verify("base x", {"imported": {"coro_durable": theirs}}, checkout, checkout)
    _baseline.verify("ours x", {"imported": {"coro_durable": str(ours)}}, None, checkout)
    _baseline.verify("ours x", {"imported": {"coro_durable": theirs}}, None, None)
    _baseline.verify("base x", {"error": "ImportError: ..."}, checkout, checkout)
    mixed: list[tuple[dict[str, Any], _baseline.Checkout | None]] = [
        ({"imported": {"coro_durable": str(ours)}}, checkout),
        ({"imported": {"coro_durable": theirs, "coro_durable_redis": str(ours)}}, checkout),
        ({"imported": {"coro_durable": theirs}}, None),
        ({"imported": {"coro_durable": str(ours), "coro_durable_redis": plugin}}, None),
        ({"median_us": 1.0}, checkout),  # no report at all: cannot tell
    ]
    for result, code in mixed:
        with pytest.raises(_baseline.MixedCodeError):
            _baseline.verify("t", result, code, checkout)


def test_baseline_must_be_another_checkout(tmp_path: Path) -> None:
    """--baseline refuses a folder without src/coro_durable and the checkout ours come from."""
    from benchmarks import _baseline

    with pytest.raises(_baseline.BaselineError, match="no src/coro_durable"):
        _baseline.open_checkout(tmp_path)
    ours = _baseline.ours_origin()
    assert ours is not None
    with pytest.raises(_baseline.BaselineError, match="our own coro_durable"):
        _baseline.open_checkout(ours.parents[2])
