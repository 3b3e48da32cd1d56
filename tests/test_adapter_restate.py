"""The Restate adapter, against a real `restate-server` (from npm, installed by scripts/ensure-restate.sh).

The server is started once per session (tests/restate_server.py), in a temporary directory, on
free ports; every RestateRuntime serves its endpoint on a free port of its own and registers it.
Everything runs under asyncio: the Restate SDK is asyncio-only (see test_trio_is_refused).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
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
import httpx
import pytest

import coro_durable as cd
from coro_durable import errors

pytest.importorskip("coro_durable_restate", reason="pip install -e adapters/restate")

from coro_durable_restate import RestateRuntime, parse_url

import adapters_common as common
from restate_server import RestateServer, free_port, restate_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def restate() -> Iterator[RestateServer]:
    with restate_server() as server:
        yield server


@asynccontextmanager
async def open_rt(server: RestateServer, **params: Any) -> AsyncIterator[RestateRuntime]:
    options = {k: params.pop(k) for k in ("worker",) if k in params}
    async with cd.Runtime(server.url(**params), **options) as rt:
        assert isinstance(rt, RestateRuntime)
        yield rt


# == no server needed ====================================================================================


def test_url_parameters() -> None:
    s = parse_url(
        "restate://10.1.2.3:8000?admin=http://10.1.2.3:9000&listen=0.0.0.0:9100"
        "&advertise=http://worker-1:9100&service=ai&inactivity_timeout=0&abort_timeout=30"
        "&retry_max_interval=2&request_timeout=5&http1=true"
    )
    assert (s.ingress, s.admin, s.listen, s.advertise) == (
        "http://10.1.2.3:8000", "http://10.1.2.3:9000", ("0.0.0.0", 9100), "http://worker-1:9100",
    )  # fmt: skip
    assert (s.service, s.inactivity_timeout, s.abort_timeout, s.step_limit) == ("ai", 0, 30, 30)
    assert (s.retry_max_interval, s.request_timeout, s.http1) == (2.0, 5.0, True)
    d = parse_url("restate://")
    assert (d.ingress, d.admin, d.listen, d.advertise, d.service) == (
        "http://127.0.0.1:8080", "http://127.0.0.1:9070", ("127.0.0.1", 9080),
        "http://127.0.0.1:9080", "coro_durable",
    )  # fmt: skip
    assert (d.inactivity_timeout, d.abort_timeout, d.http1) == (60.0, 600.0, False)
    assert parse_url("restate://h:1?admin=h:2").admin == "http://h:2"
    for bad, words in [
        ("restate://h?admn=x", "unknown restate URL parameter 'admn'"),
        ("restate://h?abort_timeout=0", "abort_timeout"),
        ("restate://h?inactivity_timeout=-1", ">= 0"),
        ("restate://h?request_timeout=soon", "number of seconds"),
        ("restate://h?listen=9080", "HOST:PORT"),
        ("restate://h?listen=0.0.0.0:9080", "advertise="),
        ("restate://h?admin=ftp://h:1", "http"),
        ("restate://h?service=my-app", "letters, digits"),
        ("restate://h?http1=maybe", "true or false"),
        ("restate://h/path", "path"),
        ("restate://u:p@h", "credentials"),
        ("restate://h?service=a&service=b", "twice"),
    ]:
        with pytest.raises(errors.ConfigurationError, match=words):
            parse_url(bad)


def test_runtime_url_selects_restate() -> None:
    """cd.Runtime(url) returns the engine runtime; embedded-only options are accepted."""
    rt = cd.Runtime("restate://127.0.0.1:1?service=app", lease_ttl=3.0, worker_id="w")
    assert isinstance(rt, RestateRuntime) and RestateRuntime.is_engine
    assert rt.settings.service == "app"
    with pytest.raises(errors.ConfigurationError, match="unknown option"):
        cd.Runtime("restate://127.0.0.1:1", colour="blue")  # type: ignore[call-arg]
    with pytest.raises(errors.ConfigurationError, match="not open"):
        anyio.run(rt.describe, "x", backend="asyncio")
    for method in (rt.history, rt.replay, rt.resume):
        with pytest.raises(errors.ConfigurationError, match="not available on Restate"):
            anyio.run(method, "x", backend="asyncio")


def test_trio_is_refused() -> None:
    """restate-sdk is asyncio-only: under trio the runtime says so clearly, before serving."""

    async def main() -> None:
        async with cd.Runtime("restate://127.0.0.1:1"):
            pass

    with pytest.raises(errors.ConfigurationError, match="needs asyncio"):
        anyio.run(main, backend="trio")


def test_unreachable_server_is_reported() -> None:
    async def main() -> None:
        port = free_port()
        async with cd.Runtime(f"restate://127.0.0.1:1?admin=http://127.0.0.1:1&listen=127.0.0.1:{port}"):  # fmt: skip
            pass

    with pytest.raises(errors.StoreUnavailableError, match="admin API"):
        anyio.run(main, backend="asyncio")


# == the same workflows on the embedded runtime and on Restate ==================================================


async def test_cross_engine_same_results(
    restate: RestateServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shared scenario (each effect kind, retries, timeouts, signals, failures, cancel,
    the README's AI pipeline with its human approval) gives the same results embedded and on
    Restate. Restate runs with inactivity_timeout=0: a run suspends at every wait and each new
    attempt replays its journal, so the replays must issue the same commands."""
    monkeypatch.setenv(common.load_ai_pipeline().LEDGER_ENV, str(tmp_path / "ledger.db"))
    tag = uuid.uuid4().hex[:6]
    async with (
        cd.Runtime(f"sqlite:///{tmp_path / 'runs.db'}", poll_interval=0.02, lease_ttl=1.5) as emb,
        open_rt(restate, inactivity_timeout=0) as rst,
    ):
        embedded, on_restate = await asyncio.gather(
            common.run_scenarios(emb, f"emb-{tag}"), common.run_scenarios(rst, f"rst-{tag}")
        )
        for name in common.SCENARIOS:
            assert on_restate[name] == embedded[name], name
        # The runs did suspend and resume: Restate retried none of them, and their journals
        # hold the steps under the steps' names.
        info = await rst.describe(f"rst-{tag}-ai_pipeline")
        assert info.crash_count == 0 and info.created_at is not None
    # Spot checks that the comparison compared something real.
    assert embedded["effects"]["result"]["key"] == "<run>:2"
    assert embedded["failures"]["result"]["flaky"] == 3
    assert embedded["ai_pipeline"]["result"]["approved_by"] == "dana@example.com"
    assert embedded["cancel_waiting"]["info"]["status"] == "cancelled"
    assert embedded["signals"]["result"]["items"] == [{"n": 1}, {"n": 2}]


