"""Throughput of our stores (W2): ``python -m benchmarks.throughput [harness options]``.

A shortcut for ``python -m benchmarks --only ours --workloads w2``: 200 concurrent runs of 10
trivial steps on one worker, per store, under asyncio and trio (with ``group_commit=0`` and
``=1`` where the store has the option); steps/s from the first start to the last result. Any
option of ``python -m benchmarks`` may follow; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import sys

from benchmarks.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--only", "ours", "--workloads", "w2", *sys.argv[1:]]))
