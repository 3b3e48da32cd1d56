"""Per-step latency of our stores (W1): ``python -m benchmarks.step_overhead [harness options]``.

A shortcut for ``python -m benchmarks --only ours,raw --workloads w1``: one warm-up run, then
runs of 20 sequential trivial steps on every store under asyncio and trio, median and p99 per
step, beside the store's raw write latency. Any option of ``python -m benchmarks`` may follow
(``--stores sqlite``, ``--sync-steps``, ``--quick``...); see ``benchmarks/README.md``.
"""

from __future__ import annotations

import sys

from benchmarks.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--only", "ours,raw", "--workloads", "w1", *sys.argv[1:]]))
