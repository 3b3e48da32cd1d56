"""The benchmark harness: ``python -m benchmarks`` (``make bench``); ``--quick`` for a smoke run.

Runs, in one go and on the same servers:

- ours: W1 (sequential per-step latency) and W2 (200 x 10 throughput) on every store under
  asyncio and trio (W2 also with ``group_commit=0`` and ``=1`` where the store accepts it);
  W3 (10,000 parked runs) and W4 (AI pipeline, fake 50 ms LLM) on every store under asyncio;
- our adapters (Temporal; Restate once ``coro_durable_restate`` is installed; any ``--target``);
- the peers: DBOS on the same PostgreSQL and on SQLite, Temporal (activities and local
  activities) on the same dev server, Restate;
- the physical limit: one INSERT+COMMIT on the same PostgreSQL, SQLite and Redis;
- with ``--baseline DIR`` or ``--baseline-ref REF``: every target of ours again as "base ...",
  on the baseline checkout's code, right after ours in the same rounds (see ``_baseline``).

W1 and W2 run in ``--rounds`` rounds, every target once per round in the same order (A B A B),
each measurement in a fresh process; a figure is the median over rounds and an ours/peer ratio
is the median of the per-round ratios, so slow drift of the machine cancels out. The table is
printed, and written with the machine's description to ``--out`` (results.json, table.md,
steps_per_s.png). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks import _baseline, _report, _servers
from benchmarks._baseline import Checkout
from benchmarks._common import RESULTS_DIR, ROOT, run_child

STORES = ("memory", "sqlite", "postgres", "redis")
LOOPS = ("asyncio", "trio")
GROUPS = ("ours", "adapters", "dbos", "temporal", "restate", "raw")
CHILD_TIMEOUT = 1800.0


@dataclass
class Target:
    """Something measured: ours on a store/adapter, a peer, a raw write, or ours on the baseline."""

    name: str  # e.g. "ours sqlite asyncio", "DBOS postgres", "raw postgres", "base sqlite asyncio"
    group: str  # ours | adapter | peer | raw | base
    backing: str  # the storage or server it writes to: memory, sqlite, postgres, redis, ...
    module: str  # benchmarks.<module>.run(spec) measures it
    spec: dict[str, Any]
    workloads: tuple[str, ...]  # the interleaved ones it takes part in ("w1", "w2", "raw")
    fresh: Callable[[], tuple[dict[str, Any], Callable[[], None]]] | None = None
    loop: str = "asyncio"
    extra: dict[str, Any] = field(default_factory=dict)
    code: Checkout | None = None  # the checkout whose code the child runs (None: this one)
    base: Target | None = None  # the same target on the baseline's code, measured right after

    def on_baseline(self, baseline: Checkout) -> Target:
        """This target of ours as "base ...": the same workloads on the baseline's code."""
        return Target(
            self.name.replace("ours", "base", 1),
            "base",
            self.backing,
            self.module,
            self.spec,
            self.workloads,
            self.fresh,
            self.loop,
            {**self.extra, "baseline_of": self.name},
            baseline,
        )

    def spec_for(self, workload: str) -> tuple[dict[str, Any], Callable[[], None]]:
        spec, cleanup = self.fresh() if self.fresh else ({}, lambda: None)
        return {**self.spec, **spec, "workload": workload}, cleanup


def _add_query(url: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}" if query else url


class Resources:
    """Fresh, isolated storage per measurement, and its cleanup."""

    def __init__(self, pg: str, redis: str, redis_volatile: bool, tmp: Path) -> None:
        self.pg, self.redis, self.redis_volatile, self.tmp = pg, redis, redis_volatile, tmp

    def store_url(self, store: str, **params: str) -> tuple[str, Callable[[], None]]:
        tag = uuid.uuid4().hex[:10]
        if store == "memory":
            return _add_query("memory://", **params), lambda: None
        if store == "sqlite":
            path = self.tmp / f"ours-{tag}.db"
            return _add_query(f"sqlite:///{path}", **params), lambda: _unlink_db(path)
        if store == "postgres":
            schema = f"bench_{tag}"
            url = _add_query(self.pg, schema=schema, **params)
            return url, lambda: _servers.pg_drop_schema(self.pg, schema)
        prefix = f"bench_{tag}:"
        options = {"prefix": prefix, **({"durability": "volatile"} if self.redis_volatile else {})}
        url = _add_query(self.redis, **options, **params)
        return url, lambda: _servers.redis_delete_prefix(self.redis, prefix)

    def dbos_database(self, kind: str) -> tuple[str, Callable[[], None]]:
        tag = uuid.uuid4().hex[:10]
        if kind == "sqlite":
            path = self.tmp / f"dbos-{tag}.db"
            return f"sqlite:///{path}", lambda: _unlink_db(path)
        name = f"bench_dbos_{tag}"
        url = _servers.pg_create_database(self.pg, name)
        return url, lambda: _servers.pg_drop_database(self.pg, name)


