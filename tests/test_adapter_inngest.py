"""The Inngest adapter, against a TEST DOUBLE of the Inngest server (tests/inngest_executor.py).

No real Inngest server runs here (its dev server's npm package downloads a binary at install
time), so these tests check the adapter against the executor protocol the Inngest Python SDK
implements, over real HTTP: the SDK's own endpoint (FastAPI under uvicorn) is called by the fake
executor exactly as the SDK expects to be called. One test uses the SDK's own testing facility,
``inngest.experimental.mocked``. Everything runs under asyncio (the SDK is asyncio-only).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable import errors
from coro_durable._core import codec as _codec

pytest.importorskip("coro_durable_inngest", reason="pip install -e adapters/inngest")

import inngest
from coro_durable_inngest import InngestRuntime, mailbox_event, make_function, parse_url
from inngest.experimental import mocked

import adapters_common as common
from inngest_executor import FakeInngest, Run, cel

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def fake() -> AsyncIterator[FakeInngest]:
    async with FakeInngest() as server:
        yield server


def url_for(fake: FakeInngest, **params: Any) -> str:
    query = {"app_id": f"t-{uuid.uuid4().hex[:6]}", "poll_interval": "0.02", **params}
    return f"inngest://127.0.0.1:{fake.port}?" + "&".join(f"{k}={v}" for k, v in query.items())


@asynccontextmanager
async def open_rt(fake: FakeInngest, **params: Any) -> AsyncIterator[InngestRuntime]:
    worker = params.pop("worker", True)
    async with cd.Runtime(url_for(fake, **params), worker=worker) as rt:
        assert isinstance(rt, InngestRuntime)
        yield rt


# == no server needed ====================================================================================


def test_url_parameters() -> None:
    s = parse_url(
        "inngest://10.1.2.3:9000?app_id=ai&listen=0.0.0.0:9090&serve_path=/hooks/inngest"
        "&event_key=ek&retries=5&signal_recheck=60&cancel=native&max_sleep=604800"
    )
    assert (s.api_origin, s.event_api_origin, s.mode, s.app_id) == (
        "http://10.1.2.3:9000", "http://10.1.2.3:9000", "dev", "ai",
    )  # fmt: skip
    assert (s.listen, s.serve_path, s.event_key, s.retries) == (
        ("0.0.0.0", 9090), "/hooks/inngest", "ek", 5,
    )  # fmt: skip
    assert (s.signal_recheck, s.cancel, s.max_sleep) == (60.0, "native", 604800.0)
    d = parse_url("inngest://")
    assert (d.api_origin, d.listen, d.serve_path, d.retries) == (
        "http://127.0.0.1:8288", ("127.0.0.1", 0), "/api/inngest", 20,
    )  # fmt: skip
    c = parse_url("inngest://?mode=cloud&serve_origin=app.example.com")
    assert (c.api_origin, c.event_api_origin, c.serve_origin) == (
        "https://api.inngest.com", "https://inn.gs", "https://app.example.com",
    )  # fmt: skip
    for bad, words in [
        ("inngest://h?colour=red", "unknown inngest URL parameter 'colour'"),
        ("inngest://h?mode=prod", "dev or cloud"),
        ("inngest://h?retries=21", "0 to 20"),
        ("inngest://h?listen=9090", "HOST:PORT"),
        ("inngest://h?serve_path=api", "start with /"),
        ("inngest://h?signal_recheck=0", "> 0"),
        ("inngest://h?cancel=hard", "cooperative or native"),
        ("inngest://h/path", "serve_path"),
        ("inngest://u:p@h", "credentials"),
    ]:
        with pytest.raises(errors.ConfigurationError, match=words):
            parse_url(bad)


def test_runtime_url_selects_inngest() -> None:
    rt = cd.Runtime("inngest://127.0.0.1:1?app_id=x", lease_ttl=3.0, poll_interval=1)
    assert isinstance(rt, InngestRuntime) and InngestRuntime.is_engine
    with pytest.raises(errors.ConfigurationError, match="unknown option"):
        cd.Runtime("inngest://127.0.0.1:1", colour="blue")
    with pytest.raises(errors.ConfigurationError, match="not open"):
        anyio.run(rt.describe, "x", backend="asyncio")
    for method in (rt.history, rt.replay, rt.resume):
        with pytest.raises(errors.ConfigurationError, match="not available on Inngest"):
            anyio.run(method, "x", backend="asyncio")


def test_trio_is_refused() -> None:
    async def main() -> None:
        async with cd.Runtime("inngest://127.0.0.1:1"):
            pass

    with pytest.raises(errors.ConfigurationError, match="needs asyncio"):
        anyio.run(main, backend="trio")


def test_cel_subset_of_the_fake() -> None:
    """The fake's expression evaluator, on the expressions the adapter sends."""
    env = {"async": {"data": {"run_id": "r'1", "name": "$cancel"}}}
    assert cel(
        'async.data.run_id == "r\'1" && (async.data.name == "go" || async.data.name == "$cancel")',
        env,
    )
    assert not cel('async.data.run_id == "r1"', env)
    assert cel("!(async.data.name == 'go')", env)


