"""The activation: drives one workflow coroutine against its journal. The only caller of ``send``.

One *activation* takes a run a worker has claimed (holding its lease and fencing token ``epoch``),
rebuilds the coroutine from the workflow function and its inputs, and drives it:

    outcome = None
    loop:
        effect = coro.send(outcome)          # the workflow runs until it awaits an effect
        seq = next seq (gather: one per sub-effect, depth first)
        if the journal has seq:  check kind/name/argument digest match (else NonDeterminismError,
                                 nothing written), feed the recorded outcome
        else:                    execute it, persist the entry (fenced by epoch), then feed the
                                 outcome decoded from what was persisted (invariants 1 and 7)
    until the coroutine returns (run completed), raises (failed / cancelled), or reaches a wait
    that cannot be satisfied now (park: the run releases its lease and holds nothing).

Retries: every failed attempt of a step is journaled as a *pending* entry carrying the attempt
count and the absolute time of the next attempt, so a crash during the backoff neither resets the
count nor shortens the wait. Short waits (timers, backoffs under ``inline_wait`` seconds) happen
in-process while the lease is held; longer ones park the run.

The activation tells its Runtime's instruments (``hooks``, ``_core.hooks``) of each step attempt
(StepStarted just before the body is called, StepFinished when it ends) and each signal it takes,
and passes every named fault point (``hooks.fault(AFTER_FEED, ...)``, ``_core.faults``); the
worker reports the rest of a run's events.

With ``replay_only=True`` the same class re-executes a journal with no side effects: it executes
nothing, writes nothing, calls no instrument, and raises ``ReplayEnd`` where the recorded journal
ends (the replayer, ``_replayer``, turns that into a report).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import random as _random
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio

from .._core import codec, planning
from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.faults import (
    AFTER_BODY,
    AFTER_COMMIT,
    AFTER_FEED,
    AFTER_FINISH,
    AFTER_PENDING,
    BEFORE_CONSUME,
    BEFORE_FEED,
    BEFORE_FINISH,
    BEFORE_RESULT,
    BEFORE_STEP,
    COMMIT_FAIL,
    INVOKE,
    SimulatedCrash,
)
from .._core.hooks import Hooks, SignalConsumed, StepFinished, StepStarted
from .._core.planning import (
    Leaf,
    Node,
    Planner,
    Race,
    exception_info,
    gather_outcome,
    rebuild_error,
)
from .._core.waits import Wait, WaitKind
from ..errors import (
    ConflictError,
    CorruptJournalError,
    LeaseLost,
    NonDeterminismError,
    NotAnEffectError,
    PermanentStoreError,
    RunCancelledError,
    RunNotFoundError,
    SerializationError,
    SignalTimeout,
    StepError,
    StoreError,
    StoreUnavailableError,
)
from ..journal._records import JournalEntry, RunRecord, RunStatus
from ..store._protocol import Store
from ..workflow._effects import (
    AwaitSignal,
    Call,
    Effect,
    Error,
    Now,
    Outcome,
    Random,
    Send,
    Sleep,
    StepContext,
    StepInfo,
    Uuid4,
    Value,
    WorkflowInfo,
    _current_key,
    _current_step,
    _current_workflow,
)

__all__ = ["Activation", "ActivationEnd", "Limits", "ReplayEnd", "store_call"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Limits:
    """Scheduler settings shared by every activation of a Runtime."""

    max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES
    inline_wait: float = 1.0  # waits up to this long happen in-process, longer ones park the run
    store_deadline: float = 60.0  # keep retrying a failing store this long before giving up
    clock: Clock = SYSTEM_CLOCK  # the time of timers, retries, cd.now() and journal timestamps


@dataclass(slots=True)
class ActivationEnd:
    """How an activation ended."""

    how: Literal["completed", "failed", "cancelled", "parked"]
    wake_at: float | None = None
    waits: tuple[Wait, ...] = ()
    error: str | None = None  # "Type: message" of a failed or cancelled run (for the log)


class _Park(Exception):
    """The effect cannot complete now: release the run until ``wake_at`` (or a signal)."""

    def __init__(self, wake_at: float | None, *waits: Wait) -> None:
        self.wake_at = wake_at
        self.waits = waits


class _CancelNow(Exception):
    """A cancel request interrupted an inline wait: journal RunCancelledError for the effect."""


class _RaceLost(BaseException):
    """A raced effect was about to journal its outcome after another one of its race won: it
    writes nothing and stops (a BaseException, so no step-failure handler takes it)."""


@dataclass(slots=True)
class _RaceState:
    """A ``first`` being resolved: the first raced effect to journal a final outcome (under the
    lock, so two never both do) is the winner."""

    lock: anyio.Lock = field(default_factory=anyio.Lock)
    winner: int | None = None  # its seq


@dataclass(slots=True)
class _InFlight:
    """A step attempt executing now: its live context, the scope that can stop it, and what the
    journal's progress entry for it needs."""

    leaf: Leaf
    ctx: StepContext
    scope: anyio.CancelScope | None  # None: a step awaited alone, without timeouts (see _attempt)
    failed: int  # failed attempts before this one
    last_error: str | None
    written_beats: int = -1  # heartbeat count of the last progress entry written (-1: none)


class ReplayEnd(Exception):
    """Replay reached the end of the recorded journal."""

    def __init__(self, seq: int, effect: str) -> None:
        self.seq = seq
        self.effect = effect


# Errors that retrying cannot fix, raised at once. Every other StoreError (a TransientStoreError,
# or a plain StoreError from a store that does not classify its errors) is retried until the
# deadline.
_NOT_RETRIED = (PermanentStoreError, ConflictError, CorruptJournalError, RunNotFoundError)

