"""The baseline: an earlier checkout whose code the "base" targets run, beside ours, in one run.

``python -m benchmarks --baseline DIR`` (or ``--baseline-ref REF``, which makes DIR itself with
``git worktree add --detach`` and removes it at the end) measures every "ours" target twice in
the same rounds, ours then base: the base child runs our workload code (``benchmarks/`` of this
checkout) on the baseline's ``coro_durable`` and plugins, put ahead of everything else on its
``PYTHONPATH``. So the workloads may only use public API that the baseline has too.

Each child reports which ``coro_durable`` (and ``coro_durable_*`` plugins) it imported
(``imported`` in its result, see ``_child``); :func:`verify` stops the harness when a base child
ran our code or one of ours ran the baseline's, since such a comparison would compare nothing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the source folders of a checkout, in PYTHONPATH order; those that exist are used
SOURCE_DIRS = ("src", "backends/postgres/src", "backends/redis/src")
ADAPTER_SOURCES = "adapters/*/src"


class BaselineError(RuntimeError):
    """The baseline cannot be used as asked (no checkout, git failed, mixed-up code)."""


class MixedCodeError(BaselineError):
    """A child ran the other side's code: the comparison would be meaningless."""


@dataclass(frozen=True)
class Checkout:
    """The baseline's directory and commit."""

    root: Path
    commit: str
    ref: str | None = None  # what --baseline-ref named, when the harness made the worktree
    dirty: bool = False  # uncommitted changes in root (its code is not exactly the commit's)

    def source_paths(self) -> list[Path]:
        """The folders a base child imports from: src, then the plugins' src dirs that exist."""
        paths = [self.root / d for d in SOURCE_DIRS]
        paths += sorted(self.root.glob(ADAPTER_SOURCES))
        return [p for p in paths if p.is_dir()]

    def env(self) -> dict[str, str]:
        """The environment of a base child: the baseline's folders ahead of the PYTHONPATH."""
        env = dict(os.environ)
        paths = [str(p) for p in self.source_paths()]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def describe(self) -> dict[str, Any]:
        """What results.json keeps of it."""
        return {"dir": str(self.root), "commit": self.commit, "ref": self.ref, "dirty": self.dirty}


def open_checkout(root: Path, ref: str | None = None) -> Checkout:
    """The checkout at ``root``; a clear error when it is not one of coro_durable."""
    root = root.resolve()
    if not (root / "src" / "coro_durable" / "__init__.py").is_file():
        raise BaselineError(
            f"--baseline {root}: no src/coro_durable/__init__.py there; give a checkout of this "
            "repository (e.g. made by `git worktree add /tmp/base <commit>`) or use --baseline-ref"
        )
    ours = ours_origin()
    if ours is not None and ours.is_relative_to(root):
        raise BaselineError(
            f"--baseline {root}: our own coro_durable ({ours}) comes from there; give another "
            "checkout, e.g. `git worktree add /tmp/base <commit>`, or --baseline-ref <commit>"
        )
    commit = _git(root, "rev-parse", "HEAD")
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    return Checkout(root, commit, ref, dirty)


@contextmanager
def worktree(repo: Path, ref: str) -> Iterator[Path]:
    """A detached worktree of ``repo`` at ``ref`` in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="cd-bench-base-") as parent:
        path = Path(parent) / "checkout"
        _git(repo, "worktree", "add", "--detach", "--quiet", str(path), ref)
        try:
            yield path
        finally:
            _git(repo, "worktree", "remove", "--force", str(path))


def _git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BaselineError(f"`git {' '.join(args)}` in {cwd} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def ours_origin() -> Path | None:
    """Where this checkout's children import coro_durable from (as this process would)."""
    spec = importlib.util.find_spec("coro_durable")
    return Path(spec.origin).resolve() if spec is not None and spec.origin else None


def verify(
    target: str, result: dict[str, Any], code: Checkout | None, baseline: Checkout | None
) -> None:
    """Raise MixedCodeError unless a child of ``target`` ran the code it should have.

    ``code`` is the checkout the child was meant to run (None: ours), ``baseline`` the run's
    baseline (None: no comparison, nothing to tell apart). A base child must have imported every
    ``coro_durable*`` package from the baseline's folder; one of ours ``coro_durable`` from where
    this process finds it, and nothing from the baseline's folder.
    """
    if baseline is None:
        return
    imported = {name: Path(file).resolve() for name, file in result.get("imported", {}).items()}
    if "coro_durable" not in imported:
        if "error" in result:  # it failed before importing anything: the error says why
            return
        raise MixedCodeError(f"{target}: the child did not report which coro_durable it imported")
    root = baseline.root
    if code is not None:
        wrong = {n: f for n, f in imported.items() if not f.is_relative_to(root)}
        if wrong:
            raise MixedCodeError(
                f"{target}: a baseline child imported code from outside the baseline {root}: "
                f"{_listing(wrong)}; check that {root}/src holds coro_durable and that nothing "
                "else on PYTHONPATH comes first"
            )
        return
    expected = ours_origin()
    wrong = {n: f for n, f in imported.items() if f.is_relative_to(root)}
    if expected is not None and imported["coro_durable"] != expected:
        wrong["coro_durable"] = imported["coro_durable"]
    if wrong:
        raise MixedCodeError(
            f"{target}: a child of ours imported {_listing(wrong)}; ours must come from "
            f"{expected.parent.parent if expected else 'this checkout'}, never from the "
            f"baseline {root}; check PYTHONPATH"
        )


def _listing(files: dict[str, Path]) -> str:
    return ", ".join(f"{name} from {file}" for name, file in sorted(files.items()))
