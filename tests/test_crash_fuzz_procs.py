"""Real processes: workers SIGKILLed at random moments while generated workflows run.

Worker processes (tests/crashfuzz_app.py) run the generated plan workflows of crashfuzz_model.py
on SQLite and on PostgreSQL (when its plugin is installed and the server answers); the parent
starts runs, sends their signals at random moments (each one twice with the same id: X12),
SIGKILLs a random worker every few hundred milliseconds and starts a fresh one. Once the kills
stop, every run must end as its plan says, its journal must replay, every successful step's
effect must be applied once under its own key, and every re-invocation of a step must be
explained by a kill (or a lost lease) of the process that was running it. The fast profile
makes 30 kills per store; CRASHFUZZ_PROFILE=long makes 200.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
import crashfuzz_model as model
from coro_durable.errors import RunError

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

APP = Path(__file__).with_name("crashfuzz_app.py")
LONG = os.environ.get("CRASHFUZZ_PROFILE") == "long"
KILLS = int(os.environ.get("CRASHFUZZ_KILLS", "200" if LONG else "50"))
RUNS = KILLS + 4  # one new run per kill, so the kills keep landing on busy workers
WORKERS = 2
STALL = 60.0  # seconds without any run progressing: a stuck run


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the parent only starts runs, signals and polls; workers are processes


@pytest.fixture(params=["sqlite", "postgres"])
def proc_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs.db'}"
    from conftest import STORES, pg_test_url

    if "postgres" not in STORES:
        pytest.skip("the coro-durable-postgres plugin is not installed")
    return pg_test_url()


def random_plan(rng: random.Random, index: int) -> model.Plan:
    """A plan of 3-6 ops whose steps take 20-150 ms, so kills land inside them."""
    tags = iter(range(100))

    def leaf() -> list[Any]:
        mode = rng.choice(["ok", "ok", "ok", "flaky", "fail"])
        attempts = rng.randint(2 if mode == "flaky" else 1, 3)
        backoff = rng.choice([0.0, 0.02, 0.1])  # 0.1 > inline_wait: the retry parks
        return [
            f"t{next(tags)}",
            mode,
            attempts,
            backoff,
            rng.random() < 0.3,
            rng.uniform(0.02, 0.15),
        ]

    ops: model.Plan = []
    for i in range(rng.randint(3, 6)):
        kind = rng.choice(["call", "call", "call", "gather", "sleep", "signal", "random"])
        if kind == "call":
            ops.append(["call", leaf(), rng.random() < 0.7])
        elif kind == "gather":
            leaves = [leaf() for _ in range(rng.randint(2, 3))]
            ops.append(["gather", leaves, rng.random() < 0.7, rng.random() < 0.5])
        elif kind == "sleep":
            ops.append(["sleep", rng.choice([0.02, 0.2])])
        elif kind == "signal":
            # An armed timeout that must not fire: every signal is sent, but in the long
            # profile the kill loop alone lasts 75-120 s before the last ones go out.
            ops.append(["signal", f"s{index}.{i}", rng.choice([None, 3600.0])])
        else:
            ops.append(["random", f"t{next(tags)}"])
    return ops


class Cluster:
    """Worker processes on one store and sink; each one's stderr goes to its own log."""

    def __init__(self, store: str, sink: Path, logs: Path) -> None:
        self.store, self.sink, self.logs = store, sink, logs
        logs.mkdir()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.born: dict[int, float] = {}
        self.killed: dict[int, float] = {}  # pid -> when it was SIGKILLed

    def spawn(self) -> None:
        index = len(self.procs)
        with (self.logs / f"{index}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(APP), self.store, str(self.sink)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(
                        [str(APP.parent), os.environ.get("PYTHONPATH", "")]
                    ),
                },
            )
        self.procs[proc.pid] = proc
        self.born[proc.pid] = time.monotonic()

    def victim(self, rng: random.Random) -> subprocess.Popen[bytes]:
        """A random live worker, preferring those past start-up (busy with runs)."""
        live = self.live()
        settled = [p for p in live if time.monotonic() - self.born[p.pid] > 0.5]
        return rng.choice(settled or live)

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs.values() if p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        self.killed[proc.pid] = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def lost_leases(self) -> set[int]:
        """Workers that logged losing a lease (a stall: their in-flight steps may re-run)."""
        pids = set()
        for log in self.logs.iterdir():
            for line in log.read_text(errors="replace").splitlines():
                if "was lost" in line and "lease" in line:
                    pids.add(int(line.split(" ", 1)[0]))
        return pids


def unexplained_reruns(
    sink: Path, killed: dict[int, float], stalled: set[int]
) -> tuple[list[str], int]:
    """Re-invocations of a step that no failed attempt, kill or lost lease explains (and how
    many re-invocations a kill or lost lease explained)."""
    db = sqlite3.connect(sink)
    try:
        calls: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for key, pid, at in db.execute("SELECT key, pid, at FROM invocations ORDER BY at"):
            calls[key].append((at, pid))
        failures: dict[str, int] = defaultdict(int)
        for (key,) in db.execute("SELECT key FROM failures"):
            failures[key] += 1
    finally:
        db.close()
    problems = []
    explained = 0
    for key, seq in calls.items():
        reruns = len(seq) - 1
        interrupted = sum(1 for at, pid in seq[:-1] if pid in stalled or killed.get(pid, 0.0) > at)
        explained += min(interrupted, max(0, reruns - failures[key]))
        if reruns > failures[key] + interrupted:
            problems.append(
                f"step {key} ran {len(seq)} times ({failures[key]} failed attempts, "
                f"{interrupted} runs interrupted by a kill or a lost lease): {seq}"
            )
    return problems, explained


