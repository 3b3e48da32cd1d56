"""The store conformance suite on our own stores: coro_durable.testing.conformance, once per store.

Every test of ``StoreConformance`` (each store rule, and the randomized comparison against the
MemoryStore oracle) runs on the memory, SQLite, PostgreSQL and Redis stores, under asyncio and
trio. Each Postgres test gets a fresh schema and each Redis test a fresh key prefix (the
conftest helpers, which drop them when the session ends); ``peer_store`` opens a second store
object on the same database, as another worker process would.
"""

from __future__ import annotations

import pytest

import coro_durable as cd
from conftest import STORES, pg_test_url, redis_test_url
from coro_durable.testing.conformance import StoreConformance


class TestMemoryStore(StoreConformance):
    """MemoryStore: one object is its whole database, so its peers are itself."""

    async def make_store(self) -> cd.Store:
        return cd.MemoryStore()


class TestSqliteStore(StoreConformance):
    """SqliteStore on a new file per test; peers open the same file."""

    async def make_store(self) -> cd.Store:
        return cd.SqliteStore(f"sqlite:///{self.tmp_path / 'runs.db'}")

    def peer_store(self, store: cd.Store) -> cd.Store:
        return cd.open_store(store.url)


@pytest.mark.skipif("postgres" not in STORES, reason="coro-durable-postgres is not installed")
class TestPostgresStore(StoreConformance):
    """PostgresStore in a fresh schema per test; peers open the same schema."""

    async def make_store(self) -> cd.Store:
        return cd.open_store(pg_test_url())

    def peer_store(self, store: cd.Store) -> cd.Store:
        return cd.open_store(store.url)


@pytest.mark.skipif("redis" not in STORES, reason="coro-durable-redis is not installed")
class TestRedisStore(StoreConformance):
    """RedisStore under a fresh key prefix per test; peers use the same prefix."""

    async def make_store(self) -> cd.Store:
        return cd.open_store(redis_test_url())

    def peer_store(self, store: cd.Store) -> cd.Store:
        return cd.open_store(store.url)
