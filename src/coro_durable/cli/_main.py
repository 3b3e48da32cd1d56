"""The ``coro-durable`` command line (also ``python -m coro_durable``).

    coro-durable demo                                  the crash-and-resume demo (examples/)
    coro-durable worker --app myapp                    execute runs until SIGINT/SIGTERM
    coro-durable start research '["durable AI"]'       start a run, print its id
    coro-durable workers [--json]                      live workers and what each serves
    coro-durable list [--status waiting] [--wide]      runs, newest first
    coro-durable show RUN [--json]                     status and the journal (the audit trail)
    coro-durable signal RUN approval '{"ok": true}'    send a signal
    coro-durable replay RUN --app myapp                does today's code still match the journal?
    coro-durable result RUN [--timeout 30]             wait for the result
    coro-durable cancel RUN | resume RUN
    coro-durable retry RUN [--by NAME]                 continue a failed or cancelled run

The store is ``--store URL`` (before or after the command), else ``$CORO_DURABLE_STORE``, else
``sqlite:///.coro_durable/runs.db``. A JSON argument (start's JSON_ARGS, signal's payload) is the
JSON itself, ``@path/to/file.json`` (read from that file) or ``-`` (read from stdin): one
command-line argument holds at most 128 KiB on Linux.
Every command but ``worker`` opens a client-only Runtime (``worker=False``): it reads and writes
the store and executes nothing. Exit codes: 0 success; 1 the run (or replay) did not succeed
(failed, cancelled, quarantined, diverged); 2 an error (unknown run, bad store URL, bad JSON...),
reported as one line on stderr, without a traceback.

The demo is not in this package: it is examples/ai_pipeline.py, a readable example that is also
the runnable showcase. ``coro-durable demo`` finds it in the source checkout (the current directory
or the checkout this package is installed from in editable mode) and runs it with this Python.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio

from .._core import codec
from .._core.hooks import (
    Instrument,
    RunClaimed,
    RunFinished,
    WorkerIdle,
    WorkerStarted,
    WorkerStopped,
)
from .._core.waits import WaitKind
from ..errors import (
    CoroDurableError,
    RunCancelledError,
    RunFailedError,
    RunQuarantinedError,
)
from ..journal._records import TERMINAL, JournalEntry, RunStatus
from ..runtime import RunInfo, Runtime, WorkerInfo
from ..store._registry import default_store_url, open_store
from ..workflow import _registry

__all__ = [
    "main",
    "format_table",
    "journal_table",
    "run_summary",
    "runs_table",
    "workers_table",
]

EXIT_OK, EXIT_NOT_OK, EXIT_ERROR = 0, 1, 2
PROG = "coro-durable"

log = logging.getLogger("coro_durable.worker")


class CliError(Exception):
    """A problem with what the user asked; printed as one line, exit code 2."""


# -- entry point ------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "demo":  # the demo passes its options on to the example
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `coro-durable show RUN --json | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except BaseException as exc:  # one clear line for the errors we know, tracebacks for bugs
        code, message = _known_error(exc)
        if message is None:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return code


def _known_error(exc: BaseException) -> tuple[int, str | None]:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _known_error(exc.exceptions[0])
    if isinstance(exc, RunFailedError | RunCancelledError | RunQuarantinedError):
        return EXIT_NOT_OK, str(exc)
    if isinstance(exc, CoroDurableError | CliError):
        return EXIT_ERROR, str(exc)
    return EXIT_ERROR, None


# -- argument parsing --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Durable execution for Python AI workflows: run workers, start, inspect, "
        "signal and replay runs.",
        epilog="The store is --store URL, else $CORO_DURABLE_STORE, else "
        "sqlite:///.coro_durable/runs.db. Exit codes: 0 ok, 1 run failed/cancelled/quarantined "
        "or replay diverged, 2 error.",
    )
    _global_options(parser, default=None)
    # The same options after the command (`coro-durable list --store URL`); absent there, they
    # leave the value given before the command alone, and given there, they win.
    after = argparse.ArgumentParser(add_help=False)
    _global_options(after, default=argparse.SUPPRESS)
    parser.set_defaults(command=None)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, add_help: bool = True
    ) -> Any:
        parents = [after] if add_help else []  # the demo passes its options on to the example
        p = sub.add_parser(name, help=help, description=help, add_help=add_help, parents=parents)
        p.set_defaults(command=name, handler=handler)
        return p

    def app_option(p: argparse.ArgumentParser, required: bool = False) -> None:
        p.add_argument(
            "--app",
            metavar="MODULE",
            action="append",
            default=[],
            required=required,
            help="module (or path/to/file.py) defining @cd.workflow functions; repeatable. "
            "The current directory is importable.",
        )

    command(
        "demo",
        _cmd_demo,
        "run the demo (examples/ai_pipeline.py): an AI pipeline whose worker is killed mid-run, "
        "resumed and approved; options after `demo` go to the example (try `demo --help`)",
        add_help=False,
    ).add_argument("-h", "--help", action="store_true", dest="demo_help", help=argparse.SUPPRESS)

    p = command("worker", _cmd_worker, "execute runs of the --app workflows until SIGINT/SIGTERM")
    app_option(p, required=True)
    p.add_argument(
        "--concurrency", type=_positive_int, default=100, metavar="N", help="runs at once (100)"
    )
    p.add_argument(
        "--lease-ttl",
        type=_positive_float,
        default=15.0,
        metavar="S",
        help="seconds a run stays owned without renewal; a dead worker's runs are taken over "
        "after this (15)",
    )
    p.add_argument(
        "--poll",
        type=_positive_float,
        default=0.25,
        metavar="S",
        help="seconds between store polls for new work (0.25)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGINT/SIGTERM, seconds the steps in flight get to finish and be journaled "
        "before their runs are handed back; a second SIGINT abandons them at once (30)",
    )
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "--max-runs",
        type=_positive_int,
        metavar="N",
        help="exit after N runs reached a final state (completed, failed, cancelled) here",
    )
    stop.add_argument(
        "--exit-when-idle",
        action="store_true",
        help="exit once nothing is executing and no run is ready (waiting runs stay waiting)",
    )

    p = command("start", _cmd_start, "start a run and print its id")
    p.add_argument("workflow", help="registered workflow name")
    p.add_argument(
        "inputs",
        nargs="?",
        default="[]",
        metavar="JSON_ARGS",
        help="JSON list of positional arguments ('[\"a\", 2]'), or a JSON object of keyword "
        "arguments; any other JSON value is the single argument. @FILE reads the JSON from a "
        "file, - from stdin (for inputs too big for a command line)",
    )
    p.add_argument("--run-id", metavar="ID", help="run id (starting it again is idempotent)")
    tag_option(p, "a tag of the run (repeatable): list --tag finds it")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="start it even though no live worker serves the workflow (yet): for starting runs "
        "before deploying their worker",
    )
    app_option(p)

    p = command("workers", _cmd_workers, "list the live workers and the workflows each serves")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = command("list", _cmd_list, "list runs, newest first")
    p.add_argument("--status", choices=[s.value for s in RunStatus])
    p.add_argument("--workflow", metavar="NAME")
    tag_option(p, "only runs with this tag (repeatable: every one)")
    p.add_argument(
        "--waiting-for",
        choices=[k.value for k in WaitKind],
        help="only waiting runs that wait for this (e.g. signal)",
    )
    p.add_argument(
        "--wait-name",
        metavar="NAME",
        help="with --waiting-for: only waits of this name (--waiting-for signal --wait-name "
        "approval: the runs waiting on signal approval)",
    )
    p.add_argument("--limit", type=_positive_int, default=50, metavar="N", help="(50)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument(
        "--wide",
        action="store_true",
        help="show long cells whole instead of cutting them to fit the terminal",
    )

    p = command("show", _cmd_show, "show a run's status and its journal (the audit trail)")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("--json", action="store_true", help="print one JSON object for scripts")

    p = command("signal", _cmd_signal, "send a signal with a JSON payload to a run")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("name", help="signal name, as in cd.await_signal(NAME)")
    p.add_argument(
        "payload",
        metavar="JSON",
        help="JSON payload ('null' for none); @FILE reads it from a file, - from stdin",
    )
    p.add_argument(
        "--signal-id", metavar="ID", help="delivery id: resending the same id is a no-op"
    )

    p = command(
        "replay",
        _cmd_replay,
        "re-execute a run's workflow against its journal, with no side effects; exit 1 if the "
        "code diverged",
    )
    p.add_argument("run_id", metavar="RUN")
    app_option(p)

    p = command("result", _cmd_result, "wait for a run's result and print it as JSON")
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("--timeout", type=_positive_float, metavar="S", help="give up after S seconds")

    p = command("cancel", _cmd_cancel, "cancel a run (it sees RunCancelledError at its await)")
    p.add_argument("run_id", metavar="RUN")

    p = command("resume", _cmd_resume, "release a quarantined run after fixing what crashed it")
    p.add_argument("run_id", metavar="RUN")

    p = command(
        "retry",
        _cmd_retry,
        "continue a failed or cancelled run from its failure: finished steps are kept, the "
        "failed step runs again with fresh attempts under the same idempotency key",
    )
    p.add_argument("run_id", metavar="RUN")
    p.add_argument("--by", metavar="NAME", help="who retries it, for the audit (default user@host)")
    return parser


def _global_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        default=default,
        help="store URL: sqlite:///path/runs.db, memory://, postgresql://..., redis://... "
        "(default: $CORO_DURABLE_STORE or sqlite:///.coro_durable/runs.db)",
    )


def tag_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--tag KEY=VALUE``, repeatable (``args.tag``: a list of pairs)."""
    parser.add_argument(
        "--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE", help=help
    )


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


