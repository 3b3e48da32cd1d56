"""What Inngest cannot express, found when a run is started rather than half-way through it.

On Inngest every step runs inside the endpoint process that replays the workflow, so any callable
works as a step (a lambda or a bound method is rebuilt by the replay itself). The limits are
Inngest's own (its usage limits page): a step may run at most 2 hours, and a sleep may last at most
a year (7 days on the free plan). So:

- ``cd.call(fn, ..., timeout=T)`` with T above ``max_step_timeout`` (default 7200 s), and
- ``cd.sleep(S)`` with S above ``max_sleep`` (default 365 days)

are rejected by ``rt.start`` with EffectNotAllowedError when T or S is a constant expression in
the workflow's source (or in a module-level coroutine function it awaits), before anything is
started. Values only known at run time are checked at the effect, where the same error is raised
at the await (``_driver.RunDriver._plan_leaf``). Long *signal* waits need no limit: a wait is
re-armed in windows of at most ``signal_recheck`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import coro_durable as cd
from coro_durable import engine
from coro_durable.engine.source import workflow_calls
from coro_durable.errors import EffectNotAllowedError

from ._config import InngestSettings

__all__ = ["NOT_OFFERED", "check_workflow"]

#: The effects this adapter does not offer, each with what to do instead.
NOT_OFFERED: dict[str, str] = {  # by effect kind
    "send": "send the other run's signal event from a step (inngest.Event)",
    "first": "wait for one of several events with step.wait_for_event and an if expression",
}


def check_workflow(fn: Callable[..., Any], settings: InngestSettings) -> None:
    """Raise EffectNotAllowedError if ``fn`` (or a coroutine function it awaits) uses an effect
    this adapter does not offer, or has a step timeout or a sleep Inngest cannot express. Best
    effort: it reads the source."""
    engine.refuse_effects(fn, NOT_OFFERED, "Inngest")
    for call in workflow_calls(fn):
        problem = None
        if call.target is cd.call:
            for kw in call.node.keywords:
                if kw.arg == "timeout":
                    value = call.number(kw.value)
                    if value is not None and value > settings.max_step_timeout:
                        problem = (
                            f"a step with timeout={value:g}s, but an Inngest step may run at most "
                            f"{settings.max_step_timeout:g}s (max_step_timeout); split the work "
                            "into shorter steps"
                        )
        elif call.target is cd.sleep and call.node.args:
            value = call.number(call.node.args[0])
            if value is not None and value > settings.max_sleep:
                problem = (
                    f"cd.sleep({value:g}), but Inngest sleeps at most {settings.max_sleep:g}s "
                    "(max_sleep: a year, 7 days on the free plan); sleep in shorter pieces"
                )
        if problem is not None:
            raise EffectNotAllowedError(
                f"{call.where} (line {call.line}) cannot run on Inngest: {problem}. Nothing was "
                "started"
            )
