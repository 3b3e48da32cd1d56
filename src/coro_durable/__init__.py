"""coro_durable: durable execution for Python AI workflows.

A workflow is a plain ``async def`` that awaits effects (:func:`call`, :func:`sleep`,
:func:`await_signal`, :func:`gather`, :func:`now`, ...). Every effect's outcome is journaled
before the workflow sees it, so a crashed run resumes from its journal on any worker instead of
restarting, each step's idempotency key stays the same across retries and crashes, and waits hold
no process, thread or connection. See the README for a tour.
"""

from ._core.hooks import (
    ActivationEnded,
    ActivationStarted,
    FaultPoint,
    Instrument,
    RunClaimed,
    RunCrashed,
    RunEvent,
    RunFinished,
    RunHandedBack,
    RunLeaseLost,
    RunParked,
    RunQuarantined,
    RunStarted,
    SignalConsumed,
    StepFinished,
    StepStarted,
    WorkerIdle,
    WorkerStarted,
    WorkerStopped,
)
from .errors import (
    CoroDurableError,
    NonDeterminismError,
    RunCancelledError,
    RunFailedError,
    SignalTimeout,
    StepError,
)
from .journal import JournalEntry, RunStatus, Wait, WaitKind
from .runtime import (
    ExecutingStep,
    ReplayReport,
    RunHandle,
    RunInfo,
    Runtime,
    RuntimeClient,
    WorkerInfo,
)
from .store import MemoryStore, SqliteStore, Store, open_store
from .workflow import (
    RetryPolicy,
    StepInfo,
    WorkflowInfo,
    await_signal,
    call,
    first,
    gather,
    heartbeat,
    idempotency_key,
    now,
    random,
    send,
    sleep,
    sleep_until,
    step_info,
    uuid4,
    workflow,
    workflow_info,
)

__version__ = "0.1.0"

__all__ = [
    # workflows and effects
    "workflow",
    "call",
    "sleep",
    "sleep_until",
    "await_signal",
    "send",
    "gather",
    "first",
    "now",
    "uuid4",
    "random",
    "idempotency_key",
    "step_info",
    "heartbeat",
    "workflow_info",
    "StepInfo",
    "WorkflowInfo",
    "RetryPolicy",
    # running them
    "Runtime",
    "RunHandle",
    "RuntimeClient",
    "RunInfo",
    "ExecutingStep",
    "WorkerInfo",
    "RunStatus",
    "Wait",
    "WaitKind",
    "JournalEntry",
    "ReplayReport",
    # instruments: hooks a Runtime calls at each event, and the events
    "Instrument",
    "WorkerStarted",
    "WorkerIdle",
    "WorkerStopped",
    "RunStarted",
    "RunEvent",
    "RunClaimed",
    "ActivationStarted",
    "ActivationEnded",
    "StepStarted",
    "StepFinished",
    "SignalConsumed",
    "RunParked",
    "RunHandedBack",
    "RunFinished",
    "RunCrashed",
    "RunQuarantined",
    "RunLeaseLost",
    "FaultPoint",
    # stores
    "Store",
    "MemoryStore",
    "SqliteStore",
    "open_store",
    # the errors users catch most (all of them live in coro_durable.errors)
    "CoroDurableError",
    "StepError",
    "SignalTimeout",
    "NonDeterminismError",
    "RunFailedError",
    "RunCancelledError",
]