# -- shared helpers --------------------------------------------------------------------------------------


def _store_url(args: argparse.Namespace) -> str:
    url: str = args.store or default_store_url()
    return url


def _client(args: argparse.Namespace, *, must_exist: bool = True) -> Runtime:
    """A client-only Runtime on the chosen store. For a SQLite file that does not exist yet,
    commands that only read (or act on existing runs) say so instead of creating an empty one."""
    url = _store_url(args)
    if must_exist:
        path = _sqlite_path(url)
        if path is not None and not path.exists():
            raise CliError(
                f"no SQLite store at {path} (from {url}); start a run first, or pick the store "
                "with --store URL or $CORO_DURABLE_STORE"
            )
    return Runtime(url, worker=False)


def _sqlite_path(url: str) -> Path | None:
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or not parts.path or ":memory:" in parts.path:
        return None
    return Path(parts.path[1:] if parts.path.startswith("/") else parts.path)


def _parse_json(text: str, what: str) -> Any:
    """A JSON command-line argument: the JSON itself, ``@path`` (the JSON is read from that file)
    or ``-`` (read from stdin). JSON never starts with ``@`` and is never ``-``, so nothing is
    ambiguous; a file or stdin carries payloads too big for a command line (128 KiB on Linux)."""
    if text == "-":
        return _parse_json_bytes(_read_stdin(what), what, "read from stdin")
    if text.startswith("@"):
        path = text[1:]
        try:
            data = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise CliError(
                f"cannot read {what} from file {path!r} ({text}): {_os_reason(exc)}. Check the "
                "path (relative to the current directory), or pass the JSON itself or '-' to "
                "read it from stdin"
            ) from None
        return _parse_json_bytes(data, what, f"in file {path!r}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{what} is not valid JSON ({exc.msg} at character {exc.pos}): {_clip(repr(text), 80)}"
            ". Quote strings in JSON, e.g. '\"text\"' or '[\"a\", 2]'; @FILE reads the JSON "
            "from a file, - from stdin"
        ) from None


