"""Group commit: concurrent writes batched into one transaction (SQLite, Postgres) or one script
call (Redis), each write fenced and answered on its own, acknowledged only once durable.

The first tests drive ``GroupCommit`` itself with a plain flush function; the rest run the real
stores (SQLite, Postgres, Redis) with many concurrent runs. Store-specific failure modes (a commit
that fails, a lost reply) are in the store-specific test files.
"""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import coro_durable as cd
from conftest import STORES, pg_test_url, redis_test_url
from coro_durable.errors import ConfigurationError, ConflictError, LeaseLost, RunNotFoundError
from coro_durable.journal._records import JournalEntry, RunStatus
from coro_durable.store import ClaimRequest
from coro_durable.store._groupcommit import GroupCommit, GroupCommitOptions
from coro_durable.testing.conformance import timer_wait
from group_commit_common import (
    Write,
    batch_after_one,
    claimed,
    entry,
    pending_entry,
    record_batches,
)

pytestmark = pytest.mark.anyio

SERVER_STORES = [s for s in STORES if s != "memory"]  # the stores with group commit


# -- GroupCommit on its own -----------------------------------------------------------------------


class Recorder:
    """A flush function that records every batch; ``fail`` decides an item's outcome."""

    def __init__(self, fail: Callable[[int], BaseException | None] = lambda item: None) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.gate: anyio.Event | None = None  # if set, the next flush waits for it

    async def flush(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if self.gate is not None:
            gate, self.gate = self.gate, None
            await gate.wait()
        await anyio.sleep(0.001)  # a commit takes a while: others queue meanwhile
        return [self.fail(item) or item * 10 for item in items]


def committer(recorder: Recorder, **options: Any) -> GroupCommit[int, int]:
    return GroupCommit(recorder.flush, GroupCommitOptions(**options))


async def test_concurrent_writes_share_a_flush_and_each_gets_its_own_result() -> None:
    recorder = Recorder()
    gc = committer(recorder)
    results: dict[int, int] = {}

    async def write(i: int) -> None:
        results[i] = await gc.submit(i)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(write, i)
    assert results == {i: i * 10 for i in range(50)}
    assert sorted(i for batch in recorder.batches for i in batch) == list(range(50))
    assert len(recorder.batches) < 10  # the first alone, the others together
    assert max(len(b) for b in recorder.batches) >= 40


async def test_a_lone_sequential_writer_never_waits() -> None:
    """With nobody else writing, each write is flushed at once, alone: even a 10 s bound on the
    wait is never used (20 writes finish well within 5 s)."""
    recorder = Recorder()
    gc = committer(recorder, max_wait=10.0)
    with anyio.fail_after(5):
        for i in range(20):
            assert await gc.submit(i) == i * 10
    assert recorder.batches == [[i] for i in range(20)]


async def test_writers_released_together_are_batched_together_again() -> None:
    """Runs writing step after step: after the first round, each round is one batch."""
    recorder = Recorder()
    gc = committer(recorder, max_wait=0.05)

    async def run(i: int) -> None:
        for step in range(5):
            await gc.submit(i * 100 + step, again=True)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(run, i)
    sizes = [len(b) for b in recorder.batches]
    # The first writer alone, then every round in one batch (the first writer, a round ahead,
    # joins the others in the second batch and is missing from the last).
    assert sizes == [1, 20, 20, 20, 20, 19]


async def test_writers_that_will_not_write_again_are_not_waited_for() -> None:
    """After a batch of one append (``again``) and other writes (a claim, a renewal), the next
    lone append commits at once: even a 10 s bound on the wait is not used."""
    recorder = Recorder()
    gc = committer(recorder, max_wait=10.0)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gc.submit, 0)
            while not gc._busy:
                await anyio.lowlevel.checkpoint()
            tg.start_soon(functools.partial(gc.submit, 1, again=True))
            tg.start_soon(gc.submit, 2)
        assert recorder.batches == [[0], [1, 2]] or recorder.batches == [[0], [2, 1]]
        for i in range(3, 6):
            await gc.submit(i, again=True)
    assert recorder.batches[2:] == [[3], [4], [5]]


async def test_one_writes_error_fails_that_write_only() -> None:
    recorder = Recorder(fail=lambda item: ConflictError(f"item {item}") if item == 3 else None)
    gc = committer(recorder)
    outcomes: dict[int, object] = {}

    async def write(i: int) -> None:
        try:
            outcomes[i] = await gc.submit(i)
        except ConflictError as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(write, i)
    assert isinstance(outcomes.pop(3), ConflictError)
    assert outcomes == {i: i * 10 for i in range(8) if i != 3}


