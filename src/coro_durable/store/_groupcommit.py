"""Group commit: concurrent writes to one store batched into one transaction (or one script call).

A store that enables it hands each fenced write (``append``, ``park``, ``finish``, ...) to its
:class:`GroupCommit` instead of committing it alone. Writes that arrive while a commit is in
flight queue up; the next commit takes them all (up to ``max_items``) in one transaction, so N
concurrent runs pay one fsync / one round trip instead of N. The rules:

* **No wait for a lone writer.** A write that finds no commit in flight is committed at once. The
  batch leader waits (at most ``max_wait`` seconds) for more writes only when the previous batch,
  finished moments ago, released several callers that said they would write again right away
  (``submit(..., again=True)``: journal appends, whose run's next step follows). A single
  sequential writer (one run, step after step) never waits, even when a claim or a renewal
  happens to share its batch.
* **One writer at a time, FIFO, fair.** The caller whose write heads the queue leads the next
  batch: it calls ``flush`` with the batch, then hands leadership to the new head of the queue
  and returns. No background task is needed, so a store works the same with or without a
  Runtime, under asyncio and trio.
* **Per-item outcomes.** ``flush`` returns one result or exception per item (a fenced-out run's
  ``LeaseLost``, a ``ConflictError``...) and each caller gets its own. If ``flush`` raises (the
  transaction or its commit failed), every caller of the batch gets that error, as each would
  have alone, and the store's callers retry as they would any failed commit.
* **Acknowledged means durable.** Callers resume only after ``flush`` returned, that is after the
  commit returned.
* **Cancellation.** A caller cancelled while its write is still queued removes it (nothing is
  written). Once its write is in a batch being flushed, the caller waits for that commit to
  finish before the cancellation takes effect (a batch's flush is shielded: cancelling one caller
  must not abort the others' writes). A write committed alone behaves exactly as the store's
  single-write path does.

URL parameters, parsed by :func:`parse_option` for every store that supports it::

    group_commit=1|0           on (default) or off: every write commits alone
    group_commit_wait_us=200   the leader's longest wait for more writes, in microseconds
    group_commit_max=256       at most this many writes per transaction
"""

from __future__ import annotations

import copy
import dataclasses
import enum
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

from ..errors import ConfigurationError

__all__ = ["GroupCommit", "GroupCommitOptions", "parse_option", "OPTION_NAMES"]

I = TypeVar("I")  # noqa: E741 (an item handed to flush)
R = TypeVar("R")  # its result

#: The URL query parameters :func:`parse_option` understands.
OPTION_NAMES = ("group_commit", "group_commit_wait_us", "group_commit_max")

#: A previous batch older than this says nothing about who is about to write (seconds).
_STALE = 0.05


@dataclass(frozen=True, slots=True)
class GroupCommitOptions:
    enabled: bool = True
    max_wait: float = 200e-6  # seconds
    max_items: int = 256


def parse_option(
    options: GroupCommitOptions, key: str, value: str, where: str
) -> GroupCommitOptions:
    """``options`` with one URL parameter (one of :data:`OPTION_NAMES`) applied."""
    if key == "group_commit":
        flag = value.strip().lower()
        if flag in ("1", "true", "yes", "on"):
            return dataclasses.replace(options, enabled=True)
        if flag in ("0", "false", "no", "off"):
            return dataclasses.replace(options, enabled=False)
        raise ConfigurationError(f"{where}: group_commit must be 1 (on) or 0 (off), not {value!r}")
    try:
        number = int(value)
    except ValueError:
        number = -1
    if key == "group_commit_wait_us":
        if number < 0 or number > 1_000_000:
            raise ConfigurationError(
                f"{where}: group_commit_wait_us is a whole number of microseconds from 0 to "
                f"1000000, not {value!r}"
            )
        return dataclasses.replace(options, max_wait=number / 1e6)
    if key == "group_commit_max":
        if number < 1:
            raise ConfigurationError(
                f"{where}: group_commit_max is a whole number of writes >= 1, not {value!r}"
            )
        return dataclasses.replace(options, max_items=number)
    raise ConfigurationError(f"{where}: unknown group commit option {key!r}")


def _clone(exc: Exception) -> Exception:
    """A copy of ``exc`` for another caller (so tracebacks do not pile up on one object)."""
    try:
        twin = copy.copy(exc)
    except Exception:
        return exc
    if type(twin) is not type(exc) or twin.args != exc.args:
        return exc
    twin.__cause__ = exc.__cause__
    twin.__traceback__ = None
    return twin


class _State(enum.Enum):
    QUEUED = 1  # waiting in the queue
    LEADER = 2  # promoted: heads the queue and must flush the next batch
    TAKEN = 3  # in a batch being flushed
    DONE = 4  # outcome set


class _Slot(Generic[I, R]):
    __slots__ = ("again", "error", "item", "result", "state", "wake")

    def __init__(self, item: I, again: bool) -> None:
        self.item = item
        self.again = again
        self.state = _State.QUEUED
        self.wake = anyio.Event()
        self.result: R | None = None
        self.error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


Flush = Callable[[Sequence[I]], Awaitable[Sequence["R | BaseException"]]]


