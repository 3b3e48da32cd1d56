"""The adapter SPI: what an engine adapter (Temporal, Restate, Inngest) needs to run workflows.

Workflows yield effect objects (see ``coro_durable._effects``); an adapter maps each one to its
engine's durable primitive and sends back an outcome. This module is the stable surface for that:

    result = await engine.drive(workflow_fn(*args, **kwargs), resolve)

where ``resolve(effect) -> Outcome`` is the adapter's async function: ``Value(x)`` or ``Error(exc)``
per effect, exactly one per yielded effect (the driver contract). ``Call`` carries ``fn``, ``args``,
``kwargs``, ``retry`` (a RetryPolicy) and ``timeout``; ``Sleep`` ``seconds`` or ``until``;
``AwaitSignal`` ``signal`` and ``timeout``; ``Gather`` ``effects`` and ``return_exceptions``;
``Now``, ``Uuid4`` and ``Random`` nothing. Inside a step the adapter runs the step function under
``step_context(key)`` so ``cd.idempotency_key()`` works there too. ``check_run_id`` applies the
run_id rule every store enforces (non-empty, at most 255 characters, no control characters).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from ._effects import (
    AwaitSignal,
    Call,
    Effect,
    Error,
    Gather,
    Now,
    Outcome,
    Random,
    RetryPolicy,
    Sleep,
    Uuid4,
    Value,
    WorkflowInfo,
    _current_key,
    _current_workflow,
    step_name,
)
from ._journal import check_run_id
from ._workflow import lookup, workflow_name
from .errors import NotAnEffectError

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
    "Uuid4",
    "Value",
    "WorkflowInfo",
    "check_run_id",
    "drive",
    "lookup",
    "step_context",
    "step_name",
    "workflow_name",
]


_ENGINE_WORKFLOW = WorkflowInfo(run_id="", workflow="", started_at=None)


async def drive(
    coro: Coroutine[Any, Any, Any],
    resolve: Callable[[Effect], Awaitable[Outcome]],
    info: WorkflowInfo | None = None,
) -> Any:
    """Run a workflow coroutine to completion, resolving each effect it yields with ``resolve``.

    Returns the workflow's result, or raises what it raised. Awaiting a non-effect raises
    NotAnEffectError inside the workflow, at that await. ``info`` is what ``cd.workflow_info()``
    returns in the workflow (without it, workflow_info() says the engine does not provide it).
    """
    send: Outcome | None = None
    throw: BaseException | None = None
    token = _current_workflow.set(info or _ENGINE_WORKFLOW)
    try:
        while True:
            try:
                yielded = coro.throw(throw) if throw is not None else coro.send(send)
            except StopIteration as stop:
                return stop.value
            throw = None
            if isinstance(yielded, Effect):
                send = await resolve(yielded)
            else:
                throw = NotAnEffectError(yielded)
    finally:
        try:
            coro.close()
        except RuntimeError:  # the workflow awaited an effect in a `finally` while being closed
            pass
        _current_workflow.reset(token)


@contextlib.contextmanager
def step_context(key: str) -> Iterator[None]:
    """Make ``cd.idempotency_key()`` return ``key`` while a step runs on an engine."""
    token = _current_key.set(key)
    try:
        yield
    finally:
        _current_key.reset(token)
