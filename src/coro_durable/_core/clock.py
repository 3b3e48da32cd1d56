"""The clock: the one source of the time a workflow's durable waits are measured in.

``Clock`` is the system clock. The runtime reads every time that ends up in a journal, a timer or
a retry's due time from ``clock.time()`` (timers, signal timeouts, retry backoff, ``cd.now()``,
journal timestamps), and waits for a due time with ``clock.sleep``; stores that keep time by
the process's clock (memory, SQLite) read ``clock.time()`` too when they decide which runs are
due and whose lease expired. ``coro_durable.testing.FakeClock`` replaces it in tests: its time
moves only when the test advances it, so a one-day timer is a call, not a day.

What the clock does not measure: the infrastructure's own pacing (poll intervals, lease renewal
ticks, store retry backoff, ``result(timeout=...)`` and heartbeat timeouts) stays on real time;
those are about live processes, not about the workflow's time.

May import: nothing from coro_durable (anyio only).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock"]


class Clock:
    """The system clock (``time.time()``, ``anyio.sleep``). Subclass it to control time."""

    def time(self) -> float:
        """Now, in seconds since the epoch (UTC), as ``time.time()``."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` of this clock's time have passed."""
        await anyio.sleep(seconds)

    def on_jump(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever the time jumps forward (a fake clock advanced), so a worker
        looks for runs that became due at once instead of at its next poll. Returns a function
        that unsubscribes. The system clock never jumps."""
        del callback
        return _nothing

    def __repr__(self) -> str:
        return "Clock()"


def _nothing() -> None:
    pass


class _SystemClock(Clock):
    """The system clock itself. Its ``time`` is ``time.time`` on the instance: the runtime and
    the stores read it several times per step, and this saves a Python call each time."""

    def __init__(self) -> None:
        self.__dict__["time"] = time.time


SYSTEM_CLOCK: Clock = _SystemClock()
