"""The store conformance suite, for any store: subclass :class:`StoreConformance` in your tests.

Every rule of the ``Store`` protocol (``coro_durable.store``) has a test here, and a Hypothesis
state machine drives your store and ``MemoryStore`` (the reference) with the same random
operations and checks that they agree. coro_durable runs this same suite on its memory, SQLite,
PostgreSQL and Redis stores (tests/test_store_conformance.py)::

    import coro_durable as cd
    from coro_durable.testing.conformance import StoreConformance

    class TestMyStore(StoreConformance):
        async def make_store(self) -> cd.Store:
            return MyStore(f"mystore://localhost/test-{uuid.uuid4().hex}")  # fresh and empty

Each test runs under asyncio and trio (the class parametrises ``anyio_backend``; trio is skipped,
saying so, when it is not installed). The hooks a subclass may define:

* ``async def make_store(self) -> Store`` (required): a new store object on a fresh, empty
  database, not opened yet (the suite opens and closes it). ``self.tmp_path`` is a fresh
  directory for each test, for stores that keep files.
* ``def peer_store(self, store) -> Store``: another store object on the same database as
  ``store``, as a second process would open it; the multi-worker tests (concurrent claims,
  lease takeover, the worker registry) use it. Default: ``store`` itself, which is right for a
  store that lives in the process (its objects cannot share a database).
* ``async def corrupt_result(self, store, run_id, seq, value)``: overwrite the stored result of
  one journal entry behind the store's back, keeping its checksum. Default:
  ``coro_durable.testing.corrupt_row``, which knows the built-in stores and anything wrapping
  them (``StoreWrapper``); for another store the test that needs it is skipped, saying why.
* ``oracle_examples`` and ``oracle_steps``: how many random operation sequences the state machine
  tries, and how long each is (40 and 40).

Needs pytest, Hypothesis and anyio's pytest plugin (installed with anyio; ``pip install pytest
hypothesis``, plus ``trio`` to run under trio): import this module from tests only.
``coro_durable.testing`` does not import it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

try:
    import pytest
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        initialize,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )
except ImportError as exc:  # pragma: no cover - our dev install has both
    raise ImportError(
        "coro_durable.testing.conformance runs under pytest with Hypothesis and anyio's pytest "
        f"plugin, and {exc.name or 'one of them'} is not installed: `pip install pytest "
        "hypothesis` in the environment of your tests"
    ) from exc

import anyio
import anyio.from_thread
import anyio.lowlevel

from ..errors import (
    ConfigurationError,
    ConflictError,
    CorruptJournalError,
    LeaseLost,
    RunError,
    RunNotFoundError,
)
from ..journal import verify_journal
from ..store import (
    CANCELLED_ERROR,
    TERMINAL,
    ClaimRequest,
    JournalEntry,
    MemoryStore,
    RunQuery,
    RunRecord,
    RunStatus,
    Store,
    Wait,
    WaitKind,
    WorkerRecord,
)
from ._corrupt import corrupt_row

__all__ = ["StoreComparison", "StoreConformance"]

WF = "wf"
INPUT = '{"args":[],"kwargs":{}}'
TTL = 30.0


# ---- what the tests build with ----------------------------------------------------------------


def entry(seq: int, status: str = "ok", result: str | None = "1", **fields: Any) -> JournalEntry:
    """A sealed journal entry at ``seq``: a call's outcome unless ``fields`` say otherwise."""
    fields.setdefault("kind", "call")
    fields.setdefault("name", "step")
    fields.setdefault("digest", "d0")
    fields.setdefault("key", f"r:{seq}")
    return JournalEntry(seq=seq, status=status, result=result, **fields).sealed()


def timer_wait(until: float | None = None, seq: int = 0) -> tuple[Wait, ...]:
    """What a run parked on a durable timer waits for."""
    return (Wait(WaitKind.TIMER, seq=seq, until=until),)


def signal_wait(name: str, until: float | None = None, seq: int = 0) -> tuple[Wait, ...]:
    """What a run parked on ``await_signal(name)`` waits for."""
    return (Wait(WaitKind.SIGNAL, seq=seq, name=name, until=until),)


async def new_run(store: Store, run_id: str = "r1", workflow: str = WF) -> RunRecord:
    run, created = await store.create_run(RunRecord(run_id, workflow, INPUT))
    assert created
    return run


async def claim(
    store: Store,
    worker: str = "w1",
    *,
    limit: int = 100,
    lease_ttl: float = TTL,
    workflows: tuple[str, ...] = (WF,),
    max_crashes: int = 3,
) -> dict[str, RunRecord]:
    """``store.claim`` with the suite's defaults, answered as {run_id: run}."""
    request = ClaimRequest(worker, tuple(workflows), limit, lease_ttl, max_crashes)
    runs = await store.claim(request)
    return {r.run_id: r for r in runs}


async def running(store: Store, run_id: str = "r1", worker: str = "w1") -> int:
    """Create ``run_id`` and claim it; return its epoch."""
    await new_run(store, run_id)
    claimed = await claim(store, worker)
    return claimed[run_id].epoch


async def status_of(store: Store, run_id: str = "r1") -> RunStatus:
    run = await store.get_run(run_id)
    assert run is not None
    return run.status


BAD_RUN_IDS = {
    "empty": "",  # must not silently become a random id (idempotency lost)
    "256 chars": "x" * 256,
    "NUL": "a\x00b",
    "newline": "a\nb",  # category Cc
    "DEL": "\x7f",  # Cc
    "tab": "tab\there",  # Cc
    "C1 control": "\x85next-line",  # Cc
    "lone surrogate": "lone-\udc80",  # not encodable in UTF-8, so not storable everywhere
    "int": 42,
    "bytes": b"r1",
    "None": None,  # a store is never asked to invent an id
}


GOOD_RUN_IDS = [
    "x" * 255,  # exactly the limit
    "é" * 255,  # 255 characters, 510 UTF-8 bytes
    "ünïcødé-运行-🚀",
    "with spaces  inside",
    " leading and trailing ",
    "tenant:acme/run:1",
    "a/b/c:d::e//f",
    "0",
]


async def crashed_once(store: Store, run_id: str = "r1") -> int:
    """Create and claim ``run_id``, record a crash of that activation and claim it again; return
    the new epoch (the run holds ``crash_count == 1``)."""
    epoch = await running(store, run_id)
    await store.record_crash(run_id, epoch, "boom", time.time() - 1, max_crashes=5)
    epoch = (await claim(store))[run_id].epoch
    run = await store.get_run(run_id)
    assert run is not None and run.crash_count == 1
    return epoch


async def crash_count(store: Store, run_id: str = "r1") -> int:
    run = await store.get_run(run_id)
    assert run is not None
    return run.crash_count


def worker(worker_id: str = "w1", workflows: tuple[str, ...] = ("a", "b")) -> WorkerRecord:
    return WorkerRecord(worker_id, "host-1", 4242, workflows)


def note(seq: int = -1, by: str = "tester") -> JournalEntry:
    """An audit note as Runtime.retry writes one (negative seq, kind retry)."""
    return JournalEntry(
        seq=seq, kind="retry", name="", digest="", status="ok", args=f'{{"by":"{by}"}}'
    ).sealed()


async def failed_run(store: Store, entries: list[JournalEntry], status: RunStatus) -> None:
    """r1 with ``entries`` journaled, ended with ``status`` (failed or cancelled)."""
    epoch = await running(store)
    if entries:
        await store.append("r1", epoch, entries)
    await store.finish("r1", epoch, status, None, '{"type":"E","message":"m"}')


# ---- randomized comparison against the MemoryStore oracle -----------------------------------------

_PAST, _FUTURE = "past", "future"


def _when(t: float | None, now: float) -> str | None:
    return None if t is None else (_PAST if t <= now else _FUTURE)


def _observe_run(run: RunRecord | None, now: float) -> Any:
    if run is None:
        return None
    return (
        run.run_id, run.workflow, run.input, str(run.status), run.epoch, run.owner,
        _when(run.lease_expires, now), _when(run.wake_at, now), run.waits,
        run.cancel_requested, run.result, run.error, run.crash_count, run.last_error, run.steps,
    )  # fmt: skip


def _observe_entry(e: JournalEntry) -> Any:
    # finished_at of a consumed signal is the store's clock; everything else must match
    return (e.seq, e.kind, e.name, e.status, e.result, e.attempts, e.due_at, e.checksum)


def _observe(value: Any, now: float) -> Any:
    if isinstance(value, RunRecord):
        return _observe_run(value, now)
    if isinstance(value, JournalEntry):
        return _observe_entry(value)
    if isinstance(value, tuple):
        return tuple(_observe(v, now) for v in value)
    if isinstance(value, list):
        return [_observe(v, now) for v in value]
    return value


