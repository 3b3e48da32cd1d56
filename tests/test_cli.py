"""The `coro-durable` CLI: in-process through main([...]) on a SQLite store in tmp_path, plus a few
real processes (`python -m coro_durable`, the installed `coro-durable` script, SIGTERM, payloads
too big for a command line, the worker's log), and the Runtime's worker log on every store."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable.cli import _main as _cli
from coro_durable.cli._main import main
from coro_durable.testing import Fault, corrupt_row, inject, wait_for_status

CLI = [sys.executable, "-m", "coro_durable"]

APP_V1 = """
import anyio
import coro_durable as cd


def greet_step(name):
    return f"hello {name}"


def shout(text):
    return text.upper()


def explode(what):
    raise ValueError(f"cannot handle {what}")


async def slow_step():
    await anyio.sleep(30)
    return "slow"


@cd.workflow(name="cli_greet")
async def cli_greet(name, punctuation="!"):
    return await cd.call(greet_step, name) + punctuation


@cd.workflow(name="cli_approval")
async def cli_approval(item):
    draft = await cd.call(greet_step, item)
    verdict = await cd.await_signal("approval", timeout=3600)
    final = await cd.call(shout, draft)
    return {"final": final, "verdict": verdict}


@cd.workflow(name="cli_fail")
async def cli_fail(what):
    return await cd.call(explode, what, retry=cd.RetryPolicy(max_attempts=1))


@cd.workflow(name="cli_slow")
async def cli_slow():
    return await cd.call(slow_step)
"""

# The same workflow name, changed code: it now calls shout() first, where the journal has greet_step.
APP_V2 = """
import coro_durable as cd


def greet_step(name):
    return f"hello {name}"


def shout(text):
    return text.upper()


@cd.workflow(name="cli_approval")
async def cli_approval(item):
    loud = await cd.call(shout, item)
    verdict = await cd.await_signal("approval", timeout=3600)
    return {"final": loud, "verdict": verdict}
"""


@pytest.fixture(scope="session")
def apps(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Paths of the two app modules (v1 is imported in-process; v2 only in subprocesses)."""
    folder = tmp_path_factory.mktemp("apps")
    (folder / "cd_cli_app.py").write_text(APP_V1)
    (folder / "cd_cli_app_v2.py").write_text(APP_V2)
    return str(folder / "cd_cli_app.py"), str(folder / "cd_cli_app_v2.py")


