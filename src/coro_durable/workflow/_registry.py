"""The ``@cd.workflow`` decorator and the registry of workflows by name.

A workflow is registered under its ``__qualname__`` (or ``name=``), not its module path, so the
same function is found whether its module runs as ``__main__`` or is imported by a worker.
The decorator returns the function unchanged: it stays a plain ``async def``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, overload

from ..errors import ConfigurationError, UnknownWorkflowError

__all__ = ["workflow", "workflow_name", "lookup", "registered"]

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])

_registry: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {}
_lock = threading.Lock()


@overload
def workflow(fn: F, /) -> F: ...
@overload
def workflow(*, name: str | None = None) -> Callable[[F], F]: ...
def workflow(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register an ``async def`` as a workflow: ``@cd.workflow`` or ``@cd.workflow(name="x")``."""

    def register(f: F) -> F:
        if not inspect.iscoroutinefunction(f):
            raise ConfigurationError(
                f"@cd.workflow needs an `async def` function, got {f!r}; workflows await effects"
            )
        wf_name = name or f.__qualname__
        with _lock:
            known = _registry.get(wf_name)
            modules = {getattr(known, "__module__", None), f.__module__}
            if known is not None and len(modules) > 1 and "__main__" not in modules:
                raise ConfigurationError(
                    f"two different workflows are named {wf_name!r} ({known.__module__} and "
                    f"{f.__module__}); give one of them @cd.workflow(name=...)"
                )
            _registry[wf_name] = f
        f.__cd_workflow_name__ = wf_name  # type: ignore[attr-defined]
        return f

    if fn is not None:
        return register(fn)
    return register


def workflow_name(fn: Callable[..., Any] | str) -> str:
    """The registered name of a workflow function (or the name itself)."""
    if isinstance(fn, str):
        return fn
    return str(getattr(fn, "__cd_workflow_name__", None) or fn.__qualname__)


def register_function(fn: Callable[..., Coroutine[Any, Any, Any]]) -> str:
    """Register an undecorated workflow function passed to ``Runtime.start`` or ``workflows=``."""
    name = workflow_name(fn)
    if name not in _registry:
        workflow(name=name)(fn)
    return name


def lookup(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    with _lock:
        fn = _registry.get(name)
        if fn is None:
            raise UnknownWorkflowError(name, list(_registry))
        return fn


def registered() -> list[str]:
    with _lock:
        return list(_registry)
