"""The README's demo (`make demo` = `python examples/ai_pipeline.py`) and its fake LLM provider."""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from coro_durable.cli import _main as _cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ai_pipeline.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ai_pipeline", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("ai_pipeline") or importlib.util.module_from_spec(spec)
    if "ai_pipeline" not in sys.modules:
        sys.modules["ai_pipeline"] = module
        spec.loader.exec_module(module)
    return module


def test_demo_proves_resume_without_double_billing(tmp_path: Path) -> None:
    """The demo kills its worker mid-run, resumes on a new one, exits 0, and states the proof."""
    env = {k: v for k, v in os.environ.items() if k != "CORO_DURABLE_STORE"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONIOENCODING": "utf-8"},
        timeout=120,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "SIGKILLed worker 1" in out
    assert "from the journal" in out
    assert "RE-EXECUTED" not in out
    assert "TIMES" not in out
    assert "\u2714 resumed, not restarted" in out
    assert "\u2714 no double billing" in out
    assert "\u2714 the run completed on worker 2" in out
    assert "\u2718" not in out
    assert "PROOF HOLDS" in out
    assert re.search(r"^status +completed$", out, re.M)  # the audit trail, by `coro-durable show`
    assert re.search(r"^ +5 +signal +approval +ok ", out, re.M)
    assert (tmp_path / ".coro_durable" / "demo" / "runs.db").exists()
    assert took < 60


def test_demo_command_finds_the_example() -> None:
    """`coro-durable demo` runs examples/ai_pipeline.py of this checkout."""
    assert _cli._find_demo() == EXAMPLE


def test_fake_llm_bills_once_per_idempotency_key(tmp_path: Path) -> None:
    """The fake provider answers a repeated key from its records without billing it again, and
    logs every physical request."""
    llm = load_example().FakeLLM(tmp_path / "ledger.db")
    first = llm.complete("PLAN\nq", idempotency_key="r:0", latency=0)
    again = llm.complete("PLAN\nq", idempotency_key="r:0", latency=0)
    other = llm.complete("PLAN\nq", idempotency_key="r:1", latency=0)
    assert first == again == other
    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        bills = db.execute("SELECT idempotency_key FROM bills ORDER BY 1").fetchall()
        requests = db.execute("SELECT idempotency_key, billed FROM requests ORDER BY id").fetchall()
    finally:
        db.close()
    assert bills == [("r:0",), ("r:1",)]
    assert requests == [("r:0", 1), ("r:0", 0), ("r:1", 1)]


def test_calculator_tool_only_does_arithmetic() -> None:
    """The tool the LLM calls evaluates arithmetic and refuses anything else (no eval)."""
    calculator = load_example().calculator
    assert calculator("40000 * 0.03 * 0.42") == 504.0
    assert calculator("-(2 + 3) / 2") == -2.5
    with pytest.raises(ValueError, match="not plain arithmetic"):
        calculator("__import__('os').getcwd()")