def _read_stdin(what: str) -> bytes:
    if sys.stdin is None:
        raise CliError(f"{what} is '-' (read it from stdin), but this process has no stdin")
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read() if buffer is not None else sys.stdin.read().encode()


def _parse_json_bytes(data: bytes, what: str, source: str) -> Any:
    if not data.strip():
        raise CliError(f"{what} {source} is empty; it must hold one JSON value ('null' for none)")
    try:
        return json.loads(data)  # bytes: UTF-8 (with or without a BOM), UTF-16 or UTF-32
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{what} {source} is not UTF-8 text ({exc.reason}); save it as UTF-8"
        ) from None
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{what} {source} is not valid JSON ({exc.msg}: line {exc.lineno} column "
            f"{exc.colno}); it must hold one JSON value, e.g. '[\"a\", 2]' or '{{\"ok\": true}}'"
        ) from None


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def _import_apps(apps: Sequence[str]) -> list[str]:
    """Import the --app modules (so their @cd.workflow functions register); return their names.

    ``MODULE`` is a dotted module name importable from the current directory, or a path to a
    ``.py`` file (its folder is put on sys.path and it is imported under its file name)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    names = []
    for app in apps:
        module = app
        if app.endswith(".py") or os.sep in app or "/" in app:
            path = Path(app).expanduser().resolve()
            if not path.is_file():
                raise CliError(f"--app {app}: no such file")
            if str(path.parent) not in sys.path:
                sys.path.insert(0, str(path.parent))
            module = path.stem
        try:
            importlib.import_module(module)
        except ImportError as exc:
            if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
                raise CliError(
                    f"--app {app}: cannot import module {module!r} ({exc}); run from the folder "
                    "that contains it or pass a path to the .py file"
                ) from None
            raise CliError(f"--app {app}: importing it failed:\n{traceback.format_exc()}") from None
        except CoroDurableError:
            raise
        except Exception:
            raise CliError(f"--app {app}: importing it failed:\n{traceback.format_exc()}") from None
        names.append(module)
    return names


def _jsonable(value: Any) -> Any:
    """A JSON-native form of a decoded value: codec-tagged where JSON has no type for it."""
    return json.loads(codec.encode(value))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _iso(value: _dt.datetime | float | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float | int):
        value = _dt.datetime.fromtimestamp(value, _dt.UTC)
    return value.isoformat(timespec="milliseconds")


def _when(value: _dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line
    return text if len(text) <= width else text[: max(width - 3, 1)] + "..."


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _terminal_width() -> int:
    return max(shutil.get_terminal_size((120, 24)).columns, 80)


# -- tables (also used by examples/ai_pipeline.py through `coro-durable show`) --------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: str = "") -> str:
    """Plain-text columns; header names listed in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    aligned = [h in right.split(",") for h in headers]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, aligned, strict=True)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def runs_table(runs: Sequence[RunInfo], *, width: int | None = None, fit: bool = True) -> str:
    """Runs as a table. With ``fit``, long run ids, workflow names and waits are cut with "..."
    so that every line fits ``width`` columns (the terminal's by default)."""
    return _runs_table(runs, width, fit)[0]


