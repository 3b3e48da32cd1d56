"""What Restate cannot express, checked when a run is started.

Every coro_durable effect kind maps onto Restate (see ``_driver``), and since steps run inside
the ``run`` handler itself (on whichever endpoint serves the run, re-created by the workflow
code on replay), any callable can be a step: lambdas, closures, partials and bound methods
included. What Restate cannot express is a step *attempt allowed to run longer than Restate lets
an invocation stay silent*: after ``inactivity_timeout + abort_timeout`` without progress Restate
aborts the attempt and runs it again, so a ``cd.call(..., timeout=T)`` with a larger ``T`` would
never see its timeout fire; it would be aborted and re-run forever.

:func:`check_workflow` reads the workflow's source (and that of module-level coroutine functions
it awaits) and raises ``EffectNotAllowedError`` before anything starts when a ``cd.call`` has a
constant ``timeout=`` over that limit. A timeout computed at run time is checked at the effect
instead (``_driver``), where the error is raised at the await.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

import coro_durable as cd
from coro_durable import engine
from coro_durable.engine.source import workflow_calls
from coro_durable.errors import EffectNotAllowedError

from ._driver import NOT_OFFERED, step_limit_error

__all__ = ["check_workflow"]


def check_workflow(fn: Callable[..., Any], step_limit: float) -> None:
    """Raise EffectNotAllowedError if ``fn`` (or a module-level coroutine function it awaits)
    uses an effect Restate is not offered through this adapter, or issues a step whose constant
    ``timeout=`` exceeds ``step_limit`` seconds. Best effort: it reads the source; timeouts
    computed at run time are checked at the effect."""
    engine.refuse_effects(fn, NOT_OFFERED, "Restate")
    for call in workflow_calls(fn):
        if call.target is not cd.call or not call.node.args:
            continue
        for keyword in call.node.keywords:
            if keyword.arg != "timeout":
                continue
            timeout = call.number(keyword.value)
            if timeout is not None and timeout > step_limit:
                step = call.value(call.node.args[0])
                name = engine.step_name(step) if callable(step) else ast.unparse(call.node.args[0])
                raise EffectNotAllowedError(
                    step_limit_error(
                        name, timeout, step_limit, f"{call.where} (line {call.line}): "
                    )
                    + ". Nothing was started"
                )
