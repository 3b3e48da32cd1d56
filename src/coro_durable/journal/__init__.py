"""The journal's records: runs (``RunRecord``), journal entries (``JournalEntry``) with their
checksums and verification, worker records, run statuses, and the one run_id rule.

May import: ``coro_durable.errors`` and ``coro_durable._core``. Stores, the runtime and the engine
SPI import it. The store SPI (``coro_durable.store``) re-exports what a backend needs.
"""

from ._records import (
    CANCELLED_ERROR,
    MAX_RUN_ID_LENGTH,
    RETRYABLE,
    TERMINAL,
    JournalEntry,
    RunRecord,
    RunStatus,
    WorkerRecord,
    check_run_id,
    retry_conflict,
    retry_refused,
    verify_journal,
)

__all__ = [
    "CANCELLED_ERROR",
    "MAX_RUN_ID_LENGTH",
    "RETRYABLE",
    "TERMINAL",
    "JournalEntry",
    "RunRecord",
    "RunStatus",
    "WorkerRecord",
    "check_run_id",
    "retry_conflict",
    "retry_refused",
    "verify_journal",
]
