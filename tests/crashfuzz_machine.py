"""The crash-fuzz state machine (used by test_crash_fuzz.py and test_crash_fuzz_planted.py).

See test_crash_fuzz.py for what it proves. One example = a fresh database, a client Runtime, a
crash-free reference Runtime (memory store, every signal delivered up front) and 1-3 fuzzed
worker Runtimes, all on one event loop in a blocking portal (Hypothesis rules are sync).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import coro_durable as cd
import crashfuzz_model as model
from coro_durable.errors import RunError
from coro_durable.testing import (
    CRASH_POINTS,
    Fault,
    FaultPlan,
    Trace,
    no_faults,
    wait_for_status,
)
from coro_durable.testing._planted import Planted

PROFILE = os.environ.get("CRASHFUZZ_PROFILE", "fast")
LONG = PROFILE == "long"

LEASE = 0.2
WORKER_OPTIONS: dict[str, Any] = {
    "lease_ttl": LEASE,
    "poll_interval": 0.01,
    "inline_wait": 0.03,  # timers and backoffs above this park the run
    "max_crashes": 1_000_000,  # faults are injected on purpose; quarantine is tested elsewhere
}
MAX_RUNS = 4  # concurrent generated workflows per example
MAX_WORKERS = 3
FUZZ_POINTS = (*CRASH_POINTS, "commit.fail", "X5", "X9")


def machine_settings() -> settings:
    """The fast profile: a handful of examples per store and event loop (8 combinations)."""
    if LONG:
        examples, steps = int(os.environ.get("CRASHFUZZ_EXAMPLES", "65")), 30
    else:
        examples, steps = int(os.environ.get("CRASHFUZZ_EXAMPLES", "8")), 14
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        print_blob=True,  # a failure prints the @reproduce_failure blob that replays it
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
    )


# -- the summary ----------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the fuzz did, over the session (printed at the end of the module)."""

    workflows: int = 0
    examples: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    store_errors: int = 0
    duplicate_signals: int = 0
    lost_leases: int = 0
    workers_started: int = 0
    rules: int = 0
    effects_checked: int = 0
    invocations: int = 0
    violations: int = 0
    by_combo: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        points = "  ".join(
            f"{p}: {self.faults[p]}" for p in (*FUZZ_POINTS, "renew") if self.faults[p]
        )
        return [
            f"crash-fuzz state machine ({PROFILE} profile): {self.examples} examples, "
            f"{self.rules} rule steps, {self.workflows} workflows generated, "
            f"{self.workers_started} workers started, {self.seconds:.0f}s",
            f"  faults injected: {self.crashes} crashes, {self.store_errors} store errors "
            f"({self.lost_leases} lease outages, lost renewals included), "
            f"{self.duplicate_signals} duplicate signals (X12)",
            f"  per point: {points}  X12: {self.duplicate_signals}",
            f"  effects checked: {self.effects_checked} journal entries, {self.invocations} step "
            "invocations",
            f"  violations: {self.violations}",
            "  combos: " + ", ".join(f"{k}={v}" for k, v in sorted(self.by_combo.items())),
        ]


STATS = Stats()


# -- strategies -------------------------------------------------------------------------------------

_modes = st.sampled_from(["ok", "ok", "ok", "flaky", "fail"])
_backoffs = st.sampled_from([0.0, 0.0, 0.01, 0.06])  # 0.06 > inline_wait: the retry parks
_delays = st.sampled_from([0.0, 0.0, 0.0, 0.005, 0.3])  # 0.3 > the lease


def _leaf_fix(raw: tuple[str, int, float, bool, float]) -> list[Any]:
    mode, attempts, backoff, is_async, delay = raw
    if mode == "flaky":
        attempts = max(attempts, 2)  # its outcome must not depend on a crash hiding a failure
    return ["", mode, attempts, backoff, is_async, delay]


_leaf = st.tuples(_modes, st.integers(1, 3), _backoffs, st.booleans(), _delays).map(_leaf_fix)
_op = st.one_of(
    st.tuples(st.just("call"), _leaf, st.booleans()),
    st.tuples(st.just("call"), _leaf, st.just(True)),
    st.tuples(
        st.just("gather"), st.lists(_leaf, min_size=2, max_size=3), st.booleans(), st.booleans()
    ),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.01, 0.06])),
    st.tuples(st.just("signal"), st.sampled_from([None, 60.0])),
    st.tuples(st.just("random")),
    st.tuples(st.just("race"), _leaf, st.booleans()),
    st.tuples(st.just("signal_race")),
    st.tuples(st.just("send")),
)


