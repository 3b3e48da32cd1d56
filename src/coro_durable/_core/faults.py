"""Named fault-injection points (faults.md X1-X11), free when no injector is installed.

The scheduler and the runtime call :func:`fault` at each named point of a step's life. Normally
``_injector`` is None and the call costs one global lookup. ``coro_durable.testing`` installs an
injector that may raise at a point:

* :class:`SimulatedCrash` (a BaseException) simulates the worker process dying there: the
  activation stops at once and writes nothing more, and its Runtime stops as a crashed process
  would (no lease handed back), so a fresh Runtime must resume the run from the store;
* a ``StoreError`` at ``commit.fail`` / ``X5`` / ``X9`` simulates a commit that failed, or one that
  landed while the caller saw an error (the retry must recognise its own write).

Points: X1 before a step runs, X2 after a pending (intent/backoff/deadline) entry is written,
X3 after the step body returned (its effect is done) before the scheduler saw the result, X4 after
the result was encoded before its entry is written, commit.fail before an append, X5 after an
append (acknowledgement lost), X6 after an outcome is journaled before it is fed, X7 after feeding
before the next effect, X8 before the run's result is committed, X9 after it (acknowledgement
lost), X10 after a run is claimed before it is processed, X11 before a delivered signal is
consumed, renew before a lease renewal (``run_id`` is then the worker id), and ``invoke`` just
before a step's body is called, with its idempotency key set (an observation point: tests count
invocations there).

``PLANTED`` holds the names of deliberately planted bugs, for the tests that prove the crash fuzzer
finds them; it is empty outside those tests. Never put anything in it in production code.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["SimulatedCrash", "fault", "set_injector"]


class SimulatedCrash(BaseException):
    """Raised by an injector to simulate the worker process crashing at a named point."""

    def __init__(self, point: str, run_id: str, seq: int | None) -> None:
        self.point = point
        self.run_id = run_id
        self.seq = seq
        super().__init__(f"simulated crash at {point} (run {run_id}, seq {seq})")


Injector = Callable[[str, str, "int | None"], None]

_injector: Injector | None = None

#: Planted bugs switched on (tests only): "skip_persist" (a step's outcome is fed to the workflow
#: before it is journaled), "no_fencing" (memory/SQLite stores ignore the epoch of a write),
#: "reuse_key" (steps calling the same function see the same idempotency key).
PLANTED: set[str] = set()


def fault(point: str, run_id: str, seq: int | None = None) -> None:
    """Give the installed injector (if any) the chance to fail at ``point``."""
    if _injector is not None:
        _injector(point, run_id, seq)


def set_injector(injector: Injector | None) -> Injector | None:
    """Install (or remove, with None) the process-wide injector; returns the previous one."""
    global _injector
    previous, _injector = _injector, injector
    return previous
