"""Crash fuzz: a Hypothesis state machine proves exactly-once under crashes, on every store.

Its rules generate workflows (random mixes of call, gather, sleep, await_signal, try/except
around failing steps, retries; see crashfuzz_model.py), send signals at random moments (and the
same signal id twice: X12), arm crashes and store errors at random crash points, lose lease
renewals, stop and restart workers, and race several workers on one store. After every rule:

* the trace (coro_durable.testing.Trace) saw no step invoked after its outcome was journaled,
  none invoked again after the workflow was fed its outcome, no outcome fed before it was
  journaled, and no write accepted from a worker whose lease a newer claim had superseded;
* the workflow's own record of what it saw agrees (a black-box check of the same promise);
* every finished run ended as the plan says and as a crash-free reference run did, its journal
  replays against the code, and every successful step's effect sits in the idempotent sink
  exactly once, under its own idempotency key (and nothing else does).

At the end every run must finish once faults stop. CRASHFUZZ_PROFILE=long runs ~20 minutes and
prints a summary; the default (fast) profile keeps CI to a few minutes over all stores and both
event loops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.stateful import run_state_machine_as_test

from crashfuzz_machine import LONG, STATS, machine_for, machine_settings


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not STATS.examples:
        return
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(STATS.lines()), flush=True)


@pytest.mark.timeout(3600 if LONG else 300)
def test_exactly_once_under_generated_crashes(
    store_kind: str, anyio_backend: str, tmp_path: Path
) -> None:
    """Generated workflows, signals (some twice), crashes at every crash point, lost leases,
    restarts and racing workers never break exactly-once, and every run ends as a crash-free
    run does, with a journal that replays."""
    machine = machine_for(store_kind, anyio_backend, tmp_path)
    run_state_machine_as_test(machine, settings=machine_settings())
