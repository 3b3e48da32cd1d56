"""The workflow side: drives the user's coroutine inside a Restate workflow's ``run`` handler.

One :class:`RunDriver` lives in each attempt of a run's ``run`` invocation; Restate replays the
journal into every new attempt (after a suspension, a crash, an endpoint restart) and the
coroutine is driven again from the top with ``engine.drive``. Effects are numbered the way the
embedded scheduler numbers them (``seq``: order of issue, a gather's sub-effects depth first), so
``cd.idempotency_key()`` is ``"<run_id>:<seq>"`` on both. Each effect becomes a *leaf process*: a
generator that creates Restate durable futures and is resumed with their results. All leaves of
an effect (one, or every leaf of a ``cd.gather``) are advanced by one loop over
``restate.wait_completed``, always in leaf order, so the commands the journal records come in the
same order on every replay.

    call          -> one ``ctx.run`` per attempt (named after the step). The attempt's outcome,
                     success or failure, is the run's journaled value; the step's
                     cd.RetryPolicy is applied here with a durable ``ctx.sleep`` between
                     attempts, so only real failures count as attempts and Restate's own retry
                     (an attempt whose endpoint died) re-runs the attempt with the same key
    sleep         -> ``ctx.time()`` (to fix the due time) then a durable ``ctx.sleep``
    await_signal  -> the durable promise ``"<name>#<n>"``: occurrence n of that signal name. The
                     shared ``signal`` handler resolves the first unresolved occurrence, so
                     signals sent before the wait are kept, in order; with a timeout, the
                     promise races a durable ``ctx.sleep`` (``cd.SignalTimeout``)
    gather        -> every leaf at once, advanced by ``restate.wait_completed``; the first failure
                     in argument order is raised (or returned in place with return_exceptions)
    now           -> ``ctx.time()`` (journaled); uuid4/random -> ``ctx.uuid()``/``ctx.random()``
                     (seeded by Restate per run: the same values on every replay)

Cancellation (``rt.cancel``) reaches the handler as Restate's ``TerminalError`` (409) at the
pending wait; it is delivered to the workflow as ``RunCancelledError`` at that await, as on the
embedded runtime: a pending timer, signal wait or retry backoff is interrupted, while a step
attempt that is running finishes first (its result is journaled) and the error comes at the next
effect.

The driver never catches the SDK's own control-flow exceptions (``SdkInternalBaseException``,
a BaseException: a suspension unwinds through here), only ``TerminalError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as _dt
import functools
import heapq
import json
from collections.abc import Generator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import restate
from restate import RunOptions, TerminalError, WorkflowContext
from restate.serde import JsonSerde

from coro_durable import engine
from coro_durable.engine import codec as _codec
from coro_durable.errors import (
    EffectNotAllowedError,
    RunCancelledError,
    RunError,
    SerializationError,
    SignalTimeout,
)

__all__ = [
    "STATE_KEY",
    "AdapterFault",
    "RunDriver",
    "promise_name",
    "step_limit_error",
]

#: The effects this adapter does not offer, each with what to do instead (refused by ``rt.start``
#: when the workflow's source shows them, and at the effect otherwise).
NOT_OFFERED: dict[str, str] = {  # by effect kind
    "send": "resolve the other run's awakeable or call its signal handler from a step",
    "first": "race the effects with restate.select in a Restate handler of your own",
}

STATE_KEY = "coro_durable"  # the run's position, as Restate state: what describe reads
CANCELLED = 409  # Restate's status code for a cancelled invocation
_JSON: JsonSerde[Any] = JsonSerde()


class AdapterFault(Exception):
    """A bug or an impossible state in the adapter: fails the *attempt* (Restate retries it, as
    the embedded runtime retries a crashed activation), never the run."""


class _Cancelled(Exception):
    """Thrown into a leaf process whose wait the run's cancellation interrupts."""


def promise_name(signal: str, occurrence: int) -> str:
    """The durable promise that carries occurrence ``occurrence`` (1-based) of a signal name."""
    return f"{signal}#{occurrence}"


def step_limit_error(step: str, timeout: float, limit: float, where: str = "") -> str:
    return (
        f"{where}step {step!r} has timeout={timeout:g}s, but Restate aborts a step attempt "
        f"after inactivity_timeout + abort_timeout = {limit:g}s of silence and runs it again, "
        "so this timeout could never fire. Raise abort_timeout in the restate:// URL (for "
        "every process serving the runs), or lower the step's timeout"
    )


def _iso(when: _dt.datetime) -> str:
    return when.astimezone(_dt.UTC).isoformat(timespec="seconds")


# -- the plan: effects numbered like the embedded scheduler ----------------------------------------------


