"""corrupt_row: tamper with a stored journal row through the store's own testing hook.

Each store knows its own layout, so the tampering is its ``corrupt_entry`` method (the optional
``coro_durable.store.CorruptibleStore`` protocol); this module only finds the store behind any
wrappers and calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._core import codec
from ..store._protocol import Store, StoreWrapper


async def corrupt_row(
    store: Store,
    run_id: str,
    seq: int,
    result: Any = "tampered",
    *,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Overwrite the stored result of journal entry ``seq`` of ``run_id`` without updating its
    checksum, as a torn write or a hand edit would; with ``meta``, overwrite the entry's meta
    instead (its result stays). The next activation of the run must refuse it (the run is
    quarantined with a corrupt-journal error) instead of replaying a wrong value.

    Works on every store with the ``corrupt_entry`` testing hook (``CorruptibleStore``: the
    memory, SQLite, PostgreSQL and Redis stores), behind any ``StoreWrapper``; raises
    NotImplementedError naming the store for one without it, and LookupError when the row does
    not exist."""
    while isinstance(store, StoreWrapper):
        store = store.inner
    hook = getattr(store, "corrupt_entry", None)
    if hook is None:
        raise NotImplementedError(
            f"corrupt_row cannot tamper with the journal of {type(store).__name__}: that store "
            "has no corrupt_entry testing hook (see coro_durable.store.CorruptibleStore); the "
            "memory, SQLite, PostgreSQL and Redis stores have it"
        )
    if meta is not None:
        await hook(run_id, seq, meta=meta)
    else:
        await hook(run_id, seq, result=codec.encode(result))
