"""An AI research pipeline that survives its worker being killed: coro_durable's demo.

    python examples/ai_pipeline.py          (or `coro-durable demo`, or `make demo`)

The workflow (section 2) is what an application writes: a plain ``async def`` that plans with an
LLM, retrieves evidence for each sub-question in parallel, runs a tool the LLM asked for, waits
for a human to approve, and writes the answer. Every step's result is journaled before the
workflow sees it.

The demo (section 3) then does to it what production does: it starts a worker process, starts a
run, SIGKILLs the worker in the middle of the parallel retrieval, starts a new worker, approves
the run as the human reviewer, and proves from the records that the run *resumed* rather than
restarted: the steps finished before the crash came back from the journal, the calls that were in
flight were sent again with the same idempotency key, and no LLM call was billed twice.

The LLM (section 1) is a deterministic fake, no network: it answers after a fixed latency and
bills tokens per idempotency key, like a hosted API honouring an ``Idempotency-Key`` header; it
also logs every physical request, repeats included, so the proof can compare the two.

Everything lives in one file so that it reads top to bottom. The worker is the regular CLI,
``coro-durable worker --app examples/ai_pipeline.py``; it imports this file as a module, which
registers the workflow and its steps (the demo code below only runs as a script). Files go to
``.coro_durable/demo/`` (runs.db: the run store; llm_ledger.db: the fake provider's bill).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import operator
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import coro_durable as cd

# == 1. A fake LLM provider that bills per idempotency key ============================================

LEDGER_ENV = "AI_PIPELINE_LEDGER"  # where the provider keeps its bill; the demo sets it


class FakeLLM:
    """A deterministic stand-in for a hosted LLM API.

    ``complete`` answers after ``latency`` seconds. Like a real provider given an Idempotency-Key,
    it bills the first request with a key and answers any later request with that key from its
    records, free: the bill is written when the request is received, so a client that crashes
    before reading the answer has still paid, and its retry must carry the same key to not pay
    again. Every physical request is logged too, repeats included.
    """

    PRICE_PER_1K_TOKENS = 0.01  # dollars

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bills (idempotency_key TEXT PRIMARY KEY, "
            "prompt_tokens INTEGER, completion_tokens INTEGER, response TEXT, billed_at REAL)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "idempotency_key TEXT, pid INTEGER, billed INTEGER, at REAL)"
        )
        return conn

    def complete(self, prompt: str, *, idempotency_key: str, latency: float = 0.3) -> str:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                "SELECT response FROM bills WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            if row is not None:
                response, billed = str(row[0]), False  # seen this key: answer again, no charge
            else:
                response, billed = _fake_model(prompt), True
                conn.execute(
                    "INSERT INTO bills VALUES (?, ?, ?, ?, ?)",
                    (idempotency_key, _tokens(prompt), _tokens(response), response, time.time()),
                )
            conn.execute(
                "INSERT INTO requests (idempotency_key, pid, billed, at) VALUES (?, ?, ?, ?)",
                (idempotency_key, os.getpid(), billed, time.time()),
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        time.sleep(latency)  # generating and sending the answer; a crash now loses it, not the bill
        return response


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)  # the usual rule of thumb: ~4 characters per token


def _fake_model(prompt: str) -> str:
    """The 'model': deterministic answers for the three kinds of prompt this pipeline sends."""
    task, _, body = prompt.partition("\n")
    if task == "PLAN":
        return json.dumps(
            {
                "sub_questions": [
                    "What breaks when a multi-step LLM pipeline crashes mid-run?",
                    "How do idempotency keys keep retries from billing twice?",
                    "How long do human approvals keep a run waiting?",
                ],
                # the model asks for a tool call: runs/month * crash rate * cost of a re-run ($)
                "calculation": "40000 * 0.03 * 0.42",
            }
        )
    if task == "SUMMARIZE":
        question, *docs = body.split("\n")
        return f"{question} " + " ".join(d.split(". ")[0].rstrip(".") + "." for d in docs)
    if task == "SYNTHESIZE":
        lines = body.split("\n")
        return (
            "Yes. A crash mid-pipeline otherwise re-runs and re-bills every finished step; "
            f"journaling each step avoids about ${lines[1]} a month of re-billed work, keeps "
            f"human approvals waiting for days at no cost, and leaves an audit trail. ({lines[-1]})"
        )
    return "I can only plan, summarize and synthesize."


def llm() -> FakeLLM:
    return FakeLLM(os.environ.get(LEDGER_ENV, ".coro_durable/llm_ledger.db"))


# == 2. The workflow: plan -> retrieve (parallel) -> tool -> human approval -> synthesize ==============

KNOWLEDGE_BASE = {
    "crashes": [
        "A killed worker loses everything held in memory. Restarting from the top repeats "
        "every call already made.",
    ],
    "idempotency": [
        "An idempotency key names one logical request. The provider answers a repeated key "
        "from its records.",
        "Keys must be stable across retries and workers. A key made from the run id and the "
        "step number is.",
    ],
    "approvals": [
        "Reviewers answer in minutes or days. Holding a process open that long does not scale.",
        "A durable wait is a row in a database. The run holds no worker while it waits.",
        "Deploys happen while runs wait. The run must resume on the new code.",
    ],
}


def search(sub_question: str) -> list[str]:
    """The retrieval tool: documents of the knowledge base matching the sub-question."""
    q = sub_question.lower()
    topic = "crashes" if "crash" in q else "idempotency" if "idempotency" in q else "approvals"
    return KNOWLEDGE_BASE[topic]


def plan(question: str) -> dict[str, Any]:
    """LLM step: split the question into sub-questions and name one calculation to run."""
    answer = llm().complete(f"PLAN\n{question}", idempotency_key=cd.idempotency_key())
    result: dict[str, Any] = json.loads(answer)
    return result


def retrieve(sub_question: str) -> dict[str, Any]:
    """Search the knowledge base, then have the LLM summarise what it found. Reading more
    sources takes longer, so the three retrievals finish at different times."""
    docs = search(sub_question)
    summary = llm().complete(
        "\n".join(["SUMMARIZE", sub_question, *docs]),
        idempotency_key=cd.idempotency_key(),
        latency=0.3 * len(docs),
    )
    return {"question": sub_question, "sources": len(docs), "summary": summary}


_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
}


def calculator(expression: str) -> float:
    """The tool the LLM asked for: arithmetic only, parsed (never eval'd)."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](ev(node.operand))
        raise ValueError(f"calculator: not plain arithmetic: {ast.unparse(node)}")

    return round(ev(ast.parse(expression, mode="eval").body), 2)


def synthesize(question: str, notes: list[dict[str, Any]], figure: float, reviewer: str) -> str:
    """LLM step: write the final answer from the notes, the figure and the reviewer's note."""
    prompt = "\n".join(
        ["SYNTHESIZE", question, f"{figure:,.0f}", *(n["summary"] for n in notes), reviewer]
    )
    return llm().complete(prompt, idempotency_key=cd.idempotency_key())


@cd.workflow
async def research(question: str) -> dict[str, Any]:
    """Answer a research question with an LLM, with a human approving before the final answer."""
    steps = await cd.call(plan, question)
    notes = await cd.gather(*(cd.call(retrieve, q) for q in steps["sub_questions"]))
    figure = await cd.call(calculator, steps["calculation"])
    approval = await cd.await_signal("approval", timeout=3 * 24 * 3600)  # holds no worker
    if not approval.get("approved"):
        return {"question": question, "answer": None, "rejected_by": approval.get("by")}
    answer = await cd.call(synthesize, question, notes, figure, approval.get("note", ""))
    return {"question": question, "answer": answer, "approved_by": approval.get("by")}


# == 3. The demo: kill the worker mid-run, resume, approve, prove ======================================

QUESTION = "Should our AI support agent run on durable execution?"
APPROVAL = {"approved": True, "by": "dana@example.com", "note": "Approved: cite the numbers."}
LEASE_TTL = 1.0  # a dead worker's run is taken over after this many seconds


class DemoFailed(Exception):
    pass


def _mark(ok: bool) -> str:
    utf = (sys.stdout.encoding or "").lower().replace("-", "").startswith("utf")
    return ("\u2714" if ok else "\u2718") if utf else ("ok" if ok else "FAIL")


class Workers:
    """Worker subprocesses: `python -m coro_durable worker --app <this file>`, logs to files."""

    def __init__(self, workdir: Path, store_url: str, ledger: Path) -> None:
        self.workdir, self.store_url = workdir, store_url
        self.env = {**os.environ, LEDGER_ENV: str(ledger)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.workdir / f"worker-{len(self.procs) + 1}.log"
        with open(log, "wb") as out:
            command = [
                sys.executable, "-m", "coro_durable", "--store", self.store_url, "worker",
                "--app", str(Path(__file__).resolve()),
                "--lease-ttl", str(LEASE_TTL), "--poll", "0.05",
            ]  # fmt: skip
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.procs.append(proc)
        return proc

    def check_alive(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            n = self.procs.index(proc) + 1
            tail = (self.workdir / f"worker-{n}.log").read_text(errors="replace")[-2000:]
            raise DemoFailed(f"worker {n} exited with code {proc.returncode}:\n{tail}")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _until(
    rt: cd.Runtime,
    run_id: str,
    workers: Workers,
    proc: subprocess.Popen[bytes],
    done: Callable[[cd.RunInfo, list[cd.JournalEntry]], bool],
    what: str,
    timeout: float = 30.0,
) -> list[cd.JournalEntry]:
    deadline = time.monotonic() + timeout
    while True:
        info, entries = await rt.describe(run_id), await rt.history(run_id)
        if done(info, entries):
            return entries
        workers.check_alive(proc)
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout}s waiting for {what} (run: {info})")
        await anyio.sleep(0.02)


@dataclass
class Observed:
    """What the demo saw of the run, for the proof."""

    run_id: str
    pids: tuple[int, int]  # worker 1 (killed), worker 2
    at_kill: dict[int, cd.JournalEntry]  # the journal the moment worker 1 died
    entries: list[cd.JournalEntry]  # the final journal
    info: cd.RunInfo
    result: dict[str, Any]


async def drive(workers: Workers, store_url: str, say: Callable[[str], None]) -> Observed:
    """Start the run, kill worker 1 mid-run, start worker 2, approve, wait for the result."""
    run_id = f"research-{uuid.uuid4().hex[:6]}"
    w1 = workers.start()
    async with cd.Runtime(store_url, worker=False) as rt:
        await rt.start(research, QUESTION, run_id=run_id)
        say(f"worker 1 started (pid {w1.pid}); run {run_id} started: research({QUESTION!r})")

        def retrieving(info: cd.RunInfo, entries: list[cd.JournalEntry]) -> bool:
            done = [e.name for e in entries if e.status == "ok"]
            return "plan" in done and "retrieve" in done

        await _until(rt, run_id, workers, w1, retrieving, "the first retrieval")
        w1.kill()  # SIGKILL: no cleanup, no goodbye; its lease is left to expire
        await anyio.to_thread.run_sync(w1.wait)
        at_kill = {e.seq: e for e in await rt.history(run_id)}
        names = [e.name for e in at_kill.values() if e.status == "ok"]
        say(
            f"SIGKILLed worker 1 with {len(names)} steps journaled ({', '.join(names)}) "
            "and the other retrievals in flight"
        )

        w2 = workers.start()
        say(f"worker 2 started (pid {w2.pid}); it takes the run over once the dead lease expires")

        def awaiting_approval(info: cd.RunInfo, entries: list[cd.JournalEntry]) -> bool:
            return info.status == cd.RunStatus.WAITING and "approval" in (info.waiting_on or "")

        await _until(rt, run_id, workers, w2, awaiting_approval, "the approval wait")
        say("the run waits for signal 'approval' and holds no worker; the reviewer approves")
        await rt.signal(run_id, "approval", APPROVAL, signal_id=f"{run_id}-approval")
        result = await rt.result(run_id, timeout=30)
        say(f"run completed: {result['answer'][:72]}...")
        return Observed(
            run_id,
            (w1.pid, w2.pid),
            at_kill,
            await rt.history(run_id),
            await rt.describe(run_id),
            result,
        )


def _ledger(path: Path) -> tuple[dict[str, list[tuple[int, bool]]], dict[str, int]]:
    """The provider's own records: requests per key [(pid, billed)], tokens billed per key."""
    conn = sqlite3.connect(path)
    try:
        requests: dict[str, list[tuple[int, bool]]] = {}
        for key, pid, billed in conn.execute(
            "SELECT idempotency_key, pid, billed FROM requests ORDER BY id"
        ):
            requests.setdefault(str(key), []).append((int(pid), bool(billed)))
        bills = {
            str(key): int(tokens)
            for key, tokens in conn.execute(
                "SELECT idempotency_key, prompt_tokens + completion_tokens FROM bills"
            )
        }
    finally:
        conn.close()
    return requests, bills


def prove(seen: Observed, ledger: Path) -> bool:
    """Compare the journal with the provider's records; print what each step did and the checks."""
    requests, bills = _ledger(ledger)
    w1, w2 = seen.pids
    rows, from_journal = [], []
    for e in seen.entries:
        if e.kind != "call":
            continue
        sent = requests.get(e.key, [])
        by_w1 = sum(1 for pid, _ in sent if pid == w1)
        by_w2 = sum(1 for pid, _ in sent if pid == w2)
        before = seen.at_kill.get(e.seq)
        if before is not None and before.status == "ok":
            at_kill, after = "journaled", "RE-EXECUTED" if by_w2 else "from the journal"
            from_journal.append(e)
        elif by_w1:
            at_kill, after = "in flight", "re-sent, same key"
        else:
            at_kill, after = "not reached", "executed"
        charged = sum(1 for _, billed in sent if billed)
        rows.append(
            [
                str(e.seq),
                e.name,
                e.key,
                at_kill,
                after,
                f"{by_w1} + {by_w2}" if sent else "- (local tool)",
                "-"
                if not charged
                else f"once, {bills[e.key]} tokens"
                if charged == 1
                else f"{charged} TIMES",
            ]
        )
    headers = [
        "seq",
        "step",
        "idempotency key",
        "at the kill",
        "after restart",
        "requests",
        "billed",
    ]
    print("\nWhat each step did (LLM requests by worker 1 + worker 2, from the provider's log):\n")
    print(table(headers, rows))

    resumed = bool(from_journal) and not any(
        pid == w2 for e in from_journal for pid, _ in requests.get(e.key, [])
    )
    journal_keys = {e.key for e in seen.entries}
    once = all(sum(b for _, b in sent) == 1 for sent in requests.values())
    same_keys = set(requests) <= journal_keys and set(bills) == set(requests)
    completed = seen.info.status == cd.RunStatus.COMPLETED and bool(seen.result.get("answer"))
    spared = sum(bills.get(e.key, 0) for e in from_journal)
    repeats = sum(len(sent) for sent in requests.values()) - len(requests)
    total = sum(bills.values())
    checks = [
        (
            resumed,
            f"resumed, not restarted: the {len(from_journal)} steps journaled before the kill came "
            f"back from the journal; worker 2 never called them ({spared} tokens not paid again)",
        ),
        (
            once and same_keys,
            f"no double billing: {len(bills)} LLM calls, each billed once ({total} tokens, "
            f"${total / 1000 * FakeLLM.PRICE_PER_1K_TOKENS:.4f}); the {repeats} re-sent "
            "in-flight request(s) carried the journal's idempotency key and were answered free",
        ),
        (
            completed,
            "the run completed on worker 2, with the reviewer's approval journaled like any step",
        ),
    ]
    print()
    for ok, text in checks:
        print(f"  {_mark(ok)} {text}")
    return all(ok for ok, _ in checks)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [headers, *rows])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="coro_durable's demo: " + QUESTION)
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(".coro_durable/demo"),
        help="where the run store and the LLM ledger go (wiped first; default .coro_durable/demo)",
    )
    workdir: Path = parser.parse_args(argv).dir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    store_url = f"sqlite:///{_shorter(workdir)}/runs.db"
    ledger = workdir / "llm_ledger.db"
    workers = Workers(workdir, store_url, ledger)
    t0 = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - t0:4.1f}s] {text}", flush=True)

    print("coro_durable demo: an AI research pipeline whose worker is killed mid-run\n")
    try:
        seen = anyio.run(drive, workers, store_url, say)
    except (DemoFailed, cd.CoroDurableError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        workers.stop_all()
    proven = prove(seen, ledger)

    show = ["coro-durable", "--store", store_url, "show", seen.run_id]
    print(f"\nThe audit trail, as `{' '.join(show)}` prints it:\n", flush=True)
    subprocess.run([sys.executable, "-m", "coro_durable", *show[1:]], check=False)
    script = _shorter(Path(__file__).resolve())
    print(f"\nTry: coro-durable --store {store_url} replay {seen.run_id} --app {script}")
    print(f"\n{'PROOF HOLDS' if proven else 'PROOF FAILED'} ({time.monotonic() - t0:.1f}s)")
    return 0 if proven else 1


def _shorter(path: Path) -> str:
    """``path`` relative to the current directory when it is inside it, for shorter commands."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


if __name__ == "__main__":
    sys.exit(main())
