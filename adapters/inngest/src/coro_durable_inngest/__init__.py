"""coro_durable on Inngest: the same ``@cd.workflow`` functions, run as Inngest functions.

    import coro_durable as cd

    async with cd.Runtime("inngest://127.0.0.1:8288?app_id=research") as rt:
        await rt.start(research, "question", run_id="r-1")
        await rt.signal("r-1", "approval", {"approved": True})
        print(await rt.result("r-1", timeout=60))

``cd.Runtime(url)`` returns an :class:`InngestRuntime` for ``inngest://`` URLs (this package
registers the scheme in the ``coro_durable.engines`` entry-point group). While open it serves the
app's Inngest endpoint (the SDK's FastAPI integration under uvicorn, in the application's event
loop) with one Inngest function per registered workflow, and registers ("syncs") it with Inngest.
asyncio only, like the Inngest SDK.

The URL
-------
    inngest://HOST[:PORT][?PARAM=VALUE&...]

HOST:PORT
    Inngest's API: the dev server (default ``127.0.0.1:8288``), or for Inngest Cloud
    ``inngest://?mode=cloud`` (api.inngest.com, events to inn.gs).
mode
    ``dev`` (default: a dev server; nothing is signed) or ``cloud`` (requests are signed with the
    signing key; HTTPS by default).
app_id
    The Inngest app (default ``coro-durable``). Functions are ``<app_id>-<workflow name>``.
listen
    ``HOST:PORT`` where this process serves the endpoint (default ``127.0.0.1:0``: a free port).
serve_path
    The endpoint's path (default ``/api/inngest``).
serve_origin
    The origin Inngest calls the endpoint at (default ``http://<listen>``); set it when the
    endpoint is behind a proxy or must be reached from Inngest Cloud.
event_api
    The Event API's origin, when it differs from the API's (Cloud: ``https://inn.gs``).
event_key, signing_key
    Inngest's keys; better given as ``INNGEST_EVENT_KEY``/``INNGEST_SIGNING_KEY`` in the
    environment (the SDK reads them) than in a URL that may be logged.
tls
    ``true`` for https to HOST (default: true in cloud mode, false in dev mode).
sync
    Register the app with Inngest when the runtime opens (default ``true``).
retries
    Inngest's retries of a request that failed for infrastructure reasons (the endpoint crashed
    or answered 5xx), 0 to 20 (default ``20``, Inngest's maximum). A step's own
    ``cd.RetryPolicy`` is applied by the adapter, not by these.
signal_recheck
    Seconds (default ``3600``): the longest window a signal wait sleeps before reading the run's
    mailbox again. Each window costs two Inngest steps; a signal that raced a wait's registration
    is delivered at the end of the window at the latest.
max_sleep, max_step_timeout
    Inngest's limits (default a year and 7200 s): longer sleeps or step timeouts are refused
    (free plan: ``max_sleep=604800``).
poll_interval
    Seconds between two questions of ``rt.result`` to the REST API (default ``0.2``).
cancel
    ``cooperative`` (default: RunCancelledError at the run's pending await, the workflow may clean
    up) or ``native`` (Inngest's own cancellation: the run stops between steps, no more code runs).

How effects map
---------------
See ``_driver``: a call is one ``step.run`` per attempt with the RetryPolicy applied by the
adapter; a sleep is a cancellable wait plus ``step.sleep_until``; ``await_signal`` reads the run's
mailbox of signal events and waits with ``step.wait_for_event``; a gather is
``ctx.group.parallel``; ``now``/``uuid4``/``random`` are steps. Signals sent before the run waits
are delivered, in order (Inngest's waits alone would drop them).

What Inngest cannot express (``_check``): a step timeout above 2 hours, a sleep above a year;
``rt.start`` refuses them before anything is sent.
"""

from ._api import InngestApi, mailbox_event
from ._check import check_workflow
from ._config import InngestSettings, parse_url
from ._driver import Position, RunDriver, WorkflowFailed, make_function
from ._runtime import InngestRuntime

__all__ = [
    "InngestRuntime",
    "InngestSettings",
    "InngestApi",
    "Position",
    "RunDriver",
    "WorkflowFailed",
    "check_workflow",
    "mailbox_event",
    "make_function",
    "parse_url",
]
