"""The crash-fuzz suite's generated workflows: a plan interpreter, its steps, and their world.

A *plan* is a JSON list of ops; the workflow ``crashfuzz_plan(pid, ops)`` interprets it:

    ["call", leaf, caught]                         one step, maybe retried
    ["gather", [leaf, ...], caught, return_exceptions]
    ["sleep", seconds]                             a durable timer
    ["signal", name, timeout]                      wait for a signal (its payload is "p:<name>")
    ["random", tag]                                cd.random() fed into a step's arguments
    ["race", leaf, caught]                         cd.first(the step, a 1-hour timer): the step
                                                   wins, [0, value] (its failure is raised)
    ["signal_race", name]                          cd.first(the signal, a 1-hour timer): [0, payload]
    ["send", name]                                 cd.send to the run itself, then take the signal
                                                   and check that no second copy came: [payload, "once"]

where a leaf is ``[tag, mode, attempts, backoff, is_async, delay]``: the step's body takes
``delay`` seconds between its invocation and its effect (long enough, a lease can expire under it).

``mode`` is "ok", "flaky" (the first attempt fails; only with attempts >= 2, so the outcome does
not depend on whether a crash hid that failure) or "fail" (every attempt fails). A failing step
raises ``RuntimeError("boom <tag>")``; ``caught`` wraps it in try/except inside the workflow,
otherwise the run fails. :func:`expected` computes what the run must end with, crashes or not.

Every step goes through the current :data:`WORLD`: it logs the invocation, applies its effect to
an idempotent sink keyed by ``cd.idempotency_key()`` (first write wins, like an API honouring an
Idempotency-Key) and counts physical applications. The workflow tells the world which outcomes it
has *seen*; a step invoked after the workflow saw its outcome is a violation (resume, never
restart) found without any help from the runtime's hooks.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio

import coro_durable as cd

WORKFLOW = "crashfuzz_plan"
Plan = list[list[Any]]
#: Statuses a run does not leave by itself (quarantined counts: the checks then say why).
FINAL = frozenset(
    {cd.RunStatus.COMPLETED, cd.RunStatus.FAILED, cd.RunStatus.CANCELLED, cd.RunStatus.QUARANTINED}
)


class World:
    """What the steps do to the outside world, and what the workflow saw (one process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sink: dict[str, str] = {}  # idempotency key -> tag: the effect, applied once per key
        self.applied: Counter[str] = Counter()  # physical applications per key
        self.failures: Counter[str] = Counter()  # failed attempts per key
        self.invocations: list[tuple[str, str]] = []  # (key, tag) per call of a step body
        self.seen: set[tuple[str, str]] = set()  # (pid, tag) outcomes the workflow was fed
        self.violations: list[str] = []
        # Whether the step running here belongs to an activation whose lease a newer claim took
        # (set by the machine from its trace): such a worker may still run the step it was about
        # to run when it lost the lease, even one another worker has since completed.
        self.stale: Callable[[str], bool] = lambda run_id: False

    def invoked(self, pid: str, tag: str) -> str:
        key = cd.idempotency_key()
        stale = self.stale(key.rsplit(":", 1)[0])
        with self.lock:
            self.invocations.append((key, tag))
            if (pid, tag) in self.seen and not stale:
                self.violations.append(
                    f"step {tag} of {pid} (key {key}) ran after the workflow had been fed its "
                    "outcome: it was not in flight at a crash, yet it ran again"
                )
        return key

    def apply(self, key: str, tag: str, mode: str) -> str:
        with self.lock:
            if mode == "fail" or (mode == "flaky" and self.failures[key] == 0):
                self.failures[key] += 1
                raise RuntimeError(f"boom {tag}")
            self.sink.setdefault(key, tag)
            self.applied[key] += 1
        return f"v:{tag}"

    def saw(self, pid: str, tags: list[str]) -> None:
        with self.lock:
            self.seen.update((pid, tag) for tag in tags)

    def sink_for(self, run_id: str) -> dict[str, str]:
        with self.lock:
            return {k: v for k, v in self.sink.items() if k.rsplit(":", 1)[0] == run_id}


class SqliteWorld(World):
    """The same world in an SQLite file, shared by worker processes (the real-process layer)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        db = self._db()
        db.executescript(
            "CREATE TABLE IF NOT EXISTS sink (key TEXT PRIMARY KEY, tag TEXT);"
            "CREATE TABLE IF NOT EXISTS applied (key TEXT, pid INTEGER, at REAL);"
            "CREATE TABLE IF NOT EXISTS failures (key TEXT);"
            "CREATE TABLE IF NOT EXISTS invocations (key TEXT, tag TEXT, pid INTEGER, at REAL);"
            "CREATE TABLE IF NOT EXISTS seen (pid TEXT, tag TEXT, PRIMARY KEY (pid, tag));"
            "CREATE TABLE IF NOT EXISTS violations (message TEXT, pid INTEGER);"
        )
        db.close()

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def invoked(self, pid: str, tag: str) -> str:
        key = cd.idempotency_key()
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO invocations VALUES (?, ?, ?, ?)", (key, tag, os.getpid(), time.time())
            )
            if db.execute("SELECT 1 FROM seen WHERE pid = ? AND tag = ?", (pid, tag)).fetchone():
                db.execute(
                    "INSERT INTO violations VALUES (?, ?)",
                    (
                        f"step {tag} of {pid} (key {key}) ran after the workflow had seen its "
                        f"outcome (worker pid {os.getpid()})",
                        os.getpid(),
                    ),
                )
            db.execute("COMMIT")
        finally:
            db.close()
        return key

    def apply(self, key: str, tag: str, mode: str) -> str:
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            failed = db.execute("SELECT count(*) FROM failures WHERE key = ?", (key,)).fetchone()[0]
            if mode == "fail" or (mode == "flaky" and failed == 0):
                db.execute("INSERT INTO failures VALUES (?)", (key,))
                db.execute("COMMIT")
                raise RuntimeError(f"boom {tag}")
            db.execute("INSERT OR IGNORE INTO sink VALUES (?, ?)", (key, tag))
            db.execute("INSERT INTO applied VALUES (?, ?, ?)", (key, os.getpid(), time.time()))
            db.execute("COMMIT")
        finally:
            db.close()
        return f"v:{tag}"

    def saw(self, pid: str, tags: list[str]) -> None:
        db = self._db()
        try:
            db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", [(pid, t) for t in tags])
        finally:
            db.close()

    def sink_for(self, run_id: str) -> dict[str, str]:
        db = self._db()
        try:
            rows = db.execute("SELECT key, tag FROM sink").fetchall()
        finally:
            db.close()
        return {k: v for k, v in rows if k.rsplit(":", 1)[0] == run_id}

    def stored_violations(self, stalled: frozenset[int] | set[int] = frozenset()) -> list[str]:
        """Steps run after the workflow saw their outcome, except by workers that logged a lost
        lease (they may still run the step they were about to run)."""
        db = self._db()
        try:
            rows = db.execute("SELECT message, pid FROM violations").fetchall()
        finally:
            db.close()
        return [m for m, pid in rows if pid not in stalled]


WORLD: World = World()  # the tests install a fresh one per example


# -- steps --------------------------------------------------------------------------------------------


def step(pid: str, tag: str, mode: str, delay: float) -> str:
    """A sync step (runs in a worker thread)."""
    key = WORLD.invoked(pid, tag)
    time.sleep(delay)
    return WORLD.apply(key, tag, mode)


async def astep(pid: str, tag: str, mode: str, delay: float) -> str:
    """An async step (runs on the worker's event loop)."""
    key = WORLD.invoked(pid, tag)
    await anyio.sleep(delay)
    return WORLD.apply(key, tag, mode)


def echo(pid: str, tag: str, value: float) -> str:
    """A step fed a journaled random number: replaying a different number would change its
    arguments, and the journal's digest check would refuse the run."""
    assert 0.0 <= value < 1.0
    return WORLD.apply(WORLD.invoked(pid, tag), tag, "ok")


def _call(pid: str, leaf: list[Any]) -> Any:
    tag, mode, attempts, backoff, is_async, delay = leaf
    policy = cd.RetryPolicy(
        max_attempts=attempts, initial_interval=backoff, backoff_coefficient=1.0
    )
    return cd.call(astep if is_async else step, pid, tag, mode, delay, retry=policy)


@cd.workflow(name=WORKFLOW)
async def crashfuzz_plan(pid: str, ops: Plan) -> list[Any]:
    out: list[Any] = []
    for op in ops:
        kind = op[0]
        if kind in ("call", "gather"):
            leaves = [op[1]] if kind == "call" else op[1]
            caught = op[2]
            tags = [leaf[0] for leaf in leaves]
            try:
                if kind == "call":
                    value: Any = await _call(pid, op[1])
                else:
                    values = await cd.gather(
                        *(_call(pid, leaf) for leaf in leaves), return_exceptions=op[3]
                    )
                    value = [
                        f"err:{v.message}" if isinstance(v, cd.StepError) else v for v in values
                    ]
            except cd.StepError as exc:
                WORLD.saw(pid, tags)
                if not caught:
                    raise
                value = f"caught:{exc.message}"
            WORLD.saw(pid, tags)
            out.append(value)
        elif kind == "sleep":
            await cd.sleep(op[1])
            out.append("slept")
        elif kind == "signal":
            out.append(await cd.await_signal(op[1], timeout=op[2]))
        elif kind == "random":
            value = await cd.random()
            out.append(await cd.call(echo, pid, op[1], value))
            WORLD.saw(pid, [op[1]])
        elif kind == "race":
            tag, caught = op[1][0], op[2]
            try:
                index, won = await cd.first(_call(pid, op[1]), cd.sleep(3600))
                value = [index, won]
            except cd.StepError as exc:
                WORLD.saw(pid, [tag])
                if not caught:
                    raise
                value = f"caught:{exc.message}"
            WORLD.saw(pid, [tag])
            out.append(value)
        elif kind == "signal_race":
            index, payload = await cd.first(cd.await_signal(op[1]), cd.sleep(3600))
            out.append([index, payload])
        elif kind == "send":
            await cd.send(cd.workflow_info().run_id, op[1], f"p:{op[1]}")
            got = await cd.await_signal(op[1])
            try:
                await cd.await_signal(op[1], timeout=0)
                again = "twice"
            except cd.SignalTimeout:
                again = "once"
            out.append([got, again])
        else:  # pragma: no cover - plans come from the strategies
            raise ValueError(f"unknown op {op!r}")
    return out


# -- the oracle -----------------------------------------------------------------------------------


def _fails(mode: str) -> bool:
    return mode == "fail"


def expected(ops: Plan) -> tuple[str, Any]:
    """How a run of ``ops`` must end: ("completed", result) or ("failed", error dict)."""
    out: list[Any] = []
    for op in ops:
        kind = op[0]
        if kind in ("call", "race"):  # a race of the step against a 1-hour timer: index 0 wins
            tag, mode = op[1][0], op[1][1]
            if _fails(mode):
                if not op[2]:
                    return ("failed", {"type": "RuntimeError", "message": f"boom {tag}"})
                out.append(f"caught:boom {tag}")
            else:
                out.append(f"v:{tag}" if kind == "call" else [0, f"v:{tag}"])
        elif kind == "gather":
            _, leaves, caught, return_exceptions = op
            if return_exceptions:
                out.append([f"err:boom {t}" if _fails(m) else f"v:{t}" for t, m, *_ in leaves])
                continue
            failing = [t for t, m, *_ in leaves if _fails(m)]
            if failing and not caught:
                return ("failed", {"type": "RuntimeError", "message": f"boom {failing[0]}"})
            out.append(f"caught:boom {failing[0]}" if failing else [f"v:{t}" for t, *_ in leaves])
        elif kind == "sleep":
            out.append("slept")
        elif kind == "signal":
            out.append(f"p:{op[1]}")
        elif kind == "random":
            out.append(f"v:{op[1]}")
        elif kind == "signal_race":
            out.append([0, f"p:{op[1]}"])
        elif kind == "send":
            out.append([f"p:{op[1]}", "once"])
    return ("completed", out)


def signals_of(ops: Plan) -> list[str]:
    """The signal names a plan waits for from outside, in order (not those it sends itself)."""
    return [op[1] for op in ops if op[0] in ("signal", "signal_race")]


def steps_of(ops: Plan) -> dict[str, str]:
    """tag -> mode of every step the plan may run."""
    tags: dict[str, str] = {}
    for op in ops:
        if op[0] in ("call", "race"):
            tags[op[1][0]] = op[1][1]
        elif op[0] == "gather":
            tags.update({leaf[0]: leaf[1] for leaf in op[1]})
        elif op[0] == "random":
            tags[op[1]] = "ok"
    return tags


def check_finished_run(
    run_id: str, ops: Plan, run: cd.RunInfo, history: list[cd.JournalEntry], world: World
) -> list[str]:
    """Problems with a finished run: its outcome, and every effect applied exactly once."""
    problems: list[str] = []
    want = expected(ops)
    got: tuple[str, Any] = (
        ("completed", run.result)
        if run.status == cd.RunStatus.COMPLETED
        else (run.status, run.error)
    )
    if got != want:
        problems.append(f"run {run_id} ended {got}, the plan says {want}")
    ok_steps = {
        e.key: e.arguments[0][1]
        for e in history
        if e.kind == "call" and e.status == "ok" and isinstance(e.arguments, list)
    }
    sink = world.sink_for(run_id)
    for key, tag in ok_steps.items():
        if sink.get(key) != tag:
            problems.append(
                f"run {run_id}: step {tag} succeeded (journal key {key}) but the sink holds "
                f"{sink.get(key)!r} under that key: its effect was not applied exactly once under "
                "its own idempotency key"
            )
    for key in sorted(set(sink) - set(ok_steps)):
        problems.append(
            f"run {run_id}: the sink holds an effect under key {key} ({sink[key]}) that no "
            "successful journal entry accounts for"
        )
    return problems
