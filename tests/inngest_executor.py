"""A TEST DOUBLE of the Inngest server: its executor's HTTP protocol, its Event API and REST API v1.

No Inngest server can run here (the dev server's npm package downloads a Go binary when it is
installed), so the Inngest adapter is tested against this stand-in, over real HTTP. It is written
from the contract the Inngest Python SDK (0.5.x) implements, read in its source (``inngest/
_internal/comm_lib``, ``step_lib``, ``execution_lib``) and the SDK spec, not from Inngest's server
code. What it plays:

- the Inngest API for app sync: ``POST /fn/register`` (the body the SDK sends on a PUT to its
  endpoint: ``appname``, ``url``, ``functions[{id, triggers, steps.step.runtime.url, retries}]``);
- the Event API: ``POST /e/<key>`` with an event or a list, answered ``{"ids": [...], "status":
  200}``; events are stored with a ULID ``internal_id``; an ``id`` seen before is dropped (Inngest's
  24 h de-duplication); a function whose trigger (event name and ``expression``) matches gets a
  run, unless its ``idempotency`` expression gives a key it has already seen;
- the executor: per run it POSTs ``{event, events, steps, ctx{run_id, attempt, max_attempts,
  disable_immediate_execution, stack}, use_api: false}`` to the function's URL with
  ``?fnId=<id>&stepId=step`` (or a hashed step id to run that one step) and acts on the answer:
  200 = the function's return value; 206 = a list of ops: ``StepRun`` (memoize ``{"data"}``),
  ``StepError`` (retry that step with ``attempt + 1`` after a backoff), ``StepFailed`` (memoize
  ``{"error"}``), ``StepPlanned`` (run that step with a targeted request), ``Sleep`` (``name`` = the
  ISO time to wake, memoize ``null`` then), ``WaitForEvent`` (``name`` = the event, ``opts.if`` and
  ``opts.timeout``; memoize the whole event, or ``null`` on timeout). Only events received *after*
  a wait is registered match it, as on Inngest. When every op of a 206 is resolved, it calls the
  function again (after parallel steps, with ``disable_immediate_execution``); any other answer
  (5xx, a refused connection, a dead endpoint) is retried with ``attempt + 1`` up to the
  function's retries, unless ``x-inngest-no-retry: true`` fails the run at once;
- the REST API v1 the adapter reads: ``GET /v1/events`` (newest first, ``name``,
  ``received_after``, ``cursor``, ``limit``), ``GET /v1/events/{id}/runs``, ``GET /v1/runs/{id}``,
  ``DELETE /v1/runs/{id}``, answers wrapped as ``{"data": ...}`` like Inngest Cloud's. Statuses are
  Inngest's names (``Running``, ``Completed``, ``Failed``, ``Cancelled``). A failed run's
  ``output`` is the error body the SDK answered with.

Not played: signatures (dev mode only), batching, ``use_api``, ``InvokeFunction``, AI ops,
concurrency and throttling keys, cancel-on events, the UI. Timings (retry backoff) are short on
purpose. Passing against this double says the adapter follows the SDK's contract; it says nothing
about behaviour only a real Inngest server has.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import secrets
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# == a tiny CEL subset: paths, literals, == != && || ! and parentheses ================================

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<num>-?\d+(?:\.\d+)?)"""
    r"""|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<name>[A-Za-z_][\w.]*))"""
)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"unsupported expression at {text[pos:]!r}")
        pos = m.end()
        if m.group("str") is not None:
            raw = m.group("str")
            value = (
                json.loads(raw)
                if raw[0] == '"'
                else json.loads('"' + raw[1:-1].replace('"', '\\"') + '"')
            )
            out.append(("lit", value))
        elif m.group("num") is not None:
            out.append(("lit", json.loads(m.group("num"))))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            name = m.group("name")
            literal = {"true": True, "false": False, "null": None}
            out.append(("lit", literal[name]) if name in literal else ("path", name))
    return out


def cel(expression: str, env: dict[str, Any]) -> Any:
    """Evaluate ``expression`` (the subset Inngest expressions use here) against ``env``."""
    tokens = _tokens(expression)
    pos = 0

    def peek() -> tuple[str, Any] | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> tuple[str, Any]:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def primary() -> Any:
        kind, value = take()
        if kind == "op" and value == "(":
            inner = disjunction()
            take()
            return inner
        if kind == "op" and value == "!":
            return not primary()
        if kind == "lit":
            return value
        obj: Any = env
        for part in str(value).split("."):
            obj = obj.get(part) if isinstance(obj, dict) else None
        return obj

    def comparison() -> Any:
        left = primary()
        nxt = peek()
        if nxt is not None and nxt[0] == "op" and nxt[1] in ("==", "!="):
            take()
            right = primary()
            return (left == right) if nxt[1] == "==" else (left != right)
        return left

    def conjunction() -> Any:
        value = comparison()
        while peek() == ("op", "&&"):
            take()
            right = comparison()
            value = bool(value) and bool(right)
        return value

    def disjunction() -> Any:
        value = conjunction()
        while peek() == ("op", "||"):
            take()
            right = conjunction()
            value = bool(value) or bool(right)
        return value

    result = disjunction()
    if pos != len(tokens):
        raise ValueError(f"trailing tokens in {expression!r}")
    return result