class StoreComparison(RuleBasedStateMachine):
    """Drives MemoryStore and the store under test with the same operations; they must agree.

    Fenced operations mostly target a run that is running with its current epoch (so they
    succeed and build up state), sometimes a stale or future epoch or any run (so they fail).
    """

    portal: anyio.from_thread.BlockingPortal
    subject: Store

    def __init__(self) -> None:
        super().__init__()
        self.oracle = MemoryStore()
        self.prefix = uuid.uuid4().hex[:8]  # the subject is shared across examples: fresh ids
        self.runs: list[str] = []  # created so far (at most MAX_RUNS)
        self.ghost = f"{self.prefix}-ghost"  # never created
        self.workflows = [f"{self.prefix}-a", f"{self.prefix}-b"]
        self.last_batch: tuple[str, int, list[JournalEntry]] | None = None

    def both(self, op: Callable[[Store], Awaitable[Any]]) -> Any:
        async def outcome(store: Store) -> Any:
            try:
                return ("ok", await op(store))
            except (Exception, LeaseLost) as exc:
                return ("raised", type(exc).__name__)

        expected = self.portal.call(outcome, self.oracle)
        got = self.portal.call(outcome, self.subject)
        now = time.time()
        assert _observe(got, now) == _observe(expected, now)
        return expected

    MAX_RUNS = 6

    def pick(self, i: int) -> str:
        """Some run id: usually a created run, sometimes one that does not exist."""
        ids = [*self.runs, self.ghost]
        return ids[i % len(ids)]

    def target(self, how: str, i: int) -> tuple[str, int]:
        """A run and an epoch to write with: usually a running run's current epoch."""
        runs = [self.portal.call(self.oracle.get_run, r) for r in self.runs]
        live = [r for r in runs if r is not None and r.status == RunStatus.RUNNING]
        if how == "any" or not live:
            run_id = self.pick(i)
            run = self.portal.call(self.oracle.get_run, run_id)
            return run_id, run.epoch if run else 0
        run = live[i % len(live)]
        return run.run_id, run.epoch + {"live": 0, "stale": -1, "next": 1}[how]

    hows = st.sampled_from(["live"] * 6 + ["stale", "next", "any"])
    run_index = st.integers(0, MAX_RUNS)
    workers = st.sampled_from(["w1", "w2"])
    entries = st.builds(
        lambda seq, status, result, attempts: entry(
            seq, status, None if status == "pending" else result, attempts=attempts
        ),
        st.integers(0, 3),
        st.sampled_from(["ok", "ok", "pending", "error"]),
        st.sampled_from(["1", "2"]),
        st.integers(0, 1),
    )

    @initialize()
    def create_some_runs(self) -> None:
        for wf in (0, 1, 0):
            self.create_run(0, wf, "{}", fresh=True)

    @rule(
        i=run_index, wf=st.integers(0, 1), inp=st.sampled_from(["{}", "[1]"]), fresh=st.booleans()
    )
    def create_run(self, i: int, wf: int, inp: str, fresh: bool) -> None:
        if fresh and len(self.runs) < self.MAX_RUNS:
            self.runs.append(f"{self.prefix}-r{len(self.runs)}")
            run_id = self.runs[-1]
        else:
            run_id = self.pick(i)  # an existing id: create_run must return the stored run
        record = RunRecord(run_id, self.workflows[wf], inp)
        self.both(lambda s: s.create_run(record.copy()))

    @rule(
        worker=workers,
        limit=st.integers(1, 3),
        ttl=st.sampled_from([60.0, 60.0, -1.0]),
        wfs=st.sampled_from([(0, 1), (0, 1), (0,), (1,)]),
        max_crashes=st.integers(1, 3),
    )
    def claim(
        self, worker: str, limit: int, ttl: float, wfs: tuple[int, ...], max_crashes: int
    ) -> None:
        names = tuple(self.workflows[w] for w in wfs)
        request = ClaimRequest(worker, names, limit, ttl, max_crashes)
        self.both(lambda s: s.claim(request))

    @rule(worker=workers)
    def claim_one(self, worker: str) -> None:
        """The common case, drawn more often: one run of any workflow, a long lease."""
        self.claim(worker, 1, 60.0, (0, 1), 3)

    @rule(how=hows, i=run_index, batch=st.lists(entries, min_size=1, max_size=3))
    def append(self, how: str, i: int, batch: list[JournalEntry]) -> None:
        run_id, epoch = self.target(how, i)
        self.last_batch = (run_id, epoch, batch)
        self.both(lambda s: s.append(run_id, epoch, batch))

    @precondition(lambda self: self.last_batch is not None)
    @rule()
    def retry_last_append(self) -> None:
        """The same batch again, as after a lost acknowledgement."""
        assert self.last_batch is not None
        run_id, epoch, batch = self.last_batch
        self.both(lambda s: s.append(run_id, epoch, batch))

    @rule(how=hows, i=run_index, name=st.sampled_from(["x", "y"]), seq=st.integers(0, 4))
    def consume_signal(self, how: str, i: int, name: str, seq: int) -> None:
        run_id, epoch = self.target(how, i)
        waiting = entry(seq, "pending", None, kind="signal", name=name)
        self.both(lambda s: s.consume_signal(run_id, epoch, name, waiting))

    @rule(how=hows, i=run_index, wake=st.sampled_from([None, _PAST, _FUTURE]))
    def park(self, how: str, i: int, wake: str | None) -> None:
        run_id, epoch = self.target(how, i)
        now = time.time()
        wake_at = None if wake is None else (now - 100 if wake == _PAST else now + 1000)
        waits = signal_wait("x") if wake is None else timer_wait(wake_at)
        self.both(lambda s: s.park(run_id, epoch, wake_at, waits))

    @rule(how=hows, i=run_index, status=st.sampled_from(sorted(TERMINAL)))
    def finish(self, how: str, i: int, status: RunStatus) -> None:
        run_id, epoch = self.target(how, i)
        self.both(lambda s: s.finish(run_id, epoch, status, '"r"', None))

    @rule(
        how=hows,
        i=run_index,
        fenced=st.booleans(),
        retry=st.sampled_from([_PAST, _FUTURE]),
        max_crashes=st.integers(1, 3),
    )
    def record_crash(self, how: str, i: int, fenced: bool, retry: str, max_crashes: int) -> None:
        run_id, epoch = self.target(how, i)
        now = time.time()
        retry_at = now - 100 if retry == _PAST else now + 1000
        mine = epoch if fenced else None
        self.both(lambda s: s.record_crash(run_id, mine, "boom", retry_at, max_crashes))

    @rule(i=run_index)
    def resume(self, i: int) -> None:
        self.both(lambda s: s.resume(self.pick(i)))

    @rule(
        i=run_index,
        name=st.sampled_from(["x", "y"]),
        payload=st.sampled_from(["1", '"two"']),
        sid=st.sampled_from(["s1", "s2", "s3"]),
    )
    def deliver_signal(self, i: int, name: str, payload: str, sid: str) -> None:
        self.both(lambda s: s.deliver_signal(self.pick(i), name, payload, sid))

    @rule(i=run_index)
    def request_cancel(self, i: int) -> None:
        self.both(lambda s: s.request_cancel(self.pick(i)))

    @rule(
        worker=workers,
        picks=st.lists(st.tuples(hows, run_index), max_size=3),
        ttl=st.sampled_from([60.0, -1.0]),
    )
    def renew(self, worker: str, picks: list[tuple[str, int]], ttl: float) -> None:
        leases = dict(self.target(how, i) for how, i in picks)
        self.both(lambda s: s.renew(worker, leases, ttl))

    @invariant()
    def same_observable_state(self) -> None:
        run_ids = [*self.runs, self.ghost]

        async def snapshot(s: Store) -> list[Any]:
            state: list[Any] = []
            for run_id in run_ids:
                state += [await s.get_run(run_id), await s.load_journal(run_id)]
            for wf in self.workflows:
                state.append(await s.list_runs(RunQuery(workflow=wf)))
            return state

        self.both(snapshot)


