"""The tree's import rules hold: plugins import only public core modules, and the core's
subpackages import only the layers below them, with no import cycle (scripts/check_imports.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scripts import check_imports


def test_the_tree_keeps_its_import_rules() -> None:
    """No plugin imports a private core module, no subpackage imports a layer above it, and the
    core has no import cycle (lazy imports included)."""
    assert check_imports.problems() == []


def test_the_check_finds_a_plugin_reaching_into_a_private_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin importing ``coro_durable.store._sqlite`` or ``from coro_durable import _x`` is
    reported, with its file and line; public SPI imports are not."""
    src = tmp_path / "backends" / "fake" / "src"
    (src / "fake_store").mkdir(parents=True)
    (src / "fake_store" / "__init__.py").write_text(
        "from coro_durable.store import Store\n"
        "from coro_durable.store._sqlite import SqliteStore\n"
        "def f():\n    from coro_durable import _core\n"
    )
    monkeypatch.setattr(check_imports, "ROOT", tmp_path)
    monkeypatch.setattr(check_imports, "PLUGIN_SOURCES", [src])
    found = check_imports.plugin_violations()
    assert len(found) == 2, found
    assert "fake_store/__init__.py:2: imports private coro_durable.store._sqlite" in found[0]
    assert "fake_store/__init__.py:4: imports private coro_durable (_core)" in found[1]


def test_the_check_finds_a_lazy_import_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two core modules importing each other, one of them inside a function, form a cycle."""
    core = tmp_path / "src" / "coro_durable"
    (core / "store").mkdir(parents=True)
    (core / "__init__.py").write_text("")
    (core / "store" / "__init__.py").write_text("")
    (core / "store" / "_a.py").write_text("from ._b import x\n")
    (core / "store" / "_b.py").write_text("x = 1\ndef f():\n    from ._a import x\n")
    monkeypatch.setattr(check_imports, "CORE", core)
    assert check_imports.cycles(check_imports.core_graph()) == [
        ["coro_durable.store._a", "coro_durable.store._b", "coro_durable.store._a"]
    ]


def test_stores_and_engines_register_in_groups_of_their_own() -> None:
    """Store plugins are in the ``coro_durable.stores`` entry-point group and engine adapters in
    ``coro_durable.engines``: ``Runtime(url)`` finds an engine there, and ``open_store`` refuses an
    engine's URL with what to use instead."""
    import importlib.metadata

    import coro_durable as cd
    from coro_durable import errors, store

    stores = {ep.name for ep in importlib.metadata.entry_points(group=store.STORE_GROUP)}
    engines = {ep.name for ep in importlib.metadata.entry_points(group=store.ENGINE_GROUP)}
    assert {"memory", "sqlite"} <= stores
    assert not stores & engines, "a scheme is registered as both a store and an engine"
    if "temporal" not in engines:
        pytest.skip("the Temporal adapter is not installed")
    engine = store.engine_class("temporal://127.0.0.1:7233/default")
    assert engine is not None and engine.__name__ == "TemporalRuntime"
    assert store.engine_class("sqlite:///x.db") is None
    assert type(cd.Runtime("temporal://127.0.0.1:7233/default")).__name__ == "TemporalRuntime"
    with pytest.raises(errors.ConfigurationError, match="names an engine, not a store"):
        cd.open_store("temporal://127.0.0.1:7233/default")
