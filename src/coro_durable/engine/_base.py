"""``EngineRuntime``: what every engine adapter's runtime (Temporal, Restate, Inngest) shares.

An engine runtime is what ``cd.Runtime("temporal://...")`` returns: it offers the operations of
``coro_durable.RuntimeClient`` with the same meaning as the embedded runtime, mapped onto the
engine. This base holds what each adapter would otherwise repeat: the embedded-only options it
accepts and ignores (so one URL change moves an application onto an engine), the refusal of
unknown options, the asyncio requirement of the engines' SDKs, the "not open" check, the error
for an operation the engine cannot offer, and the handle ``start`` returns.

A subclass sets ``engine_name`` (``"Temporal"``) and ``asyncio_reason`` (why its SDK needs
asyncio), sets ``self._open`` while it is open, and implements the client operations (the
abstract methods below; ``retry`` and ``workers`` default to "not offered").
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, ClassVar

from .._core.waits import WaitKind
from ..errors import ConfigurationError
from ..journal._records import JournalEntry, RunStatus
from ..runtime._client import RunHandle, RunInfo, WorkerInfo
from ..runtime._replayer import ReplayReport
from ..workflow._registry import register_function

__all__ = ["EngineRuntime"]


class EngineRuntime(abc.ABC):
    """The base of an engine adapter's runtime (see the module docstring)."""

    #: Tells ``cd.Runtime(url)`` (and tools) that this class is an engine runtime, not a store.
    is_engine: ClassVar[bool] = True
    #: The engine's name as messages show it, e.g. "Temporal".
    engine_name: ClassVar[str] = "this engine"
    #: Why the engine's SDK needs asyncio, e.g. "the Temporal Python SDK runs only on asyncio".
    asyncio_reason: ClassVar[str] = "its SDK runs only on an asyncio event loop"
    #: ``Runtime(...)`` options that only mean something to the embedded runtime: accepted and
    #: ignored, so an application moves onto an engine by changing its URL alone.
    EMBEDDED_ONLY: ClassVar[frozenset[str]] = frozenset(
        {
            "lease_ttl",
            "poll_interval",
            "max_crashes",
            "inline_wait",
            "store_deadline",
            "shutdown_grace",
            "instruments",
        }
    )

    _open: bool = False

    def _check_options(
        self, embedded_only: Mapping[str, Any], takes: str, concurrency: int
    ) -> None:
        """Refuse options that are neither this engine's (``takes`` names them) nor embedded-only."""
        unknown = sorted(set(embedded_only) - self.EMBEDDED_ONLY)
        if unknown:
            raise ConfigurationError(
                f"{type(self).__name__} got unknown option(s) {', '.join(unknown)}; it takes "
                f"{takes}"
            )
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")

    @staticmethod
    def _register_workflows(workflows: Iterable[Callable[..., Coroutine[Any, Any, Any]]]) -> None:
        for fn in workflows:
            register_function(fn)

    def _require_asyncio(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                f"{type(self).__name__} needs asyncio: {self.asyncio_reason}, so "
                f"{self.engine_name} runs cannot be driven from trio. Run this part of the "
                "application under asyncio (e.g. anyio.run(main, backend='asyncio')), or use an "
                "embedded store (sqlite://, postgresql://, redis://), which works under trio"
            ) from None

    def _check_open(self) -> None:
        if not self._open:
            raise ConfigurationError(
                f"this {type(self).__name__} is not open; use it as "
                "`async with cd.Runtime(url) as rt:`"
            )

    def _not_offered(self, what: str, instead: str) -> ConfigurationError:
        """The error for an operation the engine cannot offer: what to use instead."""
        return ConfigurationError(
            f"{what} is not available on {self.engine_name} (the embedded runtime has it); "
            f"{instead}"
        )

    def _check_no_tags(self, tags: Mapping[str, str] | None) -> None:
        """Run tags are not mapped onto an engine yet: refuse them rather than pass them on."""
        if tags:
            raise self._not_offered(
                "start(tags=...)", "keep the tags in the workflow's inputs for now"
            )

    def _run_handle(self, run_id: str, *, created: bool) -> RunHandle:
        return RunHandle(self, run_id, created=created)

    # -- the client operations (coro_durable.RuntimeClient) ---------------------------------------------

    @abc.abstractmethod
    async def start(
        self,
        workflow: Callable[..., Coroutine[Any, Any, Any]] | str,
        *args: Any,
        run_id: str | None = None,
        allow_unknown: bool = False,
        tags: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> RunHandle: ...

    @abc.abstractmethod
    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> bool: ...

    @abc.abstractmethod
    async def result(self, run_id: str, timeout: float | None = None) -> Any: ...

    @abc.abstractmethod
    async def describe(self, run_id: str) -> RunInfo: ...

    @abc.abstractmethod
    async def history(self, run_id: str) -> list[JournalEntry]: ...

    @abc.abstractmethod
    async def cancel(self, run_id: str) -> None: ...

    @abc.abstractmethod
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

    @abc.abstractmethod
    async def replay(self, run_id: str) -> ReplayReport: ...

    @abc.abstractmethod
    async def resume(self, run_id: str) -> RunInfo: ...

    async def retry(self, run_id: str, *, by: str | None = None) -> RunInfo:
        """Not offered on an engine: its runs keep their own history of attempts."""
        raise self._not_offered(
            "retry()",
            f"start a new run, or use {self.engine_name}'s own way to re-run a failed execution",
        )

    async def workers(self) -> list[WorkerInfo]:
        """Not offered on an engine: it tracks its workers itself."""
        raise self._not_offered("workers()", f"see the workers in {self.engine_name}'s UI or CLI")