# == the SDK's own testing facility =========================================================================


@cd.workflow
async def m_flow(name: str) -> dict[str, Any]:
    greeting = await cd.call(common.greet, name)
    fast = cd.RetryPolicy(max_attempts=3, initial_interval=0.01)
    flaky = await cd.call(common.flaky, 1, retry=fast)
    try:
        await cd.call(
            common.fails, "value", retry=cd.RetryPolicy(max_attempts=2, initial_interval=0.01)
        )
    except cd.StepError as exc:
        failed = [exc.type_name, exc.message, exc.attempts]
    await cd.sleep(2.5)
    both = await cd.gather(cd.call(common.double, 4), cd.call(common.shout, "x"))
    approval = await cd.await_signal("approval")
    return {"greeting": greeting, "flaky": flaky, "failed": failed, "both": both, "ok": approval}


@cd.workflow
async def m_broken() -> None:
    await cd.call(common.greet, "x")
    raise KeyError("nope")


def test_mocked_mode_runs_the_function() -> None:
    """inngest.experimental.mocked drives the adapter's Inngest function in-process (it replays
    the function until done, sleeps return at once, waits take the stub named after the step).
    Failed attempts come back as data, so retries and StepError work there too."""
    settings = parse_url("inngest://127.0.0.1:1?app_id=cd-test")
    client = mocked.Inngest(app_id="cd-test", is_production=False)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # mocked.trigger runs the async function with run_until_complete
    try:

        def start(workflow: str, *args: Any) -> inngest.Event:
            data = {"run_id": f"m-{uuid.uuid4().hex[:6]}", "workflow": workflow,
                    "input": _codec.encode({"args": list(args), "kwargs": {}})}  # fmt: skip
            return inngest.Event(name="coro_durable/start", data=data)

        fn = make_function(client, "m_flow", settings, None)
        event = start("m_flow", "ada")
        run_id = str(event.data["run_id"])
        stub = inngest.Event(
            name=mailbox_event(run_id),
            data={"run_id": run_id, "name": "approval", "payload": _codec.encode({"by": "dana"})},
        )
        res = mocked.trigger(fn, event, client, step_stubs={"signal approval#6 wait 0": stub})
        assert res.status == mocked.Status.COMPLETED, res.error
        assert isinstance(res.output, str)
        assert _codec.decode(res.output) == {
            "greeting": "hello ada!",
            "flaky": 2,
            "failed": ["ValueError", "bad value", 2],
            "both": [8, "X"],
            "ok": {"by": "dana"},
        }
        assert common.ATTEMPTS[f"{run_id}:1"] == 2  # flaky: one failure, then success
        broken = mocked.trigger(make_function(client, "m_broken", settings, None),
                                start("m_broken"), client)  # fmt: skip
        assert broken.status == mocked.Status.FAILED
        assert isinstance(broken.error, inngest.NonRetriableError)
        assert (broken.error.name, str(broken.error)) == ("KeyError", "'nope'")
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# == the same workflows embedded and on Inngest (through the test double) ===================================


