"""The workflow side: drives the user's coroutine inside a Temporal workflow with ``engine.drive``.

One :class:`RunDriver` lives in each Temporal workflow instance (see ``_workflow``). It numbers
effects the way the embedded scheduler does (``seq``: order of issue, a gather's sub-effects depth
first), so ``cd.idempotency_key()`` is ``"<workflow id>:<seq>"`` on both, and maps each effect:

    call          -> an activity per attempt (type = the step's name), run by ``StepRunner``;
                     the step's cd.RetryPolicy is applied here with durable timers between
                     attempts, so only real failures count as attempts (a worker that dies
                     mid-step makes Temporal retry the activity, as an in-flight step that runs
                     again with the same key, never as a failed attempt)
    sleep         -> a durable timer (workflow.sleep)
    await_signal  -> a per-name buffer filled by a dynamic signal handler, awaited with
                     workflow.wait_condition (timeout -> cd.SignalTimeout)
    gather        -> every leaf as its own workflow task, waited for all; the first failure in
                     argument order is raised (or returned in place with return_exceptions)
    now/uuid4/random -> workflow.now(), workflow.uuid4(), workflow.random()

Cancellation (``rt.cancel``) arrives as asyncio.CancelledError in the workflow; it is delivered
to the workflow as ``RunCancelledError`` at the pending await, as on the embedded runtime: a
pending timer, signal wait or retry backoff is interrupted, while a step attempt that is running
finishes first and the error comes at the next effect.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from coro_durable import engine
from coro_durable.engine import codec as _codec
from coro_durable.errors import (
    EffectNotAllowedError,
    RunCancelledError,
    SerializationError,
    SignalTimeout,
)

from ._steps import NOT_OFFERED, dispatch_ref

__all__ = [
    "OPTIONS_MARK",
    "QUERY_DESCRIBE",
    "QUERY_SIGNAL_SEEN",
    "RunDriver",
    "SIGNAL_ID",
    "SIGNAL_PAYLOAD",
]

QUERY_DESCRIBE = "coro_durable.describe"
QUERY_SIGNAL_SEEN = "coro_durable.signal_seen"
OPTIONS_MARK = "coro_durable"  # marks the options argument of runs started by TemporalRuntime
SIGNAL_ID = "$cd_signal"  # a signal sent by rt.signal is {SIGNAL_ID: id, SIGNAL_PAYLOAD: text}
SIGNAL_PAYLOAD = "payload"

# Temporal's own retries cover only infrastructure failures (a dead worker's heartbeat timeout,
# a worker shutting down): the step then runs again with the same key. Without a limit, like an
# embedded run that resumes after any number of crashes.
INFRA_RETRY = TemporalRetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
TIMEOUT_GRACE = 10.0  # the server-side start_to_close backstop of a step with timeout=


class AdapterFault(Exception):
    """A bug or an impossible state in the adapter: fails the workflow *task* (Temporal retries
    it, as the embedded runtime retries a crashed activation), never the run."""


def _iso(when: _dt.datetime) -> str:
    return when.astimezone(_dt.UTC).isoformat(timespec="seconds")


class RunDriver:
    """The state of one run inside its Temporal workflow instance (rebuilt on every replay)."""

    def __init__(self) -> None:
        self.signals: dict[str, deque[Any]] = {}
        self.signal_ids: set[str] = set()
        self.planner = engine.Planner(check=self._check_leaf)  # numbers effects as embedded
        self.cancel_requested = False
        self.cancel_injected = False
        self.cancelled_by_us: set[int] = set()
        self.waiting: dict[int, str] = {}  # seq -> what it waits on (describe)
        self.wake_at: dict[int, _dt.datetime] = {}
        self.running: dict[int, str] = {}  # seq -> step attempt in flight
        self.inputs: dict[str, Any] = {}
        self.options: dict[str, Any] = {}
        self.run_id = ""

    # -- entry points called by the workflow class ----------------------------------------------------

    async def run(self, args: Sequence[RawValue]) -> str:
        info = workflow.info()
        self.run_id = info.workflow_id
        converter = workflow.payload_converter()
        values = [converter.from_payload(a.payload) for a in args]
        if (
            len(values) == 2
            and isinstance(values[0], str)
            and isinstance(values[1], dict)
            and values[1].get(OPTIONS_MARK)
        ):
            # Started by TemporalRuntime.start: the codec's text of the inputs, and options.
            self.options = values[1]
            try:
                payload = _codec.decode(values[0])
            except SerializationError as exc:
                raise ApplicationError(
                    str(exc), type=type(exc).__name__, non_retryable=True
                ) from None
            self.inputs = payload if isinstance(payload, dict) else {"args": payload}
        else:
            # Started by another Temporal client (`temporal workflow start --input ...`): the
            # JSON arguments are the workflow's positional arguments.
            self.inputs = {"args": values, "kwargs": {}}
        try:
            fn = engine.lookup(info.workflow_type)
        except LookupError as exc:
            # Like the embedded runtime's quarantine: the workflow task fails and Temporal
            # retries it until a worker that knows this workflow picks it up.
            raise AdapterFault(str(exc)) from None
        coro = fn(*self.inputs.get("args", ()), **self.inputs.get("kwargs", {}))
        try:
            value = await engine.drive(coro, self._resolve_safely)
        except (AdapterFault, workflow.NondeterminismError):
            # Temporal's own verdicts (code that diverged from the history, a restricted call
            # caught by the sandbox) fail the workflow task: the run waits, resumable once the
            # code is fixed, as the embedded runtime quarantines a diverged run.
            raise
        except RunCancelledError as exc:
            if self.cancel_requested:
                raise asyncio.CancelledError() from None  # Temporal records it as cancelled
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from None
        except Exception as exc:
            type_name, message = engine.exception_info(exc)
            raise ApplicationError(message, type=type_name, non_retryable=True) from None
        try:
            return _codec.encode(
                value,
                where=f"result of run {self.run_id!r}",
                limit=_codec.DEFAULT_MAX_PAYLOAD_BYTES,
            )
        except SerializationError as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from None

    def on_signal(self, name: str, args: Sequence[RawValue]) -> None:
        converter = workflow.payload_converter()
        raw = converter.from_payload(args[0].payload) if args else None
        if isinstance(raw, dict) and SIGNAL_ID in raw and SIGNAL_PAYLOAD in raw:
            signal_id = str(raw[SIGNAL_ID])
            if signal_id in self.signal_ids:
                return  # delivered before: at most once per signal id
            self.signal_ids.add(signal_id)
            try:
                value = _codec.decode(str(raw[SIGNAL_PAYLOAD]))
            except SerializationError:
                workflow.logger.warning("dropping signal %r: undecodable payload", name)
                return
        else:
            value = raw  # sent by other Temporal clients (e.g. `temporal workflow signal`)
        self.signals.setdefault(name, deque()).append(value)

    def signal_seen(self, signal_id: str) -> bool:
        return signal_id in self.signal_ids

    def describe(self) -> dict[str, Any]:
        info = workflow.info()
        waiting = [self.waiting[s] for s in sorted(self.waiting)]
        wakes = list(self.wake_at.values())
        return {
            "workflow": info.workflow_type,
            "status": "running" if self.running or not waiting else "waiting",
            "step": self.planner.next_seq,
            "waiting_on": ", ".join(waiting) or None,
            "wake_at": _iso(min(wakes)) if wakes else None,
            "running": [self.running[s] for s in sorted(self.running)],
            "inputs": self.inputs,
        }

    # -- resolving effects ------------------------------------------------------------------------------

    async def _resolve_safely(self, effect: engine.Effect) -> engine.Outcome:
        try:
            return await self._resolve(effect)
        except (AdapterFault, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise AdapterFault(f"resolving {effect.describe()} failed: {exc!r}") from exc

    async def _resolve(self, effect: engine.Effect) -> engine.Outcome:
        try:
            planned = self.planner.plan(effect)
        except (SerializationError, EffectNotAllowedError) as exc:
            return engine.Error(exc)  # raised at the await, like unjournalable arguments
        if isinstance(planned, engine.Node):
            return await self._run_gather(planned)
        assert not isinstance(planned, engine.Race)  # cd.first is refused by _check_leaf
        return await self._run_leaf(planned, main=True)

    @staticmethod
    def _check_leaf(leaf: engine.Leaf) -> None:
        """A step must be findable by workers: ``leaf.data`` is its (module, qualified name);
        EffectNotAllowedError (the planner then takes no seq) when it has none."""
        engine.refuse_effect(leaf.effect, NOT_OFFERED, "Temporal")
        if isinstance(leaf.effect, engine.Call):
            leaf.data = dispatch_ref(leaf.effect.fn)

    async def _run_gather(self, node: engine.Node) -> engine.Outcome:
        leaves = list(engine.leaves(node))
        outcomes: dict[int, engine.Outcome] = {}
        if len(leaves) == 1:
            outcomes[leaves[0].seq] = await self._run_leaf(leaves[0], main=True)
        elif leaves:
            tasks = {leaf.seq: asyncio.ensure_future(self._run_leaf(leaf)) for leaf in leaves}
            pending = list(tasks.values())
            while pending:
                try:
                    _, pending = await workflow.wait(pending)
                except asyncio.CancelledError:
                    if not self._accept_cancel():
                        raise
                    # Waits end with RunCancelledError; running step attempts finish first.
                    for leaf in leaves:
                        task = tasks[leaf.seq]
                        if not isinstance(leaf.effect, engine.Call) and not task.done():
                            self.cancelled_by_us.add(leaf.seq)
                            task.cancel()
            for seq, task in tasks.items():
                outcomes[seq] = task.result()
        return engine.gather_outcome(node, outcomes)

    def _accept_cancel(self) -> bool:
        """Is this CancelledError the run's cancellation (rt.cancel), seen for the first time?
        Anything else (an eviction from the worker's cache) must propagate."""
        if self.cancel_requested or workflow.cancellation_reason() is None:
            return False
        self.cancel_requested = True
        return True

    def _cancel_outcome(self, leaf: engine.Leaf, main: bool) -> engine.Outcome | None:
        """On CancelledError in a wait: the RunCancelledError outcome, or None to re-raise."""
        if leaf.seq in self.cancelled_by_us or (main and self._accept_cancel()):
            self.cancel_injected = True
            return engine.Error(RunCancelledError(self.run_id))
        return None

    async def _run_leaf(self, leaf: engine.Leaf, main: bool = False) -> engine.Outcome:
        if self.cancel_requested and not self.cancel_injected:
            self.cancel_injected = True
            return engine.Error(RunCancelledError(self.run_id))
        effect = leaf.effect
        if isinstance(effect, engine.Call):
            return await self._run_call(effect, leaf, main)
        if isinstance(effect, engine.Sleep):
            return await self._run_sleep(effect, leaf, main)
        if isinstance(effect, engine.AwaitSignal):
            return await self._run_signal(effect, leaf, main)
        if isinstance(effect, engine.Now):
            value: Any = workflow.now().astimezone(_dt.UTC)
        elif isinstance(effect, engine.Uuid4):
            value = workflow.uuid4()
        elif isinstance(effect, engine.Random):
            value = workflow.random().random()
        else:
            raise AdapterFault(
                f"coro_durable_temporal does not know the effect {effect!r}; upgrade the adapter"
            )
        _, decoded = _codec.roundtrip(value)
        return engine.Value(decoded)

    # -- call ---------------------------------------------------------------------------------------------

    async def _run_call(self, effect: engine.Call, leaf: engine.Leaf, main: bool) -> engine.Outcome:
        policy = effect.retry
        attempts = 0
        while True:
            attempts += 1
            failure = await self._attempt(effect, leaf, attempts, main)
            if not isinstance(failure, tuple):
                return failure
            type_name, message, terminal = failure
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
                due = workflow.now() + timedelta(seconds=delay)
                self.waiting[leaf.seq] = f"retry of step {leaf.name}"
                self.wake_at[leaf.seq] = due
                try:
                    await workflow.sleep(delay)
                except asyncio.CancelledError:
                    outcome = self._cancel_outcome(leaf, main)
                    if outcome is None:
                        raise
                    return outcome
                finally:
                    self.waiting.pop(leaf.seq, None)
                    self.wake_at.pop(leaf.seq, None)

    async def _attempt(
        self, effect: engine.Call, leaf: engine.Leaf, attempt: int, main: bool
    ) -> engine.Outcome | tuple[str, str, bool]:
        """One attempt: its outcome, or (type name, message, terminal) when it failed."""
        assert leaf.data is not None and leaf.args is not None
        module, qualname = leaf.data
        timeout = effect.timeout
        request = {
            "module": module,
            "qualname": qualname,
            "args": leaf.args,
            "key": f"{self.run_id}:{leaf.seq}",
            "seq": leaf.seq,
            "attempt": attempt,
            "timeout": timeout,
        }
        heartbeat = float(self.options.get("heartbeat_timeout", 30.0))
        limit = (
            timeout + TIMEOUT_GRACE
            if timeout is not None
            else float(self.options.get("step_timeout", 86400.0))
        )
        handle = workflow.start_activity(
            leaf.name,
            request,
            start_to_close_timeout=timedelta(seconds=limit),
            heartbeat_timeout=timedelta(seconds=heartbeat),
            retry_policy=INFRA_RETRY,
        )
        self.running[leaf.seq] = leaf.name
        try:
            while True:
                try:
                    text = await asyncio.shield(handle)
                    break
                except asyncio.CancelledError:
                    # The run was cancelled while this attempt runs: like the embedded runtime,
                    # let the attempt finish (its result is recorded) and deliver
                    # RunCancelledError at the next effect. Anything else propagates.
                    if leaf.seq in self.cancelled_by_us or (main and self._accept_cancel()):
                        continue
                    raise
                except ActivityError as err:
                    return self._failure(err)
        finally:
            self.running.pop(leaf.seq, None)
        try:
            return engine.Value(_codec.decode(str(text)))
        except SerializationError as exc:
            return type(exc).__name__, str(exc), True

    @staticmethod
    def _failure(err: ActivityError) -> tuple[str, str, bool]:
        cause = err.cause
        if isinstance(cause, ApplicationError):
            type_name = cause.type or "Error"
            return (
                type_name,
                cause.message,
                type_name in engine.UNJOURNALABLE,
            )
        if isinstance(cause, TemporalTimeoutError):
            return "TimeoutError", f"Temporal activity timeout ({cause.type})", False
        if cause is not None:
            return type(cause).__name__, str(cause), False
        return "ActivityError", str(err), False

    # -- sleep and signals ----------------------------------------------------------------------------

    async def _run_sleep(
        self, effect: engine.Sleep, leaf: engine.Leaf, main: bool
    ) -> engine.Outcome:
        now = workflow.now()
        if effect.until is not None:
            due = effect.until
            seconds = (effect.until - now).total_seconds()
        else:
            seconds = float(effect.seconds or 0.0)
            due = now + timedelta(seconds=seconds)
        if seconds <= 0:
            return engine.Value(None)
        self.waiting[leaf.seq] = f"timer until {_iso(due)}"
        self.wake_at[leaf.seq] = due
        try:
            await workflow.sleep(seconds)
        except asyncio.CancelledError:
            outcome = self._cancel_outcome(leaf, main)
            if outcome is None:
                raise
            return outcome
        finally:
            self.waiting.pop(leaf.seq, None)
            self.wake_at.pop(leaf.seq, None)
        return engine.Value(None)

    async def _run_signal(
        self, effect: engine.AwaitSignal, leaf: engine.Leaf, main: bool
    ) -> engine.Outcome:
        queue = self.signals.setdefault(effect.signal, deque())
        if queue:
            return engine.Value(queue.popleft())
        timeout = effect.timeout
        deadline = None if timeout is None else workflow.now() + timedelta(seconds=timeout)
        self.waiting[leaf.seq] = f"signal {effect.signal!r}"
        if deadline is not None:
            self.wake_at[leaf.seq] = deadline
        try:
            while not queue:
                remaining = None
                if deadline is not None:
                    remaining = (deadline - workflow.now()).total_seconds()
                    if remaining <= 0:
                        raise TimeoutError()
                await workflow.wait_condition(lambda: bool(queue), timeout=remaining)
        except TimeoutError:
            return engine.Error(
                SignalTimeout(
                    f"no signal {effect.signal!r} arrived for run {self.run_id!r} within "
                    f"{effect.timeout}s"
                )
            )
        except asyncio.CancelledError:
            outcome = self._cancel_outcome(leaf, main)
            if outcome is None:
                raise
            return outcome
        finally:
            self.waiting.pop(leaf.seq, None)
            self.wake_at.pop(leaf.seq, None)
        return engine.Value(queue.popleft())
