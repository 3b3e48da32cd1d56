"""Runtime: what an application embeds. A client for runs, and (by default) a worker that runs them.

    async with cd.Runtime("sqlite:///runs.db") as rt:
        handle = await rt.start(pipeline, "topic", run_id="r-1")
        print(await handle.result(timeout=60))

This module holds the client half: the operations (start, signal, result, describe, history,
cancel, resume, retry, list_runs, replay, workers) and the lifecycle that composes the pieces.
The worker half is ``_worker.Worker``: while the Runtime is open it claims runnable runs from the
store (new, timer due, signal arrived, lease expired) up to ``concurrency`` at a time and drives
each in its own task (``_activation``); it renews the leases of the runs in progress every
``lease_ttl / 3`` seconds; a lease that could not be renewed (another worker took the run over)
cancels that activation, and the store's fencing rejects anything it still tries to write. With
``worker=False`` the Runtime has no Worker: a client only, it starts, signals, cancels and
inspects runs that other processes execute.

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
import getpass
import json
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.abc

from .._core import codec
from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.faults import SimulatedCrash
from .._core.hooks import (
    Hooks,
    Instrument,
    RunStarted,
    installed_now,
)
from .._core.waits import WaitKind
from ..errors import (
    ConfigurationError,
    ResultTimeoutError,
    RunAlreadyExistsError,
    RunCancelledError,
    RunError,
    RunFailedError,
    RunNotFoundError,
    RunQuarantinedError,
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
    check_tags,
    retry_refused,
    verify_journal,
)
from ..store._protocol import Store, StoreWrapper
from ..store._registry import default_store_url, engine_class, open_store
from ..store._requests import RunQuery
from ..workflow import _registry
from ..workflow._effects import StepInfo
from ._activation import Limits, store_call
from ._client import RunHandle, RunInfo, WorkerInfo
from ._log import WorkerLog
from ._replayer import ReplayReport, replay
from ._worker import Notifier, Worker

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
        self._notify = Notifier()
        self._worker: Worker | None = None
        if worker:
            self._worker = Worker(
                self.store,
                worker_id=self.worker_id,
                lease_ttl=lease_ttl,
                concurrency=concurrency,
                poll_interval=poll_interval,
                max_crashes=max_crashes,
                shutdown_grace=shutdown_grace,
                limits=self.limits,
                hooks=self._hooks,
                notify=self._notify,
            )
        self._tg: anyio.abc.TaskGroup | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._open = False

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.store.open()
        if self._worker is not None:
            await self._worker.register()  # before anything is claimed (closes the store if not)
        self._notify.reset()
        unsubscribe_store = self.store.subscribe(self._notify.store_changed)
        unsubscribe_clock = self.clock.on_jump(self._notify.store_changed)  # timers may be due

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
        if self._worker is not None:
            self._worker.start(self._tg)
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
                if self._worker is not None and self._worker.crashed is None:
                    with anyio.CancelScope(shield=True):
                        await self._worker.shutdown(
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
            if self._worker is not None:
                await self._worker.deregister()
                self._worker.stopped()
            with anyio.CancelScope(shield=True):
                await self.store.close()

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

    def abandon(self) -> list[StepInfo]:
        """Stop every activation now, without waiting for the steps in flight (their results are
        dropped; another worker runs them again under the same idempotency key) and hand the runs
        back. Cuts a graceful shutdown short (the CLI worker does this on a second SIGINT).
        Returns the step attempts that were abandoned."""
        return self._worker.abandon() if self._worker is not None else []

    @property
    def active_runs(self) -> int:
        """How many runs this worker is driving right now."""
        return self._worker.active_runs if self._worker is not None else 0

    @property
    def _crashed(self) -> SimulatedCrash | None:
        """Set when fault injection "killed" this Runtime's worker (coro_durable.testing)."""
        return self._worker.crashed if self._worker is not None else None

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
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> RunHandle:
        """Start a run of ``workflow(*args, **kwargs)``; idempotent on ``run_id``.

        ``tags`` ({"tenant": "acme"}) are searchable metadata of the run: ``list_runs(tags=...)``
        finds it, describe() and ``cd.workflow_info()`` show them. Keys are 1-64 letters, digits,
        ``_`` or ``-``; values strs of at most 256 characters; at most 32 (ConfigurationError).
        A start that finds the run already there keeps the tags it was first started with.

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
        meta = {"tags": check_tags(tags)} if tags else {}
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
        record, created = await self._call(
            self.store.create_run, RunRecord(run_id, name, text, meta=meta)
        )
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
            changed = self._notify.run_event(run_id)  # taken before reading: none is missed
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
            with anyio.move_on_after(wait):
                await changed.wait()
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
        if self._worker is not None:  # driven here: interrupt its pending await now
            self._worker.deliver_cancel(run_id)
        self._notify.run_ended(run_id)  # a run that was not executing is cancelled on the spot

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
        self._notify.run_ended(run_id)
        return RunInfo.from_record(record)

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow: str | None = None,
        tags: Mapping[str, str] | None = None,
        waiting_for: WaitKind | str | None = None,
        wait_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs, newest first, filtered by status and workflow name; ``tags`` keeps the runs
        started with every one of those tags (filtered in the store); ``waiting_for`` keeps the
        waiting runs that wait for that (``"signal"``, ``"timer"``, ``"retry"``) and
        ``wait_name`` those whose wait has that name: ``list_runs(waiting_for="signal",
        wait_name="approval")`` is every run waiting on signal ``approval``."""
        self._check_open()
        if wait_name is not None and waiting_for is None:
            raise ConfigurationError(
                f"list_runs(wait_name={wait_name!r}) needs waiting_for, the kind of wait that has "
                'the name (waiting_for="signal" for the runs waiting on that signal)'
            )
        query = RunQuery(
            status=_parse_enum(RunStatus, status, "run status"),
            workflow=workflow,
            tags=check_tags(tags) if tags else None,
            waiting_for=_parse_enum(WaitKind, waiting_for, "wait kind"),
            wait_name=wait_name,
            limit=limit,
            offset=offset,
        )
        runs = await self.store.list_runs(query)
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


E = TypeVar("E", RunStatus, WaitKind)


def _parse_enum(kind: type[E], value: E | str | None, what: str) -> E | None:
    """``value`` as a member of ``kind`` (None stays None); ConfigurationError naming the choices."""
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise ConfigurationError(
            f"unknown {what} {value!r}; use one of {', '.join(m.value for m in kind)}"
        ) from None
