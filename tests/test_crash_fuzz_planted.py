"""Planted bugs: each fuzzer must find each bug within its CI budget (a fuzzer that cannot find a
planted bug proves nothing).

The testing kit plants them around the correct runtime (``coro_durable.testing._planted``); the
runtime and the stores know nothing of them:

* ``skip_persist``: a store that acknowledges a step's result before it is written (it lands with
  the activation's next write), so the workflow is fed an outcome a crash or a lost lease loses
  (persist before proceed);
* ``no_fencing``: a store that sends every write with the run's current fencing token, so a
  worker whose lease expired keeps writing;
* ``reuse_key``: an instrument that gives steps calling the same function the same key.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

import coro_durable as cd
from coro_durable.testing import CrashFuzzReport, crash_fuzz
from coro_durable.testing._planted import PLANTED, EarlyAckStore, Planted
from coro_durable.testing.conformance import claim, entry, new_run
from crashfuzz_machine import Stats, machine_for

# -- a user's workflow, as crash_fuzz sees it --------------------------------------------------------

PAYMENTS: dict[str, int] = {}  # idempotency key -> amount: the payment provider's ledger
CALLS: Counter[str] = Counter()  # every physical call of the provider


def charge(order: str, amount: int, seconds: float) -> str:
    """Charge through a provider that honours Idempotency-Key (a second call with a key that
    was already used is a no-op)."""
    key = cd.idempotency_key()
    CALLS[key] += 1
    time.sleep(seconds)
    PAYMENTS.setdefault(key, amount)
    return f"{order}: charged {amount}"


@cd.workflow(name="planted_checkout")
async def checkout(order: str, seconds: float) -> list[str]:
    first = await cd.call(charge, order, 10, seconds)
    second = await cd.call(charge, order, 20, seconds)
    fees = await cd.gather(cd.call(charge, order, 1, 0.0), cd.call(charge, order, 2, 0.0))
    return [first, second, *fees]


def reset() -> None:
    PAYMENTS.clear()
    CALLS.clear()


def every_charge_applied_once(result: object) -> None:
    assert sorted(PAYMENTS.values()) == [1, 2, 10, 20], (
        f"the ledger holds {sorted(PAYMENTS.values())}, not each charge once: {PAYMENTS}"
    )


def fuzz(
    seconds: float = 0.0, bug: str | None = None, store: str = "memory://", **options: Any
) -> CrashFuzzReport:
    """crash_fuzz of the checkout, with ``bug`` planted in every simulated worker."""
    if bug is not None:
        plant = PLANTED[bug]
        options["store"] = planted_store(plant, store)
        options["wrap_store"] = plant.above
        options["runtime"] = {"instruments": plant.instruments()}
    else:
        options["store"] = store
    return crash_fuzz(
        checkout,
        "order-7",
        seconds,
        setup=reset,
        check=every_charge_applied_once,
        seed=7,
        schedules=4,
        **options,
    )


def planted_store(plant: Planted, url: str) -> Callable[[], cd.Store]:
    """What each simulated worker opens on the fuzzed database, with the bug beneath it."""
    if url == "memory://":
        shared = cd.MemoryStore()
        return lambda: plant.beneath(shared)
    return lambda: plant.beneath(cd.open_store(url))


def test_crash_fuzz_is_clean_without_planted_bugs() -> None:
    """The control: the same fuzz of the same workflow finds nothing on the real runtime, slow
    steps and lost leases included."""
    report = fuzz(0.12, points=("X4", "X6", "X7"))
    assert report.ok, report.summary()
    assert report.by_point["renew"] > 0, "the lease-lost schedule did not run"


def test_crash_fuzz_finds_skip_persist() -> None:
    """Fed before journaled: the trace sees an outcome fed with no journal entry, and a crash
    at X7 makes the resumed run invoke a step whose outcome the workflow had already seen."""
    report = fuzz(bug="skip_persist")
    kinds = {v.kind for v in report.violations}
    assert {"fed-unjournaled", "reinvoked-after-fed"} <= kinds, report.summary()
    refound = next(v for v in report.violations if v.kind == "reinvoked-after-fed")
    assert refound.point == "X7" and refound.function == "call(charge)", refound
    assert refound.reinvocations == 1 and refound.key and refound.schedule


def test_crash_fuzz_finds_a_key_reused_across_steps() -> None:
    """Two steps sharing one key: the provider drops the second charge; the user's check says
    so in the very first (crash-free) run."""
    report = fuzz(bug="reuse_key", stop_after=1)
    (violation,) = report.violations
    assert violation.kind == "check" and "not each charge once" in violation.message
    assert report.runs == 1, "found in the crash-free run"


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_crash_fuzz_finds_a_store_without_fencing(store: str, tmp_path: Path) -> None:
    """Without fencing, a worker whose lease was taken over keeps writing: the lease-lost
    schedule (renewals lost mid-step) catches the stale write right after the crash-free run."""
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path / 'runs.db'}"
    report = fuzz(0.12, bug="no_fencing", store=url, stop_after=1)
    assert report.violations, report.summary()
    violation = report.violations[0]
    assert violation.kind == "stale-write", report.summary()
    assert violation.point == "renew" and report.runs <= 3


def test_skip_persist_loses_what_an_activation_held_when_its_lease_is_taken_over() -> None:
    """An entry the early-acking store held for an activation whose lease was then taken over is
    lost, as a crash loses it: the next activation's own writes land. (Were it written with them,
    fenced by its stale epoch, they would fail as a lost lease, and the run would lose its lease
    at every resumption without ever finishing.)"""

    async def scenario() -> None:
        store = EarlyAckStore(cd.MemoryStore())
        await new_run(store)
        first = (await claim(store, lease_ttl=0.0))["r1"].epoch
        await store.append("r1", first, [entry(0, result="1")])  # acknowledged, held
        second = (await claim(store))["r1"].epoch  # the lease expired: a worker takes the run
        assert second > first
        await store.append("r1", second, [entry(0, result="2")])  # the step ran again
        await store.finish("r1", second, cd.RunStatus.COMPLETED, '"done"', None)
        assert [e.result for e in await store.load_journal("r1")] == ["2"]
        run = await store.get_run("r1")
        assert run is not None and run.status == cd.RunStatus.COMPLETED

    anyio.run(scenario)


# -- the state machine ------------------------------------------------------------------------------

MACHINE_BUDGET = int(os.environ.get("CRASHFUZZ_PLANTED_EXAMPLES", "200"))


def hunt(
    bug: str, store: str, backend: str, tmp_path: Path, *, white_box: bool = True
) -> list[str]:
    """Run the state machine with ``bug`` planted until it fails; the violation kinds found."""
    machine = machine_for(store, backend, tmp_path)
    machine.planted = PLANTED[bug]
    machine.found = []
    machine.white_box = white_box
    machine.stats = Stats()
    budget = settings(
        max_examples=MACHINE_BUDGET,
        stateful_step_count=14,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=(Phase.generate,),  # stop at the first failure; shrinking replays are slow
    )
    with pytest.raises(Exception) as failure:
        run_state_machine_as_test(machine, settings=budget)
    assert machine.found, f"the machine failed for another reason: {failure.value}"
    return machine.found


@pytest.mark.timeout(240)
def test_state_machine_finds_skip_persist(tmp_path: Path) -> None:
    """The machine's trace sees the first outcome fed before it was journaled."""
    assert "fed-unjournaled" in hunt("skip_persist", "memory", "asyncio", tmp_path)


