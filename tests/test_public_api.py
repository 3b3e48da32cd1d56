"""The public surface: what `coro_durable` exports is exactly `__all__`, and errors form one tree."""

from __future__ import annotations

import dataclasses
import inspect

import coro_durable as cd
from coro_durable import errors


def test_all_matches_public_names() -> None:
    """Every public attribute is in __all__ and every name in __all__ exists."""
    public = {
        name
        for name in vars(cd)
        if not name.startswith("_") and not inspect.ismodule(getattr(cd, name))
    }
    assert public == set(cd.__all__)


def test_design_contract_names_exist() -> None:
    """The names design.md promises are exported."""
    for name in [
        "workflow",
        "call",
        "sleep",
        "sleep_until",
        "await_signal",
        "gather",
        "now",
        "uuid4",
        "random",
        "idempotency_key",
        "RetryPolicy",
        "Runtime",
    ]:
        assert name in cd.__all__


def test_worker_registry_names_exist() -> None:
    """rt.workers() answers WorkerInfo records (design.md, Wave 2), and start takes
    allow_unknown."""
    assert "WorkerInfo" in cd.__all__
    fields = [f.name for f in dataclasses.fields(cd.WorkerInfo)]
    assert fields == ["worker_id", "host", "pid", "workflows", "started_at", "last_seen"]
    assert inspect.iscoroutinefunction(cd.Runtime.workers)
    start = inspect.signature(cd.Runtime.start).parameters["allow_unknown"]
    assert start.kind is inspect.Parameter.KEYWORD_ONLY and start.default is False
    assert "note" in [f.name for f in dataclasses.fields(cd.RunInfo)]


def test_every_error_is_in_one_tree() -> None:
    """All exceptions in coro_durable.errors derive from CoroDurableError, except the control
    flow that user code must not swallow (LeaseLost, RunCancelledError: BaseExceptions, so an
    `except Exception:` in a workflow or step does not catch them)."""
    for name in errors.__all__:
        cls = getattr(errors, name)
        if name in ("LeaseLost", "RunCancelledError"):
            assert issubclass(cls, BaseException) and not issubclass(cls, Exception)
        else:
            assert issubclass(cls, errors.CoroDurableError), name
    assert issubclass(errors.SignalTimeout, TimeoutError)
    assert issubclass(errors.NotAnEffectError, TypeError)
    assert issubclass(errors.RunNotFoundError, LookupError)


def test_py_typed_marker_ships() -> None:
    """The package ships py.typed for type checkers."""
    from importlib.resources import files

    assert files("coro_durable").joinpath("py.typed").is_file()
