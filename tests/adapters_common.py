"""Example workflows and scenarios shared by the cross-engine tests: embedded runtime vs adapters.

Every scenario is ``async def scenario(rt, run_id) -> dict``: it drives one run through the
public Runtime API only (start, signal, result, describe, cancel), so the same function runs on
``cd.Runtime("sqlite:///...")`` and on ``cd.Runtime("temporal://...")`` (or restate://,
inngest://), and the test compares what each returns. Values that legitimately differ between
runs (the run id inside idempotency keys and messages, clock readings, random draws) are
normalised: run ids become ``<run>``, readings are reduced to their types and ranges.

The module doubles as a worker process for the crash tests:

    python -c "import adapters_common; adapters_common.worker_main()" URL

serves every workflow below on URL (with this directory on PYTHONPATH) until it is killed;
``record`` steps log each invocation to the SQLite file in $CD_ADAPTER_SINK.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib.util
import os
import sqlite3
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import coro_durable as cd
from coro_durable import errors

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ai_pipeline.py"
SINK_ENV = "CD_ADAPTER_SINK"

# Process-wide bookkeeping of the steps below (the engines' workers run in this process).
ATTEMPTS: Counter[str] = Counter()  # idempotency key -> attempts made
CLEANED: list[str] = []  # run ids whose cancellation cleanup step ran
STARTED: list[str] = []  # idempotency keys of `held` steps that have started


def load_ai_pipeline() -> ModuleType:
    """examples/ai_pipeline.py as module ``ai_pipeline`` (its @cd.workflow ``research``)."""
    module = sys.modules.get("ai_pipeline")
    if module is None:
        spec = importlib.util.spec_from_file_location("ai_pipeline", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["ai_pipeline"] = module
        spec.loader.exec_module(module)
    return module


# == steps ==========================================================================================


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


def greet(name: str, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


async def shout(text: str) -> str:
    await asyncio.sleep(0)
    return text.upper()


def whoami() -> str:
    return cd.idempotency_key()


def double(x: int) -> int:
    return 2 * x


def make_point(x: int) -> Point:
    return Point(x, x + 1)


def flaky(failures: int) -> int:
    """Fails ``failures`` times per idempotency key, then returns the attempt number."""
    key = cd.idempotency_key()
    ATTEMPTS[key] += 1
    if ATTEMPTS[key] <= failures:
        raise ConnectionError(f"flaky attempt {ATTEMPTS[key]}")
    return ATTEMPTS[key]


def fails(kind: str) -> None:
    ATTEMPTS[cd.idempotency_key()] += 1
    if kind == "key":
        raise KeyError("missing")
    raise ValueError(f"bad {kind}")


def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


async def asleepy(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "woke"


def held(seconds: float) -> str:
    STARTED.append(cd.idempotency_key())
    time.sleep(seconds)
    return "held"


def unserialisable() -> object:
    return object()


def cleanup(run_tag: str) -> str:
    CLEANED.append(run_tag)
    return "cleaned"


def record(label: str, hold: float = 0.0) -> str:
    """Log this invocation (start and end) to the sink: which step, key and process."""
    key = cd.idempotency_key()
    db = sqlite3.connect(os.environ[SINK_ENV], timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS calls (label TEXT, key TEXT, pid INTEGER, phase TEXT, at REAL)"
        )
        db.execute(
            "INSERT INTO calls VALUES (?, ?, ?, 'start', ?)", (label, key, os.getpid(), time.time())
        )
        time.sleep(hold)  # the worker may be killed here: the step is then in flight
        db.execute(
            "INSERT INTO calls VALUES (?, ?, ?, 'end', ?)", (label, key, os.getpid(), time.time())
        )
    finally:
        db.close()
    return label


# == workflows =========================================================================================


@cd.workflow
async def xe_effects_tour(name: str, *, times: int = 2) -> dict[str, Any]:
    """Every effect kind once, with values that must come out the same on every engine."""
    greeting = await cd.call(greet, name, punctuation="?")  # sync step, kwargs
    loud = await cd.call(shout, greeting)  # async step
    key = await cd.call(whoami)
    before = await cd.now()
    await cd.sleep(0.2)
    after = await cd.now()
    await cd.sleep_until(after + dt.timedelta(seconds=0.1))
    ident = await cd.uuid4()
    draw = await cd.random()
    parallel = await cd.gather(
        *(cd.call(double, i) for i in range(times)),
        cd.gather(cd.call(whoami), cd.sleep(0.05), cd.now()),
        cd.call(make_point, 3),
    )
    nested = parallel[times]
    point = parallel[times + 1]
    last_key = await cd.call(whoami)
    return {
        "greeting": greeting,
        "loud": loud,
        "key": key,
        "slept": (after - before) >= dt.timedelta(seconds=0.2),
        "aware": before.tzinfo is not None,
        "uuid": isinstance(ident, uuid.UUID),
        "random": isinstance(draw, float) and 0.0 <= draw < 1.0,
        "doubles": parallel[:times],
        "nested": [nested[0], nested[1], isinstance(nested[2], dt.datetime)],
        "point": point,
        "point_type": type(point).__name__,
        "last_key": last_key,
    }


def _err(exc: BaseException) -> list[Any]:
    if isinstance(exc, cd.StepError):
        return ["StepError", exc.type_name, exc.message, exc.attempts, exc.step]
    return [type(exc).__name__, str(exc)]


@cd.workflow
async def xe_failures() -> dict[str, Any]:
    """Retries, StepError, non-retryable types, timeouts and gather's failure semantics."""
    out: dict[str, Any] = {}
    fast = cd.RetryPolicy(max_attempts=3, initial_interval=0.05, backoff_coefficient=2.0)
    out["flaky"] = await cd.call(flaky, 2, retry=fast)  # fails twice, succeeds on attempt 3
    try:
        await cd.call(fails, "value", retry=fast)
    except cd.StepError as exc:
        out["exhausted"] = _err(exc)
    try:
        await cd.call(
            fails, "key", retry=cd.RetryPolicy(max_attempts=5, non_retryable=("KeyError",))
        )
    except cd.StepError as exc:
        out["non_retryable"] = _err(exc)
    try:
        await cd.call(sleepy, 1.5, timeout=0.3, retry=cd.RetryPolicy(max_attempts=2, initial_interval=0.05))  # fmt: skip
    except cd.StepError as exc:
        out["timeout"] = _err(exc)
    try:
        await cd.call(asleepy, 1.5, timeout=0.3, retry=cd.RetryPolicy(max_attempts=1))
    except cd.StepError as exc:
        out["async_timeout"] = _err(exc)
    once = cd.RetryPolicy(max_attempts=1)
    mixed = await cd.gather(
        cd.call(double, 1),
        cd.call(fails, "first", retry=once),
        cd.call(fails, "second", retry=once),
        return_exceptions=True,
    )
    out["return_exceptions"] = [m if isinstance(m, int) else _err(m) for m in mixed]
    try:
        await cd.gather(
            cd.call(sleepy, 0.2), cd.call(fails, "a", retry=once), cd.call(fails, "b", retry=once)
        )
    except cd.StepError as exc:
        out["gather_raises_first"] = _err(exc)
    try:
        await cd.call(unserialisable)
    except errors.SerializationError as exc:
        out["unserialisable"] = type(exc).__name__
    try:
        await asyncio.sleep(0)  # not an effect: raised at the await
    except errors.NotAnEffectError as exc:
        out["not_an_effect"] = type(exc).__name__
    out["after"] = await cd.call(whoami)  # the seq count went on as expected
    return out


