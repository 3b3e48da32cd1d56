"""`rt.retry(run_id)`: a failed or cancelled run continues from its failure, on every store,
under asyncio and trio; and `coro-durable retry RUN` in a real process."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable import errors
from coro_durable.store import ClaimRequest
from coro_durable.testing import wait_for_status

pytestmark = pytest.mark.anyio

CALLS: Counter[str] = Counter()
KEYS: list[str] = []  # idempotency keys seen by `outage`, in call order
FAILURES: Counter[str] = Counter()  # how many more times each flaky step (or workflow) fails

POLICY = cd.RetryPolicy(max_attempts=2, initial_interval=0.01, backoff_coefficient=1)


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    KEYS.clear()
    FAILURES.clear()


@pytest.fixture
def runtime(make_store: Callable[[], cd.Store]) -> Callable[..., Any]:
    """Open Runtimes on the test's store (several may share it, like processes would)."""

    @asynccontextmanager
    async def open_rt(**options: Any) -> AsyncIterator[cd.Runtime]:
        options.setdefault("poll_interval", 0.02)
        options.setdefault("lease_ttl", 2.0)
        async with cd.Runtime(make_store(), **options) as rt:
            yield rt

    return open_rt


# -- steps and workflows ------------------------------------------------------------------------------


def prepare(x: int) -> int:
    CALLS["prepare"] += 1
    return x + 1


def outage(x: int, tag: str = "outage") -> int:
    """An LLM call during an outage: fails while FAILURES[tag] lasts."""
    CALLS[tag] += 1
    KEYS.append(cd.idempotency_key())
    if FAILURES[tag] > 0:
        FAILURES[tag] -= 1
        raise ConnectionError("the LLM is down")
    return x * 10


async def hang(x: int) -> int:
    """An async step that hangs while FAILURES["hang"] is set (until it is cancelled)."""
    CALLS["hang"] += 1
    while FAILURES["hang"]:
        await anyio.sleep(0.01)
    return -x


def cleanup(x: int) -> str:
    CALLS["cleanup"] += 1
    return f"cleaned {x}"


@cd.workflow(name="retry_pipeline")
async def retry_pipeline(x: int) -> list[int]:
    a = await cd.call(prepare, x)
    b = await cd.call(outage, a, retry=POLICY)
    return [a, b]


@cd.workflow(name="retry_with_cleanup")
async def retry_with_cleanup(x: int) -> list[int]:
    a = await cd.call(prepare, x)
    try:
        b = await cd.call(outage, a, retry=POLICY)
    except cd.StepError:
        await cd.call(cleanup, a)  # journaled after the failure: not on the retried path
        raise
    return [a, b]


@cd.workflow(name="retry_fanout")
async def retry_fanout(x: int) -> list[int]:
    a, b, c = await cd.gather(
        cd.call(outage, x, "left", retry=POLICY),
        cd.call(prepare, x),
        cd.call(outage, x + 1, "right", retry=POLICY),
    )
    return [a, b, c]


@cd.workflow(name="retry_approval")
async def retry_approval(x: int) -> list[Any]:
    a = await cd.call(prepare, x)
    verdict = await cd.await_signal("approval")
    return [a, verdict]


@cd.workflow(name="retry_hanging")
async def retry_hanging(x: int) -> list[int]:
    a = await cd.call(prepare, x)
    try:
        b = await cd.call(hang, a)
    finally:
        await cd.call(cleanup, a)  # runs on cancel too; on the retried path it runs again
    return [a, b]


@cd.workflow(name="retry_buggy")
async def retry_buggy(x: int) -> int:
    a = await cd.call(prepare, x)
    if FAILURES["code"] > 0:  # stands for a bug in workflow code, fixed before the retry
        raise ValueError("bug in the workflow")
    return a


def notes(history: list[cd.JournalEntry]) -> list[cd.JournalEntry]:
    return [e for e in history if e.seq < 0]


# -- the runtime ----------------------------------------------------------------------------------------


