"""coro_durable on Restate: the same ``@cd.workflow`` functions, run as Restate workflows.

    import coro_durable as cd

    url = "restate://127.0.0.1:8080?admin=http://127.0.0.1:9070&listen=127.0.0.1:9080"
    async with cd.Runtime(url) as rt:
        await rt.start(research, "question", run_id="r-1")
        await rt.signal("r-1", "approval", {"approved": True})
        print(await rt.result("r-1", timeout=60))

``cd.Runtime(url)`` returns a :class:`RestateRuntime` for ``restate://`` URLs (this package
registers the scheme in the ``coro_durable.engines`` entry-point group), so setting
``CORO_DURABLE_STORE``/the URL moves an application from SQLite to Restate. While open, the
runtime serves a Restate endpoint in its own process (the SDK's ASGI app under hypercorn,
HTTP/2) and registers it with the server. Under asyncio only: the Restate SDK is asyncio-only,
and ``RestateRuntime`` raises ConfigurationError under trio.

The URL
-------
    restate://HOST[:PORT][?PARAM=VALUE&...]

HOST:PORT
    The Restate ingress (HTTP), where runs are started, signalled and awaited. Default
    ``127.0.0.1:8080``.
admin
    The admin API's base URL: registration of this endpoint, cancellation, and the SQL
    introspection ``describe`` reads. Default ``http://HOST:9070``.
listen
    ``HOST:PORT`` where this process serves its Restate endpoint while open. Default
    ``127.0.0.1:9080``. Restate pins each run to the endpoint address it started on: when the
    process dies, the run resumes once an endpoint listens at that address again, so restart
    a worker with the same URL (or put several behind one address).
advertise
    The URL the Restate server uses to reach this endpoint, when it differs from
    ``http://LISTEN`` (containers, proxies). Required when ``listen`` is ``0.0.0.0`` or ``::``.
service
    The Restate workflow service every run belongs to (default ``coro_durable``): the run id is
    its workflow key, the coro_durable workflow's name travels in the run's input. Use one name
    per application sharing a Restate server (like a Temporal task queue); every endpoint of a
    service must have the same workflows imported.
inactivity_timeout
    Seconds (default ``60``, Restate's default): how long a run may wait (timer, signal) with
    its endpoint connection open before Restate suspends it; a suspended run holds nothing and
    is replayed from its journal when it can go on. ``0`` suspends at every wait (the tests use
    it to replay runs constantly).
abort_timeout
    Seconds (default ``600``, Restate's default) after ``inactivity_timeout`` before Restate
    aborts an attempt that did not suspend, e.g. a long step. A step attempt therefore runs at
    most ``inactivity_timeout + abort_timeout`` seconds; a longer one is aborted and run again
    with the same idempotency key. A step whose ``timeout=`` exceeds that is refused (see
    below).
retry_max_interval
    Seconds (default ``10``): the longest Restate waits between retries of an attempt that did
    not finish (an endpoint that died, was unreachable or aborted the attempt). Retries start at
    0.2 s and double; after Restate's maximum number of attempts (server setting, 70 by
    default) the run is paused (``restate invocations resume``).
request_timeout
    Seconds (default ``30``) for this process's requests to the ingress and admin APIs
    (``result`` waits as long as its own ``timeout``).
http1
    ``true`` to register the endpoint as HTTP/1.1 (request/response protocol: an attempt ends at
    every wait for the server) instead of HTTP/2 streaming; for proxies without HTTP/2.
    Default ``false``.

The service options (inactivity_timeout, abort_timeout, retry_max_interval) are registered
with the endpoint: every process serving a service should use the same values.

How effects map
---------------
- ``cd.call`` -> one ``ctx.run`` per attempt, named after the step, run in the endpoint process
  (sync steps in a thread pool of ``concurrency`` threads). The step's ``cd.RetryPolicy`` is
  applied by the workflow: each attempt's outcome (value, or type name and message of the
  failure) is journaled, and a durable ``ctx.sleep`` separates attempts, so only real failures
  count as attempts. Restate's own retry of ``ctx.run`` (unlimited by default) only re-runs an
  attempt that never finished (its endpoint died or the attempt was aborted), with the same
  idempotency key. ``timeout=`` bounds each attempt. After the last attempt ``cd.StepError``
  is raised at the await with the original type name and message.
- ``cd.sleep``/``cd.sleep_until`` -> ``ctx.time()`` (to fix the due time), then a durable
  ``ctx.sleep``.
- ``cd.await_signal`` -> the durable promise ``"<name>#<n>"`` for the n-th wait on that name,
  resolved by the service's shared ``signal`` handler, which takes the first unresolved
  occurrence: signals sent before the wait are kept and consumed in order. With a timeout, the
  promise races a durable sleep (``restate.wait_completed``); ``cd.SignalTimeout`` on timeout
  (the occurrence is then awaited again by the next wait for that name).
- ``cd.gather`` -> every sub-effect at once, advanced together with
  ``restate.wait_completed`` in argument order (deterministic on replay); waits for all; the
  first failure in argument order is raised, or returned in place.
- ``cd.now`` -> ``ctx.time()``; ``cd.uuid4``/``cd.random`` -> ``ctx.uuid()``/``ctx.random()``
  (seeded per run by Restate: the same values on every replay).
- ``cd.idempotency_key()`` -> ``"<run_id>:<seq>"`` with seq numbered exactly as on the embedded
  runtime.
- ``rt.describe`` -> Restate's SQL introspection (status, timestamps, the run's input, retry
  count and last failure) plus the position the run's handler keeps in Restate state (step,
  what it waits on, wake time).
- ``rt.cancel`` -> Restate cancellation, raised as ``RunCancelledError`` at the pending await (a
  running step attempt finishes first).
- ``rt.signal(..., signal_id=)`` -> Restate's idempotency key on the signal handler call: a
  repeat is not applied again and returns False.

Other Restate clients work too: ``POST /coro_durable/RUN_ID/run/send`` with ``{"workflow": NAME,
"args": [...]}`` starts a run with JSON positional arguments, and ``POST
/coro_durable/RUN_ID/signal`` with ``{"name": "approval", "value": {...}}`` reaches
``cd.await_signal("approval")`` with that JSON value.

What Restate cannot express is a step attempt allowed to run longer than
``inactivity_timeout + abort_timeout``: Restate would abort it first and run it again forever.
``rt.start`` reads the workflow's source (and that of the module-level coroutine functions it
awaits) and raises ``EffectNotAllowedError`` before anything starts when a ``cd.call`` has a
constant ``timeout=`` over that limit; a timeout computed at run time raises the same error at
its await. Any callable can be a step (lambdas, closures, partials, bound methods): steps run in
the ``run`` handler, which recreates them on every replay.
"""

from ._check import check_workflow
from ._config import RestateSettings, parse_url
from ._driver import RunDriver
from ._runtime import RestateRuntime
from ._service import make_service

__all__ = [
    "RestateRuntime",
    "RestateSettings",
    "RunDriver",
    "check_workflow",
    "make_service",
    "parse_url",
]