@pytest.fixture
def app(apps: tuple[str, str]) -> str:
    return apps[0]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], url: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run main(["--store", url, *args]) in-process; return (exit code, stdout, stderr).

    Tables are as wide as the terminal: pin it, so a test sees the same table everywhere."""
    monkeypatch.setenv("COLUMNS", "120")

    def run(*args: str, store: str | None = url) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([*(["--store", store] if store else []), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def work(cli: Cli, app: str) -> str:
    """Let an in-process worker run everything runnable, then return its log."""
    code, _, err = cli("worker", "--app", app, "--exit-when-idle", "--poll", "0.02")
    assert code == 0, err
    return err


def show_json(cli: Cli, run_id: str) -> dict[str, Any]:
    code, out, err = cli("show", run_id, "--json")
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def fields(show_output: str) -> dict[str, str]:
    """The `show` header (before the journal table) as {label: value}."""
    header = show_output.split("\n\n")[0]
    pairs = [re.split(r"  +", line, maxsplit=1) for line in header.split("\n")]
    return {pair[0]: pair[1] for pair in pairs}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CORO_DURABLE_STORE"}


# -- start / list / show / worker ------------------------------------------------------------------


def test_start_work_list_and_show(cli: Cli, app: str) -> None:
    """A run started from the CLI is executed by `worker`, then listed and shown with its journal."""
    code, out, _ = cli("start", "cli_greet", '["ada"]', "--run-id", "r-1", "--app", app)
    assert (code, out) == (0, "r-1\n")
    code, out, _ = cli("list")
    assert code == 0
    assert out.split("\n")[0].split() == [
        "run_id",
        "workflow",
        "status",
        "step",
        "waiting_on",
        "updated",
    ]
    assert out.split("\n")[1].split()[:4] == ["r-1", "cli_greet", "pending", "0"]

    log = work(cli, app)
    assert "claimed run r-1 (cli_greet" in log
    assert "run r-1 completed" in log

    code, out, _ = cli("list")
    assert out.split("\n")[1].split()[:4] == ["r-1", "cli_greet", "completed", "1"]
    code, out, _ = cli("show", "r-1")
    assert code == 0
    head = fields(out)
    assert (head["status"], head["result"], head["inputs"]) == (
        "completed",
        '"hello ada!"',
        '["ada"]',
    )
    header, row = out.split("\n\n")[1].strip().split("\n")
    assert header.split() == [
        "seq",
        "kind",
        "name",
        "status",
        "attempts",
        "key",
        "duration",
        "result",
        "/",
        "error",
    ]
    assert row.split()[:6] == ["0", "call", "greet_step", "ok", "1", "r-1:0"]
    assert row.endswith('"hello ada"')

    data = show_json(cli, "r-1")
    assert data["run"]["status"] == "completed"
    assert data["run"]["result"] == "hello ada!"
    assert data["run"]["inputs"] == {"args": ["ada"], "kwargs": {}}
    (entry,) = data["journal"]
    assert entry["key"] == "r-1:0"
    assert entry["args"] == [["ada"], {}]
    assert entry["result"] == "hello ada"
    assert (entry["kind"], entry["name"], entry["status"], entry["attempts"]) == (
        "call",
        "greet_step",
        "ok",
        1,
    )


def test_worker_max_runs(cli: Cli, app: str) -> None:
    """worker --max-runs N exits 0 once N runs reached a final state on it."""
    cli("start", "cli_greet", '["m"]', "--run-id", "m-1", "--app", app)
    code, _, err = cli("worker", "--app", app, "--max-runs", "1", "--poll", "0.02")
    assert code == 0
    assert "run m-1 completed" in err
    assert "worker stopped: 1 run(s) finished (--max-runs)" in err


def test_start_inputs_forms_and_idempotency(cli: Cli, app: str) -> None:
    """JSON_ARGS may be a list, an object (kwargs) or one value; restarting a run_id is idempotent
    with the same inputs and refused with others."""
    kwargs = '{"name": "bo", "punctuation": "?"}'
    assert cli("start", "cli_greet", kwargs, "--run-id", "kw", "--app", app)[0] == 0
    assert cli("start", "cli_greet", '"cy"', "--run-id", "one", "--app", app)[0] == 0
    code, out, err = cli("start", "cli_greet", '"cy"', "--run-id", "one", "--app", app)
    assert (code, out) == (0, "one\n")
    assert "already exists" in err
    code, out, err = cli("start", "cli_greet", '"other"', "--run-id", "one", "--app", app)
    assert code == 2
    assert err.startswith("coro-durable: error: run 'one' already exists")
    code, _, err = cli("start", "cli_greet", "[not json", "--run-id", "bad", "--app", app)
    assert code == 2
    assert "JSON_ARGS is not valid JSON" in err
    work(cli, app)
    assert show_json(cli, "kw")["run"]["result"] == "hello bo?"
    assert show_json(cli, "one")["run"]["result"] == "hello cy!"
    code, out, _ = cli("start", "cli_greet", '["x"]', "--app", app)  # a generated run id
    assert code == 0
    assert len(out.strip()) == 32


def test_start_with_app_checks_the_workflow_name(cli: Cli, app: str) -> None:
    """With --app, an unknown workflow name fails at once, naming the registered workflows."""
    code, out, err = cli("start", "cli_nope", "[]", "--app", app)
    assert (code, out) == (2, "")
    assert "no workflow named 'cli_nope'" in err
    assert "cli_greet" in err


def test_start_without_app_checks_the_worker_registry(cli: Cli) -> None:
    """Without --app, a name no live worker serves fails with exit 2 and the way out, creating
    nothing; --allow-unknown starts it, and `show` notes that no live worker serves it; an
    empty name is refused."""
    code, out, err = cli("start", "cli_typo", "[]", "--run-id", "t-1")
    assert (code, out) == (2, "")
    assert err.startswith("coro-durable: error: no workflow named 'cli_typo'")
    assert "no worker is live" in err and "--allow-unknown" in err
    assert json.loads(cli("list", "--json")[1]) == []
    code, out, err = cli("start", "cli_typo", "[]", "--run-id", "t-1", "--allow-unknown")
    assert (code, out) == (0, "t-1\n")
    code, out, _ = cli("show", "t-1")
    assert code == 0
    assert fields(out)["note"].startswith("no live worker serves workflow 'cli_typo'")
    assert "no live worker serves" in show_json(cli, "t-1")["run"]["note"]
    code, out, err = cli("start", "", "[]", "--allow-unknown")
    assert (code, out) == (2, "")
    assert "the workflow name is empty" in err


def test_workers_without_any_live_worker(cli: Cli) -> None:
    """`workers` on a store nobody works on says so (exit 0); --json prints an empty list."""
    cli("start", "cli_typo", "[]", "--allow-unknown")  # the store exists
    code, out, err = cli("workers")
    assert (code, out, err) == (0, "", "no live workers\n")
    code, out, _ = cli("workers", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_workers_lists_a_worker_process_and_start_checks_it(
    url: str, app: str, tmp_path: Path
) -> None:
    """A `worker --app` process is listed by `workers` (id, host, pid, its workflows, last seen)
    while it runs; `start` without --app accepts a name it serves and refuses a typo with the
    live worker named in the message; after SIGTERM it is gone from the list."""
    env = clean_env()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--store", url, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=30,
        )

    assert run("start", "cli_greet", '["x"]', "--run-id", "before", "--app", app).returncode == 0
    proc = subprocess.Popen(
        [*CLI, "--store", url, "worker", "--app", app, "--poll", "0.02"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while not json.loads(run("workers", "--json").stdout or "[]"):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (worker,) = json.loads(run("workers", "--json").stdout)
        assert worker["pid"] == proc.pid
        assert f":{proc.pid}:" in worker["worker_id"]  # host:pid:random
        assert {"cli_greet", "cli_approval", "cli_fail", "cli_slow"} <= set(worker["workflows"])
        table = run("workers")
        assert table.returncode == 0
        header, row = table.stdout.strip().split("\n")
        assert header.split() == ["worker_id", "host", "pid", "workflows", "last", "seen"]
        assert row.split()[:3] == [worker["worker_id"], worker["host"], str(proc.pid)]
        assert "cli_greet" in row and row.endswith(" ago")

        typo = run("start", "cli_gret", '["x"]')
        assert typo.returncode == 2
        assert "Traceback" not in typo.stderr
        assert "no workflow named 'cli_gret'" in typo.stderr
        assert f"{worker['worker_id']} serves cli_approval, cli_fail, cli_greet" in typo.stderr
        served = run("start", "cli_greet", '["w"]', "--run-id", "served")
        assert (served.returncode, served.stdout) == (0, "served\n")
        assert json.loads(run("result", "served", "--timeout", "20").stdout) == "hello w!"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    gone = run("workers")
    assert (gone.returncode, gone.stdout, gone.stderr) == (0, "", "no live workers\n")


def test_list_filters_and_json(cli: Cli, app: str) -> None:
    """list filters by status and workflow, limits, and prints JSON for scripts."""
    for i in range(3):
        cli("start", "cli_greet", f'["n{i}"]', "--run-id", f"g{i}", "--app", app)
    cli("start", "cli_approval", '["doc"]', "--run-id", "a0", "--app", app)
    work(cli, app)
    code, out, _ = cli("list", "--status", "waiting")
    assert code == 0
    lines = out.strip().split("\n")
    assert len(lines) == 2
    assert lines[1].split()[:3] == ["a0", "cli_approval", "waiting"]
    assert "signal 'approval'" in lines[1]
    code, out, _ = cli("list", "--workflow", "cli_greet", "--json")
    runs = json.loads(out)
    assert sorted(r["run_id"] for r in runs) == ["g0", "g1", "g2"]
    assert {r["status"] for r in runs} == {"completed"}
    code, out, _ = cli("list", "--limit", "2", "--json")
    assert len(json.loads(out)) == 2
    code, out, err = cli("list", "--status", "failed")
    assert (code, out) == (0, "")
    assert "no runs match" in err


# -- signals, results, cancel ----------------------------------------------------------------------


def test_signal_wakes_a_waiting_run_once_per_signal_id(cli: Cli, app: str) -> None:
    """`signal` delivers a JSON payload that the waiting run consumes; the same --signal-id twice
    is delivered once; `result` prints the run's result as JSON."""
    cli("start", "cli_approval", '["memo"]', "--run-id", "s-1", "--app", app)
    work(cli, app)
    info = show_json(cli, "s-1")["run"]
    assert (info["status"], info["waiting_on"]) == ("waiting", "signal 'approval'")
    code, out, _ = cli("show", "s-1")
    assert fields(out)["waiting on"].startswith("signal 'approval' until ")
    assert "(waiting, due in" in out

    code, out, _ = cli("signal", "s-1", "approval", '{"ok": true}', "--signal-id", "sig-1")
    assert (code, out) == (0, "signal 'approval' delivered to run s-1\n")
    code, out, _ = cli("signal", "s-1", "approval", '{"ok": true}', "--signal-id", "sig-1")
    assert code == 0
    assert "already delivered" in out
    work(cli, app)
    code, out, _ = cli("result", "s-1")
    assert code == 0
    assert json.loads(out) == {"final": "HELLO MEMO", "verdict": {"ok": True}}
    journal = show_json(cli, "s-1")["journal"]
    assert [(e["kind"], e["name"], e["status"]) for e in journal] == [
        ("call", "greet_step", "ok"),
        ("signal", "approval", "ok"),
        ("call", "shout", "ok"),
    ]
    code, _, err = cli("signal", "s-1", "approval", "{bad")
    assert code == 2
    assert "signal payload is not valid JSON" in err
    code, _, err = cli("signal", "s-1", "approval", "null")
    assert code == 2
    assert "already completed" in err