class StoreConformance:
    """The conformance suite as a base class: subclass it as ``Test<YourStore>`` and define
    ``make_store`` (see the module docstring for the other hooks)."""

    pytestmark: ClassVar[Any] = pytest.mark.anyio
    oracle_examples: ClassVar[int] = 40
    oracle_steps: ClassVar[int] = 40
    tmp_path: Path

    # ---- hooks ----------------------------------------------------------------------------------

    async def make_store(self) -> Store:
        """A new store object on a fresh, empty database (not opened yet)."""
        raise NotImplementedError(
            f"{type(self).__name__} must define `async def make_store(self) -> Store` returning "
            "a store on a fresh, empty database"
        )

    def peer_store(self, store: Store) -> Store:
        """Another store object on ``store``'s database (default: ``store`` itself)."""
        return store

    async def corrupt_result(self, store: Store, run_id: str, seq: int, value: Any) -> None:
        """Overwrite journal entry ``seq``'s stored result with ``value`` (JSON), keeping its
        checksum (default: ``corrupt_row``; skips the test for a store it does not know)."""
        try:
            await corrupt_row(store, run_id, seq, value)
        except NotImplementedError as exc:
            pytest.skip(f"needs raw access to the stored journal: define corrupt_result ({exc})")

    # ---- fixtures -------------------------------------------------------------------------------

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        """Every test runs under asyncio and under trio."""
        backend = str(request.param)
        if backend == "trio" and importlib.util.find_spec("trio") is None:
            pytest.skip("trio is not installed: `pip install trio` to run the suite under trio")
        return backend

    @pytest.fixture(autouse=True)
    def _conformance_tmp_path(self, tmp_path: Path) -> None:
        """``self.tmp_path``: pytest's fresh directory for this test, for ``make_store``."""
        self.tmp_path = tmp_path

    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        """The store under test from ``make_store``, opened, closed after the test."""
        subject = await self.make_store()
        await subject.open()
        try:
            yield subject
        finally:
            await subject.close()

    @contextlib.asynccontextmanager
    async def peers(self, store: Store, count: int) -> AsyncIterator[list[Store]]:
        """``store`` and ``count - 1`` more store objects on its database (``peer_store``),
        opened; the extra ones are closed afterwards."""
        extra = [self.peer_store(store) for _ in range(count - 1)]
        opened: list[Store] = []
        try:
            for other in extra:
                if other is not store:
                    await other.open()
                    opened.append(other)
            yield [store, *extra]
        finally:
            for other in opened:
                await other.close()

    # ---- runs -------------------------------------------------------------------------------------

    async def test_create_run_is_idempotent_on_run_id(self, store: Store) -> None:
        """A second create_run with the same run_id returns the stored run and created=False."""
        first, created = await store.create_run(RunRecord("r1", WF, INPUT))
        again, created_again = await store.create_run(RunRecord("r1", "other", '{"args":[1]}'))
        assert created and not created_again
        assert again.workflow == WF and again.input == INPUT
        assert again.created_at == first.created_at

    async def test_create_run_stores_a_pending_runnable_run(self, store: Store) -> None:
        """A new run is pending, runnable now, with epoch 0 and no journal."""
        before = time.time()
        run = await new_run(store)
        stored = await store.get_run("r1")
        assert stored == run
        assert run.status == RunStatus.PENDING and run.epoch == 0 and run.steps == 0
        assert run.wake_at is not None and before <= run.wake_at <= time.time()
        assert before <= run.created_at <= time.time()
        assert await store.load_journal("r1") == []

    async def test_get_run_unknown_is_none(self, store: Store) -> None:
        """get_run of an unknown id is None, and load_journal of it is empty."""
        assert await store.get_run("nope") is None
        assert await store.load_journal("nope") == []

    @pytest.mark.parametrize("bad", BAD_RUN_IDS.values(), ids=BAD_RUN_IDS.keys())
    async def test_create_run_refuses_a_bad_run_id(self, store: Store, bad: Any) -> None:
        """A run_id that is not a non-empty str of at most 255 characters free of control
        characters raises ConfigurationError, the same on every store, and creates nothing."""
        with pytest.raises(ConfigurationError, match="run_id"):
            await store.create_run(RunRecord(bad, WF, INPUT))
        assert await store.list_runs(RunQuery()) == []

    async def test_create_run_accepts_and_round_trips_edge_case_run_ids(self, store: Store) -> None:
        """Run ids at the limits (255 characters, unicode, spaces, ':' and '/') are stored and read
        back exactly, by get_run and list_runs, on every store."""
        for run_id in GOOD_RUN_IDS:
            run, created = await store.create_run(RunRecord(run_id, WF, INPUT))
            assert created and run.run_id == run_id
            stored = await store.get_run(run_id)
            assert stored is not None and stored.run_id == run_id
            assert await store.load_journal(run_id) == []
        assert {r.run_id for r in await store.list_runs(RunQuery())} == set(GOOD_RUN_IDS)

    async def test_list_runs_filters_orders_and_pages(self, store: Store) -> None:
        """list_runs is newest first, filters by status and workflow, and honours limit/offset."""
        for i in range(6):
            await new_run(store, f"r{i}", workflow="a" if i % 2 == 0 else "b")
            await anyio.sleep(0.002)  # distinct created_at
        await claim(store, workflows=("a",), limit=1)  # r0 runs
        ids = [r.run_id for r in await store.list_runs(RunQuery())]
        assert ids == ["r5", "r4", "r3", "r2", "r1", "r0"]
        assert [r.run_id for r in await store.list_runs(RunQuery(workflow="a"))] == [
            "r4",
            "r2",
            "r0",
        ]
        assert [r.run_id for r in await store.list_runs(RunQuery(status=RunStatus.RUNNING))] == [
            "r0"
        ]
        pending_b = await store.list_runs(RunQuery(status=RunStatus.PENDING, workflow="b"))
        assert [r.run_id for r in pending_b] == ["r5", "r3", "r1"]
        assert [r.run_id for r in await store.list_runs(RunQuery(limit=2, offset=1))] == [
            "r4",
            "r3",
        ]
        assert await store.list_runs(RunQuery(offset=10)) == []
        assert await store.list_runs(RunQuery(workflow="none")) == []

    # ---- claiming ---------------------------------------------------------------------------------

    async def test_claim_leases_and_bumps_epoch(self, store: Store) -> None:
        """claim makes the run running with a lease for the worker and bumps its epoch."""
        await new_run(store)
        now = time.time()
        run = (await claim(store, "w1", lease_ttl=10.0))["r1"]
        assert run.status == RunStatus.RUNNING and run.owner == "w1" and run.epoch == 1
        assert run.lease_expires is not None and now + 9 <= run.lease_expires <= time.time() + 10
        assert run.wake_at is None
        assert await store.get_run("r1") == run
        assert await claim(store, "w2") == {}  # leased: not claimable again

    async def test_claim_respects_limit(self, store: Store) -> None:
        """claim never returns more than ``limit`` runs, oldest first; the rest stay claimable."""
        for i in range(5):
            await new_run(store, f"r{i}")
            await anyio.sleep(0.002)
        first = await claim(store, limit=2)
        assert sorted(first) == ["r0", "r1"]
        assert sorted(await claim(store, limit=10)) == ["r2", "r3", "r4"]
        await new_run(store, "r5")
        assert await claim(store, limit=0) == {}

    async def test_claim_filters_by_workflow(self, store: Store) -> None:
        """Only runs of the named workflows are claimed; no names claims nothing."""
        await new_run(store, "a1", workflow="a")
        await new_run(store, "b1", workflow="b")
        assert await claim(store, workflows=()) == {}
        assert list(await claim(store, workflows=("b", "c"))) == ["b1"]
        assert list(await claim(store, workflows=("a",))) == ["a1"]

    async def test_claim_skips_runs_not_due(self, store: Store) -> None:
        """A waiting run is claimed only once its wake_at has passed; wake_at None never."""
        for run_id in ("soon", "later", "never"):
            await new_run(store, run_id)
        claimed = await claim(store)
        await store.park("later", claimed["later"].epoch, time.time() + 3600, timer_wait())
        await store.park("never", claimed["never"].epoch, None, signal_wait("x"))
        due = time.time() + 0.3  # room for two round trips to a store on a loaded machine
        await store.park("soon", claimed["soon"].epoch, due, timer_wait())
        assert await claim(store) == {}
        await anyio.sleep(max(0.0, due - time.time()) + 0.05)
        again = await claim(store)
        assert list(again) == ["soon"] and again["soon"].epoch == 2
        for run_id in ("later", "never"):
            assert await status_of(store, run_id) == RunStatus.WAITING

    async def test_concurrent_claims_never_share_a_run(self, store: Store) -> None:
        """Two workers on two store objects claiming at once never both get the same run."""
        async with self.peers(store, 2) as stores:
            n = 60
            for i in range(n):
                await new_run(stores[0], f"r{i:03}")
            got: dict[str, list[str]] = {"w0": [], "w1": []}

            async def worker(name: str, s: Store) -> None:
                while True:
                    runs = await claim(s, name, limit=3)
                    if not runs:
                        return
                    got[name].extend(runs)
                    await anyio.lowlevel.checkpoint()

            async with anyio.create_task_group() as tg:
                for i, s in enumerate(stores):
                    tg.start_soon(worker, f"w{i}", s)
            everything = got["w0"] + got["w1"]
            assert sorted(everything) == [f"r{i:03}" for i in range(n)]  # each exactly once
            for run in await stores[1].list_runs(RunQuery(limit=n)):
                assert run.status == RunStatus.RUNNING and run.epoch == 1
                assert run.run_id in got[run.owner or ""]

    async def test_due_timer_goes_to_exactly_one_worker(self, store: Store) -> None:
        """Parked runs whose timers fall due together are each claimed by exactly one worker."""
        async with self.peers(store, 3) as stores:
            ids = [f"t{i}" for i in range(10)]
            for run_id in ids:
                await new_run(stores[0], run_id)
            claimed = await claim(stores[0])
            due = time.time() + 0.05
            for run_id in ids:
                await stores[0].park(run_id, claimed[run_id].epoch, due, timer_wait())
            await anyio.sleep(max(0.0, due - time.time()) + 0.01)
            got: list[str] = []

            async def worker(name: str, s: Store) -> None:
                got.extend(await claim(s, name, limit=len(ids)))

            async with anyio.create_task_group() as tg:
                for i, s in enumerate(stores):
                    tg.start_soon(worker, f"w{i}", s)
            assert sorted(got) == sorted(ids)
            for run_id in ids:
                run = await stores[1].get_run(run_id)
                assert run is not None and run.epoch == 2

    # ---- journal appends --------------------------------------------------------------------------

    async def test_append_with_stale_epoch_raises_lease_lost_and_writes_nothing(
        self, store: Store
    ) -> None:
        """A fenced append with any epoch but the current one raises LeaseLost and writes nothing."""
        epoch = await running(store)
        for wrong in (epoch - 1, epoch + 1):
            with pytest.raises(LeaseLost):
                await store.append("r1", wrong, [entry(0)])
        assert await store.load_journal("r1") == []
        run = await store.get_run("r1")
        assert run is not None and run.steps == 0
        with pytest.raises(RunNotFoundError):
            await store.append("nope", 1, [entry(0)])

    async def test_append_after_release_raises_lease_lost(self, store: Store) -> None:
        """Once the run is parked, even its last epoch can no longer write."""
        epoch = await running(store)
        await store.park("r1", epoch, None, signal_wait("go"))
        with pytest.raises(LeaseLost):
            await store.append("r1", epoch, [entry(0)])
        assert await store.load_journal("r1") == []

    async def test_append_writes_entries_and_counts_steps(self, store: Store) -> None:
        """append stores entries in seq order and sets steps to the number of entries."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0), entry(1, result='"x"')])
        await store.append("r1", epoch, [entry(2)])
        assert await store.load_journal("r1") == [entry(0), entry(1, result='"x"'), entry(2)]
        run = await store.get_run("r1")
        assert run is not None and run.steps == 3

    async def test_append_identical_final_entry_is_a_no_op(self, store: Store) -> None:
        """Re-appending an identical final entry (a lost acknowledgement) is accepted, no duplicate."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0)])
        await store.append("r1", epoch, [entry(0)])
        await store.append("r1", epoch, [entry(0), entry(1)])
        assert await store.load_journal("r1") == [entry(0), entry(1)]
        run = await store.get_run("r1")
        assert run is not None and run.steps == 2

    async def test_append_different_final_entry_conflicts(self, store: Store) -> None:
        """A different entry at a seq holding a final one raises ConflictError; nothing changes."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0)])
        failed = entry(1, "error", None, error='{"type":"E","message":"m"}')
        await store.append("r1", epoch, [failed])
        for other in (
            entry(0, result="2"),
            entry(0, "pending", None),
            entry(1),
            entry(1, "pending"),
        ):
            with pytest.raises(ConflictError):
                await store.append("r1", epoch, [other])
        assert await store.load_journal("r1") == [entry(0), failed]

    async def test_append_replaces_a_pending_entry(self, store: Store) -> None:
        """An entry at a seq holding a pending entry replaces it (pending -> pending -> final)."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0, "pending", None, attempts=1, due_at=10.5)])
        await store.append("r1", epoch, [entry(0, "pending", None, attempts=2, due_at=20.5)])
        assert await store.load_journal("r1") == [
            entry(0, "pending", None, attempts=2, due_at=20.5)
        ]
        await store.append("r1", epoch, [entry(0, attempts=3)])
        assert await store.load_journal("r1") == [entry(0, attempts=3)]
        run = await store.get_run("r1")
        assert run is not None and run.steps == 1

    async def test_append_accepts_seqs_out_of_order(self, store: Store) -> None:
        """Seqs may arrive out of order with gaps (gather); load_journal returns them by seq."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(3)])
        await store.append("r1", epoch, [entry(1)])
        run = await store.get_run("r1")
        assert run is not None and run.steps == 2
        await store.append("r1", epoch, [entry(2), entry(0)])
        assert [e.seq for e in await store.load_journal("r1")] == [0, 1, 2, 3]
        run = await store.get_run("r1")
        assert run is not None and run.steps == 4

    async def test_append_batch_is_atomic(self, store: Store) -> None:
        """A batch with one conflicting entry writes none of its entries."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0)])
        with pytest.raises(ConflictError):
            await store.append("r1", epoch, [entry(1), entry(0, result="2"), entry(2)])
        assert await store.load_journal("r1") == [entry(0)]
        run = await store.get_run("r1")
        assert run is not None and run.steps == 1

    async def test_append_of_a_final_entry_resets_crash_count(self, store: Store) -> None:
        """An append holding a final entry (ok or error: the run made progress) resets crash_count
        to zero, whether its seq is new or held a pending entry; last_error is kept."""
        epoch = await crashed_once(store)
        await store.append("r1", epoch, [entry(0)])
        run = await store.get_run("r1")
        assert run is not None and run.crash_count == 0 and run.last_error == "boom"
        await store.append("r1", epoch, [entry(1, "pending", None, attempts=1)])
        await store.record_crash("r1", epoch, "boom", time.time() - 1, max_crashes=5)
        epoch = (await claim(store))["r1"].epoch
        assert await crash_count(store) == 1
        failed = entry(1, "error", None, error='{"type":"E","message":"m"}', attempts=2)
        await store.append("r1", epoch, [failed])  # replaces the pending entry at seq 1
        assert await crash_count(store) == 0
        assert await store.load_journal("r1") == [entry(0), failed]

    async def test_append_of_only_pending_entries_leaves_crash_count(self, store: Store) -> None:
        """An append of pending entries only (an in-flight step's progress write) is not progress of
        the run: crash_count stays, while the entries are still written (new or replacing pending
        ones), counted in steps and updated_at moves; a batch with one final entry resets it."""
        epoch = await crashed_once(store)
        before = await store.get_run("r1")
        assert before is not None
        await anyio.sleep(0.01)
        await store.append("r1", epoch, [entry(0, "pending", None, attempts=1)])
        run = await store.get_run("r1")
        assert run is not None and run.crash_count == 1 and run.steps == 1
        assert run.updated_at > before.updated_at
        await store.append("r1", epoch, [entry(0, "pending", None, attempts=2)])  # replaces
        await store.append("r1", epoch, [entry(0, "pending", None, attempts=2)])  # identical again
        await store.append(
            "r1", epoch, [entry(1, "pending", None, attempts=1), entry(2, "pending", None)]
        )
        await store.append(
            "r1", epoch, [entry(1, "pending", None, attempts=2), entry(3, "pending", None)]
        )
        run = await store.get_run("r1")
        assert run is not None and run.crash_count == 1 and run.steps == 4
        assert await store.load_journal("r1") == [
            entry(0, "pending", None, attempts=2),
            entry(1, "pending", None, attempts=2),
            entry(2, "pending", None),
            entry(3, "pending", None),
        ]
        with pytest.raises(LeaseLost):  # still fenced
            await store.append("r1", epoch + 1, [entry(4, "pending", None)])
        await store.append("r1", epoch, [entry(4, "pending", None), entry(0, attempts=3)])
        run = await store.get_run("r1")
        assert run is not None and run.crash_count == 0 and run.steps == 5

    async def test_consume_signal_resets_crash_count(self, store: Store) -> None:
        """consume_signal journals a final entry: it resets crash_count like a final append."""
        epoch = await crashed_once(store)
        await store.deliver_signal("r1", "go", '"yes"', "s1")
        got = await store.consume_signal(
            "r1", epoch, "go", entry(0, "pending", None, kind="signal")
        )
        assert got is not None and got.final
        assert await crash_count(store) == 0

    async def test_journal_round_trip_keeps_every_field_and_checksum(self, store: Store) -> None:
        """Loaded entries equal what was appended, field for field, and verify_journal passes."""
        epoch = await running(store)
        entries = [
            JournalEntry(0, "call", "llm_plan", "ab12", "ok", '[["topic"],{}]', '{"plan":[1,2]}',
                         None, 2, "r1:0", 1700000000.125, 1700000001.5, None).sealed(),
            JournalEntry(1, "sleep", "sleep", "cd34", "pending", "[3600]", None, None, 0, "r1:1",
                         1700000002.0, None, 1700003602.0).sealed(),
            JournalEntry(2, "call", "ünïcødé ✓", "ef56", "error", None, None,
                         '{"type":"ValueError","message":"bad \\u2013 input"}', 5, "r1:2",
                         1.0, 2.0, 5).sealed(),  # an int due_at: its repr is checksummed
            JournalEntry(3, "random", "random", "", "ok", None, "0.1", None, 0, "r1:3", 0.0, None,
                         0.30000000000000004).sealed(),
        ]  # fmt: skip
        await store.append("r1", epoch, entries)
        loaded = await store.load_journal("r1")
        assert loaded == entries
        assert [e.checksum for e in loaded] == [e.compute_checksum() for e in loaded]
        assert [repr(e.due_at) for e in loaded] == [repr(e.due_at) for e in entries]
        assert verify_journal("r1", loaded) == {e.seq: e for e in entries}

    async def test_tampered_journal_row_is_detected(self, store: Store) -> None:
        """A journal row modified behind the store's back (``corrupt_result``) is loaded as it is
        stored, and verify_journal names its seq: a store never recomputes checksums."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0, result='{"amount":10}'), entry(1)])
        await self.corrupt_result(store, "r1", 0, {"amount": 1000})
        loaded = await store.load_journal("r1")
        assert json.loads(loaded[0].result or "null") == {"amount": 1000}
        assert loaded[1] == entry(1)
        with pytest.raises(CorruptJournalError, match="seq 0"):
            verify_journal("r1", loaded)

    # ---- leases -----------------------------------------------------------------------------------

    async def test_expired_lease_is_taken_over_and_fences_the_old_worker(
        self, store: Store
    ) -> None:
        """After a lease expires another worker claims the run (a crash is counted); the old worker
        can no longer append, park, finish or renew."""
        async with self.peers(store, 2) as (old, new):
            await new_run(old)
            stale = (await claim(old, "w-old", lease_ttl=0.05))["r1"].epoch
            assert await claim(new, "w-new") == {}  # lease still held
            await anyio.sleep(0.1)
            taken = (await claim(new, "w-new"))["r1"]
            assert taken.epoch == stale + 1 and taken.owner == "w-new"
            assert taken.crash_count == 1 and "w-old" in (taken.last_error or "")
            with pytest.raises(LeaseLost):
                await old.append("r1", stale, [entry(0)])
            with pytest.raises(LeaseLost):
                await old.park("r1", stale, None, ())
            with pytest.raises(LeaseLost):
                await old.finish("r1", stale, RunStatus.COMPLETED, "1", None)
            assert await old.renew("w-old", {"r1": stale}, TTL) == {}
            assert await old.load_journal("r1") == []
            await new.append("r1", taken.epoch, [entry(0)])
            assert await status_of(old) == RunStatus.RUNNING

    async def test_expired_leases_quarantine_at_max_crashes(self, store: Store) -> None:
        """A run whose workers keep dying is quarantined instead of claimed at max_crashes."""
        await new_run(store)
        for crashes in range(3):  # each claim's lease expires at once (negative ttl)
            run = (await claim(store, lease_ttl=-1.0, max_crashes=3))["r1"]
            assert run.crash_count == crashes and run.epoch == crashes + 1
        assert await claim(store, max_crashes=3) == {}
        stored = await store.get_run("r1")
        assert stored is not None and stored.status == RunStatus.QUARANTINED
        assert stored.crash_count == 3 and stored.epoch == 3
        assert stored.owner is None and stored.lease_expires is None and stored.wake_at is None
        assert "lost its lease" in (stored.last_error or "")
        assert await claim(store, max_crashes=3) == {}

    async def test_a_run_whose_workers_die_mid_step_is_quarantined_despite_pending_writes(
        self,
        store: Store,
    ) -> None:
        """Workers that each write a pending entry for the step in flight (its attempt, heartbeat)
        and then die still count as crashes: the run is quarantined at max_crashes."""
        await new_run(store)
        for crashes in range(3):  # each claim's lease expires at once (negative ttl)
            run = (await claim(store, lease_ttl=-1.0, max_crashes=3))["r1"]
            assert run.crash_count == crashes
            await store.append("r1", run.epoch, [entry(0, "pending", None, attempts=crashes + 1)])
        assert await claim(store, max_crashes=3) == {}
        stored = await store.get_run("r1")
        assert stored is not None and stored.status == RunStatus.QUARANTINED
        assert stored.crash_count == 3 and stored.steps == 1

    async def test_quarantined_takeover_does_not_use_up_the_limit(self, store: Store) -> None:
        """Runs quarantined during a claim do not count towards its limit."""
        await new_run(store, "dying")
        await claim(store, lease_ttl=-1.0)
        await new_run(store, "fresh")
        got = await claim(store, limit=1, max_crashes=1)
        assert list(got) == ["fresh"]
        assert await status_of(store, "dying") == RunStatus.QUARANTINED

    async def test_renew_extends_the_lease_and_reports_cancel(self, store: Store) -> None:
        """renew extends held leases, reports cancel requests, and omits lost ones."""
        epoch = await running(store)
        await new_run(store, "r2")
        epoch2 = (await claim(store, "w2"))["r2"].epoch
        before = await store.get_run("r1")
        assert before is not None and before.lease_expires is not None
        held = await store.renew("w1", {"r1": epoch}, 100.0)
        assert held == {"r1": False}
        after = await store.get_run("r1")
        assert after is not None and after.lease_expires is not None
        assert after.lease_expires >= before.lease_expires + 60
        await store.request_cancel("r1")
        assert await store.renew("w1", {"r1": epoch}, TTL) == {"r1": True}
        # wrong epoch, wrong worker, unknown run: all lost
        lost = {"r1": epoch + 1, "r2": epoch2, "nope": 1}
        assert await store.renew("w1", lost, TTL) == {}
        assert await store.renew("w2", {"r2": epoch2}, TTL) == {"r2": False}

    # ---- crashes, quarantine, resume -----------------------------------------------------------------

    async def test_record_crash_parks_the_run_until_retry_at(self, store: Store) -> None:
        """record_crash counts the crash and parks the run until retry_at, releasing the lease."""
        epoch = await running(store)
        retry_at = time.time() + 0.05
        run = await store.record_crash("r1", epoch, "boom", retry_at, max_crashes=3)
        assert run.status == RunStatus.WAITING and run.wake_at == retry_at
        assert run.crash_count == 1 and run.last_error == "boom"
        assert run.owner is None and run.lease_expires is None
        assert await store.get_run("r1") == run
        assert await claim(store) == {}
        await anyio.sleep(0.1)
        assert (await claim(store))["r1"].epoch == epoch + 1

    async def test_record_crash_quarantines_at_max_crashes(self, store: Store) -> None:
        """The crash that reaches max_crashes quarantines the run instead of parking it."""
        epoch = await running(store)
        run = await store.record_crash("r1", epoch, "one", time.time() - 1, max_crashes=2)
        assert run.status == RunStatus.WAITING
        epoch = (await claim(store))["r1"].epoch
        run = await store.record_crash("r1", epoch, "two", time.time() - 1, max_crashes=2)
        assert run.status == RunStatus.QUARANTINED and run.crash_count == 2
        assert run.wake_at is None and run.last_error == "two"
        assert await claim(store) == {}

    async def test_record_crash_without_epoch_quarantines_at_once(self, store: Store) -> None:
        """record_crash with epoch None (non-determinism, corruption) quarantines immediately."""
        await running(store)
        run = await store.record_crash("r1", None, "diverged", time.time(), max_crashes=100)
        assert run.status == RunStatus.QUARANTINED and run.crash_count == 1
        assert run.owner is None and run.lease_expires is None and run.wake_at is None
        with pytest.raises(RunNotFoundError):
            await store.record_crash("nope", None, "x", time.time(), max_crashes=3)

    async def test_record_crash_is_fenced(self, store: Store) -> None:
        """record_crash with a stale epoch raises LeaseLost and changes nothing."""
        epoch = await running(store)
        with pytest.raises(LeaseLost):
            await store.record_crash("r1", epoch + 1, "boom", time.time(), max_crashes=3)
        run = await store.get_run("r1")
        assert run is not None and run.status == RunStatus.RUNNING and run.crash_count == 0

    async def test_resume_makes_a_quarantined_run_pending(self, store: Store) -> None:
        """resume turns a quarantined run pending and claimable with its crash count reset."""
        await running(store)
        await store.record_crash("r1", None, "diverged", time.time(), max_crashes=3)
        run = await store.resume("r1")
        assert run.status == RunStatus.PENDING and run.crash_count == 0
        assert run.wake_at is not None and run.wake_at <= time.time()
        assert run.last_error == "diverged"
        assert (await claim(store))["r1"].epoch == 2

    async def test_resume_leaves_other_runs_alone(self, store: Store) -> None:
        """resume of a run that is not quarantined returns it unchanged; unknown runs raise."""
        epoch = await running(store)
        before = await store.get_run("r1")
        assert await store.resume("r1") == before
        assert (await store.get_run("r1")) == before
        assert before is not None and before.epoch == epoch
        with pytest.raises(RunNotFoundError):
            await store.resume("nope")

    # ---- park, signals ------------------------------------------------------------------------------

    async def test_park_releases_the_lease(self, store: Store) -> None:
        """park makes the run waiting until wake_at, releases the lease and records its waits."""
        epoch = await running(store)
        wake_at = time.time() + 3600
        await store.park("r1", epoch, wake_at, timer_wait())
        run = await store.get_run("r1")
        assert run is not None and run.status == RunStatus.WAITING
        assert run.wake_at == wake_at and run.waits == timer_wait()
        assert run.owner is None and run.lease_expires is None and run.epoch == epoch

    async def test_park_keeps_the_waits_as_given(self, store: Store) -> None:
        """park stores what the run waits for, several waits at once (a gather), and get_run
        and list_runs return them equal: kinds, seqs, names with quotes and non-ASCII
        characters, deadlines to the float; a later park replaces them."""
        epoch = await running(store)
        until = time.time() + 86400.123456
        waits = (
            Wait(WaitKind.SIGNAL, seq=2, name="approval", until=until),
            Wait(WaitKind.SIGNAL, seq=3, name='it\'s "ok" \u2014 f\u00fcr dich'),
            Wait(WaitKind.TIMER, seq=4, until=until),
            Wait(WaitKind.RETRY, seq=5, name="llm_call", until=until),
            Wait(WaitKind.WORKER, name="w-7"),
        )
        await store.park("r1", epoch, until, waits)
        run = await store.get_run("r1")
        assert run is not None and run.waits == waits
        [listed] = await store.list_runs(RunQuery())
        assert listed.waits == waits
        await store.deliver_signal("r1", "approval", "true", "s1")
        epoch = (await claim(store))["r1"].epoch
        await store.park("r1", epoch, None, signal_wait("next", seq=6))
        run = await store.get_run("r1")
        assert run is not None and run.waits == signal_wait("next", seq=6)

    async def test_list_runs_filters_by_tags(self, store: Store) -> None:
        """A run's tags (``meta["tags"]``, kept from create_run) select it in list_runs: every
        tag of the query must match, together with the other filters, newest first."""
        for run_id, tags in (
            ("r0", {"tenant": "acme", "tier": "gold"}),
            ("r1", {"tenant": "acme"}),
            ("r2", {"tenant": "zeta-9", "tier": "gold"}),
            ("r3", {}),
        ):
            meta = {"tags": tags} if tags else {}
            await store.create_run(RunRecord(run_id, WF, INPUT, meta=meta))

        async def ids(**filters: Any) -> list[str]:
            return [r.run_id for r in await store.list_runs(RunQuery(**filters))]

        assert await ids(tags={"tenant": "acme"}) == ["r1", "r0"]
        assert await ids(tags={"tenant": "acme", "tier": "gold"}) == ["r0"]
        assert await ids(tags={"tier": "gold"}) == ["r2", "r0"]
        assert await ids(tags={"tenant": "zeta-9"}, status=RunStatus.PENDING) == ["r2"]
        assert await ids(tags={"tenant": "acme"}, workflow="other") == []
        assert await ids(tags={"tenant": "acme"}, limit=1, offset=1) == ["r0"]
        assert await ids(tags={"tenant": "none"}) == []
        (r0,) = [r for r in await store.list_runs(RunQuery()) if r.run_id == "r0"]
        assert r0.tags == {"tenant": "acme", "tier": "gold"}

    async def test_list_runs_finds_the_runs_waiting_on_a_signal(self, store: Store) -> None:
        """RunQuery(waiting_for=SIGNAL, wait_name=n) answers the waiting runs one of whose waits
        is signal n, newest first; without wait_name every run waiting on any signal; a run
        waiting on something else, claimed again since, or finished is not among them."""
        now = time.time()
        parks = {
            "r0": signal_wait("approval"),
            "r1": timer_wait(now + 3600),
            "r2": timer_wait(now + 3600, seq=1) + signal_wait("approval", now + 3600, seq=2),
            "r3": signal_wait("other"),
            "r4": signal_wait("approval"),  # then woken and claimed again
            "r5": signal_wait("approval"),  # then woken, claimed and finished
        }
        for run_id, waits in parks.items():
            epoch = await running(store, run_id)
            wake = min((w.until for w in waits if w.until is not None), default=None)
            await store.park(run_id, epoch, wake, waits)
        for run_id in ("r4", "r5"):
            assert await store.deliver_signal(run_id, "approval", "true", f"s-{run_id}")
        claimed = await claim(store)
        assert sorted(claimed) == ["r4", "r5"]
        await store.finish("r5", claimed["r5"].epoch, RunStatus.COMPLETED, "1", None)

        async def ids(query: RunQuery) -> list[str]:
            return [r.run_id for r in await store.list_runs(query)]

        approval = RunQuery(waiting_for=WaitKind.SIGNAL, wait_name="approval")
        assert await ids(approval) == ["r2", "r0"]
        assert await ids(RunQuery(waiting_for=WaitKind.SIGNAL)) == ["r3", "r2", "r0"]
        assert await ids(RunQuery(waiting_for=WaitKind.TIMER)) == ["r2", "r1"]
        assert await ids(RunQuery(waiting_for=WaitKind.SIGNAL, wait_name="none")) == []
        assert await ids(RunQuery(waiting_for=WaitKind.RETRY)) == []
        assert await ids(RunQuery(waiting_for=WaitKind.SIGNAL, workflow="other")) == []
        paged = RunQuery(waiting_for=WaitKind.SIGNAL, wait_name="approval", limit=1, offset=1)
        assert await ids(paged) == ["r0"]
        assert (await store.list_runs(approval))[0].waits == parks["r2"]

    async def test_park_with_unconsumed_signal_wakes_at_once(self, store: Store) -> None:
        """A run parked while an unconsumed signal waits is runnable at once (no lost wake-up)."""
        epoch = await running(store)
        assert await store.deliver_signal("r1", "approval", '{"ok":true}', "s1")
        await store.park("r1", epoch, None, signal_wait("approval"))
        run = await store.get_run("r1")
        assert run is not None and run.wake_at is not None and run.wake_at <= time.time()
        assert list(await claim(store)) == ["r1"]

    async def test_a_signal_the_run_does_not_wait_for_wakes_nothing(self, store: Store) -> None:
        """Only a signal the waits name wakes a parked run: one of another name, delivered while
        it sleeps or there before it parks, is kept (consumable later) and leaves it parked; a
        signal it waits for wakes it, whenever it comes."""
        epoch = await running(store)
        await store.park("r1", epoch, time.time() + 3600, timer_wait(time.time() + 3600))
        assert await store.deliver_signal("r1", "later", '"early"', "s1")
        assert await claim(store) == {}  # a timer's run is not woken by a signal
        await store.deliver_signal("r1", "approval", "true", "s2")
        assert await claim(store) == {}
        await new_run(store, "r2")
        epoch2 = (await claim(store))["r2"].epoch
        assert await store.deliver_signal("r2", "other", "1", "s3")  # there before the park
        await store.park("r2", epoch2, None, signal_wait("approval"))
        assert await claim(store) == {}
        assert await store.deliver_signal("r2", "approval", "2", "s4")
        claimed = await claim(store)
        assert list(claimed) == ["r2"]
        taken = await store.consume_signal(
            "r2", claimed["r2"].epoch, "other", entry(0, "pending", None)
        )
        assert taken is not None and taken.result == "1"  # the other signal was kept
        await store.park("r2", claimed["r2"].epoch, None, signal_wait("approval"))
        assert list(await claim(store)) == ["r2"]  # approval is there, unconsumed: at once

    async def test_park_with_cancel_requested_wakes_at_once(self, store: Store) -> None:
        """A run parked after a cancel request is runnable at once."""
        epoch = await running(store)
        await store.request_cancel("r1")
        await store.park("r1", epoch, time.time() + 3600, timer_wait())
        claimed = await claim(store)
        assert claimed["r1"].cancel_requested

    async def test_park_is_fenced(self, store: Store) -> None:
        """park with a stale epoch raises LeaseLost and changes nothing."""
        epoch = await running(store)
        with pytest.raises(LeaseLost):
            await store.park("r1", epoch - 1, None, ())
        assert await status_of(store) == RunStatus.RUNNING

    async def test_deliver_signal_is_idempotent_by_signal_id(self, store: Store) -> None:
        """A signal_id is stored once: a second delivery returns False and is not consumable."""
        epoch = await running(store)
        assert await store.deliver_signal("r1", "approval", '"a"', "s1")
        assert not await store.deliver_signal("r1", "approval", '"b"', "s1")
        first = await store.consume_signal("r1", epoch, "approval", entry(0, "pending", None))
        assert first is not None and first.result == '"a"'
        assert (
            await store.consume_signal("r1", epoch, "approval", entry(1, "pending", None)) is None
        )
        assert not await store.deliver_signal("r1", "approval", '"a"', "s1")  # even once consumed

    async def test_signal_ids_are_per_run(self, store: Store) -> None:
        """The same signal_id delivered to two runs is stored for each."""
        await new_run(store, "r1")
        await new_run(store, "r2")
        assert await store.deliver_signal("r1", "go", "1", "s1")
        assert await store.deliver_signal("r2", "go", "1", "s1")

    async def test_deliver_signal_wakes_a_waiting_run(self, store: Store) -> None:
        """Delivering a signal to a run parked without a timer makes it claimable."""
        epoch = await running(store)
        await store.park("r1", epoch, None, signal_wait("approval"))
        assert await claim(store) == {}
        assert await store.deliver_signal("r1", "approval", "true", "s1")
        assert list(await claim(store)) == ["r1"]

    async def test_deliver_signal_to_unknown_run_raises(self, store: Store) -> None:
        """deliver_signal to an unknown run raises RunNotFoundError."""
        with pytest.raises(RunNotFoundError):
            await store.deliver_signal("nope", "x", "1", "s1")

    async def test_consume_signal_takes_oldest_first_with_its_journal_entry(
        self, store: Store
    ) -> None:
        """consume_signal takes the oldest unconsumed signal of that name and journals it atomically."""
        epoch = await running(store)
        await store.deliver_signal("r1", "approval", '"first"', "s1")
        await store.deliver_signal("r1", "other", '"x"', "s2")
        await store.deliver_signal("r1", "approval", '"second"', "s3")
        waiting = entry(0, "pending", None, kind="signal", name="approval", due_at=99.0)
        before = time.time()
        got = await store.consume_signal("r1", epoch, "approval", waiting)
        assert got is not None
        assert got == waiting.with_result('"first"', got.finished_at or 0.0)
        assert got.status == "ok" and got.finished_at is not None and got.finished_at >= before
        assert got.checksum == got.compute_checksum()
        assert await store.load_journal("r1") == [got]
        run = await store.get_run("r1")
        assert run is not None and run.steps == 1
        second = await store.consume_signal("r1", epoch, "approval", entry(1, "pending", None))
        assert second is not None and second.result == '"second"'
        assert (
            await store.consume_signal("r1", epoch, "approval", entry(2, "pending", None)) is None
        )
        assert [e.seq for e in await store.load_journal("r1")] == [0, 1]
        other = await store.consume_signal("r1", epoch, "other", entry(2, "pending", None))
        assert other is not None and other.result == '"x"'

    async def test_consume_signal_without_signal_writes_nothing(self, store: Store) -> None:
        """consume_signal returns None and writes nothing when no signal of that name waits."""
        epoch = await running(store)
        await store.deliver_signal("r1", "other", "1", "s1")
        assert (
            await store.consume_signal("r1", epoch, "approval", entry(0, "pending", None)) is None
        )
        assert await store.load_journal("r1") == []

    async def test_consume_signal_is_fenced(self, store: Store) -> None:
        """consume_signal with a stale epoch raises LeaseLost; the signal stays for the owner."""
        epoch = await running(store)
        await store.deliver_signal("r1", "go", "1", "s1")
        with pytest.raises(LeaseLost):
            await store.consume_signal("r1", epoch + 1, "go", entry(0, "pending", None))
        assert await store.load_journal("r1") == []
        assert await store.consume_signal("r1", epoch, "go", entry(0, "pending", None)) is not None

    async def test_consume_signal_conflict_keeps_the_signal(self, store: Store) -> None:
        """If the journal write conflicts, the signal is not consumed (one atomic step)."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0, result="2")])
        await store.deliver_signal("r1", "go", "1", "s1")
        with pytest.raises(ConflictError):
            await store.consume_signal("r1", epoch, "go", entry(0, "pending", None))
        got = await store.consume_signal("r1", epoch, "go", entry(1, "pending", None))
        assert got is not None and got.result == "1"

    # ---- cancellation, finish -------------------------------------------------------------------------

    async def test_cancel_of_a_never_started_run_cancels_it_on_the_spot(self, store: Store) -> None:
        """request_cancel of a pending run with no journal cancels it at once."""
        await new_run(store)
        run = await store.request_cancel("r1")
        assert run.status == RunStatus.CANCELLED and run.cancel_requested
        assert run.error == CANCELLED_ERROR and run.wake_at is None
        assert await store.get_run("r1") == run
        assert await claim(store) == {}

    async def test_cancel_of_a_quarantined_run_cancels_it_on_the_spot(self, store: Store) -> None:
        """request_cancel of a quarantined run cancels it at once."""
        await running(store)
        await store.record_crash("r1", None, "diverged", time.time(), max_crashes=3)
        run = await store.request_cancel("r1")
        assert run.status == RunStatus.CANCELLED and run.error == CANCELLED_ERROR

    async def test_cancel_of_a_running_run_sets_the_flag(self, store: Store) -> None:
        """request_cancel of a running run only flags it; the owner sees it through renew."""
        epoch = await running(store)
        run = await store.request_cancel("r1")
        assert run.status == RunStatus.RUNNING and run.cancel_requested and run.epoch == epoch
        assert await store.renew("w1", {"r1": epoch}, TTL) == {"r1": True}

    async def test_cancel_of_a_waiting_run_wakes_it(self, store: Store) -> None:
        """request_cancel of a parked run flags it and makes it claimable at once."""
        epoch = await running(store)
        await store.park("r1", epoch, None, signal_wait("never"))
        run = await store.request_cancel("r1")
        assert run.status == RunStatus.WAITING and run.cancel_requested
        claimed = await claim(store)
        assert claimed["r1"].cancel_requested

    async def test_cancel_of_a_resumed_run_with_history_wakes_it(self, store: Store) -> None:
        """A pending run that has journal entries is flagged and woken, not cancelled on the spot."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0)])
        await store.record_crash("r1", None, "diverged", time.time(), max_crashes=3)
        await store.resume("r1")
        run = await store.request_cancel("r1")
        assert run.status == RunStatus.PENDING and run.cancel_requested
        assert list(await claim(store)) == ["r1"]

    async def test_cancel_of_a_finished_run_changes_nothing(self, store: Store) -> None:
        """request_cancel of a completed run leaves it completed; unknown runs raise."""
        epoch = await running(store)
        await store.finish("r1", epoch, RunStatus.COMPLETED, '"done"', None)
        run = await store.request_cancel("r1")
        assert run.status == RunStatus.COMPLETED and run.result == '"done"' and run.error is None
        with pytest.raises(RunNotFoundError):
            await store.request_cancel("nope")

    async def test_finish_records_the_outcome_and_releases(self, store: Store) -> None:
        """finish stores the final status with result or error and releases the lease for good."""
        epoch = await running(store)
        await new_run(store, "r2")
        epoch2 = (await claim(store))["r2"].epoch
        await store.finish("r1", epoch, RunStatus.COMPLETED, '{"x":1}', None)
        await store.finish("r2", epoch2, RunStatus.FAILED, None, '{"type":"E","message":"m"}')
        r1, r2 = await store.get_run("r1"), await store.get_run("r2")
        assert r1 is not None and r1.status == RunStatus.COMPLETED and r1.result == '{"x":1}'
        assert r2 is not None and r2.status == RunStatus.FAILED and r2.error is not None
        for run in (r1, r2):
            assert run.owner is None and run.lease_expires is None and run.wake_at is None
            assert run.waits == ()
        with pytest.raises(LeaseLost):
            await store.append("r1", epoch, [entry(0)])
        with pytest.raises(LeaseLost):
            await store.finish("r1", epoch, RunStatus.FAILED, None, "x")
        assert await claim(store) == {}
        assert await store.renew("w1", {"r1": epoch}, TTL) == {}

    # ---- the worker registry --------------------------------------------------------------------------

    async def test_heartbeat_registers_a_worker_every_store_object_sees(self, store: Store) -> None:
        """A first heartbeat registers the worker with its host, pid and workflows, started and last
        seen now and live for ttl seconds; another store object on the same database lists it."""
        async with self.peers(store, 2) as stores:
            before = time.time()
            stored = await stores[0].heartbeat_worker(worker(), 30.0)
            after = time.time()
            assert (stored.worker_id, stored.host, stored.pid, stored.workflows) == (
                "w1",
                "host-1",
                4242,
                ("a", "b"),
            )
            assert before - 0.5 <= stored.started_at == stored.last_seen <= after + 0.5
            assert stored.expires_at == pytest.approx(stored.last_seen + 30.0)
            assert await stores[1].list_workers() == [stored]

    async def test_heartbeat_refreshes_a_registration(self, store: Store) -> None:
        """A later heartbeat of the same worker moves last_seen and expires_at on, replaces what it
        serves and keeps started_at: still one registration."""
        first = await store.heartbeat_worker(worker(), 30.0)
        await anyio.sleep(0.02)
        again = await store.heartbeat_worker(worker(workflows=("a", "b", "c")), 60.0)
        assert again.started_at == first.started_at
        assert again.last_seen > first.last_seen
        assert again.expires_at == pytest.approx(again.last_seen + 60.0)
        assert again.workflows == ("a", "b", "c")
        assert await store.list_workers() == [again]

    async def test_list_workers_oldest_registration_first(self, store: Store) -> None:
        """list_workers gives every live worker, oldest registration first; a worker serving no
        workflow (yet) and names with odd characters round-trip."""
        odd = WorkerRecord("w2 é|\"x'", "höst:2", 1, ())
        first = await store.heartbeat_worker(worker("w9"), 30.0)
        await anyio.sleep(0.01)
        second = await store.heartbeat_worker(odd, 30.0)
        await anyio.sleep(0.01)
        await store.heartbeat_worker(worker("w9"), 30.0)  # a refresh does not reorder
        listed = await store.list_workers()
        assert [w.worker_id for w in listed] == ["w9", odd.worker_id]
        assert listed[0].started_at == first.started_at
        assert listed[1] == second and second.workflows == () and second.host == "höst:2"

    async def test_expired_worker_is_gone_and_comes_back_as_a_new_registration(
        self, store: Store
    ) -> None:
        """A worker whose heartbeats stopped for longer than its ttl is not listed any more; if it
        heartbeats again, that starts a new registration (a later started_at)."""
        old = await store.heartbeat_worker(worker("short"), 0.1)
        live = await store.heartbeat_worker(worker("long"), 30.0)
        await anyio.sleep(0.25)
        assert await store.list_workers() == [live]
        back = await store.heartbeat_worker(worker("short"), 30.0)
        assert back.started_at > old.expires_at - 0.05
        assert back.started_at == back.last_seen
        assert [w.worker_id for w in await store.list_workers()] == ["long", "short"]

    async def test_remove_worker_deregisters_it(self, store: Store) -> None:
        """remove_worker takes one worker out of the registry at once; removing an unknown or
        already removed worker is a no-op."""
        await store.heartbeat_worker(worker("w1"), 30.0)
        kept = await store.heartbeat_worker(worker("w2"), 30.0)
        await store.remove_worker("w1")
        assert await store.list_workers() == [kept]
        await store.remove_worker("w1")
        await store.remove_worker("never-registered")
        assert await store.list_workers() == [kept]

    # ---- retry ----------------------------------------------------------------------------------------

    async def test_retry_run_reopens_entries_and_makes_the_run_runnable(self, store: Store) -> None:
        """retry_run deletes the reopened seq and every later one, keeps the rest and the note,
        resets the run to pending and runnable now (no error, no crash count, steps recounted
        without the note), wakes the listeners, and later appends count steps from there."""
        epoch = await running(store)
        await store.record_crash("r1", epoch, "boom", time.time(), max_crashes=9)
        epoch = (await claim(store))["r1"].epoch  # crash_count 1 now
        await store.append("r1", epoch, [entry(0), entry(1)])
        await store.append("r1", epoch, [entry(2, "error", None, error='{"type":"E"}'), entry(3)])
        await store.append("r1", epoch, [entry(4, "pending", None)])
        await store.finish("r1", epoch, RunStatus.FAILED, None, '{"type":"E","message":"m"}')
        calls: list[int] = []
        unsubscribe = store.subscribe(lambda: calls.append(1))
        before = time.time()
        run = await store.retry_run("r1", [2], 2, note())
        unsubscribe()
        assert calls
        assert run.status == RunStatus.PENDING and run.wake_at is not None
        assert before - 1 <= run.wake_at <= time.time() + 1
        assert (run.error, run.result, run.owner, run.lease_expires) == (None, None, None, None)
        assert not run.cancel_requested and run.crash_count == 0 and run.steps == 2
        assert await store.get_run("r1") == run
        journal = await store.load_journal("r1")
        assert journal == [note(), entry(0), entry(1)]
        assert sorted(verify_journal("r1", journal)) == [-1, 0, 1]
        claimed = (await claim(store))["r1"]
        assert claimed.steps == 2
        await store.append("r1", claimed.epoch, [entry(2, result="7")])
        await store.append("r1", claimed.epoch, [entry(3, "pending", None), entry(3, result="8")])
        run_after = await store.get_run("r1")
        assert run_after is not None and run_after.steps == 4

    async def test_retry_run_of_a_cancelled_run_clears_its_cancel_request(
        self, store: Store
    ) -> None:
        """A cancelled run is retried like a failed one; its cancel request is cleared. A second
        retry keeps the first note; with nothing to reopen, nothing is deleted."""
        epoch = await running(store)
        await store.append("r1", epoch, [entry(0), entry(1, "error", None, error='{"type":"C"}')])
        await store.request_cancel("r1")
        await store.finish("r1", epoch, RunStatus.CANCELLED, None, '{"type":"C","message":"m"}')
        run = await store.retry_run("r1", [1], 1, note())
        assert run.status == RunStatus.PENDING and not run.cancel_requested and run.steps == 1
        epoch = (await claim(store))["r1"].epoch
        assert await store.renew("w1", {"r1": epoch}, TTL) == {"r1": False}
        await store.finish("r1", epoch, RunStatus.FAILED, None, '{"type":"E","message":"m"}')
        run = await store.retry_run("r1", [], None, note(-2))
        assert run.status == RunStatus.PENDING and run.steps == 1
        assert [e.seq for e in await store.load_journal("r1")] == [-2, -1, 0]

    async def test_retry_run_refuses_runs_that_are_not_failed_or_cancelled(
        self, store: Store
    ) -> None:
        """retry_run of a pending, running, waiting, completed or quarantined run raises RunError
        and writes nothing; of an unknown run, RunNotFoundError."""
        await new_run(store, "pending")
        await new_run(store, "r1")
        await new_run(store, "waits")
        await new_run(store, "done")
        await new_run(store, "stuck")
        runs = await claim(store)
        await store.append("r1", runs["r1"].epoch, [entry(0)])
        await store.park("waits", runs["waits"].epoch, None, signal_wait("go"))
        await store.finish("done", runs["done"].epoch, RunStatus.COMPLETED, "1", None)
        await store.record_crash("stuck", None, "diverged", time.time(), max_crashes=3)
        await new_run(store, "late")  # pending, created after the claim
        for run_id, status in [
            ("late", "pending"),
            ("r1", "running"),
            ("waits", "waiting"),
            ("done", "completed"),
            ("stuck", "quarantined"),
        ]:
            before = await store.get_run(run_id)
            with pytest.raises(RunError, match=f"is {status}; only failed or cancelled"):
                await store.retry_run(run_id, [0], 0, note())
            assert await store.get_run(run_id) == before
        assert await store.load_journal("r1") == [entry(0)]
        with pytest.raises(RunNotFoundError):
            await store.retry_run("nope", [], None, note())

    async def test_retry_run_recognises_its_own_note_and_refuses_a_concurrent_one(
        self,
        store: Store,
    ) -> None:
        """The same call again (a retry after a lost acknowledgement) answers the run without
        writing; a different note at the same seq (another retry won) raises ConflictError."""
        await failed_run(
            store, [entry(0), entry(1, "error", None, error='{"type":"E"}')], RunStatus.FAILED
        )
        first = await store.retry_run("r1", [1], 1, note())
        again = await store.retry_run("r1", [1], 1, note())
        assert again == first
        with pytest.raises(ConflictError, match="retried concurrently"):
            await store.retry_run("r1", [0], None, note(by="someone else"))
        assert await store.load_journal("r1") == [note(), entry(0)]

    # ---- listeners ------------------------------------------------------------------------------------

    async def test_listeners_hear_about_new_work_on_the_event_loop(self, store: Store) -> None:
        """subscribe'd listeners run on the event loop thread when work may be claimable."""
        calls: list[int] = []
        unsubscribe = store.subscribe(lambda: calls.append(threading.get_ident()))
        loop_thread = threading.get_ident()
        await new_run(store)
        assert calls == [loop_thread]
        await store.create_run(RunRecord("r1", WF, INPUT))  # not new: no call
        assert len(calls) == 1
        epoch = (await claim(store))["r1"].epoch
        await store.park("r1", epoch, None, signal_wait("go"))
        assert len(calls) == 2
        assert await store.deliver_signal("r1", "go", "1", "s1")
        assert len(calls) == 3
        assert not await store.deliver_signal("r1", "go", "1", "s1")
        assert len(calls) == 3
        await store.request_cancel("r1")
        assert len(calls) == 4
        unsubscribe()
        unsubscribe()  # idempotent
        await new_run(store, "r2")
        assert len(calls) == 4
        assert set(calls) == {loop_thread}

    # ---- randomized comparison against the MemoryStore oracle -------------------------------------

    def test_store_agrees_with_memory_oracle(self, anyio_backend: str) -> None:
        """Random operation sequences give the same results and state as the MemoryStore oracle
        (StoreComparison); a failure prints the steps that made them disagree."""
        with anyio.from_thread.start_blocking_portal(anyio_backend) as portal:
            subject = portal.call(self.make_store)
            if isinstance(subject, MemoryStore):
                pytest.skip("MemoryStore is the oracle itself")
            portal.call(subject.open)
            try:
                StoreComparison.portal = portal
                StoreComparison.subject = subject
                run_state_machine_as_test(
                    StoreComparison,
                    settings=settings(
                        max_examples=self.oracle_examples,
                        stateful_step_count=self.oracle_steps,
                        deadline=None,
                        database=None,
                        # a failure prints its steps; shrinking a slow store would take minutes
                        phases=[Phase.explicit, Phase.generate],
                        suppress_health_check=[HealthCheck.too_slow],
                    ),
                )
            finally:
                portal.call(subject.close)
