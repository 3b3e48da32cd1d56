"""What only the PostgreSQL store does: URL options, migrations, one-round-trip appends, outages,
killed connections, LISTEN/NOTIFY wake-ups and error translation.

Every test runs under asyncio and trio against the machine's PostgreSQL server
(``$CORO_DURABLE_TEST_PG``, default postgresql://postgres@127.0.0.1:5432/test) in a fresh schema
that the session drops at the end. Outages are simulated with a TCP proxy that this test file runs
on 127.0.0.1 and cuts at will, so the shared server itself is never restarted.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import pytest

import coro_durable as cd
from conftest import PG_URL, pg_test_url
from coro_durable.errors import (
    ConfigurationError,
    ConflictError,
    LeaseLost,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from coro_durable.journal._records import JournalEntry, RunRecord, WorkerRecord
from coro_durable.store import ClaimRequest
from coro_durable.testing import wait_for_status
from coro_durable.testing.conformance import signal_wait
from group_commit_common import Write, batch_after_one, claimed
from group_commit_common import entry as gc_entry

pytest.importorskip(
    "coro_durable_postgres",
    reason="coro-durable-postgres is not installed: pip install -e backends/postgres",
)
import psycopg  # after the skip: psycopg comes with the plugin
from coro_durable_postgres import SCHEMA_VERSION, PostgresStore
from coro_durable_postgres._url import parse_url

pytestmark = pytest.mark.anyio

CALLS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


def sql(query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement on the test server with a plain connection (outside any store)."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description is not None else []


def entry(seq: int, result: str = "1") -> JournalEntry:
    return JournalEntry(seq, "call", "step", "d0", "ok", None, result, key=f"r:{seq}").sealed()


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def running(store: PostgresStore, run_id: str = "r1") -> int:
    await store.create_run(RunRecord(run_id, "wf", "{}"))
    (run,) = await store.claim(ClaimRequest("w1", ("wf",), 1, 30, 3))
    return run.epoch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- URL and plugin --------------------------------------------------------------------------


def test_url_options_are_ours_and_the_rest_goes_to_libpq() -> None:
    """coro_durable's query options are parsed and removed; libpq's are passed through."""
    opts = parse_url(
        "postgres://u:secret@db.example:6543/app?schema=tenant_1&pool_min=2&pool_max=7"
        "&pool_timeout=1.5&open_timeout=0&driver=thread&prepare_threshold=none"
        "&sslmode=require&options=-c%20statement_timeout%3D5000"
    )
    assert (opts.schema, opts.pool_min, opts.pool_max, opts.pool_timeout) == ("tenant_1", 2, 7, 1.5)
    assert (opts.open_timeout, opts.driver, opts.prepare_threshold) == (0.0, "thread", None)
    assert opts.dsn.startswith("postgresql://u:secret@db.example:6543/app?")
    assert "sslmode=require" in opts.dsn and "options=-c%20statement_timeout%3D5000" in opts.dsn
    assert "schema=" not in opts.dsn and "pool_max" not in opts.dsn
    assert "application_name=coro_durable" in opts.dsn and "connect_timeout=5" in opts.dsn
    assert "secret" not in opts.redacted and "secret" not in repr(PostgresStore(opts.dsn))
    assert parse_url("postgresql://h/db").schema == "coro_durable"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("schema=Bad-Name", "schema must be a lower-case identifier"),
        ("schema=1abc", "schema must be"),
        ("pool_max=0", "pool_max must be a whole number >= 1"),
        ("pool_min=5&pool_max=2", "pool_max (2) is below pool_min (5)"),
        ("pool_timeout=soon", "pool_timeout must be a number of seconds"),
        ("driver=gevent", "driver must be one of auto, async, thread"),
        ("schema=a&schema=b", "gives schema twice"),
    ],
)
def test_bad_url_options_are_configuration_errors(query: str, message: str) -> None:
    """A bad option is refused up front with a message naming it."""
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PostgresStore(f"postgresql://h/db?{query}")


def test_both_url_schemes_find_the_plugin() -> None:
    """postgresql:// and postgres:// resolve to PostgresStore through the entry points."""
    for scheme in ("postgresql", "postgres"):
        store = cd.open_store(f"{scheme}://u@h/db?schema=x")
        assert isinstance(store, PostgresStore) and store.schema == "x"


