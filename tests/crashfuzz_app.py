"""A worker process for the real-process crash fuzz: ``python tests/crashfuzz_app.py STORE SINK``.

It runs a Runtime worker for the generated plan workflow of crashfuzz_model.py until it is
killed. Steps record their invocations, effects and failures in SINK (an SQLite file shared by
every worker: crashfuzz_model.SqliteWorld), so the parent can check, after SIGKILLs at random
moments, that every effect was applied exactly once and that a step only ran again when the
process running it had been killed (or had lost its lease, which the worker logs on stderr).
"""

from __future__ import annotations

import logging
import os
import sys

import anyio

import coro_durable as cd
import crashfuzz_model as model

LEASE = float(os.environ.get("CRASHFUZZ_LEASE", "0.5"))


async def main(store: str) -> None:
    async with cd.Runtime(
        store,
        lease_ttl=LEASE,
        poll_interval=0.02,
        inline_wait=0.05,
        max_crashes=1_000_000,
        worker_id=f"pid-{os.getpid()}",
    ):
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format=f"{os.getpid()} %(message)s")
    model.WORLD = model.SqliteWorld(sys.argv[2])
    anyio.run(main, sys.argv[1])
