"""SqliteStore specifics the generic conformance suite cannot see: the file, its settings, its
schema, its URL, cross-process safety and error translation."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

import coro_durable as cd
from coro_durable.errors import (
    ConfigurationError,
    LeaseLost,
    StoreError,
    StoreUnavailableError,
)
from coro_durable.journal._records import (
    JournalEntry,
    RunRecord,
    RunStatus,
    WorkerRecord,
    verify_journal,
)
from coro_durable.store import ClaimRequest, RunQuery
from coro_durable.store._registry import open_store
from coro_durable.store._sqlite import _MIGRATIONS, SCHEMA_VERSION, SqliteStore
from coro_durable.testing.conformance import signal_wait
from group_commit_common import Write, batch_after_one, claimed, entry

pytestmark = pytest.mark.anyio


def url(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


async def test_wal_and_synchronous_full_by_default(tmp_path: Path) -> None:
    """The store runs in WAL mode with synchronous=FULL and a 5 s busy timeout by default."""
    store = SqliteStore(url(tmp_path / "runs.db"))
    await store.open()
    try:
        settings = await store.settings()
        assert settings == {
            "journal_mode": "wal",
            "synchronous": 2,  # FULL
            "busy_timeout": 5000,
            "schema_version": SCHEMA_VERSION,
        }
    finally:
        await store.close()
    conn = raw(tmp_path / "runs.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    conn.close()


async def test_url_options_set_synchronous_and_busy_timeout(tmp_path: Path) -> None:
    """?synchronous=NORMAL&busy_timeout=1234 reach the connection."""
    store = SqliteStore(url(tmp_path / "runs.db", "synchronous=normal&busy_timeout=1234"))
    await store.open()
    try:
        settings = await store.settings()
        assert settings["synchronous"] == 1 and settings["busy_timeout"] == 1234
    finally:
        await store.close()


async def test_schema_version_is_recorded(tmp_path: Path) -> None:
    """open() creates the tables and records the schema version in PRAGMA user_version."""
    store = SqliteStore(url(tmp_path / "runs.db"))
    await store.open()
    await store.close()
    conn = raw(tmp_path / "runs.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "journal", "signals"} <= tables
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"runs_claim_wake", "runs_claim_lease", "runs_created"} <= indexes
    conn.close()


async def test_open_is_idempotent_and_concurrent_opens_are_safe(tmp_path: Path) -> None:
    """open() twice, and several stores opening a fresh file at once, all succeed and share it."""
    path = tmp_path / "fresh.db"
    stores = [SqliteStore(url(path)) for _ in range(5)]
    async with anyio.create_task_group() as tg:
        for s in stores:
            tg.start_soon(s.open)
    try:
        await stores[0].open()
        for i, s in enumerate(stores):
            await s.create_run(RunRecord(f"r{i}", "wf", "{}"))
        assert len(await stores[4].list_runs(RunQuery())) == 5
    finally:
        for s in stores:
            await s.close()
            await s.close()  # idempotent


async def test_operations_open_the_store_lazily_and_after_close(tmp_path: Path) -> None:
    """A store used before open() (or after close()) connects on first use."""
    store = SqliteStore(url(tmp_path / "runs.db"))
    await store.create_run(RunRecord("r1", "wf", "{}"))
    await store.close()
    run = await store.get_run("r1")
    assert run is not None and run.status == RunStatus.PENDING
    await store.close()


def test_one_store_object_under_asyncio_then_trio(tmp_path: Path) -> None:
    """A store object keeps working when event loops of both kinds use it in turn."""
    store = SqliteStore(url(tmp_path / "runs.db"))

    async def use(run_id: str) -> None:
        await store.create_run(RunRecord(run_id, "wf", "{}"))
        assert await store.get_run(run_id) is not None

    anyio.run(use, "a", backend="asyncio")
    anyio.run(use, "b", backend="trio")
    anyio.run(use, "c", backend="asyncio")
    anyio.run(store.close, backend="trio")


async def test_a_full_default_thread_pool_does_not_block_the_store(tmp_path: Path) -> None:
    """Store operations use their own thread, so blocking steps that fill anyio's default thread
    pool cannot delay a journal write or a lease renewal."""
    store = SqliteStore(url(tmp_path / "runs.db"))
    release = threading.Event()
    pool = anyio.to_thread.current_default_thread_limiter()

    async def blocking_step() -> None:
        await anyio.to_thread.run_sync(release.wait)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(int(pool.total_tokens)):
                tg.start_soon(blocking_step)
            try:
                while pool.available_tokens:
                    await anyio.sleep(0.01)
                with anyio.fail_after(5):
                    await store.create_run(RunRecord("r1", "wf", "{}"))
                    [run] = await store.claim(ClaimRequest("w", ("wf",), 1, 30, 3))
                    assert await store.renew("w", {"r1": run.epoch}, 30) == {"r1": False}
            finally:
                release.set()  # let the blocking steps end, or the task group never exits
    finally:
        await store.close()


async def test_data_survives_reopening(tmp_path: Path) -> None:
    """Runs, journals and signals written by one store object are there for the next."""
    path = tmp_path / "runs.db"
    first = SqliteStore(url(path))
    await first.create_run(RunRecord("r1", "wf", "{}"))
    epoch = (await first.claim(ClaimRequest("w", ("wf",), 1, 30, 3)))[0].epoch
    e = JournalEntry(0, "call", "f", "d", "ok", result="1", key="r1:0").sealed()
    await first.append("r1", epoch, [e])
    await first.deliver_signal("r1", "go", '"yes"', "s1")
    await first.close()
    second = SqliteStore(url(path))
    try:
        assert await second.load_journal("r1") == [e]
        got = await second.consume_signal(
            "r1", epoch, "go", JournalEntry(1, "signal", "go", "", "pending")
        )
        assert got is not None and got.result == '"yes"'
        verify_journal("r1", await second.load_journal("r1"))
    finally:
        await second.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer coro_durable (higher schema version) is refused, not misread."""
    path = tmp_path / "runs.db"
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(url(path)).open()