def test_list_finds_the_runs_waiting_on_a_signal(cli: Cli, app: str) -> None:
    """`list --waiting-for signal --wait-name approval` lists the runs waiting on that signal
    (and --json carries their structured waits), not runs waiting on nothing or done;
    --wait-name alone is refused with what to add."""
    cli("start", "cli_approval", '["one"]', "--run-id", "w-1", "--app", app)
    cli("start", "cli_approval", '["two"]', "--run-id", "w-2", "--app", app)
    cli("start", "cli_greet", '["ada"]', "--run-id", "g-1", "--app", app)
    work(cli, app)
    code, out, _ = cli("list", "--waiting-for", "signal", "--wait-name", "approval", "--json")
    assert code == 0
    runs = json.loads(out)
    assert [r["run_id"] for r in runs] == ["w-2", "w-1"]
    assert all(
        [(w["kind"], w["name"]) for w in r["waits"]] == [("signal", "approval")] for r in runs
    )
    code, out, _ = cli("list", "--waiting-for", "signal", "--wait-name", "other")
    assert code == 0 and out == ""
    code, out, _ = cli("list", "--waiting-for", "timer", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, _, err = cli("list", "--wait-name", "approval")
    assert code == 2 and "needs waiting_for" in err


def test_tags_from_start_to_list_and_show(cli: Cli, app: str) -> None:
    """`start --tag k=v` tags the run; `list --tag` (repeatable: every one) finds it; `show`
    and `show --json` print the tags; a malformed --tag is a usage error."""
    cli("start", "cli_greet", '["a"]', "--run-id", "g-1", "--tag", "tenant=acme", "--app", app)
    cli("start", "cli_greet", '["b"]', "--run-id", "g-2", "--tag", "tenant=acme", "--tag",
        "tier=gold", "--app", app)  # fmt: skip
    cli("start", "cli_greet", '["c"]', "--run-id", "g-3", "--app", app)
    code, out, _ = cli("list", "--tag", "tenant=acme", "--json")
    assert code == 0 and [r["run_id"] for r in json.loads(out)] == ["g-2", "g-1"]
    code, out, _ = cli("list", "--tag", "tenant=acme", "--tag", "tier=gold", "--json")
    assert [r["run_id"] for r in json.loads(out)] == ["g-2"]
    code, out, _ = cli("show", "g-2")
    assert fields(out)["tags"] == "tenant=acme tier=gold"
    assert show_json(cli, "g-2")["run"]["tags"] == {"tenant": "acme", "tier": "gold"}
    with pytest.raises(SystemExit) as exc:
        main(["list", "--tag", "tenant"])
    assert exc.value.code == 2


def test_failed_run_shows_its_error_and_result_exits_1(cli: Cli, app: str) -> None:
    """A failed run: show prints the step's error, `result` exits 1 with one line, no traceback."""
    cli("start", "cli_fail", '["lemons"]', "--run-id", "f-1", "--app", app)
    work(cli, app)
    code, out, _ = cli("show", "f-1")
    head = fields(out)
    assert head["status"] == "failed"
    assert head["error"] == "ValueError: cannot handle lemons"  # the step's own error
    assert "ValueError: cannot handle lemons" in out.split("\n\n")[1]
    entry = show_json(cli, "f-1")["journal"][0]
    assert entry["status"] == "error"
    assert entry["error"] == {"type": "ValueError", "message": "cannot handle lemons"}
    code, out, err = cli("result", "f-1")
    assert (code, out) == (1, "")
    assert err == "coro-durable: error: run 'f-1' failed: ValueError: cannot handle lemons\n"


def test_cancel_pending_and_waiting_runs(cli: Cli, app: str) -> None:
    """cancel ends a never-started run at once, and a waiting run at its pending await (via a
    worker); cancelling a finished run is a no-op; result of a cancelled run exits 1."""
    cli("start", "cli_greet", '["x"]', "--run-id", "c-new", "--app", app)
    code, out, _ = cli("cancel", "c-new")
    assert (code, out) == (0, "run c-new cancelled\n")
    cli("start", "cli_approval", '["y"]', "--run-id", "c-wait", "--app", app)
    work(cli, app)
    code, out, _ = cli("cancel", "c-wait")
    assert code == 0
    assert "cancellation of run c-wait requested" in out
    work(cli, app)
    data = show_json(cli, "c-wait")
    assert data["run"]["status"] == "cancelled"
    assert data["journal"][-1]["error"]["type"] == "RunCancelledError"
    code, out, _ = cli("cancel", "c-wait")
    assert (code, out) == (0, "run c-wait is already cancelled; nothing to cancel\n")
    code, _, err = cli("result", "c-wait")
    assert code == 1
    assert "was cancelled" in err


# -- replay, quarantine, resume -----------------------------------------------------------------------


def test_replay_matches_unchanged_code(cli: Cli, app: str) -> None:
    """replay re-executes a waiting run and a completed run against their journals: match, exit 0."""
    cli("start", "cli_approval", '["doc"]', "--run-id", "rp", "--app", app)
    cli("start", "cli_greet", '["doc"]', "--run-id", "rp-done", "--app", app)
    work(cli, app)
    code, out, _ = cli("replay", "rp", "--app", app)
    assert code == 0
    assert out.startswith("match: run rp: matched; the run is waiting at seq 1")
    code, out, _ = cli("replay", "rp-done", "--app", app)
    assert code == 0
    assert "matched all 1 entries; completed" in out


def test_changed_code_diverges_is_quarantined_and_resumes(
    cli: Cli, app: str, apps: tuple[str, str], url: str, tmp_path: Path
) -> None:
    """Deploying changed code: replay reports the first divergence (exit 1) and writes nothing; a
    worker on the new code quarantines the run; after restoring the code `resume` releases it and
    it completes."""
    v2 = apps[1]
    cli("start", "cli_approval", '["doc"]', "--run-id", "q-1", "--app", app)
    work(cli, app)
    before = show_json(cli, "q-1")

    replay = subprocess.run(
        [*CLI, "--store", url, "replay", "q-1", "--app", v2],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=30,
    )
    assert replay.returncode == 1, replay.stderr
    assert replay.stdout.startswith("DIVERGED: run q-1 at seq 0")
    assert "call(greet_step)" in replay.stdout
    assert "call(shout)" in replay.stdout
    assert show_json(cli, "q-1") == before  # replay wrote nothing

    cli("signal", "q-1", "approval", '"go"')
    worker = subprocess.run(
        [*CLI, "--store", url, "worker", "--app", v2, "--exit-when-idle", "--poll", "0.02"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=30,
    )
    assert worker.returncode == 0, worker.stderr
    assert "run q-1 quarantined" in worker.stderr
    code, out, _ = cli("show", "q-1")
    head = fields(out)
    assert head["status"] == "quarantined"
    assert head["last crash"].startswith("NonDeterminismError: run 'q-1' diverged")
    code, _, err = cli("result", "q-1")
    assert code == 1
    assert "quarantined" in err

    code, out, _ = cli("resume", "q-1")
    assert (code, out) == (0, "run q-1 resumed: pending, a worker will pick it up\n")
    work(cli, app)  # the old code again
    assert show_json(cli, "q-1")["run"]["result"] == {"final": "HELLO DOC", "verdict": "go"}
    code, _, err = cli("resume", "q-1")
    assert code == 2
    assert err == (
        "coro-durable: error: run q-1 is completed, not quarantined; "
        "only quarantined runs are resumed\n"
    )


# -- errors, stores, entry points -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["show", "nope"],
        ["show", "nope", "--json"],
        ["signal", "nope", "approval", "{}"],
        ["cancel", "nope"],
        ["resume", "nope"],
        ["result", "nope", "--timeout", "1"],
        ["replay", "nope"],
    ],
)
def test_unknown_run_is_one_line_exit_2(cli: Cli, app: str, args: list[str]) -> None:
    """Every command on an unknown run prints one error line naming it, exit code 2."""
    cli("start", "cli_greet", '["x"]', "--run-id", "exists", "--app", app)  # the store exists
    code, out, err = cli(*args)
    assert (code, out) == (2, "")
    assert err == (
        "coro-durable: error: no run with id 'nope' in this store; check the id and the store URL\n"
    )


