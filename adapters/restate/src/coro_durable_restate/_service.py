"""The Restate service every coro_durable run belongs to, and the ASGI app that serves it.

One Restate *workflow* service (named by the URL's ``service``, default ``coro_durable``) hosts
every registered coro_durable workflow: the Restate workflow key is the run id, and the
coro_durable workflow's name travels in the run's input. Run ids are therefore unique across
workflows, exactly as on the embedded runtime, and the service never changes when workflows are
added (nothing to re-register). Its handlers:

    run     (workflow handler) input {"workflow": NAME, "inputs": {"args": [...], "kwargs": {...}}},
            output the workflow's result (coro_durable's codec JSON). Drives the coroutine with
            ``engine.drive`` and ``_driver.RunDriver``. A failed run ends with a TerminalError
            whose message is {"type", "message"} as JSON (code 409 when it was cancelled).
    signal  (shared handler) input {"name": NAME, "payload": codec text} (from rt.signal) or
            {"name": NAME, "value": JSON} (from any Restate client): resolves the first
            unresolved durable promise NAME#1, NAME#2, ... and returns its number.

Run inputs from other Restate clients work too: ``{"workflow": NAME, "args": [...]}`` takes
plain JSON positional arguments.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import restate
from restate import InvocationRetryPolicy, TerminalError, WorkflowContext, WorkflowSharedContext
from restate.serde import JsonSerde

from coro_durable import engine
from coro_durable.engine import codec as _codec
from coro_durable.errors import RunCancelledError, SerializationError

from ._config import RestateSettings
from ._driver import (
    CANCELLED,
    STATE_KEY,
    AdapterFault,
    RunDriver,
    promise_name,
)

__all__ = ["asgi_app", "decode_request", "make_service"]

_JSON: JsonSerde[Any] = JsonSerde()
log = logging.getLogger("coro_durable_restate")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]  # fmt: skip


def decode_request(request: Any) -> tuple[str, dict[str, Any]]:
    """(workflow name, {"args", "kwargs"}) from a run's input."""
    if not isinstance(request, dict) or not isinstance(request.get("workflow"), str):
        raise ValueError('a run\'s input must be {"workflow": NAME, "inputs": {...}}')
    if "inputs" in request:
        inputs = _codec.decode(json.dumps(request["inputs"]))
    else:  # started by another Restate client: JSON positional and keyword arguments
        inputs = {"args": request.get("args", []), "kwargs": request.get("kwargs", {})}
    if not isinstance(inputs, dict):
        inputs = {"args": inputs}
    return request["workflow"], inputs


def failure_message(type_name: str, message: str) -> str:
    return json.dumps({"type": type_name, "message": message})


def make_service(
    settings: RestateSettings,
    *,
    executor: concurrent.futures.Executor | None,
    max_payload_bytes: int,
) -> restate.Workflow:
    """The Restate workflow service that runs coro_durable workflows (see the module docstring)."""
    service = restate.Workflow(
        settings.service,
        description="coro_durable runs: the key is the run id, the input names the workflow",
        inactivity_timeout=timedelta(seconds=settings.inactivity_timeout),
        abort_timeout=timedelta(seconds=settings.abort_timeout),
        invocation_retry_policy=InvocationRetryPolicy(
            initial_interval=timedelta(milliseconds=200),
            exponentiation_factor=2.0,
            max_interval=timedelta(seconds=settings.retry_max_interval),
        ),
    )

    async def run(ctx: WorkflowContext, request: Any) -> Any:
        try:
            name, inputs = decode_request(request)
        except (ValueError, SerializationError) as exc:
            raise TerminalError(failure_message(type(exc).__name__, str(exc))) from None
        try:
            fn = engine.lookup(name)
        except LookupError as exc:
            # Like the embedded runtime's quarantine: the attempt fails and Restate retries it
            # until an endpoint that knows this workflow serves the run.
            raise AdapterFault(str(exc)) from None
        driver = RunDriver(
            ctx,
            executor=executor,
            max_payload_bytes=max_payload_bytes,
            step_limit=settings.step_limit,
        )
        coro = fn(*inputs.get("args", ()), **inputs.get("kwargs", {}))
        try:
            value = await engine.drive(coro, driver.resolve)
        except AdapterFault:
            raise
        except RunCancelledError as exc:
            code = CANCELLED if driver.cancel_requested else 500
            raise TerminalError(failure_message(type(exc).__name__, str(exc)), code) from None
        except Exception as exc:
            type_name, message = engine.exception_info(exc)
            raise TerminalError(failure_message(type_name, message)) from None
        try:
            text = _codec.encode(
                value, where=f"result of run {driver.run_id!r}", limit=max_payload_bytes
            )
        except SerializationError as exc:
            raise TerminalError(failure_message(type(exc).__name__, str(exc))) from None
        return json.loads(text)

    async def signal(ctx: WorkflowSharedContext, request: Any) -> int:
        if not isinstance(request, dict) or not isinstance(request.get("name"), str):
            raise TerminalError('a signal must be {"name": NAME, "payload": ... or "value": ...}')
        name = request["name"]
        if isinstance(request.get("payload"), str):
            value: dict[str, Any] = {"payload": request["payload"]}
        else:
            value = {"value": request.get("value")}
        position = await ctx.get(STATE_KEY, serde=_JSON)
        hint = (position or {}).get("signals", {}).get(name, 1)
        occurrence = hint if isinstance(hint, int) and hint >= 1 else 1
        while True:  # the first unresolved occurrence; concurrent senders take the next one
            try:
                await ctx.promise(promise_name(name, occurrence), serde=_JSON).resolve(value)
                return occurrence
            except TerminalError as exc:
                if exc.status_code != CANCELLED:  # 409: already resolved
                    raise
                occurrence += 1

    service.main(name="run", input_serde=_JSON, output_serde=_JSON)(run)
    service.handler(name="signal", input_serde=_JSON, output_serde=_JSON)(signal)
    return service


def asgi_app(service: restate.Workflow) -> ASGIApp:
    """The SDK's ASGI app for ``service``, answering ASGI lifespan events itself (the SDK does
    not implement them, which makes servers log a warning)."""
    inner: ASGIApp = restate.app([service])

    async def app(
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await inner(scope, receive, send)

    return app
