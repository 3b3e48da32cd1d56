"""The physical limit: one durable write, with nothing of a runtime around it, on the same servers.

- postgres: latency of a single-row ``INSERT`` in autocommit (one round trip, one commit) from
  Python (psycopg, one connection), median and p99; the rate from 16 connections with
  ``pgbench`` (the same INSERT as its whole transaction), or 16 Python threads without it.
- sqlite: ``BEGIN; INSERT; COMMIT`` on a file in WAL mode with ``synchronous=FULL``, as our store
  opens it; one connection (SQLite has one writer at a time), so the rate is 1/latency.
- redis: one ``RPUSH`` from Python (redis-py, one connection) on the benchmark Redis (AOF,
  ``appendfsync everysec`` when the harness started it); the rate from 16 connections with
  ``redis-benchmark``, or 16 Python threads without it.

``spec``: ``kind`` (postgres|sqlite|redis), ``url`` (postgres/redis) or ``path`` (sqlite file),
``quick``.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks._common import percentile

CONNECTIONS = 16


def _latency(write: Callable[[], object], count: int) -> dict[str, float]:
    for _ in range(min(50, count)):  # warm-up
        write()
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        write()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return {
        "median_us": samples[len(samples) // 2] * 1e6,
        "p99_us": percentile(samples, 99) * 1e6,
        "writes": count,
    }


def _threaded_rate(make_writer: Callable[[], Callable[[], object]], seconds: float) -> float:
    """Writes/s from CONNECTIONS threads, each with its own connection, for ``seconds``."""
    writers = [make_writer() for _ in range(CONNECTIONS)]
    counts = [0] * CONNECTIONS
    deadline = time.perf_counter() + seconds

    def loop(i: int) -> None:
        write = writers[i]
        while time.perf_counter() < deadline:
            write()
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(CONNECTIONS)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


def postgres(url: str, quick: bool) -> dict[str, Any]:
    import psycopg

    table = f"bench_raw_{uuid.uuid4().hex[:10]}"
    seconds = 1.0 if quick else 5.0
    admin = psycopg.connect(url, autocommit=True)
    admin.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, payload text)")
    try:
        conn = psycopg.connect(url, autocommit=True)
        insert = f"INSERT INTO {table} (payload) VALUES ('x')"
        result: dict[str, Any] = _latency(lambda: conn.execute(insert), 200 if quick else 2000)
        conn.close()
        pgbench = shutil.which("pgbench")
        if pgbench:
            result["rate_per_s"] = _pgbench(pgbench, url, insert, seconds)
            result["rate_method"] = f"pgbench, {CONNECTIONS} connections"
        else:

            def make_writer() -> Callable[[], object]:
                c = psycopg.connect(url, autocommit=True)
                return lambda: c.execute(insert)

            result["rate_per_s"] = _threaded_rate(make_writer, seconds)
            result["rate_method"] = f"Python, {CONNECTIONS} threads/connections"
        return result
    finally:
        admin.execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()


def _pgbench(binary: str, url: str, statement: str, seconds: float) -> float:
    parts = urlsplit(url)
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(statement + ";\n")
    command = [
        binary, "-n", "-c", str(CONNECTIONS), "-j", "2", "-T", str(max(1, round(seconds))),
        "-f", script.name, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
        "-U", parts.username or "postgres", (parts.path or "/postgres").lstrip("/"),
    ]  # fmt: skip
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    finally:
        Path(script.name).unlink(missing_ok=True)
    match = re.search(r"tps = ([0-9.]+)", out.stdout)
    if match is None:
        raise RuntimeError(f"cannot read pgbench's output:\n{out.stdout[-1000:]}")
    return float(match.group(1))


def sqlite(path: str, quick: bool) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, payload TEXT)")

    def write() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO raw (payload) VALUES ('x')")
        conn.execute("COMMIT")

    count = 200 if quick else 2000
    result: dict[str, Any] = _latency(write, count)
    began = time.perf_counter()
    for _ in range(count):
        write()
    result["rate_per_s"] = count / (time.perf_counter() - began)
    result["rate_method"] = "one connection (SQLite has one writer)"
    conn.close()
    return result


def redis(url: str, quick: bool) -> dict[str, Any]:
    import redis as redis_py

    key = f"bench_raw:{uuid.uuid4().hex[:10]}"
    client = redis_py.Redis.from_url(url)
    try:
        result: dict[str, Any] = _latency(lambda: client.rpush(key, "x"), 200 if quick else 5000)
        tool = shutil.which("redis-benchmark")
        if tool:
            result["rate_per_s"] = _redis_benchmark(tool, url, key, 20_000 if quick else 200_000)
            result["rate_method"] = f"redis-benchmark, {CONNECTIONS} connections"
        else:

            def make_writer() -> Callable[[], object]:
                c = redis_py.Redis.from_url(url)
                return lambda: c.rpush(key, "x")

            result["rate_per_s"] = _threaded_rate(make_writer, 1.0 if quick else 5.0)
            result["rate_method"] = f"Python, {CONNECTIONS} threads/connections"
        return result
    finally:
        client.delete(key)
        client.close()


def _redis_benchmark(binary: str, url: str, key: str, requests: int) -> float:
    parts = urlsplit(url)
    command = [
        binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379),
        "-c", str(CONNECTIONS), "-n", str(requests), "--csv", "rpush", key, "x",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    for line in out.stdout.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) > 1 and cells[0].lower().startswith("rpush"):
            return float(cells[1])
    raise RuntimeError(f"cannot read redis-benchmark's output:\n{out.stdout[-1000:]}")


def run(spec: dict[str, Any]) -> dict[str, Any]:
    quick = bool(spec.get("quick", False))
    kind = spec["kind"]
    if kind == "postgres":
        return postgres(spec["url"], quick)
    if kind == "sqlite":
        return sqlite(spec["path"], quick)
    if kind == "redis":
        return redis(spec["url"], quick)
    raise ValueError(f"unknown raw kind {kind!r}")
