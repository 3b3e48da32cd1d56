"""Runtime: what an application embeds. A client for runs, and (by default) a worker that runs them.

    async with cd.Runtime("sqlite:///runs.db") as rt:
        handle = await rt.start(pipeline, "topic", run_id="r-1")
        print(await handle.result(timeout=60))

While open, a worker task claims runnable runs from the store (new, timer due, signal arrived, lease
expired) up to ``concurrency`` at a time and drives each in its own task (``_activation``).
A second task renews the leases of the runs in progress every ``lease_ttl / 3`` seconds; a lease
that could not be renewed (another worker took the run over) cancels that activation, and the
store's fencing rejects anything it still tries to write. With ``worker=False`` the Runtime is a
client only: it starts, signals, cancels and inspects runs that other processes execute.

A worker registers itself in the store's worker registry (id, host, pid, the workflows it serves)
before it claims anything, heartbeats from its own task every ``lease_ttl / 3`` seconds and
deregisters when it closes; a worker that dies drops out once its registration expires
(``lease_ttl`` after its last heartbeat). ``workers()`` lists the live ones, ``start`` by name
refuses a workflow that neither this process registers nor any live worker serves (unless
``allow_unknown=True``), and ``describe`` notes when a runnable run has no live worker to run it.

Runs that crash their activation (an internal error, a store failure past its deadline, a worker
process killed mid-run) are retried with backoff; after ``max_crashes`` consecutive crashes
without progress the run is quarantined with its last error, and ``resume`` releases it after a fix.
Everything works under asyncio and trio (anyio).

Each event (worker started, idle, stopped; run started, claimed, parked, handed back, finished,
crashed, quarantined, lease lost; and through the activation each step attempt and signal) is
reported once, where it happens, to the Runtime's instruments (``_core.hooks``): the ones given
as ``instruments=[...]``, and first ``WorkerLog`` (``_log``), which logs each run event.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import getpass
import json
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import anyio
import anyio.abc

from .._core import codec
from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.faults import CLAIMED, RENEW, SimulatedCrash
from .._core.hooks import (
    ActivationEnded,
    ActivationStarted,
    Hooks,
    Instrument,
    RunClaimed,
    RunCrashed,
    RunFinished,
    RunHandedBack,
    RunLeaseLost,
    RunParked,
    RunQuarantined,
    RunStarted,
    WorkerIdle,
    WorkerStarted,
    WorkerStopped,
    installed_now,
)
from ..errors import (
    ConfigurationError,
    ConflictError,
    CorruptJournalError,
    LeaseLost,
    NonDeterminismError,
    ResultTimeoutError,
    RunAlreadyExistsError,
    RunCancelledError,
    RunError,
    RunFailedError,
    RunNotFoundError,
    RunQuarantinedError,
    StoreError,
    UnknownWorkflowError,
)
from ..journal._records import (
    RETRYABLE,
    TERMINAL,
    JournalEntry,
    RunRecord,
    RunStatus,
    WorkerRecord,
    check_run_id,
    retry_refused,
    verify_journal,
)
from ..store._protocol import Store, StoreWrapper
from ..store._registry import default_store_url, engine_class, open_store
from ..workflow import _registry
from ..workflow._effects import StepInfo
from ._activation import Activation, ActivationEnd, Limits, store_call
from ._client import RunHandle, RunInfo, WorkerInfo
from ._log import WorkerLog
from ._replayer import ReplayReport, replay

__all__ = ["Runtime"]

log = logging.getLogger("coro_durable.runtime")


def _retry_plan(run: RunRecord, journal: dict[int, JournalEntry]) -> tuple[list[int], int | None]:
    """``(reopen, after)`` for retrying ``run``: the seqs to delete, and the seq after which every
    entry goes too (None: none). The scheduler recorded them in the run's error when the run
    failed on journaled errors; a cancelled run without them (cancelled by an older version)
    reopens its RunCancelledError entries."""
    info = json.loads(run.error) if run.error else {}
    if "reopen" in info:
        after = info.get("after")
        return [int(seq) for seq in info["reopen"]], None if after is None else int(after)
    if run.status != RunStatus.CANCELLED:
        return [], None
    cancelled = [
        seq
        for seq, entry in journal.items()
        if seq >= 0 and (entry.error_info or {}).get("type") == "RunCancelledError"
    ]
    return cancelled, max(cancelled, default=None)


def _default_retrier() -> str:
    """Who retried a run when ``by`` is not given: ``user@host``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment or the passwd database
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def _store_clock(store: Store, clock: Clock | None) -> Clock:
    """The clock a Runtime on ``store`` keeps time by: ``clock`` if given (the store then keeps
    time by it too, which only stores that use the process's clock can), else the store's."""
    base = store
    while isinstance(base, StoreWrapper):
        base = base.inner
    kept = getattr(base, "clock", None)
    if clock is None:
        return kept if isinstance(kept, Clock) else SYSTEM_CLOCK
    if not isinstance(clock, Clock):
        raise ConfigurationError(
            f"clock must be a coro_durable Clock (e.g. coro_durable.testing.FakeClock), got "
            f"{clock!r}"
        )
    if not isinstance(kept, Clock):
        raise ConfigurationError(
            f"{type(base).__name__} keeps time by its server's clock, so a Runtime on it cannot "
            f"take clock={clock!r}; control time with a memory:// or sqlite:// store"
        )
    if kept is not clock and kept is not SYSTEM_CLOCK:
        raise ConfigurationError(
            f"{type(base).__name__} keeps time by {kept!r} already; give every Runtime on one "
            "store the same clock"
        )
    base.clock = clock  # type: ignore[attr-defined]
    return clock


