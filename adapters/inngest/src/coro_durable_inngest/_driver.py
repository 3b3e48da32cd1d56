"""The endpoint side: one Inngest function per workflow, replaying the coroutine on every request.

Inngest calls the function again from the top for every step (its model is full replay): each
request rebuilds the workflow coroutine and drives it with ``engine.drive``; effects whose steps
Inngest has memoized return at once, and the first new step ends the request (the SDK raises its
``ResponseInterrupt``, a BaseException that this driver lets pass). Effects are numbered the way
the embedded scheduler numbers them (``seq``: order of issue, a gather's sub-effects depth first),
so ``cd.idempotency_key()`` is ``"<run_id>:<seq>"`` on both, and mapped to steps:

    call          -> one step.run per attempt ("<step>#<seq>", "<step>#<seq> attempt 2", ...): the
                     attempt runs the function and returns its value or its failure as data, and
                     the cd.RetryPolicy is applied here (backoff = a durable wait), so only real
                     failures count as attempts. Inngest's own retries (the function's ``retries``)
                     re-run a step whose endpoint crashed or answered 5xx, with the same key
    sleep         -> a wait for the run's cancellation event with a whole-second timeout, then
                     step.sleep_until for the sub-second rest (a plain sleep when there is no API)
    await_signal  -> look at the run's mailbox (a step that asks the REST API for the run's signal
                     events), and if the signal has not arrived, step.wait_for_event on the
                     mailbox, then look again; see "signals" below
    gather        -> ctx.group.parallel over every leaf (Inngest runs the steps in parallel)
    now/uuid4/random -> a step returning the value (memoized, so replays see the same)

Signals. Inngest's wait_for_event only matches events that arrive *while* it waits; one sent
before is dropped. coro_durable promises that signals sent before the wait are delivered, in
order, so the run's mailbox is the source of truth: ``rt.signal`` sends an event named after the
run (``_api.mailbox_event``), and the k-th ``await_signal(name)`` takes the k-th signal of that name
in the order they were sent (each signal id once). A wait is only a wake-up: after it ends (event
or timeout) the mailbox is read again, so a signal that slipped in between a look and the wait's
registration is still found, at the latest when the wait's window (``signal_recheck``) ends.

Cancellation (``rt.cancel``, cooperative) is a ``$cancel`` event in the mailbox: waits wake on it,
and every call step looks for it before running, so RunCancelledError is raised at the pending
await (a running step attempt finishes first) and the workflow can clean up, as embedded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as _dt
import functools
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from random import SystemRandom
from typing import Any

import inngest

from coro_durable import engine
from coro_durable.engine import codec as _codec
from coro_durable.errors import (
    EffectNotAllowedError,
    RunCancelledError,
    SerializationError,
    SignalTimeout,
)

from ._api import CANCEL, START_EVENT, InngestApi, Signal, mailbox_event, order_signals
from ._check import NOT_OFFERED
from ._config import InngestSettings

__all__ = ["AdapterFault", "Position", "RunDriver", "WorkflowFailed", "make_function"]

FIRST_RECHECK = 2.0  # seconds of the first wait for a signal; doubles up to signal_recheck
_RANDOM = SystemRandom()


class AdapterFault(Exception):
    """A bug or an impossible state in the adapter: the request fails with 500 and Inngest
    retries it (the function's ``retries``), never failing the run on its own account."""


class WorkflowFailed(inngest.NonRetriableError):
    """The workflow raised: the Inngest run fails at once (no retries), named after the
    original exception type, so ``rt.result`` raises RunFailedError with the same type and
    message as on the embedded runtime."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message, quiet=True)
        self._type_name = type_name

    @property
    def name(self) -> str:
        return self._type_name


@dataclass(slots=True)
class Position:
    """Where a run stood when the last request this process served for it ended (describe)."""

    step: int
    running: bool
    waiting_on: str | None
    wake_at: _dt.datetime | None
    at: float = field(default_factory=time.time)


def _has_cancel(outcome: engine.Outcome) -> bool:
    if isinstance(outcome, engine.Error):
        return isinstance(outcome.error, RunCancelledError)
    value = outcome.value
    return isinstance(value, list) and any(isinstance(v, RunCancelledError) for v in value)


def _iso(when: _dt.datetime) -> str:
    return when.astimezone(_dt.UTC).isoformat(timespec="seconds")


def _at(seconds: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC)


def _quote(text: str) -> str:
    """A CEL string literal."""
    return json.dumps(text)


class RunDriver:
    """One request's replay of one run (rebuilt for every request Inngest sends)."""

    def __init__(
        self,
        ctx: inngest.Context,
        workflow: str,
        settings: InngestSettings,
        api: InngestApi | None,
        executor: concurrent.futures.Executor | None,
        max_payload_bytes: int = _codec.DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.ctx = ctx
        self.step = ctx.step
        self.workflow = workflow
        self.settings = settings
        self.api = api
        self.executor = executor
        self.max_payload_bytes = max_payload_bytes
        data = ctx.event.data
        self.run_id = str(data.get("run_id") or ctx.run_id)
        self.input_text = str(data.get("input") or '{"args":[],"kwargs":{}}')
        started = ctx.event.ts / 1000 if ctx.event.ts else None
        # Mailbox look-ups start a little before the run's start event (clock skew).
        self.since = _at(started - 300) if started else None
        self.mailbox = mailbox_event(self.run_id)
        self.signal_index: dict[str, int] = {}
        self.planner = engine.Planner(limit=self.max_payload_bytes, check=self._check_leaf)
        self.cancel_delivered = False
        self.pending: dict[int, tuple[str | None, _dt.datetime | None]] = {}
        self.finished = False

    # -- the run ----------------------------------------------------------------------------------------

    async def run(self) -> str:
        try:
            inputs = _codec.decode(self.input_text)
        except SerializationError as exc:
            raise WorkflowFailed(type(exc).__name__, str(exc)) from None
        if not isinstance(inputs, dict):
            inputs = {"args": inputs}
        try:
            fn = engine.lookup(self.workflow)
        except LookupError as exc:
            raise AdapterFault(str(exc)) from None  # another endpoint may know it: retried
        coro = fn(*inputs.get("args", ()), **inputs.get("kwargs", {}))
        try:
            value = await engine.drive(coro, self._resolve)
        except AdapterFault:
            raise
        except (Exception, RunCancelledError) as exc:  # RunCancelledError is a BaseException
            type_name, message = engine.exception_info(exc)
            raise WorkflowFailed(type_name, message) from None
        try:
            text = _codec.encode(value, where=f"result of run {self.run_id!r}")
        except SerializationError as exc:
            raise WorkflowFailed(type(exc).__name__, str(exc)) from None
        self.finished = True
        return text

    def position(self) -> Position | None:
        """Where this request left the run (None when the run ended in it)."""
        if self.finished or not self.pending:
            return None
        labels = [self.pending[s] for s in sorted(self.pending)]
        running = any(label is None for label, _ in labels)
        waits = [label for label, _ in labels if label is not None]
        wakes = [wake for _, wake in labels if wake is not None]
        return Position(
            step=self.planner.next_seq,
            running=running,
            waiting_on=None if running else ", ".join(waits) or None,
            wake_at=min(wakes) if wakes and not running else None,
        )

    # -- planning: seq numbers as the embedded scheduler gives them --------------------------------------

    async def _resolve(self, effect: engine.Effect) -> engine.Outcome:
        try:
            planned = self.planner.plan(effect)
            if isinstance(planned, engine.Node):
                outcome = await self._run_gather(planned)
            else:
                assert not isinstance(planned, engine.Race)  # cd.first is refused by _check_leaf
                leaf = planned
                outcome = await self._run_leaf(leaf)
                if (
                    isinstance(effect, engine.AwaitSignal)
                    and isinstance(outcome, engine.Error)
                    and isinstance(outcome.error, SignalTimeout)
                    and self.signal_index.get(effect.signal) == leaf.data + 1
                ):
                    self.signal_index[effect.signal] = leaf.data  # nothing taken: release it
        except (SerializationError, EffectNotAllowedError) as exc:
            return engine.Error(exc)  # raised at the await, like unjournalable arguments
        if _has_cancel(outcome):
            self.cancel_delivered = True  # later effects (cleanup steps) run normally
        return outcome

    def _check_leaf(self, leaf: engine.Leaf) -> None:
        """Refuse what Inngest cannot express (the planner then takes no seq); name an unnamed
        effect by its kind (it is part of the Inngest step id), and number each signal wait
        among the waits for that signal name (``leaf.data``: 0 takes the first signal)."""
        s = self.settings
        effect = leaf.effect
        engine.refuse_effect(effect, NOT_OFFERED, "Inngest")
        if isinstance(effect, engine.Call):
            if effect.timeout is not None and effect.timeout > s.max_step_timeout:
                raise EffectNotAllowedError(
                    f"step {effect.name} has timeout={effect.timeout}s but an Inngest step may run "
                    f"at most {s.max_step_timeout:g}s (max_step_timeout); split the work"
                )
        elif isinstance(effect, engine.Sleep) and effect.seconds is not None:
            if effect.seconds > s.max_sleep:
                raise EffectNotAllowedError(
                    f"cd.sleep({effect.seconds}) is longer than Inngest's longest sleep "
                    f"({s.max_sleep:g}s, max_sleep); sleep in shorter pieces"
                )
        elif (
            isinstance(effect, engine.Sleep)
            and effect.until is not None
            and (effect.until - _dt.datetime.now(_dt.UTC)).total_seconds() > s.max_sleep
        ):
            raise EffectNotAllowedError(
                f"cd.sleep_until({effect.until.isoformat()}) is further away than Inngest's "
                f"longest sleep ({s.max_sleep:g}s, max_sleep)"
            )
        leaf.name = leaf.name or effect.kind
        if isinstance(effect, engine.AwaitSignal):
            leaf.data = self.signal_index.get(effect.signal, 0)
            self.signal_index[effect.signal] = leaf.data + 1

    async def _run_gather(self, node: engine.Node) -> engine.Outcome:
        leaves = list(engine.leaves(node))
        outcomes: dict[int, engine.Outcome] = {}
        if len(leaves) == 1:
            outcomes[leaves[0].seq] = await self._run_leaf(leaves[0])
        elif leaves:
            calls: tuple[Callable[[], Awaitable[engine.Outcome]], ...] = tuple(
                functools.partial(self._run_leaf, leaf) for leaf in leaves
            )
            results = await self.ctx.group.parallel(calls)
            if len(results) != len(leaves):
                raise AdapterFault(
                    f"run {self.run_id}: Inngest targeted a step this replay of the gather at seq "
                    f"{leaves[0].seq} does not reach (the workflow's code changed?)"
                )
            outcomes = {leaf.seq: result for leaf, result in zip(leaves, results, strict=True)}
        return engine.gather_outcome(node, outcomes)

    # -- leaves -----------------------------------------------------------------------------------------

    async def _tracked(
        self,
        leaf: engine.Leaf,
        label: str | None,
        wake: _dt.datetime | None,
        step: Awaitable[Any],
    ) -> Any:
        """Await one SDK step, noting what the run waits on if the request ends there."""
        self.pending[leaf.seq] = (label, wake)
        result = await step
        del self.pending[leaf.seq]
        return result

    async def _value_step(self, leaf: engine.Leaf, produce: Callable[[], Any]) -> engine.Outcome:
        async def run() -> dict[str, Any]:
            return {"v": _codec.encode(produce(), where=leaf.name)}

        out = await self._tracked(leaf, None, None, self.step.run(f"{leaf.name}#{leaf.seq}", run))
        return engine.Value(_codec.decode(out["v"]))

    async def _run_leaf(self, leaf: engine.Leaf) -> engine.Outcome:
        effect = leaf.effect
        if isinstance(effect, engine.Call):
            return await self._run_call(effect, leaf)
        if isinstance(effect, engine.Sleep):
            return await self._run_sleep(effect, leaf)
        if isinstance(effect, engine.AwaitSignal):
            return await self._run_signal(effect, leaf)
        if isinstance(effect, engine.Now):
            return await self._value_step(leaf, lambda: _dt.datetime.now(_dt.UTC))
        if isinstance(effect, engine.Uuid4):
            return await self._value_step(leaf, uuid.uuid4)
        if isinstance(effect, engine.Random):
            return await self._value_step(leaf, _RANDOM.random)
        raise AdapterFault(f"coro_durable_inngest does not know the effect {effect!r}")

    # -- call -----------------------------------------------------------------------------------------

    async def _run_call(self, effect: engine.Call, leaf: engine.Leaf) -> engine.Outcome:
        policy = effect.retry
        attempt = 0
        while True:
            attempt += 1
            step_id = f"{leaf.name}#{leaf.seq}" + (f" attempt {attempt}" if attempt > 1 else "")
            out = await self._tracked(
                leaf,
                None,
                None,
                self.step.run(step_id, functools.partial(self._attempt, effect, leaf, attempt)),
            )
            if "v" in out:
                return engine.Value(_codec.decode(out["v"]))
            if "x" in out and not self.cancel_delivered:
                return engine.Error(RunCancelledError(self.run_id))
            if "x" in out:  # cancellation seen by an attempt planned before it was delivered
                continue
            type_name, message, terminal = out["f"]
            if terminal or attempt >= policy.max_attempts or type_name in policy.non_retryable:
                return engine.Error(
                    engine.rebuild_error(
                        type_name, message, run_id=self.run_id, step=leaf.name, attempts=attempt
                    )
                )
            delay = policy.delay(attempt)
            if delay > 0:
                cancelled = await self._pause(
                    leaf, f"{step_id} backoff", delay, f"retry of step {leaf.name}"
                )
                if cancelled is not None:
                    return cancelled

    async def _attempt(
        self, effect: engine.Call, leaf: engine.Leaf, attempt: int
    ) -> dict[str, Any]:
        """The step itself: runs in whichever endpoint process Inngest called, once per attempt
        (again, with the same key, when an endpoint died while running it)."""
        if self.api is not None and not self.cancel_delivered:
            signals = await self.api.mailbox(self.run_id, self.since)
            if any(s["name"] == CANCEL for s in signals):
                return {"x": 1}  # cancellation replaces this attempt
        loop = asyncio.get_running_loop()
        with engine.step_context(f"{self.run_id}:{leaf.seq}"):
            if effect.is_async:
                job: asyncio.Future[Any] = asyncio.ensure_future(
                    effect.fn(*effect.args, **effect.kwargs)
                )
            else:
                ctx = contextvars.copy_context()
                job = loop.run_in_executor(
                    self.executor,
                    ctx.run,
                    functools.partial(effect.fn, *effect.args, **effect.kwargs),
                )
        try:
            if effect.timeout is None:
                value = await job
            else:
                value = await asyncio.wait_for(job, effect.timeout)
        except Exception as exc:
            type_name, message = engine.exception_info(exc)
            if isinstance(exc, TimeoutError) and effect.timeout is not None and not message:
                message = f"attempt {attempt} timed out after {effect.timeout}s"
            return {"f": [type_name, message, False]}
        try:
            text = _codec.encode(
                value,
                where=f"result of step {leaf.name} (seq {leaf.seq})",
                limit=self.max_payload_bytes,
            )
        except SerializationError as exc:  # terminal: retrying would not help
            return {"f": [type(exc).__name__, str(exc), True]}
        return {"v": text}

    # -- sleep ----------------------------------------------------------------------------------------

    def _cancel_if(self) -> str:
        return f"async.data.run_id == {_quote(self.run_id)} && async.data.name == {_quote(CANCEL)}"

    async def _pause(
        self,
        leaf: engine.Leaf,
        step_id: str,
        seconds: float,
        label: str,
        until: _dt.datetime | None = None,
    ) -> engine.Outcome | None:
        """A durable wait of ``seconds`` (ending at ``until`` when given) that a cooperative
        cancellation interrupts; returns RunCancelledError's outcome if it did."""
        due = until or _at(time.time() + seconds)
        whole = math.floor(seconds)
        if self.api is not None and not self.cancel_delivered and whole >= 1:
            event = await self._tracked(
                leaf,
                label,
                due,
                self.step.wait_for_event(
                    step_id,
                    event=self.mailbox,
                    if_exp=self._cancel_if(),
                    timeout=_dt.timedelta(seconds=whole),
                ),
            )
            if event is not None:
                return engine.Error(RunCancelledError(self.run_id))
            rest = seconds - whole
        else:
            rest = seconds
        if until is not None or rest > 0.0005:
            target = until or _at(time.time() + rest)
            await self._tracked(leaf, label, due, self.step.sleep_until(f"{step_id} rest", target))
        return None

    async def _run_sleep(self, effect: engine.Sleep, leaf: engine.Leaf) -> engine.Outcome:
        base = f"sleep#{leaf.seq}"
        if effect.until is not None:
            # The start is recorded so that every replay splits the wait the same way.

            async def clock() -> float:
                return time.time()

            started = await self._tracked(leaf, None, None, self.step.run(f"{base} start", clock))
            seconds = (effect.until - _at(float(started))).total_seconds()
            if seconds <= 0:
                return engine.Value(None)
            label = f"timer until {_iso(effect.until)}"
            cancelled = await self._pause(leaf, base, seconds, label, until=effect.until)
        else:
            seconds = float(effect.seconds or 0.0)
            if seconds <= 0:
                return engine.Value(None)
            label = f"timer until {_iso(_at(time.time() + seconds))}"
            cancelled = await self._pause(leaf, base, seconds, label)
        return cancelled or engine.Value(None)

    # -- signals ----------------------------------------------------------------------------------------

    async def _look(self, name: str, index: int, seen: list[dict[str, Any]]) -> dict[str, Any]:
        """The step that reads the run's mailbox: the index-th signal ``name``, if it is there."""
        assert self.api is not None
        signals = await self.api.mailbox(self.run_id, self.since)
        known = {s["signal_id"] for s in signals}
        extra: list[Signal] = [
            s for s in order_signals(seen, self.run_id) if s["signal_id"] not in known
        ]
        signals = sorted([*signals, *extra], key=lambda s: (s["sent_ns"], s["signal_id"]))
        mine = [s for s in signals if s["name"] == name]
        found = mine[index] if len(mine) > index else None
        return {
            "now": time.time(),
            "cancel": any(s["name"] == CANCEL for s in signals),
            "found": found is not None,
            "payload": found["payload"] if found is not None else None,
        }

    async def _run_signal(self, effect: engine.AwaitSignal, leaf: engine.Leaf) -> engine.Outcome:
        name, base = effect.signal, f"signal {effect.signal}#{leaf.seq}"
        label = f"signal {name!r}"
        condition = f"async.data.run_id == {_quote(self.run_id)} && "
        if self.api is None:  # no REST API (the SDK's mocked mode): plain waits
            condition += f"async.data.name == {_quote(name)}"
        else:
            condition += (
                f"(async.data.name == {_quote(name)} || async.data.name == {_quote(CANCEL)})"
            )
        deadline: float | None = None
        seen: list[dict[str, Any]] = []
        rounds = 0
        while True:
            if self.api is not None:
                look = await self._tracked(
                    leaf,
                    None,
                    None,
                    self.step.run(
                        f"{base} look {rounds}",
                        functools.partial(self._look, name, leaf.data, list(seen)),
                    ),
                )
                if look["cancel"] and not self.cancel_delivered:
                    return engine.Error(RunCancelledError(self.run_id))
                if look["found"]:
                    return engine.Value(_codec.decode(str(look["payload"])))
                now = float(look["now"])
            else:
                now = time.time()  # only used for the wait's length, never replayed
            if effect.timeout is not None:
                if deadline is None:
                    deadline = now + effect.timeout
                remaining = deadline - now
                if remaining <= 0:
                    return engine.Error(
                        SignalTimeout(
                            f"no signal {name!r} arrived for run {self.run_id!r} within "
                            f"{effect.timeout}s"
                        )
                    )
            else:
                remaining = math.inf
            window = min(FIRST_RECHECK * 2**rounds, self.settings.signal_recheck, remaining)
            wake = _at(deadline) if deadline is not None else None
            if window < 1 and self.api is not None:
                # Inngest waits last whole seconds: sleep to the deadline, then look again.
                await self._tracked(
                    leaf,
                    label,
                    wake,
                    self.step.sleep_until(f"{base} pause {rounds}", _at(now + window)),
                )
            else:
                event = await self._tracked(
                    leaf,
                    label,
                    wake,
                    self.step.wait_for_event(
                        f"{base} wait {rounds}",
                        event=self.mailbox,
                        if_exp=condition,
                        timeout=_dt.timedelta(seconds=max(1, math.ceil(window))),
                    ),
                )
                if event is not None:
                    if self.api is None:
                        return engine.Value(_codec.decode(str(event.data.get("payload"))))
                    seen.append({"data": dict(event.data)})
                elif self.api is None and effect.timeout is not None:
                    return engine.Error(
                        SignalTimeout(
                            f"no signal {name!r} arrived for run {self.run_id!r} within "
                            f"{effect.timeout}s"
                        )
                    )
            rounds += 1


# -- the Inngest function of a workflow -----------------------------------------------------------------


def make_function(
    client: inngest.Inngest,
    workflow: str,
    settings: InngestSettings,
    api: InngestApi | None,
    *,
    executor: concurrent.futures.Executor | None = None,
    positions: dict[str, Position] | None = None,
    max_payload_bytes: int = _codec.DEFAULT_MAX_PAYLOAD_BYTES,
) -> inngest.Function[Any]:
    """The Inngest function that runs ``workflow``: triggered by ``coro_durable/start`` events
    whose ``data.workflow`` names it, idempotent on ``data.run_id``. ``api`` is None when there is
    no REST API (the SDK's mocked mode): signals then use plain waits and cancellation is not
    looked for."""

    @client.create_function(
        fn_id=workflow,
        name=workflow,
        trigger=inngest.TriggerEvent(
            event=START_EVENT, expression=f"event.data.workflow == {_quote(workflow)}"
        ),
        retries=settings.retries,
        idempotency="event.data.run_id",
    )
    async def handler(ctx: inngest.Context) -> str:
        driver = RunDriver(ctx, workflow, settings, api, executor, max_payload_bytes)
        try:
            return await driver.run()
        finally:
            if positions is not None:
                where = driver.position()
                if where is None:
                    positions.pop(driver.run_id, None)
                else:
                    positions[driver.run_id] = where

    return handler