async def test_a_version_1_file_gains_the_worker_registry(tmp_path: Path) -> None:
    """A file written before the worker registry existed (schema version 1) is migrated on open:
    its runs are kept and workers can register."""
    path = tmp_path / "v1.db"
    conn = raw(path)
    for statement in _MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO runs VALUES ('kept', 'wf', '{}', 'pending', 0, NULL, NULL, 1.0, NULL, 0, "
        "NULL, NULL, 0, NULL, 0, 1.0, 1.0)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    store = SqliteStore(url(path))
    try:
        assert (await store.settings())["schema_version"] == SCHEMA_VERSION >= 2
        assert (await store.get_run("kept")) is not None
        stored = await store.heartbeat_worker(WorkerRecord("w1", "h", 1, ("wf",)), 30.0)
        assert await store.list_workers() == [stored]
    finally:
        await store.close()


async def test_expired_worker_rows_are_deleted(tmp_path: Path) -> None:
    """The registry cannot grow forever: the next heartbeat deletes the rows of workers that
    expired, and remove_worker deletes its row."""
    path = tmp_path / "runs.db"
    store = SqliteStore(url(path))
    try:
        for i in range(20):
            await store.heartbeat_worker(WorkerRecord(f"gone-{i}", "h", i, ("wf",)), 0.05)
        await anyio.sleep(0.1)
        await store.heartbeat_worker(WorkerRecord("live", "h", 99, ("wf",)), 30.0)
        conn = raw(path)
        assert conn.execute("SELECT worker_id FROM workers").fetchall() == [("live",)]
        await store.remove_worker("live")
        assert conn.execute("SELECT count(*) FROM workers").fetchone() == (0,)
        conn.close()
    finally:
        await store.close()


# ---- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "path", "synchronous", "busy_timeout"),
    [
        ("sqlite:///runs.db", "runs.db", "FULL", 5000),
        ("sqlite:///data/dir/runs.db", "data/dir/runs.db", "FULL", 5000),
        ("sqlite:////abs/dir/runs.db", "/abs/dir/runs.db", "FULL", 5000),
        ("sqlite:///runs.db?synchronous=NORMAL", "runs.db", "NORMAL", 5000),
        ("sqlite:///runs.db?busy_timeout=250&synchronous=full", "runs.db", "FULL", 250),
        ("SQLITE:///my%20runs.db", "my runs.db", "FULL", 5000),
    ],
)
def test_url_forms(given: str, path: str, synchronous: str, busy_timeout: int) -> None:
    """Relative, absolute, percent-encoded paths and query options are understood."""
    store = SqliteStore(given)
    assert store.path == Path(path)
    assert (store.synchronous, store.busy_timeout) == (synchronous, busy_timeout)
    assert store.url == given


