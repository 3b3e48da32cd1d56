"""A database written by an older coro_durable opens with this code, upgraded in place.

The fixtures under tests/fixtures/schema_<commit>/ were written by that commit's code
(scripts/make_schema_fixtures.py, with the workflows of tests/schema_upgrade_app.py): a SQLite
file, a PostgreSQL dump and a Redis key dump, each holding a completed run, a run parked on a
signal, one parked on a timer and one in the middle of a gather with a pending retry. Opening
them runs the migrations (SQLite schema 2 -> 4, PostgreSQL 4 -> 6, Redis key layout 1 -> 3: the
records' ``meta``, Redis entries as named fields, and structured waits in place of the prose
``waiting_on``: a parked run is made due at once and re-parks with them); the parked runs then
complete, the completed run reads as it did, replay matches, and the entries written after the
upgrade carry meta. The memory store persists nothing, so it has nothing to upgrade.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
import schema_upgrade_app as app
from conftest import PG_URL, REDIS_URL, STORES, pg_test_url, redis_test_url
from coro_durable.errors import PermanentStoreError
from coro_durable.journal import verify_journal
from coro_durable.store import JournalEntry, RunQuery, StoreWrapper
from coro_durable.store._sqlite import SCHEMA_VERSION as SQLITE_VERSION

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).with_name("fixtures") / "schema_c5c87f2"
MANIFEST: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
STAMP = {"by": "the upgrade test", "at": 1.5, "tags": ["a", "é"], "nested": {"n": None}}


def redis_dump() -> list[dict[str, Any]]:
    dump: list[dict[str, Any]] = json.loads((FIXTURES / MANIFEST["redis"]["file"]).read_text())
    return dump


def restore(kind: str, tmp_path: Path) -> str:
    """The fixture of ``kind`` restored in a fresh place; its store URL."""
    if kind == "sqlite":
        path = tmp_path / "old.db"
        shutil.copyfile(FIXTURES / MANIFEST["sqlite"]["file"], path)
        return f"sqlite:///{path}"
    if kind == "postgres":
        import psycopg

        schema = f"cdt_{uuid.uuid4().hex[:12]}"
        url = pg_test_url(schema)
        dump = (FIXTURES / MANIFEST["postgres"]["file"]).read_text()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(dump.replace(MANIFEST["postgres"]["schema"], schema))
        return url
    import redis

    prefix = f"cdt_{uuid.uuid4().hex[:12]}:"
    url = redis_test_url(prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for item in redis_dump():
            key, value = prefix + item["key"], item["value"]
            if item["type"] == "hash":
                client.hset(key, mapping=value)
            elif item["type"] == "zset":
                client.zadd(key, dict(value))
            elif item["type"] == "list":
                client.rpush(key, *value)
            elif item["type"] == "set":
                client.sadd(key, *value)
            else:
                client.set(key, value)
    finally:
        client.close()
    return url


def version(kind: str, url: str) -> int:
    """The schema version (Redis: key layout) the database at ``url`` holds."""
    store: Any = cd.open_store(url)
    if kind == "sqlite":
        db = sqlite3.connect(store.path)
        try:
            return int(db.execute("PRAGMA user_version").fetchone()[0])
        finally:
            db.close()
    if kind == "postgres":
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            row = conn.execute(
                f'SELECT max(version) FROM "{store.schema}".schema_version'
            ).fetchone()
        assert row is not None
        return int(row[0])
    import redis

    client: Any = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.hget(f"{store.prefix}meta", "layout"))
    finally:
        client.close()


def current_version(kind: str) -> int:
    if kind == "sqlite":
        return SQLITE_VERSION
    if kind == "postgres":
        from coro_durable_postgres import SCHEMA_VERSION

        return SCHEMA_VERSION
    from coro_durable_redis._scripts import LAYOUT_VERSION

    return LAYOUT_VERSION


def old_version(kind: str) -> int:
    return int(MANIFEST[kind]["layout" if kind == "redis" else "schema_version"])


def stamped(entry: JournalEntry) -> JournalEntry:
    return dataclasses.replace(entry, meta=STAMP).sealed()


class Stamping(StoreWrapper):
    """Gives every entry the runtime journals through it a meta (a later feature would)."""

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        await self.inner.append(run_id, epoch, [stamped(e) for e in entries])

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        return await self.inner.consume_signal(run_id, epoch, name, stamped(entry))


@pytest.fixture(params=["memory", "sqlite", "postgres", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "memory":
        pytest.skip("the memory store persists nothing: there is no old database to upgrade")
    if name not in STORES:
        pytest.skip(f"the {name} store plugin is not installed")
    return name


def assert_described_as(described: dict[str, Any], old: dict[str, Any]) -> None:
    """describe() answers what the old code answered; a field added since has its default."""
    assert {k: described[k] for k in old} == old
    assert {k: v for k, v in described.items() if k not in old} == {"waits": [], "tags": {}}


async def test_an_old_database_is_upgraded_in_place_and_its_runs_carry_on(
    kind: str, tmp_path: Path
) -> None:
    """The old commit's database opens: it is migrated to the current version, the completed
    run's describe and history are what the old code answered (meta empty), replay matches, the
    runs parked on a signal, a timer and a gather's pending retry complete, and the entries
    journaled after the upgrade keep their meta (checksums included) across a reopen."""
    url = restore(kind, tmp_path)
    assert version(kind, url) == old_version(kind) < current_version(kind)
    expected = MANIFEST[kind]["expected"]
    async with cd.Runtime(url, worker=False) as rt:  # a client: opening the store upgrades it
        assert version(kind, url) == current_version(kind)
        assert_described_as(app.jsonable(await rt.describe("done")), expected["describe"])
        history = app.jsonable(await rt.history("done"))
        assert len(history) == len(expected["history"])
        for entry, old in zip(history, expected["history"], strict=True):
            assert {k: entry[k] for k in old} == old
        assert all(e["meta"] == {} for e in history)
        # run_id -> seq -> checksum of the entries the old code wrote
        before = {r: {e.seq: e.checksum for e in await rt.history(r)} for r in app.RUNS}
        # The runs parked with prose are due now, to re-park with structured waits.
        parked = [await rt.describe(r) for r in app.RUNS if r != "done"]
        assert all(i.status == cd.RunStatus.WAITING and not i.waits for i in parked)
        assert all(i.wake_at is not None and i.wake_at.timestamp() == 0 for i in parked)
    options: dict[str, Any] = {"workflows": app.WORKFLOWS, "poll_interval": 0.05}
    async with cd.Runtime(Stamping(cd.open_store(url)), **options) as rt:
        with anyio.fail_after(30):  # the signal's run re-parked: found by what it waits for
            while not await rt.list_runs(waiting_for="signal", wait_name=app.SIGNAL):
                await anyio.sleep(0.05)
        [waiting] = await rt.list_runs(waiting_for="signal", wait_name=app.SIGNAL)
        assert waiting.run_id == "signal" and waiting.waiting_on == f"signal {app.SIGNAL!r}"
        await rt.signal("signal", app.SIGNAL, app.SIGNAL_PAYLOAD)
        with anyio.fail_after(30):
            for run_id, result in app.RESULTS.items():
                assert await rt.result(run_id) == result, run_id
    async with cd.Runtime(url, worker=False) as rt:  # reopened: what the store kept
        for run_id in app.RUNS:
            entries = await rt.history(run_id)
            verify_journal(run_id, entries)
            kept = [e for e in entries if before[run_id].get(e.seq) == e.checksum]
            written = [e for e in entries if e not in kept]  # new, or a pending one replaced
            assert all(not e.meta for e in kept), run_id
            assert all(e.meta == STAMP for e in written), run_id
            assert bool(written) == (run_id != "done"), run_id
            report = await rt.replay(run_id)
            assert report.matched, report.detail
        assert_described_as(app.jsonable(await rt.describe("done")), expected["describe"])


async def test_concurrent_opens_of_an_old_database_upgrade_it_once(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Several stores opening the same old database at the same moment all succeed and the
    upgrade happens exactly once (SQLite: one BEGIN IMMEDIATE; PostgreSQL: one transaction under
    an advisory lock, each version recorded once; Redis: one store holds the upgrade lock and
    rewrites the entries, the others wait). Opening it again changes nothing."""
    url = restore(kind, tmp_path)
    stores: list[Any] = [cd.open_store(url) for _ in range(4)]
    caplog.set_level(logging.INFO, logger="coro_durable.redis")
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        assert version(kind, url) == current_version(kind)
        upgrades = [r for r in caplog.records if "upgraded the key layout" in r.getMessage()]
        if kind == "redis":
            assert len(upgrades) == 1, upgrades
            entries = sum(len(item["value"]) for item in redis_dump() if item["type"] == "hash"
                          and item["key"].startswith("journal:"))  # fmt: skip
            assert f"{entries} journal entries of {len(app.RUNS)} runs" in upgrades[0].getMessage()
        if kind == "postgres":
            import psycopg

            schema = stores[0].schema
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                rows = conn.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY 1')
                assert [v for (v,) in rows] == list(range(1, current_version(kind) + 1))
        runs = await stores[1].list_runs(RunQuery())
        assert sorted(r.run_id for r in runs) == sorted(app.RUNS)
        assert all(not r.meta for r in runs)
        for run_id in app.RUNS:
            verify_journal(run_id, await stores[2].load_journal(run_id))
    finally:
        for store in stores:
            await store.close()
    caplog.clear()
    again = cd.open_store(url)
    try:
        await again.open()
        assert version(kind, url) == current_version(kind)
        assert not [r for r in caplog.records if "upgraded the key layout" in r.getMessage()]
    finally:
        await again.close()