def test_store_option_and_environment_variable(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is --store, else $CORO_DURABLE_STORE, else .coro_durable/runs.db in the cwd."""
    env_url = f"sqlite:///{tmp_path / 'env.db'}"
    flag_url = f"sqlite:///{tmp_path / 'flag.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORO_DURABLE_STORE", env_url)
    unknown = "--allow-unknown"  # no worker serves cli_greet (yet)
    assert cli("start", "cli_greet", '["e"]', "--run-id", "in-env", unknown, store=None)[0] == 0
    assert (
        cli("start", "cli_greet", '["f"]', "--run-id", "in-flag", unknown, store=flag_url)[0] == 0
    )
    ids = [r["run_id"] for r in json.loads(cli("list", "--json", store=None)[1])]
    assert ids == ["in-env"]
    ids = [r["run_id"] for r in json.loads(cli("list", "--json", store=flag_url)[1])]
    assert ids == ["in-flag"]

    monkeypatch.delenv("CORO_DURABLE_STORE")
    code, _, err = cli("list", store=None)
    assert code == 2
    assert "no SQLite store at .coro_durable/runs.db" in err
    assert not (tmp_path / ".coro_durable").exists()  # reading did not create a store
    assert cli("start", "cli_greet", '["d"]', "--run-id", "in-default", unknown, store=None)[0] == 0
    assert (tmp_path / ".coro_durable" / "runs.db").exists()


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("nosuch://x", "no coro_durable store or engine is installed for URL scheme 'nosuch'"),
        ("postgresql://localhost/db", "pip install coro-durable-postgres"),
        ("runs.db", "has no scheme"),
    ],
)
def test_bad_store_urls_are_one_line_errors(
    cli: Cli, store: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unusable store URL is reported in one line with what to do, exit 2 (plugins hidden, as
    on a machine where they are not installed)."""
    monkeypatch.setattr("coro_durable.store._registry._entry_points", lambda group: {})
    code, _, err = cli("start", "cli_greet", '["x"]', store=store)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


def test_worker_reports_an_app_that_cannot_be_imported(cli: Cli, tmp_path: Path) -> None:
    """worker --app with a missing module or file says so in one line, exit 2."""
    code, _, err = cli("worker", "--app", "cd_no_such_module_xyz")
    assert code == 2
    assert "cannot import module 'cd_no_such_module_xyz'" in err
    code, _, err = cli("worker", "--app", str(tmp_path / "missing.py"))
    assert code == 2
    assert "no such file" in err


def test_usage_errors_exit_2(cli: Cli) -> None:
    """No command, or bad option values, print usage and exit 2."""
    assert cli(store=None)[0] == 2
    with pytest.raises(SystemExit) as exc:
        main(["list", "--status", "sleeping"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["worker", "--app", "x", "--concurrency", "0"])
    assert exc.value.code == 2


def test_demo_command_explains_where_the_demo_is(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a source checkout, `demo` says how to run examples/ai_pipeline.py."""
    monkeypatch.setattr(_cli, "_find_demo", lambda: None)
    code, _, err = cli("demo", store=None)
    assert code == 2
    assert "python examples/ai_pipeline.py" in err


def test_real_processes_python_m_and_console_script(url: str, app: str, tmp_path: Path) -> None:
    """`python -m coro_durable` and the installed `coro-durable` script work as processes, and an
    error comes out as one line without a traceback."""
    env = clean_env()
    started = subprocess.run(
        [*CLI, "--store", url, "start", "cli_greet", '["p"]', "--run-id", "proc-1", "--app", app],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert (started.returncode, started.stdout) == (0, "proc-1\n")
    script = Path(sys.executable).with_name("coro-durable")
    command = [str(script)] if script.exists() else CLI
    env["CORO_DURABLE_STORE"] = url
    shown = subprocess.run(
        [*command, "show", "proc-1"], capture_output=True, text=True, env=env, timeout=30
    )
    assert shown.returncode == 0
    assert fields(shown.stdout)["status"] == "pending"
    missing = subprocess.run(
        [*command, "show", "nope"], capture_output=True, text=True, env=env, timeout=30
    )
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert missing.stderr.startswith("coro-durable: error: no run with id 'nope'")


def test_worker_exits_cleanly_on_sigterm_and_hands_back_its_run(
    cli: Cli, url: str, app: str, tmp_path: Path
) -> None:
    """SIGTERM stops a worker with exit code 0; a step still running when the shutdown grace ends
    is abandoned and its run handed back (pending, no owner, due now) so another worker resumes it
    at once instead of waiting for the lease to expire."""
    cli("start", "cli_slow", "[]", "--run-id", "slow", "--app", app)
    proc = subprocess.Popen(
        [
            *CLI,
            "--store",
            url,
            "worker",
            "--app",
            app,
            "--poll",
            "0.02",
            "--lease-ttl",
            "30",
            "--shutdown-grace",
            "0.5",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while show_json(cli, "slow")["run"]["status"] != "running":
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "claimed run slow (cli_slow" in err
    assert "run slow handed back" in err
    assert "abandoned 1 step(s) still running after the 0.5s grace" in err
    assert "worker stopped: SIGTERM; handed back 1 run(s) in progress" in err
    assert "Traceback" not in err
    run = show_json(cli, "slow")["run"]
    assert run["owner"] is None
    assert run["status"] in ("pending", "waiting")  # the store parks it with wake_at = now
    if run["status"] == "waiting":
        assert run["waiting_on"].startswith("a worker (handed back by")
        assert datetime.fromisoformat(run["wake_at"]) <= datetime.now(UTC)


def test_a_second_sigint_says_what_the_worker_abandoned(
    cli: Cli, url: str, app: str, tmp_path: Path
) -> None:
    """The first SIGINT lets the step in flight finish (grace 30 s); a second SIGINT abandons it at
    once and the log names the run, seq and step it abandoned."""
    cli("start", "cli_slow", "[]", "--run-id", "slow2", "--app", app)
    proc = subprocess.Popen(
        [*CLI, "--store", url, "worker", "--app", app, "--poll", "0.02", "--lease-ttl", "30"],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while show_json(cli, "slow2")["run"]["status"] != "running":
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None  # still finishing the step: the grace is 30 s
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "send SIGINT again to abandon them" in err
    assert "second SIGINT: abandoned 1 step(s) in flight" in err
    assert "run slow2 seq 0: slow_step (attempt 1)" in err
    assert show_json(cli, "slow2")["run"]["owner"] is None, err


def test_show_names_the_step_executing_now(cli: Cli, url: str, app: str, tmp_path: Path) -> None:
    """`show` of a running run names the step in flight (seq, name, attempt, worker), not
    "step 0" of an empty journal."""
    cli("start", "cli_slow", "[]", "--run-id", "busy", "--app", app)
    proc = subprocess.Popen(
        [*CLI, "--store", url, "worker", "--app", app, "--poll", "0.02", "--shutdown-grace", "0"],
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 20
        while not show_json(cli, "busy")["run"]["executing"]:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        step = show_json(cli, "busy")["run"]["executing"][0]
        text = cli("show", "busy")[1]
    finally:
        proc.kill()
        proc.wait()
    assert (step["seq"], step["name"], step["attempt"]) == (0, "slow_step", 1)
    assert step["worker"] and step["started_at"]
    assert "executing" in text and "seq 0 slow_step attempt 1" in text


# -- JSON arguments from a file or stdin -----------------------------------------------------------

BIG = 300_000  # characters: well over Linux's 128 KiB limit on one command-line argument


def test_json_arguments_from_a_file_and_stdin(url: str, app: str, cli: Cli, tmp_path: Path) -> None:
    """`@path` reads a JSON argument from a file and `-` from stdin, for start's JSON_ARGS and
    signal's payload: payloads far over the 128 KiB a command-line argument may hold get through
    real processes whole."""
    name, note = "a" * BIG, "b" * BIG
    (tmp_path / "args.json").write_text(json.dumps([name]))
    (tmp_path / "verdict.json").write_text(json.dumps({"note": note}))

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CLI, "--store", url, *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=clean_env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done

    assert (
        run("start", "cli_greet", "@args.json", "--run-id", "file", "--allow-unknown").stdout
        == "file\n"
    )
    assert run(
        "start",
        "cli_greet",
        "-",
        "--run-id",
        "stdin",
        "--allow-unknown",
        stdin=json.dumps({"name": note}),
    )
    assert run("start", "cli_approval", "@args.json", "--run-id", "sig-file", "--allow-unknown")
    assert run("start", "cli_approval", '["x"]', "--run-id", "sig-stdin", "--allow-unknown")
    work(cli, app)
    run("signal", "sig-file", "approval", "@verdict.json")
    run("signal", "sig-stdin", "approval", "-", stdin=json.dumps([note]))
    work(cli, app)
    assert show_json(cli, "file")["run"]["result"] == f"hello {name}!"
    assert show_json(cli, "stdin")["run"]["result"] == f"hello {note}!"
    verdict = show_json(cli, "sig-file")["run"]["result"]["verdict"]
    assert verdict == {"note": note}
    assert show_json(cli, "sig-stdin")["run"]["result"]["verdict"] == [note]


def test_json_argument_file_errors_are_one_line(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing or unreadable @file, or a file or stdin that is not JSON, is one error line that
    says what happened and what to do (exit 2), without echoing a huge payload."""
    monkeypatch.chdir(tmp_path)
    cli("start", "cli_greet", '["x"]', "--run-id", "exists", "--allow-unknown")
    code, out, err = cli("start", "cli_greet", "@missing.json")
    assert (code, out) == (2, "")
    assert err == (
        "coro-durable: error: cannot read JSON_ARGS from file 'missing.json' (@missing.json): "
        "no such file. Check the path (relative to the current directory), or pass the JSON "
        "itself or '-' to read it from stdin\n"
    )
    code, _, err = cli("signal", "exists", "approval", f"@{tmp_path}")
    assert code == 2
    assert f"cannot read the signal payload from file '{tmp_path}'" in err
    assert "is a directory" in err
    (tmp_path / "bad.json").write_text('{"text": "' + "x" * BIG)  # unterminated
    code, _, err = cli("signal", "exists", "approval", "@bad.json")
    assert code == 2
    assert err.startswith(
        "coro-durable: error: the signal payload in file 'bad.json' is not valid JSON "
        "(Unterminated string starting at: line 1 column 10)"
    )
    assert err.count("\n") == 1
    assert len(err) < 500
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"[not json")))
    code, _, err = cli("start", "cli_greet", "-")
    assert code == 2
    assert err.startswith(
        "coro-durable: error: JSON_ARGS read from stdin is not valid JSON (Expecting value: "
        "line 1 column 2)"
    )
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code, _, err = cli("signal", "exists", "approval", "-")
    assert code == 2
    assert "the signal payload read from stdin is empty" in err