async def test_lease_lost_is_delivered_to_its_writer() -> None:
    """LeaseLost is a BaseException: it is an item's outcome like any error."""
    recorder = Recorder(fail=lambda item: LeaseLost("r", 1) if item == 1 else None)
    gc = committer(recorder)
    got: list[object] = []

    async def write(i: int) -> None:
        try:
            got.append(await gc.submit(i))
        except LeaseLost as exc:
            got.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(write, i)
    assert sum(isinstance(g, LeaseLost) for g in got) == 1 and sorted(
        g for g in got if isinstance(g, int)
    ) == [0, 20]


async def test_a_failed_flush_fails_every_write_of_its_batch() -> None:
    class Broken(Exception):
        pass

    calls = 0

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.001)
        if calls == 2:  # the second batch: the one holding the queued writes
            raise Broken(f"commit of {len(items)} failed")
        return list(items)

    gc: GroupCommit[int, int] = GroupCommit(flush, GroupCommitOptions())
    failed: list[Broken] = []
    ok: list[int] = []

    async def write(i: int) -> None:
        try:
            ok.append(await gc.submit(i))
        except Broken as exc:
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(write, i)
    assert len(ok) == 1 and len(failed) == 5  # the first writer alone, then the failed batch
    assert {str(e) for e in failed} == {"commit of 5 failed"}
    assert len({id(e) for e in failed}) == 5  # each writer its own exception object