# Columns list may cut to fit the terminal, and the narrowest each may become.
_CUTTABLE = {"run_id": 12, "workflow": 10, "waiting_on": 12}


def _runs_table(runs: Sequence[RunInfo], width: int | None, fit: bool) -> tuple[str, bool]:
    """The table, and whether a cell was cut to fit."""
    rows = [
        [
            r.run_id,
            r.workflow,
            r.status.value,
            str(r.step),
            r.waiting_on or ("" if r.status != RunStatus.QUARANTINED else "(quarantined)"),
            _when(r.updated_at),
        ]
        for r in runs
    ]
    headers = ["run_id", "workflow", "status", "step", "waiting_on", "updated"]
    cut = fit and _fit_columns(headers, rows, width or _terminal_width(), _CUTTABLE)
    return format_table(headers, rows, right="step"), cut


def _fit_columns(
    headers: Sequence[str], rows: list[list[str]], width: int, cuttable: dict[str, int]
) -> bool:
    """Cut cells of the ``cuttable`` columns (header -> narrowest width) with "..." until a line
    of the table fits in ``width`` columns, narrowing the widest of them first. Returns whether
    a cell was cut (the table may still be wider when every cuttable column is at its narrowest)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    excess = sum(widths) + 2 * (len(headers) - 1) - width
    while excess > 0:
        narrowable = [i for i, h in enumerate(headers) if widths[i] > cuttable.get(h, widths[i])]
        if not narrowable:
            break
        widest = max(narrowable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    cut = False
    for row in rows:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                row[i] = cell[: widths[i] - 3] + "..."
                cut = True
    return cut


def workers_table(workers: Sequence[WorkerInfo], *, width: int | None = None) -> str:
    """Live workers: id, host, pid, the workflows each serves (cut to fit ``width``) and how long
    ago it last heartbeated."""
    now = _dt.datetime.now(_dt.UTC)
    rows = [
        [
            w.worker_id,
            w.host,
            str(w.pid),
            ", ".join(w.workflows) or "-",
            f"{_duration(max((now - w.last_seen).total_seconds(), 0.0))} ago",
        ]
        for w in workers
    ]
    headers = ["worker_id", "host", "pid", "workflows", "last seen"]
    fixed = [0, 1, 2, 4]
    used = sum(max(len(headers[i]), *(len(r[i]) for r in rows)) + 2 for i in fixed)
    room = max((width or _terminal_width()) - used, 24)
    for r in rows:
        r[3] = _clip(r[3], room)
    return format_table(headers, rows, right="pid")


def _retry_summary(entry: JournalEntry) -> str:
    """An audit note of ``Runtime.retry`` in one line: who, when, what it replaced."""
    try:
        note = json.loads(entry.args or "{}")
    except json.JSONDecodeError:
        return entry.args or ""
    error = note.get("error") or {}
    was = str(note.get("previous_status", "?"))
    if error:
        was += f" ({error.get('type', 'Error')}: {error.get('message', '')})"
    seqs = [str(e.get("seq")) for e in note.get("superseded", []) if isinstance(e, dict)]
    replaced = f"; deleted seq {', '.join(seqs)}" if seqs else "; deleted nothing"
    try:
        at = _when(_dt.datetime.fromisoformat(str(note.get("at"))))
    except ValueError:
        at = str(note.get("at", "?"))
    return f"retried by {note.get('by', '?')} at {at}: was {was}{replaced}"


def _outcome(entry: JournalEntry) -> str:
    if entry.kind == "retry" and entry.seq < 0:
        return _retry_summary(entry)
    if entry.status == "ok":
        return entry.result if entry.result is not None else "null"
    info = entry.error_info
    if entry.status == "pending":
        due = ""
        if entry.due_at is not None:
            left = entry.due_at - time.time()
            due = f"due in {_duration(left)}" if left > 0 else "due now"
        what = {"sleep": "timer", "signal": "waiting"}.get(entry.kind, "retrying")
        if entry.kind == "call" and entry.due_at is None:
            what = "executing"  # a progress entry of the attempt in flight
        last = f"; last error {info.get('type')}: {info.get('message')}" if info else ""
        return f"({what}{', ' if due else ''}{due}{last})"
    if info is None:
        return "error"
    return f"{info.get('type', 'Error')}: {info.get('message', '')}"


def journal_table(entries: Sequence[JournalEntry], *, width: int | None = None) -> str:
    """The journal as a readable table: seq, kind, name, status, attempts, key, duration and the
    result or error (cut to fit ``width`` columns, the terminal's by default). Audit notes
    (negative seqs: retries) read as who retried the run, when, and what it replaced."""
    rows = []
    for e in entries:
        took = "-"
        if e.finished_at is not None and e.kind in ("call", "sleep", "signal"):
            took = _duration(max(e.finished_at - e.started_at, 0.0))
        rows.append(
            [
                str(e.seq),
                e.kind,
                e.name or "-",
                e.status,
                str(e.attempts) if e.kind == "call" else "-",
                e.key,
                took,
                _outcome(e),
            ]
        )
    headers = ["seq", "kind", "name", "status", "attempts", "key", "duration", "result / error"]
    if rows:
        used = sum(max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(headers[:-1]))
        room = max((width or _terminal_width()) - used, 24)
        for r in rows:
            r[-1] = _clip(r[-1], room)
    return format_table(headers, rows, right="seq,attempts,duration")


def run_summary(info: RunInfo, *, width: int | None = None) -> str:
    """The run's header: status, inputs, result or error, what it waits on, crashes."""
    room = max((width or _terminal_width()) - 12, 40)
    inputs = info.inputs.get("args", [])
    shown = _compact(_jsonable(inputs))
    if info.inputs.get("kwargs"):
        shown += " " + _compact(_jsonable(info.inputs["kwargs"]))
    pairs: list[tuple[str, str]] = [
        ("run", info.run_id),
        ("workflow", info.workflow),
        ("status", info.status.value + (f" (owned by {info.owner})" if info.owner else "")),
        ("step", str(info.step)),
        ("inputs", _clip(shown, room)),
    ]
    if info.tags:
        pairs.append(("tags", " ".join(f"{k}={v}" for k, v in sorted(info.tags.items()))))
    if info.waiting_on:
        until = f" until {_when(info.wake_at)}" if info.wake_at else ""
        pairs.append(("waiting on", info.waiting_on + until))
    for step in info.executing:
        beat = f"last heartbeat {_when(step.heartbeat_at)}" if step.heartbeat_at else "no heartbeat"
        details = (
            f", details {_compact(_jsonable(step.details))}" if step.details is not None else ""
        )
        pairs.append(
            (
                "executing",
                _clip(
                    f"seq {step.seq} {step.name} attempt {step.attempt} since "
                    f"{_when(step.started_at)} on {step.worker} ({beat}{details})",
                    room,
                ),
            )
        )
    if info.status == RunStatus.RUNNING and not info.executing:
        pairs.append(("executing", f"seq {info.step} or later, just started on {info.owner}"))
    if info.status == RunStatus.COMPLETED:
        pairs.append(("result", _clip(_compact(_jsonable(info.result)), room)))
    if info.error:
        err = f"{info.error.get('type', 'Error')}: {info.error.get('message', '')}"
        pairs.append(("error", _clip(err, room)))
    if info.crash_count or info.status == RunStatus.QUARANTINED:
        pairs.append(("crashes", f"{info.crash_count} in a row without progress"))
    if info.last_error:
        pairs.append(("last crash", _clip(info.last_error, room)))
    if info.note:
        pairs.append(("note", info.note))
    pairs.append(("created", _when(info.created_at)))
    pairs.append(("updated", _when(info.updated_at)))
    key_width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(key_width)}  {v}" for k, v in pairs)