# -- global options after the command ---------------------------------------------------------------


def test_store_option_is_accepted_after_the_command(
    cli: Cli, app: str, url: str, tmp_path: Path
) -> None:
    """--store works after the subcommand as well as before it, on every command; given in both
    places, the one after the command wins."""
    for args in (
        ["start", "cli_approval", '["late"]', "--run-id", "late", "--allow-unknown"],
        ["worker", "--app", app, "--exit-when-idle", "--poll", "0.02"],
        ["signal", "late", "approval", '"ok"'],
        ["worker", "--app", app, "--exit-when-idle", "--poll", "0.02"],
        ["result", "late", "--timeout", "5"],
        ["replay", "late", "--app", app],
        ["cancel", "late"],
    ):
        code, _, err = cli(*args, "--store", url, store=None)
        assert code == 0, (args, err)
    code, out, _ = cli("list", "--json", "--store", url, store=None)
    assert [r["run_id"] for r in json.loads(out)] == ["late"]
    code, out, _ = cli("show", "late", "--store", url, store=None)
    assert fields(out)["status"] == "completed"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, _, _ = cli(
        "start", "cli_greet", '["o"]', "--run-id", "in-other", "--allow-unknown", "--store", other
    )
    assert code == 0  # the fixture passes --store url first: the later one wins
    assert [r["run_id"] for r in json.loads(cli("list", "--json", store=other)[1])] == ["in-other"]
    assert "in-other" not in cli("list", store=url)[1]