@pytest.mark.parametrize(
    "bad",
    [
        "sqlite://host/runs.db",
        "sqlite://",
        "sqlite:///",
        "sqlite:///dir/",
        "sqlite:///:memory:",
        "sqlite:///runs.db?synchronous=OFF",
        "sqlite:///runs.db?busy_timeout=soon",
        "sqlite:///runs.db?busy_timeout=-1",
        "sqlite:///runs.db?journal_mode=DELETE",
        "sqlite:///runs.db?mode=readonly",
        "memory://",
    ],
)
def test_bad_urls_raise_configuration_error(bad: str) -> None:
    """Malformed SQLite URLs fail at construction with a ConfigurationError saying why."""
    with pytest.raises(ConfigurationError):
        SqliteStore(bad)


async def test_open_store_builds_a_sqlite_store_and_creates_parent_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open_store('sqlite:///a/b/runs.db') gives a SqliteStore; open() creates a/b/ (relative)."""
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///a/b/runs.db")
    assert isinstance(store, SqliteStore)
    await store.open()
    await store.close()
    assert (tmp_path / "a" / "b" / "runs.db").is_file()


# ---- errors ----------------------------------------------------------------------------------------


async def test_a_directory_path_raises_store_error(tmp_path: Path) -> None:
    """A path that is a directory gives StoreError (not sqlite3.OperationalError)."""
    (tmp_path / "adir.db").mkdir()
    with pytest.raises(StoreError) as info:
        await SqliteStore(url(tmp_path / "adir.db")).open()
    assert not isinstance(info.value, sqlite3.Error)
    assert isinstance(info.value.__cause__, sqlite3.Error)


async def test_a_file_in_place_of_the_directory_raises_store_error(tmp_path: Path) -> None:
    """A parent that is a file (directory cannot be created) gives StoreError."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="directory"):
        await SqliteStore(url(tmp_path / "file" / "runs.db")).open()


async def test_a_non_database_file_raises_store_error(tmp_path: Path) -> None:
    """A file that is not an SQLite database gives StoreError."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(StoreError):
        await SqliteStore(url(path)).open()


async def test_unstorable_value_raises_store_error(tmp_path: Path) -> None:
    """A value sqlite3 cannot bind (a lone surrogate) gives StoreError, and nothing is written."""
    store = SqliteStore(url(tmp_path / "runs.db"))
    try:
        with pytest.raises(StoreError):
            await store.create_run(RunRecord("r1", "wf", '"\udc80"'))
        assert await store.get_run("r1") is None
    finally:
        await store.close()


async def test_locked_past_busy_timeout_raises_store_unavailable(tmp_path: Path) -> None:
    """A write blocked by another connection's lock for longer than busy_timeout gives
    StoreUnavailableError; once the lock is gone the same store works."""
    path = tmp_path / "runs.db"
    store = SqliteStore(url(path, "busy_timeout=100"))
    await store.open()
    blocker = raw(path)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="busy_timeout"):
            await store.create_run(RunRecord("r1", "wf", "{}"))
        assert time.monotonic() - started >= 0.09
        assert await store.get_run("r1") is None  # readers are not blocked in WAL mode
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        await store.create_run(RunRecord("r1", "wf", "{}"))
        assert await store.get_run("r1") is not None
    finally:
        await store.close()


async def test_a_lock_held_for_a_while_is_retried_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another connection holds the write lock for a second, past busy_timeout: the Runtime's
    call is retried until the lock is released and then succeeds, logging exactly one warning
    that says what failed and for how long it will retry."""
    caplog.set_level(logging.INFO, logger="coro_durable")
    path = tmp_path / "runs.db"
    async with cd.Runtime(url(path, "busy_timeout=100"), worker=False, store_deadline=30) as rt:
        blocker = raw(path)
        blocker.execute("BEGIN IMMEDIATE")

        async def release_after_a_second() -> None:
            await anyio.sleep(1.0)
            blocker.execute("ROLLBACK")
            blocker.close()

        async with anyio.create_task_group() as tg:
            tg.start_soon(release_after_a_second)
            started = time.monotonic()
            handle = await rt.start(sqlite_nothing, run_id="r1")
        assert time.monotonic() - started >= 0.9
        assert handle.created
    warnings = [r for r in caplog.records if r.name == "coro_durable.runtime" and r.levelno >= 30]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "create_run" in message and "busy_timeout" in message and "30" in message


