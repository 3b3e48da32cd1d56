"""Effects: the only objects a workflow coroutine ever yields to its driver.

A workflow is a plain ``async def``. Each ``await cd.call(...)`` (or sleep, await_signal, ...)
builds a small immutable effect object whose ``__await__`` yields *the effect itself* up through
the coroutine to whoever drives it (our scheduler, or an adapter's engine handler), then receives
an :class:`Outcome` back and unwraps it: a value is returned, an error is raised at the await.
This is the trick trio uses for its traps.

The driver contract, written down: **exactly one outcome is sent per yielded effect, and on the
embedded runtime that outcome is persisted in the journal before it is sent.**

Effects are comparable by ``kind``, ``name`` and argument ``digest``: that is how replay checks
that the code issued the same effect the journal recorded (non-determinism detection).
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import functools
import hashlib
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, overload

from ..errors import (
    ConfigurationError,
    EffectNotAllowedError,
    NotInWorkflowError,
    RunCancelledError,
    StepTimeoutError,
)

T = TypeVar("T")

__all__ = [
    "AwaitSignal",
    "Call",
    "Effect",
    "Error",
    "Gather",
    "Now",
    "Outcome",
    "Random",
    "RetryPolicy",
    "Sleep",
    "StepInfo",
    "Uuid4",
    "Value",
    "WorkflowInfo",
    "await_signal",
    "call",
    "gather",
    "heartbeat",
    "idempotency_key",
    "now",
    "random",
    "sleep",
    "sleep_until",
    "step_info",
    "uuid4",
    "workflow_info",
]


# -- outcomes: what the driver sends back ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    """A successful outcome."""

    value: Any

    def unwrap(self) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class Error:
    """A failed outcome: ``unwrap`` raises the exception at the workflow's await."""

    error: BaseException

    def unwrap(self) -> Any:
        raise self.error


Outcome = Value | Error


