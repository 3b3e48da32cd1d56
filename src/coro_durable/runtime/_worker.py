"""The worker half of an embedded Runtime: it claims runnable runs and drives each one.

A ``Worker`` registers in the store's worker registry (and heartbeats there), claims runs up to
its claim limit (new, timer due, signal arrived, lease expired), drives each claimed run in its
own task as an ``Activation``, renews the leases of the runs it drives every ``lease_ttl / 3``
seconds (the answer also says which were cancelled), supervises the steps in flight (heartbeat
timeouts, progress entries), records crashed activations (quarantining a run after
``max_crashes``), and shuts down gracefully (``shutdown_grace``). Everything it observes goes to
the Runtime's instruments (``Hooks``). The client operations (start, signal, result, describe,
...) live in ``_runtime.Runtime``, which owns a Worker unless ``worker=False``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from .._core.faults import CLAIMED, RENEW, SimulatedCrash
from .._core.hooks import (
    ActivationEnded,
    ActivationStarted,
    Hooks,
    RunClaimed,
    RunCrashed,
    RunFinished,
    RunHandedBack,
    RunLeaseLost,
    RunParked,
    RunQuarantined,
    WorkerIdle,
    WorkerStarted,
    WorkerStopped,
)
from .._core.waits import Wait, WaitKind
from ..errors import (
    ConflictError,
    CorruptJournalError,
    LeaseLost,
    NonDeterminismError,
    StoreError,
    UnknownWorkflowError,
)
from ..journal._records import JournalEntry, RunRecord, RunStatus, WorkerRecord, verify_journal
from ..store._protocol import Store
from ..store._requests import ClaimRequest
from ..workflow import _registry
from ..workflow._effects import StepInfo
from ._activation import Activation, ActivationEnd, Limits, store_call

__all__ = ["Notifier", "Worker"]

log = logging.getLogger("coro_durable.runtime")


class Notifier:
    """The wake-ups inside one Runtime. The claim loop waits on ``changed`` (replaced on every
    store change); each ``result()`` waits on its run's event. ``driven_here`` tells which runs
    this process drives: their waiters are woken when the activation ends, not on every write."""

    def __init__(self) -> None:
        self.changed = anyio.Event()
        self._runs: dict[str, anyio.Event] = {}  # run_id -> event its result() waits on
        self.driven_here: Callable[[str], bool] = lambda run_id: False

    def reset(self) -> None:
        """A fresh ``changed`` event (on entering a Runtime: events belong to one event loop)."""
        self.changed = anyio.Event()

    def store_changed(self) -> None:
        """Something in the store changed: wake the claim loop, and every ``result()`` waiting
        on a run this process is not driving (another process may have moved it)."""
        event, self.changed = self.changed, anyio.Event()
        waiting = [run_id for run_id in self._runs if not self.driven_here(run_id)]
        try:
            event.set()
            for run_id in waiting:
                self._runs.pop(run_id).set()
        except RuntimeError:  # the store is shared with a Runtime on a loop that has ended
            pass

    def run_ended(self, run_id: str) -> None:
        """Wake the ``result()`` calls waiting on ``run_id`` (they re-read the run)."""
        event = self._runs.pop(run_id, None)
        if event is not None:
            event.set()

    def run_event(self, run_id: str) -> anyio.Event:
        """The event a ``result()`` on ``run_id`` waits on (taken before it reads the run)."""
        event = self._runs.get(run_id)
        if event is None:
            event = self._runs[run_id] = anyio.Event()
        return event


async def _wait(event: anyio.Event, timeout: float) -> None:
    """Wait for ``event`` (taken *before* looking at the store, so a change that lands while we
    look is not missed) or ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        await event.wait()


