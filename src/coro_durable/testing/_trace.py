"""The trace: claims, journal commits, invocations and feeds across workers, and the orders
that break the contract (Trace, TracingStore, Invocation, Violation).

A :class:`Trace` learns from two sides. As an instrument of every worker's Runtime it sees what
the runtime does: which activation (worker, fencing token) runs where, each step invocation, each
outcome fed to the workflow (the X6 point). Through :class:`TracingStore`, the store each worker
is given, it sees what the store accepted: claims, loads, commits, and fenced writes from an
epoch that a newer claim had superseded (the store's fencing broken)."""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._core.faults import BEFORE_FEED
from .._core.hooks import ActivationStarted, FaultPoint, Instrument, StepStarted
from .._core.waits import Wait
from ..journal._records import JournalEntry, RunRecord, RunStatus
from ..store._protocol import Store, StoreWrapper
from ..store._requests import ClaimRequest
from ._faults import _ACTIVATION, _PAUSED, Fault

# ---- the trace: what happened, in order, across workers ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """One call of a step's body: the trace's clock, the run, seq and the activation's worker
    and fencing token."""

    order: int
    run_id: str
    seq: int
    worker: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Violation:
    """A broken promise, found by the trace or by :func:`crash_fuzz`.

    ``kind`` is one of ``fed-unjournaled`` (an outcome reached the workflow before it was
    journaled), ``reinvoked-after-recorded`` (a step ran although its outcome was journaled),
    ``reinvoked-after-fed`` (a step ran again although the workflow had been fed its outcome:
    it was not in flight at a crash), ``stale-write`` (the store accepted a write fenced by an
    epoch that a newer claim had superseded), ``reinvoked-in-activation`` (one activation ran a step
    twice without journaling the failed attempt), ``check`` (your check failed), ``result`` (the
    run ended differently from the crash-free run), ``replay`` (the journal does not replay
    against the code), ``stranded`` (the run never finished), ``duplicate-signal`` (a signal id
    was accepted twice) or ``error`` (the fuzzer itself hit an unexpected exception).
    """

    kind: str
    message: str
    run_id: str | None = None
    seq: int | None = None
    point: str | None = None  # the crash point of the (shrunk) schedule that exposed it
    function: str | None = None  # the effect at seq, e.g. "call(charge)"
    key: str | None = None  # its idempotency key
    invocations: int | None = None  # times the step's body ran in that run
    reinvocations: int | None = None  # runs of the body beyond the crash-free run's
    schedule: tuple[Fault, ...] = ()  # the faults that expose it, shrunk
    shrunk_from: int | None = None  # how many faults the schedule had before shrinking

    def __str__(self) -> str:
        parts = [f"[{self.kind}] {self.message}"]
        if self.seq is not None:
            step = f"seq {self.seq}" + (f" {self.function}" if self.function else "")
            if self.key:
                step += f", key {self.key}"
            if self.invocations is not None:
                step += f", body ran {self.invocations}x"
                if self.reinvocations:
                    step += f" ({self.reinvocations:+d} vs the crash-free run)"
            parts.append(step)
        if self.schedule:
            shrunk = (
                f" (shrunk from {self.shrunk_from})"
                if self.shrunk_from and self.shrunk_from > len(self.schedule)
                else ""
            )
            parts.append(f"schedule: {'; '.join(map(str, self.schedule))}{shrunk}")
        elif self.shrunk_from == 0:
            parts.append("in the crash-free run")
        return " | ".join(parts)


class Trace(Instrument):
    """An ordered record of claims, journal commits, step invocations and feeds, checked as it
    grows.

    Give it to every worker's Runtime as an instrument (``instruments=[trace]``, or install it
    with ``inject(trace)``) so it sees activations, step invocations and feeds, and give every
    worker's Runtime a store from :meth:`store` so it sees claims and commits. ``runs`` restricts it to those run ids (a set that may grow). It appends to
    ``violations`` when a current activation (one whose claim no newer claim superseded)
    invokes a step after its outcome was journaled or after the workflow was fed it, when one
    activation invokes a step twice without a journaled failed attempt in between, when an
    outcome is fed before every earlier effect's outcome is journaled, and when the store
    accepts a write fenced by an epoch that a claim had already superseded before it began.
    """

    def __init__(self, runs: set[str] | frozenset[str] | None = None) -> None:
        self.runs = runs
        self._lock = threading.Lock()
        self._clock = itertools.count(1)
        self.final: dict[tuple[str, int], int] = {}  # (run, seq) -> when its outcome was recorded
        self._pending: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
        self.fed: dict[str, int] = {}  # run -> highest seq whose outcome the workflow was fed
        self.invocations: dict[tuple[str, int], list[Invocation]] = defaultdict(list)
        self._epochs: dict[str, int] = {}  # run -> highest epoch claimed so far
        self.claims = 0
        self.commits = 0
        self.violations: list[Violation] = []

    def store(self, inner: Store, worker: str) -> TracingStore:
        """``inner`` wrapped so that this trace sees what ``worker`` claims and commits."""
        return TracingStore(inner, self, worker)

    def invocation_count(self, run_id: str, seq: int) -> int:
        with self._lock:
            return len(self.invocations.get((run_id, seq), ()))

    def _watching(self, run_id: str) -> bool:
        return self.runs is None or run_id in self.runs

    def _flag(self, kind: str, run_id: str, seq: int | None, message: str) -> None:
        self.violations.append(Violation(kind, message, run_id=run_id, seq=seq))

    # -- events from the store wrapper ------------------------------------------------------------

    def _claimed(self, runs: Sequence[RunRecord]) -> None:
        with self._lock:
            for run in runs:
                self._epochs[run.run_id] = max(self._epochs.get(run.run_id, 0), run.epoch)
                self.claims += 1

    def _claimed_epoch(self, run_id: str) -> int:
        with self._lock:
            return self._epochs.get(run_id, 0)

    def _fenced_write(self, op: str, run_id: str, epoch: int, superseded_by: int) -> None:
        """A write fenced by ``epoch`` was accepted although ``superseded_by`` had been claimed
        before it started: the store let a worker whose lease expired write."""
        if epoch < superseded_by and self._watching(run_id):
            with self._lock:
                self._flag(
                    "stale-write",
                    run_id,
                    None,
                    f"the store accepted {op} on run {run_id!r} fenced by epoch {epoch} after "
                    f"epoch {superseded_by} had been claimed: a worker whose lease expired must "
                    "not be able to write (fencing)",
                )

    def _committed(self, run_id: str, epoch: int, entries: Iterable[JournalEntry]) -> None:
        if not self._watching(run_id):
            return
        with self._lock:
            order = next(self._clock)
            self.commits += 1
            for entry in entries:
                if entry.final:
                    self.final.setdefault((run_id, entry.seq), order)
                else:
                    self._pending[(run_id, entry.seq)].append((order, epoch))

    def _loaded(self, run_id: str, entries: Iterable[JournalEntry]) -> None:
        # A commit whose caller was cancelled after it landed is only learnt here.
        if not self._watching(run_id):
            return
        with self._lock:
            order = next(self._clock)
            for entry in entries:
                if entry.final:
                    self.final.setdefault((run_id, entry.seq), order)

    def stale_here(self, run_id: str) -> bool:
        """Whether the activation running in this context (task or step thread) works on
        ``run_id`` under an epoch that a newer claim has superseded: a worker that lost its
        lease and does not know yet. It may still invoke the step it was about to run (fencing
        stops its writes, not that); a current activation may not re-run a recorded step."""
        activation = _ACTIVATION.get()
        if activation is None or activation[1] != run_id:
            return False
        with self._lock:
            return activation[2] < self._epochs.get(run_id, 0)

    # -- events from the runtime (the instrument's hooks) ----------------------------------------

    def activation_started(self, event: ActivationStarted) -> None:
        # Hooks run in the activation's task: what it does from here on (its step tasks and
        # threads too) belongs to this activation, which stale_here() reads.
        if not _PAUSED.get():
            _ACTIVATION.set((event.worker_id, event.run_id, event.epoch))

    def step_started(self, event: StepStarted) -> None:
        if not _PAUSED.get() and self._watching(event.run_id):
            self._invoked(event.run_id, event.seq, event.worker_id, event.epoch)

    def fault_point(self, event: FaultPoint) -> None:
        if event.point != BEFORE_FEED or event.seq is None or _PAUSED.get():
            return
        if self._watching(event.run_id):
            self._fed(event.run_id, event.seq)

    def _invoked(self, run_id: str, seq: int, worker: str, epoch: int) -> None:
        who = f"worker {worker}, epoch {epoch}"
        with self._lock:
            order = next(self._clock)
            key = (run_id, seq)
            # A superseded activation read its journal before the newer one recorded the step.
            stale = epoch < self._epochs.get(run_id, 0)
            recorded = self.final.get(key)
            if recorded is not None and recorded < order and not stale:
                self._flag(
                    "reinvoked-after-recorded",
                    run_id,
                    seq,
                    f"step seq {seq} of run {run_id!r} was invoked ({who}) after its outcome had "
                    "been journaled; only a step whose outcome was not recorded may run again "
                    "(a stale worker writing past its lease, or a journal that was not read)",
                )
            fed = self.fed.get(run_id, -1)
            if seq <= fed and not stale:
                self._flag(
                    "reinvoked-after-fed",
                    run_id,
                    seq,
                    f"step seq {seq} of run {run_id!r} was invoked ({who}) after the workflow "
                    f"had been fed the outcomes up to seq {fed}: a step ran again that was not "
                    "in flight at a crash (resume, never restart)",
                )
            mine = [i for i in self.invocations[key] if i.worker == worker and i.epoch == epoch]
            if mine and not any(
                mine[-1].order < at < order and e == epoch for at, e in self._pending[key]
            ):
                self._flag(
                    "reinvoked-in-activation",
                    run_id,
                    seq,
                    f"step seq {seq} of run {run_id!r} was invoked twice by one activation "
                    f"({who}) without its failed attempt being journaled in between",
                )
            self.invocations[key].append(Invocation(order, run_id, seq, worker, epoch))

    def _fed(self, run_id: str, seq: int) -> None:
        with self._lock:
            missing = [i for i in range(seq + 1) if (run_id, i) not in self.final]
            if missing:
                shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
                self._flag(
                    "fed-unjournaled",
                    run_id,
                    missing[0],
                    f"run {run_id!r} was fed the outcome of seq {seq} while seq {shown} had no "
                    "journaled outcome: the workflow saw a result that a crash would lose "
                    "(persist before proceed)",
                )
            self.fed[run_id] = max(self.fed.get(run_id, -1), seq)


class TracingStore(StoreWrapper):
    """A store that tells a :class:`Trace` what its worker claims, loads and commits.

    Everything else is passed through to ``inner`` unchanged (including ``watch`` and
    store-specific methods)."""

    def __init__(self, inner: Store, trace: Trace, worker: str) -> None:
        super().__init__(inner)
        self.trace = trace
        self.worker = worker

    def __repr__(self) -> str:
        return f"TracingStore({self.inner!r}, worker={self.worker!r})"

    async def load_journal(self, run_id: str) -> list[JournalEntry]:
        entries = await self.inner.load_journal(run_id)
        self.trace._loaded(run_id, entries)
        return entries

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        latest = self.trace._claimed_epoch(run_id)
        await self.inner.append(run_id, epoch, entries)
        self.trace._committed(run_id, epoch, entries)
        self.trace._fenced_write("a journal append", run_id, epoch, latest)

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        latest = self.trace._claimed_epoch(run_id)
        got = await self.inner.consume_signal(run_id, epoch, name, entry)
        if got is not None:
            self.trace._committed(run_id, epoch, [got])
        self.trace._fenced_write(f"consuming signal {name!r}", run_id, epoch, latest)
        return got

    async def claim(self, request: ClaimRequest) -> list[RunRecord]:
        runs = await self.inner.claim(request)
        self.trace._claimed(runs)
        return runs

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        latest = self.trace._claimed_epoch(run_id)
        await self.inner.park(run_id, epoch, wake_at, waits)
        self.trace._fenced_write("parking the run", run_id, epoch, latest)

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        latest = self.trace._claimed_epoch(run_id)
        await self.inner.finish(run_id, epoch, status, result, error)
        self.trace._fenced_write(f"finishing the run as {status}", run_id, epoch, latest)

    async def record_crash(
        self, run_id: str, epoch: int | None, error: str, retry_at: float, max_crashes: int
    ) -> RunRecord:
        latest = self.trace._claimed_epoch(run_id)
        record = await self.inner.record_crash(run_id, epoch, error, retry_at, max_crashes)
        if epoch is not None:
            self.trace._fenced_write("recording a crash", run_id, epoch, latest)
        return record
