"""WorkerLog: the instrument that logs each event of a run once, on ``coro_durable.runtime``.

Every Runtime has one, first among its instruments: a worker's log says when it claimed a run
(and where it resumes), parked it (on what, until when), handed it back, finished it (with the
error), saw its activation crash or quarantined it (with how to resume it), and lost its lease.
``coro-durable worker`` prints these lines. Worker-wide conditions (a store that keeps failing,
renewals falling behind, a shutdown) are logged where they are handled, not here.
"""

from __future__ import annotations

import datetime as _dt
import logging

from .._core.hooks import (
    Instrument,
    RunClaimed,
    RunCrashed,
    RunFinished,
    RunHandedBack,
    RunLeaseLost,
    RunParked,
    RunQuarantined,
)

__all__ = ["WorkerLog"]

log = logging.getLogger("coro_durable.runtime")

_RESUME = "after fixing that, `coro-durable resume %s` (or rt.resume) releases it"


class WorkerLog(Instrument):
    """Logs each event of a run once (info; warnings and errors for lost leases and crashes)."""

    def run_claimed(self, event: RunClaimed) -> None:
        log.info(
            "worker %s: claimed run %s (%s, fencing token %d%s)",
            event.worker_id,
            event.run_id,
            event.workflow,
            event.epoch,
            f", resuming at step {event.steps}" if event.steps else "",
        )

    def run_parked(self, event: RunParked) -> None:
        until = ""
        if event.wake_at is not None:
            due = _dt.datetime.fromtimestamp(event.wake_at, _dt.UTC)
            until = f" until {due:%Y-%m-%d %H:%M:%SZ}"
        detail = f", waiting on {event.waiting_on}{until}"
        log.info("worker %s: run %s parked%s", event.worker_id, event.run_id, detail)

    def run_handed_back(self, event: RunHandedBack) -> None:
        how = (
            "after its steps in flight were journaled (shutting down: another worker resumes it "
            "now)"
            if event.drained
            else "(lease released: another worker resumes it now)"
        )
        log.info("worker %s: run %s handed back %s", event.worker_id, event.run_id, how)

    def run_finished(self, event: RunFinished) -> None:
        detail = f": {' '.join(event.error.split())[:300]}" if event.error else ""
        log.info("worker %s: run %s %s%s", event.worker_id, event.run_id, event.status, detail)

    def run_crashed(self, event: RunCrashed) -> None:
        count = ""
        if event.crash_count is not None:
            count = f"crash {event.crash_count} in a row, quarantined at {event.max_crashes}; "
        log.error(
            "worker %s: run %s crashed its activation (%sretried with backoff)",
            event.worker_id,
            event.run_id,
            count,
            exc_info=event.exception,
        )

    def run_quarantined(self, event: RunQuarantined) -> None:
        exc = event.exception
        if event.crash_count is None:  # at once: its code, journal or workflow is the problem
            log.error(
                "worker %s: run %s quarantined: %s; " + _RESUME,
                event.worker_id,
                event.run_id,
                exc,
                event.run_id,
            )
            return
        log.error(
            "worker %s: run %s quarantined after %d crashes in a row without progress, the last "
            "one: %s: %s; " + _RESUME,
            event.worker_id,
            event.run_id,
            event.crash_count,
            type(exc).__name__,
            exc,
            event.run_id,
            exc_info=exc,
        )

    def run_lease_lost(self, event: RunLeaseLost) -> None:
        if event.detected == "write":
            log.warning("worker %s: %s", event.worker_id, event.error)
            return
        if event.detected == "reclaim":
            log.warning(
                "worker %s: lease on run %s (fencing token %d) was lost: it expired before this "
                "worker renewed it, and the worker claimed the run again (fencing token %s); the "
                "older activation stops, its steps in flight run again under the same idempotency "
                "keys",
                event.worker_id,
                event.run_id,
                event.epoch,
                event.reclaimed_epoch,
            )
            return
        log.warning(
            "worker %s: lease on run %s (fencing token %d) was lost, another worker owns it now; "
            "stopping this activation, it writes nothing more",
            event.worker_id,
            event.run_id,
            event.epoch,
        )
