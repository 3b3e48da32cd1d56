"""coro_durable.testing: prove that your workflows survive crashes (fault injection, crash fuzz).

The runtime calls a named hook at every boundary of a step's life (the crash points of the
project's fault model, X1 to X11); normally nothing listens and the hooks cost one global lookup.
This module installs listeners that fail there, the way a process dies or a database connection
drops, and checks what exactly-once means afterwards.

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

* :class:`Fault`, :class:`FaultPlan` and :func:`inject` put individual faults where you want them:
  ``with inject(Fault("X4", seq=1)):`` crashes the worker after step 1 ran and before its result
  was journaled; a fresh ``Runtime`` on the same store resumes the run.
* :class:`Trace` and :class:`TracingStore` record the order of claims, journal commits, step
  invocations and feeds across workers, and flag the orders that break the contract: a step
  invoked after its outcome was journaled, a step invoked again after the workflow was fed its
  outcome, an outcome fed before it was journaled, a write accepted from a worker whose lease a
  newer claim had superseded.
* :class:`FakeClock` (a :class:`Clock`) controls time: ``cd.Runtime("memory://", clock=clock)``,
  then ``clock.advance(86400)`` makes a one-day timer due at once; timers, signal timeouts, retry
  backoff and ``cd.now()`` follow it, leases and polls keep real time.
* :func:`corrupt_row` tampers with a stored journal row (its result or meta) through the store's
  ``corrupt_entry`` testing hook (memory, SQLite, PostgreSQL, Redis stores)
  to test that a corrupt journal quarantines the run instead of replaying a wrong value.

The crash points (``POINTS``); a hook passes the run id and the effect's seq where it has one:

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
Runtime resumes the run once the lease expires, so keep ``lease_ttl`` small in tests. Faults are
process-wide: run one fuzz at a time.
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