@cd.workflow
async def xe_signals(count: int) -> dict[str, Any]:
    """Signals sent before the wait are kept, in order; a timeout raises SignalTimeout."""
    first = await cd.call(greet, "signals")
    items = [await cd.await_signal("item") for _ in range(count)]
    try:
        await cd.await_signal("never", timeout=0.2)
        timed_out = None
    except cd.SignalTimeout as exc:
        timed_out = [type(exc).__name__, str(exc), isinstance(exc, TimeoutError)]
    both = await cd.gather(cd.await_signal("left"), cd.await_signal("right"))
    late = await cd.await_signal("late", timeout=30)
    return {"first": first, "items": items, "timed_out": timed_out, "both": both, "late": late}


@cd.workflow
async def xe_broken(reason: str) -> None:
    await cd.call(greet, reason)
    raise ValueError(f"broken: {reason}")


@cd.workflow
async def xe_cancellable(run_tag: str, during_step: bool) -> str:
    """Cancelled while waiting (or while a step runs): cleans up with a step, then re-raises."""
    try:
        if during_step:
            await cd.call(held, 1.0)  # the step finishes; the cancellation comes next
            await cd.call(greet, "never reached")
        else:
            await cd.await_signal("never")
    except cd.RunCancelledError:
        await cd.call(cleanup, run_tag)
        raise
    return "not cancelled"


