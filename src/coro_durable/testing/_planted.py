"""Planted bugs: broken pieces put around a correct runtime, to prove a checker finds them.

A fuzzer that cannot find a planted bug proves nothing, so our tests plant each of these and
require :func:`~coro_durable.testing.crash_fuzz` and the crash-fuzz state machine to find it. None
of them touches the runtime or a store: each is a store wrapper or an instrument put in by the
test, the way a real bug in a store, a driver or a database setting would sit.

* ``skip_persist``, :class:`EarlyAckStore`: a step's result entry is acknowledged before it is
  written and lands with the activation's next write, so the workflow is fed an outcome a crash
  or a lost lease loses (persist before proceed broken; what ``synchronous_commit=off`` does to
  acknowledged commits).
  It must sit above the trace's store wrapper, where the runtime's writes arrive.
* ``no_fencing``, :class:`UnfencedStore`: every fenced write is sent with the run's current
  fencing token, so a worker whose lease was taken over keeps writing. It must sit beneath the
  trace's wrapper, which judges the token the worker used.
* ``reuse_key``, :class:`ReusedKeys`: an instrument that gives every step calling one function
  the same idempotency key (``<run_id>:<function>``) in place of ``<run_id>:<seq>``.

:data:`PLANTED` says how to put each one into a worker (:class:`Planted`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .._core.hooks import Instrument, StepStarted
from .._core.waits import Wait
from ..journal._records import JournalEntry, RunRecord, RunStatus
from ..store._protocol import Store, StoreWrapper
from ..workflow._effects import _current_key

__all__ = ["PLANTED", "EarlyAckStore", "Planted", "ReusedKeys", "UnfencedStore"]


class EarlyAckStore(StoreWrapper):
    """Acknowledges a step's final result entry at once and writes it with the activation's next
    write (an append, a signal taken, a park or a finish) from this store object, fenced by the
    same epoch. An activation that ends meanwhile loses it: its worker died, or its lease was lost
    or taken over (a later epoch's write drops it, as a crash would have). Either way the workflow
    was fed a result that was never journaled."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self._held: defaultdict[str, list[tuple[int, JournalEntry]]] = defaultdict(list)

    async def _flush(self, run_id: str, epoch: int) -> None:
        # Entries held under an earlier epoch belong to an activation that ended before its next
        # write: they are lost. Written now, fenced by their stale epoch, they would fail this
        # write with LeaseLost: the current activation would stop as if it had lost its lease,
        # and its run would wait for the lease to expire (over and over, a run never finishing).
        held = self._held[run_id]
        self._held[run_id] = [(e, entry) for e, entry in held if e > epoch]
        for e, entry in held:
            if e == epoch:
                await self.inner.append(run_id, epoch, [entry])

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        await self._flush(run_id, epoch)
        if len(entries) == 1 and entries[0].kind == "call" and entries[0].final:
            self._held[run_id].append((epoch, entries[0]))
            return
        await self.inner.append(run_id, epoch, entries)

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        await self._flush(run_id, epoch)
        return await self.inner.consume_signal(run_id, epoch, name, entry)

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        await self._flush(run_id, epoch)
        await self.inner.park(run_id, epoch, wake_at, waits)

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        await self._flush(run_id, epoch)
        await self.inner.finish(run_id, epoch, status, result, error)


class UnfencedStore(StoreWrapper):
    """Sends every fenced write of a running run with the run's current fencing token instead
    of the writer's: the store accepts writes from a worker whose lease another one took over."""

    async def _current(self, run_id: str, epoch: int) -> int:
        run: RunRecord | None = await self.inner.get_run(run_id)
        return run.epoch if run is not None and run.status == RunStatus.RUNNING else epoch

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        await self.inner.append(run_id, await self._current(run_id, epoch), entries)

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        epoch = await self._current(run_id, epoch)
        return await self.inner.consume_signal(run_id, epoch, name, entry)

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        await self.inner.park(run_id, await self._current(run_id, epoch), wake_at, waits)

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        epoch = await self._current(run_id, epoch)
        await self.inner.finish(run_id, epoch, status, result, error)


class ReusedKeys(Instrument):
    """Every step of a run calling one function sees one idempotency key, ``<run_id>:<name>``.

    The hook runs in the step's task just before its body is called, with the step's key set
    in the context the body reads it from (a sync step's thread copies that context)."""

    def step_started(self, event: StepStarted) -> None:
        _current_key.set(f"{event.run_id}:{event.name}")


def _same(store: Store) -> Store:
    return store


@dataclass(frozen=True, slots=True)
class Planted:
    """How to put one planted bug into a worker: ``beneath`` wraps its store under the trace's
    wrapper, ``above`` over it, and ``instruments()`` are added to its Runtime."""

    beneath: Callable[[Store], Store] = _same
    above: Callable[[Store], Store] = _same
    instruments: Callable[[], list[Instrument]] = field(default=list)


#: The planted bugs by name.
PLANTED: dict[str, Planted] = {
    "skip_persist": Planted(above=EarlyAckStore),
    "no_fencing": Planted(beneath=UnfencedStore),
    "reuse_key": Planted(instruments=lambda: [ReusedKeys()]),
}