class Worker:
    """Claims and drives runs for one Runtime (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        *,
        worker_id: str,
        lease_ttl: float,
        concurrency: int,
        poll_interval: float,
        max_crashes: int,
        shutdown_grace: float,
        limits: Limits,
        hooks: Hooks,
        notify: Notifier,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease_ttl = lease_ttl
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.max_crashes = max_crashes
        self.shutdown_grace = shutdown_grace
        self.limits = limits
        self.clock = limits.clock
        self.notify = notify
        notify.driven_here = lambda run_id: run_id in self._active
        self._hooks = hooks
        self._active: dict[str, int] = {}  # run_id -> epoch of activations in progress
        self._claim_limit = concurrency  # lowered while leases are lost (see _lease_trouble)
        self._activations: dict[str, tuple[Activation | None, anyio.CancelScope]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.crashed: SimulatedCrash | None = None  # set when fault injection "killed" us
        self._loop_scopes: list[anyio.CancelScope] = []  # the worker's own loops
        self._claim_scope: anyio.CancelScope | None = None  # the claim loop (stops on shutdown)
        self._draining = False
        self._ended = anyio.Event()  # set (and replaced) whenever an activation ends
        self._handed_back = 0  # runs handed back at their next effect by a graceful shutdown
        self._progress_writes: set[str] = set()  # runs whose progress entry is being written
        self._ends = 0  # activations ended so far (an idle worker saw none end during its claim)
        self._idle = False  # WorkerIdle was emitted and nothing was claimed since

    @property
    def active_runs(self) -> int:
        """How many runs this worker is driving right now."""
        return len(self._active)

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the claim, renewal and registry-heartbeat loops in ``tg`` (after ``register``)."""
        self._tg = tg
        self._ended = anyio.Event()
        tg.start_soon(self._worker_loop)
        tg.start_soon(self._renew_loop)
        tg.start_soon(self._heartbeat_loop)
        if self._hooks.worker_started:
            started = WorkerStarted(
                worker_id=self.worker_id,
                workflows=tuple(sorted(_registry.registered())),
                concurrency=self.concurrency,
                lease_ttl=self.lease_ttl,
            )
            self._hooks.emit(self._hooks.worker_started, started)

    def stopped(self) -> None:
        """The Runtime closed: tell the instruments (after ``deregister``)."""
        self._tg = None
        if self._hooks.worker_stopped:
            stopped = WorkerStopped(
                worker_id=self.worker_id,
                handed_back=self._handed_back,
                crashed=self.crashed is not None,
            )
            self._hooks.emit(self._hooks.worker_stopped, stopped)

    async def _call(self, op: Callable[..., Any], *args: Any) -> Any:
        return await store_call(self.limits.store_deadline, op, *args)

    async def shutdown(self, why: str) -> None:
        """Stop claiming, let the steps in flight finish and be journaled within
        ``shutdown_grace``, then abandon what is left (handing the runs back)."""
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

    def _worker_record(self) -> WorkerRecord:
        names = tuple(sorted(_registry.registered()))
        return WorkerRecord(self.worker_id, socket.gethostname(), os.getpid(), names)

    async def register(self) -> None:
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

    async def deregister(self) -> None:
        """Leave the registry on close. A worker "killed" by fault injection stays until its
        registration expires, as a killed process would."""
        if self.crashed is not None:
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
            changed = self.notify.changed
            ends = self._ends
            claimed: list[RunRecord] = []
            if free > 0:
                try:
                    with anyio.CancelScope(shield=True):  # a claim that lands is activated
                        request = ClaimRequest(
                            worker=self.worker_id,
                            workflows=tuple(_registry.registered()),
                            limit=free,
                            lease_ttl=self.lease_ttl,
                            max_crashes=self.max_crashes,
                        )
                        claimed = await self._call(self.store.claim, request)
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
                await _wait(changed, self.poll_interval)

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
                    self.deliver_cancel(run_id)
            await self._supervise()
            if lost or time.monotonic() - started > self.lease_ttl / 2:
                self._lease_trouble(f"{lost} leases lost at renewal" if lost else "slow renewal")
            elif self._claim_limit < self.concurrency:
                self._claim_limit = min(self.concurrency, self._claim_limit * 5 // 4 + 1)
                if self._claim_limit == self.concurrency:
                    log.info("worker %s: renewals keep up again", self.worker_id)

    def deliver_cancel(self, run_id: str) -> None:
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
        if self._tg is None or self.crashed is not None:
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
            if self.crashed is None:  # a "killed" worker writes nothing more
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
                still_ours = self._active.get(run_id) == epoch and self.crashed is None
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
            self.crashed = exc
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
            if self.crashed is not None:
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
            self.notify.run_ended(run_id)
            self.notify.store_changed()

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
                    waits=end.waits,
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
                now = self.clock.time()
                handed = Wait(WaitKind.WORKER, name=self.worker_id, until=now)
                await self.store.park(run_id, epoch, now, (handed,))
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