async def test_retry_continues_a_failed_step_with_fresh_attempts_and_the_same_key(
    runtime: Any,
) -> None:
    """A step failing past max_attempts fails the run; each retry runs it again with a fresh
    set of attempts under the same idempotency key, the step before it never runs again, and
    every retry leaves an audit note (seq -1, then -2) with who, when and what it replaced."""
    FAILURES["outage"] = 2
    async with runtime() as rt:
        await rt.start(retry_pipeline, 1, run_id="rp")
        with pytest.raises(cd.RunFailedError, match="the LLM is down"):
            await rt.result("rp", timeout=10)
        assert CALLS == {"prepare": 1, "outage": 2}

        FAILURES["outage"] = 2  # still down: the retry gets its own two attempts, and fails
        before = time.time()
        info = await rt.retry("rp", by="oncall")
        assert info.status == cd.RunStatus.PENDING and info.error is None and info.step == 1
        with pytest.raises(cd.RunFailedError, match="the LLM is down"):
            await rt.result("rp", timeout=10)
        assert CALLS == {"prepare": 1, "outage": 4}

        FAILURES["outage"] = 1  # recovering: fails once more, then succeeds within the policy
        await rt.retry("rp", by="tester")
        assert await rt.result("rp", timeout=10) == [2, 20]
        history = await rt.history("rp")
        described = await rt.describe("rp")
    assert CALLS == {"prepare": 1, "outage": 6}
    assert KEYS == ["rp:1"] * 6
    assert [(e.seq, e.kind, e.status) for e in history] == [
        (-2, "retry", "ok"),
        (-1, "retry", "ok"),
        (0, "call", "ok"),
        (1, "call", "ok"),
    ]
    assert history[3].attempts == 2 and history[3].key == "rp:1"
    assert described.step == 2 and described.status == cd.RunStatus.COMPLETED

    first, second = history[1].arguments, history[0].arguments
    assert first["by"] == "oncall" and second["by"] == "tester"
    at = dt.datetime.fromisoformat(first["at"]).timestamp()
    assert before - 1 <= at <= time.time()
    assert first["previous_status"] == "failed"
    assert first["error"]["type"] == "ConnectionError"
    (gone,) = first["superseded"]
    assert (gone["seq"], gone["status"], gone["attempts"], gone["key"]) == (1, "error", 2, "rp:1")
    rebuilt = cd.JournalEntry(**gone)
    assert rebuilt.checksum == rebuilt.compute_checksum()  # the audit keeps the exact row
    assert [e["seq"] for e in second["superseded"]] == [1]


async def test_retry_deletes_cleanup_journaled_after_the_failure(runtime: Any) -> None:
    """A workflow that ran cleanup in `except` after the failing step retries without
    NonDeterminismError: the cleanup entry is superseded, the retried path returns normally."""
    FAILURES["outage"] = 2
    async with runtime() as rt:
        await rt.start(retry_with_cleanup, 4, run_id="rc")
        with pytest.raises(cd.RunFailedError):
            await rt.result("rc", timeout=10)
        assert [e.name for e in await rt.history("rc")] == ["prepare", "outage", "cleanup"]
        await rt.retry("rc")
        assert await rt.result("rc", timeout=10) == [5, 50]
        history = await rt.history("rc")
    assert CALLS == {"prepare": 1, "outage": 3, "cleanup": 1}
    assert [(e.seq, e.name) for e in history if e.seq >= 0] == [(0, "prepare"), (1, "outage")]
    (note,) = notes(history)
    assert [e["name"] for e in note.arguments["superseded"]] == ["outage", "cleanup"]
    assert note.arguments["by"]  # user@host by default


async def test_retry_of_a_gather_reruns_only_its_failed_sub_effects(runtime: Any) -> None:
    """A gather whose first and last sub-effects failed and whose middle one succeeded: the
    retry re-runs both failed ones (not only the one the workflow saw raise) and feeds the
    succeeded one from the journal."""
    FAILURES.update(left=2, right=2)
    async with runtime() as rt:
        await rt.start(retry_fanout, 3, run_id="rf")
        with pytest.raises(cd.RunFailedError):
            await rt.result("rf", timeout=10)
        await rt.retry("rf")
        assert await rt.result("rf", timeout=10) == [30, 4, 40]
        history = await rt.history("rf")
    assert CALLS == {"left": 3, "prepare": 1, "right": 3}
    (note,) = notes(history)
    assert [e["seq"] for e in note.arguments["superseded"]] == [0, 2]