# ---- schema and migrations -------------------------------------------------------------------


async def test_concurrent_opens_migrate_exactly_once() -> None:
    """Stores opening a fresh schema at the same moment (each on its own connection, in its own
    thread) serialise on the advisory lock: the schema is created once, every open succeeds."""
    url = pg_test_url()
    stores = [PostgresStore(url) for _ in range(4)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        schema = stores[0].schema
        versions = sql(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert (await stores[1].settings())["schema_version"] == SCHEMA_VERSION
        run, created = await stores[2].create_run(RunRecord("r1", "wf", "{}"))
        assert created and (await stores[3].get_run("r1")) == run
    finally:
        for store in stores:
            await store.close()


async def test_a_version_2_schema_is_migrated_to_keep_crash_count_on_pending_appends() -> None:
    """A schema made before migration 3, whose append functions reset crash_count on every
    append, is migrated on open: its functions are replaced, so an append of pending entries
    leaves crash_count alone (and a final one still resets it)."""
    url = pg_test_url()
    pending = JournalEntry(0, "call", "step", "d0", "pending", None, None, key="r:0").sealed()

    async def crashes(store: PostgresStore) -> int:
        run = await store.get_run("r1")
        assert run is not None
        return run.crash_count

    async with opened(url) as store:
        schema = store.schema
        # Back to version 2: its one-entry append reset crash_count unconditionally.
        create = next(s for step in store._sql.migrations for s in step if ".append_entry(" in s)
        reset = "CASE WHEN p_status = 'pending' THEN crash_count ELSE 0 END"
        assert create.count(reset) == 2
        sql(create.replace(reset, "0"))
        sql(f'DELETE FROM "{schema}".schema_version WHERE version > 2')
        sql(f'DROP TABLE IF EXISTS "{schema}".workers')  # a version-2 schema had no registry
        epoch = await running(store)
        await store.record_crash("r1", epoch, "boom", time.time() - 1, max_crashes=5)
        (run,) = await store.claim(ClaimRequest("w1", ("wf",), 1, 30, 5))
        await store.append("r1", run.epoch, [pending])
        assert await crashes(store) == 0  # the old behaviour
        await store.record_crash("r1", run.epoch, "boom", time.time() - 1, max_crashes=5)
    async with opened(url) as store:
        versions = sql(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)] and SCHEMA_VERSION >= 3
        (run,) = await store.claim(ClaimRequest("w1", ("wf",), 1, 30, 5))
        assert run.crash_count == 1
        await store.append("r1", run.epoch, [pending])
        assert await crashes(store) == 1
        await store.append("r1", run.epoch, [entry(0)])
        assert await crashes(store) == 0


async def test_a_newer_schema_is_refused() -> None:
    """A schema written by a newer coro-durable-postgres is not misread: open() refuses it."""
    url = pg_test_url()
    async with opened(url) as store:
        sql(f'INSERT INTO "{store.schema}".schema_version (version) VALUES (%s)', [99])
    with pytest.raises(StoreError, match="version 99, newer than"):
        await PostgresStore(url).open()


async def test_a_version_2_schema_gains_the_worker_registry() -> None:
    """A schema from before the worker registry (version 2) is migrated on open: its runs are
    kept and workers can register."""
    url = pg_test_url()
    async with opened(url) as store:
        await store.create_run(RunRecord("kept", "wf", "{}"))
        sql(f'DROP TABLE "{store.schema}".workers')
        sql(f'DELETE FROM "{store.schema}".schema_version WHERE version > 2')
    async with opened(url) as store:
        assert (await store.settings())["schema_version"] == SCHEMA_VERSION >= 3
        assert (await store.get_run("kept")) is not None
        stored = await store.heartbeat_worker(WorkerRecord("w1", "h", 1, ("wf",)), 30.0)
        assert await store.list_workers() == [stored]


async def test_expired_worker_rows_are_deleted() -> None:
    """The registry cannot grow forever: the next heartbeat deletes the rows of workers that
    expired, and remove_worker deletes its row."""
    async with opened(pg_test_url()) as store:
        for i in range(20):
            await store.heartbeat_worker(WorkerRecord(f"gone-{i}", "h", i, ("wf",)), 0.05)
        await anyio.sleep(0.1)
        await store.heartbeat_worker(WorkerRecord("live", "h", 99, ("wf",)), 30.0)
        table = f'"{store.schema}".workers'
        assert sql(f"SELECT worker_id FROM {table}") == [("live",)]
        await store.remove_worker("live")
        assert sql(f"SELECT count(*) FROM {table}") == [(0,)]


async def test_synchronous_commit_off_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    """A server or role with synchronous_commit=off can lose acknowledged entries: say so."""
    url = pg_test_url(options="-c%20synchronous_commit%3Doff")
    with caplog.at_level(logging.WARNING, logger="coro_durable.postgres"):
        async with opened(url) as store:
            assert (await store.settings())["synchronous_commit"] == "off"
    assert "synchronous_commit is off" in caplog.text


# ---- drivers -----------------------------------------------------------------------------------


async def test_driver_follows_the_event_loop(anyio_backend: str) -> None:
    """asyncio uses psycopg's async pool; trio the blocking pool in threads; both can be forced
    where they work, and driver=async under trio is refused with an explanation."""
    async with opened(pg_test_url()) as store:
        assert store.driver == ("async" if anyio_backend == "asyncio" else "thread")
    async with opened(pg_test_url(driver="thread")) as store:
        assert store.driver == "thread"
        await running(store)
    if anyio_backend == "trio":
        with pytest.raises(ConfigurationError, match="driver=async needs asyncio"):
            await PostgresStore(pg_test_url(driver="async")).open()


# ---- the hot path ------------------------------------------------------------------------------


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement any psycopg connection executes from now on, in order."""
    seen: list[str] = []
    for cls in (psycopg.Connection, psycopg.AsyncConnection):
        original = cls.execute

        def execute(self: Any, query: Any, *args: Any, _original: Any = original, **kw: Any) -> Any:
            seen.append(str(query))
            return _original(self, query, *args, **kw)

        monkeypatch.setattr(cls, "execute", execute)
    return seen


async def test_append_is_one_statement_with_no_read_before_it(statements: list[str]) -> None:
    """A journal append, its fencing check included, is a single statement (one round trip):
    the server-side append_entry() function (append() for several entries) checks the epoch
    under the run's row lock and writes. A retried (identical) append, a pending entry replaced
    and a stale one are single statements too."""
    async with opened(pg_test_url()) as store:
        epoch = await running(store)
        statements.clear()
        await store.append("r1", epoch, [entry(0)])
        assert len(statements) == 1
        assert statements[0].startswith(f'SELECT "{store.schema}".append_entry(')
        await store.append("r1", epoch, [entry(0)])  # a retry after a lost acknowledgement
        with pytest.raises(LeaseLost):
            await store.append("r1", epoch + 1, [entry(1)])
        with pytest.raises(RunNotFoundError):
            await store.append("r9", epoch, [entry(1)])
        with pytest.raises(ConflictError, match="seq 0 already holds a final call"):
            await store.append("r1", epoch, [entry(0, result="2")])
        pending = JournalEntry(1, "sleep", "", "d0", "pending", key="r:1", due_at=5).sealed()
        await store.append("r1", epoch, [pending])
        await store.append("r1", epoch, [entry(1)])  # replaces the pending entry
        await store.append("r1", epoch, [entry(2), entry(3)])
        assert len(statements) == 8
        assert all(".append_entry(" in s for s in statements[:7])
        assert statements[7].startswith(f'SELECT "{store.schema}".append(')
        assert [(e.seq, e.status) for e in await store.load_journal("r1")] == [
            (0, "ok"), (1, "ok"), (2, "ok"), (3, "ok"),
        ]  # fmt: skip
        run = await store.get_run("r1")
        assert run is not None and run.steps == 4


async def test_a_rejected_batch_writes_nothing() -> None:
    """A conflict anywhere in a batch rolls back the whole call, earlier entries included."""
    async with opened(pg_test_url()) as store:
        epoch = await running(store)
        await store.append("r1", epoch, [entry(1)])
        with pytest.raises(ConflictError):
            await store.append("r1", epoch, [entry(0), entry(1, result="2"), entry(2)])
        assert [e.seq for e in await store.load_journal("r1")] == [1]


# ---- errors --------------------------------------------------------------------------------------


async def test_driver_errors_are_translated() -> None:
    """No psycopg exception escapes: a broken schema gives StoreError (caused by psycopg's),
    text PostgreSQL cannot hold a ConfigurationError, an unknown database a StoreError at once."""
    async with opened(pg_test_url()) as store:
        sql(f'DROP TABLE "{store.schema}".journal')
        with pytest.raises(StoreError, match="UndefinedTable") as info:
            await store.load_journal("r1")
        assert isinstance(info.value.__cause__, psycopg.Error)
        with pytest.raises(ConfigurationError, match="NUL"):
            await store.create_run(RunRecord("r1", "bad\x00workflow", "{}"))
        with pytest.raises(RunNotFoundError):
            await store.deliver_signal("nope", "go", "1", "s1")
    parts = urlsplit(PG_URL)
    missing_db = urlunsplit((parts.scheme, parts.netloc, "/cdt_no_such_db", "", ""))
    started = time.monotonic()
    with pytest.raises(StoreError, match="does not exist") as refused:
        await PostgresStore(f"{missing_db}?open_timeout=30").open()
    assert not isinstance(refused.value, StoreUnavailableError)
    assert time.monotonic() - started < 5  # refused at once, not retried for open_timeout


async def test_unreachable_server_is_store_unavailable_after_open_timeout() -> None:
    """Nothing listens on the port: open() retries for open_timeout, then StoreUnavailableError;
    a Runtime on that URL fails the same way when it opens."""
    parts = urlsplit(PG_URL)
    url = urlunsplit((parts.scheme, f"postgres@127.0.0.1:{free_port()}", parts.path, "", ""))
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="open_timeout=1s") as info:
        await PostgresStore(f"{url}?schema=cdt_unreachable&open_timeout=1").open()
    assert 1.0 <= time.monotonic() - started < 6
    assert "Connection refused" in str(info.value) or "connect" in str(info.value)
    with pytest.raises(StoreUnavailableError):
        async with cd.Runtime(f"{url}?schema=cdt_unreachable&open_timeout=0.2"):
            pass


# ---- outages ---------------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy to the test server that can drop every connection and refuse new ones."""

    def __init__(self) -> None:
        target = urlsplit(PG_URL)
        self.target = (target.hostname or "127.0.0.1", target.port or 5432)
        self.port = 0
        self.up = True
        self._scopes: set[anyio.CancelScope] = set()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            if not self.up:
                return
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    server = await anyio.connect_tcp(*self.target)
                    async with server, anyio.create_task_group() as tg:
                        tg.start_soon(self._pump, client, server, scope)
                        await self._pump(server, client, scope)
                finally:
                    self._scopes.discard(scope)

    @staticmethod
    async def _pump(
        src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()  # one side closed: close the other

    def cut(self) -> None:
        """Drop every open connection and refuse new ones (the server "goes away")."""
        self.up = False
        for scope in list(self._scopes):
            scope.cancel()

    def restore(self) -> None:
        self.up = True

    def url(self, **params: str) -> str:
        parts = urlsplit(pg_test_url(**params))
        netloc = (
            f"{parts.username}@127.0.0.1:{self.port}"
            if parts.username
            else f"127.0.0.1:{self.port}"
        )
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    p = Proxy()
    async with anyio.create_task_group() as tg:
        await tg.start(p.serve)
        yield p
        tg.cancel_scope.cancel()


def counted(tag: str) -> str:
    CALLS[cd.idempotency_key()] += 1
    return tag


@cd.workflow
async def many_steps(n: int, pause: float) -> list[str]:
    done = []
    for i in range(n):
        done.append(await cd.call(counted, f"s{i}"))
        await cd.sleep(pause)
    return done


async def test_server_outage_mid_run_resumes_with_each_step_once(proxy: Proxy) -> None:
    """Every connection drops mid-run and the server refuses connections for 1.5 s: the runtime
    retries with backoff, the pool reconnects, and the run completes with each step run once."""
    url = proxy.url(pool_timeout="0.5")
    async with cd.Runtime(url, lease_ttl=8.0, poll_interval=0.05, store_deadline=30) as rt:
        handle = await rt.start(many_steps, 30, 0.02, run_id="outage")
        while len(CALLS) < 5:
            await anyio.sleep(0.01)
        proxy.cut()
        await anyio.sleep(1.5)
        proxy.restore()
        assert await handle.result(timeout=30) == [f"s{i}" for i in range(30)]
        journal = await rt.history("outage")
    assert len(CALLS) == 30 and set(CALLS.values()) == {1}
    assert len([e for e in journal if e.kind == "call"]) == 30


async def test_a_short_outage_is_retried_with_one_warning(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The server unreachable for a second while a client starts a run (every connection
    dropped, new ones refused): the call is retried until the server is back and then
    succeeds, and the runtime logs exactly one warning saying what failed and for how long it
    will retry."""
    caplog.set_level(logging.INFO, logger="coro_durable")
    async with cd.Runtime(proxy.url(pool_timeout="0.3"), worker=False, store_deadline=30) as rt:
        await rt.start(many_steps, 1, 0.0, run_id="before")
        proxy.cut()

        async def back_after_a_second() -> None:
            await anyio.sleep(1.0)
            proxy.restore()

        async with anyio.create_task_group() as tg:
            tg.start_soon(back_after_a_second)
            started = time.monotonic()
            handle = await rt.start(many_steps, 1, 0.0, run_id="during")
        assert time.monotonic() - started >= 0.9
        assert handle.created and (await rt.describe("during")).status == "pending"
    warnings = [r for r in caplog.records if r.name == "coro_durable.runtime" and r.levelno >= 30]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "create_run" in warnings[0].getMessage() and "30" in warnings[0].getMessage()


async def test_store_down_past_the_deadline_is_store_unavailable(proxy: Proxy) -> None:
    """The server stays unreachable longer than store_deadline: StoreUnavailableError."""
    async with cd.Runtime(proxy.url(pool_timeout="0.3"), worker=False, store_deadline=1.0) as rt:
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="kept failing"):
            await rt.start(many_steps, 1, 0.0)
        assert 0.9 <= time.monotonic() - started < 6
        proxy.restore()
        with anyio.fail_after(10):  # and it recovers once the server is back
            while True:
                try:
                    handle = await rt.start(many_steps, 1, 0.0)
                    break
                except StoreUnavailableError:
                    pass
        assert (await rt.describe(handle.run_id)).status == "pending"


def kill_backends(application_name: str) -> int:
    rows = sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        [application_name],
    )
    return len(rows)


async def test_killed_connections_mid_run_resume_with_each_step_once() -> None:
    """pg_terminate_backend on every connection of the worker (pool and LISTEN) several times
    during a run: retries and resumption, never a lost or duplicated step."""
    tag = f"cdt_kill_{uuid.uuid4().hex[:8]}"
    url = pg_test_url(application_name=tag, pool_max="4")
    killed = 0
    async with cd.Runtime(url, lease_ttl=8.0, poll_interval=0.05) as rt:
        handle = await rt.start(many_steps, 40, 0.01, run_id="killed")
        for _ in range(5):
            await anyio.sleep(0.12)
            killed += await anyio.to_thread.run_sync(kill_backends, tag)
        assert await handle.result(timeout=30) == [f"s{i}" for i in range(40)]
    assert killed >= 5
    assert len(CALLS) == 40 and set(CALLS.values()) == {1}


# ---- wake-ups ---------------------------------------------------------------------------------------


@cd.workflow
async def quick(x: int) -> int:
    await cd.call(counted, str(x))
    return x + 1


@cd.workflow
async def waits_for_go() -> Any:
    return await cd.await_signal("go")


@cd.workflow
async def naps(seconds: float) -> str:
    await cd.sleep(seconds)
    return "rested"


async def test_notify_wakes_a_slow_polling_worker_at_once() -> None:
    """An idle worker polling every 10 s picks up a run started by another process, a signal and
    a due timer at once: LISTEN/NOTIFY, and the watcher's own timer, not polling."""
    url = pg_test_url()
    slow: dict[str, Any] = {"poll_interval": 10.0, "lease_ttl": 5.0, "inline_wait": 0.1}
    async with cd.Runtime(url, **slow) as _worker, cd.Runtime(url, worker=False, **slow) as client:
        # Each step starts once the worker is idle (waiting for work): the Runtime's worker loop
        # can still miss a wake-up that arrives while it is busy claiming (see the report).
        await anyio.sleep(0.3)
        started = time.monotonic()
        assert await (await client.start(quick, 1)).result(timeout=5) == 2
        assert time.monotonic() - started < 1.0

        await anyio.sleep(0.3)
        handle = await client.start(waits_for_go)
        await wait_for_status(client, handle.run_id, "waiting")
        await anyio.sleep(0.3)
        started = time.monotonic()
        await client.signal(handle.run_id, "go", {"ok": True})
        assert await handle.result(timeout=5) == {"ok": True}
        assert time.monotonic() - started < 1.0

        await anyio.sleep(0.3)
        started = time.monotonic()
        assert await (await client.start(naps, 1.0)).result(timeout=8) == "rested"
        assert 1.0 <= time.monotonic() - started < 3.0  # not the 10 s poll


async def test_watch_keeps_going_when_its_connection_is_killed() -> None:
    """The LISTEN connection is terminated: the watcher reconnects and wake-ups keep working."""
    tag = f"cdt_watch_{uuid.uuid4().hex[:8]}"
    url = pg_test_url(application_name=tag)
    slow: dict[str, Any] = {"poll_interval": 10.0, "lease_ttl": 5.0}
    async with cd.Runtime(url, **slow) as _worker, cd.Runtime(url, worker=False, **slow) as client:
        await anyio.sleep(0.3)
        assert await anyio.to_thread.run_sync(kill_backends, tag) >= 2
        await anyio.sleep(0.5)  # reconnect backoff
        started = time.monotonic()
        assert await (await client.start(quick, 5)).result(timeout=5) == 6
        assert time.monotonic() - started < 1.0


async def test_listeners_run_on_the_event_loop_for_remote_work() -> None:
    """watch() calls the listeners on the event loop thread when another store creates a run,
    and not for the store's own writes (those are announced directly)."""
    import threading

    url = pg_test_url()
    async with opened(url) as watched, opened(url) as other:
        calls: list[int] = []
        watched.subscribe(lambda: calls.append(threading.get_ident()))
        async with anyio.create_task_group() as tg:
            tg.start_soon(watched.watch)
            await anyio.sleep(0.3)
            first = len(calls)  # the watcher announces itself once when it (re)connects
            await other.create_run(RunRecord("remote", "wf", "{}"))
            with anyio.fail_after(2):
                while len(calls) == first:
                    await anyio.sleep(0.01)
            await watched.create_run(RunRecord("local", "wf", "{}"))
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
        assert set(calls) == {threading.get_ident()}
        assert len(calls) == first + 2  # remote one via NOTIFY, local one directly, no echo


async def test_watch_rechecks_its_connection_and_keeps_hearing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a short resync interval the watcher health-checks its connection often; remote
    wake-ups still reach the listeners, including any read while it ran its check."""
    import coro_durable_postgres._store as pg_store

    monkeypatch.setattr(pg_store, "RESYNC_INTERVAL", 0.05)
    url = pg_test_url()
    async with opened(url) as watched, opened(url) as other:
        calls: list[None] = []
        watched.subscribe(lambda: calls.append(None))
        async with anyio.create_task_group() as tg:
            tg.start_soon(watched.watch)
            await anyio.sleep(0.3)
            for i in range(5):
                before = len(calls)
                await other.create_run(RunRecord(f"r{i}", "wf", "{}"))
                with anyio.fail_after(2):
                    while len(calls) == before:
                        await anyio.sleep(0.01)
                await anyio.sleep(0.07)
            tg.cancel_scope.cancel()


# ---- group commit ------------------------------------------------------------------------------


async def test_group_commit_is_one_statement_for_the_batch(statements: list[str]) -> None:
    """Concurrent appends, a park and a finish queued behind one commit go to the server as ONE
    statement (one round trip, one transaction): ``write_batch()``."""
    async with opened(pg_test_url()) as store:
        epochs = await claimed(store, [f"r{i}" for i in range(6)])
        statements.clear()
        outcomes = await batch_after_one(
            store,
            lambda: store.append("r0", epochs["r0"], [gc_entry("r0", 0)]),
            *(
                (lambda r=r: store.append(r, epochs[r], [gc_entry(r, 0)]))
                for r in ("r1", "r2", "r3")
            ),
            lambda: store.park("r4", epochs["r4"], None, signal_wait("go")),
            lambda: store.finish("r5", epochs["r5"], cd.RunStatus.COMPLETED, "7", None),
        )
        assert outcomes == [None] * 5
        assert len(statements) == 2
        assert statements[0].startswith(f'SELECT "{store.schema}".append_entry(')
        assert statements[1].startswith(f'SELECT "{store.schema}".write_batch(')


async def test_a_failed_commit_fails_every_write_of_its_batch() -> None:
    """A batch whose commit fails (a deferred constraint trigger, checked at COMMIT, rejects one
    of its entries) is rolled back whole: every write of the batch gets the error, none is
    stored, and each one retried alone then lands (but the poisoned one)."""
    async with opened(pg_test_url()) as store:
        s = f'"{store.schema}"'
        sql(
            f"CREATE FUNCTION {s}.poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.result = '666' THEN RAISE EXCEPTION 'poisoned entry'; END IF; "
            "RETURN NULL; END $$"
        )
        sql(
            f"CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON {s}.journal "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}.poison()"
        )
        epochs = await claimed(store, [f"r{i}" for i in range(6)])

        def append(run_id: str) -> Write:
            return lambda: store.append(run_id, epochs[run_id], [gc_entry(run_id, 0)])

        appends = [append(r) for r in ("r1", "r2", "r3")]

        def finish() -> Awaitable[None]:
            return store.finish("r4", epochs["r4"], cd.RunStatus.COMPLETED, "7", None)

        outcomes = await batch_after_one(
            store,
            lambda: store.append("r0", epochs["r0"], [gc_entry("r0", 0)]),
            *appends,
            finish,
            lambda: store.append("r5", epochs["r5"], [gc_entry("r5", 0, result="666")]),
        )
        assert all(isinstance(o, StoreError) for o in outcomes), outcomes
        assert all("poisoned entry" in str(o) for o in outcomes)
        assert [e.seq for e in await store.load_journal("r0")] == [0]  # its own commit
        for run_id in ("r1", "r2", "r3", "r5"):
            assert await store.load_journal(run_id) == []
        r4 = await store.get_run("r4")
        assert r4 is not None and r4.status == cd.RunStatus.RUNNING
        for write in (*appends, finish):
            await write()
        for run_id in ("r1", "r2", "r3"):
            assert [e.seq for e in await store.load_journal(run_id)] == [0]
        r4 = await store.get_run("r4")
        assert r4 is not None and r4.status == cd.RunStatus.COMPLETED
