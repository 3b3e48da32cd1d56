"""Permanent store errors fail at once, saying what to fix; transient ones are retried, logging one
warning (issue 11, item 7).

Permanent: a read-only SQLite file, a path whose directory cannot be created, an unresolvable
Postgres or Redis host, a missing Postgres database, an unknown role, refused credentials.
Transient (and a plain StoreError from a third-party store): retried by the runtime up to
``store_deadline``, with exactly one warning on the ``coro_durable`` logger per failing call.
Network outages through a proxy are tested in test_postgres_specific.py and
test_redis_specific.py, a locked SQLite file in test_sqlite_specific.py.
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import coro_durable as cd
from conftest import PG_URL, pg_test_url, redis_test_url
from coro_durable import errors
from coro_durable.journal._records import RunRecord

pytestmark = pytest.mark.anyio

FAST = 5.0  # a permanent error must surface well within this many seconds


def _installed(scheme: str) -> bool:
    return any(
        ep.name == scheme for ep in importlib.metadata.entry_points(group="coro_durable.stores")
    )


needs_postgres = pytest.mark.skipif(not _installed("postgresql"), reason="no Postgres plugin")
needs_redis = pytest.mark.skipif(not _installed("redis"), reason="no Redis plugin")


@cd.workflow
async def nothing() -> str:
    return "done"


def store_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "coro_durable.runtime" and r.levelno == logging.WARNING
    ]


# -- the tree -------------------------------------------------------------------------------------


def test_store_errors_are_split_into_transient_and_permanent() -> None:
    """TransientStoreError and PermanentStoreError are StoreErrors; StoreUnavailableError is
    transient, a missing store plugin is permanent (and still an ImportError)."""
    assert issubclass(errors.TransientStoreError, errors.StoreError)
    assert issubclass(errors.PermanentStoreError, errors.StoreError)
    assert not issubclass(errors.TransientStoreError, errors.PermanentStoreError)
    assert issubclass(errors.StoreUnavailableError, errors.TransientStoreError)
    assert issubclass(errors.StorePluginMissingError, errors.PermanentStoreError)
    assert issubclass(errors.StorePluginMissingError, ImportError)
    for name in ("ConflictError", "CorruptJournalError"):
        cls = getattr(errors, name)
        assert issubclass(cls, errors.StoreError)
        assert not issubclass(cls, errors.TransientStoreError | errors.PermanentStoreError)


# -- how the runtime treats each kind (a third-party store raising them) ---------------------------


class FailingStore(cd.MemoryStore):
    """A third-party store whose create_run raises ``error`` for its first ``times`` calls."""

    def __init__(self, error: errors.StoreError, times: int) -> None:
        super().__init__()
        self.error = error
        self.times = times
        self.calls = 0

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return await super().create_run(run)


@pytest.mark.parametrize(
    "error",
    [
        errors.StoreError("connection reset by the third-party backend"),
        errors.TransientStoreError("connection reset by the backend"),
    ],
    ids=["plain", "transient"],
)
async def test_a_transient_error_is_retried_with_one_warning(
    error: errors.StoreError, caplog: pytest.LogCaptureFixture
) -> None:
    """A call failing four times with a transient (or plain, unclassified) StoreError is retried
    until it succeeds, and logs exactly one warning naming the failure and the retry deadline."""
    caplog.set_level(logging.INFO, logger="coro_durable")
    store = FailingStore(error, times=4)
    async with cd.Runtime(store, worker=False, store_deadline=42.0) as rt:
        handle = await rt.start(nothing, run_id="r1")
        assert handle.created and store.calls == 5
        assert (await rt.describe("r1")).status == cd.RunStatus.PENDING
    warnings = store_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "create_run" in message and str(error) in message
    assert "42" in message and "retry" in message


async def test_a_permanent_error_is_raised_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """A PermanentStoreError is raised by the first failing call, not retried, and no retry
    warning is logged."""
    caplog.set_level(logging.INFO, logger="coro_durable")
    store = FailingStore(errors.PermanentStoreError("the database is read-only; fix it"), 100)
    async with cd.Runtime(store, worker=False, store_deadline=60.0) as rt:
        started = time.monotonic()
        with pytest.raises(errors.PermanentStoreError, match="read-only"):
            await rt.start(nothing, run_id="r1")
        assert time.monotonic() - started < 1.0
        assert store.calls == 1
    assert store_warnings(caplog) == []


async def test_a_transient_error_past_the_deadline_is_store_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transient error that lasts past store_deadline ends in StoreUnavailableError after that
    long, with one warning logged in all."""
    caplog.set_level(logging.INFO, logger="coro_durable")
    store = FailingStore(errors.TransientStoreError("connection refused"), times=10_000)
    async with cd.Runtime(store, worker=False, store_deadline=0.6) as rt:
        started = time.monotonic()
        with pytest.raises(errors.StoreUnavailableError, match="connection refused"):
            await rt.start(nothing, run_id="r1")
        assert 0.3 <= time.monotonic() - started < 3
        assert store.calls > 2
    assert len(store_warnings(caplog)) == 1


# -- SQLite -----------------------------------------------------------------------------------------


async def test_a_read_only_sqlite_file_fails_at_once(tmp_path: Path) -> None:
    """A SQLite file that can be read but not written (here opened with ``?mode=ro``, which works
    for root too; a file without write permission fails the same way): the Runtime opens and
    reads, and the first write raises PermanentStoreError at once, naming the file."""
    path = tmp_path / "runs.db"
    async with cd.Runtime(f"sqlite:///{path}", worker=False) as rt:
        await rt.start(nothing, run_id="before")
    async with cd.Runtime(f"sqlite:///{path}?mode=ro", worker=False) as rt:
        assert (await rt.describe("before")).status == cd.RunStatus.PENDING
        started = time.monotonic()
        with pytest.raises(errors.PermanentStoreError) as info:
            await rt.start(nothing, run_id="after")
        assert time.monotonic() - started < FAST
        assert str(path) in str(info.value) and "read-only" in str(info.value)
        assert [r.run_id for r in await rt.list_runs()] == ["before"]