# -- list fits the terminal ---------------------------------------------------------------------------


def test_list_cuts_long_cells_to_the_terminal_width(cli: Cli) -> None:
    """list cuts a 200-character run id (and a long workflow name) with "..." so every line fits
    the terminal (120 columns here) and says so; --wide and --json show them whole."""
    long_id, long_name = "r" * 190 + "0123456789", "wf_" + "n" * 147
    assert cli("start", long_name, "[]", "--run-id", long_id, "--allow-unknown")[0] == 0
    assert cli("start", "cli_greet", '["x"]', "--run-id", "short", "--allow-unknown")[0] == 0
    code, out, err = cli("list")
    assert code == 0
    lines = out.rstrip("\n").split("\n")
    assert len(lines) == 3
    assert all(len(line) <= 120 for line in lines), [len(line) for line in lines]
    assert lines[1].split()[:4] == ["short", "cli_greet", "pending", "0"]  # newest first
    cut = lines[2].split()
    assert cut[0].startswith("rrrrrrrrrr") and cut[0].endswith("...")
    assert cut[1].startswith("wf_nnnnn") and cut[1].endswith("...")
    assert cut[2:4] == ["pending", "0"]
    assert "--wide" in err
    code, out, err = cli("list", "--wide")
    assert (code, err) == (0, "")
    assert out.split("\n")[2].split()[:4] == [long_id, long_name, "pending", "0"]
    code, out, _ = cli("list", "--json")
    assert [r["run_id"] for r in json.loads(out)] == ["short", long_id]
    code, out, err = cli("list", "--limit", "1")  # nothing long: nothing cut, no hint
    assert (code, err) == (0, "")
    assert out.split("\n")[1].split()[0] == "short"


