"""coro_durable.testing: prove that your workflows survive crashes and your store keeps the rules.

The runtime passes a named fault point at every boundary of a step's life (the crash points of
the project's fault model, X1 to X11) to the instruments of its Runtime (``coro_durable.Instrument``,
hook ``fault_point``); with none listening that costs one list check. This module's instruments
fail there, the way a process dies or a database connection drops, and check what exactly-once
means afterwards. They belong to the Runtimes they are given to, so two fuzzes (or a fuzzed and a
healthy Runtime) can run in one process at once.

* :func:`crash_fuzz` (and :func:`crash_fuzz_async`) runs your workflow once with no faults, then
  once per crash point per effect, then random multi-crash schedules, restarting a fresh worker
  after every crash. It calls your ``setup()`` before each run and ``check(result)`` after it, and
  returns a :class:`CrashFuzzReport`; a broken promise becomes a :class:`Violation` in the report
  (never an exception)::

      from coro_durable.testing import crash_fuzz

      def test_checkout_survives_crashes():
          report = crash_fuzz(checkout, "order-1", setup=payments.reset,
                              check=lambda result: payments.assert_charged_once("order-1"))
          assert report.ok, report.summary()

* :class:`Fault`, :class:`FaultPlan` and :func:`inject` put individual faults where you want them.
  A plan is an instrument: ``Runtime(url, instruments=[FaultPlan(Fault("X4", seq=1))])`` crashes
  that worker after step 1 ran and before its result was journaled; a fresh ``Runtime`` on the
  same store resumes the run. ``with inject(Fault("X4", seq=1)):`` gives the plan to every
  Runtime created in the block instead.
* :class:`Trace` (an instrument on every worker) and :class:`TracingStore` (their stores) record
  the order of claims, journal commits, step invocations and feeds across workers, and flag the
  orders that break the contract: a step invoked after its outcome was journaled, a step invoked
  again after the workflow was fed its outcome, an outcome fed before it was journaled, a write
  accepted from a worker whose lease a newer claim had superseded.
* :class:`FakeClock` (a :class:`Clock`) controls time: ``cd.Runtime("memory://", clock=clock)``,
  then ``clock.advance(86400)`` makes a one-day timer due at once; timers, signal timeouts, retry
  backoff and ``cd.now()`` follow it, leases and polls keep real time.
* :func:`corrupt_row` tampers with a stored journal row (its result or meta) through the store's
  ``corrupt_entry`` testing hook (memory, SQLite, PostgreSQL, Redis stores)
  to test that a corrupt journal quarantines the run instead of replaying a wrong value.
* :func:`wait_for_status` waits until a run reaches one of some statuses (woken by the store's
  change notifications on an embedded ``Runtime``, polling any other ``cd.RuntimeClient``) and
  returns its ``RunInfo``; on timeout a ``ResultTimeoutError`` names the run, the statuses wanted
  and the last one seen::

      await rt.start(approval_flow, run_id="r-1")
      info = await wait_for_status(rt, "r-1", "waiting")   # parked on its signal now
* ``coro_durable.testing.conformance`` (imported on its own: it needs pytest and Hypothesis) is
  the store conformance suite for a third-party store: subclass ``StoreConformance`` in your
  tests and define ``make_store``; every rule of the store protocol, and a Hypothesis comparison
  with ``MemoryStore``, runs on your store under asyncio and trio.

The crash points (``POINTS``; the runtime's code names them, e.g. ``AFTER_FEED`` for X7, in
``coro_durable._core.faults``); a point passes the run id and the effect's seq where it has one:

============ ==============================================================================
X1           before a step (or any effect) starts executing
invoke       the step's body is about to be called, its idempotency key set (observation)
X2           after a pending entry (timer due time, signal deadline, failed attempt) was written
X3           the step's body returned (its external effect is done), before the runtime saw it
X4           the result is encoded, before its journal entry is written ("done, not journaled")
commit.fail  a journal commit fails before it reaches the store (a ``StoreError``)
X5           the journal entry was committed but its acknowledgement was lost (a ``StoreError``)
X6           the outcome is journaled, before the workflow is fed (seq: the effect's last)
X7           the workflow was fed, before it issued its next effect (seq: the next effect's)
X8           before the run's result is committed
X9           the run's result was committed, its acknowledgement lost (a ``StoreError``)
X10          a due run (timer, signal, retry, takeover) was claimed, before it is processed
X11          a signal is stored, before the waiter consumes it
X12          a signal delivered twice (client side; :func:`crash_fuzz` re-sends every signal)
renew        a lease renewal is lost (a ``StoreError``; the run id is the worker id)
============ ==============================================================================

A crash fault raises :class:`~coro_durable._core.faults.SimulatedCrash`: that Runtime's worker stops
as a killed process would (nothing more is written, its lease is not handed back; the code around
its ``async with`` keeps running, sees ``rt._crashed`` set, and should close it), and a fresh
Runtime resumes the run once the lease expires, so keep ``lease_ttl`` small in tests.

Planted bugs (``coro_durable.testing._planted``: a store that acknowledges before it writes, a
store without fencing, an instrument that reuses idempotency keys) are how our own tests prove
that the fuzzer finds what it claims to; nothing in the runtime or the stores knows of them.

May import: ``coro_durable.errors``, ``_core``, ``workflow``, ``journal``, ``store`` and
``runtime``; never the engine SPI or the CLI. Only ``conformance`` needs pytest and Hypothesis.
"""

from __future__ import annotations

import sys

from .._core.clock import Clock
from .._core.faults import SimulatedCrash
from ._clock import FakeClock
from ._corrupt import corrupt_row
from ._faults import CRASH_POINTS, ERROR_POINTS, POINTS, Fault, FaultPlan, Fired, inject, no_faults
from ._fuzz import CrashFuzzReport, crash_fuzz, crash_fuzz_async
from ._trace import Invocation, Trace, TracingStore, Violation
from ._wait import wait_for_status

__all__ = [
    "POINTS",
    "CRASH_POINTS",
    "ERROR_POINTS",
    "Fault",
    "Fired",
    "FaultPlan",
    "inject",
    "no_faults",
    "Trace",
    "TracingStore",
    "Invocation",
    "corrupt_row",
    "wait_for_status",
    "crash_fuzz",
    "crash_fuzz_async",
    "CrashFuzzReport",
    "Violation",
    "SimulatedCrash",
    "Clock",
    "FakeClock",
]

if (
    "pytest" in sys.modules
):  # `pytest_plugins = ["coro_durable.testing"]` gives a crash_fuzzer fixture
    from ._fuzz import crash_fuzzer as crash_fuzzer