# == helpers ===============================================================================================

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_last_ulid = [0, 0]


def ulid() -> str:
    """A monotonic ULID (time-ordered, like Inngest's event and run ids)."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    if ms <= _last_ulid[0]:
        ms, rand = _last_ulid[0], _last_ulid[1] + 1
    _last_ulid[:] = [ms, rand]
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(text: str) -> float:
    total = 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    for amount, unit in re.findall(r"(\d+)([smhdw])", text):
        total += int(amount) * units[unit]
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # leave the test process's signals alone
        yield


@dataclass
class Run:
    run_id: str
    function_id: str
    event: dict[str, Any]
    status: str = "Running"
    output: Any = None
    started_at: str = field(default_factory=_now_iso)
    ended_at: str | None = None
    steps: dict[str, Any] = field(default_factory=dict)  # hashed step id -> memo
    stack: list[str] = field(default_factory=list)
    parallel_seen: bool = False
    task: asyncio.Task[None] | None = None

    def memo(self, step_id: str, value: Any) -> None:
        self.steps[step_id] = value
        self.stack.append(step_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "run_started_at": self.started_at,
            "function_id": self.function_id,
            "environment_id": "00000000-0000-0000-0000-000000000000",
            "event_id": self.event["internal_id"],
            "status": self.status,
            "ended_at": self.ended_at,
            "output": self.output,
        }

    @property
    def over(self) -> bool:
        return self.status != "Running"


@dataclass
class Wait:
    run: Run
    event: str
    condition: str | None
    future: asyncio.Future[dict[str, Any] | None]


@dataclass
class CallRecord:
    """One request the executor sent to an endpoint (for tests and measurements)."""

    run_id: str
    step_id: str
    attempt: int
    status: int  # 0 when the connection failed
    ops: list[str]
    at: float


class FakeInngest:
    """The test double, served by uvicorn on 127.0.0.1 (``url``) inside the running loop."""

    def __init__(
        self,
        *,
        backoff: float = 0.05,
        max_backoff: float = 0.5,
        before_wait: Callable[[Run, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.before_wait = before_wait
        self.functions: dict[str, dict[str, Any]] = {}
        self.apps: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.event_ids: dict[str, str] = {}  # user event id -> internal id (de-duplication)
        self.idempotency: set[tuple[str, str]] = set()
        self.runs: dict[str, Run] = {}
        self.runs_by_event: dict[str, list[str]] = {}
        self.waits: list[Wait] = []
        self.calls: list[CallRecord] = []
        self.port = 0
        self._server: _Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self.app = Starlette(
            routes=[
                Route("/fn/register", self._register, methods=["POST"]),
                Route("/e/{key}", self._ingest, methods=["POST"]),
                Route("/v1/events", self._list_events, methods=["GET"]),
                Route("/v1/events/{event_id}/runs", self._event_runs, methods=["GET"]),
                Route("/v1/runs/{run_id}", self._get_run, methods=["GET"]),
                Route("/v1/runs/{run_id}", self._cancel_run, methods=["DELETE"]),
            ]
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeInngest:
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning"
        )
        self._server = _Server(config)
        self._serving = asyncio.create_task(self._server.serve())
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0))
        while not self._server.started:
            assert not self._serving.done(), "the fake Inngest server did not start"
            await asyncio.sleep(0.005)
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [r.task for r in self.runs.values() if r.task is not None and not r.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await asyncio.wait({self._serving}, timeout=5)

    # -- app sync ------------------------------------------------------------------------------------------

    async def _register(self, request: Request) -> Response:
        body = await request.json()
        for key in ("appname", "url", "functions", "sdk", "v"):
            if key not in body:
                return JSONResponse({"error": f"missing {key}"}, status_code=400)
        self.apps[body["appname"]] = body
        for fn in body["functions"]:
            self.functions[fn["id"]] = fn
        return JSONResponse({"ok": True, "modified": True})

    # -- events --------------------------------------------------------------------------------------------

    async def _ingest(self, request: Request) -> Response:
        body = await request.json()
        events = body if isinstance(body, list) else [body]
        ids = []
        for raw in events:
            if not isinstance(raw, dict) or not raw.get("name"):
                return JSONResponse({"error": "event without a name", "status": 400}, 400)
            ids.append(self.ingest(raw))
        return JSONResponse({"ids": ids, "status": 200})

    def ingest(self, raw: dict[str, Any]) -> str:
        """Store one event and act on it (new runs, waits it fulfils); its internal id."""
        user_id = str(raw.get("id") or "")
        if user_id and user_id in self.event_ids:
            return self.event_ids[user_id]
        event: dict[str, Any] = {
            "internal_id": ulid(),
            "id": user_id,
            "name": str(raw["name"]),
            "data": raw.get("data") or {},
            "ts": int(raw.get("ts") or time.time() * 1000),
            "received_at": _now_iso(),
        }
        if user_id:
            self.event_ids[user_id] = event["internal_id"]
        self.events.append(event)
        payload: dict[str, Any] = {k: event[k] for k in ("name", "data", "id", "ts")}
        payload["id"] = event["internal_id"]
        for wait in list(self.waits):
            if wait.event != event["name"] or wait.future.done():
                continue
            if wait.condition and not cel(
                wait.condition, {"async": payload, "event": wait.run.event}
            ):
                continue
            self.waits.remove(wait)
            wait.future.set_result(payload)
        for fn in list(self.functions.values()):
            for trigger in fn.get("triggers", []):
                if trigger.get("event") != event["name"]:
                    continue
                expression = trigger.get("expression")
                if expression and not cel(expression, {"event": payload}):
                    continue
                key_expr = fn.get("idempotency")
                if key_expr:
                    key = (fn["id"], json.dumps(cel(key_expr, {"event": payload})))
                    if key in self.idempotency:
                        continue
                    self.idempotency.add(key)
                self._start_run(fn, event)
        return str(event["internal_id"])

    def _start_run(self, fn: dict[str, Any], event: dict[str, Any]) -> None:
        run = Run(ulid(), fn["id"], event)
        self.runs[run.run_id] = run
        self.runs_by_event.setdefault(event["internal_id"], []).append(run.run_id)
        run.task = asyncio.get_running_loop().create_task(self._drive(run))

    # -- REST API v1 --------------------------------------------------------------------------------------

    async def _list_events(self, request: Request) -> Response:
        q = request.query_params
        limit = max(1, min(int(q.get("limit") or 20), 100))
        name = q.get("name")
        after = q.get("received_after")
        since = dt.datetime.fromisoformat(after.replace("Z", "+00:00")) if after else None
        cursor = q.get("cursor")
        out = []
        for event in reversed(self.events):
            if cursor and event["internal_id"] >= cursor:
                continue
            if name and event["name"] != name:
                continue
            received = dt.datetime.fromisoformat(event["received_at"].replace("Z", "+00:00"))
            if since is not None and received <= since:
                continue
            out.append(event)
            if len(out) >= limit:
                break
        return JSONResponse({"data": out, "metadata": {"fetched_at": _now_iso()}})

    async def _event_runs(self, request: Request) -> Response:
        ids = self.runs_by_event.get(request.path_params["event_id"], [])
        return JSONResponse({"data": [self.runs[i].to_json() for i in ids]})

    async def _get_run(self, request: Request) -> Response:
        run = self.runs.get(request.path_params["run_id"])
        if run is None:
            return JSONResponse({"error": "run not found"}, status_code=404)
        return JSONResponse({"data": run.to_json()})

    async def _cancel_run(self, request: Request) -> Response:
        run = self.runs.get(request.path_params["run_id"])
        if run is None:
            return JSONResponse({"error": "run not found"}, status_code=404)
        if not run.over:
            self._finish(run, "Cancelled", None)
        return JSONResponse({"data": run.to_json()})

    # -- the executor ----------------------------------------------------------------------------------------

    def _finish(self, run: Run, status: str, output: Any) -> None:
        if run.over:
            return
        run.status, run.output, run.ended_at = status, output, _now_iso()
        for wait in list(self.waits):
            if wait.run is run:
                self.waits.remove(wait)
                if not wait.future.done():
                    wait.future.cancel()

    def _max_attempts(self, run: Run) -> int:
        fn = self.functions[run.function_id]
        retries = (fn.get("steps", {}).get("step", {}).get("retries") or {}).get("attempts", 3)
        return int(retries) + 1

    def _delay(self, attempt: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** max(attempt - 1, 0)))

    async def _call(self, run: Run, step_id: str, attempt: int) -> httpx.Response | None:
        fn = self.functions[run.function_id]
        base = fn["steps"]["step"]["runtime"]["url"]
        parts = urllib.parse.urlsplit(base)
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["stepId"] = step_id
        url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        event = {k: run.event[k] for k in ("name", "data", "ts")}
        event["id"] = run.event["internal_id"]
        body = {
            "event": event,
            "events": [event],
            "steps": run.steps,
            "use_api": False,
            "ctx": {
                "run_id": run.run_id,
                "attempt": attempt,
                "max_attempts": self._max_attempts(run),
                "disable_immediate_execution": run.parallel_seen,
                "use_api": False,
                "stack": {"stack": list(run.stack), "current": len(run.stack)},
            },
        }
        assert self._http is not None
        try:
            res = await self._http.post(url, json=body, headers={"x-inngest-server-kind": "dev"})
        except httpx.HTTPError:
            self.calls.append(CallRecord(run.run_id, step_id, attempt, 0, [], time.time()))
            return None
        ops = [op.get("op", "?") for op in res.json()] if res.status_code == 206 else []
        self.calls.append(
            CallRecord(run.run_id, step_id, attempt, res.status_code, ops, time.time())
        )
        return res

    async def _drive(self, run: Run) -> None:
        """Discovery requests until the run ends; each 206's ops resolved before the next."""
        attempt = 0
        while not run.over:
            res = await self._call(run, "step", attempt)
            if run.over:
                return
            if res is not None and res.status_code == 200:
                self._finish(run, "Completed", res.json())
                return
            if res is not None and res.status_code == 206:
                ops = res.json()
                if any(op.get("op") == "StepPlanned" for op in ops):
                    run.parallel_seen = True
                await asyncio.gather(*(self._resolve(run, op) for op in ops))
                attempt = 0
                continue
            failure = self._function_error(res)
            if res is not None and res.headers.get("x-inngest-no-retry") == "true":
                self._finish(run, "Failed", failure)
                return
            attempt += 1
            if attempt >= self._max_attempts(run):
                self._finish(run, "Failed", failure)
                return
            await asyncio.sleep(self._delay(attempt))

    @staticmethod
    def _function_error(res: httpx.Response | None) -> Any:
        if res is None:
            return {"name": "ConnectionError", "message": "the endpoint could not be reached"}
        try:
            return res.json()
        except ValueError:
            return {"name": "HTTPError", "message": f"HTTP {res.status_code}: {res.text[:200]}"}

    async def _resolve(self, run: Run, op: dict[str, Any]) -> None:
        kind, step_id = op.get("op"), str(op.get("id"))
        if kind == "StepRun":
            run.memo(step_id, {"data": op.get("data")})
        elif kind == "StepFailed":
            run.memo(step_id, {"error": op.get("error")})
        elif kind == "StepError":
            await asyncio.sleep(self._delay(1))
            await self._run_step(run, step_id, 1)
        elif kind == "StepPlanned":
            await self._run_step(run, step_id, 0)
        elif kind == "Sleep":
            opts = op.get("opts") or {}
            if opts.get("duration"):
                wake = time.time() + _duration(str(opts["duration"]))
            else:
                when = dt.datetime.fromisoformat(str(op["name"]).replace("Z", "+00:00"))
                wake = when.timestamp()
            await asyncio.sleep(max(0.0, wake - time.time()))
            if not run.over:
                run.memo(step_id, None)
        elif kind == "WaitForEvent":
            opts = op.get("opts") or {}
            if self.before_wait is not None:
                await self.before_wait(run, op)
            loop = asyncio.get_running_loop()
            wait = Wait(
                run, str(opts.get("event") or op["name"]), opts.get("if"), loop.create_future()
            )
            self.waits.append(wait)  # from now on, matching events fulfil it
            try:
                event = await asyncio.wait_for(
                    wait.future, _duration(str(opts.get("timeout", "0s")))
                )
            except TimeoutError:
                event = None
            except asyncio.CancelledError:
                if run.over:
                    return
                raise
            finally:
                if wait in self.waits:
                    self.waits.remove(wait)
            if not run.over:
                run.memo(step_id, event)
        else:
            self._finish(
                run, "Failed", {"name": "UnsupportedOp", "message": f"fake executor: {kind}"}
            )

    async def _run_step(self, run: Run, step_id: str, attempt: int) -> None:
        """Targeted requests for one step until it is memoized (or the run ends)."""
        while not run.over:
            res = await self._call(run, step_id, attempt)
            if run.over:
                return
            if res is not None and res.status_code == 206:
                ops = [op for op in res.json() if str(op.get("id")) == step_id] or res.json()
                op = ops[0]
                if op.get("op") == "StepError":
                    attempt += 1
                    await asyncio.sleep(self._delay(attempt))
                    continue
                await self._resolve(run, op)
                return
            if res is not None and res.status_code == 200:
                self._finish(run, "Completed", res.json())
                return
            if res is not None and res.headers.get("x-inngest-no-retry") == "true":
                self._finish(run, "Failed", self._function_error(res))
                return
            attempt += 1
            if attempt >= self._max_attempts(run):
                self._finish(run, "Failed", self._function_error(res))
                return
            await asyncio.sleep(self._delay(attempt))