class GroupCommit(Generic[I, R]):
    """Batches concurrent :meth:`submit` calls into calls of ``flush(items)``.

    ``flush`` must commit all items in one transaction and return, in order, each item's result
    or the exception its caller gets; or raise, failing every item.
    """

    def __init__(self, flush: Flush[I, R], options: GroupCommitOptions) -> None:
        self._flush = flush
        self.max_items = max(1, options.max_items)
        self.max_wait = max(0.0, options.max_wait)
        self._queue: deque[_Slot[I, R]] = deque()
        self._busy = False  # a leader exists (flushing, waiting, or promoted and waking up)
        self._last_again = 0  # writers of the previous batch likely to write again at once
        self._last_end = 0.0  # anyio.current_time() when it was resolved
        self._enough: anyio.Event | None = None  # set when the waiting leader has its target
        self._target = 0
        #: batches flushed and items in them (diagnostics, tests)
        self.batches = 0
        self.items = 0

    async def submit(self, item: I, *, again: bool = False) -> R:
        """Commit ``item`` with whatever else is queued; its result once the commit returned.

        ``again``: this caller will probably write again right after (a run's journal append:
        its next step follows), which lets the next batch wait briefly for it."""
        if not self._busy and (
            self._last_again <= 1 or anyio.current_time() - self._last_end > _STALE
        ):
            return await self._alone(item, again)
        slot: _Slot[I, R] = _Slot(item, again)
        self._queue.append(slot)
        if self._enough is not None and len(self._queue) >= self._target:
            self._enough.set()
        if self._busy:
            await self._follow(slot)
            if slot.state is _State.DONE:
                return slot.outcome()
        else:
            self._busy = True
            slot.state = _State.LEADER
        await self._lead(slot)
        return slot.outcome()

    async def _alone(self, item: I, again: bool) -> R:
        """Nothing in flight and nobody about to write: commit ``item`` at once, by itself, with
        the single write's own cancellation behaviour (writes arriving meanwhile queue up and
        are handed the lead afterwards)."""
        self._busy = True
        try:
            (outcome,) = await self._flush([item])
        finally:
            self._count(1, int(again))
            self._hand_off()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _follow(self, slot: _Slot[I, R]) -> None:
        """Wait until the slot's batch committed, or until it is promoted to lead."""
        try:
            await slot.wake.wait()
        except BaseException:
            if slot.state is _State.QUEUED:
                self._queue.remove(slot)  # never written
            elif slot.state is _State.LEADER:
                self._queue.remove(slot)
                self._hand_off()
            elif slot.state is _State.TAKEN:
                with anyio.CancelScope(shield=True):  # its commit is under way: see it through
                    await slot.wake.wait()
            raise

    async def _lead(self, slot: _Slot[I, R]) -> None:
        """Flush one batch (headed by ``slot``), then pass the lead on."""
        try:
            with anyio.CancelScope(shield=True):
                await self._gather()
                size = min(len(self._queue), self.max_items)
                batch = [self._queue.popleft() for _ in range(size)]
                for member in batch:
                    member.state = _State.TAKEN
                try:
                    outcomes = await self._flush([member.item for member in batch])
                    if len(outcomes) != len(batch):
                        raise RuntimeError(
                            f"group commit: flush returned {len(outcomes)} outcomes for "
                            f"{len(batch)} items"
                        )
                except Exception as exc:  # the transaction failed: every item fails with it
                    for member in batch:
                        member.error = exc if member is slot else _clone(exc)
                    self._resolve(batch)
                    return
                except BaseException as exc:
                    for member in batch:
                        member.error = exc
                    self._resolve(batch)
                    raise
                for member, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        member.error = outcome
                    else:
                        member.result = outcome
                self._resolve(batch)
        finally:
            self._hand_off()

    async def _gather(self) -> None:
        """Wait (bounded) for more writes when the last batch says others are about to write.

        The ``again`` callers the previous batch just released are likely to write again at once
        (a run's next step). First yield once, so those already runnable queue their writes;
        then, if fewer than that many are queued, wait for them up to ``max_wait``.
        """
        if self._last_again <= 1 or anyio.current_time() - self._last_end > _STALE:
            return  # nobody else was writing lately: commit at once
        target = min(self.max_items, self._last_again)
        if len(self._queue) >= target:
            return
        await anyio.lowlevel.checkpoint()
        if len(self._queue) >= target or self.max_wait <= 0:
            return
        self._target = target
        self._enough = anyio.Event()
        try:
            with anyio.move_on_after(self.max_wait):
                await self._enough.wait()
        finally:
            self._enough = None

    def _count(self, size: int, again: int) -> None:
        self.batches += 1
        self.items += size
        self._last_again = again
        self._last_end = anyio.current_time()

    def _resolve(self, batch: list[_Slot[I, R]]) -> None:
        self._count(len(batch), sum(member.again for member in batch))
        for member in batch:
            member.state = _State.DONE
            member.wake.set()

    def _hand_off(self) -> None:
        """Promote the head of the queue to lead the next batch, or go idle."""
        if self._queue:
            head = self._queue[0]
            head.state = _State.LEADER
            head.wake.set()
        else:
            self._busy = False