def _info_json(info: RunInfo) -> dict[str, Any]:
    return {
        "run_id": info.run_id,
        "workflow": info.workflow,
        "status": info.status.value,
        "step": info.step,
        "waiting_on": info.waiting_on,
        "waits": [wait.to_json() for wait in info.waits],
        "tags": info.tags,
        "inputs": _jsonable(info.inputs),
        "result": _jsonable(info.result),
        "error": info.error,
        "crash_count": info.crash_count,
        "last_error": info.last_error,
        "owner": info.owner,
        "wake_at": _iso(info.wake_at),
        "created_at": _iso(info.created_at),
        "updated_at": _iso(info.updated_at),
        "executing": [
            {
                "seq": step.seq,
                "name": step.name,
                "attempt": step.attempt,
                "started_at": _iso(step.started_at),
                "heartbeat_at": _iso(step.heartbeat_at),
                "worker": step.worker,
                "details": _jsonable(step.details),
            }
            for step in info.executing
        ],
        "note": info.note,
    }


def _worker_json(w: WorkerInfo) -> dict[str, Any]:
    return {
        "worker_id": w.worker_id,
        "host": w.host,
        "pid": w.pid,
        "workflows": list(w.workflows),
        "started_at": _iso(w.started_at),
        "last_seen": _iso(w.last_seen),
    }


