"""The workflows of the schema upgrade test (tests/test_schema_upgrade.py).

scripts/make_schema_fixtures.py runs them with an OLDER coro_durable to write the old-schema
fixtures, and the test resumes those runs with the current code, so everything here must work on
both: the public ``coro_durable`` API only, nothing newer than the oldest fixture's commit.

The fixture runs, one per workflow (``RUNS``: run_id -> workflow, argument, state when the
fixture was written):

* ``done``: completed; its describe and history are kept in the fixture's manifest.
* ``signal``: parked on ``cd.await_signal("go")``.
* ``timer``: parked on a ``cd.sleep(TIMER_SECONDS)``.
* ``gather``: parked in the middle of a ``cd.gather`` whose first sub-step finished and whose
  second failed its first attempt: its journal holds a pending retry entry (the backoff's due
  time), and ``flaky`` succeeds on the second attempt.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
from typing import Any

import coro_durable as cd

#: Longer than the runtime's ``inline_wait`` (1 s), so the timer and the backoff park the run.
TIMER_SECONDS = 5.0
BACKOFF_SECONDS = 5.0
SIGNAL = "go"
SIGNAL_PAYLOAD = {"approved": True}


def double(x: int) -> int:
    return 2 * x


def flaky(x: int) -> int:
    """Fails its first attempt, succeeds on the next."""
    if cd.step_info().attempt == 1:
        raise RuntimeError("the first attempt fails")
    return x + 100


@cd.workflow(name="schema_done")
async def done(x: int) -> dict[str, Any]:
    a = await cd.call(double, x)
    b = await cd.call(double, a)
    return {"a": a, "b": b}


@cd.workflow(name="schema_signal")
async def on_signal(x: int) -> dict[str, Any]:
    a = await cd.call(double, x)
    got = await cd.await_signal(SIGNAL)
    return {"a": a, "got": got, "b": await cd.call(double, a)}


@cd.workflow(name="schema_timer")
async def on_timer(x: int) -> dict[str, Any]:
    a = await cd.call(double, x)
    await cd.sleep(TIMER_SECONDS)
    return {"a": a, "b": await cd.call(double, a)}


@cd.workflow(name="schema_gather")
async def mid_gather(x: int) -> dict[str, Any]:
    retry = cd.RetryPolicy(max_attempts=3, initial_interval=BACKOFF_SECONDS)
    pair = await cd.gather(cd.call(double, x), cd.call(flaky, x, retry=retry))
    return {"pair": list(pair), "b": await cd.call(double, x)}


WORKFLOWS = (done, on_signal, on_timer, mid_gather)

#: run_id -> (workflow, argument, status the fixture holds it in)
RUNS: dict[str, tuple[Any, int, str]] = {
    "done": (done, 1, "completed"),
    "signal": (on_signal, 2, "waiting"),
    "timer": (on_timer, 3, "waiting"),
    "gather": (mid_gather, 4, "waiting"),
}

#: run_id -> the result each run ends with, after the upgrade for the parked ones.
RESULTS: dict[str, Any] = {
    "done": {"a": 2, "b": 4},
    "signal": {"a": 4, "got": SIGNAL_PAYLOAD, "b": 8},
    "timer": {"a": 6, "b": 12},
    "gather": {"pair": [8, 104], "b": 8},
}


def jsonable(value: Any) -> Any:
    """A record (RunInfo, JournalEntry) as JSON data, the way the fixture's manifest keeps it:
    dataclass fields by name, datetimes in ISO 8601, enums as their value."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
