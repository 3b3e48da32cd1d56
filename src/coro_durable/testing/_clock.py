"""FakeClock: a clock whose time moves only when a test moves it."""

from __future__ import annotations

import datetime as _dt
import math
import threading
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel

from .._core.clock import Clock
from ..errors import ConfigurationError

__all__ = ["FakeClock"]


class FakeClock(Clock):
    """A clock for tests: a one-day ``cd.sleep`` is a call to ``advance``, not a day.

        clock = FakeClock()
        async with cd.Runtime("memory://", clock=clock) as rt:
            handle = await rt.start(reminder)                  # awaits cd.sleep(86400)
            await wait_for_status(rt, handle.run_id, cd.RunStatus.WAITING)
            clock.advance(86400)                               # the timer is due now
            await handle.result(timeout=5)

    Everything the runtime measures in workflow time follows it: durable timers, signal
    timeouts, retry backoff, ``cd.now()``, journal and run timestamps, and the in-process waits
    shorter than ``inline_wait``. Infrastructure keeps real time: polls, lease renewals and
    expiry (a jump never takes a run from its live worker), heartbeat timeouts and
    ``result(timeout=...)``. The stores that keep time by the process's clock (memory, SQLite)
    take it; Postgres and Redis keep time by their server, so a Runtime on them refuses it.

    ``start`` is the initial time (seconds since the epoch or an aware datetime; default: now).
    Call ``advance`` from the event loop's thread: it wakes the sleepers that became due and
    tells the runtimes on this clock to look for due runs at once.
    """

    def __init__(self, start: float | _dt.datetime | None = None) -> None:
        if isinstance(start, _dt.datetime):
            if start.tzinfo is None:
                raise ConfigurationError(
                    "FakeClock(start=...) needs an aware datetime (e.g. tzinfo=datetime.UTC)"
                )
            start = start.timestamp()
        self._now = float(start) if start is not None else time.time()
        self._lock = threading.Lock()  # time() is read from step threads too
        self._sleepers: list[tuple[float, anyio.Event]] = []
        self._jump_callbacks: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        at = _dt.datetime.fromtimestamp(self._now, _dt.UTC)
        return f"FakeClock({at:%Y-%m-%d %H:%M:%S.%f}Z)"

    def time(self) -> float:
        with self._lock:
            return self._now

    async def sleep(self, seconds: float) -> None:
        if not seconds > 0:
            await anyio.lowlevel.checkpoint()
            return
        with self._lock:
            sleeper = (self._now + seconds, anyio.Event())
            self._sleepers.append(sleeper)
        try:
            await sleeper[1].wait()
        finally:
            with self._lock:
                if sleeper in self._sleepers:
                    self._sleepers.remove(sleeper)

    def on_jump(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._jump_callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._jump_callbacks:
                self._jump_callbacks.remove(callback)

        return unsubscribe

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds``: sleepers due by then wake up, and runs whose
        timers became due are claimed at once by the workers on this clock."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ConfigurationError(
                f"FakeClock.advance takes a number of seconds >= 0 (time runs forward), "
                f"got {seconds!r}"
            )
        with self._lock:
            self._now += seconds
            due = [s for s in self._sleepers if s[0] <= self._now]
            for sleeper in due:
                self._sleepers.remove(sleeper)
        for _, event in due:
            event.set()
        for callback in list(self._jump_callbacks):
            callback()

    def advance_to(self, when: float | _dt.datetime) -> None:
        """Move the time forward to ``when`` (seconds since the epoch or an aware datetime)."""
        target = when.timestamp() if isinstance(when, _dt.datetime) else float(when)
        if target < self.time():
            raise ConfigurationError(
                f"FakeClock.advance_to({when!r}) is in the past of {self!r}; time runs forward"
            )
        self.advance(target - self.time())