# == Restate specifics ======================================================================================


def _module_step(x: int) -> int:
    return x + 1


class _Steps:
    def __init__(self, base: int) -> None:
        self.base = base

    def method(self, x: int) -> int:
        return self.base + x


_INSTANCE = _Steps(100)
HOUR = 3600.0


async def _slow_step() -> str:
    return "never"


@cd.workflow
async def r_long_timeout() -> str:
    return await cd.call(_slow_step, timeout=2 * HOUR)


async def _helper_with_long_timeout() -> str:
    return await cd.call(_slow_step, timeout=HOUR + 1)


@cd.workflow
async def r_long_timeout_in_helper() -> str:
    await cd.call(_module_step, 1)
    return await _helper_with_long_timeout()


@cd.workflow
async def r_dynamic_timeout(seconds: float) -> int:
    first = await cd.call(_module_step, 0)
    return first + int(await cd.call(_module_step, 1, timeout=seconds))


@cd.workflow
async def r_any_callable() -> list[int]:
    """Steps run inside the run handler: any callable is fine on Restate."""

    def local(x: int) -> int:
        return x * 2

    return list(
        await cd.gather(
            cd.call(lambda: 1),
            cd.call(functools.partial(_module_step, 1)),
            cd.call(_INSTANCE.method, 3),
            cd.call(local, 4),
        )
    )


