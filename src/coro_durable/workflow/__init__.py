"""What workflow code touches: the effects (``call``, ``sleep``, ``await_signal``, ``send``,
``gather``, ...),
the retry policy, the workflow registry (``@workflow``, lookup by name) and the context a step or
a workflow can read (``idempotency_key``, ``step_info``, ``heartbeat``, ``workflow_info``).

May import: ``coro_durable.errors`` only. Everything else may import it (the kernel's planning in
``_core`` included); it imports none of them. The public names are re-exported by ``coro_durable``.
"""

from ._effects import (
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
    workflow_info,
)
from ._registry import workflow

__all__ = [
    "RetryPolicy",
    "StepInfo",
    "WorkflowInfo",
    "await_signal",
    "call",
    "first",
    "gather",
    "heartbeat",
    "idempotency_key",
    "now",
    "random",
    "send",
    "sleep",
    "sleep_until",
    "step_info",
    "uuid4",
    "workflow",
    "workflow_info",
]
