"""Helpers shared by the group commit tests (tests/test_group_commit.py and the store-specific
files): claimed runs, and one batch made on purpose.

``batch_after_one(store, first, *writes)`` runs ``first``, and as soon as its commit is under way
starts every one of ``writes``: they all queue behind that commit, so the next commit takes them
together, as one batch (a test can check with ``record_batches``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel

from coro_durable.errors import LeaseLost
from coro_durable.journal._records import JournalEntry, RunRecord
from coro_durable.store import ClaimRequest

Write = Callable[[], Awaitable[Any]]


def entry(run_id: str, seq: int, result: str = "1") -> JournalEntry:
    """A final ``ok`` call entry of ``run_id`` at ``seq``."""
    now = time.time()
    return JournalEntry(
        seq, "call", "step", "d0", "ok", None, result, key=f"{run_id}:{seq}", started_at=now,
        finished_at=now,
    ).sealed()  # fmt: skip


def pending_entry(run_id: str, seq: int, attempts: int = 1) -> JournalEntry:
    """A pending call entry of ``run_id`` at ``seq`` (a step in flight, its ``attempts`` so far)."""
    return JournalEntry(
        seq, "call", "step", "d0", "pending", None, None, attempts=attempts, key=f"{run_id}:{seq}",
        started_at=1.0,
    ).sealed()  # fmt: skip


async def claimed(
    store: Any, run_ids: Sequence[str], worker: str = "w1", ttl: float = 60
) -> dict[str, int]:
    """Create the runs (workflow ``wf``) and claim them; ``{run_id: epoch}``."""
    for run_id in run_ids:
        await store.create_run(RunRecord(run_id, "wf", "{}"))
    epochs: dict[str, int] = {}
    while len(epochs) < len(run_ids):
        for run in await store.claim(ClaimRequest(worker, ("wf",), len(run_ids), ttl, 10)):
            epochs[run.run_id] = run.epoch
    return epochs


def record_batches(store: Any) -> list[int]:
    """The size of every batch the store's group commit flushes from now on."""
    gc = store.group_commit
    sizes: list[int] = []
    flush = gc._flush

    async def recording(items: Sequence[Any]) -> Any:
        sizes.append(len(items))
        return await flush(items)

    gc._flush = recording
    return sizes


async def batch_after_one(store: Any, first: Write, *writes: Write) -> list[object]:
    """Run ``first``; while its commit is in flight start ``writes``, which commit as one batch.
    Returns each of ``writes``' result or the exception it raised."""
    gc = store.group_commit
    assert gc is not None, "group commit is off in this store's URL"
    outcomes: list[object] = [None] * len(writes)

    async def lead() -> None:
        await first()

    async def one(i: int, write: Write) -> None:
        try:
            outcomes[i] = await write()
        except (Exception, LeaseLost) as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(lead)
        while not gc._busy:
            await anyio.lowlevel.checkpoint()
        for i, write in enumerate(writes):
            tg.start_soon(one, i, write)
    return outcomes
