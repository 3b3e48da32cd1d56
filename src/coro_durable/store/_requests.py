"""Typed requests of the store protocol whose fields will grow: ``ClaimRequest`` (what a worker
asks ``Store.claim`` for) and ``RunQuery`` (the filters of ``Store.list_runs``).

A new field gets a default that keeps today's answer, so a store that does not know it yet still
answers correctly for every request that leaves it at its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .._core.waits import WaitKind
from ..journal._records import RunRecord, RunStatus

__all__ = ["ClaimRequest", "RunQuery"]


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Lease up to ``limit`` claimable runs of ``workflows`` to ``worker`` for ``lease_ttl``
    seconds; a takeover of an expired lease that reaches ``max_crashes`` quarantines the run
    instead (see ``Store`` "Claiming")."""

    worker: str
    workflows: tuple[str, ...]
    limit: int
    lease_ttl: float
    max_crashes: int


@dataclass(frozen=True, slots=True)
class RunQuery:
    """Which runs ``Store.list_runs`` answers, newest first (``created_at``, then ``run_id``).

    ``waiting_for`` keeps only waiting runs (status ``waiting``) with a wait of that kind, and
    ``wait_name`` only those whose wait of that kind has that name: "runs waiting on signal
    approval" is ``RunQuery(waiting_for=WaitKind.SIGNAL, wait_name="approval")``."""

    status: RunStatus | None = None
    workflow: str | None = None
    tags: Mapping[str, str] | None = None  # every one of these tags (``RunRecord.tags``)
    waiting_for: WaitKind | None = None
    wait_name: str | None = None
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        if self.wait_name is not None and self.waiting_for is None:
            raise ValueError("RunQuery(wait_name=...) needs waiting_for (e.g. WaitKind.SIGNAL)")

    def matches(self, run: RunRecord) -> bool:
        """Whether ``run`` passes the filters (for a store that filters in Python)."""
        if self.status is not None and run.status != self.status:
            return False
        if self.workflow is not None and run.workflow != self.workflow:
            return False
        if self.tags:
            have = run.tags
            if any(have.get(key) != value for key, value in self.tags.items()):
                return False
        if self.waiting_for is None:
            return True
        return run.status == RunStatus.WAITING and any(
            wait.kind == self.waiting_for
            and (self.wait_name is None or wait.name == self.wait_name)
            for wait in run.waits
        )
