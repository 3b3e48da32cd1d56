"""A worker process for the real-process tests: `python tests/proc_app.py STORE_URL SINK_DB`.

It registers the workflows below and runs a Runtime worker until it is killed, or until SIGTERM or
SIGINT, on which it shuts down gracefully (``PROC_GRACE`` seconds for the steps in flight). Steps record their
effects in SINK_DB (SQLite): `effects` is an idempotent sink keyed by idempotency key (INSERT OR
IGNORE, like an API honouring an Idempotency-Key) and `invocations` logs every physical call.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time

import anyio

import coro_durable as cd

SINK = os.environ.get("PROC_SINK", "")


def _sink() -> sqlite3.Connection:
    db = sqlite3.connect(SINK, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, step INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS invocations (key TEXT, step INTEGER, at REAL)")
    return db


def apply_effect(step: int, seconds: float) -> int:
    """A step with an external effect, applied through the step's idempotency key."""
    key = cd.idempotency_key()
    db = _sink()
    db.execute("INSERT INTO invocations VALUES (?, ?, ?)", (key, step, time.time()))
    time.sleep(seconds)  # the worker may be killed here: the step is then in flight
    db.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (key, step))
    db.close()
    return step * step


def explode(delay: float) -> None:
    """Crash the whole worker process while the marker file exists (a poisoned run)."""
    time.sleep(delay)
    if os.path.exists(os.environ["PROC_MARKER"]):
        os._exit(3)


@cd.workflow
async def twenty_steps(seconds: float) -> int:
    total = 0
    for i in range(20):
        total += await cd.call(apply_effect, i, seconds)
    return total


@cd.workflow
async def ten_steps(seconds: float) -> int:
    return sum([await cd.call(apply_effect, i, seconds) for i in range(10)])


def long_step(kind: str, seconds: float) -> int:
    """A long step with an external effect; heartbeats so a cancel reaches it (sync kind)."""
    key = cd.idempotency_key()
    db = _sink()
    db.execute("INSERT INTO invocations VALUES (?, ?, ?)", (key, -1, time.time()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cd.heartbeat()
        time.sleep(0.02)
    db.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (key, -1))
    db.close()
    return 1


async def long_async_step(seconds: float) -> int:
    key = cd.idempotency_key()
    db = _sink()
    db.execute("INSERT INTO invocations VALUES (?, ?, ?)", (key, -1, time.time()))
    await anyio.sleep(seconds)
    db.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (key, -1))
    db.close()
    return 1


@cd.workflow
async def cancellable(kind: str, seconds: float) -> str:
    try:
        if kind == "async":
            await cd.call(long_async_step, seconds)
        else:
            await cd.call(long_step, kind, seconds)
        return "not cancelled"
    finally:
        await cd.call(apply_effect, 99, 0.0)  # cleanup: runs once the cancel arrives


def paged_work(pages: int) -> int:
    """Heartbeats its progress; a later attempt resumes from the details of the last heartbeat."""
    info = cd.step_info()
    db = _sink()
    db.execute("CREATE TABLE IF NOT EXISTS seen (attempt INTEGER, details TEXT)")
    db.execute("INSERT INTO seen VALUES (?, ?)", (info.attempt, json.dumps(info.heartbeat_details)))
    start = (info.heartbeat_details or {}).get("page", 0)
    for page in range(start + 1, pages + 1):
        cd.heartbeat({"page": page})
        time.sleep(0.1)
    db.close()
    return pages


@cd.workflow
async def paged(pages: int) -> int:
    return await cd.call(paged_work, pages)


@cd.workflow
async def four_steps(seconds: float) -> int:
    return sum([await cd.call(apply_effect, i, seconds) for i in range(4)])


@cd.workflow
async def poisoned() -> str:
    await cd.call(explode, 0.3)
    return "survived"


@cd.workflow
async def healthy(i: int) -> int:
    return await cd.call(apply_effect, 1000 + i, 0.0)


async def main(store: str) -> None:
    if os.environ.get("PROC_LOG"):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    max_crashes = int(os.environ.get("PROC_MAX_CRASHES", "3"))
    grace = float(os.environ.get("PROC_GRACE", "30"))
    async with cd.Runtime(
        store, lease_ttl=0.5, poll_interval=0.02, max_crashes=max_crashes, shutdown_grace=grace
    ) as rt:
        await rt.serve()  # SIGTERM/SIGINT: leave the block, which shuts down gracefully


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], backend=os.environ.get("PROC_LOOP", "asyncio"))