def _unlink_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _probe(url: str, code: Checkout | None, baseline: Checkout | None) -> bool:
    """Does ``url`` open on ``code`` (None: ours)? Detects store options such as group_commit."""
    result = run_child("_workloads", {"workload": "probe", "url": url}, 120, _env(code))
    _baseline.verify(f"probe {url}", result, code, baseline)
    return "error" not in result


def _env(code: Checkout | None) -> dict[str, str] | None:
    return code.env() if code is not None else None


# == what to measure =================================================================================


def build_targets(
    args: argparse.Namespace,
    res: Resources,
    servers: dict[str, dict[str, str]],
    baseline: Checkout | None = None,
) -> tuple[list[Target], list[Target]]:
    """The interleaved targets (W1/W2, raw) and the once-only ones (W3/W4); with a baseline,
    each target of ours carries its twin on the baseline's code (``Target.base``)."""
    groups, quick = set(args.only), args.quick
    common = {"quick": quick, "sync": args.sync_steps}
    rounds: list[Target] = []
    once: list[Target] = []

    def ours(store: str, loop: str, **params: str) -> Callable[[], tuple[dict[str, Any], Any]]:
        def fresh() -> tuple[dict[str, Any], Callable[[], None]]:
            url, cleanup = res.store_url(store, **params)
            return {"url": url, "backend": loop}, cleanup

        return fresh

    def with_base(target: Target, baseline_has_it: bool = True) -> Target:
        if baseline is not None and baseline_has_it:
            target.base = target.on_baseline(baseline)
        return target

    if "ours" in groups:
        for store in args.stores:
            for loop in args.loops:
                rounds.append(
                    with_base(
                        Target(
                            f"ours {store} {loop}",
                            "ours",
                            store,
                            "_workloads",
                            dict(common),
                            ("w1", "w2"),
                            ours(store, loop),
                            loop,
                        )
                    )
                )
            if store == "memory" or "w2" not in args.workloads:
                continue
            probe_url, cleanup = res.store_url(store, group_commit="1")
            supported = _probe(probe_url, None, baseline)
            base_supported = baseline is not None and _probe(probe_url, baseline, baseline)
            cleanup()
            if not supported:
                print(f"  {store}: no group_commit option; W2 runs without it", file=sys.stderr)
                continue
            if baseline is not None and not base_supported:
                print(f"  {store}: the baseline has no group_commit option", file=sys.stderr)
            for loop in args.loops:
                for value in ("0", "1"):
                    rounds.append(
                        with_base(
                            Target(
                                f"ours {store} {loop} gc={value}",
                                "ours",
                                store,
                                "_workloads",
                                dict(common),
                                ("w2",),
                                ours(store, loop, group_commit=value),
                                loop,
                                {"group_commit": value},
                            ),
                            base_supported,
                        )
                    )
        for store in args.stores:
            once.append(
                with_base(
                    Target(
                        f"ours {store} asyncio",
                        "ours",
                        store,
                        "_workloads",
                        {**common, "w3_runs": args.w3_runs},
                        ("w3", "w4"),
                        ours(store, "asyncio"),
                    )
                )
            )

    if "adapters" in groups:
        adapters: list[tuple[str, str, Callable[[], str]]] = []
        if "temporal" in servers:
            address = servers["temporal"]["address"]

            def temporal_url() -> str:  # a fresh task queue per measurement
                return f"temporal://{address}/default?task_queue=bench-{uuid.uuid4().hex[:8]}"

            adapters.append(("temporal", "temporal", temporal_url))
        if "restate" in servers and restate_adapter_installed():
            ingress, admin = servers["restate"]["ingress"], servers["restate"]["admin"]

            def restate_url() -> str:  # its own endpoint port and service name per measurement
                listen = f"127.0.0.1:{_servers.free_port()}"
                service = f"bench_{uuid.uuid4().hex[:8]}"
                host = urlsplit(ingress).netloc
                return f"restate://{host}?admin={admin}&listen={listen}&service={service}"

            adapters.append(("restate", "restate", restate_url))
        for given in args.target:
            name, _, url = given.partition("=")
            adapters.append((name, urlsplit(url).scheme, functools.partial(str, url)))
        for name, backing, make_url in adapters:

            def fresh(
                make_url: Callable[[], str] = make_url,
            ) -> tuple[dict[str, Any], Callable[[], None]]:
                return {"url": make_url(), "backend": "asyncio"}, lambda: None

            base = {**common, "w3_runs": args.w3_adapter_runs}
            rounds.append(
                Target(
                    f"ours on {name}", "adapter", backing, "_workloads", base, ("w1", "w2"), fresh
                )
            )
            once.append(
                Target(
                    f"ours on {name}", "adapter", backing, "_workloads", base, ("w3", "w4"), fresh
                )
            )

    if "dbos" in groups:
        for kind in ("postgres", "sqlite"):
            if kind not in args.stores:
                continue

            def dbos_fresh(kind: str = kind) -> tuple[dict[str, Any], Callable[[], None]]:
                url, cleanup = res.dbos_database(kind)
                return {"db": url}, cleanup

            rounds.append(
                Target(
                    f"DBOS {kind}",
                    "peer",
                    kind,
                    "_peers_dbos",
                    {"quick": quick},
                    ("w1", "w2"),
                    dbos_fresh,
                )
            )

    if "temporal" in groups and "temporal" in servers:
        for local in (False, True):
            label = "local activities" if local else "activities"
            spec = {"quick": quick, "address": servers["temporal"]["address"], "local": local}
            rounds.append(
                Target(
                    f"Temporal {label}", "peer", "temporal", "_peers_temporal", spec, ("w1", "w2")
                )
            )

    if "restate" in groups and "restate" in servers:
        spec = {"quick": quick, **servers["restate"]}
        spec.pop("version", None)
        rounds.append(Target("Restate", "peer", "restate", "_peers_restate", spec, ("w1", "w2")))

    if "raw" in groups:
        for store in ("postgres", "sqlite", "redis"):
            if store not in args.stores:
                continue

            def raw_fresh(store: str = store) -> tuple[dict[str, Any], Callable[[], None]]:
                if store == "sqlite":
                    path = res.tmp / f"raw-{uuid.uuid4().hex[:10]}.db"
                    return {"path": str(path)}, lambda: _unlink_db(path)
                return {"url": res.pg if store == "postgres" else res.redis}, lambda: None

            rounds.append(
                Target(
                    f"raw {store}",
                    "raw",
                    store,
                    "_raw",
                    {"kind": store, "quick": quick},
                    ("raw",),
                    raw_fresh,
                )
            )
    return rounds, once


