"""The one generic Temporal workflow: every coro_durable workflow runs as this class.

It is dynamic: the Temporal workflow type is the coro_durable workflow's registered name
(``research``, ``order_flow``...), so Temporal's UI and CLI show the user's names. The class is
loaded in Temporal's sandbox; coro_durable and this package's driver are passed through, so the
effect classes the user's code yields are the ones the driver checks (one class identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from temporalio import workflow
from temporalio.common import RawValue

with workflow.unsafe.imports_passed_through():
    from coro_durable_temporal._driver import QUERY_DESCRIBE, QUERY_SIGNAL_SEEN, RunDriver

__all__ = ["CoroDurableWorkflow"]


@workflow.defn(dynamic=True)
class CoroDurableWorkflow:
    """Drives one run of a registered coro_durable workflow (see ``_driver.RunDriver``)."""

    def __init__(self) -> None:
        self._driver = RunDriver()

    @workflow.run
    async def run(self, args: Sequence[RawValue]) -> str:
        return await self._driver.run(args)

    @workflow.signal(dynamic=True)
    def signal(self, name: str, args: Sequence[RawValue]) -> None:
        self._driver.on_signal(name, args)

    @workflow.query(name=QUERY_DESCRIBE)
    def describe(self) -> dict[str, Any]:
        return self._driver.describe()

    @workflow.query(name=QUERY_SIGNAL_SEEN)
    def signal_seen(self, signal_id: str) -> bool:
        return self._driver.signal_seen(signal_id)
