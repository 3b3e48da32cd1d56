"""The store protocol: everything the runtime persists goes through these methods.

Every backend (memory, SQLite here; Postgres and Redis as plugins) implements :class:`Store` and
passes the same conformance suite, ``coro_durable.testing.conformance``: a third-party store runs
it from its own tests by subclassing ``StoreConformance`` (ours do in
tests/test_store_conformance.py). The rules a backend keeps:

* **Fencing.** ``claim`` bumps a run's ``epoch`` (its fencing token) and gives the worker a lease.
  Every write a worker makes for a run (``append``, ``consume_signal``, ``park``, ``finish``,
  ``record_crash``) names that epoch and must fail with :class:`~coro_durable.errors.LeaseLost`,
  writing nothing, when the run's epoch has moved on. The check and the write are one atomic step.
* **Journal appends.** An entry at a seq that holds a *pending* entry replaces it; at a seq that
  holds a final entry it is accepted only if identical (same checksum: a retry of our own write
  whose acknowledgement was lost) and raises :class:`~coro_durable.errors.ConflictError` otherwise.
  Seqs need not arrive in order: the sub-effects of a ``gather`` finish in any order, so a journal
  may have gaps while (or after a crash during) a gather. A successful append sets ``steps`` to
  the number of entries; it resets ``crash_count`` only if it holds at least one final entry
  (``JournalEntry.final``: the run made progress). A batch of pending entries only (a retry's
  failed attempt, a timer armed, an in-flight step's progress and heartbeats) is still fenced,
  replaces pending entries, counts towards ``steps`` and bumps ``updated_at``, but leaves
  ``crash_count`` alone: a step that kills its worker every time is quarantined at
  ``max_crashes`` however often it wrote progress. ``consume_signal`` journals a final entry, so
  it resets ``crash_count`` too.
* **Claiming.** A run is claimable when it is ``pending`` or ``waiting`` with ``wake_at <= now``, or
  ``running`` with an expired lease (its worker died: that takeover counts as a crash, and past
  ``max_crashes`` the run is quarantined instead of claimed). Only runs of the given workflow
  names are claimed. Two workers never claim the same run for the same epoch. ``claim`` takes a
  ``ClaimRequest``, so a field added to it (a queue, say) changes no signature.
* **Waking.** ``park`` releases the lease and sets ``wake_at``; but if a cancel request, or an
  unconsumed signal of a name the waits wait for (``awaited_signals``), is already there, the run
  is made runnable at once (no lost wake-up). A signal of another name wakes nothing: it is kept
  for a later ``await_signal`` (waking for it would make a parked run spin: wake, replay, park,
  wake).
  ``park`` also stores what the run waits for (``Wait``s, kept as the text of ``encode_waits``
  and read back with ``decode_waits``); ``list_runs`` answers a ``RunQuery``, whose
  ``waiting_for``/``wait_name`` select waiting runs by their waits ("runs waiting on signal
  approval").
  ``request_cancel`` makes a waiting run runnable, and ``deliver_signal`` does when the run's
  waits wait for that signal.
* **Signals** are stored once per ``signal_id``; ``consume_signal`` takes the oldest unconsumed
  signal of a name and journals it in the same atomic step, so a crash cannot lose or duplicate it.
* **Group commit** (``GroupCommit``, ``store._groupcommit``). A backend may commit the writes of concurrent callers
  together (one transaction, one script call), but each write is fenced and answered on its own
  as if it had committed alone (one caller's LeaseLost or ConflictError never fails another's
  write), a caller resumes only once its write is durable, and if the shared commit fails every
  write in it fails with that error and none of it is kept.
* **The worker registry.** Every worker Runtime registers itself with ``heartbeat_worker`` (an
  upsert of its :class:`~coro_durable.journal._records.WorkerRecord`) before it claims anything, repeats
  it while it runs, and calls ``remove_worker`` when it closes. The store stamps each heartbeat
  with its own clock (``last_seen``, and ``expires_at = last_seen + ttl``); ``list_workers``
  answers the registrations that have not expired. A heartbeat arriving after its own
  registration expired starts a new one (``started_at`` is reset): that worker was gone. Expired
  registrations are deleted by the next heartbeat of any worker, so the registry holds the live
  workers and at most the ones that died since.
* **Retrying** (``retry_run``) is the one write that deletes journal entries. In one atomic step,
  and only for a failed or cancelled run: delete the entries at the ``reopen`` seqs and every
  entry with seq > ``after`` (never an audit note: seq < 0), insert the ``note`` (an audit entry
  with a negative seq, see ``journal._records``), and make the run pending and runnable now with error,
  result and cancel request cleared, ``crash_count`` 0 and ``steps`` recounted. A ``note`` whose
  seq is already taken by an identical entry means our own earlier call landed (its
  acknowledgement was lost): answer the run as it is. Taken by another entry: ConflictError (the
  run was retried concurrently). ``steps`` counts only entries with seq >= 0.
* **Meta.** ``RunRecord.meta`` and ``JournalEntry.meta`` are stored as given and returned equal
  (``create_run`` keeps the run's, ``append``, ``consume_signal`` and ``retry_run`` each
  entry's); ``encode_meta`` is the text to store, ``decode_meta`` reads it back (and reads a row
  written before meta existed as empty). An entry's checksum covers its meta, so a store must
  not change it.
* **Schema versions.** ``open`` upgrades an existing database to the store's current schema IN
  PLACE, once, however many processes open it at the same moment (a lock or one transaction),
  and refuses, with a PermanentStoreError naming both versions, a database written by a newer
  version than it knows. Upgrade every worker together: a worker of the older version still
  running after the upgrade is not guaranteed to read or write the new schema.
* Times are ``time.time()`` floats from the store's clock. A store that keeps time by the
  process's clock (memory, SQLite) has a ``clock`` attribute (a ``coro_durable.testing.Clock``)
  that a ``Runtime(clock=...)`` sets: due times (``wake_at``) and timestamps come from
  ``clock.time()``, while lease and worker-registry expiries stay on ``time.time()`` (they
  measure live processes). A store on its server's clock (Postgres, Redis) has no ``clock``
  attribute, and a Runtime on it refuses a clock.
* Listeners registered with ``subscribe`` are called (on the event loop) when new work may be
  claimable: a run created or retried, a signal delivered, a cancel requested, a lease released.
  A store whose notifications come from its server (LISTEN/NOTIFY, pub/sub) may define an
  optional ``async def watch(self) -> None``: every open Runtime runs it in its own task group
  until the Runtime closes, and it calls the listeners as notifications arrive.

Backends must translate their driver's exceptions into ``coro_durable.errors.StoreError``, at one
boundary: a ``TransientStoreError`` when a retry can help (connection refused or lost, busy or
locked, a timeout, a failover), a ``PermanentStoreError`` whose message says what to fix when it
cannot (read-only or unopenable file, refused credentials or permissions, unknown host, missing
database). The runtime retries transient errors (and plain StoreErrors) up to its
``store_deadline`` and raises permanent ones at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .._core.waits import Wait
from ..journal._records import JournalEntry, RunRecord, RunStatus, WorkerRecord
from ._listeners import Listener
from ._requests import ClaimRequest, RunQuery

__all__ = ["CorruptibleStore", "Listener", "Store", "StoreWrapper"]


class Store(Protocol):
    """The persistence protocol. All methods are coroutines safe under asyncio and trio."""

    url: str

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener()`` when new work may be claimable; returns an unsubscribe function."""
        ...

    # -- runs ------------------------------------------------------------------------------------
    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        """Insert ``run`` unless its run_id exists; return the stored run and whether it is new.

        An invalid run_id raises ConfigurationError and creates nothing (``check_run_id``)."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        """The runs ``query`` selects, newest first (``created_at``, then ``run_id``), from its
        ``offset``, at most ``limit``."""
        ...

    # -- journal ------------------------------------------------------------------------------------
    async def load_journal(self, run_id: str) -> list[JournalEntry]:
        """The run's entries ordered by seq (checksums are verified by the caller)."""
        ...

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        """Write entries atomically, fenced by ``epoch`` (see the module rules)."""

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        """Atomically take the oldest unconsumed signal ``name`` and append
        ``entry.with_result(payload, now)``; return that entry, or None if no signal waits."""
        ...

    # -- leases and wake-ups -------------------------------------------------------------------------
    async def claim(self, request: ClaimRequest) -> list[RunRecord]:
        """Lease up to ``request.limit`` claimable runs to ``request.worker``; return them with
        their new epoch."""
        ...

    async def renew(self, worker: str, leases: dict[str, int], lease_ttl: float) -> dict[str, bool]:
        """Extend leases {run_id: epoch}. Returns {run_id: cancel_requested} for the leases still
        held; a run missing from the answer was lost."""
        ...

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        """Release the lease; the run sleeps until ``wake_at`` (None: until a signal or cancel),
        waiting for ``waits`` (kept as ``RunRecord.waits``)."""

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        """Record the run's final status with its result or error, and release the lease."""

    async def record_crash(
        self, run_id: str, epoch: int | None, error: str, retry_at: float, max_crashes: int
    ) -> RunRecord:
        """Count a crash of the run's activation. With ``epoch`` None, quarantine at once
        (non-determinism, corrupt journal); otherwise park it until ``retry_at``, or quarantine it
        once ``crash_count`` reaches ``max_crashes``. Fenced by ``epoch`` when given."""
        ...

    async def resume(self, run_id: str) -> RunRecord:
        """Make a quarantined run pending again with its crash count reset."""
        ...

    async def retry_run(
        self, run_id: str, reopen: Sequence[int], after: int | None, note: JournalEntry
    ) -> RunRecord:
        """Continue a failed or cancelled run (see the module rules): delete the entries at
        ``reopen`` and those after ``after``, write ``note``, make the run pending now; return
        it. Raises RunNotFoundError, RunError (``retry_refused``) for a run in another
        status, ConflictError when ``note.seq`` holds a different entry."""
        ...

    # -- signals and cancellation ----------------------------------------------------------------------
    async def deliver_signal(self, run_id: str, name: str, payload: str, signal_id: str) -> bool:
        """Store a signal once per ``signal_id`` (False if already delivered) and wake the run."""
        ...

    async def request_cancel(self, run_id: str) -> RunRecord:
        """Flag the run for cancellation and wake it; return the run."""
        ...

    # -- the worker registry -----------------------------------------------------------------------
    async def heartbeat_worker(self, worker: WorkerRecord, ttl: float) -> WorkerRecord:
        """Register ``worker`` or refresh its registration, live for ``ttl`` seconds from now (the
        store's clock); return the stored record with its times. The record's own times are
        ignored. Deletes registrations of other workers that have expired."""
        ...

    async def list_workers(self) -> list[WorkerRecord]:
        """The registrations that have not expired, oldest ``started_at`` first."""
        ...

    async def remove_worker(self, worker_id: str) -> None:
        """Delete the worker's registration (it is closing); a no-op if there is none."""