# == running =========================================================================================


def measure(target: Target, workload: str, baseline: Checkout | None) -> dict[str, Any]:
    spec, cleanup = target.spec_for(workload)
    try:
        result = run_child(target.module, spec, CHILD_TIMEOUT, _env(target.code))
    finally:
        try:
            cleanup()
        except Exception as exc:  # a failed cleanup must not lose the measurement
            print(f"  cleanup after {target.name} {workload} failed: {exc}", file=sys.stderr)
    line = _report.progress_line(target.name, workload, result)
    print(f"  {line}", file=sys.stderr, flush=True)
    if target.group in ("ours", "base"):  # the others (raw writes, peers) run no code of ours
        _baseline.verify(target.name, result, target.code, baseline)
    return result


def measure_all(
    targets: list[Target], workloads: set[str], round_: int, baseline: Checkout | None
) -> list[dict[str, Any]]:
    """Each target's workloads (of ``workloads``), each right before its base twin if any."""
    done = []
    for target in targets:
        for workload in target.workloads:
            if workload in workloads:
                for t in (target, *([target.base] if target.base else [])):
                    done.append(_record(t, workload, round_, measure(t, workload, baseline)))
    return done


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    # SIGTERM unwinds like Ctrl-C, so the servers started below are stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    groups = set(args.only)
    load_before = os.getloadavg()
    with ExitStack() as stack:
        baseline = None
        if args.baseline_ref:
            path = stack.enter_context(_baseline.worktree(ROOT, args.baseline_ref))
            baseline = _baseline.open_checkout(path, args.baseline_ref)
        elif args.baseline:
            baseline = _baseline.open_checkout(Path(args.baseline))
        if baseline is not None:
            dirty = " (with uncommitted changes)" if baseline.dirty else ""
            print(f"baseline: {baseline.commit} in {baseline.root}{dirty}", file=sys.stderr)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cd-bench-")))
        servers: dict[str, dict[str, str]] = {}
        if groups & {"adapters", "temporal"}:
            servers["temporal"] = stack.enter_context(_servers.temporal_server()).info
        if "restate" in groups or ("adapters" in groups and restate_adapter_installed()):
            servers["restate"] = stack.enter_context(_servers.restate_server()).info
        redis_url, redis_volatile = args.redis, False
        if "redis" in args.stores and groups & {"ours", "raw"}:
            own = stack.enter_context(_servers.redis_server()) if not args.redis_given else None
            if own is not None:
                redis_url = own.info["url"]
            redis_info = _servers.redis_describe(redis_url)
            redis_volatile = redis_info["appendonly"] != "yes"
            servers["redis"] = {"url": redis_url, **redis_info}
        if groups & {"ours", "dbos", "raw"} and "postgres" in args.stores:
            servers["postgres"] = {"url": args.pg, **_servers.pg_describe(args.pg)}
        res = Resources(args.pg, redis_url, redis_volatile, tmp)
        print(f"servers: {json.dumps(servers)}", file=sys.stderr)

        rounds_targets, once_targets = build_targets(args, res, servers, baseline)
        measurements: list[dict[str, Any]] = []
        for r in range(1, args.rounds + 1):
            print(f"round {r}/{args.rounds}", file=sys.stderr)
            wanted = {*args.workloads, "raw"}
            measurements += measure_all(rounds_targets, wanted, r, baseline)
        print("once: W3 and W4", file=sys.stderr)
        measurements += measure_all(once_targets, set(args.workloads), 1, baseline)
        if args.profile:
            _profile(args, res)

    return {
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - began, 1),
        "command": args.command,
        "quick": args.quick,
        "rounds": args.rounds,
        "machine": _report.machine(load_before),
        "versions": _report.versions(servers),
        "servers": servers,
        "measurements": measurements,
        **({"baseline": baseline.describe()} if baseline is not None else {}),
    }


