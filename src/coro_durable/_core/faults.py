"""The named fault points (faults.md X1-X11) and the crash a fault injector raises at one.

The runtime passes a named point at every boundary of a step's life, calling
``hooks.fault(AFTER_FEED, run_id, seq)`` on the hooks of its Runtime (``_core.hooks``): every
instrument of that Runtime with a ``fault_point`` hook sees a :class:`~.hooks.FaultPoint` there,
and may raise. With no such instrument the call costs one list check. ``coro_durable.testing``
ships the instrument that raises (``FaultPlan``):

* :class:`SimulatedCrash` (a BaseException) simulates the worker process dying there: the
  activation stops at once and writes nothing more, and its Runtime stops as a crashed process
  would (no lease handed back), so a fresh Runtime must resume the run from the store;
* a ``StoreError`` at ``COMMIT_FAIL`` / ``AFTER_COMMIT`` / ``AFTER_FINISH`` simulates a commit that
  failed, or one that landed while the caller saw an error (the retry must recognise its write).

Each point has a name for code (``AFTER_FEED``) and an id for people and ``Fault`` (``"X7"``, the
ids of faults.md); ``POINTS`` lists the ids in the order of a step's life. ``RENEW`` passes the
worker id as the run id; ``INVOKE`` is an observation point (tests count invocations there).
"""

from __future__ import annotations

__all__ = [
    "AFTER_BODY",
    "AFTER_COMMIT",
    "AFTER_FEED",
    "AFTER_FINISH",
    "AFTER_PENDING",
    "BEFORE_CONSUME",
    "BEFORE_FEED",
    "BEFORE_FINISH",
    "BEFORE_RESULT",
    "BEFORE_STEP",
    "CLAIMED",
    "COMMIT_FAIL",
    "INVOKE",
    "POINTS",
    "RENEW",
    "SimulatedCrash",
]

BEFORE_STEP = "X1"  # before a step (or any effect) starts executing
INVOKE = "invoke"  # the step's body is about to be called, its idempotency key set
AFTER_PENDING = "X2"  # a pending entry (timer due time, signal deadline, failed attempt) written
AFTER_BODY = "X3"  # the body returned (its effect is done), before the runtime saw the result
BEFORE_RESULT = "X4"  # the result is encoded, before its entry is written: done, not journaled
COMMIT_FAIL = "commit.fail"  # a journal commit, before it reaches the store
AFTER_COMMIT = "X5"  # the entry is committed (a StoreError here: its acknowledgement was lost)
BEFORE_FEED = "X6"  # the outcome is journaled, before the workflow is fed (seq: the effect's last)
AFTER_FEED = "X7"  # the workflow was fed, before it issued its next effect (seq: the next one's)
BEFORE_FINISH = "X8"  # before the run's result is committed
AFTER_FINISH = "X9"  # the run's result is committed (a StoreError: its acknowledgement was lost)
CLAIMED = "X10"  # a due run (timer, signal, retry, takeover) was claimed, before it is processed
BEFORE_CONSUME = "X11"  # a signal is stored, before the waiter consumes it
RENEW = "renew"  # before a lease renewal (the run id is then the worker id)

#: Every point's id, in the order of a step's life.
POINTS: tuple[str, ...] = (
    BEFORE_STEP,
    INVOKE,
    AFTER_PENDING,
    AFTER_BODY,
    BEFORE_RESULT,
    COMMIT_FAIL,
    AFTER_COMMIT,
    BEFORE_FEED,
    AFTER_FEED,
    BEFORE_FINISH,
    AFTER_FINISH,
    CLAIMED,
    BEFORE_CONSUME,
    RENEW,
)


class SimulatedCrash(BaseException):
    """Raised by an injector to simulate the worker process crashing at a named point."""

    def __init__(self, point: str, run_id: str, seq: int | None) -> None:
        self.point = point
        self.run_id = run_id
        self.seq = seq
        super().__init__(f"simulated crash at {point} (run {run_id}, seq {seq})")