async def test_a_cancelled_queued_write_is_never_flushed() -> None:
    recorder = Recorder()
    gate = recorder.gate = anyio.Event()
    gc = committer(recorder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(gc.submit, 1)  # leads, and its flush waits at the gate
        await anyio.sleep(0.01)
        with anyio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(anyio.get_cancelled_exc_class()):
                await gc.submit(2)
        tg.start_soon(gc.submit, 3)
        await anyio.sleep(0.01)
        gate.set()
    assert recorder.batches == [[1], [3]]


async def test_a_write_cancelled_during_its_commit_waits_for_the_commit() -> None:
    """Once a write is in a batch being flushed, cancelling its caller cannot abandon it: the
    caller resumes (cancelled) only after the commit finished, and the others get their result."""
    gate = anyio.Event()
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        await anyio.sleep(0.005)
        if len(items) > 1:
            await gate.wait()
        return list(items)

    gc: GroupCommit[int, int] = GroupCommit(flush, GroupCommitOptions())
    finished_at: list[float] = []
    results: list[int] = []
    async with anyio.create_task_group() as tg:

        async def impatient() -> None:
            with anyio.CancelScope() as scope:
                scope.deadline = anyio.current_time() + 0.02
                await gc.submit(2)
            finished_at.append(anyio.current_time())

        async def patient(i: int) -> None:
            results.append(await gc.submit(i))

        tg.start_soon(patient, 1)  # alone; the others queue behind it and form the 2nd batch
        while not gc._busy:
            await anyio.lowlevel.checkpoint()
        tg.start_soon(impatient)
        tg.start_soon(patient, 3)
        await anyio.sleep(0.1)
        released = anyio.current_time()
        gate.set()
    assert batches == [[1], [2, 3]] or batches == [[1], [3, 2]]
    assert sorted(results) == [1, 3]
    assert finished_at and finished_at[0] >= released


async def test_max_items_bounds_a_batch() -> None:
    recorder = Recorder()
    gc = committer(recorder, max_items=4)
    async with anyio.create_task_group() as tg:
        for i in range(13):
            tg.start_soon(gc.submit, i)
    assert max(len(b) for b in recorder.batches) == 4
    assert sorted(i for b in recorder.batches for i in b) == list(range(13))


# -- URL options ------------------------------------------------------------------------------------


def url_for(kind: str, tmp_path: Path, query: str = "") -> str:
    if kind == "sqlite":
        base = f"sqlite:///{tmp_path / 'runs.db'}"
    elif kind == "postgres":
        base = "postgresql://u@h/db?schema=x"
    else:
        base = "redis://127.0.0.1:6379/0?durability=volatile"
    return base + ("&" if "?" in base else "?") + query if query else base


@pytest.mark.parametrize("kind", SERVER_STORES)
def test_group_commit_url_options(kind: str, tmp_path: Path) -> None:
    """On by default; ``group_commit=0`` turns it off; the wait and the batch size are set in the
    URL; bad values are refused up front."""
    default: Any = cd.open_store(url_for(kind, tmp_path))
    assert default.group_commit is not None
    off: Any = cd.open_store(url_for(kind, tmp_path, "group_commit=0"))
    assert off.group_commit is None
    tuned: Any = cd.open_store(
        url_for(kind, tmp_path, "group_commit=1&group_commit_wait_us=750&group_commit_max=32")
    )
    assert (tuned.group_commit.max_wait, tuned.group_commit.max_items) == (0.00075, 32)
    for bad in ("group_commit=maybe", "group_commit_wait_us=-1", "group_commit_max=0"):
        with pytest.raises(ConfigurationError, match=bad.split("=")[0]):
            cd.open_store(url_for(kind, tmp_path, bad))


# -- the stores, for real -----------------------------------------------------------------------------


@pytest.fixture(params=SERVER_STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """The stores with group commit (memory commits nothing): overrides conftest's."""
    return str(request.param)


@asynccontextmanager
async def opened(url: str, query: str = "") -> AsyncIterator[Any]:
    sep = "&" if "?" in url else "?"
    store = cd.open_store(url + (sep + query if query else ""))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_concurrent_runs_commit_in_batches(store_url: str) -> None:
    """40 runs writing 5 entries each at once, then finishing: far fewer commits than writes,
    and every journal and run row is exactly as if each write had committed alone."""
    async with opened(store_url) as store:
        ids = [f"r{i}" for i in range(40)]
        epochs = await claimed(store, ids)
        sizes = record_batches(store)

        async def run(run_id: str) -> None:
            for seq in range(5):
                await store.append(run_id, epochs[run_id], [entry(run_id, seq)])
            await store.finish(run_id, epochs[run_id], RunStatus.COMPLETED, '"ok"', None)

        async with anyio.create_task_group() as tg:
            for run_id in ids:
                tg.start_soon(run, run_id)
        assert sum(sizes) == 40 * 6 and max(sizes) > 10 and len(sizes) < 40 * 6 / 4
        for run_id in ids:
            assert [e.seq for e in await store.load_journal(run_id)] == [0, 1, 2, 3, 4]
            stored = await store.get_run(run_id)
            assert stored.status == RunStatus.COMPLETED and stored.steps == 5
            assert stored.result == '"ok"' and stored.owner is None


async def test_one_batch_answers_each_write_on_its_own(store_url: str) -> None:
    """One batch holding good appends, a stale worker's append and finish (fenced out), an append
    contradicting a final entry, a retried identical append, an unknown run, a park and a finish:
    each caller gets exactly what it would have got alone, and only the good writes land."""
    async with opened(store_url) as store:
        epochs = await claimed(store, [f"g{i}" for i in range(6)] + ["parked", "done"])
        # "taken": claimed by w1 whose lease then expired and w2 took it over (epoch moved on)
        stale = (await claimed(store, ["taken"], ttl=0.05))["taken"]
        await anyio.sleep(0.2)
        (fresh,) = await store.claim(ClaimRequest("w2", ("wf",), 1, 60, 10))
        assert fresh.run_id == "taken" and fresh.epoch > stale
        await store.append("g0", epochs["g0"], [entry("g0", 0)])
        sizes = record_batches(store)

        def good(run_id: str) -> Write:
            return lambda: store.append(run_id, epochs[run_id], [entry(run_id, 1)])

        writes: dict[str, Write] = {
            **{f"g{i}": good(f"g{i}") for i in range(1, 6)},
            "stale append": lambda: store.append("taken", stale, [entry("taken", 0)]),
            "stale finish": lambda: store.finish("taken", stale, RunStatus.COMPLETED, "1", None),
            "conflict": lambda: store.append("g0", epochs["g0"], [entry("g0", 0, result="2")]),
            "retry": lambda: store.append("g0", epochs["g0"], [entry("g0", 0)]),
            "unknown": lambda: store.append("nope", 1, [entry("nope", 0)]),
            "park": lambda: store.park("parked", epochs["parked"], time.time() + 60, timer_wait()),
            "finish": lambda: store.finish(
                "done", epochs["done"], RunStatus.FAILED, None, '{"type":"X","message":"m"}'
            ),
        }
        answers = await batch_after_one(
            store,
            lambda: store.append("g0", epochs["g0"], [entry("g0", 9)]),
            *writes.values(),
        )
        outcomes = dict(zip(writes, answers, strict=True))
        assert sizes == [1, len(writes)]
        assert isinstance(outcomes["stale append"], LeaseLost)
        assert isinstance(outcomes["stale finish"], LeaseLost)
        assert isinstance(outcomes["conflict"], ConflictError)
        assert "seq 0 already holds a final call(step)" in str(outcomes["conflict"])
        assert isinstance(outcomes["unknown"], RunNotFoundError)
        refused = ("stale append", "stale finish", "conflict", "unknown")
        assert all(outcomes[name] is None for name in outcomes if name not in refused), outcomes
        for i in range(1, 6):
            assert [e.seq for e in await store.load_journal(f"g{i}")] == [1]
        assert [(e.seq, e.result) for e in await store.load_journal("g0")] == [(0, "1"), (9, "1")]
        assert await store.load_journal("taken") == []
        taken = await store.get_run("taken")
        assert taken.status == RunStatus.RUNNING and taken.epoch == fresh.epoch
        g0 = await store.get_run("g0")
        assert g0.steps == 2
        parked = await store.get_run("parked")
        assert parked.status == RunStatus.WAITING and parked.waits == timer_wait()
        done = await store.get_run("done")
        assert done.status == RunStatus.FAILED and done.error == '{"type":"X","message":"m"}'


async def test_batched_appends_reset_crash_count_only_for_final_entries(store_url: str) -> None:
    """In a batch, each append resets its run's crash_count only if it writes a final entry, as
    alone: batches of new seqs only, and batches that also replace pending entries or retry one
    (pending -> pending, pending -> final, new pending, new final, identical pending again)."""
    async with opened(store_url) as store:
        ids = [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(5)]
        await claimed(store, ids, ttl=-1.0)  # leases expired at once: the takeover is a crash
        epochs: dict[str, int] = {}
        while len(epochs) < len(ids):
            for run in await store.claim(ClaimRequest("w2", ("wf",), len(ids), 60, 10)):
                assert run.crash_count == 1
                epochs[run.run_id] = run.epoch
        lead = await claimed(store, ["lead"])
        for run_id in ("b0", "b2", "b4"):
            await store.append(run_id, epochs[run_id], [pending_entry(run_id, 0)])
        sizes = record_batches(store)

        epochs.update(lead)

        def append(run_id: str, e: JournalEntry) -> Write:
            return lambda: store.append(run_id, epochs[run_id], [e])

        new_seqs = {
            "a0": pending_entry("a0", 0),
            "a1": pending_entry("a1", 0),
            "a2": entry("a2", 0),
            "a3": entry("a3", 0),
        }
        mixed = {
            "b0": pending_entry("b0", 0, attempts=2),  # replaces a pending entry
            "b1": pending_entry("b1", 0),  # a new seq
            "b2": entry("b2", 0),  # a final entry replacing a pending one
            "b3": entry("b3", 0),  # a new seq
            "b4": pending_entry("b4", 0),  # the same pending entry again
        }
        for seq, batch in enumerate((new_seqs, mixed)):
            await anyio.sleep(0.1)  # the previous batch is stale: the lead write goes alone
            outcomes = await batch_after_one(
                store,
                append("lead", entry("lead", seq)),
                *(append(run_id, e) for run_id, e in batch.items()),
            )
            assert outcomes == [None] * len(batch)
            assert sizes[-2:] == [1, len(batch)]
        for run_id, e in {**new_seqs, **mixed}.items():
            assert await store.load_journal(run_id) == [e]
            run = await store.get_run(run_id)
            assert run.steps == 1
            assert run.crash_count == (0 if e.final else 1), (run_id, e.status)


async def test_a_lone_writer_never_waits_on_a_real_store(store_url: str) -> None:
    """Sequential writes of one run with a 1 s bound on the batching wait: none waits (20 writes
    take well under 20 s), each commits alone."""
    async with opened(store_url, "group_commit_wait_us=1000000") as store:
        epoch = (await claimed(store, ["solo"]))["solo"]
        sizes = record_batches(store)
        with anyio.fail_after(15):
            for seq in range(20):
                await store.append("solo", epoch, [entry("solo", seq)])
        assert sizes == [1] * 20


async def test_the_runtime_with_and_without_group_commit(store_url: str) -> None:
    """The same workload of 30 concurrent runs gives the same results with group commit on
    (batches observed) and off."""
    for query in ("group_commit=1", "group_commit=0"):
        sep = "&" if "?" in store_url else "?"
        store: Any = cd.open_store(f"{store_url}{sep}{query}")
        sizes = record_batches(store) if store.group_commit is not None else []
        async with cd.Runtime(store, concurrency=30, poll_interval=0.02) as rt:
            tag = query[-1]
            for i in range(30):
                await rt.start(three_steps, i, run_id=f"{tag}-{i}")
            results = [await rt.result(f"{tag}-{i}", timeout=60) for i in range(30)]
        assert results == [i * 3 + 3 for i in range(30)]
        if query == "group_commit=1":
            assert max(sizes) > 1


async def add_one(x: int) -> int:
    return x + 1


@cd.workflow(name="group_commit_three_steps")
async def three_steps(i: int) -> int:
    total = i * 3
    for _ in range(3):
        total = await cd.call(add_one, total)
    return total


# -- durability: acknowledged means on disk ----------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import anyio
    import coro_durable as cd
    from coro_durable.journal._records import JournalEntry, RunRecord
    from coro_durable.store import ClaimRequest

    async def main(url: str) -> None:
        store = cd.open_store(url)
        await store.open()
        ids = [f"k{i}" for i in range(30)]
        for run_id in ids:
            await store.create_run(RunRecord(run_id, "wf", "{}"))
        epochs = {}
        while len(epochs) < len(ids):
            for run in await store.claim(ClaimRequest("w", ("wf",), 30, 60, 5)):
                epochs[run.run_id] = run.epoch
        acked = []

        async def write(run_id: str) -> None:
            e = JournalEntry(0, "call", "step", "d0", "ok", None, json.dumps(run_id), key=f"{run_id}:0").sealed()
            await store.append(run_id, epochs[run_id], [e])
            acked.append(run_id)
            if len(acked) == len(ids) // 2:  # half acknowledged: report them and die at once
                os.write(1, (json.dumps(acked) + "\\n").encode())
                os.kill(os.getpid(), signal.SIGKILL)

        async with anyio.create_task_group() as tg:
            for run_id in ids:
                tg.start_soon(write, run_id)

    anyio.run(main, sys.argv[1])
    """
)


async def test_acknowledged_writes_survive_the_process_being_killed(
    store_url: str, tmp_path: Path
) -> None:
    """A child process appends to 30 runs at once (batched) and is SIGKILLed the moment half of
    them are acknowledged: every acknowledged entry is in the store when it is reopened."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = await anyio.run_process(
        [sys.executable, str(script), store_url], check=False, stderr=subprocess.PIPE
    )
    assert proc.returncode == -9, proc.stderr.decode()
    acked = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert len(acked) == 15
    async with opened(store_url) as store:
        for run_id in acked:
            journal = await store.load_journal(run_id)
            assert [(e.seq, e.result) for e in journal] == [(0, json.dumps(run_id))]


@pytest.mark.parametrize("kind", [k for k in SERVER_STORES if k != "sqlite"])
async def test_a_batch_of_large_payloads_goes_in_several_calls(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past a byte budget, a Postgres or Redis batch is sent in several statements or script
    calls (here about three writes each): every write still lands once and is answered alone."""
    plugin = "coro_durable_postgres" if kind == "postgres" else "coro_durable_redis"
    monkeypatch.setattr(importlib.import_module(f"{plugin}._store"), "BATCH_BYTES", 3 * 1200)
    async with opened(pg_test_url() if kind == "postgres" else redis_test_url()) as store:
        epochs = await claimed(store, [f"r{i}" for i in range(12)])
        big = json.dumps("x" * 1000)

        def append(run_id: str) -> Write:
            return lambda: store.append(run_id, epochs[run_id], [entry(run_id, 0, result=big)])

        stale = lambda: store.append("r11", epochs["r11"] - 1, [entry("r11", 0)])  # noqa: E731
        sizes = record_batches(store)
        calls: list[str] = []
        method = "_fetch" if kind == "postgres" else "_script"
        send = getattr(store, method)

        async def counting(what: str, *args: Any) -> Any:
            calls.append(what)
            return await send(what, *args)

        monkeypatch.setattr(store, method, counting)
        outcomes = await batch_after_one(
            store, append("r0"), *(append(f"r{i}") for i in range(1, 11)), stale
        )
        assert sizes == [1, 11]
        batch_calls = [c for c in calls if "write_batch" in c or c == "batch"]
        assert len(batch_calls) >= 3, calls
        assert outcomes[:10] == [None] * 10 and isinstance(outcomes[10], LeaseLost)
        for i in range(11):
            assert [e.result for e in await store.load_journal(f"r{i}")] == [big]
        assert await store.load_journal("r11") == []
