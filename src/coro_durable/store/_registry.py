"""Which store or engine serves a URL: the built-in schemes and two entry-point groups.

``open_store(url)`` builds the store for ``url``'s scheme: ``memory://`` and ``sqlite:///path``
ship with the core; every other scheme comes from an installed plugin's entry point in the
``coro_durable.stores`` group (Postgres, Redis). Engine adapters (Temporal, Restate, Inngest)
register in a group of their own, ``coro_durable.engines``; ``Runtime(url)`` asks
``engine_class(url)`` first and returns that engine's runtime when there is one. A scheme no
installed plugin provides raises ``StorePluginMissingError`` naming the package to install.
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

__all__ = [
    "DEFAULT_STORE_URL",
    "ENGINE_GROUP",
    "STORE_GROUP",
    "default_store_url",
    "engine_class",
    "open_store",
    "plugin_class",
]

DEFAULT_STORE_URL = "sqlite:///.coro_durable/runs.db"

#: The entry-point group a store plugin registers its URL scheme in (``scheme = "pkg:StoreClass"``).
STORE_GROUP = "coro_durable.stores"
#: The entry-point group an engine adapter registers its URL scheme in (``scheme = "pkg:Runtime"``).
ENGINE_GROUP = "coro_durable.engines"


def _entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


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
    """Build the store registered for ``url``'s scheme.

    ``memory://`` and ``sqlite:///path`` ship with the core; other schemes come from installed
    plugins through the ``coro_durable.stores`` entry-point group. An engine's URL (``temporal://``,
    ...) is refused with a ConfigurationError pointing at ``cd.Runtime(url)``.
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
    store: Store = plugin_class(url)(url)
    return store


def plugin_class(url: str) -> Any:
    """The store class registered for ``url``'s scheme in the ``coro_durable.stores`` group.

    Raises ConfigurationError when the scheme names an installed engine instead, and
    StorePluginMissingError (naming the package to install, where known) when nothing provides it.
    """
    scheme = urlsplit(url).scheme.lower()
    ep = _entry_points(STORE_GROUP).get(scheme)
    if ep is not None:
        return ep.load()
    if scheme in _entry_points(ENGINE_GROUP):
        raise ConfigurationError(
            f"{scheme}:// names an engine, not a store; use cd.Runtime({url!r}) to run on it"
        )
    package = _PLUGINS.get(scheme)
    hint = f"install it with `pip install {package}`" if package else "no known package provides it"
    raise StorePluginMissingError(
        f"no coro_durable store or engine is installed for URL scheme {scheme!r} ({hint})"
    )


def engine_class(url: str) -> Any | None:
    """The engine runtime class registered for ``url``'s scheme in the ``coro_durable.engines``
    group, or None (``Runtime(url)`` then opens a store for it)."""
    scheme = urlsplit(url).scheme.lower()
    ep = _entry_points(ENGINE_GROUP).get(scheme)
    return None if ep is None else ep.load()


def default_store_url() -> str:
    return os.environ.get("CORO_DURABLE_STORE") or DEFAULT_STORE_URL