async def wait_until_final(
    client: cd.Runtime, plans: dict[str, model.Plan], seed: int
) -> dict[str, cd.RunInfo]:
    """Every run's final RunInfo, once the live workers have finished them all. Fails with each
    unfinished run's state when none made progress (a step or an end) for STALL seconds, which
    on a loaded machine is a stuck run, not a slow one."""
    final: dict[str, cd.RunInfo] = {}
    progress: dict[str, int] = {}
    last = time.monotonic()
    while len(final) < len(plans):
        for run_id in plans:
            if run_id in final:
                continue
            info = await client.describe(run_id)
            if info.status in model.FINAL:
                final[run_id] = info
                last = time.monotonic()
            elif progress.get(run_id) != info.step:
                progress[run_id] = info.step
                last = time.monotonic()
        if time.monotonic() - last > STALL:
            stuck = [await client.describe(r) for r in plans if r not in final]
            shown = "\n  ".join(
                f"{i.run_id}: {i.status} at step {i.step}, waiting on {i.waiting_on!r}, owner "
                f"{i.owner!r}, wake_at {i.wake_at}, crashes {i.crash_count}, last error "
                f"{i.last_error!r}"
                for i in stuck
            )
            raise AssertionError(
                f"seed {seed}: {len(stuck)} runs made no progress for {STALL}s:\n  {shown}"
            )
        await anyio.sleep(0.1)
    return final


@pytest.mark.timeout(900 if LONG else 180)
async def test_sigkilled_workers_never_break_exactly_once(
    proc_store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Generated workflows under random SIGKILLs of their worker processes end as their plans
    say, replay, apply each effect once under its own key, and re-run a step only when the
    process running it was killed or stalled."""
    seed = int(os.environ.get("CRASHFUZZ_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    sink = tmp_path / "sink.db"
    world = model.SqliteWorld(str(sink))
    cluster = Cluster(proc_store, sink, tmp_path / "logs")
    plans = {f"p{seed}-{i}": random_plan(rng, i) for i in range(RUNS)}
    pending: dict[str, list[str]] = {}  # started run -> signals not sent yet
    sent: list[tuple[str, str, str]] = []
    started = time.monotonic()
    try:
        async with cd.Runtime(proc_store, worker=False, poll_interval=0.05) as client:

            async def send(run_id: str, name: str, payload: str, sid: str) -> bool | None:
                try:
                    return await client.signal(run_id, name, payload, signal_id=sid)
                except RunError:  # the run already ended (it failed before reading it)
                    return None

            queue = list(plans.items())

            async def start(run_id: str, ops: model.Plan) -> None:
                await client.start(model.WORKFLOW, run_id, ops, run_id=run_id)
                pending[run_id] = model.signals_of(ops)

            for run_id, ops in queue[:4]:
                await start(run_id, ops)
            del queue[:4]
            for _ in range(WORKERS):
                cluster.spawn()
            kills = 0
            while kills < KILLS:
                await anyio.sleep(rng.uniform(0.15, 0.6))
                if queue:
                    await start(*queue.pop(0))
                while len(cluster.live()) < WORKERS:
                    cluster.spawn()
                cluster.kill(cluster.victim(rng))
                kills += 1
                cluster.spawn()
                waiting = [(r, n) for r, names in pending.items() for n in names]
                if waiting and rng.random() < 0.5:  # a human answers one signal, sometimes twice
                    run_id, name = rng.choice(waiting)
                    sid = f"{run_id}:{name}"
                    assert await send(run_id, name, f"p:{name}", sid) is not False
                    pending[run_id].remove(name)
                    sent.append((run_id, name, sid))
                if sent and rng.random() < 0.3:
                    run_id, name, sid = rng.choice(sent)
                    assert await send(run_id, name, "p:duplicate", sid) is not True, sid
            while len(cluster.live()) < WORKERS:
                cluster.spawn()
            for run_id, ops in queue:
                await start(run_id, ops)
            for run_id, names in pending.items():
                for name in names:
                    assert await send(run_id, name, f"p:{name}", f"{run_id}:{name}") is not False
            problems: list[str] = []
            for run_id, info in (await wait_until_final(client, plans, seed)).items():
                ops = plans[run_id]
                history = await client.history(run_id)
                problems += model.check_finished_run(run_id, ops, info, history, world)
                replayed = await client.replay(run_id)
                if not replayed.matched:
                    problems.append(f"run {run_id} does not replay: {replayed.detail}")
    finally:
        cluster.stop_all()
    stalled = cluster.lost_leases()
    problems += world.stored_violations(stalled)
    unexplained, interrupted = unexplained_reruns(sink, cluster.killed, stalled)
    problems += unexplained
    elapsed = time.monotonic() - started
    assert not problems, f"seed {seed}:\n  " + "\n  ".join(problems)
    assert kills == KILLS
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(
            f"\ncrash-fuzz processes on {proc_store.split(':')[0]}: {KILLS} SIGKILLs over {RUNS} "
            "generated workflows "
            f"({len(cluster.procs)} worker processes, seed {seed}) in {elapsed:.0f}s: "
            f"{interrupted} steps re-ran after their process died mid-step, 0 violations",
            flush=True,
        )
