"""One measurement in its own process: ``python -m benchmarks._child MODULE SPEC_JSON``.

Imports ``benchmarks.MODULE``, calls its ``run(spec)`` and prints ``RESULT {json}`` with the
result plus this process's peak RSS and, when it imported ``coro_durable``, where from
(``imported``: each ``coro_durable*`` package's file; a baseline run checks it, see
``_baseline``). It leaves with ``os._exit``: Temporal's Rust threads can crash
a normal interpreter exit (temporalio/sdk-python#300), Restate endpoints may not stop on their own
and DBOS leaves background threads; none of them has anything left to flush by then.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import traceback
from typing import Any

from benchmarks._common import RESULT_MARK


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: VmHWM, which starts afresh at exec (getrusage's ru_maxrss
    would include the parent's, inherited through fork and kept across exec on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def imported_code() -> dict[str, str]:
    """The file of each ``coro_durable`` or ``coro_durable_*`` package this process imported."""
    return {
        name: str(module.__file__)
        for name, module in sorted(sys.modules.items())
        if name.startswith("coro_durable") and "." not in name and getattr(module, "__file__", None)
    }


def main() -> None:
    module_name, spec_json = sys.argv[1], sys.argv[2]
    spec: dict[str, Any] = json.loads(spec_json)
    code = 0
    try:
        module = importlib.import_module(f"benchmarks.{module_name}")
        result: dict[str, Any] = module.run(spec)
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        code = 1
    result["peak_rss_mb"] = peak_rss_mb()
    if imported := imported_code():
        result["imported"] = imported
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
