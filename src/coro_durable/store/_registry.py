"""Which store serves a URL: the built-in schemes and the ``coro_durable.stores`` entry points.

``open_store(url)`` builds the store for ``url``'s scheme: ``memory://`` and ``sqlite:///path``
ship with the core; every other scheme comes from an installed plugin's entry point (Postgres,
Redis; the engine adapters register there too, with ``is_engine = True``). A scheme no installed
plugin provides raises ``StorePluginMissingError`` naming the package to install.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError, StorePluginMissingError
from ._memory import MemoryStore
from ._protocol import Store
from ._sqlite import SqliteStore

__all__ = ["DEFAULT_STORE_URL", "default_store_url", "open_store", "plugin_class"]

DEFAULT_STORE_URL = "sqlite:///.coro_durable/runs.db"


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group="coro_durable.stores")}


_PLUGINS = {
    "postgresql": "coro-durable-postgres",
    "postgres": "coro-durable-postgres",
    "redis": "coro-durable-redis",
    "rediss": "coro-durable-redis",
    "temporal": "coro-durable-temporal",
    "restate": "coro-durable-restate",
    "inngest": "coro-durable-inngest",
}


def open_store(url: str) -> Store:
    """Build the store (or engine runtime) registered for ``url``'s scheme.

    ``memory://`` and ``sqlite:///path`` ship with the core; other schemes come from installed
    plugins through the ``coro_durable.stores`` entry-point group.
    """
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ConfigurationError(
            f"store URL {url!r} has no scheme; use memory://, sqlite:///path/to/runs.db, "
            "postgresql://..., redis://..."
        )
    if scheme == "memory":
        return MemoryStore(url)
    if scheme == "sqlite":
        return SqliteStore(url)
    factory = plugin_class(url)
    if getattr(factory, "is_engine", False):
        raise ConfigurationError(
            f"{scheme}:// names an engine, not a store; use cd.Runtime({url!r}) to run on it"
        )
    store: Store = factory(url)
    return store


def plugin_class(url: str) -> Any:
    """The class registered for ``url``'s scheme in the ``coro_durable.stores`` group.

    Engine adapters (Temporal, Restate, Inngest) register there too; their classes carry
    ``is_engine = True`` and ``Runtime(url)`` returns an instance of them instead of an embedded
    Runtime.
    """
    scheme = urlsplit(url).scheme.lower()
    ep = _entry_points().get(scheme)
    if ep is None:
        package = _PLUGINS.get(scheme)
        hint = (
            f"install it with `pip install {package}`"
            if package
            else "no known package provides it"
        )
        raise StorePluginMissingError(
            f"no coro_durable store is installed for URL scheme {scheme!r} ({hint})"
        )
    return ep.load()


def default_store_url() -> str:
    return os.environ.get("CORO_DURABLE_STORE") or DEFAULT_STORE_URL