# -- leaf processes ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Wait:
    """What a leaf process waits for: the first of ``futures`` to complete. ``cancellable``
    waits end with RunCancelledError when the run is cancelled; others (a running step) finish."""

    futures: tuple[restate.RestateDurableFuture[Any], ...]
    cancellable: bool


# A leaf process yields waits and is resumed with (index of the completed future, its value).
_Process = Generator[_Wait, tuple[int, Any], engine.Outcome]


def _step_executor_call(
    executor: concurrent.futures.Executor | None, effect: engine.Call
) -> asyncio.Future[Any]:
    """Start one attempt of a step (async: a task; sync: a thread of ``executor``)."""
    if effect.is_async:
        job: asyncio.Future[Any] = asyncio.ensure_future(effect.fn(*effect.args, **effect.kwargs))
        return job
    ctx = contextvars.copy_context()
    call = functools.partial(effect.fn, *effect.args, **effect.kwargs)
    return asyncio.get_running_loop().run_in_executor(executor, ctx.run, call)


class RunDriver:
    """The state of one attempt of one run inside its ``run`` handler (rebuilt on every replay)."""

    def __init__(
        self,
        ctx: WorkflowContext,
        *,
        executor: concurrent.futures.Executor | None,
        max_payload_bytes: int,
        step_limit: float,
    ) -> None:
        self.ctx = ctx
        self.run_id = ctx.key()
        self.executor = executor
        self.max_payload_bytes = max_payload_bytes
        self.step_limit = step_limit
        self.planner = engine.Planner(limit=self.max_payload_bytes, check=self._check_leaf)
        self.cancel_requested = False
        self.cancel_injected = False
        # Signal occurrences: the next never-awaited one per name, and ones whose wait ended
        # without a signal (timeout, cancellation), to be awaited again first.
        self.next_occurrence: dict[str, int] = {}
        self.free_occurrences: dict[str, list[int]] = {}
        self.consumed: dict[str, set[int]] = {}
        self.lowest_unconsumed: dict[str, int] = {}  # every occurrence below it was consumed
        self.waiting: dict[int, str] = {}  # seq -> what it waits on (describe)
        self.wake_at: dict[int, _dt.datetime] = {}
        self.published: dict[str, Any] | None = None

    # -- entry point -------------------------------------------------------------------------------

    async def resolve(self, effect: engine.Effect) -> engine.Outcome:
        """``engine.drive``'s resolver: one outcome per effect."""
        try:
            planned = self.planner.plan(effect)
        except (SerializationError, EffectNotAllowedError) as exc:
            return engine.Error(exc)  # raised at the await, like unjournalable arguments
        if isinstance(planned, engine.Node):
            return engine.gather_outcome(
                planned, await self._run_leaves(list(engine.leaves(planned)))
            )
        assert not isinstance(planned, engine.Race)  # cd.first is refused by _check_leaf
        outcomes = await self._run_leaves([planned])
        return outcomes[planned.seq]

    # -- planning ------------------------------------------------------------------------------------

    def _check_leaf(self, leaf: engine.Leaf) -> None:
        """Refuse a step timeout Restate cannot honour (the planner then takes no seq)."""
        effect = leaf.effect
        engine.refuse_effect(effect, NOT_OFFERED, "Restate")
        timeout = effect.timeout if isinstance(effect, engine.Call) else None
        if timeout is not None and timeout > self.step_limit:
            raise EffectNotAllowedError(step_limit_error(leaf.name, timeout, self.step_limit))

    # -- the loop that advances leaf processes ---------------------------------------------------------

    async def _run_leaves(self, leaves: list[engine.Leaf]) -> dict[int, engine.Outcome]:
        outcomes: dict[int, engine.Outcome] = {}
        active: dict[int, tuple[_Process, _Wait]] = {}  # insertion order = leaf order

        def advance(seq: int, process: _Process, sent: tuple[int, Any] | None = None,
                    thrown: BaseException | None = None) -> None:  # fmt: skip
            try:
                if thrown is not None:
                    wait = process.throw(thrown)
                elif sent is None:
                    wait = next(process)
                else:
                    wait = process.send(sent)
            except StopIteration as stop:
                active.pop(seq, None)
                outcomes[seq] = stop.value
                return
            except TerminalError as exc:  # a future failed terminally (e.g. a rejected promise)
                active.pop(seq, None)
                outcomes[seq] = engine.Error(RunError(f"Restate failed the wait: {exc.message}"))
                return
            active[seq] = (process, wait)

        for leaf in leaves:  # commands are created in leaf order
            advance(leaf.seq, self._process(leaf))
        while active:
            self._publish()
            pending = [f for _, wait in active.values() for f in wait.futures]
            try:
                done, _ = await restate.wait_completed(*pending)
            except TerminalError as exc:
                if exc.status_code != CANCELLED:
                    raise AdapterFault(f"unexpected terminal error while waiting: {exc}") from exc
                # rt.cancel: interrupt every cancellable wait; running steps finish first.
                self.cancel_requested = True
                for seq, (process, wait) in list(active.items()):
                    if wait.cancellable:
                        self.cancel_injected = True
                        advance(seq, process, thrown=_Cancelled())
                continue
            done_ids = {id(f) for f in done}
            for seq, (process, wait) in list(active.items()):
                for index, future in enumerate(wait.futures):
                    if id(future) in done_ids:
                        try:
                            value = await future
                        except TerminalError as exc:
                            advance(seq, process, thrown=exc)
                        else:
                            advance(seq, process, (index, value))
                        break
        self._publish()
        return outcomes

    def _publish(self) -> None:
        """Write the run's position to Restate state when it changed (describe reads it)."""
        waits = [self.waiting[s] for s in sorted(self.waiting)]
        wakes = list(self.wake_at.values())
        position: dict[str, Any] = {
            "waiting_on": ", ".join(waits) or None,
            "wake_at": _iso(min(wakes)) if wakes else None,
            # The signal handler starts looking for a free occurrence here (a hint: every
            # occurrence below it is resolved already).
            "signals": dict(sorted(self.lowest_unconsumed.items())),
        }
        if position == self.published:
            return
        self.published = position
        self.ctx.set(STATE_KEY, {**position, "step": self.planner.next_seq}, serde=_JSON)

    # -- one leaf --------------------------------------------------------------------------------------

    def _process(self, leaf: engine.Leaf) -> _Process:
        if self.cancel_requested and not self.cancel_injected:
            self.cancel_injected = True  # cancellation replaces the next effect
            return self._ready(engine.Error(RunCancelledError(self.run_id)))
        effect = leaf.effect
        if isinstance(effect, engine.Call):
            return self._call(effect, leaf)
        if isinstance(effect, engine.Sleep):
            return self._sleep(effect, leaf)
        if isinstance(effect, engine.AwaitSignal):
            return self._signal(effect, leaf)
        if isinstance(effect, engine.Now):
            return self._now()
        if isinstance(effect, engine.Uuid4):
            return self._ready(self._roundtrip(self.ctx.uuid()))
        if isinstance(effect, engine.Random):
            return self._ready(self._roundtrip(self.ctx.random().random()))
        raise AdapterFault(
            f"coro_durable_restate does not know the effect {effect!r}; upgrade the adapter"
        )

    @staticmethod
    def _ready(outcome: engine.Outcome) -> _Process:
        return outcome
        yield  # pragma: no cover - makes this a generator

    @staticmethod
    def _roundtrip(value: Any) -> engine.Outcome:
        _, decoded = _codec.roundtrip(value)
        return engine.Value(decoded)

    def _now(self) -> _Process:
        _, seconds = yield _Wait((self.ctx.time(),), cancellable=False)
        return self._roundtrip(_dt.datetime.fromtimestamp(float(seconds), _dt.UTC))

    def _call(self, effect: engine.Call, leaf: engine.Leaf) -> _Process:
        policy = effect.retry
        key = f"{self.run_id}:{leaf.seq}"
        attempts = 0
        while True:
            attempts += 1
            action = functools.partial(self._attempt, effect, leaf, key, attempts)
            options: RunOptions[Any] = RunOptions(serde=_JSON)
            _, recorded = yield _Wait(
                (self.ctx.run_typed(leaf.name, action, options),), cancellable=False
            )
            if recorded[0] == "ok":
                try:
                    return engine.Value(_codec.decode(str(recorded[1])))
                except SerializationError as exc:
                    return engine.Error(exc)
            _, type_name, message, terminal = recorded
            if terminal or attempts >= policy.max_attempts or type_name in policy.non_retryable:
                return engine.Error(
                    engine.rebuild_error(
                        type_name, message, run_id=self.run_id, step=leaf.name, attempts=attempts
                    )
                )
            if self.cancel_requested and not self.cancel_injected:
                self.cancel_injected = True  # cancellation replaces the next attempt
                return engine.Error(RunCancelledError(self.run_id))
            delay = policy.delay(attempts)
            if delay > 0:
                self.waiting[leaf.seq] = f"retry of step {leaf.name}"
                try:
                    yield _Wait((self.ctx.sleep(timedelta(seconds=delay)),), cancellable=True)
                except _Cancelled:
                    return engine.Error(RunCancelledError(self.run_id))
                finally:
                    self.waiting.pop(leaf.seq, None)

    async def _attempt(self, effect: engine.Call, leaf: engine.Leaf, key: str, attempt: int) -> Any:
        """One attempt, run by ``ctx.run``: its outcome as a JSON value, never an exception
        (Restate's own retries are for attempts that never finished)."""
        with engine.step_context(key):
            job = _step_executor_call(self.executor, effect)
        try:
            if effect.timeout is None:
                value = await job
            else:
                done, _ = await asyncio.wait({job}, timeout=effect.timeout)
                if not done:
                    job.cancel()  # a sync step's thread cannot be stopped: it is abandoned
                    raise TimeoutError(f"attempt {attempt} timed out after {effect.timeout}s")
                value = job.result()
        except Exception as exc:
            type_name, message = engine.exception_info(exc)
            return ["error", type_name, message, False]
        try:
            text = _codec.encode(
                value,
                where=f"result of step {leaf.name} (seq {leaf.seq})",
                limit=self.max_payload_bytes,
            )
        except SerializationError as exc:  # terminal: retrying would not help
            return ["error", type(exc).__name__, str(exc), True]
        return ["ok", text]

    def _sleep(self, effect: engine.Sleep, leaf: engine.Leaf) -> _Process:
        if effect.until is None and not effect.seconds:
            return engine.Value(None)
        _, now_seconds = yield _Wait((self.ctx.time(),), cancellable=False)
        now = _dt.datetime.fromtimestamp(float(now_seconds), _dt.UTC)
        due = effect.until if effect.until is not None else now + timedelta(seconds=effect.seconds or 0.0)  # fmt: skip
        remaining = (due - now).total_seconds()
        if remaining <= 0:
            return engine.Value(None)
        self.waiting[leaf.seq] = f"timer until {_iso(due)}"
        self.wake_at[leaf.seq] = due
        try:
            yield _Wait((self.ctx.sleep(timedelta(seconds=remaining)),), cancellable=True)
        except _Cancelled:
            return engine.Error(RunCancelledError(self.run_id))
        finally:
            self.waiting.pop(leaf.seq, None)
            self.wake_at.pop(leaf.seq, None)
        return engine.Value(None)

    def _take_occurrence(self, name: str) -> int:
        free = self.free_occurrences.get(name)
        if free:
            return heapq.heappop(free)
        n = self.next_occurrence.get(name, 1)
        self.next_occurrence[name] = n + 1
        return n

    def _consumed(self, name: str, occurrence: int) -> None:
        done = self.consumed.setdefault(name, set())
        done.add(occurrence)
        low = self.lowest_unconsumed.get(name, 1)
        while low in done:
            done.discard(low)
            low += 1
        self.lowest_unconsumed[name] = low

    def _signal(self, effect: engine.AwaitSignal, leaf: engine.Leaf) -> _Process:
        name = effect.signal
        occurrence = self._take_occurrence(name)
        consumed = False
        try:
            futures: tuple[restate.RestateDurableFuture[Any], ...]
            promise = self.ctx.promise(promise_name(name, occurrence), serde=_JSON).value()
            if effect.timeout is None:
                futures = (promise,)
            else:
                _, now_seconds = yield _Wait((self.ctx.time(),), cancellable=False)
                now = _dt.datetime.fromtimestamp(float(now_seconds), _dt.UTC)
                self.wake_at[leaf.seq] = now + timedelta(seconds=effect.timeout)
                futures = (promise, self.ctx.sleep(timedelta(seconds=effect.timeout)))
            self.waiting[leaf.seq] = f"signal {name!r}"
            try:
                index, value = yield _Wait(futures, cancellable=True)
            except _Cancelled:
                return engine.Error(RunCancelledError(self.run_id))
            if index != 0:
                return engine.Error(
                    SignalTimeout(
                        f"no signal {name!r} arrived for run {self.run_id!r} within "
                        f"{effect.timeout}s"
                    )
                )
            consumed = True
            self._consumed(name, occurrence)
            return _signal_value(value)
        finally:
            self.waiting.pop(leaf.seq, None)
            self.wake_at.pop(leaf.seq, None)
            if not consumed:  # awaited again first by the next wait for this name
                heapq.heappush(self.free_occurrences.setdefault(name, []), occurrence)


def _signal_value(raw: Any) -> engine.Outcome:
    """A promise's value: ``{"payload": codec text}`` from rt.signal, or ``{"value": JSON}``
    from any other Restate client calling the ``signal`` handler."""
    if isinstance(raw, dict) and isinstance(raw.get("payload"), str):
        try:
            return engine.Value(_codec.decode(raw["payload"]))
        except SerializationError as exc:
            return engine.Error(exc)
    if isinstance(raw, dict) and "value" in raw:
        _, decoded = _codec.roundtrip(raw["value"])
        return engine.Value(decoded)
    return engine.Error(
        SerializationError(f"signal value {json.dumps(raw)[:200]} was not sent by coro_durable")
    )
