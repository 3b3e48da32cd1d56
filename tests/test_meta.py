"""The records' ``meta``: every store keeps it as given, and an entry's checksum covers it.

``RunRecord.meta`` and ``JournalEntry.meta`` are how later features add fields without a schema
migration per store. The store-generic tests run on every store under asyncio and trio; the
record tests at the top need no store.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable.errors import CorruptJournalError, RunQuarantinedError, SerializationError
from coro_durable.journal import verify_journal
from coro_durable.store import (
    ClaimRequest,
    JournalEntry,
    Meta,
    RunQuery,
    RunRecord,
    RunStatus,
    Store,
    encode_meta,
)
from coro_durable.testing import corrupt_row
from coro_durable.testing.conformance import timer_wait
from group_commit_common import batch_after_one, record_batches

META = {"tenant": "acme", "n": 7, "ratio": 0.1, "big": 1e16, "ok": True, "none": None,
        "tags": ["a", "é", "\u2603"], "nested": {"deep": [1, {"x": "y"}]}}  # fmt: skip
OLD_MANIFEST = Path(__file__).with_name("fixtures") / "schema_c5c87f2" / "manifest.json"


def entry(seq: int, status: str = "ok", meta: Any = None, **fields: Any) -> JournalEntry:
    fields.setdefault("result", "1" if status == "ok" else None)
    return JournalEntry(
        seq, "call", "step", "d0", status, key=f"r:{seq}", meta=meta or {}, **fields
    ).sealed()


# ---- the records -------------------------------------------------------------------------------


def test_an_empty_meta_keeps_the_checksum_entries_had_before_meta() -> None:
    """Entries written before meta existed still verify: with an empty meta the checksum is
    byte-for-byte what the older code computed (the fixture journal of commit c5c87f2)."""
    manifest = json.loads(OLD_MANIFEST.read_text())
    old = [
        e for kind in ("sqlite", "postgres", "redis") for e in manifest[kind]["expected"]["history"]
    ]
    assert old
    for fields in old:
        rebuilt = JournalEntry(**fields)
        assert rebuilt.meta == {} and rebuilt.compute_checksum() == fields["checksum"]


def test_the_checksum_covers_a_non_empty_meta() -> None:
    """A non-empty meta changes the checksum, any change of it does too, and the order of its
    keys does not (the encoding is canonical)."""
    plain = entry(0)
    tagged = entry(0, meta={"a": 1, "b": 2})
    assert tagged.checksum != plain.checksum
    assert entry(0, meta={"b": 2, "a": 1}).checksum == tagged.checksum
    assert entry(0, meta={"a": 1, "b": 3}).checksum != tagged.checksum
    assert entry(0, meta={"a": 1.0, "b": 2}).checksum != tagged.checksum  # 1.0 is not 1
    forged = dataclasses.replace(tagged, meta={"a": 2, "b": 2})  # checksum kept
    with pytest.raises(CorruptJournalError, match="checksum"):
        verify_journal("r", [forged])


def test_meta_is_read_only_json_normalised_and_copyable() -> None:
    """Meta is a read-only dict of JSON data: built from any mapping (tuples become lists),
    refused with a SerializationError when it is not JSON, and it survives asdict, copy,
    deepcopy and pickle; entries stay hashable."""
    e = entry(0, meta={"t": (1, 2), "s": "x"})
    assert isinstance(e.meta, Meta) and e.meta == {"t": [1, 2], "s": "x"}
    with pytest.raises(TypeError, match="read-only"):
        e.meta["s"] = "y"
    with pytest.raises(TypeError, match="read-only"):
        e.meta.update(s="y")
    for bad in ({"x": object()}, {"x": float("nan")}, {1: "int key"}, ["not", "a", "mapping"]):
        with pytest.raises(SerializationError, match="meta"):
            entry(0, meta=bad)
    assert dataclasses.asdict(e)["meta"] == {"t": [1, 2], "s": "x"}
    assert copy.copy(e) == e == copy.deepcopy(e) == pickle.loads(pickle.dumps(e))
    assert JournalEntry(**dataclasses.asdict(e)).checksum == e.checksum
    assert hash(e) == hash(copy.deepcopy(e))
    run = RunRecord("r", "wf", "{}", meta={"k": "v"})
    assert run.copy().meta == {"k": "v"} and RunRecord("r", "wf", "{}").meta == {}
    assert encode_meta(e.meta) == '{"s":"x","t":[1,2]}'


# ---- every store --------------------------------------------------------------------------------


async def running(store: Store, run_id: str, meta: Any = None) -> int:
    """Create ``run_id`` (its own workflow name) and claim it; its epoch."""
    workflow = f"wf-{run_id}"
    await store.create_run(RunRecord(run_id, workflow, "{}", meta=meta or {}))
    (run,) = await store.claim(ClaimRequest("w1", (workflow,), 1, 30, 5))
    return run.epoch


@pytest.mark.anyio
async def test_run_meta_round_trips(store: Store) -> None:
    """A run's meta is stored by create_run and returned equal by every read: the created
    record, get_run, list_runs, claim, a repeated create_run, and after park and finish."""
    created, new = await store.create_run(RunRecord("r1", "wf", "{}", meta=META))
    assert new and created.meta == META
    assert (await store.get_run("r1")).meta == META  # type: ignore[union-attr]
    (listed,) = await store.list_runs(RunQuery())
    assert listed.meta == META
    (claimed,) = await store.claim(ClaimRequest("w1", ("wf",), 1, 30, 5))
    assert claimed.meta == META
    again, new = await store.create_run(RunRecord("r1", "wf", "{}", meta={"other": 1}))
    assert not new and again.meta == META
    await store.park("r1", claimed.epoch, time.time() - 1, timer_wait())  # due: claimable again
    (claimed,) = await store.claim(ClaimRequest("w1", ("wf",), 1, 30, 5))
    await store.finish("r1", claimed.epoch, RunStatus.COMPLETED, "1", None)
    done = await store.get_run("r1")
    assert done is not None and done.status == RunStatus.COMPLETED and done.meta == META
    await store.create_run(RunRecord("r2", "wf", "{}"))
    assert (await store.get_run("r2")).meta == {}  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_entry_meta_round_trips(store: Store) -> None:
    """Every write that journals an entry keeps its meta: a single append, a pending entry
    replaced by a final one, several entries in one append, concurrent appends (batched by
    group commit where the store has it), consume_signal and retry_run's audit note. The journal
    loads equal to what was written and verifies."""
    epoch = await running(store, "r1")
    written: dict[int, JournalEntry] = {}

    async def append(*entries: JournalEntry) -> None:
        await store.append("r1", epoch, list(entries))
        written.update((e.seq, e) for e in entries)

    await append(entry(0, meta=META))
    await append(entry(1, "pending", meta={"attempt": 1}, due_at=5))
    await append(entry(1, meta={"attempt": 2}))
    await append(entry(2, meta={"a": 1}), entry(3), entry(4, "pending", meta={"b": [True]}))
    await store.deliver_signal("r1", "go", '"payload"', "sig-1")
    waiting = JournalEntry(5, "signal", "go", "d5", "pending", key="r:5", meta={"w": 1}).sealed()
    consumed = await store.consume_signal("r1", epoch, "go", waiting)
    assert consumed is not None and consumed.meta == {"w": 1}
    written[5] = consumed
    others = {f"c{i}": await running(store, f"c{i}") for i in range(4)}

    def append_to(run_id: str, epoch: int) -> Callable[[], Awaitable[None]]:
        return lambda: store.append(run_id, epoch, [entry(0, meta={"run": run_id})])

    writes = [append_to(run_id, run_epoch) for run_id, run_epoch in others.items()]
    if getattr(store, "group_commit", None) is not None:
        sizes = record_batches(store)
        assert await batch_after_one(store, *writes) == [None] * 3
        assert sizes == [1, 3]  # the three behind the first one committed as one batch
    else:
        for write in writes:
            await write()
    loaded = await store.load_journal("r1")
    assert loaded == [written[seq] for seq in sorted(written)]
    verify_journal("r1", loaded)
    for run_id in others:
        (only,) = await store.load_journal(run_id)
        assert only.meta == {"run": run_id}
        verify_journal(run_id, [only])

    await store.finish("r1", epoch, RunStatus.FAILED, None, '{"type":"E","message":"m"}')
    note = JournalEntry(-1, "retry", "", "", "ok", args="{}", meta={"by": "test"}).sealed()
    await store.retry_run("r1", [4], None, note)
    loaded = await store.load_journal("r1")
    assert loaded[0] == note and 4 not in {e.seq for e in loaded}
    verify_journal("r1", loaded)


@pytest.mark.anyio
async def test_a_corrupted_meta_fails_verification_like_a_corrupted_result(store: Store) -> None:
    """An entry whose stored meta was changed behind coro_durable's back (corrupt_row with
    meta=) fails its checksum when the journal is loaded, exactly like one whose result was:
    a meta added to an entry that had none, and a meta altered."""
    epoch = await running(store, "r1")
    await store.append("r1", epoch, [entry(0), entry(1, meta={"a": 1}), entry(2)])
    verify_journal("r1", await store.load_journal("r1"))
    for seq, how in ((0, {"meta": {"added": True}}), (1, {"meta": {"a": 2}}), (2, {})):
        await corrupt_row(store, "r1", seq, **how)  # no meta: the result is corrupted
        journal = await store.load_journal("r1")
        corrupted = next(e for e in journal if e.seq == seq)
        assert corrupted.meta == how.get("meta", corrupted.meta)
        with pytest.raises(CorruptJournalError, match=f"seq {seq} .*checksum"):
            verify_journal("r1", [corrupted])
    with pytest.raises(LookupError, match="seq 9"):
        await corrupt_row(store, "r1", 9, meta={"x": 1})


def two_steps_apart_effect(x: int) -> int:
    return x + 1


@cd.workflow(name="meta_two_steps")
async def two_steps() -> list[Any]:
    first = await cd.call(two_steps_apart_effect, 1)
    go = await cd.await_signal("go")
    return [first, go, await cd.call(two_steps_apart_effect, 2)]


@pytest.mark.anyio
async def test_a_run_whose_entry_meta_was_tampered_with_is_quarantined(store: Store) -> None:
    """Through the runtime: a parked run whose journal entry got a meta it never had is
    quarantined with a corrupt-journal error when it resumes, not replayed."""
    async with cd.Runtime(store, poll_interval=0.02, workflows=[two_steps]) as rt:
        await rt.start(two_steps, run_id="tampered")
        with anyio.fail_after(10):
            while (await rt.describe("tampered")).status != cd.RunStatus.WAITING:
                await anyio.sleep(0.01)
        await corrupt_row(store, "tampered", 0, meta={"approved_by": "mallory"})
        await rt.signal("tampered", "go", True)
        with pytest.raises(RunQuarantinedError, match="checksum"):
            await rt.result("tampered", timeout=10)


def test_an_entry_created_in_one_step_has_the_checksum_verification_expects() -> None:
    """JournalEntry.create (the runtime's one-construction path) gives the same entry, checksum
    included, as building the entry and sealing it; verification accepts it."""
    fields: dict[str, Any] = {
        "args": '["x"]',
        "result": '{"ok": 1}',
        "attempts": 2,
        "key": "r:3",
        "started_at": 1.5,
        "finished_at": 2.5,
        "due_at": 9.25,
    }
    made = cd.JournalEntry.create(3, "call", "step", "d1g", "ok", **fields)
    sealed = cd.JournalEntry(3, "call", "step", "d1g", "ok", **fields).sealed()
    assert made == sealed and made.checksum == sealed.checksum == made.compute_checksum()
    assert made.meta == {}