@cd.workflow(name="sqlite_specific_nothing")
async def sqlite_nothing() -> None:
    return None


async def test_fencing_holds_against_a_writer_in_another_connection(tmp_path: Path) -> None:
    """An epoch bumped by another connection (a takeover elsewhere) fences our next write."""
    path = tmp_path / "runs.db"
    store = SqliteStore(url(path))
    try:
        await store.create_run(RunRecord("r1", "wf", "{}"))
        [run] = await store.claim(ClaimRequest("w", ("wf",), 1, 30, 3))
        conn = raw(path)
        conn.execute("UPDATE runs SET epoch = epoch + 1 WHERE run_id = 'r1'")
        conn.close()
        with pytest.raises(LeaseLost):
            await store.append(
                "r1", run.epoch, [JournalEntry(0, "call", "f", "d", "ok", result="1").sealed()]
            )
        assert await store.load_journal("r1") == []
    finally:
        await store.close()


# ---- several processes ---------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import json, sys, time, anyio
    from coro_durable.store._sqlite import SqliteStore
    from coro_durable.store import ClaimRequest
    from coro_durable.journal._records import JournalEntry

    async def main(url, name, start_at):
        store = SqliteStore(url)
        await store.open()
        await anyio.sleep(max(0.0, float(start_at) - time.time()))  # all processes start claiming together
        got = []
        while True:
            runs = await store.claim(ClaimRequest(name, ("wf",), 2, 60, 3))
            if not runs:
                break
            for run in runs:
                entry = JournalEntry(0, "call", "f", "d", "ok", result=json.dumps(name)).sealed()
                await store.append(run.run_id, run.epoch, [entry])
                got.append(run.run_id)
        await store.close()
        print(json.dumps(got))

    anyio.run(main, *sys.argv[1:])
    """
)


def run_processes(script: str, *args: str, count: int) -> list[str]:
    """Run ``count`` copies of ``script`` that start working together; return their outputs."""
    start_at = str(time.time() + 2.0)  # after every interpreter has started
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *args, f"p{i}", start_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:  # never leave a process or its pipes behind for the next test
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    for code, _, err in results:
        assert code == 0, err
    return [out for _, out, _ in results]


@pytest.mark.slow
def test_processes_claiming_one_file_never_share_a_run(tmp_path: Path) -> None:
    """Three processes claiming and journaling from one file at once each get disjoint runs."""
    path = tmp_path / "shared.db"
    n = 90

    async def seed() -> None:
        store = SqliteStore(url(path))
        try:
            for i in range(n):
                await store.create_run(RunRecord(f"r{i:03}", "wf", "{}"))
        finally:
            await store.close()

    async def check() -> None:
        store = SqliteStore(url(path))
        try:
            for run in await store.list_runs(RunQuery(limit=n)):
                assert run.epoch == 1 and run.steps == 1
                journal = await store.load_journal(run.run_id)
                assert journal[0].value == run.owner  # journaled by the process that claimed it
        finally:
            await store.close()

    anyio.run(seed)
    claimed = [r for out in run_processes(_WORKER, url(path), count=3) for r in json.loads(out)]
    assert sorted(claimed) == [f"r{i:03}" for i in range(n)]  # each run exactly once
    anyio.run(check)


_OPENER = textwrap.dedent(
    """
    import sys, time, anyio
    from coro_durable.store._sqlite import SqliteStore
    from coro_durable.journal._records import RunRecord

    async def main(url, name, start_at):
        time.sleep(max(0.0, float(start_at) - time.time()))
        store = SqliteStore(url)
        await store.open()  # all processes create and migrate the fresh file at once
        await store.create_run(RunRecord(name, "wf", "{}"))
        await store.close()

    anyio.run(main, *sys.argv[1:])
    """
)


@pytest.mark.slow
def test_processes_opening_a_fresh_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Four processes opening the same new file together all succeed on one schema."""
    path = tmp_path / "fresh.db"
    run_processes(_OPENER, url(path), count=4)
    conn = raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert sorted(r[0] for r in conn.execute("SELECT run_id FROM runs")) == [
        "p0", "p1", "p2", "p3"
    ]  # fmt: skip
    conn.close()


