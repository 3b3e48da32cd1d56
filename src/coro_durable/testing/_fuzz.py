"""The crash fuzzer: crash_fuzz, crash_fuzz_async, CrashFuzzReport and the pytest fixture."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import random as _random
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from .._core.faults import SimulatedCrash
from .._core.waits import WaitKind
from ..errors import ConfigurationError, RunError
from ..journal._records import TERMINAL, JournalEntry, RunRecord, RunStatus
from ..runtime._runtime import Runtime
from ..store._memory import MemoryStore
from ..store._protocol import Store
from ..store._registry import open_store
from ..store._sqlite import SqliteStore
from ..workflow import _registry
from ._faults import _NOT_FUZZED, CRASH_POINTS, POINTS, Fault, FaultPlan, no_faults
from ._trace import Trace, Violation

# ---- crash fuzz ------------------------------------------------------------------------------------


@dataclass(slots=True)
class CrashFuzzReport:
    """What :func:`crash_fuzz` did and found. ``ok`` is True when ``violations`` is empty."""

    workflow: str
    store: str
    seed: int
    reference: Any = None  # the crash-free run's result (or the RunError it ended with)
    effects: int = 0  # journal entries of the crash-free run
    runs: int = 0  # runs executed, the crash-free one and shrinking reruns included
    schedules: int = 0  # fault schedules tried
    crashes: int = 0  # simulated process crashes injected
    store_errors: int = 0  # failed / unacknowledged commits and lost renewals injected
    duplicate_signals: int = 0  # signals re-sent with an id already delivered (X12)
    by_point: Counter[str] = field(default_factory=Counter)  # faults fired per point
    effects_checked: int = 0  # journal entries verified across all runs
    violations: list[Violation] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self, limit: int = 10) -> str:
        """What ran, what was injected, and the first ``limit`` violations."""
        points = "  ".join(f"{p}: {self.by_point[p]}" for p in POINTS if self.by_point[p])
        if self.duplicate_signals:
            points += f"  X12: {self.duplicate_signals}"
        lines = [
            f"crash_fuzz({self.workflow}) on {self.store}, seed {self.seed}: {self.runs} runs, "
            f"{self.schedules} fault schedules, {self.crashes} crashes and {self.store_errors} "
            f"store errors injected, {self.effects} effects per run, {self.effects_checked} "
            f"journal entries checked, {self.elapsed:.1f}s",
            f"  faults per point: {points or 'none'}",
            f"  violations: {len(self.violations)}",
        ]
        lines += [f"  - {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more (report.violations)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


_OPTIONS = {
    "kwargs": "keyword arguments for the workflow",
    "signals": "signals to send, as {name: payload} or [(name, payload), ...]",
    "seed": "seed of the random schedules (default: random, reported)",
    "schedules": "random multi-crash schedules after the single-crash ones (default 10)",
    "max_faults": "faults per random schedule, at most (default 3)",
    "points": "crash points to fuzz (default: CRASH_POINTS + commit.fail, X5, X9)",
    "lose_lease": "also run a schedule whose lease renewals are lost (default True)",
    "workers": "workers running at once (default 1; 2 races them)",
    "lease_ttl": "the workers' lease_ttl (default 0.25 s)",
    "poll_interval": "the workers' poll interval (default 0.01 s)",
    "timeout": "seconds a run may take before it counts as stranded (default 30)",
    "shrink": "shrink failing multi-fault schedules (default True)",
    "max_runs": "stop after this many runs (default: no limit)",
    "stop_after": "stop after this many violations (default: no limit)",
    "runtime": "other Runtime options of the workers, e.g. {'inline_wait': 0.05} (instruments "
    "given here run after the fuzzer's own)",
    "wrap_store": "a function applied to each worker's store, outside the fuzzer's tracing "
    "wrapper: what the worker talks to (latency, or a store misbehaving on purpose)",
}


@dataclass(slots=True)
class _Options:
    kwargs: dict[str, Any] = field(default_factory=dict)
    signals: list[tuple[str, Any]] = field(default_factory=list)
    seed: int | None = None
    schedules: int = 10
    max_faults: int = 3
    points: tuple[str, ...] = (*CRASH_POINTS, "commit.fail", "X5", "X9")
    lose_lease: bool = True
    workers: int = 1
    lease_ttl: float = 0.25
    poll_interval: float = 0.01
    timeout: float = 30.0
    shrink: bool = True
    max_runs: int | None = None
    stop_after: int | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    wrap_store: Callable[[Store], Store] | None = None

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> _Options:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            known = "\n".join(f"  {k}: {v}" for k, v in _OPTIONS.items())
            raise ConfigurationError(
                f"crash_fuzz got unknown option(s) {', '.join(unknown)}; its options are:\n{known}"
                "\n(pass the workflow's own keyword arguments as kwargs={...})"
            )
        opts = cls(**{k: v for k, v in options.items() if k != "signals"})
        signals = options.get("signals") or []
        opts.signals = list(signals.items() if isinstance(signals, Mapping) else signals)
        for point in opts.points:
            Fault(point)  # validates the name
        if opts.workers < 1 or opts.lease_ttl <= 0:
            raise ConfigurationError("crash_fuzz needs workers >= 1 and lease_ttl > 0")
        return opts


@dataclass(slots=True)
class _Execution:
    run_id: str
    faults: tuple[Fault, ...]
    trace: Trace
    plan: FaultPlan
    lease_ttl: float
    run: RunRecord | None = None
    history: list[JournalEntry] = field(default_factory=list)
    result: Any = None
    crashes: int = 0
    duplicates: int = 0
    violations: list[Violation] = field(default_factory=list)


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _outcome(run: RunRecord | None) -> tuple[Any, ...]:
    if run is None:
        return ("missing",)
    if run.status == RunStatus.COMPLETED:
        return ("completed", run.result)
    if run.status in TERMINAL:
        return (run.status.value, run.error)
    return (run.status.value, run.waiting_on, run.last_error)


class _Fuzzer:
    def __init__(
        self,
        workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
        args: tuple[Any, ...],
        setup: Callable[[], Any] | None,
        check: Callable[[Any], Any] | None,
        store: str | Store | Callable[[], Store],
        opts: _Options,
    ) -> None:
        self.workflow = workflow
        self.name = workflow if isinstance(workflow, str) else _registry.register_function(workflow)
        self.args = args
        self.setup = setup
        self.check = check
        self.opts = opts
        self.seed = opts.seed if opts.seed is not None else _random.SystemRandom().randrange(2**32)
        self.rng = _random.Random(self.seed)
        hypothesis = sys.modules.get("hypothesis")
        if hypothesis is not None:  # inside @given, Hypothesis seeds it: failures replay
            hypothesis.register_random(self.rng)
        self.prefix = f"crashfuzz-{self.name}-{self.seed:08x}-{_random.getrandbits(24):06x}"
        self._memory: MemoryStore | None = None
        if isinstance(store, str):
            self.store_label = store
            if store.split(":", 1)[0].lower() == "memory":
                self._memory = MemoryStore(store)
            self._url = store
            self._factory: Callable[[], Store] | None = None
        elif callable(store) and not isinstance(store, MemoryStore | SqliteStore):
            self.store_label, self._url, self._factory = "a store factory", "", store
        else:
            self.store_label, self._url = repr(store), ""
            self._factory = None
            self._shared: Store = store
        self.report = CrashFuzzReport(self.name, self.store_label, self.seed)
        self.ref_names: dict[int, str] = {}
        self.ref_invocations: Counter[int] = Counter()
        self.ref_outcome: tuple[Any, ...] = ()
        self._counter = itertools.count()

    def new_store(self) -> Store:
        """A store object on the fuzzed database: what a new worker process would open."""
        if self._memory is not None:
            return self._memory
        if self._factory is not None:
            return self._factory()
        if self._url:
            return open_store(self._url)
        return self._shared

    # -- one run under one schedule ----------------------------------------------------------------

    async def execute(
        self, faults: Sequence[Fault], label: str, lease_ttl: float | None = None
    ) -> _Execution:
        run_id = f"{self.prefix}-{label}-{next(self._counter)}"
        if self.setup is not None:
            await _maybe_await(self.setup())
        trace = Trace(runs={run_id})
        plan = FaultPlan(*faults, runs={run_id})
        ex = _Execution(run_id, tuple(faults), trace, plan, lease_ttl or self.opts.lease_ttl)
        deadline = time.monotonic() + self.opts.timeout
        self.report.runs += 1
        try:
            async with Runtime(
                trace.store(self.new_store(), "client"),
                worker=False,
                poll_interval=self.opts.poll_interval,
            ) as client:
                await client.start(self.workflow, *self.args, run_id=run_id, **self.opts.kwargs)
                async with anyio.create_task_group() as tg:
                    for slot in range(self._slots(ex)):
                        tg.start_soon(self._worker_slot, slot, ex)
                    ex.run = await self._await_end(client, ex, deadline)
                    tg.cancel_scope.cancel()
        except Exception as exc:  # the fuzzer reports, it does not raise
            ex.violations.append(
                Violation(
                    "error", f"{type(exc).__name__}: {exc}", run_id=run_id, schedule=ex.faults
                )
            )
        await self._verify(ex)
        ex.violations[:0] = trace.violations
        self.report.crashes += plan.crashes
        self.report.store_errors += plan.errors
        self.report.by_point.update(f.point for f in plan.fired)
        self.report.duplicate_signals += ex.duplicates
        return ex

    @staticmethod
    def _stalls(ex: _Execution) -> bool:
        """Does this schedule lose lease renewals (a stalled worker)?"""
        return any(f.point == "renew" for f in ex.faults)

    def _slots(self, ex: _Execution) -> int:
        """Worker slots for a schedule. Where renewals are lost, a second worker takes the run
        over while the stalled one (claiming nothing more: concurrency 1) still runs its step,
        so fencing must stop that stale activation's writes; a worker that claimed the run
        back itself would stop its stale activation before it wrote anything."""
        return max(2, self.opts.workers) if self._stalls(ex) else self.opts.workers

    async def _worker_slot(self, slot: int, ex: _Execution) -> None:
        for incarnation in itertools.count():
            name = f"{ex.run_id}/w{slot}.{incarnation}"
            options = {"max_crashes": 1_000_000, **self.opts.runtime}
            if self._stalls(ex):
                options["concurrency"] = 1
            # This worker's plan and trace, given to it alone: fuzzers running at once in one
            # process (or other Runtimes beside this one) never see each other's faults.
            instruments = [ex.plan, ex.trace, *options.pop("instruments", ())]
            store: Store = ex.trace.store(self.new_store(), name)
            if self.opts.wrap_store is not None:
                store = self.opts.wrap_store(store)
            rt = Runtime(
                store,
                worker_id=name,
                lease_ttl=ex.lease_ttl,
                poll_interval=self.opts.poll_interval,
                instruments=instruments,
                **options,
            )
            async with rt:
                while rt._crashed is None:
                    await anyio.sleep(self.opts.poll_interval)
            ex.crashes += 1  # a crashed "process": start a fresh one on the same store

    async def _await_end(
        self, client: Runtime, ex: _Execution, deadline: float
    ) -> RunRecord | None:
        sent: dict[int, str] = {}
        crashes_seen = 0
        while True:
            run = await client.store.get_run(ex.run_id)
            if run is None or run.status in TERMINAL or run.status == RunStatus.QUARANTINED:
                return run
            if ex.crashes != crashes_seen:  # X12: a client retrying after the crash
                crashes_seen = ex.crashes
                for index in sent:
                    await self._signal(client, ex, index, sent, again=True)
            if run.status == RunStatus.WAITING:
                awaited = {w.name for w in run.waits if w.kind == WaitKind.SIGNAL}
                for index, (name, _) in enumerate(self.opts.signals):
                    if index not in sent and name in awaited:
                        await self._signal(client, ex, index, sent)
                        break  # one at a time, in order, like a human answering
            if time.monotonic() > deadline:
                return run
            await anyio.sleep(self.opts.poll_interval)

    async def _signal(
        self, client: Runtime, ex: _Execution, index: int, sent: dict[int, str], again: bool = False
    ) -> None:
        name, payload = self.opts.signals[index]
        sid = sent.setdefault(index, f"{ex.run_id}:signal:{index}")
        try:
            if not again and not await client.signal(ex.run_id, name, payload, signal_id=sid):
                ex.violations.append(
                    Violation(
                        "duplicate-signal",
                        f"signal {name!r} id {sid} was refused on its first delivery",
                        run_id=ex.run_id,
                    )
                )
            ex.duplicates += 1
            if await client.signal(ex.run_id, name, payload, signal_id=sid):
                ex.violations.append(
                    Violation(
                        "duplicate-signal",
                        f"signal {name!r} id {sid} was accepted twice (X12: a signal delivered "
                        "twice must be stored once)",
                        run_id=ex.run_id,
                    )
                )
        except RunError:
            pass  # the run already finished: nothing would read it

    async def _verify(self, ex: _Execution) -> None:
        with no_faults():
            async with Runtime(self.new_store(), worker=False) as client:
                ex.run = await client.store.get_run(ex.run_id)
                if ex.run is None:
                    ex.violations.append(Violation("error", "the run vanished", run_id=ex.run_id))
                    return
                ex.history = await client.history(ex.run_id)
                self.report.effects_checked += len(ex.history)
                if ex.run.status not in TERMINAL:
                    ex.violations.append(
                        Violation(
                            "stranded",
                            f"the run is still {ex.run.status} after {self.opts.timeout:.0f}s "
                            f"(waiting on {ex.run.waiting_on or 'nothing'}; last error "
                            f"{ex.run.last_error or 'none'}); every run must reach a final state "
                            "once faults stop",
                            run_id=ex.run_id,
                        )
                    )
                    return
                try:
                    ex.result = await client.result(ex.run_id, timeout=self.opts.timeout)
                except RunError as exc:
                    ex.result = exc
                replayed = await client.replay(ex.run_id)
                if not replayed.matched:
                    ex.violations.append(
                        Violation("replay", f"the journal does not replay: {replayed.detail}")
                    )
        if self.ref_outcome and _outcome(ex.run) != self.ref_outcome:
            ex.violations.append(
                Violation(
                    "result",
                    f"the run ended {_show(_outcome(ex.run))}, the crash-free run "
                    f"{_show(self.ref_outcome)}",
                    run_id=ex.run_id,
                )
            )
        if self.check is not None:
            try:
                await _maybe_await(self.check(ex.result))
            except AssertionError as exc:
                ex.violations.append(
                    Violation("check", str(exc) or "check() failed an assertion", run_id=ex.run_id)
                )
            except Exception as exc:
                ex.violations.append(
                    Violation("check", f"check() raised {type(exc).__name__}: {exc}", ex.run_id)
                )

    # -- the whole fuzz ----------------------------------------------------------------------------

    def _enrich(self, ex: _Execution, schedule: tuple[Fault, ...], before: int) -> list[Violation]:
        out = []
        for v in ex.violations:
            seq = v.seq
            if seq is None:
                seq = next((f.seq for f in schedule if f.seq is not None), None)
            point = schedule[0].point if schedule else None
            invocations = ex.trace.invocation_count(ex.run_id, seq) if seq is not None else None
            out.append(
                dataclasses.replace(
                    v,
                    run_id=v.run_id or ex.run_id,
                    seq=seq,
                    point=point,
                    function=self.ref_names.get(seq) if seq is not None else None,
                    key=f"{ex.run_id}:{seq}" if seq is not None else None,
                    invocations=invocations,
                    reinvocations=(
                        invocations - self.ref_invocations[seq]
                        if invocations is not None and seq is not None
                        else None
                    ),
                    schedule=schedule,
                    shrunk_from=before,
                )
            )
        return out

    def _budget_left(self) -> bool:
        if self.opts.max_runs is not None and self.report.runs >= self.opts.max_runs:
            return False
        stop = self.opts.stop_after
        return stop is None or len(self.report.violations) < stop

    async def _shrink(self, faults: tuple[Fault, ...], ex: _Execution) -> tuple[Fault, ...]:
        kinds = {v.kind for v in ex.violations}
        improved = True
        while improved and len(faults) > 1 and self.opts.shrink:
            improved = False
            for i in range(len(faults)):
                candidate = faults[:i] + faults[i + 1 :]
                trial = await self.execute(candidate, "shrink", ex.lease_ttl)
                if kinds & {v.kind for v in trial.violations}:
                    faults, ex.violations, ex.trace = candidate, trial.violations, trial.trace
                    ex.run_id = trial.run_id
                    improved = True
                    break
        return faults

    async def _try(
        self, faults: tuple[Fault, ...], label: str, lease_ttl: float | None = None
    ) -> None:
        self.report.schedules += 1
        ex = await self.execute(faults, label, lease_ttl)
        if ex.violations:
            before = len(faults)
            faults = await self._shrink(faults, ex)
            self.report.violations += self._enrich(ex, faults, before)

    async def run(self) -> CrashFuzzReport:
        started = time.monotonic()
        quiet = _QuietFuzzLogs(self.prefix)
        logger = logging.getLogger("coro_durable.runtime")  # where the runtime logs crashes
        logger.addFilter(quiet)
        try:
            await self._run()
        finally:
            logger.removeFilter(quiet)
            self.report.elapsed = time.monotonic() - started
        return self.report

    async def _run(self) -> None:
        started = time.monotonic()
        ref = await self.execute((), "reference")
        ref_seconds = time.monotonic() - started
        self.ref_names = {e.seq: e.describe() for e in ref.history}
        self.report.effects = len(ref.history)
        self.report.reference = ref.result
        for (run_id, step_seq), calls in ref.trace.invocations.items():
            if run_id == ref.run_id:
                self.ref_invocations[step_seq] = len(calls)
        if ref.violations:
            self.report.violations += self._enrich(ref, (), 0)
        if ref.run is None or ref.run.status not in TERMINAL:
            return  # nothing to compare crashed runs with
        self.ref_outcome = _outcome(ref.run)
        # Every hit of the crash-free run, addressed as (point, seq, nth occurrence).
        seen: Counter[tuple[str, int | None]] = Counter()
        sites: list[Fault] = []
        for point, _, seq in ref.plan.hits:
            if point in _NOT_FUZZED:
                continue
            seen[(point, seq)] += 1
            if point in self.opts.points:
                sites.append(Fault(point, seq=seq, nth=seen[(point, seq)]))
        if self.opts.lose_lease and ref_seconds >= 0.05 and self._budget_left():
            # A lease a quarter of the run long, and its renewals lost for four leases: it
            # expires mid-run, the run is taken over while the old activation may still be
            # running a step, and fencing must stop the old one from writing anything more.
            ttl = max(0.02, min(self.opts.lease_ttl, ref_seconds / 4))
            await self._try((Fault("renew", times=12),), "lease-lost", ttl)
        for site in sites:
            if not self._budget_left():
                return
            await self._try((site,), f"{site.point}.{site.seq}.{site.nth}")
        crash_sites = [s for s in sites if s.kind == "crash"] or sites
        for n in range(self.opts.schedules):
            if not crash_sites or not self._budget_left():
                return
            k = self.rng.randint(2, max(2, self.opts.max_faults))
            picked = sorted(
                self.rng.sample(range(len(sites)), min(k, len(sites))),
            )
            faults = tuple(sites[i] for i in picked)
            if all(f.kind == "error" for f in faults):
                faults += (self.rng.choice(crash_sites),)
            await self._try(faults, f"random{n}")


class _QuietFuzzLogs(logging.Filter):
    """Drops the runtime's log lines about the fuzz's own simulated processes (they crash and
    lose leases on purpose), except errors that no injected fault explains."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SimulatedCrash) or str(exc).startswith("injected fault"):
            return False
        message = record.getMessage()
        if "simulated crash" in message or "injected fault" in message:
            return False
        return record.levelno >= logging.ERROR or self.prefix not in message