_log = logging.getLogger("coro_durable.runtime")


async def store_call(deadline: float, op: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Call a store operation, retrying transient StoreErrors with backoff up to ``deadline`` s.

    A PermanentStoreError (and a conflict, a corrupt row, an unknown run) is raised at once: no
    retry can fix it. Any other StoreError is retried (50 ms, doubling up to 2 s between tries);
    the first failure logs one warning on the ``coro_durable`` logger saying what failed and for
    how long it will be retried (not one per attempt), a success after retries logs one info
    line, and a failure lasting past ``deadline`` raises StoreUnavailableError.

    Fenced writes are safe to retry: an entry whose commit landed but whose acknowledgement was
    lost is recognised by the store as identical and accepted (faults.md, "connection lost").
    """
    delay = 0.05
    started = time.monotonic()
    give_up = started + deadline
    warned = False
    while True:
        try:
            result = await op(*args)
        except StoreError as exc:
            if isinstance(exc, _NOT_RETRIED):
                raise
            if time.monotonic() + delay > give_up:
                raise StoreUnavailableError(
                    f"the store kept failing for {deadline:g}s ({exc}); check that it is up and "
                    "reachable, or raise store_deadline"
                ) from exc
            if not warned:
                warned = True
                _log.warning(
                    "store call %s failed (%s: %s); retrying it with backoff for up to %gs "
                    "(store_deadline) before giving up",
                    _op_name(op),
                    type(exc).__name__,
                    exc,
                    deadline,
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)
        else:
            if warned:
                _log.info(
                    "store call %s succeeded after %.1fs of retries",
                    _op_name(op),
                    time.monotonic() - started,
                )
            return result


def _op_name(op: Callable[..., Any]) -> str:
    """``create_run`` for a bound method or a functools.partial of one."""
    return str(getattr(getattr(op, "func", op), "__name__", op))


def _error_json(type_name: str, message: str, **extra: Any) -> str:
    return json.dumps({"type": type_name, "message": message, **extra}, ensure_ascii=False)


def _recorded_error(entry: JournalEntry, run_id: str) -> BaseException:
    """Rebuild the exception an ``error`` entry stands for, as the workflow first saw it."""
    info = entry.error_info or {"type": "Exception", "message": ""}
    return rebuild_error(
        info.get("type", "Exception"),
        info.get("message", ""),
        run_id=run_id,
        step=entry.name,
        attempts=entry.attempts,
        kind=entry.kind,
        args=entry.args,
    )


class Activation:
    """Drives one claimed run until it completes, fails, is cancelled or parks."""

    def __init__(
        self,
        store: Store,
        run: RunRecord,
        journal: dict[int, JournalEntry],
        fn: Callable[..., Coroutine[Any, Any, Any]],
        limits: Limits,
        *,
        replay_only: bool = False,
        worker_id: str = "",
        hooks: Hooks | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.hooks = hooks if hooks is not None else Hooks()  # a replay calls no instrument
        self.run = run
        self.run_id = run.run_id
        self.epoch = run.epoch
        self.journal = journal
        self.fn = fn
        self.limits = limits
        self.clock = limits.clock
        self.replay_only = replay_only
        self.planner = Planner(limit=limits.max_payload_bytes)  # numbers the effects
        self.releasing = False  # set once the final park/finish write starts
        self.cancel_requested = run.cancel_requested and not replay_only
        self.cancel_injected = any(
            e.error is not None and (e.error_info or {}).get("type") == "RunCancelledError"
            for e in journal.values()
        )
        self._cancel_written = False  # a cancel entry was written for the effect being resolved
        self.draining = False  # the worker is shutting down: finish in-flight steps, then park
        self.restart_for_cancel = False  # see request_cancel
        self._waits: set[anyio.CancelScope] = set()  # inline timer/backoff waits in progress
        self._in_flight: dict[int, _InFlight] = {}  # seq -> step attempt executing now
        # id(error) -> (error, seqs, after) for every error fed to the workflow: the journal
        # entries it came from and the last seq of the effect awaited (see _failure_origin).
        self._fed_errors: dict[int, tuple[BaseException, list[int], int]] = {}
        self._races: dict[int, _RaceState] = {}  # seq of a raced effect -> its race

    # -- what the worker tells a running activation ---------------------------------------------------

    def request_cancel(self) -> bool:
        """The run was cancelled: interrupt the effect the workflow is awaiting now.

        Inline waits end at once; steps in flight are stopped: an async step is cancelled, a
        sync step is abandoned (its thread runs on, ``cd.heartbeat()`` raises RunCancelledError
        there, whatever it returns is dropped). The workflow then sees RunCancelledError at
        that await; effects it awaits after that (cleanup) run normally.

        Returns True when the caller must cancel the whole activation and run it again from the
        journal (with the cancel requested): a step awaited on its own runs without a cancel
        scope of its own, which keeps the common step cheap (an anyio cancel scope costs about
        as much as the rest of the step's bookkeeping), so that is how it is interrupted."""
        if self.cancel_requested or self.replay_only:
            return False
        self.cancel_requested = True
        if self.cancel_injected:
            return False
        for flight in list(self._in_flight.values()):
            flight.ctx.cancelled = True
            if flight.scope is not None:
                flight.scope.cancel()
            else:
                self.restart_for_cancel = True
        for scope in list(self._waits):
            scope.cancel()
        return self.restart_for_cancel

    def drain(self) -> None:
        """The worker is shutting down: let steps in flight finish and journal their results, then
        hand the run back at its next effect (inline waits end now: their due time is journaled)."""
        self.draining = True
        for scope in list(self._waits):
            scope.cancel()

    def supervise(self) -> list[JournalEntry]:
        """Called about twice a second by the worker: time out attempts whose heartbeats stopped,
        and return the progress entries to journal for attempts that started or heartbeated since
        the last call (a *pending* entry per step: attempt, worker, last heartbeat and details)."""
        now = time.monotonic()
        entries: list[JournalEntry] = []
        for flight in list(self._in_flight.values()):
            ctx = flight.ctx
            limit = ctx.heartbeat_timeout
            if (
                limit is not None
                and flight.scope is not None
                and ctx.timed_out is None
                and now - ctx.last_beat > limit
            ):
                ctx.timed_out = (
                    f"attempt {ctx.info.attempt} of step {ctx.info.name} sent no heartbeat for "
                    f"{limit}s (heartbeat_timeout)"
                )
                flight.scope.cancel()
                continue
            if flight.written_beats != ctx.beats and not ctx.cancelled and ctx.timed_out is None:
                flight.written_beats = ctx.beats
                entries.append(self._progress_entry(flight))
        return entries

    def executing(self) -> list[StepInfo]:
        """The step attempts executing now."""
        return [flight.ctx.info for flight in self._in_flight.values()]

    def _progress_entry(self, flight: _InFlight) -> JournalEntry:
        ctx = flight.ctx
        progress: dict[str, Any] = {
            "attempt": ctx.info.attempt,
            "worker": self.worker_id,
            "attempt_started_at": ctx.started_at,
            "heartbeat_at": ctx.beat_at,
            "details": ctx.details,
        }
        try:
            text = codec.encode(progress, limit=self.limits.max_payload_bytes)
        except SerializationError as exc:
            progress["details"] = None
            progress["details_error"] = str(exc)
            text = codec.encode(progress)
        pending = self.journal.get(flight.leaf.seq)
        return self._entry(
            flight.leaf,
            "pending",
            pending=pending if pending is not None and not pending.final else None,
            attempts=flight.failed,
            error=flight.last_error,
            result=text,
        )

    # -- the drive loop -----------------------------------------------------------------------------

    async def execute(self) -> ActivationEnd:
        """Run the workflow from its start, replaying the journal, until it ends or parks."""
        payload = codec.decode(self.run.input)
        coro = self.fn(*payload.get("args", ()), **payload.get("kwargs", {}))
        send: Outcome | None = None
        throw: BaseException | None = None
        token = _current_workflow.set(
            WorkflowInfo(
                run_id=self.run_id,
                workflow=self.run.workflow,
                started_at=_dt.datetime.fromtimestamp(self.run.created_at, _dt.UTC)
                if self.run.created_at
                else None,
                tags=self.run.tags,
            )
        )
        try:
            while True:
                try:
                    if throw is not None:
                        yielded = coro.throw(throw)
                        throw = None
                    else:
                        yielded = coro.send(send)
                        if send is not None:
                            self.hooks.fault(AFTER_FEED, self.run_id, self.planner.next_seq)
                except StopIteration as stop:
                    return await self._complete(stop.value)
                except RunCancelledError as exc:
                    return await self._finish_error(RunStatus.CANCELLED, exc)
                except Exception as exc:
                    return await self._finish_error(RunStatus.FAILED, exc)
                if not isinstance(yielded, Effect):
                    throw = NotAnEffectError(yielded)
                    continue
                try:
                    send = await self._resolve(yielded)
                    self.hooks.fault(BEFORE_FEED, self.run_id, self.planner.next_seq - 1)
                except SerializationError as exc:  # arguments that cannot be journaled
                    throw = exc
                except _Park as park:
                    self.releasing = True
                    await store_call(
                        self.limits.store_deadline,
                        self.store.park,
                        self.run_id,
                        self.epoch,
                        park.wake_at,
                        park.waits,
                    )
                    return ActivationEnd("parked", park.wake_at, park.waits)
        finally:
            try:
                coro.close()
            except RuntimeError:  # the workflow awaited an effect in a `finally` while parking
                pass
            _current_workflow.reset(token)

    async def _complete(self, value: Any) -> ActivationEnd:
        beyond = [seq for seq in self.journal if seq >= self.planner.next_seq]
        if beyond:
            entry = self.journal[min(beyond)]
            raise NonDeterminismError(
                self.run_id, entry.seq, entry.describe(), "the workflow returning"
            )
        try:
            text = codec.encode(
                value, where=f"result of run {self.run_id!r}", limit=self.limits.max_payload_bytes
            )
        except SerializationError as exc:
            return await self._finish_error(RunStatus.FAILED, exc)
        if self.replay_only:
            if self.run.status == RunStatus.COMPLETED and self.run.result != text:
                raise ReplayEnd(self.planner.next_seq, "a different return value than recorded")
            return ActivationEnd("completed")
        await self._finish(RunStatus.COMPLETED, text, None)
        return ActivationEnd("completed")

    async def _finish_error(self, status: RunStatus, exc: BaseException) -> ActivationEnd:
        if self.replay_only:
            return ActivationEnd("cancelled" if status == RunStatus.CANCELLED else "failed")
        type_name, message = exception_info(exc)
        reopen, after = self._failure_origin(exc)
        error = _error_json(type_name, message, reopen=reopen, after=after)
        await self._finish(status, None, error)
        return ActivationEnd(
            "cancelled" if status == RunStatus.CANCELLED else "failed",
            error=f"{type_name}: {message}",
        )

    def _failure_origin(self, exc: BaseException) -> tuple[list[int], int | None]:
        """Which journal entries the run failed on, for ``Runtime.retry``: ``(reopen, after)``.

        If ``exc``, or an exception in its ``__cause__``/``__context__`` chain, is (by identity) an
        error fed to the workflow, the failure is the entry it came from (every error entry of a
        gather that raised it) and ``after`` is the last seq of the effect awaited; a retry
        deletes those entries and every later one. An exception raised by workflow code alone
        reopens nothing: ``([], None)``."""
        seen: set[int] = set()
        todo: list[BaseException] = [exc]
        while todo:
            current = todo.pop(0)
            if id(current) in seen:
                continue
            seen.add(id(current))
            fed = self._fed_errors.get(id(current))
            if fed is not None and fed[0] is current:
                return fed[1], fed[2]
            todo += [e for e in (current.__cause__, current.__context__) if e is not None]
            if isinstance(current, BaseExceptionGroup):
                todo += current.exceptions
        return [], None

    async def _finish(self, status: RunStatus, result: str | None, error: str | None) -> None:
        self.hooks.fault(BEFORE_FINISH, self.run_id)
        self.releasing = True

        async def commit() -> None:
            await self.store.finish(self.run_id, self.epoch, status, result, error)
            self.hooks.fault(AFTER_FINISH, self.run_id)

        await store_call(self.limits.store_deadline, commit)

    # -- resolving effects ------------------------------------------------------------------------------

    async def _resolve(self, effect: Effect) -> Outcome:
        """Resolve one effect the workflow awaits (a gather with all its sub-effects). A cancel
        request interrupts every sub-effect still in progress; once this await has delivered
        RunCancelledError, later effects (the workflow's cleanup) are not interrupted again."""
        self._cancel_written = False
        try:
            return await self._resolve_effect(effect)
        finally:
            if self._cancel_written:
                self.cancel_injected = True

    async def _resolve_effect(self, effect: Effect) -> Outcome:
        planned = self.planner.plan(effect)
        if isinstance(planned, Race):
            return await self._resolve_race(planned)
        if isinstance(planned, Node):
            node = planned
            outcomes: dict[int, Outcome] = {}
            leaves = list(planning.leaves(node))
            # Entries already in the journal are fed at once; the rest run concurrently.
            todo = [leaf for leaf in leaves if not self._replayed(leaf, outcomes)]
            if len(todo) == 1:
                outcomes[todo[0].seq] = await self._resolve_leaf(todo[0])
            elif todo:
                await self._resolve_concurrently(todo, outcomes)
            outcome = gather_outcome(node, outcomes)
            self._note_errors(leaves, outcomes, outcome)
            return outcome
        leaf = planned
        replayed: dict[int, Outcome] = {}
        if self._replayed(leaf, replayed):
            outcome = replayed[leaf.seq]
        else:
            outcome = await self._resolve_leaf(leaf)
        self._note_errors([leaf], {leaf.seq: outcome}, outcome)
        return outcome

    def _note_errors(self, leaves: list[Leaf], outcomes: dict[int, Outcome], fed: Outcome) -> None:
        """Remember where each error about to be fed to the workflow came from: a leaf's error
        stands for its own entry, a gather's error for every error entry of the gather; both
        for the effect's last seq (read by ``_failure_origin``)."""
        if not leaves:
            return
        after = leaves[-1].seq
        failed: list[int] = []
        for leaf in leaves:
            outcome = outcomes.get(leaf.seq)
            if isinstance(outcome, Error):
                failed.append(leaf.seq)
                self._fed_errors[id(outcome.error)] = (outcome.error, [leaf.seq], after)
        if isinstance(fed, Error):
            self._fed_errors[id(fed.error)] = (fed.error, failed, after)

    async def _resolve_concurrently(self, todo: list[Leaf], outcomes: dict[int, Outcome]) -> None:
        parks: list[tuple[Leaf, _Park]] = []
        failures: list[BaseException] = []

        async def one(leaf: Leaf) -> None:
            try:
                outcomes[leaf.seq] = await self._resolve_leaf(leaf)
            except _Park as park:
                parks.append((leaf, park))
            except (Exception, LeaseLost, SimulatedCrash) as exc:  # re-raised below, unwrapped
                failures.append(exc)
                if isinstance(exc, SimulatedCrash):
                    tg.cancel_scope.cancel()  # a crashed process runs no sibling any further

        async with anyio.create_task_group() as tg:
            for leaf in todo:
                leaf.concurrent = True
                tg.start_soon(one, leaf)
        if failures:
            raise failures[0]
        if parks and self._cancel_written and not self.draining:
            # A cancel interrupted sub-effects of this gather while others were parked (waiting
            # for a signal or a long timer): they are cancelled too, not left waiting forever.
            for leaf, _ in parks:
                outcomes[leaf.seq] = await self._inject_cancel(leaf, self.journal.get(leaf.seq))
            return
        if parks:
            wakes = [p.wake_at for _, p in parks if p.wake_at is not None]
            in_order = sorted(parks, key=lambda parked: parked[0].seq)  # the waits by seq
            raise _Park(min(wakes, default=None), *(w for _, p in in_order for w in p.waits))

    async def _resolve_race(self, race: Race) -> Outcome:
        """Resolve a ``first``. The winner is the first raced effect whose final entry is
        journaled (``_final`` lets one at a time through and refuses the others); then the
        decision entry records its index and the others are cancelled. Replayed: the decision,
        else (a crash came between the winner's entry and the decision) the raced effect with a
        final entry that finished first."""
        outcomes: dict[int, Outcome] = {}
        decided = self.journal.get(race.decision.seq)
        self._replayed(race.decision, outcomes)  # the determinism check of the decision
        finals = [leaf for leaf in race.children if self._replayed(leaf, outcomes)]
        if decided is not None and decided.final:
            index = int(codec.decode(decided.result or "0"))
            winner = race.children[index]
            if winner.seq not in outcomes:
                raise CorruptJournalError(
                    f"run {self.run_id!r}: the race at seq {race.decision.seq} was won by seq "
                    f"{winner.seq}, which has no final entry; the journal was modified"
                )
            if not self.replay_only:
                await self._close_losers(race, index, outcomes)  # a crash may have come first
            return self._race_outcome(race, index, outcomes[winner.seq])
        if self.replay_only:
            raise ReplayEnd(race.decision.seq, race.decision.describe())
        if not finals:
            await self._run_race(race, outcomes)
            finals = [leaf for leaf in race.children if leaf.seq in outcomes]
        if not finals:  # every raced effect parked (the race's _Park is raised by _run_race)
            raise AssertionError("a race ended without a winner")  # pragma: no cover
        winner = min(finals, key=lambda leaf: (self.journal[leaf.seq].finished_at or 0.0, leaf.seq))
        index = race.children.index(winner)
        await self._write(self._entry(race.decision, "ok", result=str(index), finished=True))
        await self._close_losers(race, index, outcomes)
        return self._race_outcome(race, index, outcomes[winner.seq])

    async def _close_losers(self, race: Race, index: int, outcomes: dict[int, Outcome]) -> None:
        """Journal each raced effect the winner cancelled as a final ``RaceLost`` error (never
        fed to the workflow), so every seq of the race has its outcome for the audit: which
        effect won, and what became of the others (a pending entry keeps its attempts)."""
        winner = race.children[index]
        for leaf in race.children:
            if leaf.seq in outcomes:
                continue
            pending = self.journal.get(leaf.seq)
            error = _error_json(
                "RaceLost",
                f"cancelled: seq {winner.seq} ({winner.describe()}) won the race at seq "
                f"{race.decision.seq}",
            )
            lost = self._entry(
                leaf,
                "error",
                pending=pending,
                error=error,
                attempts=pending.attempts if pending is not None else 0,
                due_at=pending.due_at if pending is not None else None,
                finished=True,
            )
            await self._write(lost)

    def _race_outcome(self, race: Race, index: int, outcome: Outcome) -> Outcome:
        """``(index, value)``, or the winner's error (a retry reopens the whole race)."""
        if isinstance(outcome, Error):
            seqs = [race.decision.seq, *(leaf.seq for leaf in race.children)]
            self._fed_errors[id(outcome.error)] = (outcome.error, seqs, seqs[-1])
            return outcome
        return Value((index, outcome.value))

    async def _run_race(self, race: Race, outcomes: dict[int, Outcome]) -> None:
        """Run the raced effects concurrently until one journals its outcome, then cancel the
        rest; if every one parks, park the run on all of their waits."""
        state = _RaceState()
        parks: list[tuple[Leaf, _Park]] = []
        failures: list[BaseException] = []

        async def one(leaf: Leaf) -> None:
            try:
                outcomes[leaf.seq] = await self._resolve_leaf(leaf)
            except _RaceLost:
                return
            except _Park as park:
                parks.append((leaf, park))
                return
            except (Exception, LeaseLost, SimulatedCrash) as exc:  # re-raised below, unwrapped
                failures.append(exc)
            tg.cancel_scope.cancel()  # the winner (or a failure of the activation) ends the race

        for leaf in race.children:
            self._races[leaf.seq] = state
        try:
            async with anyio.create_task_group() as tg:
                for leaf in race.children:
                    leaf.concurrent = True
                    tg.start_soon(one, leaf)
        finally:
            for leaf in race.children:
                self._races.pop(leaf.seq, None)
        if failures:
            raise failures[0]
        if state.winner is None and parks:
            wakes = [p.wake_at for _, p in parks if p.wake_at is not None]
            in_order = sorted(parks, key=lambda parked: parked[0].seq)
            raise _Park(min(wakes, default=None), *(w for _, p in in_order for w in p.waits))

    async def _final(self, seq: int, op: Callable[[], Awaitable[T]], won: Callable[[T], bool]) -> T:
        """Run ``op``, the write of a final outcome for ``seq``. For an effect in a race: only if
        no other raced effect won yet (else _RaceLost), one at a time; ``won(result)`` says
        whether it journaled an outcome (a consume that found no signal did not)."""
        state = self._races.get(seq)
        if state is None:
            return await op()
        async with state.lock:
            if state.winner is not None:
                raise _RaceLost()
            result = await op()
            if won(result):
                state.winner = seq
            return result

    def _replayed(self, leaf: Leaf, outcomes: dict[int, Outcome]) -> bool:
        """If the journal holds a final entry for the leaf, check it and record its outcome."""
        entry = self.journal.get(leaf.seq)
        if entry is None:
            return False
        if (entry.kind, entry.name, entry.digest) != (leaf.effect.kind, leaf.name, leaf.digest):
            recorded, issued = entry.describe(), leaf.describe()
            if recorded == issued:
                recorded += f" with arguments {entry.args}"
                issued += f" with arguments {leaf.args}"
            raise NonDeterminismError(self.run_id, leaf.seq, recorded, issued)
        if not entry.final:
            return False
        if entry.status == "ok":
            outcomes[leaf.seq] = Value(codec.decode(entry.result) if entry.result else None)
        else:
            outcomes[leaf.seq] = Error(_recorded_error(entry, self.run_id))
        return True

    async def _resolve_leaf(self, leaf: Leaf) -> Outcome:
        pending = self.journal.get(leaf.seq)
        if self.replay_only:
            raise ReplayEnd(leaf.seq, leaf.describe())
        if self._cancel_pending():
            return await self._inject_cancel(leaf, pending)
        if self.draining:
            now = self.clock.time()
            raise _Park(now, Wait(WaitKind.WORKER, name=self.worker_id, until=now))
        effect = leaf.effect
        self.hooks.fault(BEFORE_STEP, self.run_id, leaf.seq)
        try:
            if isinstance(effect, Call):
                return await self._run_call(effect, leaf, pending)
            if isinstance(effect, Sleep):
                return await self._run_sleep(effect, leaf, pending)
            if isinstance(effect, AwaitSignal):
                return await self._run_signal(effect, leaf, pending)
            if isinstance(effect, Send):
                return await self._run_send(effect, leaf)
        except _CancelNow:
            return await self._inject_cancel(leaf, self.journal.get(leaf.seq))
        if isinstance(effect, Now):
            value: Any = _dt.datetime.fromtimestamp(self.clock.time(), _dt.UTC)
        elif isinstance(effect, Uuid4):
            value = _uuid.uuid4()
        elif isinstance(effect, Random):
            value = _random.random()
        else:  # pragma: no cover - every Effect subclass is handled above
            raise TypeError(f"unknown effect {effect!r}")
        text, decoded = codec.roundtrip(value)
        await self._write(self._entry(leaf, "ok", result=text, finished=True))
        return Value(decoded)

    def _entry(
        self,
        leaf: Leaf,
        status: str,
        *,
        pending: JournalEntry | None = None,
        result: str | None = None,
        error: str | None = None,
        attempts: int = 0,
        due_at: float | None = None,
        finished: bool = False,
        started_at: float | None = None,
    ) -> JournalEntry:
        now = self.clock.time()
        if pending is not None:
            started_at = pending.started_at
        return JournalEntry.create(
            leaf.seq,
            leaf.effect.kind,
            leaf.name,
            leaf.digest,
            status,
            args=leaf.args,
            result=result,
            error=error,
            attempts=attempts,
            key=f"{self.run_id}:{leaf.seq}",
            started_at=started_at or now,
            finished_at=now if finished else None,
            due_at=due_at,
        )

    async def _write(self, entry: JournalEntry) -> None:
        """Persist an entry, fenced by our epoch; only then may its outcome be fed. A final
        entry of a raced effect is written only while its race has no winner (``_final``)."""

        async def commit() -> None:
            self.hooks.fault(COMMIT_FAIL, self.run_id, entry.seq)
            await self.store.append(self.run_id, self.epoch, [entry])
            self.hooks.fault(AFTER_COMMIT, self.run_id, entry.seq)

        if entry.final and entry.seq in self._races:
            await self._final(
                entry.seq, lambda: store_call(self.limits.store_deadline, commit), _always
            )
        else:
            await store_call(self.limits.store_deadline, commit)
        self._remember(entry)

    def _remember(self, entry: JournalEntry) -> None:
        self.journal[entry.seq] = entry

    def _cancel_pending(self) -> bool:
        return self.cancel_requested and not self.cancel_injected

    async def _wait_until(self, due: float, wait: Wait) -> None:
        """Wait in-process until ``due`` (its entry is journaled already), or park the run when the
        wait is long or the worker drains. A cancel request ends the wait with _CancelNow."""
        remaining = due - self.clock.time()
        if remaining <= 0:
            return
        if remaining > self.limits.inline_wait or self.draining:
            raise _Park(due, wait)
        if self._cancel_pending():
            raise _CancelNow()
        with anyio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                await self.clock.sleep(remaining)
            finally:
                self._waits.discard(scope)
        if scope.cancel_called:  # interrupted by request_cancel or drain
            if self._cancel_pending():
                raise _CancelNow()
            raise _Park(due, wait)

    async def _inject_cancel(
        self,
        leaf: Leaf,
        pending: JournalEntry | None,
        *,
        attempts: int | None = None,
        during: str = "",
    ) -> Outcome:
        """Cancellation is delivered as RunCancelledError at the pending await, journaled."""
        pending = pending if pending is not None and not pending.final else None
        exc = RunCancelledError(self.run_id)  # as a replay rebuilds it from the entry
        await self._write(
            self._entry(
                leaf,
                "error",
                pending=pending,
                error=_error_json("RunCancelledError", f"{exc} {during}".strip()),
                attempts=attempts if attempts is not None else (pending.attempts if pending else 0),
                due_at=pending.due_at if pending else None,
                finished=True,
            )
        )
        self._cancel_written = True
        return Error(exc)

    async def _run_call(self, effect: Call, leaf: Leaf, pending: JournalEntry | None) -> Outcome:
        # An attempt cut short by its worker's death (or a lost lease) does not count against
        # the retry policy: it runs again with the same attempt number and the last heartbeat
        # details it journaled.
        attempts = pending.attempts if pending else 0
        details = _progress(pending).get("details")
        last_error = pending.error if pending else None
        if pending is not None and pending.due_at is not None:
            await self._wait_until(pending.due_at, _retry_wait(leaf, pending.due_at))
        started = self.clock.time()  # when the first attempt of this activation began
        policy = effect.retry
        while True:
            if self._cancel_pending():  # cancelled between attempts
                return await self._inject_cancel(leaf, pending)
            attempts += 1
            info = StepInfo(
                run_id=self.run_id,
                workflow=self.run.workflow,
                seq=leaf.seq,
                name=leaf.name,
                attempt=attempts,
                idempotency_key=f"{self.run_id}:{leaf.seq}",
                heartbeat_details=details,
            )
            ctx = StepContext(info, effect.heartbeat_timeout, wall=self.clock.time)
            # A cancel scope only where something may have to stop this attempt alone (its
            # timeouts, or a cancel of one branch among a gather's); see request_cancel.
            needs_scope = leaf.concurrent or effect.timeout or effect.heartbeat_timeout
            scope = anyio.CancelScope() if needs_scope else None
            flight = _InFlight(leaf, ctx, scope, attempts - 1, last_error)
            value, failure = await self._attempt(effect, flight)
            if ctx.cancelled:  # the run was cancelled while this attempt ran: its result is dropped
                if scope is None:  # the worker restarts the activation (request_cancel)
                    await anyio.lowlevel.checkpoint()
                return await self._inject_cancel(
                    leaf,
                    pending,
                    attempts=attempts,
                    during=f"during attempt {attempts} of step {leaf.name}",
                )
            details = ctx.details
            if failure is None:
                self.hooks.fault(AFTER_BODY, self.run_id, leaf.seq)
                try:
                    text, decoded = codec.roundtrip(
                        value,
                        where=f"result of step {leaf.name} (seq {leaf.seq})",
                        limit=self.limits.max_payload_bytes,
                    )
                    self.hooks.fault(BEFORE_RESULT, self.run_id, leaf.seq)
                except SerializationError as exc:  # terminal: retrying would not help
                    await self._write(
                        self._entry(
                            leaf,
                            "error",
                            pending=pending,
                            started_at=started,
                            attempts=attempts,
                            finished=True,
                            error=_error_json(type(exc).__name__, str(exc)),
                        )
                    )
                    return Error(exc)
                await self._write(
                    self._entry(
                        leaf,
                        "ok",
                        pending=pending,
                        started_at=started,
                        result=text,
                        attempts=attempts,
                        finished=True,
                    )
                )
                return Value(decoded)
            type_name, message = exception_info(failure)
            error = last_error = _error_json(type_name, message)
            if attempts >= policy.max_attempts or type_name in policy.non_retryable:
                await self._write(
                    self._entry(
                        leaf,
                        "error",
                        pending=pending,
                        started_at=started,
                        error=error,
                        attempts=attempts,
                        finished=True,
                    )
                )
                return Error(StepError(type_name, message, step=leaf.name, attempts=attempts))
            due = self.clock.time() + policy.delay(attempts)
            pending = self._entry(
                leaf,
                "pending",
                pending=pending,
                started_at=started,
                error=error,
                attempts=attempts,
                due_at=due,
                result=_progress_text(details),
            )
            await self._write(pending)
            self.hooks.fault(AFTER_PENDING, self.run_id, leaf.seq)
            await self._wait_until(due, _retry_wait(leaf, due))

    async def _attempt(self, effect: Call, flight: _InFlight) -> tuple[Any, BaseException | None]:
        """Run one attempt of a step: ``(value, None)`` or ``(None, failure)``.

        The attempt runs in ``flight.scope``; the worker's supervision (``supervise``) and
        ``request_cancel`` stop it through that scope. A timed-out attempt fails with
        TimeoutError and its result, if it ever comes, is never journaled."""
        leaf, ctx, seq = flight.leaf, flight.ctx, flight.leaf.seq
        key_token, step_token = _current_key.set(ctx.info.idempotency_key), _current_step.set(ctx)
        workflow_token = _current_workflow.set(None)  # effects cannot be awaited inside a step
        self._in_flight[seq] = flight
        value: Any = None
        failure: BaseException | None = None
        finished = False
        began: float | None = None  # set when an instrument wants this attempt's StepFinished
        try:
            self.hooks.fault(INVOKE, self.run_id, seq)
            if self.hooks.step_started:
                self.hooks.emit(self.hooks.step_started, StepStarted(**self._step_fields(ctx)))
            if self.hooks.step_finished:
                began = time.monotonic()
            if flight.scope is None:
                try:
                    value = await _invoke(effect)
                    finished = True
                except Exception as exc:
                    failure = exc
                except RunCancelledError as exc:  # e.g. cd.heartbeat() of a cancelled run
                    failure = exc
            else:
                if effect.timeout is not None:
                    flight.scope.deadline = anyio.current_time() + effect.timeout
                with flight.scope:
                    try:
                        value = await _invoke(effect)
                        finished = True
                    except Exception as exc:
                        failure = exc
                    except RunCancelledError as exc:
                        failure = exc
                timed_out = flight.scope.cancelled_caught and not ctx.cancelled
                if timed_out and ctx.timed_out is None and not finished and failure is None:
                    ctx.timed_out = f"attempt {ctx.info.attempt} timed out after {effect.timeout}s"
        finally:
            _current_workflow.reset(workflow_token)
            _current_step.reset(step_token)
            _current_key.reset(key_token)
            if self._in_flight.get(seq) is flight:
                del self._in_flight[seq]
            if began is not None and self.hooks.step_finished:
                self._step_finished(ctx, began, finished, failure)
        if ctx.timed_out is not None and not finished:
            return None, TimeoutError(ctx.timed_out)
        if not finished and failure is None and not ctx.cancelled:  # pragma: no cover - defensive
            return None, TimeoutError(f"attempt {ctx.info.attempt} of step {leaf.name} was stopped")
        return value, failure

    def _step_fields(self, ctx: StepContext) -> dict[str, Any]:
        info = ctx.info
        return {
            "worker_id": self.worker_id,
            "run_id": self.run_id,
            "epoch": self.epoch,
            "seq": info.seq,
            "name": info.name,
            "attempt": info.attempt,
            "idempotency_key": info.idempotency_key,
        }

    def _step_finished(
        self, ctx: StepContext, began: float, finished: bool, failure: BaseException | None
    ) -> None:
        """Tell the instruments how an attempt ended (``_attempt`` decides what counts)."""
        error: str | None = None
        if ctx.cancelled:
            error = "RunCancelledError: the run was cancelled during this attempt"
        elif finished:
            pass
        elif failure is not None:
            error = "{}: {}".format(*exception_info(failure))
        elif ctx.timed_out is not None:
            error = f"TimeoutError: {ctx.timed_out}"
        else:
            error = "interrupted: the worker stopped (a crash, a lost lease or a shutdown)"
        event = StepFinished(
            **self._step_fields(ctx),
            ok=error is None,
            error=error,
            duration=time.monotonic() - began,
        )
        self.hooks.emit(self.hooks.step_finished, event)

    async def _run_sleep(self, effect: Sleep, leaf: Leaf, pending: JournalEntry | None) -> Outcome:
        if pending is not None and pending.due_at is not None:
            due = pending.due_at
        else:
            due = (
                effect.until.timestamp()
                if effect.until
                else self.clock.time() + (effect.seconds or 0)
            )
            if due > self.clock.time():
                pending = self._entry(leaf, "pending", due_at=due)
                await self._write(pending)
                self.hooks.fault(AFTER_PENDING, self.run_id, leaf.seq)
        await self._wait_until(due, Wait(WaitKind.TIMER, seq=leaf.seq, until=due))
        await self._write(
            self._entry(leaf, "ok", pending=pending, result="null", due_at=due, finished=True)
        )
        return Value(None)

    async def _run_send(self, effect: Send, leaf: Leaf) -> Outcome:
        """Deliver the signal under this effect's key (the store keeps one delivery per signal
        id, so a resend after a crash before the journal write is the same delivery), then
        journal it. An unknown target is journaled as the effect's RunNotFoundError."""
        payload = codec.encode(
            effect.payload,
            where=f"payload of cd.send({effect.signal!r})",
            limit=self.limits.max_payload_bytes,
        )
        key = f"{self.run_id}:{leaf.seq}"
        try:
            await store_call(
                self.limits.store_deadline,
                self.store.deliver_signal,
                effect.run_id,
                effect.signal,
                payload,
                f"send:{key}",
            )
            self.hooks.fault(AFTER_BODY, self.run_id, leaf.seq)  # delivered, not yet journaled
        except RunNotFoundError as exc:
            error = _error_json("RunNotFoundError", str(exc))
            await self._write(self._entry(leaf, "error", error=error, finished=True))
            return Error(RunNotFoundError(effect.run_id))
        await self._write(self._entry(leaf, "ok", result="null", finished=True))
        return Value(None)

    async def _run_signal(
        self, effect: AwaitSignal, leaf: Leaf, pending: JournalEntry | None
    ) -> Outcome:
        deadline = pending.due_at if pending is not None else None
        template = self._entry(leaf, "ok", pending=pending, due_at=deadline)
        self.hooks.fault(BEFORE_CONSUME, self.run_id, leaf.seq)
        attempts = 0

        async def consume() -> JournalEntry | None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # a retry: the first attempt may have landed with its reply lost
                for entry in await self.store.load_journal(self.run_id):
                    if entry.seq == leaf.seq and entry.final:
                        return entry
            return await self.store.consume_signal(self.run_id, self.epoch, effect.signal, template)

        got = await self._final(
            leaf.seq, lambda: store_call(self.limits.store_deadline, consume), _is_entry
        )
        if got is not None:
            self._remember(got)
            if self.hooks.signal_consumed:
                event = SignalConsumed(
                    worker_id=self.worker_id,
                    run_id=self.run_id,
                    epoch=self.epoch,
                    seq=leaf.seq,
                    name=effect.signal,
                )
                self.hooks.emit(self.hooks.signal_consumed, event)
            return Value(codec.decode(got.result) if got.result else None)
        if pending is None and effect.timeout is not None:
            deadline = self.clock.time() + effect.timeout
            if effect.timeout > 0:
                pending = self._entry(leaf, "pending", due_at=deadline)
                await self._write(pending)
                self.hooks.fault(AFTER_PENDING, self.run_id, leaf.seq)
        if deadline is not None and deadline <= self.clock.time():
            exc = SignalTimeout(
                f"no signal {effect.signal!r} arrived for run {self.run_id!r} within "
                f"{effect.timeout}s"
            )
            await self._write(
                self._entry(
                    leaf,
                    "error",
                    pending=pending,
                    due_at=deadline,
                    finished=True,
                    error=_error_json("SignalTimeout", str(exc)),
                )
            )
            return Error(exc)
        raise _Park(
            deadline, Wait(WaitKind.SIGNAL, seq=leaf.seq, name=effect.signal, until=deadline)
        )


# -- helpers ------------------------------------------------------------------------------------------


async def _invoke(effect: Call) -> Any:
    """Call the step function: async ones in this task, sync ones in a worker thread.

    A sync step's thread cannot be stopped: when its attempt is cancelled or times out, the
    thread is abandoned (``abandon_on_cancel``) and runs on until the function returns; what it
    returns then is dropped, and its ``cd.heartbeat()`` raises so it can stop early."""
    if effect.is_async:
        return await effect.fn(*effect.args, **effect.kwargs)
    call = functools.partial(effect.fn, *effect.args, **effect.kwargs)
    return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)


def _progress(entry: JournalEntry | None) -> dict[str, Any]:
    """The progress a pending call entry carries in ``result`` (attempt, worker, heartbeat...)."""
    if entry is None or entry.final or entry.kind != "call" or not entry.result:
        return {}
    try:
        value = codec.decode(entry.result)
    except SerializationError:
        return {}
    return value if isinstance(value, dict) else {}


def _progress_text(details: Any) -> str | None:
    """The ``result`` of a backoff entry: the last heartbeat details, so they survive a crash."""
    if details is None:
        return None
    try:
        return codec.encode({"details": details})
    except SerializationError:
        return None


def _always(_: object) -> bool:
    return True


def _is_entry(got: JournalEntry | None) -> bool:
    return got is not None


def _retry_wait(leaf: Leaf, due: float) -> Wait:
    return Wait(WaitKind.RETRY, seq=leaf.seq, name=leaf.name, until=due)