async def test_redis_entries_are_rewritten_with_named_fields(tmp_path: Path) -> None:
    """The Redis upgrade rewrites every journal entry from the old positional JSON array to a
    JSON object of named fields, keeping its status|checksum frame; the run hashes are left as
    they were but for layout 3: the prose ``waiting_on`` is gone and a waiting run is due now
    (``wake_at`` 0, in its workflow's due set). An entry in the old form written after the
    upgrade is still read."""
    if "redis" not in STORES:
        pytest.skip("the redis store plugin is not installed")
    import redis

    url = restore("redis", tmp_path)
    store: Any = cd.open_store(url)
    prefix = store.prefix
    client: Any = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        old = {run_id: client.hgetall(f"{prefix}journal:{run_id}") for run_id in app.RUNS}
        runs = {run_id: client.hgetall(f"{prefix}run:{run_id}") for run_id in app.RUNS}
        assert all(v.split("|", 2)[2].startswith("[") for j in old.values() for v in j.values())
        await store.open()
        for run_id in app.RUNS:
            new = client.hgetall(f"{prefix}journal:{run_id}")
            assert new.keys() == old[run_id].keys()
            for seq, value in new.items():
                status, checksum, body = value.split("|", 2)
                assert old[run_id][seq].startswith(f"{status}|{checksum}|[")
                fields = json.loads(body)
                assert fields["seq"] == int(seq) and fields["checksum"] == checksum
                assert fields["meta"] == {}
            now = client.hgetall(f"{prefix}run:{run_id}")
            was = dict(runs[run_id])
            if was.pop("waiting_on", None) is not None:
                was["wake_at"] = "0"
                assert client.zscore(f"{prefix}due:{was['workflow']}", run_id) == 0
            assert now == was
        # An older worker still running during the upgrade writes the version 1 form: it reads.
        client.hset(f"{prefix}journal:done", "1", old["done"]["1"])
        entries = await store.load_journal("done")
        verify_journal("done", entries)
        assert [e.seq for e in entries] == [0, 1] and entries[1].value == 4
    finally:
        client.close()
        await store.close()


async def test_a_newer_redis_layout_is_refused() -> None:
    """A prefix written by a newer coro-durable-redis (a higher key layout) is refused with an
    error naming both versions, not misread."""
    if "redis" not in STORES:
        pytest.skip("the redis store plugin is not installed")
    import redis

    url = redis_test_url()
    store: Any = cd.open_store(url)
    await store.open()
    await store.close()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.hset(f"{store.prefix}meta", "layout", "99")
    finally:
        client.close()
    newer = cd.open_store(url)
    with pytest.raises(PermanentStoreError, match=r"layout version 99, newer than .* \(3\)"):
        await newer.open()
    await newer.close()
