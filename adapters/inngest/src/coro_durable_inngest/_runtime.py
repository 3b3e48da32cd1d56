"""InngestRuntime: the Runtime operations against Inngest, and the app's endpoint while it is open."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import fastapi
import httpx
import inngest
import inngest.fast_api
import uvicorn

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

from ._api import CANCEL, START_EVENT, InngestApi, mailbox_event
from ._check import check_workflow
from ._config import InngestSettings, parse_url
from ._driver import Position, make_function

__all__ = ["InngestRuntime"]

log = logging.getLogger("coro_durable.inngest")

_STATUS = {
    "COMPLETED": RunStatus.COMPLETED,
    "FAILED": RunStatus.FAILED,
    "CANCELLED": RunStatus.CANCELLED,
    "CANCELED": RunStatus.CANCELLED,
    "OVERFLOWED": RunStatus.FAILED,
    "RUNNING": RunStatus.RUNNING,
    "SCHEDULED": RunStatus.PENDING,
    "QUEUED": RunStatus.PENDING,
    "PAUSED": RunStatus.RUNNING,
}


@dataclass(frozen=True, slots=True)
class _Start:
    """The start event of a run: Inngest's event id, the workflow and the inputs' codec text."""

    event_id: str
    workflow: str
    input: str
    received_at: _dt.datetime | None


class _Server(uvicorn.Server):
    """uvicorn serving inside the application's event loop, leaving its signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket. Created with IPPROTO_TCP so that asyncio sets TCP_NODELAY on the
    connections it accepts (it skips sockets whose proto is 0, as socket.create_server makes
    them): without it every response waits ~40 ms for a delayed ACK."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


async def _close_sdk_client(client: inngest.Inngest) -> None:
    """Close the HTTP connection pools the SDK's client opens (it has no close method of its
    own; left open, their sockets are only reclaimed by the garbage collector)."""
    http = getattr(client, "_http_client", None)
    pools = [getattr(http, "_http_client", None), getattr(http, "_http_client_sync", None)]
    for pool in pools:
        if isinstance(pool, httpx.AsyncClient):
            await pool.aclose()
        elif isinstance(pool, httpx.Client):
            pool.close()


def _parse_time(value: Any) -> _dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _run_error(run: dict[str, Any]) -> tuple[str, str]:
    """(type name, message) of a failed Inngest run, from its output."""
    output = run.get("output")
    if isinstance(output, str):
        try:
            output = json.loads(output)
        except ValueError:
            return "Error", output
    if isinstance(output, dict) and isinstance(output.get("error"), dict):
        output = output["error"]
    if isinstance(output, dict):
        name = str(output.get("name") or "Error")
        message = str(output.get("message") or "")
        match = re.match(r"^([A-Za-z_][\w.]*): (.*)$", message, re.DOTALL)
        if name == "Error" and match:  # "Type: message" as some executors flatten it
            return match.group(1), match.group(2)
        return name, message
    return "Error", "" if output is None else str(output)


