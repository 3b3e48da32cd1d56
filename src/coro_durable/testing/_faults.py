"""Fault injection at the named crash points: Fault, FaultPlan (an instrument), inject, no_faults.

A :class:`FaultPlan` is an :class:`~coro_durable.Instrument` whose ``fault_point`` hook raises
where one of its faults matches. Give it to the Runtimes it is for (``Runtime(...,
instruments=[plan])``: other Runtimes in the process never see it), or install it for a block
with :func:`inject`, which every Runtime created in that block (in its context) picks up.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._trace import Trace

from .._core.faults import (
    AFTER_BODY,
    AFTER_COMMIT,
    AFTER_FEED,
    AFTER_FINISH,
    AFTER_PENDING,
    BEFORE_CONSUME,
    BEFORE_FEED,
    BEFORE_FINISH,
    BEFORE_RESULT,
    BEFORE_STEP,
    CLAIMED,
    COMMIT_FAIL,
    INVOKE,
    POINTS,
    RENEW,
    SimulatedCrash,
)
from .._core.hooks import FaultPoint, Instrument, installed
from ..errors import ConfigurationError, StoreError

__all__ = [
    "CRASH_POINTS",
    "ERROR_POINTS",
    "POINTS",
    "Fault",
    "FaultPlan",
    "Fired",
    "inject",
    "no_faults",
]

#: Points where a fault is a process crash by default.
CRASH_POINTS: tuple[str, ...] = (
    BEFORE_STEP,
    AFTER_PENDING,
    AFTER_BODY,
    BEFORE_RESULT,
    BEFORE_FEED,
    AFTER_FEED,
    BEFORE_FINISH,
    CLAIMED,
    BEFORE_CONSUME,
)
#: Points where a fault is a store error by default: a commit that fails, or that lands while the
#: caller sees an error (the runtime must retry it and recognise its own write), or a lost renewal.
ERROR_POINTS: tuple[str, ...] = (COMMIT_FAIL, AFTER_COMMIT, AFTER_FINISH, RENEW)

_NOT_FUZZED = (INVOKE, RENEW)  # observation / lease points, not enumerated per effect

# Hooks fired while this is set are ignored by every injector of this module (replays, checks).
_PAUSED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "coro_durable_no_faults", default=False
)
# (worker, run_id, epoch) of the activation running in this context, set by a Trace.
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
        if self.point == RENEW and self.action == "crash":
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
            where.append(f"{'worker' if self.point == RENEW else 'run'} {self.run_id}")
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
    COMMIT_FAIL: "the commit failed before it reached the store",
    AFTER_COMMIT: "the commit landed but its acknowledgement was lost",
    AFTER_FINISH: "the run's result was committed but the acknowledgement was lost",
    RENEW: "the lease renewal was lost",
}


@dataclass(slots=True)
class _Armed:
    fault: Fault
    matched: int = 0
    fired: int = 0


class FaultPlan(Instrument):
    """An instrument that fires its faults on matching hits and records every hit it sees.

    Pass it to a Runtime (``instruments=[plan]``) or install it with :func:`inject`; calling the
    plan (``plan(point, run_id, seq)``) is one hit. ``runs`` limits it to those run ids (a live
    set may be passed and grown); ``renew`` hits, whose run_id is a worker id, always pass.
    Thread-safe.
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

    def fault_point(self, event: FaultPoint) -> None:
        self(event.point, event.run_id, event.seq)

    def __call__(self, point: str, run_id: str, seq: int | None) -> None:
        if _PAUSED.get():
            return
        if self.runs is not None and point != RENEW and run_id not in self.runs:
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


class _Injector(Instrument):
    """A plain function ``(point, run_id, seq)`` as an instrument's fault hook."""

    def __init__(self, fn: Callable[[str, str, int | None], None]) -> None:
        self.fn = fn

    def __repr__(self) -> str:
        return f"_Injector({self.fn!r})"

    def fault_point(self, event: FaultPoint) -> None:
        self.fn(event.point, event.run_id, event.seq)


@contextlib.contextmanager
def inject(
    *faults: Fault | FaultPlan | Trace | Callable[[str, str, int | None], None],
) -> Iterator[FaultPlan]:
    """Install faults for a block: ``with inject(Fault("X4", seq=1)) as plan: ...``.

    Every Runtime created in the block (in its context: the tasks it starts, not an event loop
    in another thread) gets them as an instrument. Accepts :class:`Fault` objects (gathered
    into a new :class:`FaultPlan`), or one plan, trace or injector function ``(point, run_id,
    seq)``. Those installed by an outer block come after (so a :class:`Trace` outside and a plan
    inside both see every hit; a crash raised by the inner one hides that hit from the outer
    one). Yields the plan (a new empty one when given a trace or function)."""
    loose = [f for f in faults if isinstance(f, Fault)]
    others = [f for f in faults if not isinstance(f, Fault)]
    if others and (loose or len(others) > 1):
        raise ConfigurationError("inject() takes Fault objects, or a single plan/trace/injector")
    plan = others[0] if others and isinstance(others[0], FaultPlan) else FaultPlan(*loose)
    given = others[0] if others else plan
    instrument = given if isinstance(given, Instrument) else _Injector(given)
    with installed(instrument):
        yield plan
