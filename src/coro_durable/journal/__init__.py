"""The journal's records: runs (``RunRecord``), journal entries (``JournalEntry``) with their
checksums and verification, worker records, run statuses, the one run_id rule, and the records'
``meta`` map with its one JSON encoding (``Meta``, ``encode_meta``, ``decode_meta``), and what a
waiting run waits for (``Wait``, ``WaitKind``, ``encode_waits``, ``decode_waits``).

May import: ``coro_durable.errors`` and ``coro_durable._core``. Stores, the runtime and the engine
SPI import it. The store SPI (``coro_durable.store``) re-exports what a backend needs.
"""

from .._core.waits import Wait, WaitKind, decode_waits, describe_waits, encode_waits
from ._meta import EMPTY_META, Meta, decode_meta, encode_meta, freeze_meta
from ._records import (
    CANCELLED_ERROR,
    MAX_RUN_ID_LENGTH,
    MAX_TAGS,
    RETRYABLE,
    TERMINAL,
    JournalEntry,
    RunRecord,
    RunStatus,
    WorkerRecord,
    check_run_id,
    check_tags,
    retry_conflict,
    retry_refused,
    verify_journal,
)

__all__ = [
    "Wait",
    "WaitKind",
    "decode_waits",
    "describe_waits",
    "encode_waits",
    "EMPTY_META",
    "Meta",
    "decode_meta",
    "encode_meta",
    "freeze_meta",
    "CANCELLED_ERROR",
    "MAX_RUN_ID_LENGTH",
    "RETRYABLE",
    "TERMINAL",
    "JournalEntry",
    "RunRecord",
    "RunStatus",
    "WorkerRecord",
    "check_run_id",
    "check_tags",
    "MAX_TAGS",
    "retry_conflict",
    "retry_refused",
    "verify_journal",
]