async def test_retry_of_a_run_cancelled_while_waiting_on_a_signal(runtime: Any) -> None:
    """A run cancelled while waiting on a signal can be retried: it waits for the signal again
    (the cancelled await is reopened, the step before it is kept) and completes when signalled."""
    async with runtime() as rt:
        await rt.start(retry_approval, 7, run_id="ra")
        await wait_for_status(rt, "ra", cd.RunStatus.WAITING)
        await rt.cancel("ra")
        with pytest.raises(cd.RunCancelledError):
            await rt.result("ra", timeout=10)
        info = await rt.retry("ra")
        assert info.status == cd.RunStatus.PENDING
        await wait_for_status(rt, "ra", cd.RunStatus.WAITING)
        await rt.signal("ra", "approval", "yes")
        assert await rt.result("ra", timeout=10) == [8, "yes"]
        history = await rt.history("ra")
    assert CALLS == {"prepare": 1}
    (note,) = notes(history)
    assert note.arguments["previous_status"] == "cancelled"
    (gone,) = note.arguments["superseded"]
    assert gone["seq"] == 1 and json.loads(gone["error"])["type"] == "RunCancelledError"
    assert [(e.seq, e.kind, e.status) for e in history if e.seq >= 0] == [
        (0, "call", "ok"),
        (1, "signal", "ok"),
    ]


async def test_retry_of_a_run_cancelled_during_a_step(runtime: Any) -> None:
    """A run cancelled while a step was executing (cleanup ran in `finally`) is retried: the
    cancelled step runs again under the same key, the cleanup entry of the cancelled path is
    superseded and the run completes."""
    FAILURES["hang"] = 1
    async with runtime() as rt:
        await rt.start(retry_hanging, 2, run_id="rh")
        with anyio.fail_after(10):
            while CALLS["hang"] == 0:
                await anyio.sleep(0.01)
        await rt.cancel("rh")
        with pytest.raises(cd.RunCancelledError):
            await rt.result("rh", timeout=10)
        FAILURES["hang"] = 0
        await rt.retry("rh")
        assert await rt.result("rh", timeout=10) == [3, -3]
        history = await rt.history("rh")
    assert CALLS == {"prepare": 1, "hang": 2, "cleanup": 2}
    (note,) = notes(history)
    assert [e["name"] for e in note.arguments["superseded"]] == ["hang", "cleanup"]
    assert [(e.seq, e.name, e.status) for e in history if e.seq >= 0] == [
        (0, "prepare", "ok"),
        (1, "hang", "ok"),
        (2, "cleanup", "ok"),
    ]
    assert history[2].key == "rh:1"


async def test_retry_of_a_run_cancelled_before_it_ran_makes_it_runnable(runtime: Any) -> None:
    """A run the store cancelled on the spot (it never ran: no journal) just becomes runnable."""
    async with runtime(worker=False) as client:
        await client.start(retry_pipeline, 1, run_id="rn")
        await client.cancel("rn")
        assert (await client.describe("rn")).status == cd.RunStatus.CANCELLED
        info = await client.retry("rn")
        assert info.status == cd.RunStatus.PENDING and info.step == 0
    async with runtime() as rt:
        assert await rt.result("rn", timeout=10) == [2, 20]
        (note,) = notes(await rt.history("rn"))
    assert note.arguments["previous_status"] == "cancelled"
    assert note.arguments["superseded"] == []


async def test_retry_after_a_bug_in_workflow_code_reopens_nothing(runtime: Any) -> None:
    """A run failed by workflow code itself (no journaled error) keeps its whole journal: the
    retry makes it runnable and the fixed code replays it, running no step again."""
    FAILURES["code"] = 1
    async with runtime() as rt:
        await rt.start(retry_buggy, 1, run_id="rb")
        with pytest.raises(cd.RunFailedError, match="bug in the workflow"):
            await rt.result("rb", timeout=10)
        FAILURES["code"] = 0  # "the fix is deployed"
        await rt.retry("rb")
        assert await rt.result("rb", timeout=10) == 2
        history = await rt.history("rb")
    assert CALLS == {"prepare": 1}
    assert notes(history)[0].arguments["superseded"] == []


