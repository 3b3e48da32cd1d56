"""Shared fixtures: every async test runs under asyncio and trio; store tests run on every store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import coro_durable as cd

STORES = ["memory", "sqlite"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path) -> str:
    """A fresh, isolated store URL of each kind."""
    if store_kind == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def make_store(store_url: str) -> Callable[[], cd.Store]:
    """Build store objects on the same database (memory: the same object)."""
    shared: dict[str, cd.Store] = {}

    def make() -> cd.Store:
        if store_url == "memory://":
            if "memory" not in shared:
                shared["memory"] = cd.MemoryStore()
            return shared["memory"]
        return cd.SqliteStore(store_url)

    return make


@pytest.fixture
async def store(make_store: Callable[[], cd.Store]) -> AsyncIterator[cd.Store]:
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
