"""Shared fixtures: every async test runs under asyncio and trio; store tests run on every store."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import coro_durable as cd

# Projects that our tests run in a pytest of their own (tests/test_conformance_kit.py).
collect_ignore = ["fixtures"]


def _plugin_installed(scheme: str) -> bool:
    group = importlib.metadata.entry_points(group="coro_durable.stores")
    return any(ep.name == scheme for ep in group)


# Postgres and Redis join every store-generic test once their plugins are installed.
STORES = ["memory", "sqlite"] + [
    kind
    for kind, scheme in (("postgres", "postgresql"), ("redis", "redis"))
    if _plugin_installed(scheme)
]
PG_URL = os.environ.get("CORO_DURABLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CORO_DURABLE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path) -> str:
    """A fresh, isolated store URL of each kind: a new file, Postgres schema or Redis key prefix."""
    tag = f"cdt_{uuid.uuid4().hex[:12]}"
    if store_kind == "memory":
        return "memory://"
    if store_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    if store_kind == "postgres":
        return pg_test_url(tag)
    return redis_test_url(f"{tag}:")


@pytest.fixture
def make_store(store_url: str) -> Callable[[], cd.Store]:
    """Build store objects on the same database (memory: the same object)."""
    shared: dict[str, cd.Store] = {}

    def make() -> cd.Store:
        if store_url == "memory://":
            if "memory" not in shared:
                shared["memory"] = cd.MemoryStore()
            return shared["memory"]
        return cd.open_store(store_url)

    return make


@pytest.fixture
def runtime(make_store: Callable[[], cd.Store]) -> Callable[..., Any]:
    """Runtimes on the test's store: ``async with runtime(**options) as rt`` (polling every
    20 ms unless ``poll_interval`` says otherwise). A test module may define its own."""

    @contextlib.asynccontextmanager
    async def open_rt(**options: Any) -> AsyncIterator[cd.Runtime]:
        options.setdefault("poll_interval", 0.02)
        async with cd.Runtime(make_store(), **options) as rt:
            yield rt

    return open_rt


@pytest.fixture
async def store(make_store: Callable[[], cd.Store]) -> AsyncIterator[cd.Store]:
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# -- Postgres -------------------------------------------------------------------------------------
# Each Postgres test works in its own schema (cdt_<hex>); the session drops every schema it handed
# out when it ends, so parallel sessions and leftovers cannot interfere. Schemas left behind by a
# killed session are dropped by a later one once they are PG_STALE_AFTER old (by the time their
# schema_version row was written), which no live session's schema can be.
PG_SCHEMAS: set[str] = set()
PG_STALE_AFTER = "2 hours"


def pg_test_url(schema: str | None = None, **params: str) -> str:
    """PG_URL with a fresh (or the given) test schema, registered for dropping at session end."""
    schema = schema or f"cdt_{uuid.uuid4().hex[:12]}"
    PG_SCHEMAS.add(schema)
    query = "&".join(f"{k}={v}" for k, v in {"schema": schema, **params}.items())
    return f"{PG_URL}{'&' if '?' in PG_URL else '?'}{query}"


@pytest.fixture(scope="session", autouse=True)
def _drop_postgres_schemas() -> Iterator[None]:
    yield
    if not PG_SCHEMAS:
        return
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for schema in sorted(PG_SCHEMAS):
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        leftovers = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'cdt\\_%' "
            "AND to_regclass(quote_ident(nspname) || '.schema_version') IS NOT NULL"
        ).fetchall()
        for (schema,) in leftovers:
            try:  # another session may be dropping it right now
                stale = conn.execute(
                    f'SELECT max(applied_at) < now() - %s::interval FROM "{schema}".schema_version',
                    [PG_STALE_AFTER],
                ).fetchone()
                if stale and stale[0]:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            except psycopg.Error:
                pass
    PG_SCHEMAS.clear()


# -- Redis ----------------------------------------------------------------------------------------
# Each Redis test works under its own key prefix (cdt_<hex>:) on the shared server; the session
# deletes the keys of every prefix it handed out when it ends (one SCAN over cdt_* keys, so other
# sessions' prefixes running in parallel are left alone).
REDIS_PREFIXES: set[str] = set()


def redis_test_url(prefix: str | None = None, **params: str) -> str:
    """REDIS_URL with a fresh (or the given) key prefix, registered for deletion at session end.

    ``durability=volatile`` unless given: the machine's Redis runs with ``appendonly no``."""
    prefix = prefix or f"cdt_{uuid.uuid4().hex[:12]}:"
    REDIS_PREFIXES.add(prefix)
    options = {"prefix": prefix, "durability": "volatile", **params}
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}{query}"


@pytest.fixture(scope="session", autouse=True)
def _delete_redis_prefixes() -> Iterator[None]:
    yield
    if not REDIS_PREFIXES:
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        doomed: list[bytes] = []
        for key in client.scan_iter(match="cdt_*", count=5000):
            head, sep, _ = key.partition(b":")
            if sep and (head + b":").decode() in REDIS_PREFIXES:
                doomed.append(key)
                if len(doomed) >= 5000:
                    client.unlink(*doomed)
                    doomed.clear()
        if doomed:
            client.unlink(*doomed)
    finally:
        client.close()
    REDIS_PREFIXES.clear()


_REDIS_CONFIG_LOCK: list[Any] = [uuid.uuid4().hex, 0]  # this process's lock token, nesting depth


@contextlib.contextmanager
def redis_server_config(**settings: str) -> Iterator[dict[str, str]]:
    """Set Redis server settings (``appendonly="yes"``, ...) for a block, then restore them.

    The server is shared by every test session on the machine, so changes are serialised by a
    lock key (other sessions' tests using this helper wait their turn) and always undone.
    Yields the settings as they were before."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    lock, token = "cdt_server_config_lock", _REDIS_CONFIG_LOCK[0]
    outermost = _REDIS_CONFIG_LOCK[1] == 0  # nested blocks reuse the lock this process holds
    give_up = time.monotonic() + 120
    while outermost and not client.set(lock, token, nx=True, px=120_000):
        if time.monotonic() > give_up:
            raise TimeoutError("another test session held the Redis config lock for 120 s")
        time.sleep(0.05)
    _REDIS_CONFIG_LOCK[1] += 1
    before: dict[str, str] = {}
    try:
        for name in settings:
            before.update({_text(k): _text(v) for k, v in client.config_get(name).items()})
        for name, value in settings.items():
            client.config_set(name, value)
        yield dict(before)
    finally:
        try:
            for name, value in before.items():
                client.config_set(name, value)
        finally:
            _REDIS_CONFIG_LOCK[1] -= 1
            if outermost:
                client.eval(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
                    1, lock, token,
                )  # fmt: skip
            client.close()


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