@pytest.mark.timeout(240)
def test_state_machine_finds_a_key_reused_across_steps(tmp_path: Path) -> None:
    """The idempotent sink holds a step's effect under another step's key (or drops it)."""
    assert "run" in hunt("reuse_key", "memory", "trio", tmp_path)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("store", "backend"), [("memory", "trio"), ("sqlite", "asyncio")])
def test_state_machine_finds_a_store_without_fencing(
    store: str, backend: str, tmp_path: Path
) -> None:
    """Lost renewals during a slow step: the taken-over worker's writes are accepted."""
    assert "stale-write" in hunt("no_fencing", store, backend, tmp_path)


@pytest.mark.skipif(
    os.environ.get("CRASHFUZZ_PROFILE") != "long",
    reason="probabilistic within the CI budget (needs a crash exactly at X7); long profile only",
)
@pytest.mark.timeout(1200)
def test_state_machine_finds_skip_persist_black_box(tmp_path: Path) -> None:
    """Without its white-box feed check, the machine still finds the bug by its consequence: a
    resumed run invokes a step whose outcome the workflow had already seen."""
    found = hunt("skip_persist", "memory", "asyncio", tmp_path, white_box=False)
    assert {"reinvoked-after-fed", "world"} & set(found)


def test_the_runtime_and_stores_know_no_planted_bug() -> None:
    """The bugs live in the testing kit only: no module outside coro_durable.testing names
    them, so nothing but a test that puts one in place can switch one on."""
    src = Path(cd.__file__).parent
    for path in src.rglob("*.py"):
        if "testing" in path.relative_to(src).parts:
            continue
        text = path.read_text()
        assert not [bug for bug in PLANTED if bug in text], path