async def test_cross_engine_same_results(
    fake: FakeInngest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shared scenario (each effect kind, retries, timeouts, signals sent early and late,
    failures, cancel while waiting and during a step, the README's AI pipeline with its human
    approval) gives the same results embedded and on Inngest."""
    monkeypatch.setenv(common.load_ai_pipeline().LEDGER_ENV, str(tmp_path / "ledger.db"))
    tag = uuid.uuid4().hex[:6]
    async with (
        cd.Runtime(f"sqlite:///{tmp_path / 'runs.db'}", poll_interval=0.02, lease_ttl=1.5) as emb,
        open_rt(fake) as ing,
    ):
        embedded, on_inngest = await asyncio.gather(
            common.run_scenarios(emb, f"emb-{tag}"), common.run_scenarios(ing, f"ing-{tag}")
        )
    for name in common.SCENARIOS:
        assert on_inngest[name] == embedded[name], name
    assert embedded["effects"]["result"]["key"] == "<run>:2"
    assert embedded["failures"]["result"]["flaky"] == 3
    assert embedded["ai_pipeline"]["result"]["approved_by"] == "dana@example.com"
    assert embedded["cancel_waiting"]["info"]["status"] == "cancelled"
    assert embedded["cancel_during_step"]["cleaned"] is True
    # Inngest really ran steps in parallel for the gathers (planned, then targeted requests).
    assert any("StepPlanned" in c.ops for c in fake.calls)


# == Inngest specifics ========================================================================================


@cd.workflow
async def ing_waits_twice() -> list[Any]:
    return [await cd.await_signal("go"), await cd.await_signal("go")]


@cd.workflow
async def ing_sleeper(seconds: float) -> str:
    await cd.call(common.greet, "x")
    await cd.sleep(seconds)
    return "slept"


@cd.workflow
async def t_sleep_then_cleanup(tag: str) -> str:
    try:
        await cd.sleep(60)
    except cd.RunCancelledError:
        await cd.call(common.cleanup, tag)
        raise
    return "not cancelled"


async def test_signals_before_and_after_the_wait(fake: FakeInngest) -> None:
    async with open_rt(fake) as rt:
        # Sent before the run even starts waiting: delivered, in order, each signal id once.
        run = await rt.start(ing_waits_twice, run_id=f"sig-{uuid.uuid4().hex[:6]}")
        assert await run.signal("go", {"v": 1}, signal_id="s-1") is True
        assert await run.signal("go", {"v": 2}, signal_id="s-1") is False  # a retried send
        await common.wait_for(rt, run.run_id, common.waiting_on("'go'"))
        assert await run.signal("go", {"v": 3}, signal_id="s-2") is True
        assert await run.result(timeout=30) == [{"v": 1}, {"v": 3}]
        with pytest.raises(errors.RunError, match="already completed"):
            await rt.signal(run.run_id, "go", 1)
        with pytest.raises(errors.RunNotFoundError):
            await rt.signal("no-such-run", "go", 1)
        with pytest.raises(errors.ConfigurationError, match="reserved"):
            await rt.signal(run.run_id, "$cancel")


async def test_a_signal_racing_the_wait_is_not_lost() -> None:
    """Inngest's waits drop events sent before they are registered. A signal sent in the gap
    between the run's look at its mailbox and the wait's registration is delivered when the
    wait's window ends, by the next look."""
    raced: list[str] = []

    async def before_wait(run: Run, op: dict[str, Any]) -> None:
        if not raced and "go" in str(op.get("opts")):
            raced.append(run.run_id)
            await rt.signal(str(run.event["data"]["run_id"]), "go", "raced")

    async with FakeInngest(before_wait=before_wait) as fake, open_rt(fake, signal_recheck=1) as rt:
        handle = await rt.start(ing_waits_twice, run_id=f"race-{uuid.uuid4().hex[:6]}")
        await common.wait_for(rt, handle.run_id, lambda i: bool(raced))
        run = fake.runs[raced[0]]
        # The raced signal does not fulfil the wait (sent before it was registered): the wait
        # times out after its 1 s window, and the next look at the mailbox finds the signal.
        await common.wait_for(rt, handle.run_id, lambda i: None in run.steps.values())
        await common.wait_for(rt, handle.run_id, common.waiting_on("'go'"))
        await handle.signal("go", "second")
        assert await handle.result(timeout=30) == ["raced", "second"]


async def test_describe(fake: FakeInngest) -> None:
    async with open_rt(fake) as rt, open_rt(fake, worker=False) as client:
        run_id = f"desc-{uuid.uuid4().hex[:6]}"
        await rt.start(ing_sleeper, 3.0, run_id=run_id)
        info = await common.wait_for(rt, run_id, common.waiting_on("timer until"))
        assert (info.workflow, info.step, info.inputs) == (
            "ing_sleeper",
            2,
            {"args": [3.0], "kwargs": {}},
        )
        assert info.wake_at is not None and info.wake_at > info.created_at  # type: ignore[operator]
        # A client-only runtime (no endpoint here) still reads the status from the REST API.
        remote = await client.describe(run_id)
        assert (remote.status, remote.workflow, remote.step) == (
            cd.RunStatus.RUNNING,
            "ing_sleeper",
            0,
        )
        assert await client.result(run_id, timeout=30) == "slept"
        done = await client.describe(run_id)
        assert (done.status, done.result, done.error) == (cd.RunStatus.COMPLETED, "slept", None)
        with pytest.raises(errors.RunNotFoundError):
            await rt.describe("no-such-run")
        with pytest.raises(errors.ResultTimeoutError):
            await rt.result((await rt.start(ing_waits_twice)).run_id, timeout=0.1)


async def test_idempotent_start(fake: FakeInngest) -> None:
    async with open_rt(fake) as rt, open_rt(fake, worker=False) as other:
        run_id = f"idem-{uuid.uuid4().hex[:6]}"
        first = await rt.start(ing_sleeper, 0.1, run_id=run_id)
        again = await other.start(ing_sleeper, 0.1, run_id=run_id)  # found in Inngest's events
        assert (first.created, again.created) == (True, False)
        with pytest.raises(errors.RunAlreadyExistsError, match="already exists") as refused:
            await rt.start(ing_sleeper, 9.0, run_id=run_id)
        assert refused.value.run_id == run_id
        for bad in ("", "x" * 256, "a\nb"):  # the run_id rule of every store, not a random id
            with pytest.raises(errors.ConfigurationError, match="run_id"):
                await rt.start(ing_sleeper, 0.1, run_id=bad)
        assert await first.result(timeout=30) == "slept"
        assert len(fake.runs) == 1


async def test_cancel(fake: FakeInngest) -> None:
    async with open_rt(fake) as rt:
        # Cooperative: a sleeping run wakes at once, cleans up, ends cancelled.
        tag = f"cs-{uuid.uuid4().hex[:6]}"
        await rt.start(t_sleep_then_cleanup, tag, run_id=tag)
        await common.wait_for(rt, tag, common.waiting_on("timer until"))
        began = time.monotonic()
        await rt.cancel(tag)
        with pytest.raises(errors.RunCancelledError):
            await rt.result(tag, timeout=30)
        assert time.monotonic() - began < 20 and tag in common.CLEANED
        assert (await rt.describe(tag)).status == cd.RunStatus.CANCELLED
        await rt.cancel(tag)  # finished: nothing to do
        with pytest.raises(errors.RunNotFoundError):
            await rt.cancel("no-such-run")
    async with open_rt(fake, cancel="native") as rt:
        # Native: Inngest stops the run between steps; no more workflow code runs.
        tag = f"cn-{uuid.uuid4().hex[:6]}"
        await rt.start(t_sleep_then_cleanup, tag, run_id=tag)
        await common.wait_for(rt, tag, common.waiting_on("timer until"))
        await rt.cancel(tag)
        with pytest.raises(errors.RunCancelledError):
            await rt.result(tag, timeout=30)
        assert tag not in common.CLEANED
        assert (await rt.describe(tag)).status == cd.RunStatus.CANCELLED


# -- what Inngest cannot express ----------------------------------------------------------------------------

LONG = 400 * 86400


def _step() -> int:
    return 1


@cd.workflow
async def t_year_sleep() -> None:
    await cd.sleep(LONG)


@cd.workflow
async def t_long_step() -> int:
    return await cd.call(_step, timeout=3 * 3600)


async def _helper_sleeps() -> None:
    await cd.sleep(8 * 86400)


@cd.workflow
async def t_helper_week_sleep() -> None:
    await cd.call(_step)
    await _helper_sleeps()


@cd.workflow
async def t_dynamic_sleep(days: int) -> str:
    await cd.call(_step)
    try:
        await cd.sleep(days * 86400)
    except errors.EffectNotAllowedError as exc:
        return f"refused: {exc}"
    return "slept"


async def test_unexpressible_effects_fail_at_start(fake: FakeInngest) -> None:
    """A sleep longer than Inngest allows, or a step timeout above its 2 hours, is refused by
    rt.start with EffectNotAllowedError, before anything is sent to Inngest."""
    async with open_rt(fake, max_sleep=604800) as rt:  # the free plan's 7 days
        await common.check_unoffered_effects_are_refused_at_start(rt, "Inngest")
        for wf, words in [
            (t_year_sleep, "Inngest sleeps at most"),
            (t_long_step, "at most 7200s"),
            (t_helper_week_sleep, "_helper_sleeps"),
        ]:
            run_id = f"bad-{uuid.uuid4().hex[:6]}"
            with pytest.raises(errors.EffectNotAllowedError, match=words) as caught:
                await rt.start(wf, run_id=run_id)
            assert "Nothing was started" in str(caught.value)
            with pytest.raises(errors.RunNotFoundError):
                await rt.describe(run_id)
        assert not fake.events
        # A duration known only at run time is checked at the effect: raised at that await.
        result = await (await rt.start(t_dynamic_sleep, 30)).result(timeout=30)
        assert result.startswith("refused: cd.sleep(2592000") and "max_sleep" in result


# == an endpoint process SIGKILLed mid-step ===================================================================


def _calls(sink: Path) -> list[tuple[str, str, int, str]]:
    if not sink.exists():
        return []
    db = sqlite3.connect(sink, timeout=30)
    try:
        rows = db.execute("SELECT label, key, pid, phase FROM calls ORDER BY at").fetchall()
    except sqlite3.OperationalError:
        rows = []
    finally:
        db.close()
    return [(str(a), str(b), int(c), str(d)) for a, b, c, d in rows]


class Endpoints:
    """Endpoint processes of tests/adapters_common.py (each serves every xe_* workflow)."""

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
        line = proc.stdout.readline()  # "ready" once its endpoint is synced
        assert line.strip() == "ready", f"endpoint exited with {proc.poll()}"
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


async def test_endpoint_killed_mid_step_resumes(tmp_path: Path) -> None:
    """SIGKILL the endpoint process while step d runs: the executor's request fails, it is
    retried (attempt + 1) on a fresh endpoint process; steps memoized before the kill (a, b, c)
    are not run again, d runs again with the same idempotency key."""
    sink = tmp_path / "sink.db"
    async with FakeInngest(backoff=0.2, max_backoff=0.5) as fake:
        url = url_for(fake, app_id="kill")
        endpoints = Endpoints(url, sink)
        try:
            w1 = await anyio.to_thread.run_sync(endpoints.spawn)
            async with cd.Runtime(url, worker=False) as rt:
                run_id = f"kill-{uuid.uuid4().hex[:6]}"
                await rt.start(common.xe_resumable, 1.5, run_id=run_id)
                deadline = time.monotonic() + 30
                while not {("c", "end"), ("d", "start")} <= {(c[0], c[3]) for c in _calls(sink)}:
                    assert time.monotonic() < deadline, _calls(sink)
                    assert w1.poll() is None, "endpoint 1 died on its own"
                    await asyncio.sleep(0.02)
                w1.kill()  # SIGKILL: step d is in flight, its HTTP request is cut
                await anyio.to_thread.run_sync(w1.wait)
                at_kill = _calls(sink)
                w2 = await anyio.to_thread.run_sync(endpoints.spawn)
                assert await rt.result(run_id, timeout=60) == ["a", "b", "c", "d", "e"]
        finally:
            endpoints.stop_all()
        failed = [c for c in fake.calls if c.status == 0]
        assert failed, "the executor should have seen the killed endpoint's request fail"
        assert any(c.attempt >= 1 and c.status == 206 for c in fake.calls)  # a retried request
    started: dict[str, list[tuple[str, int]]] = {}
    for label, key, pid, phase in _calls(sink):
        if phase == "start":
            started.setdefault(label, []).append((key, pid))
    assert [pid for _, pid in started["a"]] == [w1.pid]  # memoized before the kill: once
    assert [pid for _, pid in started["b"]] == [w1.pid]
    assert [pid for _, pid in started["c"]] == [w1.pid]
    assert [pid for _, pid in started["d"]] == [w1.pid, w2.pid]  # in flight: again...
    assert {key for key, _ in started["d"]} == {f"{run_id}:3"}  # ...with the same key
    assert [pid for _, pid in started["e"]] == [w2.pid]
    assert not any(label == "d" and phase == "end" for label, _, _, phase in at_kill)


def test_readme_example_runs(tmp_path: Path) -> None:
    """adapters/inngest/examples/research_on_inngest.py, run against the test double."""
    example = Path(__file__).parents[1] / "adapters/inngest/examples/research_on_inngest.py"
    done = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AI_PIPELINE_LEDGER": str(tmp_path / "ledger.db")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TEST DOUBLE" in done.stdout
    assert "waiting on signal 'approval'" in done.stdout
    assert "answer: Yes." in done.stdout