# -- the worker's log: each event once ---------------------------------------------------------------

APP_EVENTS = """
import os
import time

import anyio
import coro_durable as cd
from coro_durable.testing import Fault, inject

if os.environ.get("CD_EV_CRASH"):  # this worker's first activation of that run crashes
    CRASH = inject(Fault("X10", run_id=os.environ["CD_EV_CRASH"], action="error"))
    CRASH.__enter__()  # (kept referenced: a collected context manager would uninstall it)


def greet_step(name):
    return f"hello {name}"


def explode(what):
    raise ValueError(f"cannot handle {what}")


async def slow_step():
    await anyio.sleep(30)
    return "slow"


async def hog(seconds):
    time.sleep(seconds)  # blocks this worker's event loop: it cannot renew its lease meanwhile
    return "hogged"


@cd.workflow(name="ev_greet")
async def ev_greet(name):
    return await cd.call(greet_step, name)


@cd.workflow(name="ev_fail")
async def ev_fail(what):
    return await cd.call(explode, what, retry=cd.RetryPolicy(max_attempts=1))


@cd.workflow(name="ev_approval")
async def ev_approval(item):
    draft = await cd.call(greet_step, item)
    return [draft, await cd.await_signal("approval", timeout=3600)]


@cd.workflow(name="ev_slow")
async def ev_slow():
    return await cd.call(slow_step)


@cd.workflow(name="ev_hog")
async def ev_hog(seconds):
    return await cd.call(hog, seconds)
"""

# What a worker's log line about a run says happened to it; every line naming a run is one of these.
EVENTS = {
    "claimed": r"claimed run {run} \(",
    "parked": r"run {run} parked",
    "handed back": r"run {run} handed back",
    "abandoned": r"abandoning .*run {run} seq",
    "completed": r"run {run} completed",
    "failed": r"run {run} failed",
    "cancelled": r"run {run} cancelled",
    "crashed": r"run {run} crashed",
    "quarantined": r"run {run} quarantined",
    "lease lost": r"lease on run '?{run}'?[ ,;:)].*lost",
}


def events(log: str, run_id: str) -> list[str]:
    """The events a worker log reports for ``run_id``, in order. A line naming the run must be
    exactly one event: a repeated event shows up as two entries."""
    mention = re.compile(rf"(?<![\w-]){re.escape(run_id)}(?![\w-])")
    found = []
    for line in log.splitlines():
        if mention.search(line):
            kinds = [
                k for k, p in EVENTS.items() if re.search(p.format(run=re.escape(run_id)), line)
            ]
            assert len(kinds) == 1, f"not one event: {line!r}"
            found.append(kinds[0])
    return found