def _show(outcome: tuple[Any, ...]) -> str:
    if outcome[0] == "completed":
        return f"completed with {outcome[1]}"
    return f"{outcome[0]} ({', '.join(str(x) for x in outcome[1:] if x)})"


async def crash_fuzz_async(
    workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
    *args: Any,
    setup: Callable[[], Any] | None = None,
    check: Callable[[Any], Any] | None = None,
    store: str | Store | Callable[[], Store] = "memory://",
    **options: Any,
) -> CrashFuzzReport:
    """:func:`crash_fuzz` for async code: runs under the current event loop (asyncio or trio)."""
    opts = _Options.parse(options)
    return await _Fuzzer(workflow, args, setup, check, store, opts).run()


def crash_fuzz(
    workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
    *args: Any,
    setup: Callable[[], Any] | None = None,
    check: Callable[[Any], Any] | None = None,
    store: str | Store | Callable[[], Store] = "memory://",
    **options: Any,
) -> CrashFuzzReport:
    """Crash ``workflow(*args)`` at every crash point of every effect; report broken promises.

    1. Runs the workflow once with no faults (the reference), recording every hook it passes.
    2. Runs it again once per hook passed, crashing the worker there (store errors at
       ``commit.fail``, ``X5`` and ``X9``); a fresh worker resumes the run from the store.
    3. Runs ``schedules`` random multi-fault schedules drawn from ``seed``. Right after the
       crash-free run (if it took 50 ms or more) comes a schedule whose lease renewals are lost
       with a lease a quarter of the run long: the run is taken over while the old worker may
       still be running a step, which fencing must stop from writing.

    ``setup()`` is called before every run to reset your world, ``check(result)`` after it
    (with the run's result, or the RunError it ended with) and should raise AssertionError when
    the world is wrong. Both may be coroutine functions. Every run is also checked for: the same
    outcome as the crash-free run, a journal that replays, no step invoked after its outcome
    was journaled or fed, no outcome fed before it was journaled, signals stored once per id.

    Returns a :class:`CrashFuzzReport`; violations are in ``report.violations`` (each naming
    its crash point, seq, step, idempotency key, how often the body ran, and the failing
    schedule, shrunk); nothing is raised for them. ``store`` is a URL (``memory://`` by default:
    one in-process store shared by the simulated processes), a Store, or a factory of Stores.
    ``backend="trio"`` runs it under trio. Steps should act deterministically given ``setup()``.
    The other options: ``kwargs``, ``signals``, ``seed``, ``schedules``, ``max_faults``,
    ``points``, ``lose_lease``, ``workers``, ``lease_ttl``, ``poll_interval``, ``timeout``,
    ``shrink``, ``max_runs``, ``stop_after``, ``runtime``, ``wrap_store``; from async code use
    :func:`crash_fuzz_async`. Each simulated worker gets the fuzz's fault plan and trace as its
    own instruments, so fuzzes may run at once in one process.
    """
    backend = options.pop("backend", "asyncio")
    opts = _Options.parse(options)
    if _in_event_loop():
        raise ConfigurationError(
            "crash_fuzz() runs its own event loop; from async code use "
            "`await coro_durable.testing.crash_fuzz_async(...)`"
        )
    fuzzer = _Fuzzer(workflow, args, setup, check, store, opts)
    return anyio.run(fuzzer.run, backend=backend)


def _in_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        pass
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_root_task()
            return True
        except RuntimeError:
            pass
    return False


# ---- pytest ----------------------------------------------------------------------------------------
# With `pytest_plugins = ["coro_durable.testing"]` in a conftest.py, tests get a `crash_fuzzer`
# fixture: crash_fuzz that fails the test with the report's summary when it finds violations.

if "pytest" in sys.modules:
    import pytest

    @pytest.fixture
    def crash_fuzzer() -> Callable[..., CrashFuzzReport]:
        """``crash_fuzzer(workflow, *args, **options)``: crash_fuzz, failing the test on any
        violation (with the report's summary) and returning the report otherwise."""

        def fuzz(
            workflow: Callable[..., Coroutine[Any, Any, Any]] | str, *args: Any, **options: Any
        ) -> CrashFuzzReport:
            report = crash_fuzz(workflow, *args, **options)
            if not report.ok:
                pytest.fail(report.summary(), pytrace=False)
            return report

        return fuzz