# ---- group commit ------------------------------------------------------------------------------


async def claimed_runs(store: SqliteStore, n: int) -> dict[str, int]:
    return await claimed(store, [f"r{i}" for i in range(n)])


async def test_a_failed_commit_fails_every_write_of_its_batch(tmp_path: Path) -> None:
    """A batch whose COMMIT fails (one of its writes breaks a deferred foreign key, which SQLite
    checks at COMMIT) is rolled back whole: every write in it gets the error, none is on disk,
    and each write retried alone then lands."""
    store = SqliteStore(url(tmp_path / "runs.db"))
    try:

        def schema(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            conn.execute(
                "CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER "
                "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )

        await store._read(schema)
        epochs = await claimed_runs(store, 6)

        def poison(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO child VALUES (1, 999)")  # no parent 999: COMMIT fails

        def append(run_id: str) -> Write:
            return lambda: store.append(run_id, epochs[run_id], [entry(run_id, 0)])

        appends = [append(r) for r in ("r1", "r2", "r3")]

        def park() -> Awaitable[None]:
            return store.park("r4", epochs["r4"], None, signal_wait("go"))

        outcomes = await batch_after_one(
            store,
            lambda: store.append("r0", epochs["r0"], [entry("r0", 0)]),
            *appends,
            park,
            lambda: store._write(poison),
        )
        assert all(isinstance(o, StoreError) for o in outcomes), outcomes
        assert all("FOREIGN KEY constraint failed" in str(o) for o in outcomes)
        assert [e.seq for e in await store.load_journal("r0")] == [0]  # its own commit
        for run_id in ("r1", "r2", "r3"):
            assert await store.load_journal(run_id) == []
        r4 = await store.get_run("r4")
        assert r4 is not None and r4.status == RunStatus.RUNNING
        for write in (*appends, park):
            await write()
        for run_id in ("r1", "r2", "r3"):
            assert [e.seq for e in await store.load_journal(run_id)] == [0]
    finally:
        await store.close()


async def test_a_value_sqlite_cannot_bind_fails_only_its_write(tmp_path: Path) -> None:
    """In a batch, a write SQLite refuses for its values (a lone surrogate) fails alone: it is
    rolled back to its savepoint and the others commit."""
    store = SqliteStore(url(tmp_path / "runs.db"))
    try:
        epochs = await claimed_runs(store, 4)
        outcomes = await batch_after_one(
            store,
            lambda: store.append("r0", epochs["r0"], [entry("r0", 0)]),
            lambda: store.append("r1", epochs["r1"], [entry("r1", 0)]),
            lambda: store.create_run(RunRecord("bad", "wf", '"\udc80"')),
            lambda: store.append("r2", epochs["r2"], [entry("r2", 0)]),
            lambda: store.finish("r3", epochs["r3"], RunStatus.COMPLETED, "1", None),
        )
        assert isinstance(outcomes[1], StoreError) and "cannot store" in str(outcomes[1])
        assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
        assert await store.get_run("bad") is None
        for run_id in ("r1", "r2"):
            assert [e.seq for e in await store.load_journal(run_id)] == [0]
        r3 = await store.get_run("r3")
        assert r3 is not None and r3.status == RunStatus.COMPLETED
    finally:
        await store.close()
