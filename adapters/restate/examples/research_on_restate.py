"""The README's AI pipeline (examples/ai_pipeline.py), unchanged, run on Restate.

    pip install -e . -e adapters/restate        # coro_durable, restate-sdk, hypercorn, httpx
    bash scripts/ensure-restate.sh              # restate-server from npm, into .tools/
    python adapters/restate/examples/research_on_restate.py

Without ``--url`` it starts a throwaway ``restate-server`` (a temporary base directory, free
ports, one partition) with the binary that scripts/ensure-restate.sh installed, and kills it at
the end. With ``--url restate://HOST:PORT?admin=...&listen=...`` it uses that server.

The only line that differs from running it embedded is the URL given to ``cd.Runtime``: the
workflow, its steps, the human approval (a signal) and the idempotency keys are the same. While
open, the runtime serves the Restate endpoint in this process and registers it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import ModuleType

from coro_durable_restate import parse_url

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_server(workdir: str) -> tuple[str, subprocess.Popen[bytes]]:
    """restate-server on free ports in ``workdir``; returns a restate:// URL and the process."""
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-restate.sh")], capture_output=True, text=True
    )
    binary = found.stdout.strip()
    if found.returncode != 0 or not os.access(binary, os.X_OK):
        sys.exit(f"restate-server is missing and could not be installed: {found.stderr[-500:]}")
    ingress, admin, node = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RESTATE_BASE_DIR": str(Path(workdir) / "restate-data"),
        "RESTATE_LISTEN_MODE": "tcp",
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin}",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{node}/",
        "RESTATE_DEFAULT_NUM_PARTITIONS": "1",
        "RESTATE_BOOTSTRAP_NUM_PARTITIONS": "1",
        "RESTATE_ROCKSDB_TOTAL_MEMORY_SIZE": "32 MB",
        "RESTATE_LOG_FILTER": "error",
    }
    proc = subprocess.Popen(
        [binary, "--no-logo"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if healthy(f"http://127.0.0.1:{admin}/health") and healthy(
            f"http://127.0.0.1:{ingress}/restate/health"
        ):
            url = (
                f"restate://127.0.0.1:{ingress}?admin=http://127.0.0.1:{admin}"
                f"&listen=127.0.0.1:{free_port()}"
            )
            return url, proc
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    sys.exit("restate-server did not start within 30 s")


async def run(url: str) -> dict[str, object]:
    app = load_pipeline()
    async with cd.Runtime(url) as rt:  # a RestateRuntime: it serves the endpoint meanwhile
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
            f"its journal: the Restate UI at {where.admin}/ui, workflow {where.service}, "
            f"key {run_id}"
        )
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--url", help="restate://HOST:PORT?admin=http://HOST:PORT&listen=HOST:PORT")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="cd-restate-example-")
    ledger_env = load_pipeline().LEDGER_ENV  # where the fake LLM provider keeps its bill
    os.environ.setdefault(ledger_env, str(Path(workdir) / "llm_ledger.db"))
    server = None
    url = args.url
    try:
        if url is None:
            url, server = start_server(workdir)
        result = asyncio.run(run(url))
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result.get("answer") else 1


if __name__ == "__main__":
    sys.exit(main())