def _tagged(ops: list[tuple[Any, ...]]) -> model.Plan:
    """JSON plans with unique step tags t0, t1, ... and signal names s0, s1, ..."""
    tags, names = itertools.count(), itertools.count()
    plan: model.Plan = []
    for raw in ops:
        op = [list(x) if isinstance(x, list) else x for x in raw]
        if op[0] in ("call", "race"):
            op[1] = [f"t{next(tags)}", *op[1][1:]]
        elif op[0] == "gather":
            op[1] = [[f"t{next(tags)}", *leaf[1:]] for leaf in op[1]]
        elif op[0] == "signal":
            op = ["signal", f"s{next(names)}", op[1]]
        elif op[0] == "random":
            op = ["random", f"t{next(tags)}"]
        elif op[0] in ("signal_race", "send"):
            op = [op[0], f"s{next(names)}"]
        plan.append(op)
    return plan


plans = st.lists(_op, min_size=1, max_size=6).map(_tagged)


# -- the machine ------------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    future: Future[bool]
    stop: anyio.Event


@dataclass
class RunState:
    ops: model.Plan
    signals: list[str]
    sent: dict[str, str] = field(default_factory=dict)  # signal name -> signal id
    finished: bool = False


class CrashFuzz(RuleBasedStateMachine):
    """One example: a fresh database, a client, a reference runtime, and 1-3 fuzzed workers."""

    backend = "asyncio"
    store_kind = "memory"
    stats = STATS  # the planted-bug hunts count elsewhere
    # () -> (a function that opens one more store object on this example's fresh database)
    databases: Callable[[], Callable[[], cd.Store]]
    # Set by the planted-bug tests: the violation kinds found (the machine stops at the first).
    found: list[str] | None = None
    # Set by the planted-bug tests: the bug each worker gets (its store wrappers, instruments).
    planted = Planted()
    # False ignores the trace's white-box check that outcomes are journaled before they are fed,
    # to prove the black-box checks catch a persist-before-proceed bug on their own.
    white_box = True

    def __init__(self) -> None:
        super().__init__()
        self.started = time.monotonic()
        self.failed = False
        self.stack = contextlib.ExitStack()
        self.portal: BlockingPortal = self.stack.enter_context(start_blocking_portal(self.backend))
        self.world = model.WORLD = model.World()
        self.run_ids: set[str] = set()
        self.trace = Trace(runs=self.run_ids)
        self.world.stale = self.trace.stale_here
        self.plan = FaultPlan(runs=self.run_ids)  # the workers' own instruments (see spawn)
        self.new_store = type(self).databases()
        self.client: cd.Runtime = self.stack.enter_context(
            self.portal.wrap_async_context_manager(
                cd.Runtime(self.new_store(), worker=False, poll_interval=0.01)
            )
        )
        self.reference: cd.Runtime = self.stack.enter_context(
            self.portal.wrap_async_context_manager(
                cd.Runtime(cd.MemoryStore(), worker_id="reference", poll_interval=0.01)
            )
        )
        self.prefix = uuid.uuid4().hex[:8]
        self.workers: dict[str, Worker] = {}
        self.names = itertools.count()
        self.runs: dict[str, RunState] = {}
        self.stats.examples += 1
        self.stats.by_combo[f"{self.store_kind}/{self.backend}"] += 1
        self.spawn()

    # -- plumbing ---------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def bounded() -> Any:
            with anyio.fail_after(60):
                return await fn(*args, **kwargs)

        return self.portal.call(bounded)

    def live(self) -> list[str]:
        return [name for name, w in self.workers.items() if not w.future.done()]

    def spawn(self) -> str:
        name = f"w{next(self.names)}"
        bug = self.planted
        store = bug.above(self.trace.store(bug.beneath(self.new_store()), name))
        instruments = [self.plan, self.trace, *bug.instruments()]

        async def work(*, task_status: anyio.abc.TaskStatus[anyio.Event]) -> bool:
            stop = anyio.Event()
            runtime = cd.Runtime(store, worker_id=name, instruments=instruments, **WORKER_OPTIONS)
            async with runtime:
                task_status.started(stop)
                while not stop.is_set() and runtime._crashed is None:
                    with anyio.move_on_after(0.01):
                        await stop.wait()
            return runtime._crashed is not None

        future, stop = self.portal.start_task(work)
        self.workers[name] = Worker(name, future, stop)
        self.stats.workers_started += 1
        return name

    def stop(self, name: str) -> None:
        worker = self.workers[name]
        if not worker.future.done():
            self.portal.call(worker.stop.set)
        worker.future.result(timeout=60)

    async def _start(self, run_id: str, ops: model.Plan) -> None:
        await self.client.start(model.WORKFLOW, run_id, ops, run_id=run_id)
        ref = f"ref-{run_id}"
        await self.reference.start(model.WORKFLOW, ref, ops, run_id=ref)
        for name in model.signals_of(ops):
            await self.reference.signal(ref, name, f"p:{name}", signal_id=f"{ref}:{name}")

    async def _signal(self, run_id: str, name: str, payload: str, sid: str) -> bool | None:
        try:
            return await self.client.signal(run_id, name, payload, signal_id=sid)
        except RunError:  # the run already finished (it failed before reading the signal)
            return None

    async def _verify(self, run_id: str) -> tuple[list[str], int]:
        """(problems, journal entries) of a finished run."""
        with no_faults():
            info = await self.client.describe(run_id)
            history = await self.client.history(run_id)
            replayed = await self.client.replay(run_id)
            ref = await wait_for_status(self.reference, f"ref-{run_id}", *model.FINAL, timeout=30)
        problems = model.check_finished_run(
            run_id, self.runs[run_id].ops, info, history, self.world
        )
        if not replayed.matched:
            problems.append(f"run {run_id}: its journal does not replay: {replayed.detail}")
        mine = (info.status, info.result, info.error)
        theirs = (ref.status, ref.result, ref.error)
        if mine != theirs:
            problems.append(f"run {run_id} ended {mine}, the crash-free reference run {theirs}")
        return problems, len(history)

    def check(self) -> None:
        violations = [
            v for v in self.trace.violations if self.white_box or v.kind != "fed-unjournaled"
        ]
        problems = [str(v) for v in violations]
        problems += self.world.violations
        for run_id, state in self.runs.items():
            if state.finished:
                continue
            info = self.call(self.client.describe, run_id)
            if info.status in model.FINAL:
                state.finished = True
                wrong, entries = self.call(self._verify, run_id)
                problems += wrong
                self.stats.effects_checked += entries
        if problems:
            self.failed = True
            self.stats.violations += len(problems)
            found = type(self).found
            if found is not None:
                found.extend(
                    [v.kind for v in violations] + ["world"] * len(self.world.violations) or ["run"]
                )
            raise AssertionError("exactly-once violated:\n  " + "\n  ".join(problems))

    # -- rules --------------------------------------------------------------------------------------

    @initialize(
        first=plans,
        second=plans,
        points=st.lists(st.sampled_from(FUZZ_POINTS), min_size=1, max_size=3),
        nth=st.integers(1, 4),
        outage=st.sampled_from([0, 0, 8, 16]),
    )
    def begin(
        self, first: model.Plan, second: model.Plan, points: list[str], nth: int, outage: int
    ) -> None:
        """Every example starts with two workflows and crashes armed at a few points, and
        sometimes with the first workers' lease renewals failing for a while."""
        for point in points:
            self.plan.add(Fault(point, nth=nth, action="crash"))
        for worker in ("w0", "w1", "w2") if outage else ():
            self.plan.add(Fault("renew", run_id=worker, times=outage))
        self.start_workflow(first)
        self.start_workflow(second)

    @precondition(lambda self: len(self.runs) < MAX_RUNS)
    @rule(ops=plans)
    def start_workflow(self, ops: model.Plan) -> None:
        self.stats.rules += 1
        run_id = f"{self.prefix}-{len(self.runs)}"
        self.run_ids.add(run_id)
        self.runs[run_id] = RunState(ops, model.signals_of(ops))
        self.call(self._start, run_id, ops)
        self.stats.workflows += 1

    # Rules draw an index and map it onto the current state (which timing decides) rather than
    # drawing from that state: replaying an example then draws the same data.

    @rule(pick=st.integers(0, 63))
    def send_signal(self, pick: int) -> None:
        self.stats.rules += 1
        waiting = [
            (r, n)
            for r, s in self.runs.items()
            for n in s.signals
            if n not in s.sent and not s.finished
        ]
        if not waiting:
            return
        run_id, name = waiting[pick % len(waiting)]
        sid = f"{run_id}:{name}"
        delivered = self.call(self._signal, run_id, name, f"p:{name}", sid)
        assert delivered is not False, f"the first delivery of signal {sid} was refused"
        self.runs[run_id].sent[name] = sid

    @rule(pick=st.integers(0, 63))
    def send_signal_again(self, pick: int) -> None:
        """X12: a client retries a signal with the same id (and a different payload)."""
        self.stats.rules += 1
        sent = [(r, n, sid) for r, s in self.runs.items() for n, sid in s.sent.items()]
        if not sent:
            return
        run_id, name, sid = sent[pick % len(sent)]
        delivered = self.call(self._signal, run_id, name, "p:duplicate", sid)
        assert delivered is not True, f"signal id {sid} was accepted twice (X12)"
        self.stats.duplicate_signals += 1

    @rule(point=st.sampled_from(FUZZ_POINTS), nth=st.integers(1, 6), as_error=st.booleans())
    def arm_fault(self, point: str, nth: int, as_error: bool) -> None:
        """Crash the worker that next passes ``point`` (after nth - 1 more hits); at the commit
        points, either fail the commit / lose its acknowledgement, or crash there."""
        self.stats.rules += 1
        error = as_error and point in ("commit.fail", "X5", "X9")
        self.plan.add(Fault(point, nth=nth, action="error" if error else "crash"))

    @rule(pick=st.integers(0, 63), times=st.integers(4, 16))
    def lose_lease_renewals(self, pick: int, times: int) -> None:
        """The store stops answering one worker's renewals long enough for its leases to
        expire: another worker (or itself) takes its runs over while it may still be running."""
        self.stats.rules += 1
        live = self.live()
        if not live:
            return
        worker = live[pick % len(live)]
        self.plan.add(Fault("renew", run_id=worker, times=times))
        self.stats.lost_leases += 1

    @rule()
    def start_worker(self) -> None:
        self.stats.rules += 1
        if len(self.live()) < MAX_WORKERS:
            self.spawn()

    @rule()
    def race_two_workers(self) -> None:
        self.stats.rules += 1
        if len(self.live()) <= 1:
            self.spawn()
            self.spawn()

    @rule(pick=st.integers(0, 63))
    def stop_worker(self, pick: int) -> None:
        """A graceful shutdown (a deploy): the worker hands its runs back."""
        self.stats.rules += 1
        live = self.live()
        if live:
            self.stop(live[pick % len(live)])

    @rule(seconds=st.sampled_from([0.0, 0.02, 0.05, 0.1, 0.25, 0.5]))
    def let_time_pass(self, seconds: float) -> None:
        self.stats.rules += 1
        self.call(anyio.sleep, seconds)

    @invariant()
    def exactly_once_so_far(self) -> None:
        if not self.failed:
            self.check()

    # -- the end --------------------------------------------------------------------------------------

    def drain(self) -> None:
        """Every run must reach its end, and then pass every check. The faults still armed
        play out first (each fires a bounded number of times); after a while they are disarmed,
        and from then on every run must finish."""
        disarm_at = time.monotonic() + 5
        deadline = disarm_at + (60 if LONG else 30)
        while True:
            if time.monotonic() > disarm_at:
                self.plan.disarm()
            if not self.live():
                self.spawn()
            pending = [r for r, s in self.runs.items() if not s.finished]
            for run_id in pending:
                state = self.runs[run_id]
                info = self.call(self.client.describe, run_id)
                if info.status in model.FINAL:
                    continue
                for name in state.signals:
                    if name not in state.sent:
                        sid = f"{run_id}:{name}"
                        assert self.call(self._signal, run_id, name, f"p:{name}", sid) is not False
                        state.sent[name] = sid
            self.check()
            if all(s.finished for s in self.runs.values()):
                return
            if time.monotonic() > deadline:
                stuck = {
                    r: self.call(self.client.describe, r)
                    for r, s in self.runs.items()
                    if not s.finished
                }
                self.failed = True
                raise AssertionError(
                    "runs stranded after faults stopped: "
                    + "; ".join(
                        f"{r} {i.status} on {i.waiting_on} (crashes {i.crash_count}, "
                        f"{i.last_error})"
                        for r, i in stuck.items()
                    )
                )
            time.sleep(0.02)

    def teardown(self) -> None:
        try:
            if not self.failed:
                self.drain()
        finally:
            try:
                for name in self.live():
                    self.stop(name)
            finally:
                self.stack.close()
                self.stats.faults.update(f.point for f in self.plan.fired)
                self.stats.crashes += self.plan.crashes
                self.stats.store_errors += self.plan.errors
                self.stats.invocations += len(self.world.invocations)
                self.stats.seconds += time.monotonic() - self.started


# -- per store -----------------------------------------------------------------------------------------


def databases(store_kind: str, tmp_path: Path) -> Callable[[], Callable[[], cd.Store]]:
    """Per example, a fresh database of the kind; per call, one more store object on it (what
    one more worker process would open)."""
    counter = itertools.count()

    def fresh() -> Callable[[], cd.Store]:
        if store_kind == "memory":
            shared = cd.MemoryStore()
            return lambda: shared
        if store_kind == "sqlite":
            url = f"sqlite:///{tmp_path / f'example-{next(counter)}.db'}"
        elif store_kind == "postgres":
            from conftest import pg_test_url

            url = pg_test_url()
        else:
            from conftest import redis_test_url

            url = redis_test_url()
        return lambda: cd.open_store(url)

    return fresh


def machine_for(store_kind: str, backend: str, tmp_path: Path) -> type[CrashFuzz]:
    return type(
        f"CrashFuzz_{store_kind}_{backend}",
        (CrashFuzz,),
        {
            "backend": backend,
            "store_kind": store_kind,
            "databases": staticmethod(databases(store_kind, tmp_path)),
        },
    )