async def test_unexpressible_steps_fail_at_start(restate: RestateServer) -> None:
    """Restate aborts a step attempt after inactivity_timeout + abort_timeout: a step whose
    timeout is longer raises EffectNotAllowedError when the run is started, and nothing is
    started; a timeout computed at run time raises it at its await."""
    async with open_rt(restate, inactivity_timeout=60, abort_timeout=600) as rt:
        await common.check_unoffered_effects_are_refused_at_start(rt, "Restate")
        for wf, words in {
            r_long_timeout: "_slow_step' has timeout=7200s",
            r_long_timeout_in_helper: "timeout=3601s",
        }.items():
            run_id = f"bad-{uuid.uuid4().hex[:8]}"
            with pytest.raises(errors.EffectNotAllowedError, match=words) as caught:
                await rt.start(wf, run_id=run_id)
            assert "660s" in str(caught.value) and "Nothing was started" in str(caught.value)
            with pytest.raises(errors.RunNotFoundError):
                await rt.describe(run_id)
        assert await (await rt.start(r_any_callable)).result(timeout=30) == [1, 2, 103, 8]
        assert await (await rt.start(r_dynamic_timeout, 5.0)).result(timeout=30) == 1 + 2
        bad = await rt.start(r_dynamic_timeout, 661.0)
        with pytest.raises(errors.RunFailedError) as failed:
            await bad.result(timeout=30)
        assert failed.value.type_name == "EffectNotAllowedError"
        assert "abort_timeout" in failed.value.message


@cd.workflow
async def r_sleeper(seconds: float) -> str:
    await cd.call(common.greet, "x")
    await cd.sleep(seconds)
    return "slept"


@cd.workflow
async def r_waits() -> Any:
    return await cd.await_signal("go")


@cd.workflow
async def r_waits_twice() -> list[Any]:
    return [await cd.await_signal("go"), await cd.await_signal("go")]


async def test_start_describe_signal_cancel_edges(restate: RestateServer) -> None:
    async with open_rt(restate) as rt:
        # Idempotent start on run_id.
        run_id = f"idem-{uuid.uuid4().hex[:8]}"
        first = await rt.start(r_sleeper, 2.0, run_id=run_id)
        again = await rt.start(r_sleeper, 2.0, run_id=run_id)
        assert (first.created, again.created) == (True, False)
        with pytest.raises(errors.RunAlreadyExistsError, match="already exists") as refused:
            await rt.start(r_sleeper, 9.0, run_id=run_id)
        assert refused.value.run_id == run_id
        with pytest.raises(errors.RunAlreadyExistsError):
            await rt.start(r_waits, run_id=run_id)
        for bad in ("", "x" * 256, "a\nb"):  # the run_id rule of every store, not a random id
            with pytest.raises(errors.ConfigurationError, match="run_id"):
                await rt.start(r_sleeper, 2.0, run_id=bad)
        # describe while the durable timer runs
        info = await common.wait_for(rt, run_id, common.waiting_on("timer until"))
        assert info.workflow == "r_sleeper" and info.step == 2 and info.wake_at is not None
        assert info.inputs == {"args": [2.0], "kwargs": {}}
        assert info.created_at is not None and info.updated_at is not None
        assert await first.result(timeout=30) == "slept"
        # Still the same run once it has finished: same result, not a second execution.
        done = await rt.start(r_sleeper, 2.0, run_id=run_id)
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
        waiter = await rt.start(r_waits_twice)
        assert await waiter.signal("go", {"v": 1}, signal_id="s-1") is True
        assert await waiter.signal("go", {"v": 2}, signal_id="s-1") is False  # a retried send
        with pytest.raises(errors.ResultTimeoutError):
            await waiter.result(timeout=0.05)
        assert await waiter.signal("go", {"v": 3}, signal_id="s-2") is True
        assert await waiter.result(timeout=30) == [{"v": 1}, {"v": 3}]


async def test_plain_restate_clients_and_http1(restate: RestateServer) -> None:
    """Any Restate client can start a run (JSON arguments) and signal it (a JSON value), and
    an endpoint registered as HTTP/1.1 (request/response protocol) runs the same workflows;
    two services on one server keep their runs apart."""
    async with (
        open_rt(restate, service="plain", http1="true") as rt,
        open_rt(restate, service="other") as other,
    ):
        run_id = f"plain-{uuid.uuid4().hex[:8]}"
        ingress = f"http://{restate.ingress}"
        async with httpx.AsyncClient() as client:
            started = await client.post(
                f"{ingress}/plain/{run_id}/run/send", json={"workflow": "r_waits_twice"}
            )
            assert started.status_code in (200, 202), started.text
            await common.wait_for(rt, run_id, common.waiting_on("'go'"))
            with pytest.raises(errors.RunNotFoundError):
                await other.describe(run_id)  # same key, other service: not there
            for value in ({"from": "curl"}, [1, 2]):
                sent = await client.post(
                    f"{ingress}/plain/{run_id}/signal", json={"name": "go", "value": value}
                )
                assert sent.status_code == 200, sent.text
        assert await rt.result(run_id, timeout=30) == [{"from": "curl"}, [1, 2]]
        info = await rt.describe(run_id)
        assert (info.workflow, info.inputs) == ("r_waits_twice", {"args": [], "kwargs": {}})
        sleeper = await rt.start(r_sleeper, 0.2)
        assert await sleeper.result(timeout=30) == "slept"


