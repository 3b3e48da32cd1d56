"""Instruments: objects a Runtime calls at each event of its workers, runs and steps.

    class StepTimes(cd.Instrument):
        def step_finished(self, event: cd.StepFinished) -> None:
            print(f"{event.run_id} seq {event.seq} {event.name} attempt {event.attempt}: "
                  f"{'ok' if event.ok else event.error} in {event.duration:.3f}s")

    async with cd.Runtime(url, instruments=[StepTimes()]) as rt: ...

An :class:`Instrument` has one method per event, each a no-op; a subclass overrides the ones it
wants. Every method takes one event object, a frozen dataclass whose fields are keyword-only (so
new fields can be added without breaking anyone). The instruments belong to one Runtime (two
Runtimes in a process see only their own events) and are called in the order given, from the
task where the event happens, synchronously: a hook must not block (hand slow work to a queue or
a thread). Events a Runtime's worker has for a run carry its ``worker_id``, ``run_id`` and
``epoch`` (the fencing token of the claim). A run's events, in order::

    RunClaimed, ActivationStarted,
        (StepStarted, StepFinished)*, SignalConsumed*, ...    one pair per attempt, retries too
    ActivationEnded, then one of RunFinished, RunParked, RunHandedBack, RunCrashed,
        RunQuarantined, RunLeaseLost (a lease lost at renewal may come before ActivationEnded)

A cancel that interrupts a step starts a fresh activation of the same claim (ActivationEnded
then ActivationStarted again). An instrument that raises is logged once, with its traceback, on
the ``coro_durable.runtime`` logger and removed from that Runtime; the run goes on. The one
exception is ``fault_point``: raising there *is* the fault (``coro_durable.testing.FaultPlan``
raises a simulated crash or a store error), so what it raises propagates into the runtime.

The runtime's cost with no instrument for an event is one list check (``if hooks.step_started:``)
before the event object is even built. ``installed()`` puts instruments in the context of a block
so that every Runtime created inside it gets them too (``coro_durable.testing.inject`` uses it).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from .waits import Wait, describe_waits

__all__ = [
    "ActivationEnded",
    "ActivationStarted",
    "FaultPoint",
    "Hooks",
    "Instrument",
    "RunClaimed",
    "RunCrashed",
    "RunEvent",
    "RunFinished",
    "RunHandedBack",
    "RunLeaseLost",
    "RunParked",
    "RunQuarantined",
    "RunStarted",
    "SignalConsumed",
    "StepFinished",
    "StepStarted",
    "WorkerIdle",
    "WorkerStarted",
    "WorkerStopped",
    "installed",
    "installed_now",
]

log = logging.getLogger("coro_durable.runtime")

# -- the events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStarted:
    """A worker registered and began claiming runs."""

    worker_id: str
    workflows: tuple[str, ...]  # the workflows it serves
    concurrency: int
    lease_ttl: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerIdle:
    """A claim found nothing to run and the worker runs nothing: once, until it claims again."""

    worker_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStopped:
    """The worker stopped (its Runtime closed). ``handed_back``: runs released for others to
    resume; ``crashed``: it died of a simulated crash (fault injection) and released nothing."""

    worker_id: str
    handed_back: int
    crashed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted:
    """``start()`` created a run (``created``) or found it started already with those inputs.
    Reported by the client as ``start()`` returns: a worker (this Runtime's too) may have claimed
    the run, and reported that, in the moment between the store's commit and the return."""

    run_id: str
    workflow: str
    created: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    """The fields of every event a worker has for a run it claimed."""

    worker_id: str
    run_id: str
    epoch: int  # the fencing token of the claim


@dataclass(frozen=True, slots=True, kw_only=True)
class RunClaimed(RunEvent):
    """The worker claimed the run (new, timer due, signal arrived, retry due, lease expired).
    ``steps``: the entries its journal holds already (> 0: it resumes)."""

    workflow: str
    steps: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationStarted(RunEvent):
    """The run's journal is loaded and verified, and its workflow coroutine starts, replaying
    ``replaying`` journal entries first (``restart``: again, after a cancel interrupted a step)."""

    workflow: str
    replaying: int
    restart: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivationEnded(RunEvent):
    """The activation ended: ``completed``, ``failed``, ``cancelled``, ``parked``, or
    ``interrupted`` by an exception or a cancellation (a crash, a divergence from the code, a
    lost lease, a cancel restarting it, a shutdown abandoning it: the run event after it says
    which)."""

    how: Literal["completed", "failed", "cancelled", "parked", "interrupted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted(RunEvent):
    """An attempt of a step begins: its body is called next, with this idempotency key."""

    seq: int
    name: str
    attempt: int
    idempotency_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFinished(RunEvent):
    """An attempt of a step ended: ``ok``, or ``error`` ("Type: message"; an attempt that timed
    out, was cancelled or was stopped by a crash, a lost lease or a shutdown says so there).
    ``duration`` in seconds. Its outcome is journaled after this (or, on error, the retry)."""

    seq: int
    name: str
    attempt: int
    idempotency_key: str
    ok: bool
    error: str | None
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalConsumed(RunEvent):
    """The run took signal ``name`` for the effect at ``seq`` (journaled with it, atomically)."""

    seq: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunParked(RunEvent):
    """The run released its lease to wait for ``waits`` (a signal, a timer, a retry's backoff),
    until ``wake_at`` (epoch seconds; None: until a signal arrives)."""

    waits: tuple[Wait, ...]
    wake_at: float | None

    @property
    def waiting_on(self) -> str | None:
        """The waits in words, as describe() shows them (e.g. ``"signal 'approval'"``)."""
        return describe_waits(self.waits)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunHandedBack(RunEvent):
    """The worker released the run, due now, for another worker to resume (shutting down, or
    abandoning it). ``drained``: its steps in flight finished and were journaled first."""

    drained: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(RunEvent):
    """The run's result is committed: ``status`` completed, failed or cancelled; ``error`` is
    "Type: message" of a failed or cancelled run."""

    status: str
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCrashed(RunEvent):
    """The activation crashed (an internal error, a store failing past its deadline): the run
    is retried with backoff. ``crash_count``: crashes in a row (None: it could not be recorded)."""

    error: str
    crash_count: int | None
    max_crashes: int
    exception: BaseException


@dataclass(frozen=True, slots=True, kw_only=True)
class RunQuarantined(RunEvent):
    """The run was quarantined: at once (its code diverged, its journal is corrupt, its workflow
    is unknown; ``crash_count`` None) or after ``crash_count`` crashes in a row. Resume releases
    it after a fix."""

    error: str
    crash_count: int | None
    exception: BaseException


@dataclass(frozen=True, slots=True, kw_only=True)
class RunLeaseLost(RunEvent):
    """Another worker owns the run now; this one stops driving it and writes nothing more.
    ``detected`` at a lease ``renewal``, by a fenced ``write`` (``error`` says which), or at a
    ``reclaim``: the lease expired before a renewal landed and this same worker claimed the run
    again (``reclaimed_epoch``); the activation at ``epoch`` stops, a new one takes over."""

    detected: Literal["renewal", "write", "reclaim"]
    error: str | None
    reclaimed_epoch: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPoint:
    """The runtime passes a named crash point (``coro_durable._core.faults``): ``point`` is its id
    ("X7"), ``seq`` the effect's where it has one; for ``renew`` the run_id is the worker id."""

    point: str
    run_id: str
    seq: int | None


# -- the instrument -----------------------------------------------------------------------------------


class Instrument:
    """Base class of instruments: override the hooks you want; the others do nothing."""

    def worker_started(self, event: WorkerStarted) -> None:
        """A worker began claiming runs."""

    def worker_idle(self, event: WorkerIdle) -> None:
        """The worker found nothing to run."""

    def worker_stopped(self, event: WorkerStopped) -> None:
        """The worker stopped."""

    def run_started(self, event: RunStarted) -> None:
        """``start()`` created (or found) a run."""

    def run_claimed(self, event: RunClaimed) -> None:
        """The worker claimed a run."""

    def activation_started(self, event: ActivationStarted) -> None:
        """The workflow coroutine starts (replaying the journal first)."""

    def activation_ended(self, event: ActivationEnded) -> None:
        """The activation ended."""

    def step_started(self, event: StepStarted) -> None:
        """A step attempt begins."""

    def step_finished(self, event: StepFinished) -> None:
        """A step attempt ended."""

    def signal_consumed(self, event: SignalConsumed) -> None:
        """A run took a signal."""

    def run_parked(self, event: RunParked) -> None:
        """A run released its lease to wait on a timer or a signal."""

    def run_handed_back(self, event: RunHandedBack) -> None:
        """A run was handed back for another worker to resume."""

    def run_finished(self, event: RunFinished) -> None:
        """A run completed, failed or was cancelled."""

    def run_crashed(self, event: RunCrashed) -> None:
        """A run's activation crashed."""

    def run_quarantined(self, event: RunQuarantined) -> None:
        """A run was quarantined."""

    def run_lease_lost(self, event: RunLeaseLost) -> None:
        """This worker lost a run's lease."""

    def fault_point(self, event: FaultPoint) -> None:
        """A named crash point was passed; raising here injects a fault (it propagates)."""


E = TypeVar("E")
Hook = Callable[[E], None]

#: Every hook's name: an Instrument method and a list of bound hooks on Hooks.
HOOK_NAMES: tuple[str, ...] = tuple(
    name
    for name in vars(Instrument)
    if not name.startswith("_") and callable(vars(Instrument)[name])
)


def _implements(instrument: object, name: str) -> bool:
    """Whether ``instrument`` has a hook ``name`` of its own (not Instrument's no-op)."""
    method = getattr(type(instrument), name, None)
    return callable(method) and method is not getattr(Instrument, name)


class Hooks:
    """One Runtime's instruments, as the list of bound hooks for each event (empty: none).

    The runtime checks a list before it builds an event (``if hooks.step_started:``), then calls
    :meth:`emit`; fault points go through :meth:`fault`."""

    worker_started: list[Hook[WorkerStarted]]
    worker_idle: list[Hook[WorkerIdle]]
    worker_stopped: list[Hook[WorkerStopped]]
    run_started: list[Hook[RunStarted]]
    run_claimed: list[Hook[RunClaimed]]
    activation_started: list[Hook[ActivationStarted]]
    activation_ended: list[Hook[ActivationEnded]]
    step_started: list[Hook[StepStarted]]
    step_finished: list[Hook[StepFinished]]
    signal_consumed: list[Hook[SignalConsumed]]
    run_parked: list[Hook[RunParked]]
    run_handed_back: list[Hook[RunHandedBack]]
    run_finished: list[Hook[RunFinished]]
    run_crashed: list[Hook[RunCrashed]]
    run_quarantined: list[Hook[RunQuarantined]]
    run_lease_lost: list[Hook[RunLeaseLost]]
    fault_point: list[Hook[FaultPoint]]

    def __init__(self, instruments: Iterable[object] = ()) -> None:
        self.instruments = list(instruments)
        self._bind()

    def _bind(self) -> None:
        for name in HOOK_NAMES:
            bound = [getattr(i, name) for i in self.instruments if _implements(i, name)]
            setattr(self, name, bound)

    def emit(self, hooks: list[Hook[E]], event: E) -> None:
        """Call each hook with ``event``. One that raises is logged and its instrument removed
        from this Runtime (the lists are rebuilt, so this loop goes on over the old one)."""
        for hook in hooks:
            try:
                hook(event)
            except Exception:
                instrument: Any = getattr(hook, "__self__", hook)
                log.error(
                    "instrument %r raised in %s(%s); it is removed from this runtime and gets "
                    "no more events (the run goes on)",
                    instrument,
                    getattr(hook, "__name__", "a hook"),
                    type(event).__name__,
                    exc_info=True,
                )
                self.instruments = [i for i in self.instruments if i is not instrument]
                self._bind()

    def fault(self, point: str, run_id: str, seq: int | None = None) -> None:
        """Pass the named fault point ``point``: what a ``fault_point`` hook raises propagates."""
        if self.fault_point:
            event = FaultPoint(point=point, run_id=run_id, seq=seq)
            for hook in self.fault_point:
                hook(event)


# -- instruments for a block ----------------------------------------------------------------------------

_INSTALLED: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar(
    "coro_durable_instruments", default=()
)


@contextlib.contextmanager
def installed(*instruments: object) -> Iterator[None]:
    """Every Runtime created in this block (in this context: its tasks, not other threads'
    event loops) gets ``instruments``, called before those installed by an outer block and
    before its own ``instruments=[...]``."""
    token = _INSTALLED.set((*instruments, *_INSTALLED.get()))
    try:
        yield
    finally:
        _INSTALLED.reset(token)


def installed_now() -> tuple[object, ...]:
    """The instruments ``installed()`` blocks put in the current context, innermost first."""
    return _INSTALLED.get()
