"""coro_durable on Temporal: the same ``@cd.workflow`` functions, run as Temporal workflows.

    import coro_durable as cd

    async with cd.Runtime("temporal://127.0.0.1:7233/default?task_queue=research") as rt:
        await rt.start(research, "question", run_id="r-1")
        await rt.signal("r-1", "approval", {"approved": True})
        print(await rt.result("r-1", timeout=60))

``cd.Runtime(url)`` returns a :class:`TemporalRuntime` for ``temporal://`` URLs (this package
registers the scheme in the ``coro_durable.engines`` entry-point group), so setting
``CORO_DURABLE_STORE``/the URL moves an application from SQLite to Temporal. Under asyncio only:
the Temporal SDK is asyncio-only, and ``TemporalRuntime`` raises ConfigurationError under trio.

The URL
-------
    temporal://HOST[:PORT][/NAMESPACE][?PARAM=VALUE&...]

HOST:PORT
    The Temporal frontend (gRPC). Default ``127.0.0.1:7233``.
NAMESPACE (the path)
    The Temporal namespace, one path segment. Default ``default``. It must exist on the server
    (``temporal server start-dev --namespace NAME`` creates extra ones).
task_queue
    The task queue runs are started on and this runtime's worker polls. Default
    ``coro-durable``. Every worker of a task queue must have the same workflows and steps
    imported.
tls
    ``true`` to connect with TLS using the system's roots (default ``false``). For client
    certificates, API keys or payload codecs pass a connected ``client=`` instead. (Not tested
    here: the test server has no TLS.)
heartbeat_timeout
    Seconds (default ``30``). A running step heartbeats every third of this; when a worker dies
    mid-step, Temporal notices after this long and runs the step again on another worker, with
    the same idempotency key. Fixed per run when it is started.
step_timeout
    Seconds (default ``86400``): the longest one attempt of a step *without* ``timeout=`` may
    run before Temporal retries it (Temporal requires a bound). Fixed per run when it is started.
sticky_timeout
    Seconds (default ``10``, Temporal's default): how long a run's next workflow task waits on
    the worker that last ran it before any worker may take it. Lower it to resume faster after
    a worker dies.
max_cached_workflows
    Runs kept in the worker's memory between tasks (default ``1000``). ``0`` replays every
    workflow task from the Temporal history (slower; the tests use it to prove replays match).
query_timeout
    Seconds (default ``10``): how long ``describe`` waits for a worker to answer its query.
sandbox
    ``true`` (default) runs the workflow class in Temporal's workflow sandbox; ``false`` uses
    Temporal's unsandboxed runner (faster start of each run). coro_durable and this package are
    passed through the sandbox in both cases: the effect classes must be the same objects on
    both sides, and workflows are found in coro_durable's registry, so Temporal's sandbox does
    not check user workflow code for non-determinism: coro_durable's rules apply (effects
    only; time, randomness and I/O through ``cd.now()``, ``cd.random()``, steps).

How effects map
---------------
- ``cd.call`` -> an activity per attempt, run by one generic dynamic activity whose type is the
  step's name; it finds the function by module and qualified name among modules the worker has
  imported. The step's ``cd.RetryPolicy`` is applied by the workflow, with durable timers
  between attempts, so only real failures count as attempts; Temporal's own retry policy (set
  explicitly: unlimited, 1 s to 30 s backoff) only re-runs an attempt whose worker died or shut
  down, with the same idempotency key. ``timeout=`` bounds each attempt (enforced in the
  activity; Temporal's start-to-close timeout is that plus 10 s). After the last attempt
  ``cd.StepError`` is raised at the await with the original type name and message.
- ``cd.sleep``/``cd.sleep_until`` -> a durable Temporal timer.
- ``cd.await_signal`` -> a Temporal signal of that name, buffered by a dynamic signal handler
  (signals sent early are kept, in order), awaited with ``workflow.wait_condition``; the
  timeout raises ``cd.SignalTimeout``.
- ``cd.gather`` -> every sub-effect concurrently (activities, timers, signal waits), waiting for
  all; the first failure in argument order is raised, or returned in place.
- ``cd.now``/``cd.uuid4``/``cd.random`` -> ``workflow.now()``/``workflow.uuid4()``/
  ``workflow.random()``, recorded by Temporal's replay.
- ``cd.idempotency_key()`` -> ``"<run_id>:<seq>"`` with the run id (= the Temporal workflow id)
  and seq numbered exactly as the embedded runtime does.
- ``rt.describe`` -> the server's status plus a query answered by a worker (step, waiting_on).
- ``rt.cancel`` -> Temporal cancellation, raised as ``RunCancelledError`` at the pending await.

Runs started by other Temporal clients (``temporal workflow start --type NAME --input JSON``)
take the JSON inputs as the workflow's positional arguments; plain Temporal signals reach
``cd.await_signal`` with their JSON value.

Every effect kind is expressible. What Temporal cannot express is a step function another
worker process cannot find by name: a lambda, a function defined inside a function, a
``functools.partial``, a bound method of an instance, a callable object. ``rt.start`` reads the
workflow's source (and of the module-level coroutine functions it awaits) and raises
``EffectNotAllowedError`` before starting anything; a step chosen at run time that cannot be
dispatched raises the same error at its await.
"""

from ._config import TemporalSettings, parse_url
from ._runtime import TemporalRuntime, workflow_runner
from ._steps import StepRunner, check_workflow
from ._workflow import CoroDurableWorkflow

__all__ = [
    "TemporalRuntime",
    "TemporalSettings",
    "CoroDurableWorkflow",
    "StepRunner",
    "check_workflow",
    "parse_url",
    "workflow_runner",
]
