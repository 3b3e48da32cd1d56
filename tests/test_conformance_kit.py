"""The conformance kit works from another project: tests/fixtures/thirdparty_store is a store
distribution of its own, whose test suite subclasses ``StoreConformance``; we run that suite in
a pytest of its own (its pyproject's settings, our source on PYTHONPATH, nothing installed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "thirdparty_store"
#: The kit's 76 tests (every store rule, each bad run_id on its own, the oracle comparison),
#: under asyncio and trio.
KIT_TESTS = 160


def run_fixture_suite(tmp_path: Path, *, broken: bool) -> subprocess.CompletedProcess[str]:
    """The fixture's own test suite, run the way its developers would (from a scratch working
    directory, so nothing is written into our tree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "THIRDPARTY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(FIXTURE / "src"), str(ROOT / "src")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if broken:
        env["THIRDPARTY_STORE_BROKEN"] = "1"
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
            "-c", str(FIXTURE / "pyproject.toml"), "--rootdir", str(FIXTURE),
            str(FIXTURE / "tests" / "test_conformance.py"),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_fixture_is_a_store_distribution_registered_by_entry_point() -> None:
    """The fixture is laid out like a distribution: its pyproject registers its store class in
    the ``coro_durable.stores`` entry-point group, and that class exists where it points."""
    project = tomllib.loads((FIXTURE / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["coro_durable.stores"]["thirdparty"]
    module, _, name = target.partition(":")
    assert (module, name) == ("thirdparty_store", "ThirdPartyStore")
    source = (FIXTURE / "src" / module / "__init__.py").read_text()
    assert f"class {name}(StoreWrapper):" in source
    assert "coro_durable._" not in source and "from coro_durable import _" not in source


@pytest.mark.slow
def test_a_third_party_store_passes_the_kit_from_its_own_suite(tmp_path: Path) -> None:
    """A store that wraps MemoryStore through the public SPI passes every test of the kit, the
    Hypothesis comparison included, under asyncio and trio; nothing is skipped."""
    done = run_fixture_suite(tmp_path, broken=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{KIT_TESTS} passed" in done.stdout, done.stdout
    assert "skipped" not in done.stdout and "warning" not in done.stdout, done.stdout


@pytest.mark.slow
def test_the_kit_fails_a_store_that_forgets_to_fence(tmp_path: Path) -> None:
    """A store whose appends drop a stale epoch's write silently (instead of raising LeaseLost)
    fails the kit: the fencing tests and the oracle comparison name it; the rest still pass."""
    done = run_fixture_suite(tmp_path, broken=True)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = {
        line.split("::")[-1].split(" ")[0]
        for line in done.stdout.splitlines()
        if line.startswith("FAILED ")
    }
    for backend in ("asyncio", "trio"):
        assert f"test_append_with_stale_epoch_raises_lease_lost_and_writes_nothing[{backend}]" in (
            failed
        ), done.stdout
        assert f"test_store_agrees_with_memory_oracle[{backend}]" in failed, done.stdout
    assert f"{len(failed)} failed, {KIT_TESTS - len(failed)} passed" in done.stdout, done.stdout


@pytest.mark.slow
def test_readme_example_is_a_conformance_suite_that_passes(tmp_path: Path) -> None:
    """The README's StoreConformance example, saved as a test file and run with pytest, passes
    (the append rules and the oracle comparison, to keep it quick)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[
        readme.index("\n### Test your own store: `coro_durable.testing.conformance`\n") :
    ]
    match = re.search(r"^```python\n(.*?)^```$", section, re.M | re.S)
    assert match is not None
    (tmp_path / "test_my_store.py").write_text(match.group(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
         "-k", "test_append or oracle", "test_my_store.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "22 passed" in done.stdout, done.stdout
