"""corrupt_row: tamper with a stored journal row, per store layout."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import anyio
import anyio.to_thread

from .._core import codec
from ..store._memory import MemoryStore
from ..store._protocol import Store, StoreWrapper
from ..store._sqlite import SqliteStore

# ---- corrupting rows ---------------------------------------------------------------------------


async def corrupt_row(store: Store, run_id: str, seq: int, result: Any = "tampered") -> None:
    """Overwrite the stored result of journal entry ``seq`` of ``run_id`` without updating its
    checksum, as a torn write or a hand edit would. The next activation of the run must refuse
    it (the run is quarantined with a corrupt-journal error) instead of replaying a wrong value.

    Knows the memory, SQLite, PostgreSQL and Redis stores; raises NotImplementedError (with the
    reason) for others, and LookupError when the row does not exist."""
    while isinstance(store, StoreWrapper):
        store = store.inner
    text = codec.encode(result)
    if isinstance(store, MemoryStore):
        with store._lock:
            journal = store._journals.get(run_id, {})
            if seq not in journal:
                raise LookupError(f"run {run_id!r} has no journal entry at seq {seq}")
            journal[seq] = dataclasses.replace(journal[seq], result=text)  # checksum kept
        return
    if isinstance(store, SqliteStore):
        await anyio.to_thread.run_sync(_corrupt_sqlite, str(store.path), run_id, seq, text)
        return
    kind = type(store).__name__
    if kind == "PostgresStore" and hasattr(store, "options") and hasattr(store, "schema"):
        dsn, schema = store.options.dsn, store.schema
        await anyio.to_thread.run_sync(_corrupt_postgres, dsn, schema, run_id, seq, text)
        return
    if kind == "RedisStore" and hasattr(store, "_redis_url") and hasattr(store, "prefix"):
        url, prefix = store._redis_url, store.prefix
        await anyio.to_thread.run_sync(_corrupt_redis, url, prefix, run_id, seq, text)
        return
    raise NotImplementedError(
        f"corrupt_row does not know where {kind} keeps its journal rows; it supports the "
        "memory, SQLite, PostgreSQL and Redis stores"
    )


def _corrupt_sqlite(path: str, run_id: str, seq: int, text: str) -> None:
    import sqlite3

    db = sqlite3.connect(path, timeout=30)
    try:
        with db:
            changed = db.execute(
                "UPDATE journal SET result = ? WHERE run_id = ? AND seq = ?", (text, run_id, seq)
            ).rowcount
    finally:
        db.close()
    if not changed:
        raise LookupError(f"run {run_id!r} has no journal entry at seq {seq}")


def _corrupt_postgres(dsn: str, schema: str, run_id: str, seq: int, text: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        changed = conn.execute(
            f'UPDATE "{schema}".journal SET result = %s WHERE run_id = %s AND seq = %s',
            (text, run_id, seq),
        ).rowcount
    if not changed:
        raise LookupError(f"run {run_id!r} has no journal entry at seq {seq}")


def _corrupt_redis(url: str, prefix: str, run_id: str, seq: int, text: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        key = f"{prefix}journal:{run_id}"
        raw = client.hget(key, str(seq))
        if raw is None:
            raise LookupError(f"run {run_id!r} has no journal entry at seq {seq}")
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        status, checksum, body = value.split("|", 2)
        fields = json.loads(body)
        fields[6] = text  # the result column; the checksum (fields[13]) is left as it was
        client.hset(key, str(seq), f"{status}|{checksum}|{json.dumps(fields)}")
    finally:
        client.close()
