"""Shared fixtures: every async test runs under asyncio and trio; store tests run on every store."""

from __future__ import annotations

import importlib.metadata
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import coro_durable as cd


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
        return f"{PG_URL}?schema={tag}"
    return f"{REDIS_URL}?prefix={tag}:&durability=volatile"


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
async def store(make_store: Callable[[], cd.Store]) -> AsyncIterator[cd.Store]:
    s = make_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