async def test_a_sqlite_file_that_cannot_be_created_fails_at_once(tmp_path: Path) -> None:
    """A store path whose parent is a regular file: opening the Runtime raises
    PermanentStoreError at once, naming the directory it could not create."""
    (tmp_path / "afile").write_text("x")
    path = tmp_path / "afile" / "runs.db"
    started = time.monotonic()
    with pytest.raises(errors.PermanentStoreError) as info:
        async with cd.Runtime(f"sqlite:///{path}"):
            pass
    assert time.monotonic() - started < FAST
    assert str(path.parent) in str(info.value)


async def test_a_read_only_sqlite_file_that_does_not_exist_fails_at_once(tmp_path: Path) -> None:
    """``?mode=ro`` on a file that does not exist: PermanentStoreError when the Runtime opens."""
    path = tmp_path / "missing.db"
    with pytest.raises(errors.PermanentStoreError, match=r"missing\.db"):
        async with cd.Runtime(f"sqlite:///{path}?mode=ro"):
            pass
    assert not path.exists()


# -- PostgreSQL -----------------------------------------------------------------------------------


def _pg_url(netloc: str | None = None, database: str | None = None) -> str:
    parts = urlsplit(pg_test_url())
    return urlunsplit(
        (
            parts.scheme,
            netloc or parts.netloc,
            f"/{database}" if database else parts.path,
            parts.query,
            "",
        )
    )


@needs_postgres
async def test_an_unresolvable_postgres_host_fails_at_once() -> None:
    """``postgresql://u@nonexistent.invalid/db``: the Runtime does not open; PermanentStoreError
    names the host, within seconds (not after open_timeout's 30 s or the pool's timeout)."""
    started = time.monotonic()
    with pytest.raises(errors.PermanentStoreError) as info:
        async with cd.Runtime("postgresql://u@nonexistent.invalid/db"):
            pass
    assert time.monotonic() - started < FAST
    assert "nonexistent.invalid" in str(info.value) and "host" in str(info.value)


@needs_postgres
async def test_a_missing_postgres_database_fails_at_once() -> None:
    """A database name that does not exist: PermanentStoreError at once, naming the database."""
    started = time.monotonic()
    with pytest.raises(errors.PermanentStoreError) as info:
        async with cd.Runtime(_pg_url(database="cdt_no_such_database")):
            pass
    assert time.monotonic() - started < FAST
    assert "cdt_no_such_database" in str(info.value) and "does not exist" in str(info.value)


@needs_postgres
async def test_an_unknown_postgres_role_fails_at_once() -> None:
    """A user the server does not know (an authentication failure): PermanentStoreError at once,
    naming the user."""
    host = urlsplit(PG_URL).netloc.rpartition("@")[2]
    started = time.monotonic()
    with pytest.raises(errors.PermanentStoreError) as info:
        async with cd.Runtime(_pg_url(netloc=f"cdt_no_such_role@{host}")):
            pass
    assert time.monotonic() - started < FAST
    assert "cdt_no_such_role" in str(info.value)


@pytest.fixture
def pg_role_without_create() -> Iterator[str]:
    """A login role with no CREATE privilege on the test database (dropped afterwards)."""
    import psycopg

    role = f"cdt_role_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        yield role
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@needs_postgres
async def test_a_postgres_role_without_privileges_fails_at_once(
    pg_role_without_create: str,
) -> None:
    """A role that may connect but not create the store's schema (SQLSTATE 42501): the Runtime
    does not open; PermanentStoreError says which privilege is missing."""
    host = urlsplit(PG_URL).netloc.rpartition("@")[2]
    started = time.monotonic()
    with pytest.raises(errors.PermanentStoreError) as info:
        async with cd.Runtime(_pg_url(netloc=f"{pg_role_without_create}@{host}")):
            pass
    assert time.monotonic() - started < FAST
    assert "permission denied" in str(info.value) and "GRANT" in str(info.value)


# -- Redis ------------------------------------------------------------------------------------------


def _redis_url(netloc: str, **params: Any) -> str:
    parts = urlsplit(redis_test_url(**params))
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@needs_redis
@pytest.mark.parametrize("transport", ["auto", "thread"])
async def test_an_unresolvable_redis_host_fails_at_once(transport: str) -> None:
    """``redis://nonexistent.invalid``: the Runtime does not open; PermanentStoreError names the
    host within seconds (not after open_timeout's 10 s), on every transport."""
    url = _redis_url("nonexistent.invalid:6379", transport=transport)
    started = time.monotonic()
    with pytest.raises(errors.PermanentStoreError) as info:
        async with cd.Runtime(url):
            pass
    assert time.monotonic() - started < FAST
    assert "nonexistent.invalid" in str(info.value) and "host" in str(info.value)


@needs_redis
@pytest.mark.parametrize("transport", ["auto", "thread"])
async def test_refused_redis_credentials_fail_at_once(transport: str) -> None:
    """A password the server refuses: PermanentStoreError at once, saying to fix the
    credentials in the URL."""
    host = urlsplit(redis_test_url()).netloc
    url = _redis_url(f"nobody:wrong@{host}", transport=transport)
    started = time.monotonic()
    with pytest.raises(errors.PermanentStoreError, match="credentials"):
        async with cd.Runtime(url):
            pass
    assert time.monotonic() - started < FAST
