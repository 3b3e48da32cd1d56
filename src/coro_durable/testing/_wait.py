"""wait_for_status: wait until a run reaches one of some statuses, as tests often must."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import anyio

from ..errors import ConfigurationError, ResultTimeoutError
from ..journal import RunStatus
from ..runtime import RunInfo, Runtime

__all__ = ["wait_for_status"]

#: The longest pause between two looks at the run; a store notification ends a pause early.
MAX_POLL = 0.1


class _Describes(Protocol):
    """What ``wait_for_status`` needs of a runtime: ``describe`` (every ``RuntimeClient`` has it)."""

    async def describe(self, run_id: str) -> RunInfo: ...


async def wait_for_status(
    rt: _Describes, run_id: str, *statuses: RunStatus | str, timeout: float = 10.0
) -> RunInfo:
    """Wait until ``rt.describe(run_id)`` reports one of ``statuses``; return that RunInfo.

    ``rt`` is an embedded ``Runtime`` or any ``cd.RuntimeClient``. On a ``Runtime`` the wait
    wakes when its store reports a change (a lease released, a signal or cancel arrived, ...)
    and looks again at least every 0.1 s for the changes a store does not report (a claim);
    elsewhere it polls. Raises ``ResultTimeoutError`` (a ``TimeoutError``) naming the run, the
    statuses wanted and the last one seen when ``timeout`` seconds pass first, and
    ``RunNotFoundError`` for an unknown run::

        info = await wait_for_status(rt, "r-42", "waiting")
        info = await wait_for_status(rt, "r-42", cd.RunStatus.COMPLETED, cd.RunStatus.FAILED)
    """
    wanted = _statuses(statuses)
    changed = anyio.Event()

    def on_change() -> None:
        try:
            changed.set()
        except RuntimeError:  # the store is shared with a Runtime on a loop that has ended
            pass

    unsubscribe: Callable[[], None] | None = None
    if isinstance(rt, Runtime):
        unsubscribe = rt.store.subscribe(on_change)
    try:
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            changed = anyio.Event()  # before the look: a change while we look is not missed
            info = await rt.describe(run_id)
            if info.status in wanted:
                return info
            left = deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeoutError(run_id, _timeout_message(info, wanted, timeout))
            with anyio.move_on_after(min(pause, left)):
                await changed.wait()
            pause = min(pause * 2, MAX_POLL)
    finally:
        if unsubscribe is not None:
            unsubscribe()


def _statuses(statuses: tuple[RunStatus | str, ...]) -> frozenset[RunStatus]:
    known = ", ".join(s.value for s in RunStatus)
    if not statuses:
        raise ConfigurationError(f"wait_for_status needs at least one status to wait for: {known}")
    wanted = set()
    for status in statuses:
        try:
            wanted.add(RunStatus(status))
        except ValueError:
            raise ConfigurationError(
                f"wait_for_status got {status!r}, which is not a run status; use one of {known}"
            ) from None
    return frozenset(wanted)


def _timeout_message(info: RunInfo, wanted: frozenset[RunStatus], timeout: float) -> str:
    names = " or ".join(sorted(s.value for s in wanted))
    seen = f"{info.status} at step {info.step}"
    if info.waiting_on:
        seen += f", waiting on {info.waiting_on}"
    if info.error:
        seen += f", error {info.error.get('type')}: {info.error.get('message')}"
    elif info.status == RunStatus.QUARANTINED and info.last_error:
        seen += f", last error {info.last_error}"
    if info.note:
        seen += f" ({info.note})"
    return (
        f"run {info.run_id!r} did not become {names} within {timeout}s: last seen {seen}; "
        "wait longer, or check that a worker serves its workflow and that it can get there"
    )
