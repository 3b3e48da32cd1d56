"""RestateRuntime: the Runtime operations on a Restate server, and an endpoint while it is open."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as _dt
import json
import logging
import os
import signal as _signal
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import restate.server
from hypercorn.asyncio import serve
from hypercorn.config import Config

from coro_durable import RunHandle, RunInfo, RunStatus, engine
from coro_durable.engine import codec as _codec
from coro_durable.errors import (
    ConfigurationError,
    ResultTimeoutError,
    RunAlreadyExistsError,
    RunCancelledError,
    RunError,
    RunFailedError,
    RunNotFoundError,
    StoreUnavailableError,
)

from ._check import check_workflow
from ._config import RestateSettings, parse_url
from ._driver import CANCELLED, STATE_KEY
from ._service import asgi_app, decode_request, make_service

__all__ = ["RestateRuntime"]

log = logging.getLogger("coro_durable_restate")

READY_TIMEOUT = 10.0  # seconds for the endpoint to come up and be registered


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _timestamp(text: Any) -> _dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _input_of(entry_json: Any) -> Any:
    """The run handler's input, from the journal's first entry (``Command: Input``)."""
    if not isinstance(entry_json, str):
        return None
    try:
        payload = json.loads(entry_json)["Command"]["Input"]["payload"]
        return json.loads(bytes(payload))
    except (ValueError, KeyError, TypeError):
        return None


class RestateRuntime(engine.EngineRuntime):
    """Runs coro_durable workflows on Restate, with the same methods as ``cd.Runtime``.

        async with cd.Runtime("restate://127.0.0.1:8080?admin=http://127.0.0.1:9070"
                              "&listen=127.0.0.1:9080") as rt:
            handle = await rt.start(pipeline, "topic", run_id="r-1")
            await rt.signal("r-1", "approval", {"ok": True})
            print(await rt.result("r-1", timeout=60))

    ``cd.Runtime(url)`` returns one of these for ``restate://`` URLs (see the package docstring
    for every URL parameter). While open it serves the Restate endpoint for every registered
    workflow on ``listen`` (an ASGI app under hypercorn, HTTP/2) and registers it with the
    server's admin API (``worker=False``: a client only). Options:

        worker: serve the endpoint while open (default True).
        workflows: workflow functions to register (``@cd.workflow`` registers them already).
        concurrency: how many synchronous steps run at once in this process (threads).
        max_payload_bytes: largest encoded input, result or signal payload accepted.
        lease_ttl, poll_interval, max_crashes, inline_wait, store_deadline, worker_id:
            embedded-runtime options, accepted and ignored (Restate has its own equivalents).
    """

    engine_name = "Restate"
    asyncio_reason = (
        "the Restate Python SDK (restate-sdk) serves and runs handlers "
        "only on an asyncio event loop"
    )
    EMBEDDED_ONLY = engine.EngineRuntime.EMBEDDED_ONLY | {"worker_id"}

    def __init__(
        self,
        url: str,
        *,
        worker: bool = True,
        workflows: Iterable[Callable[..., Coroutine[Any, Any, Any]]] = (),
        concurrency: int = 100,
        max_payload_bytes: int = _codec.DEFAULT_MAX_PAYLOAD_BYTES,
        **embedded_only: Any,
    ) -> None:
        self._check_options(
            embedded_only, "worker, workflows, concurrency and max_payload_bytes", concurrency
        )
        self.url = url
        self.settings: RestateSettings = parse_url(url)
        self.worker = worker
        self.concurrency = concurrency
        self.max_payload_bytes = max_payload_bytes
        self._register_workflows(workflows)
        self._http: httpx.AsyncClient | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._server: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._sigterm_loop: asyncio.AbstractEventLoop | None = None
        self._open = False

    def __repr__(self) -> str:
        s = self.settings
        return f"RestateRuntime({s.ingress}, service={s.service!r}, endpoint={s.advertise})"

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._require_asyncio()
        self._http = httpx.AsyncClient(timeout=self.settings.request_timeout)
        try:
            if self.worker:
                await self._serve()
                await self._register()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self._open = True
        return self

    async def _serve(self) -> None:
        """Serve the endpoint in this process (hypercorn, stopped by our own trigger)."""
        s = self.settings
        host, port = s.listen
        try:
            sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)  # fmt: skip
        except OSError as exc:
            raise ConfigurationError(
                f"RestateRuntime cannot listen on {host}:{port}: {exc}. Another process (an "
                "earlier endpoint?) may hold it; choose another listen=HOST:PORT in the URL"
            ) from None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="coro-durable-step"
        )
        service = make_service(s, executor=self._executor, max_payload_bytes=self.max_payload_bytes)
        config = Config()
        config.bind = [f"fd://{sock.detach()}"]
        config.graceful_timeout = 1.0
        config.accesslog = None
        config.errorlog = logging.getLogger("coro_durable_restate.hypercorn")
        self._install_sigterm()
        self._stop = asyncio.Event()
        self._server = asyncio.create_task(
            serve(asgi_app(service), config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]
        )

    def _install_sigterm(self) -> None:
        """The SDK's ASGI app replaces the loop's SIGTERM handling with one that only drains
        its requests, so the process would no longer stop on SIGTERM. Register a hook before
        it that restores the default: SIGTERM ends the process (Restate retries the runs it
        was serving elsewhere, as after a crash)."""
        loop = asyncio.get_running_loop()
        hooks = getattr(restate.server, "_shutdown_hooks", None)
        if hooks is None or loop in hooks:
            return

        def terminate() -> None:
            _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
            os.kill(os.getpid(), _signal.SIGTERM)

        try:
            restate.server.install_shutdown_hook(loop, terminate, _signal.SIGTERM)
        except (NotImplementedError, RuntimeError, ValueError):
            return  # not the main thread: the SDK's hook cannot be installed either
        self._sigterm_loop = loop

    def _remove_sigterm(self) -> None:
        loop, self._sigterm_loop = self._sigterm_loop, None
        if loop is None:
            return
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(_signal.SIGTERM)
        hooks = getattr(restate.server, "_shutdown_hooks", None)
        if hooks is not None:
            hooks.pop(loop, None)

    async def _register(self) -> None:
        """Register the endpoint with the admin API.

        Always with ``force``: without it Restate answers a known address with the deployment
        it already has, without asking the endpoint, so a changed service name or option would
        be ignored. The service's handlers never change, so runs pinned to this address go on.
        """
        s = self.settings
        body: dict[str, Any] = {"uri": s.advertise, "force": True}
        if s.http1:
            body["use_http_11"] = True
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
        while True:
            try:
                response = await self.http.post(f"{s.admin}/deployments", json=body)
            except httpx.HTTPError as exc:
                raise StoreUnavailableError(
                    f"cannot reach the Restate admin API at {s.admin}: {exc!r}. Check that "
                    "restate-server runs and the URL's admin= parameter"
                ) from exc
            if response.is_success:
                return
            if self._server is not None and self._server.done():
                self._server.result()  # the endpoint failed: raise why
            if asyncio.get_running_loop().time() > deadline:
                raise StoreUnavailableError(
                    f"Restate could not register the endpoint {s.advertise} "
                    f"({response.status_code}): {response.text[:500]}"
                )
            await asyncio.sleep(0.1)  # the endpoint may still be starting

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        try:
            if self._server is not None:
                server, self._server = self._server, None
                assert self._stop is not None
                self._stop.set()
                try:
                    await asyncio.wait_for(asyncio.shield(server), 5.0)
                except (TimeoutError, Exception):
                    server.cancel()
                    with contextlib.suppress(BaseException):
                        await server
        finally:
            self._remove_sigterm()
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            if self._http is not None:
                http, self._http = self._http, None
                await http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The HTTP client used for the ingress and admin APIs."""
        if self._http is None:
            raise ConfigurationError(
                "this RestateRuntime is not open; use it as `async with cd.Runtime(url) as rt:`"
            )
        return self._http

    # -- HTTP helpers ----------------------------------------------------------------------------------

    async def _request(self, method: str, url: str, run_id: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise StoreUnavailableError(
                f"Restate did not answer {method} {url} for run {run_id!r} in time: {exc!r}"
            ) from exc
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(
                f"cannot reach Restate ({method} {url}) for run {run_id!r}: {exc!r}"
            ) from exc

    async def _query(self, sql: str, run_id: str) -> list[dict[str, Any]]:
        """Rows of a query on the admin API's SQL introspection."""
        response = await self._request(
            "POST",
            f"{self.settings.admin}/query",
            run_id,
            json={"query": sql},
            headers={"accept": "application/json"},
        )
        if not response.is_success:
            raise RunError(
                f"Restate's admin API refused a query for run {run_id!r} "
                f"({response.status_code}): {response.text[:300]}"
            )
        rows: list[dict[str, Any]] = response.json().get("rows", [])
        return rows

    async def _invocation(self, run_id: str) -> dict[str, Any]:
        """The run's invocation row, with its input and position; RunNotFoundError if none."""
        s = self.settings
        rows = await self._query(
            "SELECT i.id, i.status, i.completion_result, i.created_at, i.modified_at, "
            "i.retry_count, i.last_failure, j.entry_json AS input, s.value_utf8 AS position "
            "FROM sys_invocation i "
            "LEFT JOIN sys_journal j ON j.id = i.id AND j.index = 0 "
            "LEFT JOIN state s ON s.service_name = i.target_service_name "
            f"AND s.service_key = i.target_service_key AND s.key = {_sql_text(STATE_KEY)} "
            f"WHERE i.target_service_name = {_sql_text(s.service)} "
            f"AND i.target_service_key = {_sql_text(run_id)} AND i.target_handler_name = 'run'",
            run_id,
        )
        if not rows:
            raise RunNotFoundError(run_id)
        return rows[0]

    def _workflow_url(self, run_id: str, handler: str) -> str:
        return f"{self.settings.ingress}/{self.settings.service}/{_path(run_id)}/{handler}"

    def _failure(self, run_id: str, response: httpx.Response) -> RunError | RunCancelledError:
        """The RunError for a failed run's output/attach answer."""
        try:
            body = response.json()
            code, text = int(body.get("code", response.status_code)), str(body.get("message", ""))
        except (ValueError, AttributeError):
            code, text = response.status_code, response.text
        try:
            failure = json.loads(text)
            type_name, message = str(failure["type"]), str(failure["message"])
        except (ValueError, KeyError, TypeError):
            if code == CANCELLED:
                return RunCancelledError(run_id, f"on Restate: {text}")
            return RunFailedError(run_id, "RestateError", text)
        if type_name == "RunCancelledError" and code == CANCELLED:
            return RunCancelledError(run_id)
        return RunFailedError(run_id, type_name, message)

    # -- client operations ------------------------------------------------------------------------------

    async def start(
        self,
        workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
        *args: Any,
        run_id: str | None = None,
        allow_unknown: bool = False,  # engines cannot see what their workers serve: unchecked
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> RunHandle:
        """Start a run of ``workflow(*args, **kwargs)`` as the Restate workflow keyed ``run_id``
        (of the URL's service); idempotent on ``run_id`` like ``Runtime.start``.

        Raises EffectNotAllowedError, before anything is started, when the workflow has a step
        whose constant ``timeout=`` is longer than Restate lets a step attempt run
        (``inactivity_timeout + abort_timeout``; see ``coro_durable_restate._check``).
        """
        self._check_open()
        self._check_no_tags(tags)
        fn: Callable[..., Any] | None
        if isinstance(workflow, str):
            name = workflow
            try:
                fn = engine.lookup(name)
            except LookupError:
                fn = None  # registered only on the endpoints: checked when it runs
        else:
            name = engine.register_function(workflow)
            fn = workflow
        if fn is not None:
            check_workflow(fn, self.settings.step_limit)
        text = _codec.encode(
            {"args": list(args), "kwargs": kwargs},
            where=f"inputs of workflow {name}",
            limit=self.max_payload_bytes,
        )
        run_id = uuid.uuid4().hex if run_id is None else engine.check_run_id(run_id)
        body = {"workflow": name, "inputs": json.loads(text)}
        response = await self._request(
            "POST", self._workflow_url(run_id, "run/send"), run_id, json=body
        )
        if not response.is_success:
            raise RunError(
                f"Restate refused to start run {run_id!r} ({response.status_code}): "
                f"{response.text[:300]}"
            )
        if response.json().get("status") != "PreviouslyAccepted":
            return self._run_handle(run_id, created=True)
        existing = _input_of((await self._invocation(run_id)).get("input"))
        if existing is not None:
            old_name, old_inputs = decode_request(existing)
            old_text = _codec.encode(old_inputs, where="inputs")
            if old_name != name or old_text != _codec.encode(_codec.decode(text), where="inputs"):
                raise RunAlreadyExistsError(
                    run_id,
                    f"run {run_id!r} already exists as {old_name}({old_text}); it cannot be "
                    f"started again as {name}({text}). Use another run_id, or the same inputs "
                    "to get the existing run",
                )
        return self._run_handle(run_id, created=False)

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> bool:
        """Send signal ``name`` with ``payload`` to a run: the workflow's shared ``signal``
        handler resolves the first unresolved durable promise ``name#n``, so signals sent
        before the workflow waits are kept, in order. Returns when the signal is recorded.
        Idempotent per ``signal_id`` (Restate's idempotency key): a repeat returns False."""
        self._check_open()
        text = _codec.encode(
            payload, where=f"payload of signal {name!r}", limit=self.max_payload_bytes
        )
        row = await self._invocation(run_id)  # RunNotFoundError if there is no such run
        if row.get("status") == "completed":
            status = await self._final_status(run_id, row)
            raise RunError(
                f"run {run_id!r} is already {status}; nothing would ever read signal {name!r}"
            )
        key = signal_id if signal_id is not None else uuid.uuid4().hex
        response = await self._request(
            "POST",
            self._workflow_url(run_id, "signal/send"),
            run_id,
            json={"name": name, "payload": text},
            headers={"idempotency-key": key},
        )
        if not response.is_success:
            raise RunError(
                f"Restate refused signal {name!r} for run {run_id!r} ({response.status_code}): "
                f"{response.text[:300]}"
            )
        sent = response.json()
        # Wait until it is recorded, so that signals sent one after the other keep their order.
        attached = await self._request(
            "GET",
            f"{self.settings.ingress}/restate/invocation/{sent['invocationId']}/attach",
            run_id,
            timeout=None,
        )
        if not attached.is_success:
            raise RunError(
                f"signal {name!r} for run {run_id!r} failed on Restate "
                f"({attached.status_code}): {attached.text[:300]}"
            )
        return bool(sent.get("status") != "PreviouslyAccepted")

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result (RunFailedError, RunCancelledError,
        ResultTimeoutError as on the embedded runtime)."""
        self._check_open()
        url = f"{self.settings.ingress}/restate/workflow/{self.settings.service}/{_path(run_id)}/attach"  # fmt: skip
        try:
            response = await asyncio.wait_for(
                self._request("GET", url, run_id, timeout=None), timeout
            )
        except TimeoutError:
            raise ResultTimeoutError(
                run_id,
                f"run {run_id!r} is still running on Restate after {timeout}s; wait longer or "
                f"check that an endpoint serves service {self.settings.service!r}",
            ) from None
        if response.status_code == 404:
            raise RunNotFoundError(run_id)
        if not response.is_success:
            raise self._failure(run_id, response)
        return _codec.decode(response.text)

    async def _output(self, run_id: str) -> tuple[Any, RunError | RunCancelledError | None]:
        """A finished run's result, or its failure."""
        url = f"{self.settings.ingress}/restate/workflow/{self.settings.service}/{_path(run_id)}/output"  # fmt: skip
        response = await self._request("GET", url, run_id)
        if response.status_code == 404:
            raise RunNotFoundError(run_id)
        if response.is_success:
            return _codec.decode(response.text), None
        return None, self._failure(run_id, response)

    async def _final_status(self, run_id: str, row: dict[str, Any]) -> RunStatus:
        if row.get("completion_result") == "success":
            return RunStatus.COMPLETED
        _, failure = await self._output(run_id)
        return RunStatus.CANCELLED if isinstance(failure, RunCancelledError) else RunStatus.FAILED

    async def describe(self, run_id: str) -> RunInfo:
        """Status, timestamps and inputs from Restate's introspection (admin API), the run's
        position (step, what it waits on, wake time) from the state its handler keeps."""
        self._check_open()
        row = await self._invocation(run_id)
        request = _input_of(row.get("input"))
        try:
            workflow, inputs = decode_request(request)
        except (ValueError, TypeError):
            workflow, inputs = "?", {}
        try:
            position = json.loads(row.get("position") or "{}")
        except ValueError:
            position = {}
        result: Any = None
        error: dict[str, str] | None = None
        if row.get("status") == "completed":
            result, failure = await self._output(run_id)
            if isinstance(failure, RunFailedError):
                status = RunStatus.FAILED
                error = {"type": failure.type_name, "message": failure.message}
            elif failure is not None:
                status = RunStatus.CANCELLED
                error = {"type": type(failure).__name__, "message": str(failure)}
            else:
                status = RunStatus.COMPLETED
        elif position.get("waiting_on"):
            status = RunStatus.WAITING
        else:
            status = RunStatus.RUNNING
        wake_at = position.get("wake_at") if status == RunStatus.WAITING else None
        return RunInfo(
            run_id=run_id,
            workflow=workflow,
            status=status,
            step=int(position.get("step", 0)),
            waiting_on=position.get("waiting_on") if status == RunStatus.WAITING else None,
            inputs=inputs,
            result=result,
            error=error,
            crash_count=int(row.get("retry_count") or 0),
            last_error=row.get("last_failure") or None,
            owner=None,
            wake_at=_timestamp(wake_at),
            created_at=_timestamp(row.get("created_at")),
            updated_at=_timestamp(row.get("modified_at")),
        )

    async def cancel(self, run_id: str) -> None:
        """Request cancellation: RunCancelledError is raised at the run's pending await (a step
        attempt in flight finishes first). Cancelling a finished run does nothing."""
        self._check_open()
        row = await self._invocation(run_id)  # RunNotFoundError if there is no such run
        if row.get("status") == "completed":
            return
        response = await self._request(
            "PATCH", f"{self.settings.admin}/invocations/{row['id']}/cancel", run_id
        )
        if response.status_code == 409:  # finished meanwhile
            return
        if not response.is_success:
            raise RunError(
                f"Restate refused to cancel run {run_id!r} ({response.status_code}): "
                f"{response.text[:300]}"
            )

    async def history(self, run_id: str) -> list[Any]:
        """Not offered on Restate: the run's journal is its Restate journal."""
        raise self._not_offered(
            "history()",
            f"see the run's journal with `restate invocations describe` or in the Restate UI "
            f"(workflow {self.settings.service}, key {run_id!r})",
        )

    async def list_runs(self, **filters: Any) -> list[RunInfo]:
        """Not offered on Restate: list runs with Restate's introspection."""
        raise self._not_offered(
            "list_runs()",
            f"query sys_invocation on the admin API (target_service_name = "
            f"'{self.settings.service}') or use the Restate UI",
        )

    async def replay(self, run_id: str) -> Any:
        """Not offered on Restate: Restate replays the journal on every attempt itself."""
        raise self._not_offered(
            "replay()", "Restate checks every attempt's code against the run's journal itself"
        )

    async def resume(self, run_id: str) -> RunInfo:
        """Not offered on Restate: a run never quarantines; its failing attempt is retried."""
        raise self._not_offered(
            "resume()",
            "a failing attempt is retried by Restate until the code is fixed; a paused "
            "invocation is resumed with `restate invocations resume`",
        )


def _path(run_id: str) -> str:
    """A run id as one URL path segment."""
    return quote(run_id, safe="")
