"""coro_durable.testing: prove that your workflows survive crashes (fault injection, crash fuzz).

The runtime calls a named hook at every boundary of a step's life (the crash points of the
project's fault model, X1 to X11); normally nothing listens and the hooks cost one global lookup.
This module installs listeners that fail there, the way a process dies or a database connection
drops, and checks what exactly-once means afterwards.

* :func:`crash_fuzz` (and :func:`crash_fuzz_async`) runs your workflow once with no faults, then
  once per crash point per effect, then random multi-crash schedules, restarting a fresh worker
  after every crash. It calls your ``setup()`` before each run and ``check(result)`` after it, and
  returns a :class:`CrashFuzzReport`; a broken promise becomes a :class:`Violation` in the report
  (never an exception)::

      from coro_durable.testing import crash_fuzz

      def test_checkout_survives_crashes():
          report = crash_fuzz(checkout, "order-1", setup=payments.reset,
                              check=lambda result: payments.assert_charged_once("order-1"))
          assert report.ok, report.summary()

* :class:`Fault`, :class:`FaultPlan` and :func:`inject` put individual faults where you want them:
  ``with inject(Fault("X4", seq=1)):`` crashes the worker after step 1 ran and before its result
  was journaled; a fresh ``Runtime`` on the same store resumes the run.
* :class:`Trace` and :class:`TracingStore` record the order of claims, journal commits, step
  invocations and feeds across workers, and flag the orders that break the contract: a step
  invoked after its outcome was journaled, a step invoked again after the workflow was fed its
  outcome, an outcome fed before it was journaled, a write accepted from a worker whose lease a
  newer claim had superseded.
* :func:`corrupt_row` tampers with a stored journal row (memory, SQLite, PostgreSQL, Redis stores)
  to test that a corrupt journal quarantines the run instead of replaying a wrong value.

The crash points (``POINTS``); a hook passes the run id and the effect's seq where it has one:

============ ==============================================================================
X1           before a step (or any effect) starts executing
invoke       the step's body is about to be called, its idempotency key set (observation)
X2           after a pending entry (timer due time, signal deadline, failed attempt) was written
X3           the step's body returned (its external effect is done), before the runtime saw it
X4           the result is encoded, before its journal entry is written ("done, not journaled")
commit.fail  a journal commit fails before it reaches the store (a ``StoreError``)
X5           the journal entry was committed but its acknowledgement was lost (a ``StoreError``)
X6           the outcome is journaled, before the workflow is fed (seq: the effect's last)
X7           the workflow was fed, before it issued its next effect (seq: the next effect's)
X8           before the run's result is committed
X9           the run's result was committed, its acknowledgement lost (a ``StoreError``)
X10          a due run (timer, signal, retry, takeover) was claimed, before it is processed
X11          a signal is stored, before the waiter consumes it
X12          a signal delivered twice (client side; :func:`crash_fuzz` re-sends every signal)
renew        a lease renewal is lost (a ``StoreError``; the run id is the worker id)
============ ==============================================================================

A crash fault raises :class:`~coro_durable._faults.SimulatedCrash`: that Runtime's worker stops
as a killed process would (nothing more is written, its lease is not handed back; the code around
its ``async with`` keeps running, sees ``rt._crashed`` set, and should close it), and a fresh
Runtime resumes the run once the lease expires, so keep ``lease_ttl`` small in tests. Faults are
process-wide: run one fuzz at a time.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import itertools
import json
import logging
import random as _random
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.to_thread

from . import _codec, _faults, _workflow
from ._faults import SimulatedCrash
from ._journal import TERMINAL, JournalEntry, RunRecord, RunStatus
from ._memory import MemoryStore
from ._runtime import Runtime
from ._sqlite import SqliteStore
from ._store import Store, StoreWrapper, open_store
from .errors import ConfigurationError, RunError, StoreError

__all__ = [
    "POINTS",
    "CRASH_POINTS",
    "ERROR_POINTS",
    "Fault",
    "Fired",
    "FaultPlan",
    "inject",
    "no_faults",
    "Trace",
    "TracingStore",
    "Invocation",
    "corrupt_row",
    "crash_fuzz",
    "crash_fuzz_async",
    "CrashFuzzReport",
    "Violation",
    "SimulatedCrash",
]

#: Every hook the runtime calls, in the order of a step's life.
POINTS: tuple[str, ...] = (
    "X1",
    "invoke",
    "X2",
    "X3",
    "X4",
    "commit.fail",
    "X5",
    "X6",
    "X7",
    "X8",
    "X9",
    "X10",
    "X11",
    "renew",
)
#: Points where a fault is a process crash by default.
CRASH_POINTS: tuple[str, ...] = ("X1", "X2", "X3", "X4", "X6", "X7", "X8", "X10", "X11")
#: Points where a fault is a store error by default: a commit that fails, or that lands while the
#: caller sees an error (the runtime must retry it and recognise its own write), or a lost renewal.
ERROR_POINTS: tuple[str, ...] = ("commit.fail", "X5", "X9", "renew")

_NOT_FUZZED = ("invoke", "renew")  # observation / lease points, not enumerated per effect

# Hooks fired while this is set are ignored by every injector of this module (replays, checks).
_PAUSED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "coro_durable_no_faults", default=False
)
# (worker, run_id, epoch) of the activation running in this context, set by TracingStore.
_ACTIVATION: contextvars.ContextVar[tuple[str, str, int] | None] = contextvars.ContextVar(
    "coro_durable_activation", default=None
)


@contextlib.contextmanager
def no_faults() -> Iterator[None]:
    """A block whose hooks no injector of this module fires on or records (inspecting runs)."""
    token = _PAUSED.set(True)
    try:
        yield
    finally:
        _PAUSED.reset(token)


# ---- faults -------------------------------------------------------------------------------------


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault to inject: at ``point``, on the ``nth`` matching hit after it was armed.

    ``seq`` and ``run_id`` narrow the hits that match (for ``renew`` the run_id is the worker
    id). ``times`` is how many consecutive matching hits fail from then on (None: all of them;
    a poisoned run). ``action`` is ``"crash"`` (the worker dies), ``"error"`` (a transient
    ``StoreError``) or ``"auto"``: error at ``commit.fail``, ``X5``, ``X9`` and ``renew``, crash
    elsewhere.
    """

    point: str
    seq: int | None = None
    run_id: str | None = None
    nth: int = 1
    times: int | None = 1
    action: Literal["auto", "crash", "error"] = "auto"

    def __post_init__(self) -> None:
        if self.point not in POINTS:
            raise ConfigurationError(
                f"unknown fault point {self.point!r}; the points are {', '.join(POINTS)}"
            )
        if self.nth < 1 or (self.times is not None and self.times < 1):
            raise ConfigurationError("Fault.nth and Fault.times count hits from 1")
        if self.action not in ("auto", "crash", "error"):
            raise ConfigurationError(f"Fault.action is auto, crash or error, not {self.action!r}")
        if self.point == "renew" and self.action == "crash":
            raise ConfigurationError(
                "a renew fault is a lost renewal (action='error'); to kill the worker, crash it "
                "at a step's point"
            )

    @property
    def kind(self) -> Literal["crash", "error"]:
        """What firing does: ``"crash"`` or ``"error"``."""
        if self.action != "auto":
            return self.action
        return "error" if self.point in ERROR_POINTS else "crash"

    def __str__(self) -> str:
        where = [f"seq {self.seq}"] if self.seq is not None else []
        if self.run_id is not None:
            where.append(f"{'worker' if self.point == 'renew' else 'run'} {self.run_id}")
        if self.nth > 1:
            where.append(f"{_ordinal(self.nth)} hit")
        if self.times != 1:
            where.append("every hit" if self.times is None else f"{self.times} hits in a row")
        return f"{self.kind} at {self.point}" + (f" ({', '.join(where)})" if where else "")