def test_readme_example_runs(restate: RestateServer, tmp_path: Path) -> None:
    """adapters/restate/examples/research_on_restate.py, the README's runnable example."""
    example = Path(__file__).parents[1] / "adapters/restate/examples/research_on_restate.py"
    done = subprocess.run(
        [sys.executable, str(example), "--url", restate.url()],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "AI_PIPELINE_LEDGER": str(tmp_path / "ledger.db")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "waiting on signal 'approval'" in done.stdout
    assert "answer: Yes." in done.stdout


# == an endpoint process SIGKILLed mid-step ==================================================================


class Endpoints:
    """Endpoint processes of tests/adapters_common.py, all serving on the URL's listen address."""

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
        line = proc.stdout.readline()  # "ready" once it serves and is registered
        assert line.strip() == "ready", f"endpoint exited with {proc.poll()}"
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


async def test_endpoint_killed_mid_step_resumes(restate: RestateServer, tmp_path: Path) -> None:
    """SIGKILL the endpoint process while step d runs: a new endpoint on the same address
    resumes the run; steps that completed before the kill (a, b, c) are not run again, d runs
    again with the same key. SIGTERM still stops an endpoint process."""
    sink = tmp_path / "sink.db"
    url = restate.url(retry_max_interval=0.5)
    endpoints = Endpoints(url, sink)
    try:
        e1 = await anyio.to_thread.run_sync(endpoints.spawn)
        async with cd.Runtime(url, worker=False) as rt:
            run_id = f"kill-{uuid.uuid4().hex[:8]}"
            await rt.start(common.xe_resumable, 1.5, run_id=run_id)
            deadline = time.monotonic() + 60
            while not {("c", "end"), ("d", "start")} <= {(c[0], c[3]) for c in _calls(sink)}:
                assert time.monotonic() < deadline, _calls(sink)
                assert e1.poll() is None, "endpoint 1 died on its own"
                await asyncio.sleep(0.05)
            e1.kill()  # SIGKILL: step d is in flight
            await anyio.to_thread.run_sync(e1.wait)
            at_kill = _calls(sink)
            # No endpoint: describe answers from the server, with Restate's failed retries.
            info = await common.wait_for(rt, run_id, lambda i: i.crash_count >= 1)
            assert (info.status, info.workflow) == (cd.RunStatus.RUNNING, "xe_resumable")
            assert info.inputs == {"args": [1.5], "kwargs": {}}
            assert info.last_error, info
            e2 = await anyio.to_thread.run_sync(endpoints.spawn)
            assert await rt.result(run_id, timeout=60) == ["a", "b", "c", "d", "e"]
        e2.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(functools.partial(e2.wait, 10)) == -signal.SIGTERM
    finally:
        endpoints.stop_all()
    calls = _calls(sink)
    started = [(label, key, pid) for label, key, pid, phase in calls if phase == "start"]
    by_label: dict[str, list[tuple[str, int]]] = {}
    for label, key, pid in started:
        by_label.setdefault(label, []).append((key, pid))
    assert [pid for _, pid in by_label["a"]] == [e1.pid]  # completed before the kill: once
    assert [pid for _, pid in by_label["b"]] == [e1.pid]
    assert [pid for _, pid in by_label["c"]] == [e1.pid]
    assert [pid for _, pid in by_label["d"]] == [e1.pid, e2.pid]  # in flight: again...
    assert len({key for key, _ in by_label["d"]}) == 1  # ...with the same idempotency key
    assert by_label["d"][0][0] == f"{run_id}:3"
    assert [pid for _, pid in by_label["e"]] == [e2.pid]
    assert not any(label == "d" and phase == "end" for label, _, _, phase in at_kill)
