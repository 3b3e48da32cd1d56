"""The replayer: re-execute a run's journal against today's code with no side effects and report the
first divergence (``coro-durable replay``, ``Runtime.replay``). It executes nothing and writes
nothing: it drives an ``Activation`` in ``replay_only`` mode.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ..errors import NonDeterminismError
from ..journal._records import TERMINAL, JournalEntry, RunRecord, RunStatus
from ..store._protocol import Store
from ._activation import Activation, Limits, ReplayEnd

__all__ = ["ReplayReport", "replay"]


@dataclass(slots=True)
class ReplayReport:
    """What ``replay`` found: ``matched`` is False at the first divergence, described in ``detail``."""

    run_id: str
    matched: bool
    replayed: int  # journal entries the code re-issued identically
    total: int  # entries in the journal
    detail: str


async def replay(
    store: Store,
    run: RunRecord,
    journal: dict[int, JournalEntry],
    fn: Callable[..., Coroutine[Any, Any, Any]],
) -> ReplayReport:
    """Re-execute ``fn`` against ``run``'s journal with no side effects; report the first divergence."""
    activation = Activation(store, run, journal, fn, Limits(), replay_only=True)
    total = sum(1 for seq in journal if seq >= 0)  # audit notes (seq < 0) are not effects
    try:
        end = await activation.execute()
    except NonDeterminismError as exc:
        return ReplayReport(run.run_id, False, exc.seq, total, str(exc))
    except ReplayEnd as stop:
        if stop.seq in journal and not journal[stop.seq].final:
            detail = f"matched; the run is waiting at seq {stop.seq} on {stop.effect}"
        elif not any(seq >= stop.seq for seq in journal) and run.status not in (
            RunStatus.COMPLETED,
            RunStatus.FAILED,
        ):
            detail = f"matched; the journal ends at seq {stop.seq}, next effect {stop.effect}"
        else:
            return ReplayReport(
                run.run_id,
                False,
                stop.seq,
                total,
                f"diverged at seq {stop.seq}: the code issued {stop.effect} after the recorded end",
            )
        return ReplayReport(run.run_id, True, stop.seq, total, detail)
    if run.status in TERMINAL and end.how != run.status.value:
        return ReplayReport(
            run.run_id,
            False,
            total,
            total,
            f"the code ended {end.how} but the run's recorded status is {run.status}",
        )
    return ReplayReport(run.run_id, True, total, total, f"matched all {total} entries; {end.how}")