@dataclass(frozen=True, slots=True)
class Fired:
    """A fault that fired: which one, and the hit it fired on."""

    fault: Fault
    point: str
    run_id: str
    seq: int | None
    kind: Literal["crash", "error"]


_ERROR_TEXT = {
    "commit.fail": "the commit failed before it reached the store",
    "X5": "the commit landed but its acknowledgement was lost",
    "X9": "the run's result was committed but the acknowledgement was lost",
    "renew": "the lease renewal was lost",
}


@dataclass(slots=True)
class _Armed:
    fault: Fault
    matched: int = 0
    fired: int = 0


class FaultPlan:
    """An injector: fires its faults on matching hits and records every hit it sees.

    Install it with :func:`inject`. ``runs`` limits it to those run ids (a live set may be passed
    and grown); ``renew`` hits, whose run_id is a worker id, always pass. Thread-safe.
    """

    def __init__(self, *faults: Fault, runs: set[str] | frozenset[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self.runs = runs
        self.fired: list[Fired] = []
        self.hits: list[tuple[str, str, int | None]] = []  # every (point, run_id, seq) seen
        for f in faults:
            self.add(f)

    @property
    def faults(self) -> tuple[Fault, ...]:
        with self._lock:
            return tuple(a.fault for a in self._armed)

    def add(self, fault: Fault) -> None:
        """Arm another fault; its ``nth`` counts hits from now."""
        with self._lock:
            self._armed.append(_Armed(fault))

    def disarm(self) -> None:
        """Drop every armed fault (hits are still recorded)."""
        with self._lock:
            self._armed.clear()

    @property
    def crashes(self) -> int:
        return sum(1 for f in self.fired if f.kind == "crash")

    @property
    def errors(self) -> int:
        return sum(1 for f in self.fired if f.kind == "error")

    def __call__(self, point: str, run_id: str, seq: int | None) -> None:
        if _PAUSED.get():
            return
        if self.runs is not None and point != "renew" and run_id not in self.runs:
            return
        fire: Fired | None = None
        with self._lock:
            self.hits.append((point, run_id, seq))
            for armed in self._armed:
                f = armed.fault
                if f.point != point or (f.seq is not None and f.seq != seq):
                    continue
                if f.run_id is not None and f.run_id != run_id:
                    continue
                armed.matched += 1
                if armed.matched < f.nth or (f.times is not None and armed.fired >= f.times):
                    continue
                armed.fired += 1
                fire = Fired(f, point, run_id, seq, f.kind)
                self.fired.append(fire)
                break
        if fire is None:
            return
        if fire.kind == "crash":
            raise SimulatedCrash(point, run_id, seq)
        raise StoreError(f"injected fault at {point}: {_ERROR_TEXT.get(point, 'store error')}")


@contextlib.contextmanager
def inject(
    *faults: Fault | FaultPlan | Trace | Callable[[str, str, int | None], None],
) -> Iterator[FaultPlan]:
    """Install faults for a block: ``with inject(Fault("X4", seq=1)) as plan: ...``.

    Accepts :class:`Fault` objects (gathered into a new :class:`FaultPlan`), or one plan,
    trace or injector function. Injectors already installed keep running after the new one
    (so a :class:`Trace` outside and a plan inside both see every hit; a crash raised by the
    inner one hides that hit from the outer one). Yields the plan (a new empty one when given
    a trace or function)."""
    loose = [f for f in faults if isinstance(f, Fault)]
    others = [f for f in faults if not isinstance(f, Fault)]
    if others and (loose or len(others) > 1):
        raise ConfigurationError("inject() takes Fault objects, or a single plan/trace/injector")
    plan = others[0] if others and isinstance(others[0], FaultPlan) else FaultPlan(*loose)
    hook: Callable[[str, str, int | None], None] = others[0] if others else plan
    previous = _faults._injector

    def chained(point: str, run_id: str, seq: int | None) -> None:
        hook(point, run_id, seq)
        if previous is not None:
            previous(point, run_id, seq)

    _faults.set_injector(chained if previous is not None else hook)
    try:
        yield plan
    finally:
        _faults.set_injector(previous)


# ---- the trace: what happened, in order, across workers ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Invocation:
    """One call of a step's body: the trace's clock, the run, seq and the activation's worker
    and fencing token (None when it could not be attributed)."""

    order: int
    run_id: str
    seq: int
    worker: str | None
    epoch: int | None


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


class Trace:
    """An ordered record of claims, journal commits, step invocations and feeds, checked as it
    grows.

    Install it as an injector (``with inject(trace):``) so it sees the ``invoke`` and ``X6``
    hooks, and give every worker's Runtime a store from :meth:`store` so it sees claims and
    commits. ``runs`` restricts it to those run ids (a set that may grow). It appends to
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
        self._claims: dict[tuple[str, str], int] = {}  # (worker, run) -> epoch of its last claim
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

    def _claimed(self, worker: str, runs: Sequence[RunRecord]) -> None:
        with self._lock:
            for run in runs:
                self._claims[(worker, run.run_id)] = run.epoch
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

    def _epoch_of(self, worker: str, run_id: str) -> int | None:
        with self._lock:
            return self._claims.get((worker, run_id))

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

    # -- events from the runtime's hooks ----------------------------------------------------------

    def __call__(self, point: str, run_id: str, seq: int | None) -> None:
        if _PAUSED.get() or seq is None or not self._watching(run_id):
            return
        if point == "invoke":
            self._invoked(run_id, seq)
        elif point == "X6":
            self._fed(run_id, seq)

    def _invoked(self, run_id: str, seq: int) -> None:
        activation = _ACTIVATION.get()
        worker = epoch = None
        if activation is not None and activation[1] == run_id:
            worker, epoch = activation[0], activation[2]
        who = f"worker {worker}, epoch {epoch}" if worker else "an unattributed activation"
        with self._lock:
            order = next(self._clock)
            key = (run_id, seq)
            # A superseded activation read its journal before the newer one recorded the step.
            stale = epoch is not None and epoch < self._epochs.get(run_id, 0)
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
            if epoch is not None:
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
        activation = _ACTIVATION.get()
        if activation is None or activation[1] != run_id:
            return  # a replay or an inspection, not an activation executing the run
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
        # An activation loads its journal right after its claim: from here on, hooks in this
        # task (and the tasks and threads it starts) belong to that activation. Its epoch is
        # read before the load: a slow load can let this worker claim the run again meanwhile.
        epoch = None if _PAUSED.get() else self.trace._epoch_of(self.worker, run_id)
        entries = await self.inner.load_journal(run_id)
        self.trace._loaded(run_id, entries)
        if epoch is not None:
            _ACTIVATION.set((self.worker, run_id, epoch))
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

    async def claim(
        self,
        worker: str,
        *,
        limit: int,
        lease_ttl: float,
        workflows: Sequence[str],
        max_crashes: int,
    ) -> list[RunRecord]:
        runs = await self.inner.claim(
            worker, limit=limit, lease_ttl=lease_ttl, workflows=workflows, max_crashes=max_crashes
        )
        self.trace._claimed(self.worker, runs)
        return runs

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waiting_on: str | None
    ) -> None:
        latest = self.trace._claimed_epoch(run_id)
        await self.inner.park(run_id, epoch, wake_at, waiting_on)
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


# ---- corrupting rows ---------------------------------------------------------------------------


async def corrupt_row(store: Store, run_id: str, seq: int, result: Any = "tampered") -> None:
    """Overwrite the stored result of journal entry ``seq`` of ``run_id`` without updating its
    checksum, as a torn write or a hand edit would. The next activation of the run must refuse
    it (the run is quarantined with a corrupt-journal error) instead of replaying a wrong value.

    Knows the memory, SQLite, PostgreSQL and Redis stores; raises NotImplementedError (with the
    reason) for others, and LookupError when the row does not exist."""
    while isinstance(store, StoreWrapper):
        store = store.inner
    text = _codec.encode(result)
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


# ---- crash fuzz ------------------------------------------------------------------------------------


@dataclass(slots=True)
class CrashFuzzReport:
    """What :func:`crash_fuzz` did and found. ``ok`` is True when ``violations`` is empty."""

    workflow: str
    store: str
    seed: int
    reference: Any = None  # the crash-free run's result (or the RunError it ended with)
    effects: int = 0  # journal entries of the crash-free run
    runs: int = 0  # runs executed, the crash-free one and shrinking reruns included
    schedules: int = 0  # fault schedules tried
    crashes: int = 0  # simulated process crashes injected
    store_errors: int = 0  # failed / unacknowledged commits and lost renewals injected
    duplicate_signals: int = 0  # signals re-sent with an id already delivered (X12)
    by_point: Counter[str] = field(default_factory=Counter)  # faults fired per point
    effects_checked: int = 0  # journal entries verified across all runs
    violations: list[Violation] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self, limit: int = 10) -> str:
        """What ran, what was injected, and the first ``limit`` violations."""
        points = "  ".join(f"{p}: {self.by_point[p]}" for p in POINTS if self.by_point[p])
        if self.duplicate_signals:
            points += f"  X12: {self.duplicate_signals}"
        lines = [
            f"crash_fuzz({self.workflow}) on {self.store}, seed {self.seed}: {self.runs} runs, "
            f"{self.schedules} fault schedules, {self.crashes} crashes and {self.store_errors} "
            f"store errors injected, {self.effects} effects per run, {self.effects_checked} "
            f"journal entries checked, {self.elapsed:.1f}s",
            f"  faults per point: {points or 'none'}",
            f"  violations: {len(self.violations)}",
        ]
        lines += [f"  - {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more (report.violations)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


_OPTIONS = {
    "kwargs": "keyword arguments for the workflow",
    "signals": "signals to send, as {name: payload} or [(name, payload), ...]",
    "seed": "seed of the random schedules (default: random, reported)",
    "schedules": "random multi-crash schedules after the single-crash ones (default 10)",
    "max_faults": "faults per random schedule, at most (default 3)",
    "points": "crash points to fuzz (default: CRASH_POINTS + commit.fail, X5, X9)",
    "lose_lease": "also run a schedule whose lease renewals are lost (default True)",
    "workers": "workers running at once (default 1; 2 races them)",
    "lease_ttl": "the workers' lease_ttl (default 0.25 s)",
    "poll_interval": "the workers' poll interval (default 0.01 s)",
    "timeout": "seconds a run may take before it counts as stranded (default 30)",
    "shrink": "shrink failing multi-fault schedules (default True)",
    "max_runs": "stop after this many runs (default: no limit)",
    "stop_after": "stop after this many violations (default: no limit)",
    "runtime": "other Runtime options, e.g. {'inline_wait': 0.05}",
}


@dataclass(slots=True)
class _Options:
    kwargs: dict[str, Any] = field(default_factory=dict)
    signals: list[tuple[str, Any]] = field(default_factory=list)
    seed: int | None = None
    schedules: int = 10
    max_faults: int = 3
    points: tuple[str, ...] = (*CRASH_POINTS, "commit.fail", "X5", "X9")
    lose_lease: bool = True
    workers: int = 1
    lease_ttl: float = 0.25
    poll_interval: float = 0.01
    timeout: float = 30.0
    shrink: bool = True
    max_runs: int | None = None
    stop_after: int | None = None
    runtime: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> _Options:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            known = "\n".join(f"  {k}: {v}" for k, v in _OPTIONS.items())
            raise ConfigurationError(
                f"crash_fuzz got unknown option(s) {', '.join(unknown)}; its options are:\n{known}"
                "\n(pass the workflow's own keyword arguments as kwargs={...})"
            )
        opts = cls(**{k: v for k, v in options.items() if k != "signals"})
        signals = options.get("signals") or []
        opts.signals = list(signals.items() if isinstance(signals, Mapping) else signals)
        for point in opts.points:
            Fault(point)  # validates the name
        if opts.workers < 1 or opts.lease_ttl <= 0:
            raise ConfigurationError("crash_fuzz needs workers >= 1 and lease_ttl > 0")
        return opts


@dataclass(slots=True)
class _Execution:
    run_id: str
    faults: tuple[Fault, ...]
    trace: Trace
    plan: FaultPlan
    lease_ttl: float
    run: RunRecord | None = None
    history: list[JournalEntry] = field(default_factory=list)
    result: Any = None
    crashes: int = 0
    duplicates: int = 0
    violations: list[Violation] = field(default_factory=list)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _outcome(run: RunRecord | None) -> tuple[Any, ...]:
    if run is None:
        return ("missing",)
    if run.status == RunStatus.COMPLETED:
        return ("completed", run.result)
    if run.status in TERMINAL:
        return (run.status.value, run.error)
    return (run.status.value, run.waiting_on, run.last_error)


class _Fuzzer:
    def __init__(
        self,
        workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
        args: tuple[Any, ...],
        setup: Callable[[], Any] | None,
        check: Callable[[Any], Any] | None,
        store: str | Store | Callable[[], Store],
        opts: _Options,
    ) -> None:
        self.workflow = workflow
        self.name = workflow if isinstance(workflow, str) else _workflow.register_function(workflow)
        self.args = args
        self.setup = setup
        self.check = check
        self.opts = opts
        self.seed = opts.seed if opts.seed is not None else _random.SystemRandom().randrange(2**32)
        self.rng = _random.Random(self.seed)
        hypothesis = sys.modules.get("hypothesis")
        if hypothesis is not None:  # inside @given, Hypothesis seeds it: failures replay
            hypothesis.register_random(self.rng)
        self.prefix = f"crashfuzz-{self.name}-{self.seed:08x}-{_random.getrandbits(24):06x}"
        self._memory: MemoryStore | None = None
        if isinstance(store, str):
            self.store_label = store
            if store.split(":", 1)[0].lower() == "memory":
                self._memory = MemoryStore(store)
            self._url = store
            self._factory: Callable[[], Store] | None = None
        elif callable(store) and not isinstance(store, MemoryStore | SqliteStore):
            self.store_label, self._url, self._factory = "a store factory", "", store
        else:
            self.store_label, self._url = repr(store), ""
            self._factory = None
            self._shared: Store = store
        self.report = CrashFuzzReport(self.name, self.store_label, self.seed)
        self.ref_names: dict[int, str] = {}
        self.ref_invocations: Counter[int] = Counter()
        self.ref_outcome: tuple[Any, ...] = ()
        self._counter = itertools.count()

    def new_store(self) -> Store:
        """A store object on the fuzzed database: what a new worker process would open."""
        if self._memory is not None:
            return self._memory
        if self._factory is not None:
            return self._factory()
        if self._url:
            return open_store(self._url)
        return self._shared

    # -- one run under one schedule ----------------------------------------------------------------

    async def execute(
        self, faults: Sequence[Fault], label: str, lease_ttl: float | None = None
    ) -> _Execution:
        run_id = f"{self.prefix}-{label}-{next(self._counter)}"
        if self.setup is not None:
            await _maybe_await(self.setup())
        trace = Trace(runs={run_id})
        plan = FaultPlan(*faults, runs={run_id})
        ex = _Execution(run_id, tuple(faults), trace, plan, lease_ttl or self.opts.lease_ttl)
        deadline = time.monotonic() + self.opts.timeout
        self.report.runs += 1
        try:
            with inject(trace), inject(plan):
                async with Runtime(
                    trace.store(self.new_store(), "client"),
                    worker=False,
                    poll_interval=self.opts.poll_interval,
                ) as client:
                    await client.start(self.workflow, *self.args, run_id=run_id, **self.opts.kwargs)
                    async with anyio.create_task_group() as tg:
                        for slot in range(self.opts.workers):
                            tg.start_soon(self._worker_slot, slot, ex)
                        ex.run = await self._await_end(client, ex, deadline)
                        tg.cancel_scope.cancel()
        except Exception as exc:  # the fuzzer reports, it does not raise
            ex.violations.append(
                Violation(
                    "error", f"{type(exc).__name__}: {exc}", run_id=run_id, schedule=ex.faults
                )
            )
        await self._verify(ex)
        ex.violations[:0] = trace.violations
        self.report.crashes += plan.crashes
        self.report.store_errors += plan.errors
        self.report.by_point.update(f.point for f in plan.fired)
        self.report.duplicate_signals += ex.duplicates
        return ex

    async def _worker_slot(self, slot: int, ex: _Execution) -> None:
        for incarnation in itertools.count():
            name = f"{ex.run_id}/w{slot}.{incarnation}"
            options = {"max_crashes": 1_000_000, **self.opts.runtime}
            rt = Runtime(
                ex.trace.store(self.new_store(), name),
                worker_id=name,
                lease_ttl=ex.lease_ttl,
                poll_interval=self.opts.poll_interval,
                **options,
            )
            async with rt:
                while rt._crashed is None:
                    await anyio.sleep(self.opts.poll_interval)
            ex.crashes += 1  # a crashed "process": start a fresh one on the same store

    async def _await_end(
        self, client: Runtime, ex: _Execution, deadline: float
    ) -> RunRecord | None:
        sent: dict[int, str] = {}
        crashes_seen = 0
        while True:
            run = await client.store.get_run(ex.run_id)
            if run is None or run.status in TERMINAL or run.status == RunStatus.QUARANTINED:
                return run
            if ex.crashes != crashes_seen:  # X12: a client retrying after the crash
                crashes_seen = ex.crashes
                for index in sent:
                    await self._signal(client, ex, index, sent, again=True)
            if run.status == RunStatus.WAITING and run.waiting_on:
                for index, (name, _) in enumerate(self.opts.signals):
                    if index not in sent and f"signal {name!r}" in run.waiting_on:
                        await self._signal(client, ex, index, sent)
                        break  # one at a time, in order, like a human answering
            if time.monotonic() > deadline:
                return run
            await anyio.sleep(self.opts.poll_interval)

    async def _signal(
        self, client: Runtime, ex: _Execution, index: int, sent: dict[int, str], again: bool = False
    ) -> None:
        name, payload = self.opts.signals[index]
        sid = sent.setdefault(index, f"{ex.run_id}:signal:{index}")
        try:
            if not again and not await client.signal(ex.run_id, name, payload, signal_id=sid):
                ex.violations.append(
                    Violation(
                        "duplicate-signal",
                        f"signal {name!r} id {sid} was refused on its first delivery",
                        run_id=ex.run_id,
                    )
                )
            ex.duplicates += 1
            if await client.signal(ex.run_id, name, payload, signal_id=sid):
                ex.violations.append(
                    Violation(
                        "duplicate-signal",
                        f"signal {name!r} id {sid} was accepted twice (X12: a signal delivered "
                        "twice must be stored once)",
                        run_id=ex.run_id,
                    )
                )
        except RunError:
            pass  # the run already finished: nothing would read it

    async def _verify(self, ex: _Execution) -> None:
        with no_faults():
            async with Runtime(self.new_store(), worker=False) as client:
                ex.run = await client.store.get_run(ex.run_id)
                if ex.run is None:
                    ex.violations.append(Violation("error", "the run vanished", run_id=ex.run_id))
                    return
                ex.history = await client.history(ex.run_id)
                self.report.effects_checked += len(ex.history)
                if ex.run.status not in TERMINAL:
                    ex.violations.append(
                        Violation(
                            "stranded",
                            f"the run is still {ex.run.status} after {self.opts.timeout:.0f}s "
                            f"(waiting on {ex.run.waiting_on or 'nothing'}; last error "
                            f"{ex.run.last_error or 'none'}); every run must reach a final state "
                            "once faults stop",
                            run_id=ex.run_id,
                        )
                    )
                    return
                try:
                    ex.result = await client.result(ex.run_id, timeout=self.opts.timeout)
                except RunError as exc:
                    ex.result = exc
                replayed = await client.replay(ex.run_id)
                if not replayed.matched:
                    ex.violations.append(
                        Violation("replay", f"the journal does not replay: {replayed.detail}")
                    )
        if self.ref_outcome and _outcome(ex.run) != self.ref_outcome:
            ex.violations.append(
                Violation(
                    "result",
                    f"the run ended {_show(_outcome(ex.run))}, the crash-free run "
                    f"{_show(self.ref_outcome)}",
                    run_id=ex.run_id,
                )
            )
        if self.check is not None:
            try:
                await _maybe_await(self.check(ex.result))
            except AssertionError as exc:
                ex.violations.append(
                    Violation("check", str(exc) or "check() failed an assertion", run_id=ex.run_id)
                )
            except Exception as exc:
                ex.violations.append(
                    Violation("check", f"check() raised {type(exc).__name__}: {exc}", ex.run_id)
                )

    # -- the whole fuzz ----------------------------------------------------------------------------

    def _enrich(self, ex: _Execution, schedule: tuple[Fault, ...], before: int) -> list[Violation]:
        out = []
        for v in ex.violations:
            seq = v.seq
            if seq is None:
                seq = next((f.seq for f in schedule if f.seq is not None), None)
            point = schedule[0].point if schedule else None
            invocations = ex.trace.invocation_count(ex.run_id, seq) if seq is not None else None
            out.append(
                dataclasses.replace(
                    v,
                    run_id=v.run_id or ex.run_id,
                    seq=seq,
                    point=point,
                    function=self.ref_names.get(seq) if seq is not None else None,
                    key=f"{ex.run_id}:{seq}" if seq is not None else None,
                    invocations=invocations,
                    reinvocations=(
                        invocations - self.ref_invocations[seq]
                        if invocations is not None and seq is not None
                        else None
                    ),
                    schedule=schedule,
                    shrunk_from=before,
                )
            )
        return out

    def _budget_left(self) -> bool:
        if self.opts.max_runs is not None and self.report.runs >= self.opts.max_runs:
            return False
        stop = self.opts.stop_after
        return stop is None or len(self.report.violations) < stop

    async def _shrink(self, faults: tuple[Fault, ...], ex: _Execution) -> tuple[Fault, ...]:
        kinds = {v.kind for v in ex.violations}
        improved = True
        while improved and len(faults) > 1 and self.opts.shrink:
            improved = False
            for i in range(len(faults)):
                candidate = faults[:i] + faults[i + 1 :]
                trial = await self.execute(candidate, "shrink", ex.lease_ttl)
                if kinds & {v.kind for v in trial.violations}:
                    faults, ex.violations, ex.trace = candidate, trial.violations, trial.trace
                    ex.run_id = trial.run_id
                    improved = True
                    break
        return faults

    async def _try(
        self, faults: tuple[Fault, ...], label: str, lease_ttl: float | None = None
    ) -> None:
        self.report.schedules += 1
        ex = await self.execute(faults, label, lease_ttl)
        if ex.violations:
            before = len(faults)
            faults = await self._shrink(faults, ex)
            self.report.violations += self._enrich(ex, faults, before)

    async def run(self) -> CrashFuzzReport:
        started = time.monotonic()
        quiet = _QuietFuzzLogs(self.prefix)
        logger = logging.getLogger("coro_durable")
        logger.addFilter(quiet)
        try:
            await self._run()
        finally:
            logger.removeFilter(quiet)
            self.report.elapsed = time.monotonic() - started
        return self.report

    async def _run(self) -> None:
        started = time.monotonic()
        ref = await self.execute((), "reference")
        ref_seconds = time.monotonic() - started
        self.ref_names = {e.seq: e.describe() for e in ref.history}
        self.report.effects = len(ref.history)
        self.report.reference = ref.result
        for (run_id, step_seq), calls in ref.trace.invocations.items():
            if run_id == ref.run_id:
                self.ref_invocations[step_seq] = len(calls)
        if ref.violations:
            self.report.violations += self._enrich(ref, (), 0)
        if ref.run is None or ref.run.status not in TERMINAL:
            return  # nothing to compare crashed runs with
        self.ref_outcome = _outcome(ref.run)
        # Every hit of the crash-free run, addressed as (point, seq, nth occurrence).
        seen: Counter[tuple[str, int | None]] = Counter()
        sites: list[Fault] = []
        for point, _, seq in ref.plan.hits:
            if point in _NOT_FUZZED:
                continue
            seen[(point, seq)] += 1
            if point in self.opts.points:
                sites.append(Fault(point, seq=seq, nth=seen[(point, seq)]))
        if self.opts.lose_lease and ref_seconds >= 0.05 and self._budget_left():
            # A lease a quarter of the run long, and its renewals lost for four leases: it
            # expires mid-run, the run is taken over while the old activation may still be
            # running a step, and fencing must stop the old one from writing anything more.
            ttl = max(0.02, min(self.opts.lease_ttl, ref_seconds / 4))
            await self._try((Fault("renew", times=12),), "lease-lost", ttl)
        for site in sites:
            if not self._budget_left():
                return
            await self._try((site,), f"{site.point}.{site.seq}.{site.nth}")
        crash_sites = [s for s in sites if s.kind == "crash"] or sites
        for n in range(self.opts.schedules):
            if not crash_sites or not self._budget_left():
                return
            k = self.rng.randint(2, max(2, self.opts.max_faults))
            picked = sorted(
                self.rng.sample(range(len(sites)), min(k, len(sites))),
            )
            faults = tuple(sites[i] for i in picked)
            if all(f.kind == "error" for f in faults):
                faults += (self.rng.choice(crash_sites),)
            await self._try(faults, f"random{n}")


class _QuietFuzzLogs(logging.Filter):
    """Drops the runtime's log lines about the fuzz's own simulated processes (they crash and
    lose leases on purpose), except errors that no injected fault explains."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SimulatedCrash) or str(exc).startswith("injected fault"):
            return False
        message = record.getMessage()
        if "simulated crash" in message or "injected fault" in message:
            return False
        return record.levelno >= logging.ERROR or self.prefix not in message


def _show(outcome: tuple[Any, ...]) -> str:
    if outcome[0] == "completed":
        return f"completed with {outcome[1]}"
    return f"{outcome[0]} ({', '.join(str(x) for x in outcome[1:] if x)})"


async def crash_fuzz_async(
    workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
    *args: Any,
    setup: Callable[[], Any] | None = None,
    check: Callable[[Any], Any] | None = None,
    store: str | Store | Callable[[], Store] = "memory://",
    **options: Any,
) -> CrashFuzzReport:
    """:func:`crash_fuzz` for async code: runs under the current event loop (asyncio or trio)."""
    opts = _Options.parse(options)
    return await _Fuzzer(workflow, args, setup, check, store, opts).run()


def crash_fuzz(
    workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
    *args: Any,
    setup: Callable[[], Any] | None = None,
    check: Callable[[Any], Any] | None = None,
    store: str | Store | Callable[[], Store] = "memory://",
    **options: Any,
) -> CrashFuzzReport:
    """Crash ``workflow(*args)`` at every crash point of every effect; report broken promises.

    1. Runs the workflow once with no faults (the reference), recording every hook it passes.
    2. Runs it again once per hook passed, crashing the worker there (store errors at
       ``commit.fail``, ``X5`` and ``X9``); a fresh worker resumes the run from the store.
    3. Runs ``schedules`` random multi-fault schedules drawn from ``seed``. Right after the
       crash-free run (if it took 50 ms or more) comes a schedule whose lease renewals are lost
       with a lease a quarter of the run long: the run is taken over while the old worker may
       still be running a step, which fencing must stop from writing.

    ``setup()`` is called before every run to reset your world, ``check(result)`` after it
    (with the run's result, or the RunError it ended with) and should raise AssertionError when
    the world is wrong. Both may be coroutine functions. Every run is also checked for: the same
    outcome as the crash-free run, a journal that replays, no step invoked after its outcome
    was journaled or fed, no outcome fed before it was journaled, signals stored once per id.

    Returns a :class:`CrashFuzzReport`; violations are in ``report.violations`` (each naming
    its crash point, seq, step, idempotency key, how often the body ran, and the failing
    schedule, shrunk); nothing is raised for them. ``store`` is a URL (``memory://`` by default:
    one in-process store shared by the simulated processes), a Store, or a factory of Stores.
    ``backend="trio"`` runs it under trio. Steps should act deterministically given ``setup()``.
    The other options: ``kwargs``, ``signals``, ``seed``, ``schedules``, ``max_faults``,
    ``points``, ``lose_lease``, ``workers``, ``lease_ttl``, ``poll_interval``, ``timeout``,
    ``shrink``, ``max_runs``, ``stop_after``, ``runtime``; from async code use
    :func:`crash_fuzz_async`.
    """
    backend = options.pop("backend", "asyncio")
    opts = _Options.parse(options)
    if _in_event_loop():
        raise ConfigurationError(
            "crash_fuzz() runs its own event loop; from async code use "
            "`await coro_durable.testing.crash_fuzz_async(...)`"
        )
    fuzzer = _Fuzzer(workflow, args, setup, check, store, opts)
    return anyio.run(fuzzer.run, backend=backend)


def _in_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_root_task()
            return True
        except RuntimeError:
            pass
    return False


# ---- pytest ----------------------------------------------------------------------------------------
# With `pytest_plugins = ["coro_durable.testing"]` in a conftest.py, tests get a `crash_fuzzer`
# fixture: crash_fuzz that fails the test with the report's summary when it finds violations.

if "pytest" in sys.modules:
    import pytest

    @pytest.fixture
    def crash_fuzzer() -> Callable[..., CrashFuzzReport]:
        """``crash_fuzzer(workflow, *args, **options)``: crash_fuzz, failing the test on any
        violation (with the report's summary) and returning the report otherwise."""

        def fuzz(
            workflow: Callable[..., Coroutine[Any, Any, Any]] | str, *args: Any, **options: Any
        ) -> CrashFuzzReport:
            report = crash_fuzz(workflow, *args, **options)
            if not report.ok:
                pytest.fail(report.summary(), pytrace=False)
            return report

        return fuzz
