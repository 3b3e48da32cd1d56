"""MemoryStore: the store protocol in plain dicts, for tests and the reference for other backends.

Nothing survives the process, so there is no schema: no version, nothing to migrate (records,
``meta`` included, are kept as the objects they are). Every method runs without awaiting in its
critical section, under a threading lock, so each operation is atomic even when several event
loops share the store (as the Hypothesis tests do). It is the oracle the conformance suite compares the other stores against.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.waits import Wait, awaited_signals
from ..errors import ConflictError, LeaseLost, RunNotFoundError
from ..journal._records import (
    CANCELLED_ERROR,
    RETRYABLE,
    TERMINAL,
    JournalEntry,
    RunRecord,
    RunStatus,
    WorkerRecord,
    check_run_id,
    retry_conflict,
    retry_refused,
)
from ._listeners import Listener, ListenerSet
from ._requests import ClaimRequest, RunQuery

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Signal:
    order: int
    signal_id: str
    name: str
    payload: str
    consumed: bool = False


class MemoryStore:
    """An in-process store (``memory://``)."""

    def __init__(self, url: str = "memory://", *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.url = url
        self.clock = clock  # timers and timestamps; leases and worker expiry use real time
        self._lock = threading.Lock()
        self._runs: dict[str, RunRecord] = {}
        self._journals: dict[str, dict[int, JournalEntry]] = {}
        self._signals: dict[str, list[_Signal]] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._order = itertools.count()
        self._listeners = ListenerSet()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    # -- helpers ------------------------------------------------------------------------------------

    def _fenced(self, run_id: str, epoch: int) -> RunRecord:
        run = self._runs.get(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        stale = run.epoch != epoch
        if stale or run.status != RunStatus.RUNNING:
            raise LeaseLost(run_id, epoch, f"current token is {run.epoch}, status {run.status}")
        return run

    def _has_unconsumed(self, run_id: str, names: set[str | None]) -> bool:
        return any(not s.consumed and s.name in names for s in self._signals.get(run_id, ()))

    def _append_locked(self, run: RunRecord, entries: Sequence[JournalEntry]) -> None:
        # Check the whole batch before writing any of it, so a rejected entry leaves it unwritten.
        journal = self._journals[run.run_id]
        accepted: dict[int, JournalEntry] = {}
        for entry in entries:
            existing = accepted.get(entry.seq) or journal.get(entry.seq)
            if existing is not None and existing.final:
                if existing.checksum == entry.checksum:
                    continue  # our own earlier write, acknowledgement lost
                raise ConflictError(
                    f"run {run.run_id!r}: seq {entry.seq} already holds a final "
                    f"{existing.describe()} entry"
                )
            accepted[entry.seq] = entry
        run.steps += sum(1 for seq in accepted if seq not in journal and seq >= 0)
        journal.update(accepted)
        if any(entry.final for entry in entries):
            run.crash_count = 0  # progress; pending entries alone (a step in flight) are not
        run.updated_at = self.clock.time()

    # -- runs -------------------------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        check_run_id(run.run_id)
        with self._lock:
            existing = self._runs.get(run.run_id)
            if existing is not None:
                return existing.copy(), False
            stored = run.copy()
            stored.created_at = stored.updated_at = self.clock.time()
            stored.status = RunStatus.PENDING
            stored.wake_at = stored.created_at
            self._runs[run.run_id] = stored
            self._journals[run.run_id] = {}
            self._signals[run.run_id] = []
            result = stored.copy()
        self._listeners.notify()
        return result, True

    async def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            run = self._runs.get(run_id)
            return run.copy() if run else None

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        with self._lock:
            runs = [r for r in self._runs.values() if query.matches(r)]
            runs.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
            return [r.copy() for r in runs[query.offset : query.offset + query.limit]]

    # -- journal ----------------------------------------------------------------------------------------

    async def load_journal(self, run_id: str) -> list[JournalEntry]:
        with self._lock:
            journal = self._journals.get(run_id, {})
            return [journal[seq] for seq in sorted(journal)]

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        with self._lock:
            run = self._fenced(run_id, epoch)
            self._append_locked(run, entries)

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        with self._lock:
            run = self._fenced(run_id, epoch)
            for sig in self._signals[run_id]:
                if sig.name == name and not sig.consumed:
                    final = entry.with_result(sig.payload, self.clock.time())
                    self._append_locked(run, [final])
                    sig.consumed = True
                    return final
            return None

    # -- leases -----------------------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[RunRecord]:
        now, live = self.clock.time(), time.time()
        names = set(request.workflows)
        limit, max_crashes = request.limit, request.max_crashes
        claimed: list[RunRecord] = []
        with self._lock:
            candidates = sorted(
                (r for r in self._runs.values() if r.workflow in names),
                key=lambda r: (r.wake_at or 0.0, r.created_at),
            )
            for run in candidates:
                if len(claimed) >= limit:
                    break
                if run.status in (RunStatus.PENDING, RunStatus.WAITING):
                    if run.wake_at is None or run.wake_at > now:
                        continue
                elif run.status == RunStatus.RUNNING:
                    if run.lease_expires is None or run.lease_expires > live:
                        continue
                    run.crash_count += 1
                    run.last_error = (
                        f"worker {run.owner} lost its lease (crashed or stalled) while running"
                    )
                    if run.crash_count >= max_crashes:
                        run.status = RunStatus.QUARANTINED
                        run.owner = run.lease_expires = run.wake_at = None
                        run.updated_at = now
                        continue
                else:
                    continue
                run.status = RunStatus.RUNNING
                run.epoch += 1
                run.owner = request.worker
                run.lease_expires = live + request.lease_ttl
                run.wake_at = None
                run.updated_at = now
                claimed.append(run.copy())
        return claimed

    async def renew(self, worker: str, leases: dict[str, int], lease_ttl: float) -> dict[str, bool]:
        now = time.time()  # leases measure live workers: real time
        held: dict[str, bool] = {}
        with self._lock:
            for run_id, epoch in leases.items():
                run = self._runs.get(run_id)
                if (
                    run
                    and run.epoch == epoch
                    and run.status == RunStatus.RUNNING
                    and run.owner == worker
                ):
                    run.lease_expires = now + lease_ttl
                    held[run_id] = run.cancel_requested
        return held

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        with self._lock:
            run = self._fenced(run_id, epoch)
            now = self.clock.time()
            if run.cancel_requested or self._has_unconsumed(run_id, awaited_signals(waits)):
                wake_at = now
            run.status = RunStatus.WAITING
            run.wake_at = wake_at
            run.waits = tuple(waits)
            run.owner = run.lease_expires = None
            run.updated_at = now
        self._listeners.notify()

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        with self._lock:
            run = self._fenced(run_id, epoch)
            run.status = status
            run.result = result
            run.error = error
            run.owner = run.lease_expires = run.wake_at = None
            run.waits = ()
            run.updated_at = self.clock.time()
        self._listeners.notify()

    async def record_crash(
        self, run_id: str, epoch: int | None, error: str, retry_at: float, max_crashes: int
    ) -> RunRecord:
        with self._lock:
            if epoch is None:
                run = self._runs.get(run_id)
                if run is None:
                    raise RunNotFoundError(run_id)
            else:
                run = self._fenced(run_id, epoch)
            run.crash_count += 1
            run.last_error = error
            run.owner = run.lease_expires = None
            if epoch is None or run.crash_count >= max_crashes:
                run.status = RunStatus.QUARANTINED
                run.wake_at = None
            else:
                run.status = RunStatus.WAITING
                run.wake_at = retry_at
            run.updated_at = self.clock.time()
            result = run.copy()
        self._listeners.notify()
        return result

    async def resume(self, run_id: str) -> RunRecord:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            if run.status == RunStatus.QUARANTINED:
                run.status = RunStatus.PENDING
                run.crash_count = 0
                run.wake_at = self.clock.time()
                run.updated_at = run.wake_at
            result = run.copy()
        self._listeners.notify()
        return result

    async def retry_run(
        self, run_id: str, reopen: Sequence[int], after: int | None, note: JournalEntry
    ) -> RunRecord:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            journal = self._journals[run_id]
            taken = journal.get(note.seq)
            if taken is not None:
                if taken.checksum == note.checksum:
                    return run.copy()  # our own earlier call, acknowledgement lost
                raise retry_conflict(run_id, note.seq)
            if run.status not in RETRYABLE:
                raise retry_refused(run_id, run.status)
            doomed = set(reopen)
            for seq in list(journal):
                if seq >= 0 and (seq in doomed or (after is not None and seq > after)):
                    del journal[seq]
            journal[note.seq] = note
            now = self.clock.time()
            run.status = RunStatus.PENDING
            run.wake_at = now
            run.owner = run.lease_expires = None
            run.waits = ()
            run.error = run.result = None
            run.cancel_requested = False
            run.crash_count = 0
            run.steps = sum(1 for seq in journal if seq >= 0)
            run.updated_at = now
            result = run.copy()
        self._listeners.notify()
        return result

    # -- signals and cancellation -------------------------------------------------------------------------

    async def deliver_signal(self, run_id: str, name: str, payload: str, signal_id: str) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            signals = self._signals[run_id]
            if any(s.signal_id == signal_id for s in signals):
                return False
            signals.append(_Signal(next(self._order), signal_id, name, payload))
            if run.status == RunStatus.WAITING and name in awaited_signals(run.waits):
                run.wake_at = self.clock.time()
        self._listeners.notify()
        return True

    async def request_cancel(self, run_id: str) -> RunRecord:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFoundError(run_id)
            if run.status == RunStatus.QUARANTINED or (
                run.status == RunStatus.PENDING and run.steps == 0
            ):
                # Nothing is executing it: cancel on the spot.
                run.status = RunStatus.CANCELLED
                run.cancel_requested = True
                run.error = CANCELLED_ERROR
                run.wake_at = None
                run.updated_at = self.clock.time()
            elif run.status not in TERMINAL:
                run.cancel_requested = True
                if run.status in (RunStatus.WAITING, RunStatus.PENDING):
                    run.wake_at = self.clock.time()
            result = run.copy()
        self._listeners.notify()
        return result

    # -- the worker registry ----------------------------------------------------------------------------

    async def heartbeat_worker(self, worker: WorkerRecord, ttl: float) -> WorkerRecord:
        now = time.time()  # the registry measures live workers: real time
        with self._lock:
            for worker_id, other in list(self._workers.items()):
                if other.expires_at <= now and worker_id != worker.worker_id:
                    del self._workers[worker_id]
            known = self._workers.get(worker.worker_id)
            started = known.started_at if known is not None and known.expires_at > now else now
            stored = dataclasses.replace(
                worker,
                workflows=tuple(worker.workflows),
                started_at=started,
                last_seen=now,
                expires_at=now + ttl,
            )
            self._workers[worker.worker_id] = stored
        return stored

    async def list_workers(self) -> list[WorkerRecord]:
        now = time.time()
        with self._lock:
            live = [w for w in self._workers.values() if w.expires_at > now]
        return sorted(live, key=lambda w: (w.started_at, w.worker_id))

    async def remove_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)

    # -- testing hook (CorruptibleStore) ----------------------------------------------------------

    async def corrupt_entry(
        self,
        run_id: str,
        seq: int,
        *,
        result: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Overwrite entry ``seq``'s result and/or meta, keeping its checksum (for tests)."""
        changes: dict[str, Any] = {}
        if result is not None:
            changes["result"] = result
        if meta is not None:
            changes["meta"] = meta
        with self._lock:
            journal = self._journals.get(run_id, {})
            if seq not in journal:
                raise LookupError(f"run {run_id!r} has no journal entry at seq {seq}")
            journal[seq] = dataclasses.replace(journal[seq], **changes)  # checksum kept
