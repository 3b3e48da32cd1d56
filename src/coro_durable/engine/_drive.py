"""``drive``: run a workflow coroutine against an engine's resolver; ``step_context``: the
context a step runs in on an engine (its idempotency key)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from ..errors import NotAnEffectError
from ..workflow._effects import (
    Effect,
    Outcome,
    WorkflowInfo,
    _current_key,
    _current_workflow,
)

__all__ = ["drive", "step_context"]


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
