"""Steps on Temporal: finding a step function by name on any worker, and the one generic activity.

A step (``cd.call(fn, ...)``) becomes an activity whose *type* is the step's journal name
(``step_name(fn)``, its qualified name) and whose input carries the module and qualified name the
worker uses to find the function again. A worker finds only what it has imported: module-level
functions, static methods and class methods of module-level classes. Lambdas, functions defined
inside other functions, ``functools.partial`` objects, bound methods of instances and callable
objects cannot be found by another worker process (their identity or bound state would be lost),
so Temporal cannot express them: :func:`check_workflow` rejects them when a run is started, and
:func:`dispatch_ref` rejects any that slip past it at the effect itself.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import os
import socket
import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

import coro_durable as cd
from coro_durable import engine
from coro_durable.engine import codec as _codec
from coro_durable.engine import registered
from coro_durable.engine.source import MISSING, evaluate, workflow_calls
from coro_durable.errors import EffectNotAllowedError, SerializationError

__all__ = ["NOT_OFFERED", "StepRunner", "check_workflow", "dispatch_ref"]

#: The effects this adapter does not offer, each with what to do instead.
NOT_OFFERED: dict[str, str] = {  # by effect kind
    "send": "signal the other run from a step with the Temporal client (handle.signal)",
    "first": "race the effects with workflow.wait(..., return_when=FIRST_COMPLETED) in a Temporal workflow of your own",
}

UNKNOWN_STEP = "UnknownStepError"

# The process's real module table. Inside Temporal's workflow sandbox ``sys.modules`` is replaced
# (thread-locally) by the sandbox's own view, whose ``__main__`` is an empty stand-in; step
# lookups must see the real modules.
_MODULES = sys.modules


# -- finding step functions by name ------------------------------------------------------------------


def _walk(root: Any, qualname: str) -> Any:
    obj = root
    for part in qualname.split("."):
        if obj is None or part == "<locals>":
            return None
        obj = getattr(obj, part, None)
    return obj


def _unbindable(fn: Any) -> str | None:
    """Why ``fn`` can never be found by name on another worker, or None."""
    if isinstance(fn, functools.partial):
        return (
            "is a functools.partial: its bound arguments cannot be sent to another worker; pass "
            "the arguments to cd.call instead"
        )
    qualname = getattr(fn, "__qualname__", None)
    module = getattr(fn, "__module__", None)
    if not isinstance(qualname, str) or not isinstance(module, str):
        return (
            f"is a {type(fn).__name__} object without a module and qualified name; use a "
            "module-level function"
        )
    if getattr(fn, "__name__", "") == "<lambda>":
        return (
            "is a lambda: another worker cannot find it by name; define it with def at module level"
        )
    if "<locals>" in qualname:
        return (
            "is defined inside a function: another worker cannot find it by name; move it to "
            "module level"
        )
    if inspect.ismethod(fn) and not isinstance(fn.__self__, type):
        return (
            "is a bound method of an instance: the instance cannot be sent to another worker; use "
            "a module-level function, a @staticmethod or a @classmethod"
        )
    return None


def dispatch_ref(fn: Callable[..., Any]) -> tuple[str, str]:
    """(module, qualified name) under which workers find ``fn``; EffectNotAllowedError if none."""
    why = _unbindable(fn)
    if why is None:
        module, qualname = fn.__module__, fn.__qualname__
        found = _walk(_MODULES.get(module), qualname)
        if found is not None and (found is fn or found == fn):
            return module, qualname
        why = (
            f"is not reachable as {module}.{qualname} (steps must be module-level functions, "
            "static methods or class methods)"
        )
    raise EffectNotAllowedError(
        f"step {engine.step_name(fn)!r} cannot run on Temporal: the function {why}. Temporal "
        "runs each step as an activity that any worker finds by name"
    )


def resolve_step(module: str, qualname: str) -> Callable[..., Any] | None:
    """The step function for an activity, from modules this worker has already imported.

    Nothing is imported on demand. A function defined in a script run as ``__main__`` by the
    starting process is also looked up in the modules of the registered workflows.
    """
    found = _walk(_MODULES.get(module), qualname)
    if callable(found):
        return found  # type: ignore[no-any-return]
    for name in registered():
        try:
            wf_module = getattr(engine.lookup(name), "__module__", None)
        except LookupError:
            continue
        found = _walk(_MODULES.get(wf_module or ""), qualname)
        if callable(found):
            return found  # type: ignore[no-any-return]
    return None


# -- the check made when a run is started ----------------------------------------------------------

_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()


def _is_unexpressible_arg(expr: ast.expr, scope: dict[str, Any], local: set[str]) -> str | None:
    if isinstance(expr, ast.Lambda):
        return "a lambda: another worker cannot find it by name; define it with def at module level"
    if isinstance(expr, ast.Call) and evaluate(expr.func, scope, local) is functools.partial:
        return (
            "a functools.partial: its bound arguments cannot be sent to another worker; pass the "
            "arguments to cd.call instead"
        )
    return None


def check_workflow(fn: Callable[..., Any]) -> None:
    """Raise EffectNotAllowedError if ``fn`` (or a module-level coroutine function it awaits)
    uses an effect this adapter does not offer, or issues a step that Temporal cannot express.
    Best effort: it reads the source; step functions chosen at run time are checked when the
    effect is issued instead."""
    if fn in _CHECKED:
        return
    engine.refuse_effects(fn, NOT_OFFERED, "Temporal")
    for call in workflow_calls(fn):
        if call.target is not cd.call or not call.node.args:
            continue
        step = call.node.args[0]
        why = _is_unexpressible_arg(step, call.scope, call.local)
        if why is None:
            obj = call.value(step)
            if obj is not MISSING and callable(obj):
                try:
                    dispatch_ref(obj)
                except EffectNotAllowedError as exc:
                    raise EffectNotAllowedError(
                        f"{call.where} (line {call.line}): {exc}. Nothing was started"
                    ) from None
            continue
        raise EffectNotAllowedError(
            f"{call.where} (line {call.line}): the step passed to cd.call is {why}. Temporal runs "
            "each step as an activity that any worker finds by name. Nothing was started"
        )
    _CHECKED.add(fn)  # passed: not read again in this process


# -- the activity --------------------------------------------------------------------------------------


def _is_async(fn: Callable[..., Any]) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async callable objects
    )


class StepRunner:
    """The one generic activity: runs the registered step function an activity names.

    Its activity type is the step's name (so Temporal's UI and history show ``plan``,
    ``retrieve``...). The input is ``{"module", "qualname", "args", "key", "seq", "attempt",
    "timeout"}`` with ``args`` the coro_durable codec's JSON text of ``[args, kwargs]``; the
    result is the codec's JSON text of the return value. A failure is reported as a
    non-retryable ApplicationError whose ``type`` is the original exception's type name: the
    workflow applies the step's ``cd.RetryPolicy`` itself (see ``_driver``), so a worker crash
    never counts as a failed attempt.
    """

    def __init__(self, executor: concurrent.futures.Executor | None = None) -> None:
        self.executor = executor

    @activity.defn(dynamic=True)
    async def run(self, args: Sequence[RawValue]) -> str:
        info = activity.info()
        request: dict[str, Any] = activity.payload_converter().from_payload(args[0].payload, dict)
        name = info.activity_type
        attempt = int(request.get("attempt", info.attempt))
        details = {"attempt": attempt}
        fn = resolve_step(str(request["module"]), str(request["qualname"]))
        if fn is None:
            raise ApplicationError(
                f"step {name!r} ({request['module']}.{request['qualname']}) is not loaded in "
                f"worker process {os.getpid()} on {socket.gethostname()}: import the module that "
                "defines it in every worker process",
                details,
                type=UNKNOWN_STEP,
                non_retryable=True,
            )
        timeout: float | None = request.get("timeout")
        try:
            call_args, call_kwargs = _codec.decode(str(request["args"]))
        except SerializationError as exc:
            raise ApplicationError(
                str(exc), details, type=type(exc).__name__, non_retryable=True
            ) from None
        loop = asyncio.get_running_loop()
        with engine.step_context(str(request["key"])):
            if _is_async(fn):
                job: asyncio.Future[Any] = asyncio.ensure_future(fn(*call_args, **call_kwargs))
            else:
                ctx = contextvars.copy_context()
                job = loop.run_in_executor(
                    self.executor, ctx.run, functools.partial(fn, *call_args, **call_kwargs)
                )
        try:
            value = await _supervise(job, timeout, info.heartbeat_timeout)
        except asyncio.CancelledError:
            job.cancel()
            raise
        except Exception as exc:
            type_name, message = engine.exception_info(exc)
            if isinstance(exc, TimeoutError) and timeout is not None and not message:
                message = f"attempt {attempt} timed out after {timeout}s"
            # BENIGN: an expected outcome the workflow handles (retry or StepError), not a
            # worker problem; Temporal then logs it at DEBUG instead of a WARNING traceback.
            raise ApplicationError(
                message,
                details,
                type=type_name,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            ) from None
        try:
            return _codec.encode(value, where=f"result of step {name} (seq {request.get('seq')})")
        except SerializationError as exc:
            raise ApplicationError(
                str(exc),
                details,
                type=type(exc).__name__,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            ) from None


async def _supervise(job: asyncio.Future[Any], timeout: float | None, heartbeat: Any) -> Any:
    """Wait for the step, heartbeating so Temporal notices a dead worker; enforce ``timeout``."""
    loop = asyncio.get_running_loop()
    every = heartbeat.total_seconds() / 3 if heartbeat else 10.0
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        wait = every if deadline is None else min(every, deadline - loop.time())
        if wait <= 0:
            job.cancel()  # a sync step's thread cannot be stopped: it is abandoned, like embedded
            raise TimeoutError()
        done, _ = await asyncio.wait({job}, timeout=wait)
        if done:
            return job.result()
        activity.heartbeat()