@cd.workflow
async def xe_resumable(hold: float) -> list[str]:
    """For the crash tests: steps log their invocations; ``d`` holds long enough to be killed.
    ``d`` allows one attempt only: a crash must re-run it, never count as a failed attempt."""
    a = await cd.call(record, "a")
    b = await cd.call(record, "b")
    once = cd.RetryPolicy(max_attempts=1)
    c, d = await cd.gather(cd.call(record, "c"), cd.call(record, "d", hold, retry=once))
    e = await cd.call(record, "e")
    return [a, b, c, d, e]


# == scenarios ============================================================================================


async def _notify(target: str) -> None:
    await cd.send(target, "note", {"from": "xe"})


@cd.workflow
async def xe_sends(target: str) -> str:
    await _notify(target)  # inside a helper coroutine: the start check reads it too
    return "sent"


@cd.workflow
async def xe_races() -> list[Any]:
    i, value = await cd.first(cd.await_signal("go"), cd.sleep(5))
    return [i, value]


async def check_unoffered_effects_are_refused_at_start(rt: Any, engine_name: str) -> None:
    """cd.send and cd.first are not offered on the engines yet: rt.start refuses a workflow that
    uses one (cd.send found in a helper coroutine it awaits), naming the effect and the engine;
    nothing starts."""
    for wf, args, effect in ((xe_sends, ("someone",), "send"), (xe_races, (), "first")):
        run_id = f"{effect}-{uuid.uuid4().hex[:8]}"
        try:
            await rt.start(wf, *args, run_id=run_id)
        except errors.EffectNotAllowedError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"{engine_name} started a workflow that uses cd.{effect}")
        assert f"uses cd.{effect}, which {engine_name} does not offer" in message, message
        assert "Nothing was started" in message, message
        if effect == "send":
            assert "_notify" in message, message
        try:
            await rt.describe(run_id)
        except errors.RunNotFoundError:
            continue
        raise AssertionError(f"{engine_name}: {run_id} exists after a refused start")


def normalise(value: Any, run_id: str) -> Any:
    """Replace the run id inside strings (idempotency keys, messages) by ``<run>``."""
    if isinstance(value, str):
        return value.replace(run_id, "<run>")
    if isinstance(value, list | tuple):
        return [normalise(v, run_id) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v, run_id) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$dataclass": type(value).__name__, **dataclasses.asdict(value)}
    return value


def normalised(value: dict[str, Any], run_id: str) -> dict[str, Any]:
    out: dict[str, Any] = normalise(value, run_id)
    return out


def info_view(info: cd.RunInfo, run_id: str) -> dict[str, Any]:
    """The parts of describe() every engine answers the same way."""
    return normalised(
        {
            "workflow": info.workflow,
            "status": str(info.status),
            "waiting_on": info.waiting_on,
            "inputs": info.inputs,
            "result": info.result,
            "error": info.error,
        },
        run_id,
    )


