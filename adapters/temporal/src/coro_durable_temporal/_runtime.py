"""TemporalRuntime: the Runtime operations on a Temporal server, and a worker while it is open."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import SignalWorkflowExecutionRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import (
    TimeoutError as TemporalTimeoutError,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

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

from ._config import TemporalSettings, parse_url
from ._driver import OPTIONS_MARK, QUERY_DESCRIBE, QUERY_SIGNAL_SEEN, SIGNAL_ID, SIGNAL_PAYLOAD
from ._steps import StepRunner, check_workflow
from ._workflow import CoroDurableWorkflow

__all__ = ["TemporalRuntime", "workflow_runner"]


_STATUS = {
    WorkflowExecutionStatus.RUNNING: RunStatus.RUNNING,
    WorkflowExecutionStatus.CONTINUED_AS_NEW: RunStatus.RUNNING,
    WorkflowExecutionStatus.COMPLETED: RunStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED: RunStatus.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: RunStatus.FAILED,
    WorkflowExecutionStatus.CANCELED: RunStatus.CANCELLED,
    WorkflowExecutionStatus.TERMINATED: RunStatus.CANCELLED,
}


def workflow_runner(*, sandbox: bool = True) -> WorkflowRunner:
    """The Temporal workflow runner coro_durable workflows need (also for ``Replayer``).

    With the sandbox, every module passes through: coro_durable's effect classes and workflow
    registry must be the process's own, and the user's modules are found there.
    """
    if not sandbox:
        return UnsandboxedWorkflowRunner()
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_all_modules()
    )


class TemporalRuntime(engine.EngineRuntime):
    """Runs coro_durable workflows on Temporal, with the same methods as ``cd.Runtime``.

        async with cd.Runtime("temporal://127.0.0.1:7233/default?task_queue=q") as rt:
            handle = await rt.start(pipeline, "topic", run_id="r-1")
            await rt.signal("r-1", "approval", {"ok": True})
            print(await rt.result("r-1", timeout=60))

    ``cd.Runtime(url)`` returns one of these for ``temporal://`` URLs (see the package docstring
    for every URL parameter). While open it runs a Temporal worker on the task queue for every
    registered workflow (``worker=False``: a client only). Options:

        worker: run a worker while open (default True).
        workflows: workflow functions to register (``@cd.workflow`` registers them already).
        concurrency: how many steps (activities) this worker runs at once (default 100).
        max_payload_bytes: largest encoded input or signal payload accepted from this client.
        worker_id: the worker's identity as Temporal shows it.
        client: an already connected ``temporalio.client.Client`` (custom TLS, API keys,
            codecs...); the URL's address is then ignored, its namespace must match.
        lease_ttl, poll_interval, max_crashes, inline_wait, store_deadline: embedded-runtime
            options, accepted and ignored (Temporal has its own equivalents).
    """

    engine_name = "Temporal"
    asyncio_reason = "the Temporal Python SDK (temporalio) runs only on an asyncio event loop"

    def __init__(
        self,
        url: str,
        *,
        worker: bool = True,
        workflows: Iterable[Callable[..., Coroutine[Any, Any, Any]]] = (),
        concurrency: int = 100,
        max_payload_bytes: int = _codec.DEFAULT_MAX_PAYLOAD_BYTES,
        worker_id: str | None = None,
        client: Client | None = None,
        **embedded_only: Any,
    ) -> None:
        self._check_options(
            embedded_only,
            "worker, workflows, concurrency, max_payload_bytes, worker_id and client",
            concurrency,
        )
        self.url = url
        self.settings: TemporalSettings = parse_url(url)
        self.worker = worker
        self.concurrency = concurrency
        self.max_payload_bytes = max_payload_bytes
        self.worker_id = worker_id
        self._register_workflows(workflows)
        self._given_client = client
        self._client: Client | None = None
        self._worker: Worker | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._open = False

    def __repr__(self) -> str:
        s = self.settings
        return f"TemporalRuntime({s.address}/{s.namespace}, task_queue={s.task_queue!r})"

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._require_asyncio()
        s = self.settings
        if self._given_client is not None:
            self._client = self._given_client
        else:
            try:
                self._client = await Client.connect(s.address, namespace=s.namespace, tls=s.tls)
            except Exception as exc:
                raise StoreUnavailableError(
                    f"cannot connect to Temporal at {s.address} (namespace {s.namespace!r}): "
                    f"{exc}. Check that the server is up, e.g. `temporal server start-dev`"
                ) from exc
        try:
            if self.worker:
                await self._start_worker()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self._open = True
        return self

    async def _start_worker(self) -> None:
        s = self.settings
        assert self._client is not None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="coro-durable-step"
        )
        options: dict[str, Any] = {}
        if self.worker_id:
            options["identity"] = self.worker_id
        worker = Worker(
            self._client,
            task_queue=s.task_queue,
            workflows=[CoroDurableWorkflow],
            activities=[StepRunner(self._executor).run],
            workflow_runner=workflow_runner(sandbox=s.sandbox),
            max_concurrent_activities=self.concurrency,
            max_cached_workflows=s.max_cached_workflows,
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=s.sticky_timeout),
            **options,
        )
        await worker.__aenter__()
        self._worker = worker

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        try:
            if self._worker is not None:
                worker, self._worker = self._worker, None
                await worker.__aexit__(exc_type, exc, tb)
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    @property
    def client(self) -> Client:
        """The connected ``temporalio`` client (for anything Temporal-specific)."""
        self._check_open()
        assert self._client is not None
        return self._client

    def _not_offered(self, what: str, instead: str) -> ConfigurationError:
        return super()._not_offered(
            what, f"{instead}. rt.client is the connected temporalio client"
        )

    def _handle(self, run_id: str) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(run_id)

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
        """Start a run of ``workflow(*args, **kwargs)`` as a Temporal workflow whose id is
        ``run_id``; idempotent on ``run_id`` like ``Runtime.start``.

        Raises EffectNotAllowedError, before anything is started, when the workflow issues a
        step Temporal cannot express (a lambda, a nested function, a functools.partial, a bound
        method...: see ``coro_durable_temporal._steps``).
        """
        self._check_open()
        self._check_no_tags(tags)
        fn: Callable[..., Any] | None
        if isinstance(workflow, str):
            name = workflow
            try:
                fn = engine.lookup(name)
            except LookupError:
                fn = None  # registered only on the workers: they check it when it runs
        else:
            name = engine.register_function(workflow)
            fn = workflow
        if fn is not None:
            check_workflow(fn)
        text = _codec.encode(
            {"args": list(args), "kwargs": kwargs},
            where=f"inputs of workflow {name}",
            limit=self.max_payload_bytes,
        )
        run_id = uuid.uuid4().hex if run_id is None else engine.check_run_id(run_id)
        s = self.settings
        options = {
            OPTIONS_MARK: 1,
            "heartbeat_timeout": s.heartbeat_timeout,
            "step_timeout": s.step_timeout,
        }
        try:
            await self.client.start_workflow(
                name,
                args=[text, options],
                id=run_id,
                task_queue=s.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            )
        except WorkflowAlreadyStartedError:
            existing, existing_text = await self._started_with(run_id)
            if existing != name or existing_text != text:
                raise RunAlreadyExistsError(
                    run_id,
                    f"run {run_id!r} already exists as {existing}({existing_text}); it cannot be "
                    f"started again as {name}({text}). Use another run_id, or the same inputs to "
                    "get the existing run",
                ) from None
            return self._run_handle(run_id, created=False)
        except RPCError as exc:
            raise self._rpc_error(exc, run_id) from exc
        return self._run_handle(run_id, created=True)

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> bool:
        """Send signal ``name`` with ``payload`` to a run, as a Temporal signal (accepted by the
        server even while no worker runs). Idempotent per ``signal_id``: Temporal itself drops a
        repeat (the request id is derived from it) and so does the run. Returns False when the
        run had already received ``signal_id``, as far as its worker (or, without a live worker,
        its history) can tell: a repeat sent while the first is still being handed to the
        worker may read True, and is still dropped."""
        self._check_open()
        text = _codec.encode(
            payload, where=f"payload of signal {name!r}", limit=self.max_payload_bytes
        )
        if signal_id is not None:
            status = await self._status(run_id)  # RunNotFoundError if there is no such run
            if status in engine.TERMINAL:
                raise self._finished(run_id, status, name)
            if await self._signal_seen(run_id, name, signal_id):
                return False
        client = self.client
        sid = signal_id or uuid.uuid4().hex
        request = SignalWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=run_id),
            signal_name=name,
            identity=client.identity,
            request_id=f"coro_durable:{uuid.uuid5(uuid.NAMESPACE_URL, f'{run_id}/{name}/{sid}')}",
        )
        request.input.payloads.extend(
            await client.data_converter.encode([{SIGNAL_ID: sid, SIGNAL_PAYLOAD: text}])
        )
        try:
            await client.workflow_service.signal_workflow_execution(request, retry=True)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                status = await self._status(run_id)  # RunNotFoundError if there is no such run
                raise self._finished(run_id, status, name) from None
            raise self._rpc_error(exc, run_id) from exc
        return True

    @staticmethod
    def _finished(run_id: str, status: RunStatus, name: str) -> RunError:
        return RunError(
            f"run {run_id!r} is already {status}; nothing would ever read signal {name!r}"
        )

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result (RunFailedError, RunCancelledError,
        ResultTimeoutError as on the embedded runtime)."""
        self._check_open()
        try:
            text = await asyncio.wait_for(self._handle(run_id).result(), timeout)
        except TimeoutError:
            raise ResultTimeoutError(
                run_id,
                f"run {run_id!r} is still running on Temporal after {timeout}s; wait longer or "
                f"check that a worker polls task queue {self.settings.task_queue!r}",
            ) from None
        except WorkflowFailureError as exc:
            raise self._run_error(run_id, exc) from None
        except RPCError as exc:
            raise self._rpc_error(exc, run_id) from exc
        return _codec.decode(str(text)) if text is not None else None

    async def describe(self, run_id: str) -> RunInfo:
        """Status from the server, and the run's position (step, what it waits on) from a query
        answered by a worker; without a live worker those read as 0 and None (a finished run
        is queried only when this runtime runs a worker)."""
        self._check_open()
        handle = self._handle(run_id)
        try:
            desc = await handle.describe()
        except RPCError as exc:
            raise self._rpc_error(exc, run_id) from exc
        status = _STATUS.get(desc.status or WorkflowExecutionStatus.RUNNING, RunStatus.RUNNING)
        state: dict[str, Any] | None = None
        # A finished run is queried only when this process runs a worker: the query replays
        # its history on a worker, and without one it would just wait for query_timeout.
        if status not in engine.TERMINAL or self._worker is not None:
            try:
                state = await handle.query(
                    QUERY_DESCRIBE,
                    rpc_timeout=timedelta(seconds=self.settings.query_timeout),
                )
            except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
                state = None
        if status == RunStatus.RUNNING and state is not None and state.get("status") == "waiting":
            status = RunStatus.WAITING
        if state is not None:
            inputs = state.get("inputs") or {}
        else:
            _, text = await self._started_with(run_id)
            inputs = _codec.decode(text) if text else {}
        result: Any = None
        error: dict[str, str] | None = None
        if status == RunStatus.COMPLETED:
            result = await self.result(run_id)
        elif status in (RunStatus.FAILED, RunStatus.CANCELLED):
            try:
                await self._handle(run_id).result()
            except WorkflowFailureError as exc:
                failure = self._run_error(run_id, exc)
                if isinstance(failure, RunFailedError):
                    error = {"type": failure.type_name, "message": failure.message}
                else:
                    error = {"type": type(failure).__name__, "message": str(failure)}
        wake_at = state.get("wake_at") if state else None
        return RunInfo(
            run_id=run_id,
            workflow=desc.workflow_type,
            status=status,
            step=int(state.get("step", 0)) if state else 0,
            waiting_on=(state.get("waiting_on") if state else None)
            if status == RunStatus.WAITING
            else None,
            inputs=inputs if isinstance(inputs, dict) else {"args": inputs},
            result=result,
            error=error,
            crash_count=0,
            last_error=None,
            owner=None,
            wake_at=_dt.datetime.fromisoformat(wake_at) if wake_at else None,
            created_at=desc.start_time,
            updated_at=desc.close_time or desc.start_time,
        )

    async def cancel(self, run_id: str) -> None:
        """Request cancellation: RunCancelledError is raised at the run's pending await (a step
        attempt in flight finishes first). Cancelling a finished run does nothing."""
        self._check_open()
        try:
            await self._handle(run_id).cancel()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                await self._status(run_id)  # RunNotFoundError if there is no such run
                return  # already finished: nothing to cancel
            raise self._rpc_error(exc, run_id) from exc

    async def history(self, run_id: str) -> list[Any]:
        """Not offered on Temporal: the run's journal is its Temporal event history."""
        raise self._not_offered(
            "history()",
            f"see the run's event history with `temporal workflow show --workflow-id {run_id}` "
            "or in the Temporal UI",
        )

    async def list_runs(self, **filters: Any) -> list[RunInfo]:
        """Not offered on Temporal: list runs with Temporal's visibility API."""
        raise self._not_offered(
            "list_runs()",
            "use `temporal workflow list --query \"TaskQueue='...'\"` or the Temporal UI",
        )

    async def replay(self, run_id: str) -> Any:
        """Not offered on Temporal: Temporal's own Replayer checks histories against code."""
        raise self._not_offered(
            "replay()",
            "use temporalio.worker.Replayer(workflows=[coro_durable_temporal.CoroDurableWorkflow], "
            "workflow_runner=coro_durable_temporal.workflow_runner()) on the fetched history",
        )

    async def resume(self, run_id: str) -> RunInfo:
        """Not offered on Temporal: a run never quarantines; its failing task is retried."""
        raise self._not_offered(
            "resume()",
            "a run whose workflow task fails is retried by Temporal until the code is fixed",
        )

    # -- helpers --------------------------------------------------------------------------------------

    async def _status(self, run_id: str) -> RunStatus:
        try:
            desc = await self._handle(run_id).describe()
        except RPCError as exc:
            raise self._rpc_error(exc, run_id) from exc
        return _STATUS.get(desc.status or WorkflowExecutionStatus.RUNNING, RunStatus.RUNNING)

    async def _started_with(self, run_id: str) -> tuple[str, str]:
        """(workflow name, inputs as the codec's text) from the run's first history event."""
        converter = self.client.data_converter
        try:
            async for event in self._handle(run_id).fetch_history_events(page_size=1):
                attrs = event.workflow_execution_started_event_attributes
                values = await converter.decode(list(attrs.input.payloads))
                if (
                    len(values) == 2
                    and isinstance(values[0], str)
                    and isinstance(values[1], dict)
                    and values[1].get(OPTIONS_MARK)
                ):
                    return attrs.workflow_type.name, values[0]
                # started by another Temporal client: JSON positional arguments
                inputs = {"args": values, "kwargs": {}}
                return attrs.workflow_type.name, _codec.encode(inputs, where="inputs")
        except RPCError as exc:
            raise self._rpc_error(exc, run_id) from exc
        raise RunNotFoundError(run_id)

    async def _signal_seen(self, run_id: str, name: str, signal_id: str) -> bool:
        handle = self._handle(run_id)
        try:
            seen: bool = await handle.query(
                QUERY_SIGNAL_SEEN,
                signal_id,
                rpc_timeout=timedelta(seconds=self.settings.query_timeout),
            )
            return bool(seen)
        except (WorkflowQueryFailedError, WorkflowQueryRejectedError):
            pass
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise self._rpc_error(exc, run_id) from exc
        # No worker answered: look for it in the run's history.
        converter = self.client.data_converter
        try:
            async for event in handle.fetch_history_events():
                if not event.HasField("workflow_execution_signaled_event_attributes"):
                    continue
                attrs = event.workflow_execution_signaled_event_attributes
                if attrs.signal_name != name or not attrs.input.payloads:
                    continue
                [value] = await converter.decode(list(attrs.input.payloads)[:1])
                if isinstance(value, dict) and value.get(SIGNAL_ID) == signal_id:
                    return True
        except RPCError as exc:
            raise self._rpc_error(exc, run_id) from exc
        return False

    @staticmethod
    def _run_error(run_id: str, exc: WorkflowFailureError) -> RunError | RunCancelledError:
        cause = exc.cause
        if isinstance(cause, CancelledError):
            return RunCancelledError(run_id)
        if isinstance(cause, TerminatedError):
            return RunCancelledError(run_id, f"terminated on Temporal: {cause.message}")
        if isinstance(cause, ApplicationError):
            return RunFailedError(run_id, cause.type or "Error", cause.message)
        if isinstance(cause, TemporalTimeoutError):
            return RunFailedError(run_id, "TimeoutError", f"Temporal workflow timeout: {cause}")
        return RunFailedError(run_id, type(cause).__name__, str(cause))

    def _rpc_error(self, exc: RPCError, run_id: str) -> Exception:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return RunNotFoundError(run_id)
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return StoreUnavailableError(
                f"Temporal at {self.settings.address} did not answer for run {run_id!r}: {exc}"
            )
        return RunError(f"Temporal refused the request for run {run_id!r}: {exc}")
