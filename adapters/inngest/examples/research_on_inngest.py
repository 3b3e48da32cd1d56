"""The README's AI pipeline (examples/ai_pipeline.py), unchanged, run on Inngest.

    pip install -e . -e adapters/inngest        # coro_durable, the inngest SDK, fastapi, uvicorn
    python adapters/inngest/examples/research_on_inngest.py
    python adapters/inngest/examples/research_on_inngest.py --url 'inngest://127.0.0.1:8288?app_id=research'

With ``--url`` it runs against that Inngest (a dev server started with ``npx inngest-cli dev``,
or Inngest Cloud with ``mode=cloud`` and the keys in INNGEST_SIGNING_KEY / INNGEST_EVENT_KEY).
Without it, it runs against the TEST DOUBLE of the Inngest server that the tests use
(tests/inngest_executor.py: the executor's HTTP protocol as the Inngest SDK defines it, the Event
API and the REST API v1), because no Inngest server can be installed on this machine. It says
which one it used.

The only line that differs from running it embedded is the URL given to ``cd.Runtime``: the
workflow, its steps, the human approval (a signal) and the idempotency keys are the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import coro_durable as cd

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "ai_pipeline.py"


def load_pipeline() -> ModuleType:
    module = sys.modules.get("ai_pipeline")
    if module is None:
        spec = importlib.util.spec_from_file_location("ai_pipeline", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["ai_pipeline"] = module
        spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def inngest_url(url: str | None) -> AsyncIterator[str]:
    """The given URL, or one pointing at the test double started here."""
    if url is not None:
        print(f"using the Inngest server at {url}")
        yield url
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from inngest_executor import FakeInngest  # the tests' stand-in for an Inngest server

    async with FakeInngest() as fake:
        print(
            "using the TEST DOUBLE of the Inngest server (tests/inngest_executor.py) at "
            f"{fake.url}: no Inngest server is installed here; pass --url for a real one"
        )
        yield f"inngest://127.0.0.1:{fake.port}?app_id=research&poll_interval=0.05"


async def run(url: str | None) -> dict[str, object]:
    app = load_pipeline()
    async with inngest_url(url) as where, cd.Runtime(where) as rt:
        # an InngestRuntime: it serves the app's Inngest endpoint meanwhile
        run_id = f"research-{os.getpid()}-{int(time.time())}"
        await rt.start(app.research, app.QUESTION, run_id=run_id)
        print(f"started run {run_id}; endpoint {rt.serve_url}")
        while True:  # the run plans, retrieves in parallel, calculates, then waits for a human
            info = await rt.describe(run_id)
            if info.status == cd.RunStatus.WAITING and "approval" in (info.waiting_on or ""):
                break
            await asyncio.sleep(0.1)
        print(f"waiting on {info.waiting_on} at step {info.step}; approving as the reviewer")
        await rt.signal(run_id, "approval", app.APPROVAL)
        result: dict[str, object] = await rt.result(run_id, timeout=60)
        print(f"answer: {result['answer']}")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--url", help="inngest://HOST:PORT?app_id=... (default: the test double)")
    args = parser.parse_args(argv)
    workdir = None
    ledger_env = load_pipeline().LEDGER_ENV  # where the fake LLM provider keeps its bill
    if ledger_env not in os.environ:
        workdir = tempfile.TemporaryDirectory(prefix="cd-inngest-example-")
        os.environ[ledger_env] = str(Path(workdir.name) / "llm_ledger.db")
    try:
        result = asyncio.run(run(args.url))
    finally:
        if workdir is not None:
            workdir.cleanup()
    return 0 if result.get("answer") else 1


if __name__ == "__main__":
    sys.exit(main())