async def wait_for(
    rt: Any, run_id: str, what: Callable[[cd.RunInfo], bool], timeout: float = 30.0
) -> cd.RunInfo:
    """Poll describe() until ``what(info)`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        info: cd.RunInfo = await rt.describe(run_id)
        if what(info):
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not get there in {timeout}s: {info}")
        await asyncio.sleep(0.05)


def waiting_on(text: str) -> Callable[[cd.RunInfo], bool]:
    return lambda info: info.status == cd.RunStatus.WAITING and text in (info.waiting_on or "")


async def scenario_effects(rt: Any, run_id: str) -> dict[str, Any]:
    handle = await rt.start(xe_effects_tour, "ada", run_id=run_id, times=3)
    result = await handle.result(timeout=60)
    info = await rt.describe(run_id)
    return normalised({"result": result, "info": info_view(info, run_id)}, run_id)


async def scenario_failures(rt: Any, run_id: str) -> dict[str, Any]:
    await rt.start(xe_failures, run_id=run_id)
    result = await rt.result(run_id, timeout=60)
    return normalised({"result": result, "attempts": _attempts(run_id)}, run_id)


def _attempts(run_id: str) -> dict[str, int]:
    return {k.replace(run_id, "<run>"): n for k, n in sorted(ATTEMPTS.items()) if run_id in k}


async def scenario_signals(rt: Any, run_id: str) -> dict[str, Any]:
    await rt.start(xe_signals, 2, run_id=run_id)
    # Sent at once, before the workflow waits: kept, consumed in order.
    await rt.signal(run_id, "item", {"n": 1}, signal_id="i1")
    await rt.signal(run_id, "item", {"n": 2}, signal_id="i2")
    repeat = await rt.signal(run_id, "item", {"n": 1}, signal_id="i1")  # a retried send
    await rt.signal(run_id, "right", "R")
    await rt.signal(run_id, "left", "L")
    waiting = await wait_for(rt, run_id, waiting_on("'late'"))
    await rt.signal(run_id, "late", [1, 2, {"three": (3,)}])
    result = await rt.result(run_id, timeout=60)
    return normalised(
        {"repeat_delivered": repeat, "waiting": info_view(waiting, run_id), "result": result},
        run_id,
    )


async def scenario_failed_run(rt: Any, run_id: str) -> dict[str, Any]:
    await rt.start(xe_broken, "on purpose", run_id=run_id)
    try:
        await rt.result(run_id, timeout=60)
        raised: list[Any] = []
    except errors.RunFailedError as exc:
        raised = [type(exc).__name__, exc.type_name, exc.message]
    info = await rt.describe(run_id)
    return normalised({"raised": raised, "info": info_view(info, run_id)}, run_id)


async def scenario_cancel_waiting(rt: Any, run_id: str) -> dict[str, Any]:
    await rt.start(xe_cancellable, run_id, False, run_id=run_id)
    await wait_for(rt, run_id, waiting_on("'never'"))
    await rt.cancel(run_id)
    try:
        await rt.result(run_id, timeout=60)
        raised = ""
    except errors.RunCancelledError as exc:
        raised = type(exc).__name__
    info = await rt.describe(run_id)
    return normalised(
        {"raised": raised, "cleaned": run_id in CLEANED, "info": info_view(info, run_id)}, run_id
    )


async def scenario_cancel_during_step(rt: Any, run_id: str) -> dict[str, Any]:
    await rt.start(xe_cancellable, run_id, True, run_id=run_id)
    deadline = time.monotonic() + 30
    while f"{run_id}:0" not in STARTED:  # cancel while the step runs
        assert time.monotonic() < deadline, "the step never started"
        await asyncio.sleep(0.02)
    await rt.cancel(run_id)
    try:
        await rt.result(run_id, timeout=60)
        raised = ""
    except errors.RunCancelledError as exc:
        raised = type(exc).__name__
    info = await rt.describe(run_id)
    return normalised(
        {"raised": raised, "cleaned": run_id in CLEANED, "info": info_view(info, run_id)}, run_id
    )


async def scenario_ai_pipeline(rt: Any, run_id: str) -> dict[str, Any]:
    """The README's AI pipeline: plan, parallel retrieval, a tool, a human approval, synthesis."""
    app = load_ai_pipeline()
    await rt.start(app.research, app.QUESTION, run_id=run_id)
    waiting = await wait_for(rt, run_id, waiting_on("'approval'"), timeout=60)
    await rt.signal(run_id, "approval", app.APPROVAL)
    result = await rt.result(run_id, timeout=60)
    info = await rt.describe(run_id)
    return normalised(
        {
            "waiting": info_view(waiting, run_id),
            "result": result,
            "info": info_view(info, run_id),
        },
        run_id,
    )


SCENARIOS: dict[str, Callable[[Any, str], Awaitable[dict[str, Any]]]] = {
    "effects": scenario_effects,
    "failures": scenario_failures,
    "signals": scenario_signals,
    "failed_run": scenario_failed_run,
    "cancel_waiting": scenario_cancel_waiting,
    "cancel_during_step": scenario_cancel_during_step,
    "ai_pipeline": scenario_ai_pipeline,
}


async def run_scenarios(
    rt: Any, prefix: str, names: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The scenarios ``names`` (default: all) at once on ``rt``; run ids ``<prefix>-<name>``."""
    names = list(SCENARIOS) if names is None else names
    results = await asyncio.gather(*(SCENARIOS[n](rt, f"{prefix}-{n}") for n in names))
    return dict(zip(names, results, strict=True))


# == a worker process for the crash tests ======================================================================


async def _serve(url: str) -> None:
    async with cd.Runtime(url):
        print("ready", flush=True)
        await asyncio.Event().wait()


def worker_main(argv: list[str] | None = None) -> None:
    """Serve every workflow of this module on the URL in argv[0] until killed."""
    args = sys.argv[1:] if argv is None else argv
    try:
        asyncio.run(_serve(args[0]))
    finally:
        # The Temporal SDK's Rust threads can crash the interpreter at exit (temporalio
        # sdk-python#300); a worker has nothing to flush, so leave without finalising.
        sys.stdout.flush()
        os._exit(0)