class CorruptibleStore(Protocol):
    """A store with the testing hook ``coro_durable.testing.corrupt_row`` calls (optional).

    Not part of the runtime's contract: the runtime never calls it. The memory, SQLite,
    PostgreSQL and Redis stores implement it; a third-party store that does lets its users test
    that a torn journal row quarantines the run."""

    async def corrupt_entry(
        self,
        run_id: str,
        seq: int,
        *,
        result: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Overwrite the stored ``result`` (JSON text) and/or ``meta`` of journal entry ``seq``
        of ``run_id`` (those given), keeping its checksum, as a torn write or a hand edit would.
        Raises LookupError when the run has no entry at ``seq``."""


class StoreWrapper:
    """A store that forwards every call to ``inner``: subclass it to observe some calls.

    Used by the CLI's worker (logging) and ``coro_durable.testing.TracingStore`` (tracing); a
    subclass overrides only the methods it watches. Store-specific extras are reached through
    ``__getattr__``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self.inner.subscribe(listener)

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        return await self.inner.create_run(run)

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self.inner.get_run(run_id)

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        return await self.inner.list_runs(query)

    async def load_journal(self, run_id: str) -> list[JournalEntry]:
        return await self.inner.load_journal(run_id)

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        await self.inner.append(run_id, epoch, entries)

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        return await self.inner.consume_signal(run_id, epoch, name, entry)

    async def claim(self, request: ClaimRequest) -> list[RunRecord]:
        return await self.inner.claim(request)

    async def renew(self, worker: str, leases: dict[str, int], lease_ttl: float) -> dict[str, bool]:
        return await self.inner.renew(worker, leases, lease_ttl)

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        await self.inner.park(run_id, epoch, wake_at, waits)

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        await self.inner.finish(run_id, epoch, status, result, error)

    async def record_crash(
        self, run_id: str, epoch: int | None, error: str, retry_at: float, max_crashes: int
    ) -> RunRecord:
        return await self.inner.record_crash(run_id, epoch, error, retry_at, max_crashes)

    async def resume(self, run_id: str) -> RunRecord:
        return await self.inner.resume(run_id)

    async def retry_run(
        self, run_id: str, reopen: Sequence[int], after: int | None, note: JournalEntry
    ) -> RunRecord:
        return await self.inner.retry_run(run_id, reopen, after, note)

    async def deliver_signal(self, run_id: str, name: str, payload: str, signal_id: str) -> bool:
        return await self.inner.deliver_signal(run_id, name, payload, signal_id)

    async def request_cancel(self, run_id: str) -> RunRecord:
        return await self.inner.request_cancel(run_id)

    async def heartbeat_worker(self, worker: WorkerRecord, ttl: float) -> WorkerRecord:
        return await self.inner.heartbeat_worker(worker, ttl)

    async def list_workers(self) -> list[WorkerRecord]:
        return await self.inner.list_workers()

    async def remove_worker(self, worker_id: str) -> None:
        await self.inner.remove_worker(worker_id)