async def test_retry_refuses_runs_that_are_not_failed_or_cancelled(runtime: Any) -> None:
    """retry of a completed, waiting, pending or running run raises RunError and changes nothing;
    an unknown run raises RunNotFoundError."""
    async with runtime() as rt:
        await rt.start(retry_pipeline, 1, run_id="done")
        await rt.result("done", timeout=10)
        with pytest.raises(errors.RunError, match="'done' is completed; only failed or cancelled"):
            await rt.retry("done")
        await rt.start(retry_approval, 1, run_id="waits")
        await wait_for_status(rt, "waits", cd.RunStatus.WAITING)
        with pytest.raises(errors.RunError, match="is waiting; only failed or cancelled"):
            await rt.retry("waits")
        with pytest.raises(errors.RunNotFoundError):
            await rt.retry("nope")
        assert notes(await rt.history("done")) == []
    async with runtime(worker=False) as client:
        await client.start(retry_pipeline, 2, run_id="idle")
        with pytest.raises(errors.RunError, match="is pending"):
            await client.retry("idle")
        claimed = await client.store.claim(ClaimRequest("w", ("retry_pipeline",), 1, 30, 3))
        assert [r.run_id for r in claimed] == ["idle"]
        with pytest.raises(errors.RunError, match="'idle' is running; only failed or cancelled"):
            await client.retry("idle")


# -- the CLI, as a real process ------------------------------------------------------------------------

CLI_APP = """
import os
import coro_durable as cd


def fetch(folder):
    with open(os.path.join(folder, "fetch.calls"), "a") as f:
        f.write("x\\n")
    return "page"


def summarise(folder, page):
    if os.path.exists(os.path.join(folder, "outage")):
        raise ConnectionError("the LLM is down")
    return page.upper()


@cd.workflow(name="cli_retry")
async def cli_retry(folder):
    page = await cd.call(fetch, folder)
    return await cd.call(summarise, folder, page, retry=cd.RetryPolicy(max_attempts=1))
"""


def test_cli_retry_in_a_real_process(tmp_path: Path) -> None:
    """`coro-durable retry RUN` continues a failed run: the worker finishes it from the failed
    step, `show` renders the audit note, and retrying the completed run is a one-line error."""
    (tmp_path / "cd_retry_app.py").write_text(CLI_APP)
    (tmp_path / "outage").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "CORO_DURABLE_STORE"}
    env["CORO_DURABLE_STORE"] = f"sqlite:///{tmp_path / 'runs.db'}"
    env["COLUMNS"] = "200"  # tables are as wide as the terminal: room for the whole note

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "coro_durable", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    def work() -> None:
        done = cli("worker", "--app", "cd_retry_app", "--exit-when-idle", "--poll", "0.02")
        assert done.returncode == 0, done.stderr

    assert (
        cli(
            "start", "cli_retry", json.dumps([str(tmp_path)]), "--run-id", "c1", "--allow-unknown"
        ).returncode
        == 0
    )
    work()
    shown = cli("show", "c1", "--json")
    assert json.loads(shown.stdout)["run"]["status"] == "failed"

    (tmp_path / "outage").unlink()  # the outage is over
    retried = cli("retry", "c1", "--by", "ops")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith("run c1 retried: pending at step 1")
    work()
    shown = cli("show", "c1")
    assert shown.returncode == 0
    assert re.search(r"^status +completed$", shown.stdout, re.M), shown.stdout
    (note_line,) = [line for line in shown.stdout.splitlines() if " retry " in line]
    assert note_line.split()[0] == "-1"
    assert "retried by ops at " in note_line
    assert note_line.endswith("was failed (ConnectionError: the LLM is down); deleted seq 1")
    assert (tmp_path / "fetch.calls").read_text() == "x\n"  # the finished step ran once

    again = cli("retry", "c1")
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.startswith(
        "coro-durable: error: run 'c1' is completed; only failed or cancelled runs can be retried"
    )