class Runtime:
    """Embed durable execution: ``async with Runtime(url_or_store) as rt: ...``.

    Parameters:
        store: a store URL (``memory://``, ``sqlite:///path``, ``postgresql://...``,
            ``redis://...``), a Store object, or None for ``$CORO_DURABLE_STORE`` or the default
            SQLite file ``.coro_durable/runs.db``.
        lease_ttl: seconds a worker owns a run without renewing; a crashed worker's runs are
            taken over this long after it stopped renewing.
        concurrency: how many runs this worker drives at once, at most. While this worker loses
            leases it is still alive to renew (an overloaded process or store), it claims fewer
            (halving on each loss, growing back a quarter per healthy renewal) so the runs it
            holds make progress instead of passing from worker to worker.
        worker: False for a client-only Runtime that executes nothing.
        workflows: workflow functions to register (``@cd.workflow`` registers them already).
        poll_interval: seconds between store polls when nothing signals new work.
        max_crashes: consecutive crashes without progress before a run is quarantined.
        max_payload_bytes: largest encoded input, result or signal payload accepted.
        inline_wait: timers and retry backoffs up to this many seconds are waited in-process;
            longer ones park the run (it then holds no task, lease or connection).
        store_deadline: how long store failures are retried before the run counts a crash.
        shutdown_grace: on leaving ``async with`` (or after ``serve()`` got SIGTERM), seconds the
            steps in flight get to finish and be journaled before their runs are handed back;
            0 hands them back at once (the steps then run again elsewhere).
        clock: the time timers, signal timeouts, retry backoff, ``cd.now()`` and journal
            timestamps are measured in (``coro_durable.testing.FakeClock`` in tests); the store
            keeps time by it too, so only stores on the process's clock (memory, SQLite) take
            one. Default: the store's clock, the system clock.
        instruments: :class:`~coro_durable.Instrument` objects this Runtime calls at each event
            of its worker, runs and step attempts, in this order (after its own ``WorkerLog``,
            which logs each event of a run once, and after any that
            ``coro_durable.testing.inject`` installed for the block creating the Runtime).
    """

    def __new__(cls, store: str | Store | None = None, **options: Any) -> Runtime:
        """``Runtime("temporal://...")`` (or restate://, inngest://) returns that engine's runtime,
        which offers the same methods; any other URL or Store gives an embedded Runtime."""
        if store is None:
            store = default_store_url()
        scheme = urlsplit(store).scheme.lower() if isinstance(store, str) else ""
        if isinstance(store, str) and scheme not in ("", "memory", "sqlite"):
            plugin = engine_class(store)
            if plugin is not None:
                engine: Runtime = plugin(store, **options)
                return engine
        return super().__new__(cls)

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        lease_ttl: float = 15.0,
        concurrency: int = 100,
        worker: bool = True,
        workflows: Iterable[Callable[..., Coroutine[Any, Any, Any]]] = (),
        poll_interval: float = 0.25,
        max_crashes: int = 5,
        max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES,
        inline_wait: float = 1.0,
        store_deadline: float = 60.0,
        worker_id: str | None = None,
        shutdown_grace: float = 30.0,
        clock: Clock | None = None,
        instruments: Iterable[Instrument] = (),
    ) -> None:
        if not (lease_ttl > 0 and math.isfinite(lease_ttl)):
            raise ConfigurationError(
                f"lease_ttl must be a positive number of seconds, got {lease_ttl}"
            )
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if max_crashes < 1:
            raise ConfigurationError(f"max_crashes must be >= 1, got {max_crashes}")
        for what, value in (
            ("max_payload_bytes", max_payload_bytes),
            ("inline_wait", inline_wait),
            ("poll_interval", poll_interval),
            ("store_deadline", store_deadline),
        ):
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ConfigurationError(f"{what} must be a positive number, got {value!r}")
        if not (shutdown_grace >= 0 and math.isfinite(shutdown_grace)):
            raise ConfigurationError(
                f"shutdown_grace must be a number of seconds >= 0, got {shutdown_grace!r}"
            )
        if isinstance(store, str) or store is None:
            self.store: Store = open_store(store or default_store_url())
        else:
            self.store = store
        self.clock = _store_clock(self.store, clock)
        self.lease_ttl = lease_ttl
        self.concurrency = concurrency
        self.worker = worker
        self.poll_interval = poll_interval
        self.max_crashes = max_crashes
        self.shutdown_grace = shutdown_grace
        self.limits = Limits(max_payload_bytes, inline_wait, store_deadline, self.clock)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        for fn in workflows:
            _registry.register_function(fn)
        self._hooks = Hooks([WorkerLog(), *installed_now(), *instruments])
        self._changed = anyio.Event()
        self._run_changed: dict[str, anyio.Event] = {}  # run_id -> event its result() waits on
        self._active: dict[str, int] = {}  # run_id -> epoch of activations in progress
        self._claim_limit = concurrency  # lowered while leases are lost (see _lease_trouble)
        self._activations: dict[str, tuple[Activation | None, anyio.CancelScope]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._open = False
        self._crashed: SimulatedCrash | None = None  # set when fault injection "killed" us
        self._loop_scopes: list[anyio.CancelScope] = []  # the worker's own loops
        self._claim_scope: anyio.CancelScope | None = None  # the claim loop (stops on shutdown)
        self._draining = False
        self._ended = anyio.Event()  # set (and replaced) whenever an activation ends
        self._handed_back = 0  # runs handed back at their next effect by a graceful shutdown
        self._progress_writes: set[str] = set()  # runs whose progress entry is being written
        self._ends = 0  # activations ended so far (an idle worker saw none end during its claim)
        self._idle = False  # WorkerIdle was emitted and nothing was claimed since

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.store.open()
        if self.worker:
            await self._register()  # before anything is claimed
        self._changed = anyio.Event()
        unsubscribe_store = self.store.subscribe(self._on_store_change)
        unsubscribe_clock = self.clock.on_jump(self._on_store_change)  # timers may be due now

        def unsubscribe() -> None:
            unsubscribe_store()
            unsubscribe_clock()

        self._unsubscribe = unsubscribe
        self._open = True
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        watch = getattr(self.store, "watch", None)
        if watch is not None:  # stores with server-side notifications (LISTEN, pub/sub)
            self._tg.start_soon(watch)
        if self.worker:
            self._tg.start_soon(self._worker_loop)
            self._tg.start_soon(self._renew_loop)
            self._tg.start_soon(self._heartbeat_loop)
            if self._hooks.worker_started:
                started = WorkerStarted(
                    worker_id=self.worker_id,
                    workflows=tuple(sorted(_registry.registered())),
                    concurrency=self.concurrency,
                    lease_ttl=self.lease_ttl,
                )
                self._hooks.emit(self._hooks.worker_started, started)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Shut down: stop claiming, let steps in flight finish and journal their results (for
        up to ``shutdown_grace`` seconds), hand the runs back, close the store.

        An exception raised in the ``async with`` block comes out as itself (never wrapped in
        an ExceptionGroup); a group comes out only if the runtime's own tasks failed."""
        self._open = False
        try:
            if self._tg is not None:
                if self._crashed is None:
                    with anyio.CancelScope(shield=True):
                        await self._shutdown(
                            "the `async with` block raised " + type(exc).__name__
                            if exc is not None
                            else "the `async with` block ended"
                        )
                self._tg.cancel_scope.cancel()
                try:
                    await self._tg.__aexit__(None, None, None)
                finally:
                    self._tg = None
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            await self._deregister()
            if self.worker and self._hooks.worker_stopped:
                stopped = WorkerStopped(
                    worker_id=self.worker_id,
                    handed_back=self._handed_back,
                    crashed=self._crashed is not None,
                )
                self._hooks.emit(self._hooks.worker_stopped, stopped)
            with anyio.CancelScope(shield=True):
                await self.store.close()

    async def _shutdown(self, why: str) -> None:
        """Graceful shutdown of the worker: see ``__aexit__``."""
        self._draining = True
        if self._claim_scope is not None:
            self._claim_scope.cancel()
        if not self._activations:
            return
        running = len(self._activations)
        steps = sum(len(a.executing()) for a, _ in self._activations.values() if a is not None)
        log.info(
            "worker %s: shutting down (%s): claiming nothing more; %d run(s) in progress, %d "
            "step(s) in flight get up to %gs to finish and be journaled",
            self.worker_id,
            why,
            running,
            steps,
            self.shutdown_grace,
        )
        for activation, _ in list(self._activations.values()):
            if activation is not None:
                activation.drain()
        with anyio.move_on_after(self.shutdown_grace):
            while self._activations:
                ended = self._ended
                await ended.wait()
        abandoned = self.abandon() if self._activations else []
        log.info(
            "worker %s: shut down (%s): handed back %d run(s) with every finished step journaled%s",
            self.worker_id,
            why,
            self._handed_back,
            f"; abandoned {len(abandoned)} step(s) still running after the {self.shutdown_grace:g}s "
            "grace (they run again elsewhere, under the same idempotency key)"
            if abandoned
            else "",
        )

    def abandon(self) -> list[StepInfo]:
        """Stop every activation now, without waiting for the steps in flight (their results are
        dropped; another worker runs them again under the same idempotency key) and hand the runs
        back. Cuts a graceful shutdown short (the CLI worker does this on a second SIGINT).
        Returns the step attempts that were abandoned."""
        abandoned: list[StepInfo] = []
        for activation, scope in list(self._activations.values()):
            if activation is not None:
                abandoned.extend(activation.executing())
            scope.cancel()
        if abandoned:
            log.warning(
                "worker %s: abandoning %d step(s) in flight: %s",
                self.worker_id,
                len(abandoned),
                ", ".join(
                    f"run {i.run_id} seq {i.seq} ({i.name}, attempt {i.attempt})" for i in abandoned
                ),
            )
        return abandoned

    async def serve(
        self, signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM)
    ) -> str:
        """Run the worker until one of ``signals`` arrives; return the signal's name.

        Leaving the ``async with`` block afterwards shuts down gracefully (``shutdown_grace``):

            async with cd.Runtime(url) as rt:
                await rt.serve()      # SIGTERM from a deploy: finish in-flight steps, hand back
        """
        self._check_open()
        with anyio.open_signal_receiver(*signals) as received:
            async for signum in received:
                return signal.Signals(signum).name
        return ""  # pragma: no cover - the receiver never ends on its own

    @property
    def active_runs(self) -> int:
        """How many runs this worker is driving right now."""
        return len(self._active)

    def _on_store_change(self) -> None:
        """Something in the store changed: wake the claim loop, and every ``result()`` waiting
        on a run this worker is not driving (another process may have moved it). Waiters on
        runs driven here are woken by ``_wake_run`` when their activation ends, so one busy
        worker does not make every waiter re-read its run on every write."""
        event, self._changed = self._changed, anyio.Event()
        waiting = [run_id for run_id in self._run_changed if run_id not in self._active]
        try:
            event.set()
            for run_id in waiting:
                self._run_changed.pop(run_id).set()
        except RuntimeError:  # the store is shared with a Runtime on a loop that has ended
            pass

    def _wake_run(self, run_id: str) -> None:
        """Wake the ``result()`` calls waiting on ``run_id`` (they re-read the run)."""
        event = self._run_changed.pop(run_id, None)
        if event is not None:
            event.set()

    def _run_event(self, run_id: str) -> anyio.Event:
        event = self._run_changed.get(run_id)
        if event is None:
            event = self._run_changed[run_id] = anyio.Event()
        return event

    @staticmethod
    async def _wait(event: anyio.Event, timeout: float) -> None:
        """Wait for ``event`` (taken *before* looking at the store, so a change that lands
        while we look is not missed) or ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            await event.wait()

    def _check_open(self) -> None:
        if not self._open:
            raise ConfigurationError(
                "this Runtime is not open; use it as `async with cd.Runtime(...) as rt:`"
            )

    # -- client operations ------------------------------------------------------------------------

    async def start(
        self,
        workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
        *args: Any,
        run_id: str | None = None,
        allow_unknown: bool = False,
        **kwargs: Any,
    ) -> RunHandle:
        """Start a run of ``workflow(*args, **kwargs)``; idempotent on ``run_id``.

        Starting an existing run_id with the same workflow and inputs returns its handle (with
        ``created=False``); with another workflow or other inputs it raises RunAlreadyExistsError.
        ``run_id=None`` makes a fresh id; a given one must be a non-empty str of at most 255
        characters without control characters (else ConfigurationError, nothing created).

        A workflow given by name must be registered in this process or served by a live worker
        (see ``workers()``), else UnknownWorkflowError is raised and nothing is created;
        ``allow_unknown=True`` starts it anyway (to start runs before deploying their worker).
        """
        self._check_open()
        run_id = None if run_id is None else check_run_id(run_id)
        if isinstance(workflow, str):
            name = workflow
            if not name:
                raise ConfigurationError(
                    "the workflow name is empty; pass the name the workflow is registered under "
                    "(its function name, or @cd.workflow(name=...)) or the function itself"
                )
            if not allow_unknown and name not in _registry.registered():
                existing = await self._call(self.store.get_run, run_id) if run_id else None
                if existing is None:  # starting an existing run again stays idempotent
                    await self._check_served(name)
        else:
            name = _registry.register_function(workflow)
        text = codec.encode(
            {"args": list(args), "kwargs": kwargs},
            where=f"inputs of workflow {name}",
            limit=self.limits.max_payload_bytes,
        )
        run_id = uuid.uuid4().hex if run_id is None else run_id
        record, created = await self._call(self.store.create_run, RunRecord(run_id, name, text))
        if not created and (record.workflow != name or record.input != text):
            raise RunAlreadyExistsError(
                run_id,
                f"run {run_id!r} already exists as {record.workflow}({record.input}); it cannot be "
                f"started again as {name}({text}). Use another run_id, or the same inputs to get "
                "the existing run",
            )
        if self._hooks.run_started:
            event = RunStarted(run_id=run_id, workflow=name, created=created)
            self._hooks.emit(self._hooks.run_started, event)
        return RunHandle(self, run_id, created)

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> bool:
        """Send signal ``name`` with ``payload`` to a run. Returns False if ``signal_id`` was
        already delivered (pass a signal_id to make retries of this call safe)."""
        self._check_open()
        text = codec.encode(
            payload, where=f"payload of signal {name!r}", limit=self.limits.max_payload_bytes
        )
        run = await self._get(run_id)
        if run.status in TERMINAL:
            raise RunError(
                f"run {run_id!r} is already {run.status}; nothing would ever read signal {name!r}"
            )
        sid = signal_id or uuid.uuid4().hex
        delivered: bool = await self._call(self.store.deliver_signal, run_id, name, text, sid)
        return delivered

    async def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result.

        Raises RunFailedError, RunCancelledError or RunQuarantinedError for runs that did not
        complete, and ResultTimeoutError when ``timeout`` seconds pass first.
        """
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.01
        while True:
            changed = self._run_event(run_id)  # taken before reading: no change is missed
            run = await self._get(run_id)
            if run.status == RunStatus.COMPLETED:
                return codec.decode(run.result) if run.result is not None else None
            if run.status == RunStatus.FAILED:
                err = json.loads(run.error or "{}")
                raise RunFailedError(run_id, err.get("type", "Error"), err.get("message", ""))
            if run.status == RunStatus.CANCELLED:
                raise RunCancelledError(run_id)
            if run.status == RunStatus.QUARANTINED:
                raise RunQuarantinedError(run_id, run.last_error or "unknown")
            wait = min(interval, self.poll_interval)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ResultTimeoutError(
                        run_id,
                        f"run {run_id!r} is still {run.status} after {timeout}s (at step "
                        f"{run.steps}, waiting on {run.waiting_on or 'nothing'}); wait longer or "
                        "check that a worker is running",
                    )
                wait = min(wait, left)
            await self._wait(changed, wait)
            interval = min(interval * 2, self.poll_interval)

    async def describe(self, run_id: str) -> RunInfo:
        """Status, step, what it waits on, inputs and error of a run; for a runnable run that no
        live worker serves, a ``note`` saying so."""
        self._check_open()
        run = await self._get(run_id)
        journal: list[JournalEntry] = []
        if run.status == RunStatus.RUNNING:  # name the steps executing now
            journal = await self._call(self.store.load_journal, run_id)
        return RunInfo.from_record(run, journal, note=await self._unserved_note(run))

    async def workers(self) -> list[WorkerInfo]:
        """The live workers on this store and the workflows each serves, oldest first."""
        self._check_open()
        records: list[WorkerRecord] = await self._call(self.store.list_workers)
        return [WorkerInfo.from_record(w) for w in records]

    async def history(self, run_id: str) -> list[JournalEntry]:
        """The run's journal, oldest first: the audit trail of every effect and its outcome."""
        self._check_open()
        await self._get(run_id)
        entries: list[JournalEntry] = await self._call(self.store.load_journal, run_id)
        return entries

    async def cancel(self, run_id: str) -> None:
        """Cancel a run: RunCancelledError is raised at its pending await (the workflow may
        catch it and await cleanup effects, which run normally); a run that is not executing is
        cancelled on the spot. A step in flight is interrupted: an async one is cancelled, a sync
        one is abandoned (its thread runs on; its ``cd.heartbeat()`` raises RunCancelledError)
        and its result is not journaled. A worker in another process learns of the cancel at
        its next lease renewal, within about half a second."""
        self._check_open()
        await self._call(self.store.request_cancel, run_id)
        self._deliver_cancel(run_id)  # driven here: interrupt its pending await now
        self._wake_run(run_id)  # a run that was not executing is cancelled on the spot

    async def resume(self, run_id: str) -> RunInfo:
        """Release a quarantined run (after fixing what crashed it) so workers pick it up again."""
        self._check_open()
        run = await self._get(run_id)
        if run.status != RunStatus.QUARANTINED:
            raise RunError(f"run {run_id!r} is {run.status}, not quarantined; nothing to resume")
        return RunInfo.from_record(await self._call(self.store.resume, run_id))

    async def retry(self, run_id: str, *, by: str | None = None) -> RunInfo:
        """Continue a failed or cancelled run from its failure; returns the run, now pending.

        The entries of the failure are deleted and run again: the step that failed gets a fresh
        set of attempts under the same idempotency key (its seq is the same), a gather re-runs
        only its failed sub-effects, a cancelled run resumes the await that was cancelled.
        Every entry before the failure is kept and replayed, never executed again; entries the
        workflow journaled after it (cleanup in ``except``/``finally``) are deleted too, since
        the retried path may not run them. A run that failed in workflow code alone (no
        journaled error caused it) or that was cancelled before it ever ran only becomes
        runnable again: after a code fix, replay takes it on. The journal keeps an audit note
        of the retry (seq -1, -2, ...: kind "retry"; who, when, the previous status and error,
        and every entry deleted); ``by`` names who retried it (default: ``user@host``).

        Raises RunError for a run that is not failed or cancelled, RunNotFoundError for an
        unknown one. Returns the RunInfo (``result(run_id)`` then waits for the new outcome)."""
        self._check_open()
        run = await self._get(run_id)
        if run.status not in RETRYABLE:
            raise retry_refused(run_id, run.status)
        entries: list[JournalEntry] = await self._call(self.store.load_journal, run_id)
        journal = verify_journal(run_id, entries)
        reopen, after = _retry_plan(run, journal)
        doomed = set(reopen)
        superseded = [
            dataclasses.asdict(e)
            for e in entries
            if e.seq >= 0 and (e.seq in doomed or (after is not None and e.seq > after))
        ]
        seq = min((s for s in journal if s < 0), default=0) - 1
        now = self.clock.time()
        audit = {
            "by": by if by is not None else _default_retrier(),
            "at": _dt.datetime.fromtimestamp(now, _dt.UTC).isoformat(timespec="milliseconds"),
            "previous_status": run.status.value,
            "error": json.loads(run.error) if run.error else None,
            "superseded": superseded,
        }
        note = JournalEntry(
            seq=seq,
            kind="retry",
            name="",
            digest="",
            status="ok",
            args=codec.encode(audit, where=f"retry note of run {run_id!r}"),
            started_at=now,
            finished_at=now,
        ).sealed()
        record: RunRecord = await self._call(self.store.retry_run, run_id, reopen, after, note)
        log.info(
            "run %s retried by %s: was %s, reopened seqs %s%s",
            run_id,
            audit["by"],
            run.status.value,
            sorted(reopen) or "none",
            f" and everything after seq {after}" if after is not None else "",
        )
        self._wake_run(run_id)
        return RunInfo.from_record(record)

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs, newest first, filtered by status and workflow name."""
        self._check_open()
        try:
            wanted = RunStatus(status) if status is not None else None
        except ValueError:
            raise ConfigurationError(
                f"unknown run status {status!r}; use one of {', '.join(s.value for s in RunStatus)}"
            ) from None
        runs = await self.store.list_runs(
            status=wanted,
            workflow=workflow,
            limit=limit,
            offset=offset,
        )
        return [RunInfo.from_record(r) for r in runs]

    async def replay(self, run_id: str) -> ReplayReport:
        """Re-execute the run's workflow against its journal with no side effects and report
        whether the code still matches (or the first divergence)."""
        self._check_open()
        run = await self._get(run_id)
        entries = await self._call(self.store.load_journal, run_id)
        journal = verify_journal(run_id, entries)
        return await replay(self.store, run, journal, _registry.lookup(run.workflow))

    async def _get(self, run_id: str) -> RunRecord:
        run: RunRecord | None = await self._call(self.store.get_run, run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    async def _call(self, op: Callable[..., Any], *args: Any) -> Any:
        return await store_call(self.limits.store_deadline, op, *args)

    # -- the worker registry ---------------------------------------------------------------------------

    async def _check_served(self, name: str) -> None:
        """Raise UnknownWorkflowError unless a live worker serves workflow ``name``."""
        workers: list[WorkerRecord] = await self._call(self.store.list_workers)
        if not any(name in w.workflows for w in workers):
            served = {w.worker_id: w.workflows for w in workers}
            raise UnknownWorkflowError(name, _registry.registered(), served)

    async def _unserved_note(self, run: RunRecord) -> str | None:
        """For a run a worker could claim now, a note when no live worker serves its workflow."""
        now = self.clock.time()
        runnable = (
            run.status == RunStatus.PENDING
            or (run.status == RunStatus.WAITING and run.wake_at is not None and run.wake_at <= now)
            or (run.status == RunStatus.RUNNING and (run.lease_expires or 0.0) <= time.time())
        )
        if not runnable:
            return None
        workers: list[WorkerRecord] = await self._call(self.store.list_workers)
        if any(run.workflow in w.workflows for w in workers):
            return None
        live = f"{len(workers)} live worker(s) serve other workflows" if workers else "none is live"
        return (
            f"no live worker serves workflow {run.workflow!r} ({live}); the run waits until one "
            "does: start a worker that registers it (`coro-durable worker --app yourmodule`)"
        )

    def _worker_record(self) -> WorkerRecord:
        names = tuple(sorted(_registry.registered()))
        return WorkerRecord(self.worker_id, socket.gethostname(), os.getpid(), names)

    async def _register(self) -> None:
        """Enter the store's worker registry; on failure the store is closed again."""
        try:
            await self._call(self.store.heartbeat_worker, self._worker_record(), self.lease_ttl)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.close()
            raise

    async def _heartbeat_loop(self) -> None:
        """Refresh the registration every ``lease_ttl / 3`` (with the workflows registered by
        then); a failing heartbeat is logged once and retried at the next beat."""
        with anyio.CancelScope() as scope:
            self._loop_scopes.append(scope)
            failing = False
            while True:
                await anyio.sleep(self.lease_ttl / 3)
                try:
                    await self.store.heartbeat_worker(self._worker_record(), self.lease_ttl)
                except Exception as exc:
                    if not failing:
                        log.warning(
                            "worker %s: heartbeat to the worker registry failed (%s: %s); "
                            "retrying every %gs, clients may not see this worker meanwhile",
                            self.worker_id,
                            type(exc).__name__,
                            exc,
                            self.lease_ttl / 3,
                        )
                    failing = True
                    continue
                if failing:
                    log.info("worker %s: heartbeats reach the registry again", self.worker_id)
                failing = False

    async def _deregister(self) -> None:
        """Leave the registry on close. A worker "killed" by fault injection stays until its
        registration expires, as a killed process would."""
        if not self.worker or self._crashed is not None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self.store.remove_worker(self.worker_id)
            except Exception as exc:
                log.warning(
                    "worker %s: could not leave the worker registry (%s: %s); it drops out "
                    "when its registration expires",
                    self.worker_id,
                    type(exc).__name__,
                    exc,
                )

    # -- the worker -----------------------------------------------------------------------------------

    async def _worker_loop(self) -> None:
        with anyio.CancelScope() as scope:
            self._loop_scopes.append(scope)
            self._claim_scope = scope
            if not self._draining:
                await self._claim_forever()

    async def _claim_forever(self) -> None:
        assert self._tg is not None
        claim_failure: str | None = None
        while True:
            free = self._claim_limit - len(self._active)
            changed = self._changed
            ends = self._ends
            claimed: list[RunRecord] = []
            if free > 0:
                try:
                    with anyio.CancelScope(shield=True):  # a claim that lands is activated
                        claimed = await self._call(
                            functools.partial(
                                self.store.claim,
                                self.worker_id,
                                limit=free,
                                lease_ttl=self.lease_ttl,
                                workflows=_registry.registered(),
                                max_crashes=self.max_crashes,
                            )
                        )
                except Exception as exc:
                    # Once per distinct failure (a broken store fails every poll), then back off.
                    failure = f"{type(exc).__name__}: {exc}"
                    if failure != claim_failure:
                        log.error(
                            "worker %s: claiming runs failed (%s); retrying every %gs",
                            self.worker_id,
                            failure,
                            5.0,
                            exc_info=not isinstance(exc, StoreError),
                        )
                    claim_failure = failure
                    await anyio.sleep(5.0)
                    continue
                if claim_failure is not None:
                    log.info("worker %s: claiming runs works again", self.worker_id)
                    claim_failure = None
                for run in claimed:
                    if run.run_id in self._active:
                        self._supersede(run)
                    self._active[run.run_id] = run.epoch
                    self._tg.start_soon(self._activate, run)
                if claimed:
                    self._idle = False
                elif not self._active and ends == self._ends and not self._idle:
                    self._idle = True  # nothing claimed, nothing running, nothing ended meanwhile
                    if self._hooks.worker_idle:
                        idle = WorkerIdle(worker_id=self.worker_id)
                        self._hooks.emit(self._hooks.worker_idle, idle)
            if len(claimed) < free or free <= 0:
                await self._wait(changed, self.poll_interval)

    def _supersede(self, run: RunRecord) -> None:
        """This worker claimed a run it was still driving: its lease expired before a renewal
        reached the store (a blocked event loop, an overloaded store). The older activation is
        fenced already (its writes are refused); stop it now rather than at its next write."""
        if self._hooks.run_lease_lost:
            old = self._active[run.run_id]
            event = RunLeaseLost(
                **self._run_fields(run.run_id, old),
                detected="reclaim",
                error=None,
                reclaimed_epoch=run.epoch,
            )
            self._hooks.emit(self._hooks.run_lease_lost, event)
        _, scope = self._activations.get(run.run_id, (None, None))
        if scope is not None:
            scope.cancel()
        self._lease_trouble("a lease expired before its renewal")

    async def _renew_loop(self) -> None:
        with anyio.CancelScope() as scope:
            self._loop_scopes.append(scope)
            await self._renew_forever()

    async def _renew_forever(self) -> None:
        """Renew leases every ``lease_ttl / 3`` seconds, and at least twice a second: the answer
        says which runs were cancelled, so a cancel from another process reaches the run's
        step within about half a second; then supervise the steps in flight (heartbeat timeouts,
        progress entries for ``describe``)."""
        while True:
            await anyio.sleep(min(self.lease_ttl / 3, 0.5))
            if not self._active:
                continue
            leases = dict(self._active)
            started = time.monotonic()
            try:
                self._hooks.fault(RENEW, self.worker_id)
                held = await self.store.renew(self.worker_id, leases, self.lease_ttl)
            except Exception:
                log.exception("worker %s: renewing leases failed; will retry", self.worker_id)
                continue
            lost = 0
            for run_id, epoch in leases.items():
                if self._active.get(run_id) != epoch:
                    continue  # finished meanwhile
                activation, scope = self._activations.get(run_id, (None, None))
                if activation is not None and activation.releasing:
                    continue  # its park/finish is committing: not held any more, but not lost
                if run_id not in held:
                    del self._active[run_id]  # not ours any more; say so once
                    lost += 1
                    if self._hooks.run_lease_lost:
                        event = RunLeaseLost(
                            **self._run_fields(run_id, epoch), detected="renewal", error=None
                        )
                        self._hooks.emit(self._hooks.run_lease_lost, event)
                    if scope is not None:
                        scope.cancel()
                elif held[run_id] and activation is not None:
                    self._deliver_cancel(run_id)
            await self._supervise()
            if lost or time.monotonic() - started > self.lease_ttl / 2:
                self._lease_trouble(f"{lost} leases lost at renewal" if lost else "slow renewal")
            elif self._claim_limit < self.concurrency:
                self._claim_limit = min(self.concurrency, self._claim_limit * 5 // 4 + 1)
                if self._claim_limit == self.concurrency:
                    log.info("worker %s: renewals keep up again", self.worker_id)

    def _deliver_cancel(self, run_id: str) -> None:
        """Tell the activation driving ``run_id`` here (if any) that the run was cancelled."""
        activation, scope = self._activations.get(run_id, (None, None))
        if activation is not None and scope is not None and activation.request_cancel():
            scope.cancel()  # the step it awaits has no scope of its own: restart (see _activate)

    async def _supervise(self) -> None:
        """Journal the progress of the steps in flight (pending entries: attempt, worker, last
        heartbeat and its details), so ``describe`` from any process names them and a crash
        keeps the heartbeat details for the next attempt; time out silent heartbeaters. The
        writes go out in the background, one at a time per run, so a slow store never delays
        the lease renewals."""
        if self._tg is None or self._crashed is not None:
            return
        for run_id, (activation, _) in list(self._activations.items()):
            if activation is None or activation.releasing or run_id in self._progress_writes:
                continue
            entries = activation.supervise()
            if entries:
                self._progress_writes.add(run_id)
                self._tg.start_soon(self._write_progress, run_id, activation.epoch, entries)

    async def _write_progress(self, run_id: str, epoch: int, entries: list[JournalEntry]) -> None:
        try:
            if self._crashed is None:  # a "killed" worker writes nothing more
                await self.store.append(run_id, epoch, entries)
        except (LeaseLost, ConflictError):
            pass  # the run moved on (lost, or the step's result landed first): nothing to show
        except Exception as exc:
            log.warning(
                "worker %s: could not journal the progress of run %s (%s); will retry",
                self.worker_id,
                run_id,
                exc,
            )
        finally:
            self._progress_writes.discard(run_id)

    def _lease_trouble(self, why: str) -> None:
        """This live worker lost a lease (or renewed too slowly to be sure of keeping them): it
        holds more runs than it (or its store) can keep up with. Claim fewer until renewals
        keep up; otherwise overloaded workers take runs from each other and none progresses."""
        limit = max(1, min(self._claim_limit, len(self._active) + 1) // 2)
        if limit < self._claim_limit:
            log.warning(
                "worker %s: %s; claiming at most %d runs at once (concurrency %d) until "
                "renewals keep up",
                self.worker_id,
                why,
                limit,
                self.concurrency,
            )
            self._claim_limit = limit

    def _run_fields(self, run_id: str, epoch: int) -> dict[str, Any]:
        """The fields every event of this worker about a run carries."""
        return {"worker_id": self.worker_id, "run_id": run_id, "epoch": epoch}

    async def _activate(self, run: RunRecord) -> None:
        run_id, epoch, hooks = run.run_id, run.epoch, self._hooks
        scope = anyio.CancelScope()
        self._activations[run_id] = (None, scope)
        restarts = 0
        try:
            if hooks.run_claimed:
                claimed = RunClaimed(
                    **self._run_fields(run_id, epoch), workflow=run.workflow, steps=run.steps
                )
                hooks.emit(hooks.run_claimed, claimed)
            while True:
                activation: Activation | None = None
                with scope:
                    hooks.fault(CLAIMED, run_id)
                    fn = _registry.lookup(run.workflow)
                    entries = await self._call(self.store.load_journal, run_id)
                    journal = verify_journal(run_id, entries)
                    activation = Activation(
                        self.store,
                        run,
                        journal,
                        fn,
                        self.limits,
                        worker_id=self.worker_id,
                        hooks=hooks,
                    )
                    if restarts:
                        activation.cancel_requested = True
                    if self._draining:
                        activation.drain()
                    self._activations[run_id] = (activation, scope)
                    end = await self._execute(activation, restart=restarts > 0)
                    self._ended_as(activation, end)
                still_ours = self._active.get(run_id) == epoch and self._crashed is None
                if not (scope.cancelled_caught and still_ours):
                    break
                if activation is not None and activation.restart_for_cancel:
                    # A cancel interrupted the step this activation was awaiting: run the
                    # workflow again from its journal, which delivers RunCancelledError there.
                    restarts += 1
                    scope = anyio.CancelScope()
                    self._activations[run_id] = (None, scope)
                    continue
                await self._hand_back(run_id, epoch)  # abandoned by abandon(): still ours
                break
        except LeaseLost as exc:
            if self._active.get(run_id) == epoch:  # else the renewal has reported it already
                if hooks.run_lease_lost:
                    lost = RunLeaseLost(
                        **self._run_fields(run_id, epoch), detected="write", error=str(exc)
                    )
                    hooks.emit(hooks.run_lease_lost, lost)
                self._lease_trouble("a lease was lost mid-run")
        except SimulatedCrash as exc:
            # Fault injection: this "process" dies here. Nothing more is written, no lease is
            # handed back; every other activation of this Runtime stops too.
            log.warning("worker %s: %s; the worker stops as if killed", self.worker_id, exc)
            self._crashed = exc
            for scope_ in [*self._loop_scopes, *(sc for _, sc in self._activations.values())]:
                scope_.cancel()
        except (NonDeterminismError, CorruptJournalError, UnknownWorkflowError) as exc:
            await self._record_crash(run_id, None, exc)
            self._quarantined(run_id, epoch, exc, None)
        except Exception as exc:
            crashed = await self._record_crash(run_id, epoch, exc)
            if crashed is not None and crashed.status == RunStatus.QUARANTINED:
                self._quarantined(run_id, epoch, exc, crashed.crash_count)
            elif hooks.run_crashed:
                event = RunCrashed(
                    **self._run_fields(run_id, epoch),
                    error=f"{type(exc).__name__}: {exc}",
                    crash_count=crashed.crash_count if crashed is not None else None,
                    max_crashes=self.max_crashes,
                    exception=exc,
                )
                hooks.emit(hooks.run_crashed, event)
        except anyio.get_cancelled_exc_class():
            if self._crashed is not None:
                raise  # a crashed process hands nothing back
            # Runtime shutting down: hand the run back so another worker resumes it at once.
            await self._hand_back(run_id, epoch)
            raise
        finally:
            # After a lost lease this worker may have claimed the run again while this stale
            # activation was still running: leave the newer activation's entries alone, or its
            # lease would never be renewed and it would lose the run in turn.
            if self._active.get(run_id) == epoch:
                del self._active[run_id]
            if self._activations.get(run_id, (None, None))[1] is scope:
                del self._activations[run_id]
            self._ends += 1
            ended, self._ended = self._ended, anyio.Event()
            ended.set()
            self._wake_run(run_id)
            self._on_store_change()

    async def _execute(self, activation: Activation, *, restart: bool) -> ActivationEnd:
        """Run ``activation`` between its ActivationStarted and ActivationEnded events."""
        hooks, fields = self._hooks, self._run_fields(activation.run_id, activation.epoch)
        if hooks.activation_started:
            event = ActivationStarted(
                **fields,
                workflow=activation.run.workflow,
                replaying=sum(1 for seq in activation.journal if seq >= 0),
                restart=restart,
            )
            hooks.emit(hooks.activation_started, event)
        end: ActivationEnd | None = None
        try:
            end = await activation.execute()
            return end
        finally:
            if hooks.activation_ended:
                how = end.how if end is not None else "interrupted"
                hooks.emit(hooks.activation_ended, ActivationEnded(**fields, how=how))

    def _ended_as(self, activation: Activation, end: ActivationEnd) -> None:
        """The run event for how an activation ended: parked, handed back or finished."""
        hooks, run_id, epoch = self._hooks, activation.run_id, activation.epoch
        if end.how == "parked" and activation.draining:
            self._handed_back += 1
            if hooks.run_handed_back:
                back = RunHandedBack(**self._run_fields(run_id, epoch), drained=True)
                hooks.emit(hooks.run_handed_back, back)
        elif end.how == "parked":
            if hooks.run_parked:
                parked = RunParked(
                    **self._run_fields(run_id, epoch),
                    waiting_on=end.waiting_on,
                    wake_at=end.wake_at,
                )
                hooks.emit(hooks.run_parked, parked)
        elif hooks.run_finished:
            finished = RunFinished(
                **self._run_fields(run_id, epoch), status=end.how, error=end.error
            )
            hooks.emit(hooks.run_finished, finished)

    def _quarantined(
        self, run_id: str, epoch: int, exc: Exception, crash_count: int | None
    ) -> None:
        if self._hooks.run_quarantined:
            event = RunQuarantined(
                **self._run_fields(run_id, epoch),
                error=f"{type(exc).__name__}: {exc}",
                crash_count=crash_count,
                exception=exc,
            )
            self._hooks.emit(self._hooks.run_quarantined, event)

    async def _hand_back(self, run_id: str, epoch: int) -> None:
        """Release a run this worker stops driving, due now, so another worker resumes it at once
        (its step in flight, if any, runs again there under the same idempotency key)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            try:
                await self.store.park(
                    run_id, epoch, self.clock.time(), f"a worker (handed back by {self.worker_id})"
                )
                self._handed_back += 1
                if self._hooks.run_handed_back:
                    back = RunHandedBack(**self._run_fields(run_id, epoch), drained=False)
                    self._hooks.emit(self._hooks.run_handed_back, back)
            except (Exception, LeaseLost) as exc:
                log.warning(
                    "worker %s: could not hand run %s back (%s); another worker takes it "
                    "over when its lease expires",
                    self.worker_id,
                    run_id,
                    exc,
                )

    async def _record_crash(
        self, run_id: str, epoch: int | None, exc: Exception
    ) -> RunRecord | None:
        """Record a crashed activation; return the run as the store left it (None if unknown)."""
        run = await self.store.get_run(run_id)
        crashes = (run.crash_count if run else 0) + 1
        retry_at = self.clock.time() + min(0.5 * 2 ** (crashes - 1), 60.0)
        try:
            return await self.store.record_crash(
                run_id, epoch, f"{type(exc).__name__}: {exc}", retry_at, self.max_crashes
            )
        except LeaseLost:
            pass
        except Exception:
            log.exception("worker %s: could not record the crash of run %s", self.worker_id, run_id)
        return None