def _entry_json(e: JournalEntry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "kind": e.kind,
        "name": e.name,
        "status": e.status,
        "args": _loads(e.args),
        "result": _loads(e.result),
        "error": e.error_info,
        "attempts": e.attempts,
        "key": e.key,
        "started_at": _iso(e.started_at),
        "finished_at": _iso(e.finished_at),
        "due_at": _iso(e.due_at),
    }


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# -- client commands ------------------------------------------------------------------------------


def _cmd_start(args: argparse.Namespace) -> int:
    if args.app:
        _import_apps(args.app)
        if args.workflow and not args.allow_unknown:
            _registry.lookup(args.workflow)  # UnknownWorkflowError names the registered ones
    inputs = _parse_json(args.inputs, "JSON_ARGS")
    if isinstance(inputs, list):
        call_args, call_kwargs = inputs, {}
    elif isinstance(inputs, dict):
        call_args, call_kwargs = [], inputs
    else:
        call_args, call_kwargs = [inputs], {}

    async def go() -> int:
        async with _client(args, must_exist=False) as rt:
            handle = await rt.start(
                args.workflow,
                *call_args,
                run_id=args.run_id,
                allow_unknown=args.allow_unknown,  # else a name no live worker serves is refused
                tags=dict(args.tag),
                **call_kwargs,
            )
        if not handle.created:
            print(f"run {handle.run_id} already exists with these inputs", file=sys.stderr)
        print(handle.run_id)
        return EXIT_OK

    return anyio.run(go)