# -- retry policy ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing step is retried. Every failed attempt is journaled before the next one.

    ``max_attempts`` counts the first try (1 means no retry). The delay before attempt n+1 is
    ``initial_interval * backoff_coefficient ** (n - 1)`` capped at ``max_interval``.
    Exceptions whose type name is in ``non_retryable`` fail the step at once.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}"
            )
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ConfigurationError("RetryPolicy intervals must be >= 0 seconds")
        if self.backoff_coefficient < 1:
            raise ConfigurationError("RetryPolicy.backoff_coefficient must be >= 1")

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` failures before the next attempt."""
        raw = self.initial_interval * self.backoff_coefficient ** max(failed_attempts - 1, 0)
        return min(raw, self.max_interval)


DEFAULT_RETRY = RetryPolicy()


# -- effects ---------------------------------------------------------------------------------------


class Effect:
    """Base class of effects. ``await effect`` yields it to the driver and unwraps the outcome."""

    __slots__ = ()
    kind: ClassVar[str] = "effect"

    def __await__(self) -> Generator[Effect, Outcome, Any]:
        if _current_workflow.get() is None:
            raise NotInWorkflowError(self.describe())
        outcome = yield self
        return outcome.unwrap()

    @property
    def name(self) -> str:
        """The effect's identity within its kind (function name, signal name...)."""
        return ""

    def describe(self) -> str:
        """A short human form used in errors and tables, e.g. ``call(plan)``."""
        return f"{self.kind}({self.name})"


def step_name(fn: Callable[..., Any]) -> str:
    """The journal name of a step function: its qualified name, module-independent."""
    target = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__cd_step_name__", None) or getattr(target, "__qualname__", None)
    return str(name or type(target).__qualname__)


@dataclass(frozen=True, slots=True, eq=False)
class Call(Effect):
    """Run ``fn(*args, **kwargs)`` as a journaled step (sync callables run in a worker thread)."""

    kind: ClassVar[str] = "call"
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    retry: RetryPolicy = DEFAULT_RETRY
    timeout: float | None = None
    heartbeat_timeout: float | None = None

    @property
    def name(self) -> str:
        return step_name(self.fn)

    @property
    def is_async(self) -> bool:
        target = self.fn.func if isinstance(self.fn, functools.partial) else self.fn
        return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
            getattr(target, "__call__", None)  # noqa: B004 - async callable objects
        )


@dataclass(frozen=True, slots=True, eq=False)
class Sleep(Effect):
    """A durable timer: ``seconds`` from when it is first reached, or until ``until``.

    The absolute due time is journaled the first time the effect is reached, so a crash or a
    deploy does not restart the wait.
    """

    kind: ClassVar[str] = "sleep"
    seconds: float | None = None
    until: _dt.datetime | None = None


@dataclass(frozen=True, slots=True, eq=False)
class AwaitSignal(Effect):
    """Wait for the next signal ``signal`` sent to this run; return its payload."""

    kind: ClassVar[str] = "signal"
    signal: str = ""
    timeout: float | None = None

    @property
    def name(self) -> str:
        return self.signal


@dataclass(frozen=True, slots=True, eq=False)
class Send(Effect):
    """Deliver signal ``signal`` with ``payload`` to the run ``run_id``, exactly once: the signal
    id is this effect's idempotency key, so a resend after a crash is the same delivery."""

    kind: ClassVar[str] = "send"
    run_id: str = ""
    signal: str = ""
    payload: Any = None

    @property
    def name(self) -> str:
        return self.signal


@dataclass(frozen=True, slots=True, eq=False)
class Gather(Effect):
    """Run sub-effects concurrently; each gets its own seq, results come back in order."""

    kind: ClassVar[str] = "gather"
    effects: tuple[Effect, ...] = ()
    return_exceptions: bool = False

    @property
    def name(self) -> str:
        return str(len(self.effects))


@dataclass(frozen=True, slots=True, eq=False)
class First(Effect):
    """Race leaf effects: the first to complete (with a value or an error) wins, the others are
    cancelled; the winner's index is journaled, so a replay picks the same one."""

    kind: ClassVar[str] = "first"
    effects: tuple[Effect, ...] = ()

    @property
    def name(self) -> str:
        return str(len(self.effects))


@dataclass(frozen=True, slots=True, eq=False)
class Now(Effect):
    """The current time (UTC, timezone-aware), journaled so a replay sees the same instant."""

    kind: ClassVar[str] = "now"


@dataclass(frozen=True, slots=True, eq=False)
class Uuid4(Effect):
    """A random UUID, journaled."""

    kind: ClassVar[str] = "uuid4"


@dataclass(frozen=True, slots=True, eq=False)
class Random(Effect):
    """A random float in [0, 1), journaled."""

    kind: ClassVar[str] = "random"


# -- the user-facing constructors -----------------------------------------------------------------


@overload
def call(
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    heartbeat_timeout: float | None = None,
    **kwargs: Any,
) -> Awaitable[T]: ...
@overload
def call(
    fn: Callable[..., T],
    /,
    *args: Any,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    heartbeat_timeout: float | None = None,
    **kwargs: Any,
) -> Awaitable[T]: ...
def call(
    fn: Callable[..., Any],
    /,
    *args: Any,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    heartbeat_timeout: float | None = None,
    **kwargs: Any,
) -> Awaitable[Any]:
    """A step: ``await cd.call(fn, *args, **kwargs)`` runs ``fn`` once and journals its result.

    ``fn`` may be sync (run in a worker thread) or async. ``retry`` sets how failures are retried
    (default ``RetryPolicy()``: 3 attempts), ``timeout`` bounds each attempt in seconds. When the
    retries are exhausted, :class:`~coro_durable.errors.StepError` is raised at the await, with the
    original exception's type name and message. Inside ``fn``, :func:`idempotency_key` gives the
    step's key ``"<run_id>:<seq>"``, the same on every retry, crash and worker, and
    :func:`step_info` the attempt number and more.

    ``heartbeat_timeout``: an attempt that goes longer than this many seconds without calling
    :func:`heartbeat` is treated as timed out (and retried per ``retry``); the details of its
    last heartbeat reach the next attempt as ``step_info().heartbeat_details``.

    A timed-out attempt's result is never journaled. An async step is cancelled at the timeout;
    a sync step runs in a thread, which Python cannot kill: the runtime abandons it (the thread
    runs on until the function returns, and whatever it returns is dropped) and its next
    ``cd.heartbeat()`` raises :class:`~coro_durable.errors.StepTimeoutError` so it can stop.
    """
    if not callable(fn):
        raise ConfigurationError(f"cd.call needs a callable as its first argument, got {fn!r}")
    for what, value in (("timeout", timeout), ("heartbeat_timeout", heartbeat_timeout)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ConfigurationError(
                f"cd.call {what} must be a positive number of seconds, got {value}"
            )
    return Call(fn, args, kwargs, retry or DEFAULT_RETRY, timeout, heartbeat_timeout)


def sleep(seconds: float) -> Awaitable[None]:
    """A durable timer: the run is parked (holding nothing) until ``seconds`` have passed."""
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ConfigurationError(f"cd.sleep needs a finite number of seconds >= 0, got {seconds}")
    return Sleep(seconds=float(seconds))


def sleep_until(when: _dt.datetime) -> Awaitable[None]:
    """A durable timer until an absolute, timezone-aware datetime."""
    if when.tzinfo is None:
        raise ConfigurationError(
            "cd.sleep_until needs a timezone-aware datetime (e.g. datetime.now(timezone.utc)); "
            f"got naive {when!r}"
        )
    return Sleep(until=when)


def await_signal(name: str, timeout: float | None = None) -> Awaitable[Any]:
    """Wait for signal ``name`` (sent by ``rt.signal(run_id, name, payload)``); return its payload.

    Raises :class:`~coro_durable.errors.SignalTimeout` when ``timeout`` seconds pass first. Signals
    that arrive before the workflow waits are kept and consumed in arrival order.
    """
    if not name or not isinstance(name, str):
        raise ConfigurationError(f"cd.await_signal needs a non-empty signal name, got {name!r}")
    if timeout is not None and not (timeout >= 0 and math.isfinite(timeout)):
        raise ConfigurationError(f"cd.await_signal timeout must be >= 0 seconds, got {timeout}")
    return AwaitSignal(signal=name, timeout=timeout)


def send(run_id: str, name: str, payload: Any = None) -> Awaitable[None]:
    """Send signal ``name`` with ``payload`` to another run (``rt.signal`` from inside a
    workflow), exactly once: its signal id derives from this effect's identity (run and seq), so
    a crash and a replay deliver it once. The target's ``cd.await_signal(name)`` receives it,
    even when it starts waiting later. Raises :class:`~coro_durable.errors.RunNotFoundError`
    (not retried) when there is no run ``run_id`` in the store."""
    if not run_id or not isinstance(run_id, str):
        raise ConfigurationError(f"cd.send needs the target's run_id (a str), got {run_id!r}")
    if not name or not isinstance(name, str):
        raise ConfigurationError(f"cd.send needs a non-empty signal name, got {name!r}")
    return Send(run_id=run_id, signal=name, payload=payload)


def gather(*effects: Awaitable[Any], return_exceptions: bool = False) -> Awaitable[list[Any]]:
    """Run effects concurrently and return their results in argument order.

    Each sub-effect gets its own seq (in argument order) and its own journal entry. Failure
    semantics: gather always waits for *every* sub-effect to finish and be journaled (no step is
    abandoned half-way); then, if any failed, it raises the failure of the first failing effect in
    argument order, or, with ``return_exceptions=True``, returns the exceptions in place of
    results. Sub-effects may be calls, sleeps, signal waits, sends, now/uuid4/random or nested
    gathers.
    """
    for e in effects:
        if not isinstance(e, Effect) or isinstance(e, First):
            raise EffectNotAllowedError(
                f"cd.gather takes coro_durable effects (cd.call(...), cd.sleep(...), ...; not a "
                f"cd.first), got {e!r}; pass cd.call(fn, x) rather than fn(x)"
            )
    return Gather(tuple(effects), return_exceptions)  # type: ignore[arg-type]


def first(*effects: Awaitable[Any]) -> Awaitable[tuple[int, Any]]:
    """Race effects; return ``(index, value)`` of the first to complete, in argument order's
    numbering. The others are cancelled: a running step through its cancel scope (a sync step
    is abandoned, as at a timeout), a timer or a signal wait simply stops (a signal it did not
    take stays for a later ``await_signal``). If the first to complete failed, its error is
    raised here. The winner is journaled, so a replay picks the same one. ``first(
    await_signal("approve"), sleep(86400))`` is "approval, or escalate after a day".

    The raced effects are calls, sleeps and signal waits (an effect that completes at once, a
    gather or another first has nothing to race)."""
    if not effects:
        raise ConfigurationError("cd.first needs at least one effect to race")
    for e in effects:
        if not isinstance(e, Call | Sleep | AwaitSignal):
            raise EffectNotAllowedError(
                "cd.first races cd.call(...), cd.sleep(...) and cd.await_signal(...) effects, got "
                f"{e!r}; pass cd.call(fn, x) rather than fn(x)"
            )
    return First(tuple(effects))  # type: ignore[arg-type]


def now() -> Awaitable[_dt.datetime]:
    """The current UTC time, journaled (replays see the recorded instant)."""
    return Now()


def uuid4() -> Awaitable[Any]:
    """A random ``uuid.UUID``, journaled."""
    return Uuid4()


def random() -> Awaitable[float]:
    """A random float in [0, 1), journaled."""
    return Random()


# -- what a running workflow or step may ask ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkflowInfo:
    """What ``cd.workflow_info()`` returns inside a workflow; deterministic (from the run record)."""

    run_id: str
    workflow: str
    started_at: _dt.datetime | None  # when the run was created
    generation: int = 0  # bumped by continue-as-new (wave 2); 0 for now
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What ``cd.step_info()`` returns inside a step."""

    run_id: str
    workflow: str
    seq: int
    name: str  # the step's journal name (its function's qualified name)
    attempt: int  # 1-based
    idempotency_key: str
    heartbeat_details: Any = None  # from the last heartbeat of an earlier attempt, if any


class StepContext:
    """The live state of one step attempt, shared by the driver and the step's code.

    The driver creates it, sets ``cancelled`` or ``timed_out`` (from another task or thread) when
    it gives up on the attempt, and reads the heartbeats; ``heartbeat()`` inside the step updates
    it. Plain attribute writes: safe across the step's thread and the event loop."""

    __slots__ = (
        "beat_at",
        "beats",
        "cancelled",
        "details",
        "heartbeat_timeout",
        "info",
        "last_beat",
        "started_at",
        "timed_out",
        "wall",
    )

    def __init__(
        self,
        info: StepInfo,
        heartbeat_timeout: float | None = None,
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.info = info
        self.heartbeat_timeout = heartbeat_timeout
        self.wall = wall  # the runtime's clock: the times journaled for this attempt
        self.started_at = wall()
        self.last_beat = time.monotonic()  # the attempt's start counts as its first sign of life
        self.beat_at: float | None = None  # wall-clock time of the last heartbeat() call
        self.details: Any = info.heartbeat_details
        self.beats = 0
        self.cancelled = False
        self.timed_out: str | None = None  # why the driver gave up on this attempt

    def beat(self, details: Any) -> None:
        if self.cancelled:
            raise RunCancelledError(self.info.run_id, f"while step {self.info.name} was running")
        if self.timed_out is not None:
            raise StepTimeoutError(self.timed_out)
        self.last_beat = time.monotonic()
        self.beat_at = self.wall()
        if details is not None:
            self.details = details
        self.beats += 1


_current_key: contextvars.ContextVar[str] = contextvars.ContextVar("coro_durable_idempotency_key")
_current_step: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "coro_durable_step", default=None
)
#: Set while a driver runs a workflow coroutine; None in steps and ordinary code.
_current_workflow: contextvars.ContextVar[WorkflowInfo | None] = contextvars.ContextVar(
    "coro_durable_workflow", default=None
)


def idempotency_key() -> str:
    """The running step's idempotency key, ``"<run_id>:<seq>"``.

    Stable across retries, crashes and workers: pass it to the APIs you call (most payment and
    LLM APIs accept an Idempotency-Key) so a step that must run again is not applied twice.
    """
    try:
        return _current_key.get()
    except LookupError:
        raise EffectNotAllowedError(
            "cd.idempotency_key() is only available while a step runs (inside a function "
            "executed by cd.call)"
        ) from None


def step_info() -> StepInfo:
    """Inside a step: its run_id, workflow, seq, name, attempt (1-based), idempotency key and the
    details of the last heartbeat of an earlier attempt (``heartbeat_details``)."""
    ctx = _current_step.get()
    if ctx is None:
        raise EffectNotAllowedError(
            "cd.step_info() is only available while a step runs on the embedded runtime (inside "
            "a function executed by cd.call); use cd.workflow_info() in workflow code"
        )
    return ctx.info


def heartbeat(details: Any = None) -> None:
    """Inside a step: a sign of life, optionally with progress ``details`` (JSON-able).

    Raises :class:`~coro_durable.errors.RunCancelledError` once the run was cancelled and
    :class:`~coro_durable.errors.StepTimeoutError` once the attempt timed out, so a long step
    (a sync one especially, whose thread cannot be killed) stops when nobody waits for it.
    With ``cd.call(..., heartbeat_timeout=s)`` an attempt silent for longer than ``s`` seconds
    times out. The last details are kept with the step (durably, within about a second) and
    reach the next attempt as ``cd.step_info().heartbeat_details``.
    On an engine adapter that does not track heartbeats it does nothing."""
    ctx = _current_step.get()
    if ctx is not None:
        ctx.beat(details)
    elif _current_key.get(None) is None:
        raise EffectNotAllowedError(
            "cd.heartbeat() is only available while a step runs (inside a function executed by "
            "cd.call)"
        )


def workflow_info() -> WorkflowInfo:
    """Inside a workflow: its run_id, workflow name, started_at, generation, parent and tags."""
    info = _current_workflow.get()
    if info is None or not info.run_id:
        raise EffectNotAllowedError(
            "cd.workflow_info() is only available in workflow code run by the embedded runtime; "
            "inside a step use cd.step_info()"
        )
    return info


def digest(text: str) -> str:
    """A short stable digest of encoded arguments, stored in the journal for determinism checks."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
