"""The embedded runtime: ``Runtime`` (``_runtime``: the client operations and the lifecycle), its
``Worker`` (``_worker``: the loops that register, claim, renew, supervise and quarantine runs,
calling the instruments at each event), ``RuntimeClient`` (the operations every
runtime offers, engines included) with the views it answers, the activation that drives one
workflow coroutine against its journal, the replayer that re-executes a journal with no side
effects (and calls no instrument), and ``WorkerLog``, the instrument every Runtime has that logs
each event of a run once.

May import: ``coro_durable.errors``, ``_core``, ``workflow``, ``journal`` and ``store``; never the
engine adapters or the CLI. ``coro_durable`` re-exports the public names.
"""

from ._activation import Limits
from ._client import ExecutingStep, RunHandle, RunInfo, RuntimeClient, WorkerInfo
from ._log import WorkerLog
from ._replayer import ReplayReport
from ._runtime import Runtime

__all__ = [
    "ExecutingStep",
    "Limits",
    "ReplayReport",
    "RunHandle",
    "RunInfo",
    "Runtime",
    "RuntimeClient",
    "WorkerInfo",
    "WorkerLog",
]