def _cmd_workers(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as rt:
            workers = await rt.workers()
        if args.json:
            _print_json([_worker_json(w) for w in workers])
        elif workers:
            print(workers_table(workers))
        else:
            print("no live workers", file=sys.stderr)
        return EXIT_OK

    return anyio.run(go)


def _cmd_list(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as rt:
            runs = await rt.list_runs(
                status=args.status,
                workflow=args.workflow,
                tags=dict(args.tag),
                waiting_for=args.waiting_for,
                wait_name=args.wait_name,
                limit=args.limit,
            )
        if args.json:
            _print_json([_info_json(r) for r in runs])
        elif runs:
            table, cut = _runs_table(runs, None, not args.wide)
            print(table)
            if cut:
                print(
                    f"(long cells cut to fit {_terminal_width()} columns: --wide or --json shows "
                    "them whole)",
                    file=sys.stderr,
                )
        else:
            print("no runs" + (" match" if args.status or args.workflow else ""), file=sys.stderr)
        return EXIT_OK

    return anyio.run(go)


def _cmd_show(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as rt:
            info = await rt.describe(args.run_id)
            entries = await rt.history(args.run_id)
        if args.json:
            _print_json({"run": _info_json(info), "journal": [_entry_json(e) for e in entries]})
            return EXIT_OK
        print(run_summary(info))
        print()
        print(journal_table(entries) if entries else "(the journal is empty)")
        return EXIT_OK

    return anyio.run(go)


def _cmd_signal(args: argparse.Namespace) -> int:
    payload = _parse_json(args.payload, "the signal payload")

    async def go() -> int:
        async with _client(args) as rt:
            delivered = await rt.signal(args.run_id, args.name, payload, signal_id=args.signal_id)
        if not delivered:
            print(
                f"signal {args.name!r} id {args.signal_id} was already delivered to run {args.run_id}"
            )
        else:
            print(f"signal {args.name!r} delivered to run {args.run_id}")
        return EXIT_OK

    return anyio.run(go)


def _cmd_replay(args: argparse.Namespace) -> int:
    _import_apps(args.app)

    async def go() -> int:
        async with _client(args) as rt:
            report = await rt.replay(args.run_id)
        if report.matched:
            print(f"match: run {report.run_id}: {report.detail}")
            return EXIT_OK
        print(
            f"DIVERGED: run {report.run_id} at seq {report.replayed} of {report.total} journal "
            f"entries: {report.detail}"
        )
        return EXIT_NOT_OK

    return anyio.run(go)


def _cmd_result(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as rt:
            value = await rt.result(args.run_id, timeout=args.timeout)
        _print_json(_jsonable(value))
        return EXIT_OK

    return anyio.run(go)


def _cmd_cancel(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as rt:
            before = await rt.describe(args.run_id)
            if before.status in TERMINAL:
                print(f"run {args.run_id} is already {before.status.value}; nothing to cancel")
                return EXIT_OK
            await rt.cancel(args.run_id)
            after = await rt.describe(args.run_id)
        if after.status == RunStatus.CANCELLED:
            print(f"run {args.run_id} cancelled")
        else:
            print(
                f"cancellation of run {args.run_id} requested: a worker raises RunCancelledError "
                "at its pending await (the workflow may clean up)"
            )
        return EXIT_OK

    return anyio.run(go)


def _cmd_resume(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as rt:
            before = await rt.describe(args.run_id)
            if before.status != RunStatus.QUARANTINED:
                raise CliError(
                    f"run {args.run_id} is {before.status.value}, not quarantined; "
                    "only quarantined runs are resumed"
                )
            after = await rt.resume(args.run_id)
        print(f"run {args.run_id} resumed: {after.status.value}, a worker will pick it up")
        return EXIT_OK

    return anyio.run(go)


def _cmd_retry(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as rt:
            after = await rt.retry(args.run_id, by=args.by)
        print(
            f"run {args.run_id} retried: {after.status.value} at step {after.step}, a worker will "
            "continue it from its failure"
        )
        return EXIT_OK

    return anyio.run(go)


# -- the worker ---------------------------------------------------------------------------------------


class _WorkerWatch(Instrument):
    """The worker command's instrument on its Runtime: the command's first and last log lines,
    and what ``--max-runs`` and ``--exit-when-idle`` go by. The lines about each run come from
    the Runtime's own instrument (``WorkerLog``), on the same ``coro_durable`` logger."""

    def __init__(self, url: str, modules: list[str]) -> None:
        self.url, self.modules = url, modules
        self.finished = 0  # runs that reached a final state on this worker
        self.idle = False  # the worker found nothing to run (and has claimed nothing since)
        self.stop_reason = ""

    def worker_started(self, event: WorkerStarted) -> None:
        log.info(
            "worker %s on %s: workflows %s from %s (concurrency %d, lease %gs)",
            event.worker_id,
            self.url,
            ", ".join(event.workflows),
            ", ".join(self.modules),
            event.concurrency,
            event.lease_ttl,
        )

    def worker_idle(self, event: WorkerIdle) -> None:
        self.idle = True

    def run_claimed(self, event: RunClaimed) -> None:
        self.idle = False

    def run_finished(self, event: RunFinished) -> None:
        self.finished += 1

    def worker_stopped(self, event: WorkerStopped) -> None:
        handed = (
            f"; handed back {event.handed_back} run(s) in progress" if event.handed_back else ""
        )
        log.info("worker stopped: %s%s", self.stop_reason or "cancelled", handed)


def _cmd_worker(args: argparse.Namespace) -> int:
    modules = _import_apps(args.app)
    names = _registry.registered()
    if not names:
        raise CliError(
            f"no workflows registered by {', '.join(args.app)}; decorate them with @cd.workflow"
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("coro_durable")
    old_level, old_propagate = root.level, root.propagate
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
    try:
        return anyio.run(_worker, args, modules)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        root.propagate = old_propagate


async def _worker(args: argparse.Namespace, modules: list[str]) -> int:
    url = _store_url(args)
    watch = _WorkerWatch(url, modules)
    runtime = Runtime(
        open_store(url),  # a store (an engine's URL is refused here, with what to use instead)
        concurrency=args.concurrency,
        lease_ttl=args.lease_ttl,
        poll_interval=args.poll,
        shutdown_grace=args.shutdown_grace,
        instruments=[watch],
    )
    stopping = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            # The first SIGINT/SIGTERM ends the loop below: leaving `async with runtime` lets the
            # steps in flight finish and be journaled. Another signal abandons them.
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not stopping.is_set():
                        watch.stop_reason = name
                        stopping.set()
                        continue
                    abandoned = runtime.abandon()
                    log.warning(
                        "second %s: abandoned %d step(s) in flight%s; their runs are handed back "
                        "and the steps run again on another worker, under the same idempotency key",
                        name,
                        len(abandoned),
                        "".join(
                            f"\n  run {i.run_id} seq {i.seq}: {i.name} (attempt {i.attempt})"
                            for i in abandoned
                        ),
                    )

        tg.start_soon(on_signals)
        async with runtime:  # its WorkerStarted and WorkerStopped frame the log (_WorkerWatch)
            while not stopping.is_set():
                if args.max_runs is not None and watch.finished >= args.max_runs:
                    watch.stop_reason = f"{watch.finished} run(s) finished (--max-runs)"
                    break
                if args.exit_when_idle and watch.idle:
                    watch.stop_reason = "idle (--exit-when-idle)"
                    break
                with anyio.move_on_after(min(args.poll, 0.05)):
                    await stopping.wait()
            if stopping.is_set() and runtime.active_runs:
                log.info(
                    "%s: finishing %d run(s)' steps in flight (up to %gs; send SIGINT again to "
                    "abandon them)",
                    watch.stop_reason,
                    runtime.active_runs,
                    args.shutdown_grace,
                )
        tg.cancel_scope.cancel()
    return EXIT_OK


# -- the demo -------------------------------------------------------------------------------------------


def _find_demo() -> Path | None:
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        candidate = root / "examples" / "ai_pipeline.py"
        if candidate.is_file():
            return candidate
    return None


def _cmd_demo(args: argparse.Namespace) -> int:
    script = _find_demo()
    if script is None:
        raise CliError(
            "the demo is examples/ai_pipeline.py in coro_durable's source checkout, and none was "
            "found here. From a checkout, run `python examples/ai_pipeline.py` (or `make demo`)"
        )
    extra = [a for a in args.extra if a != "--"] + (["--help"] if args.demo_help else [])
    return subprocess.call([sys.executable, str(script), *extra])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