@pytest.fixture(scope="session")
def events_app(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An app module for worker processes only (it may install a fault injector at import)."""
    path = tmp_path_factory.mktemp("events_app") / "cd_cli_events_app.py"
    path.write_text(APP_EVENTS)
    return str(path)


def worker_process(url: str, app: str, cwd: Path, *options: str, **env: str) -> str:
    """Run `coro-durable worker --exit-when-idle` as a process; return its log (stderr)."""
    command = [*CLI, "--store", url, "worker", "--app", app, "--poll", "0.02", "--exit-when-idle"]
    done = subprocess.run(
        [*command, *options],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**clean_env(), **env},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def wait_until_shown(cli: Cli, run_id: str, status: str) -> None:
    """Poll `coro-durable show --json` until it reports ``status`` (bounded)."""
    deadline = time.monotonic() + 20
    while show_json(cli, run_id)["run"]["status"] != status:
        assert time.monotonic() < deadline, show_json(cli, run_id)["run"]
        time.sleep(0.02)


GRACE = ["--shutdown-grace", "0.3"]


def test_worker_logs_each_event_once(cli: Cli, url: str, events_app: str, tmp_path: Path) -> None:
    """A real worker process logs every event of a run exactly once: claimed (and where it
    resumes), parked (on what, until when), completed, failed (with the error), crashed,
    quarantined, and handed back on SIGTERM."""
    for workflow, run_id in [
        ("ev_greet", "ev-ok"),
        ("ev_fail", "ev-fail"),
        ("ev_approval", "ev-wait"),
        ("ev_greet", "ev-crash"),
        ("ev_approval", "ev-corrupt"),
    ]:
        assert cli("start", workflow, '["x"]', "--run-id", run_id, "--allow-unknown")[0] == 0
    first = worker_process(url, events_app, tmp_path, CD_EV_CRASH="ev-crash")

    anyio.run(corrupt_row, cd.open_store(url), "ev-corrupt", 0)
    for run_id in ("ev-wait", "ev-corrupt"):
        assert cli("signal", run_id, "approval", '"yes"')[0] == 0
    deadline = time.monotonic() + 20  # the crashed run is retried after a short backoff
    while (due := show_json(cli, "ev-crash")["run"]["wake_at"]) is not None:
        if datetime.fromisoformat(due) <= datetime.now(UTC):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = worker_process(url, events_app, tmp_path)

    assert cli("start", "ev_slow", "[]", "--run-id", "ev-slow", "--allow-unknown")[0] == 0
    proc = subprocess.Popen(
        # the 30 s step is abandoned at the end of the grace
        [*CLI, "--store", url, "worker", "--app", events_app, "--poll", "0.02", *GRACE],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    try:
        wait_until_shown(cli, "ev-slow", "running")
        proc.send_signal(signal.SIGTERM)
        _, third = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, third

    both = first + second
    assert events(first, "ev-ok") == ["claimed", "completed"]
    assert events(first, "ev-fail") == ["claimed", "failed"]
    assert re.search(r"run ev-fail failed: ValueError: cannot handle x$", first, re.M)
    assert events(first, "ev-wait") == ["claimed", "parked"]
    assert re.search(r"run ev-wait parked, waiting on signal 'approval' until \d{4}-", first)
    assert events(second, "ev-wait") == ["claimed", "completed"]
    assert re.search(r"claimed run ev-wait \(ev_approval, .*resuming at step \d", second)
    assert events(both, "ev-crash") == ["claimed", "crashed", "claimed", "completed"]
    assert events(first, "ev-corrupt") == ["claimed", "parked"]
    assert events(second, "ev-corrupt") == ["claimed", "quarantined"]
    assert "coro-durable resume ev-corrupt" in second
    assert events(third, "ev-slow") == ["claimed", "abandoned", "handed back"]
    assert "handed back 1 run(s)" in third


@pytest.mark.slow
def test_worker_logs_a_lost_lease_once(cli: Cli, url: str, events_app: str, tmp_path: Path) -> None:
    """A worker whose lease ran out while a step blocked it logs the lost lease once (not again
    when its next write is refused); the worker that took the run over logs its claim and the
    completion."""
    assert cli("start", "ev_hog", "[3]", "--run-id", "ev-lease", "--allow-unknown")[0] == 0
    command = [*CLI, "--store", url, "worker", "--app", events_app, "--poll", "0.02"]
    stale = subprocess.Popen(
        [*command, "--lease-ttl", "1", "--exit-when-idle"],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
    )
    try:
        wait_until_shown(cli, "ev-lease", "running")
        time.sleep(1.2)  # its 1 s lease runs out while the step blocks its event loop
        taker = worker_process(url, events_app, tmp_path, "--lease-ttl", "10")
        _, stale_log = stale.communicate(timeout=30)
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.communicate()
    assert stale.returncode == 0, stale_log
    assert events(stale_log, "ev-lease") == ["claimed", "lease lost"]
    assert events(taker, "ev-lease") == ["claimed", "completed"]


@cd.workflow(name="log_poisoned")
async def log_poisoned() -> str:
    return "never"


@pytest.mark.anyio
async def test_runtime_logs_each_crash_and_the_quarantine_once(
    store: cd.Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose activation crashes every time is logged once per crash with its count, then
    once as quarantined (with how to resume it) when max_crashes is reached, not as retried."""
    with (
        inject(Fault("X10", run_id="poison", action="error", times=None)),
        caplog.at_level(logging.INFO, logger="coro_durable"),
    ):
        async with cd.Runtime(store, max_crashes=2, poll_interval=0.02, lease_ttl=5) as rt:
            await rt.start(log_poisoned, run_id="poison")
            await wait_for_status(rt, "poison", cd.RunStatus.QUARANTINED, timeout=20)
            with anyio.fail_after(20):
                while rt.active_runs:
                    await anyio.sleep(0.01)
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert events(log, "poison") == ["claimed", "crashed", "claimed", "quarantined"]
    assert re.search(r"run poison crashed .*crash 1 ", log)
    assert re.search(r"run poison quarantined after 2 crashes", log)