def _record(target: Target, workload: str, round_: int, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "target": target.name,
        "group": target.group,
        "backing": target.backing,
        "loop": target.loop,
        "workload": workload,
        "round": round_,
        **target.extra,
        "result": result,
    }


def _profile(args: argparse.Namespace, res: Resources) -> None:
    """W2 under pyinstrument on each of our stores (asyncio); text reports in --out."""
    out = Path(args.out)
    for store in args.stores:
        url, cleanup = res.store_url(store)
        path = out / f"profile-{store}.txt"
        spec = {"workload": "w2", "url": url, "quick": args.quick, "profile": str(path)}
        try:
            result = run_child("_workloads", spec, CHILD_TIMEOUT)
        finally:
            cleanup()
        print(f"  profile {store}: {path} {result.get('error', '')}", file=sys.stderr)


# == command line ====================================================================================


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return items

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round: a smoke test")
    parser.add_argument(
        "--only",
        type=_csv((*GROUPS, "peers")),
        default=list(GROUPS),
        help=f"comma-separated groups: {', '.join(GROUPS)}, peers (= dbos,temporal,restate)",
    )
    parser.add_argument("--stores", type=_csv(STORES), default=list(STORES))
    parser.add_argument("--loops", type=_csv(LOOPS), default=list(LOOPS), help="for W1/W2 of ours")
    parser.add_argument(
        "--workloads", type=_csv(("w1", "w2", "w3", "w4")), default=["w1", "w2", "w3", "w4"]
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="W1/W2 rounds (default 3; quick 1)"
    )
    parser.add_argument(
        "--w3-runs", type=int, default=None, help="W3 parked runs per store (10000)"
    )
    parser.add_argument(
        "--w3-adapter-runs", type=int, default=None, help="W3 parked runs on adapters (1000)"
    )
    parser.add_argument(
        "--pg",
        default=os.environ.get("CORO_DURABLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument(
        "--redis",
        default=None,
        help="a Redis URL to use instead of the harness's own redis-server (AOF everysec)",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="one more adapter target (any cd.Runtime URL), e.g. restate=restate://...",
    )
    parser.add_argument("--sync-steps", action="store_true", help="W1/W2 of ours with sync steps")
    parser.add_argument("--profile", action="store_true", help="W2 under pyinstrument per store")
    parser.add_argument(
        "--out",
        default=None,
        help="results directory (default: benchmarks/results for a whole run, "
        "benchmarks/results/scratch for --quick or a subset)",
    )
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG (no matplotlib)")
    base = parser.add_mutually_exclusive_group()
    base.add_argument(
        "--baseline",
        default=None,
        metavar="DIR",
        help="also measure every target of ours on the code of the checkout DIR, side by side",
    )
    base.add_argument(
        "--baseline-ref",
        default=None,
        metavar="REF",
        help="the same, on a worktree of REF that the harness makes (git worktree add --detach) "
        "and removes at the end",
    )
    parser.add_argument(
        "--from",
        dest="from_json",
        default=None,
        metavar="RESULTS_JSON",
        help="measure nothing: redo the table, table.md and chart from a results.json",
    )
    args = parser.parse_args(argv)
    args.command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    if "peers" in args.only:
        args.only = [g for g in args.only if g != "peers"] + ["dbos", "temporal", "restate"]
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.w3_runs = args.w3_runs or (200 if args.quick else 10_000)
    args.w3_adapter_runs = args.w3_adapter_runs or (20 if args.quick else 1_000)
    args.redis_given = args.redis is not None
    if (args.baseline or args.baseline_ref) and "ours" not in args.only:
        parser.error("--baseline and --baseline-ref compare our targets: add ours to --only")
    args.redis = args.redis or os.environ.get("CORO_DURABLE_TEST_REDIS", "redis://127.0.0.1:6379/0")
    partial = (
        args.quick
        or set(args.only) != set(GROUPS)
        or set(args.stores) != set(STORES)
        or set(args.loops) != set(LOOPS)
        or set(args.workloads) != {"w1", "w2", "w3", "w4"}
        or bool(args.baseline or args.baseline_ref)
    )
    # only a whole run without a baseline replaces the published results; anything else goes
    # to scratch/ (git-ignored)
    args.out = args.out or str(RESULTS_DIR / "scratch" if partial else RESULTS_DIR)
    return args


def restate_adapter_installed() -> bool:
    return importlib.util.find_spec("coro_durable_restate") is not None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        out = Path(args.out if "--out" in args.command else Path(args.from_json).parent)
    else:
        try:
            results = run_all(args)
        except _baseline.BaselineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = _report.tables(results)
    print(tables.text)
    if not args.from_json:
        stamp = results["started_at"].replace(":", "").replace("-", "")[:15]
        for name in ("results.json", f"results-{stamp}.json"):
            (out / name).write_text(json.dumps(results, indent=1) + "\n")
    (out / "table.md").write_text(tables.markdown)
    if not args.no_chart:
        _report.chart(results, out / "steps_per_s.png")
    errors = [m for m in results["measurements"] if "error" in m["result"]]
    written = [*([] if args.from_json else ["results.json"]), "table.md"]
    written += [] if args.no_chart else ["steps_per_s.png"]
    print(
        f"\n{len(results['measurements'])} measurements, {len(errors)} failed, "
        f"{results['duration_s']:.0f} s; written to {out}/ ({', '.join(written)})"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