class InngestRuntime(engine.EngineRuntime):
    """Runs coro_durable workflows on Inngest, with the same methods as ``cd.Runtime``.

        async with cd.Runtime("inngest://127.0.0.1:8288?app_id=research") as rt:
            handle = await rt.start(pipeline, "topic", run_id="r-1")
            await rt.signal("r-1", "approval", {"ok": True})
            print(await rt.result("r-1", timeout=60))

    ``cd.Runtime(url)`` returns one of these for ``inngest://`` URLs (see the package docstring for
    every URL parameter). While open it serves the app's Inngest endpoint (one Inngest function
    per registered workflow) and registers it with Inngest (``worker=False``: a client only).
    Options:

        worker: serve the endpoint while open (default True).
        workflows: workflow functions to register (``@cd.workflow`` registers them already).
        concurrency: threads for sync steps (default 100).
        max_payload_bytes: largest encoded input, result or signal payload accepted.
        worker_id: ignored (Inngest has no worker identity); accepted for symmetry.
        lease_ttl, poll_interval, max_crashes, inline_wait, store_deadline: embedded-runtime
            options, accepted and ignored.
    """

    engine_name = "Inngest"
    asyncio_reason = "the Inngest Python SDK and its HTTP endpoint run on an asyncio event loop"

    def __init__(
        self,
        url: str,
        *,
        worker: bool = True,
        workflows: Iterable[Callable[..., Coroutine[Any, Any, Any]]] = (),
        concurrency: int = 100,
        max_payload_bytes: int = _codec.DEFAULT_MAX_PAYLOAD_BYTES,
        worker_id: str | None = None,
        **embedded_only: Any,
    ) -> None:
        self._check_options(
            embedded_only,
            "worker, workflows, concurrency, max_payload_bytes and worker_id",
            concurrency,
        )
        self.url = url
        self.settings: InngestSettings = parse_url(url)
        self.worker = worker
        self.concurrency = concurrency
        self.max_payload_bytes = max_payload_bytes
        self.worker_id = worker_id
        self._register_workflows(workflows)
        self.serve_url: str | None = None  # the endpoint's URL as registered with Inngest
        self._api: InngestApi | None = None
        self._client: inngest.Inngest | None = None
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._positions: dict[str, Position] = {}
        self._starts: dict[str, _Start] = {}
        self._last_ns = 0
        self._open = False

    def __repr__(self) -> str:
        return f"InngestRuntime({self.settings.api_origin}, app_id={self.settings.app_id!r})"

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._require_asyncio()
        s = self.settings
        self._api = InngestApi(s)
        self._client = inngest.Inngest(
            app_id=s.app_id,
            is_production=s.mode == "cloud",
            api_base_url=s.api_origin,
            event_api_base_url=s.event_api_origin,
            event_key=s.event_key,
            signing_key=s.signing_key,
            logger=log,
        )
        try:
            if self.worker:
                await self._serve()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self._open = True
        return self

    async def _serve(self) -> None:
        s = self.settings
        assert self._client is not None
        names = sorted(engine.registered())
        if not names:
            raise ConfigurationError(
                "InngestRuntime has no workflow to serve: import the modules that define them "
                "(@cd.workflow) or pass workflows=[...], or open it with worker=False"
            )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="coro-durable-step"
        )
        functions = [
            make_function(
                self._client,
                name,
                s,
                self._api,
                executor=self._executor,
                positions=self._positions,
                max_payload_bytes=self.max_payload_bytes,
            )
            for name in names
        ]
        app = fastapi.FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        inngest.fast_api.serve(
            app, self._client, functions, serve_path=s.serve_path, serve_origin=s.serve_origin
        )
        host, port = s.listen
        try:
            sock = _listen(host, port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {host}:{port} for the Inngest endpoint: {exc}"
            ) from exc
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._serving.done():
                self._serving.result()
                raise ConfigurationError("the Inngest endpoint's server stopped at start")
            await asyncio.sleep(0.005)
        local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
        self.serve_url = (s.serve_origin or local) + s.serve_path
        if s.sync:
            await self._sync(local + s.serve_path)

    async def _sync(self, url: str) -> None:
        """Register the app with Inngest: a PUT to our own endpoint makes the SDK send its
        function configurations to Inngest (out-of-band sync, the dev server's way too)."""
        async with httpx.AsyncClient(timeout=30) as http:
            try:
                res = await http.put(url)
            except httpx.HTTPError as exc:
                raise StoreUnavailableError(
                    f"could not sync the Inngest app at {url}: {exc}"
                ) from exc
        if res.status_code >= 400:
            raise StoreUnavailableError(
                f"Inngest refused to register app {self.settings.app_id!r} "
                f"(HTTP {res.status_code}: {res.text[:300]}); is Inngest running at "
                f"{self.settings.api_origin}? (e.g. `npx inngest-cli dev`)"
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        try:
            if self._server is not None and self._serving is not None:
                server, serving = self._server, self._serving
                self._server = self._serving = None
                server.should_exit = True
                done, _ = await asyncio.wait({serving}, timeout=5)
                if not done:
                    server.force_exit = True
                    serving.cancel()
                    await asyncio.wait({serving}, timeout=2)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            if self._api is not None:
                await self._api.aclose()
                self._api = None
            if self._client is not None:
                await _close_sdk_client(self._client)
                self._client = None

    def _open_api(self) -> InngestApi:
        """The Inngest API client, once open (ConfigurationError before)."""
        if not self._open or self._api is None:
            raise ConfigurationError(
                "this InngestRuntime is not open; use it as `async with cd.Runtime(url) as rt:`"
            )
        return self._api

    @property
    def client(self) -> inngest.Inngest:
        """The ``inngest.Inngest`` client (for anything Inngest-specific)."""
        self._open_api()
        assert self._client is not None
        return self._client

    # -- finding runs -----------------------------------------------------------------------------------

    async def _find(self, run_id: str) -> _Start | None:
        """The start event of ``run_id``: remembered if this runtime sent it, else looked up
        among the stored ``coro_durable/start`` events (Inngest's event retention applies)."""
        known = self._starts.get(run_id)
        if known is not None:
            return known
        api = self._open_api()
        matches = [
            e
            for e in await api.list_events(START_EVENT)
            if isinstance(e.get("data"), dict) and e["data"].get("run_id") == run_id
        ]
        if not matches:
            return None
        first = matches[-1]  # newest first: the last one is the original
        data = first["data"]
        start = _Start(
            str(first.get("internal_id") or first.get("id")),
            str(data.get("workflow", "")),
            str(data.get("input", "")),
            _parse_time(first.get("received_at")),
        )
        self._starts[run_id] = start
        return start

    async def _state(self, run_id: str) -> tuple[_Start, dict[str, Any] | None]:
        """The start event and Inngest's run (None until Inngest has created it)."""
        api = self._open_api()
        start = await self._find(run_id)
        if start is None:
            raise RunNotFoundError(run_id)
        runs = await api.event_runs(start.event_id)
        return start, (runs[0] if runs else None)

    @staticmethod
    def _status(run: dict[str, Any] | None) -> RunStatus:
        if run is None:
            return RunStatus.PENDING
        return _STATUS.get(str(run.get("status", "")).upper(), RunStatus.RUNNING)

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
        """Start a run of ``workflow(*args, **kwargs)`` by sending its start event; idempotent on
        ``run_id`` like ``Runtime.start``.

        Raises EffectNotAllowedError, before anything is sent, when the workflow has a step
        timeout or a sleep Inngest cannot express (see ``coro_durable_inngest._check``).
        """
        self._open_api()
        self._check_no_tags(tags)
        fn: Callable[..., Any] | None
        if isinstance(workflow, str):
            name = workflow
            try:
                fn = engine.lookup(name)
            except LookupError:
                fn = None  # registered only on the endpoints
        else:
            name = engine.register_function(workflow)
            fn = workflow
        if fn is not None:
            check_workflow(fn, self.settings)
        text = _codec.encode(
            {"args": list(args), "kwargs": kwargs},
            where=f"inputs of workflow {name}",
            limit=self.max_payload_bytes,
        )
        run_id = uuid.uuid4().hex if run_id is None else engine.check_run_id(run_id)
        existing = await self._find(run_id)
        if existing is not None:
            if existing.workflow != name or existing.input != text:
                raise RunAlreadyExistsError(
                    run_id,
                    f"run {run_id!r} already exists as {existing.workflow}({existing.input}); it "
                    f"cannot be started again as {name}({text}). Use another run_id, or the same "
                    "inputs to get the existing run",
                )
            return self._run_handle(run_id, created=False)
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:32]
        event = inngest.Event(
            name=START_EVENT,
            id=f"cd-start-{digest}",  # Inngest drops a repeat of this id (24 h)
            data={"run_id": run_id, "workflow": name, "input": text},
        )
        ids = await self._send(event, f"start run {run_id!r}")
        self._starts[run_id] = _Start(ids[0], name, text, _dt.datetime.now(_dt.UTC))
        return self._run_handle(run_id, created=True)

    async def _send(self, event: inngest.Event, what: str) -> list[str]:
        try:
            ids = await self.client.send(event)
        except Exception as exc:
            raise StoreUnavailableError(
                f"could not {what}: Inngest's event API at {self.settings.event_api_origin} "
                f"refused the event: {exc}"
            ) from exc
        if not ids:
            raise StoreUnavailableError(f"could not {what}: Inngest returned no event id")
        return ids

    def _sent_ns(self) -> int:
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> bool:
        """Send signal ``name`` with ``payload`` to a run, as an event in the run's mailbox; it
        is delivered even if the run waits for it later. Idempotent per ``signal_id``: returns
        False when the run's mailbox already holds that id (the run takes each id once anyway)."""
        api = self._open_api()
        if name == CANCEL:
            raise ConfigurationError(f"signal name {CANCEL!r} is reserved for rt.cancel")
        text = _codec.encode(
            payload, where=f"payload of signal {name!r}", limit=self.max_payload_bytes
        )
        _, run = await self._state(run_id)
        status = self._status(run)
        if status in engine.TERMINAL:
            raise RunError(
                f"run {run_id!r} is already {status}; nothing would ever read signal {name!r}"
            )
        if signal_id is not None:
            held = await api.mailbox(run_id, None)
            if any(s["signal_id"] == signal_id for s in held):
                return False
        await self._post(run_id, name, text, signal_id or uuid.uuid4().hex)
        return True

    async def _post(self, run_id: str, name: str, text: str | None, signal_id: str) -> None:
        digest = hashlib.sha256(f"{run_id}\n{signal_id}".encode()).hexdigest()[:32]
        event = inngest.Event(
            name=mailbox_event(run_id),
            id=f"cd-signal-{digest}",
            data={
                "run_id": run_id,
                "name": name,
                "signal_id": signal_id,
                "payload": text,
                "sent_ns": self._sent_ns(),
            },
        )
        await self._send(event, f"signal run {run_id!r}")

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result (RunFailedError, RunCancelledError,
        ResultTimeoutError as on the embedded runtime). Polls the REST API."""
        self._open_api()
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = min(0.01, self.settings.poll_interval)
        while True:
            _, run = await self._state(run_id)
            status = self._status(run)
            if status in engine.TERMINAL:
                assert run is not None
                return self._outcome(run_id, run, status)
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeoutError(
                    run_id,
                    f"run {run_id!r} is still {status} on Inngest after {timeout}s; wait longer "
                    f"or check that an endpoint serving app {self.settings.app_id!r} is synced",
                )
            wait = interval if deadline is None else min(interval, deadline - time.monotonic())
            await asyncio.sleep(max(wait, 0))
            interval = min(interval * 2, self.settings.poll_interval)

    @staticmethod
    def _outcome(run_id: str, run: dict[str, Any], status: RunStatus) -> Any:
        if status == RunStatus.COMPLETED:
            output = run.get("output")
            return _codec.decode(output) if isinstance(output, str) else output
        if status == RunStatus.CANCELLED:
            raise RunCancelledError(run_id)
        type_name, message = _run_error(run)
        if type_name == "RunCancelledError":
            raise RunCancelledError(run_id)
        raise RunFailedError(run_id, type_name, message)

    async def describe(self, run_id: str) -> RunInfo:
        """Status from Inngest's REST API; the run's position (step, what it waits on) from this
        process's endpoint, when it served the run's latest request (else step 0 and None)."""
        self._open_api()
        start, run = await self._state(run_id)
        status = self._status(run)
        where = self._positions.get(run_id)
        if status == RunStatus.RUNNING and where is not None and not where.running:
            status = RunStatus.WAITING
        result: Any = None
        error: dict[str, str] | None = None
        if status in engine.TERMINAL:
            assert run is not None
            try:
                result = self._outcome(run_id, run, status)
            except RunCancelledError as exc:
                status = RunStatus.CANCELLED
                error = {"type": type(exc).__name__, "message": str(exc)}
            except RunFailedError as exc:
                error = {"type": exc.type_name, "message": exc.message}
        try:
            inputs = _codec.decode(start.input) if start.input else {}
        except Exception:
            inputs = {}
        live = where is not None and status not in engine.TERMINAL
        return RunInfo(
            run_id=run_id,
            workflow=start.workflow,
            status=status,
            step=where.step if live and where is not None else 0,
            waiting_on=where.waiting_on if status == RunStatus.WAITING and where else None,
            inputs=inputs if isinstance(inputs, dict) else {"args": inputs},
            result=result,
            error=error,
            crash_count=0,
            last_error=None,
            owner=None,
            wake_at=where.wake_at if status == RunStatus.WAITING and where else None,
            created_at=_parse_time((run or {}).get("run_started_at")) or start.received_at,
            updated_at=_parse_time((run or {}).get("ended_at")),
        )

    async def cancel(self, run_id: str) -> None:
        """Cancel a run. Cooperative (default): a ``$cancel`` event in the run's mailbox raises
        RunCancelledError at the run's pending await (a step attempt in flight finishes first),
        so the workflow may clean up. ``cancel=native`` in the URL: Inngest's own cancellation
        (DELETE /v1/runs/{id}), which stops the run between steps without running any more of
        its code. Cancelling a finished run does nothing."""
        api = self._open_api()
        _, run = await self._state(run_id)
        if self._status(run) in engine.TERMINAL:
            return
        if self.settings.cancel == "native" and run is not None:
            await api.cancel_run(str(run.get("run_id") or run.get("id")))
            return
        await self._post(run_id, CANCEL, None, f"cancel-{uuid.uuid4().hex}")

    async def history(self, run_id: str) -> list[Any]:
        """Not offered on Inngest: the run's steps are in Inngest's dashboard."""
        raise self._not_offered("history()", "see the run's steps in the Inngest dashboard")

    async def list_runs(self, **filters: Any) -> list[RunInfo]:
        """Not offered on Inngest."""
        raise self._not_offered("list_runs()", "list runs in the Inngest dashboard")

    async def replay(self, run_id: str) -> Any:
        """Not offered on Inngest: every request already replays the run from its steps."""
        raise self._not_offered("replay()", "Inngest replays the workflow on every request")

    async def resume(self, run_id: str) -> RunInfo:
        """Not offered on Inngest: a failed request is retried by Inngest itself."""
        raise self._not_offered("resume()", "Inngest retries failed requests (retries= in the URL)")
