"""The public surface: what `coro_durable` exports is exactly `__all__`, and errors form one tree."""

from __future__ import annotations

import dataclasses
import inspect
import warnings

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


def _client_classes() -> list[type]:
    import importlib.metadata

    from coro_durable import store

    engines = importlib.metadata.entry_points(group=store.ENGINE_GROUP)
    with warnings.catch_warnings():  # the engines' SDKs warn about their own dependencies
        warnings.simplefilter("ignore", DeprecationWarning)
        return [cd.Runtime, *(ep.load() for ep in engines)]


def test_every_runtime_offers_the_client_operations() -> None:
    """The embedded Runtime and every installed engine runtime have each ``cd.RuntimeClient``
    operation, taking (at least) the protocol's parameters, so code written against the protocol
    runs on any of them (``allow_unknown`` included: it must not become a workflow argument)."""
    operations = {
        name: inspect.signature(fn)
        for name, fn in vars(cd.RuntimeClient).items()
        if inspect.iscoroutinefunction(fn)
    }
    assert {"start", "signal", "result", "describe", "history", "cancel", "retry"} <= set(
        operations
    )
    classes = _client_classes()
    assert len(classes) >= 1
    for cls in classes:
        for name, wanted in operations.items():
            method = getattr(cls, name, None)
            assert method is not None and inspect.iscoroutinefunction(method), (cls, name)
            params = inspect.signature(method).parameters
            any_keyword = any(p.kind == p.VAR_KEYWORD for p in params.values())
            for param in wanted.parameters.values():
                if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    continue
                taken = param.kind == param.KEYWORD_ONLY and any_keyword and name != "start"
                if taken and param.name not in params:
                    continue  # taken by its **kwargs (an engine's "not offered" stub); start's
                    # **kwargs are the workflow's own arguments, so it must name each option
                assert param.name in params, f"{cls.__name__}.{name} lacks {param.name!r}"


def test_engine_runtimes_accept_the_embedded_only_options() -> None:
    """Moving an application onto an engine is a URL change: options only the embedded runtime
    uses (``shutdown_grace`` among them) are accepted by every engine runtime, and a misspelt
    option is refused with the options it takes."""
    from coro_durable import engine

    for cls in _client_classes()[1:]:
        assert issubclass(cls, engine.EngineRuntime)
        assert {"lease_ttl", "shutdown_grace", "store_deadline"} <= cls.EMBEDDED_ONLY
