"""The client side of a runtime: ``RuntimeClient``, the operations every runtime offers (the
embedded ``Runtime`` and each engine adapter's runtime), the handle ``start`` returns, and the
views clients read (``RunInfo``, ``ExecutingStep``, ``WorkerInfo``).

A program written against ``RuntimeClient`` runs unchanged on ``cd.Runtime("sqlite:///...")``
and on ``cd.Runtime("temporal://...")``: the methods mean the same everywhere. An engine that
cannot offer one (Temporal has no coro_durable journal to return from ``history``) raises a
ConfigurationError saying what to use instead.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._core import codec
from .._core.waits import Wait, WaitKind
from ..journal._records import JournalEntry, RunRecord, RunStatus, WorkerRecord
from ._activation import _progress
from ._replayer import ReplayReport

__all__ = ["ExecutingStep", "RunHandle", "RunInfo", "RuntimeClient", "WorkerInfo"]


class RuntimeClient(Protocol):
    """The operations on runs that every runtime offers, embedded or engine (see the module)."""

    async def start(
        self,
        workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
        *args: Any,
        run_id: str | None = None,
        allow_unknown: bool = False,
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> RunHandle: ...

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> bool: ...

    async def result(self, run_id: str, timeout: float | None = None) -> Any: ...

    async def describe(self, run_id: str) -> RunInfo: ...

    async def history(self, run_id: str) -> list[JournalEntry]: ...

    async def cancel(self, run_id: str) -> None: ...

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        workflow: str | None = None,
        tags: Mapping[str, str] | None = None,
        waiting_for: WaitKind | str | None = None,
        wait_name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]: ...

    async def replay(self, run_id: str) -> ReplayReport: ...

    async def resume(self, run_id: str) -> RunInfo: ...

    async def retry(self, run_id: str, *, by: str | None = None) -> RunInfo: ...

    async def workers(self) -> list[WorkerInfo]: ...


def _ts(value: float | None) -> _dt.datetime | None:
    return None if value is None else _dt.datetime.fromtimestamp(value, _dt.UTC)


@dataclass(frozen=True, slots=True)
class ExecutingStep:
    """A step attempt running now, as the store knows it (``RunInfo.executing``).

    Written by the worker within about half a second of the attempt's start and on heartbeats,
    so a step that finishes faster is never seen here."""

    seq: int
    name: str
    attempt: int
    started_at: _dt.datetime | None  # when this attempt began
    heartbeat_at: _dt.datetime | None  # the last cd.heartbeat(), None if it never beat
    worker: str
    details: Any  # the details of the last heartbeat


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What ``describe`` answers, from the store alone (any process can ask)."""

    run_id: str
    workflow: str
    status: RunStatus
    step: int  # journal entries so far: the seq the run is at
    waiting_on: str | None
    inputs: dict[str, Any]  # {"args": [...], "kwargs": {...}}
    result: Any
    error: dict[str, str] | None  # {"type", "message"} when failed or cancelled (the stored
    # error also says which entries a retry reopens: "reopen" and "after", see Runtime.retry)
    crash_count: int
    last_error: str | None
    owner: str | None  # worker holding the lease, if running
    wake_at: _dt.datetime | None
    created_at: _dt.datetime | None
    updated_at: _dt.datetime | None
    executing: tuple[ExecutingStep, ...] = ()  # steps in flight, when running
    # Why a runnable run does not move, from describe() only: no live worker serves its workflow.
    note: str | None = None
    waits: tuple[Wait, ...] = ()  # what a waiting run waits for (waiting_on says it in words)
    tags: dict[str, str] = field(default_factory=dict)  # set when it was started

    @classmethod
    def from_record(
        cls, run: RunRecord, journal: Iterable[JournalEntry] = (), note: str | None = None
    ) -> RunInfo:
        inputs = codec.decode(run.input)
        executing: list[ExecutingStep] = []
        if run.status == RunStatus.RUNNING:
            for entry in journal:
                progress = _progress(entry)
                if "attempt" in progress:
                    executing.append(
                        ExecutingStep(
                            seq=entry.seq,
                            name=entry.name,
                            attempt=int(progress["attempt"]),
                            started_at=_ts(progress.get("attempt_started_at")),
                            heartbeat_at=_ts(progress.get("heartbeat_at")),
                            worker=str(progress.get("worker") or run.owner or ""),
                            details=progress.get("details"),
                        )
                    )
        return cls(
            run_id=run.run_id,
            workflow=run.workflow,
            status=run.status,
            step=run.steps,
            waiting_on=run.waiting_on if run.status == RunStatus.WAITING else None,
            waits=run.waits if run.status == RunStatus.WAITING else (),
            tags=run.tags,
            inputs=inputs if isinstance(inputs, dict) else {"args": inputs},
            result=codec.decode(run.result) if run.result is not None else None,
            error=_error_view(run.error),
            crash_count=run.crash_count,
            last_error=run.last_error,
            owner=run.owner,
            wake_at=_ts(run.wake_at),
            created_at=_ts(run.created_at),
            updated_at=_ts(run.updated_at),
            executing=tuple(executing),
            note=note,
        )


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker, as ``Runtime.workers()`` reads it from the store's worker registry."""

    worker_id: str
    host: str
    pid: int
    workflows: tuple[str, ...]  # the workflow names it claims runs of
    started_at: _dt.datetime  # when this registration began (the store's clock)
    last_seen: _dt.datetime  # its latest heartbeat (the store's clock)

    @classmethod
    def from_record(cls, worker: WorkerRecord) -> WorkerInfo:
        return cls(
            worker_id=worker.worker_id,
            host=worker.host,
            pid=worker.pid,
            workflows=worker.workflows,
            started_at=_dt.datetime.fromtimestamp(worker.started_at, _dt.UTC),
            last_seen=_dt.datetime.fromtimestamp(worker.last_seen, _dt.UTC),
        )


def _error_view(error: str | None) -> dict[str, str] | None:
    """A run's stored error JSON as ``describe`` shows it: its type and message."""
    if not error:
        return None
    info = json.loads(error)
    return {k: info[k] for k in ("type", "message") if k in info}


class RunHandle:
    """A reference to one run, returned by ``start`` of any runtime (embedded or engine)."""

    def __init__(self, runtime: RuntimeClient, run_id: str, created: bool = True) -> None:
        self.runtime = runtime
        self.run_id = run_id
        self.created = created  # False when start() found the run already there

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    async def result(self, timeout: float | None = None) -> Any:
        return await self.runtime.result(self.run_id, timeout=timeout)

    async def describe(self) -> RunInfo:
        return await self.runtime.describe(self.run_id)

    async def history(self) -> list[JournalEntry]:
        return await self.runtime.history(self.run_id)

    async def signal(self, name: str, payload: Any = None, *, signal_id: str | None = None) -> bool:
        return await self.runtime.signal(self.run_id, name, payload, signal_id=signal_id)

    async def cancel(self) -> None:
        await self.runtime.cancel(self.run_id)

    async def retry(self, *, by: str | None = None) -> RunInfo:
        return await self.runtime.retry(self.run_id, by=by)
