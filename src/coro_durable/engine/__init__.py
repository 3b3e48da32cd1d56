"""The adapter SPI: what an engine adapter (Temporal, Restate, Inngest) needs to run workflows.

Workflows yield effect objects (see ``coro_durable.workflow``); an adapter maps each one to its
engine's durable primitive and sends back an outcome. This module is the stable surface for that:

    result = await engine.drive(workflow_fn(*args, **kwargs), resolve)

where ``resolve(effect) -> Outcome`` is the adapter's async function: ``Value(x)`` or ``Error(exc)``
per effect, exactly one per yielded effect (the driver contract). ``Call`` carries ``fn``, ``args``,
``kwargs``, ``retry`` (a RetryPolicy) and ``timeout``; ``Sleep`` ``seconds`` or ``until``;
``AwaitSignal`` ``signal`` and ``timeout``; ``Send`` ``run_id``, ``signal`` and ``payload``;
``Gather`` ``effects`` and ``return_exceptions``; ``First`` ``effects`` (planned as a ``Race``);
``Now``, ``Uuid4`` and ``Random`` nothing. An
effect the engine cannot express is refused by the driver's ``Planner(check=...)`` with
EffectNotAllowedError naming the effect and the engine. Inside a step the adapter runs the step function under
``step_context(key)`` so ``cd.idempotency_key()`` works there too. ``check_run_id`` applies the
run_id rule every store enforces (non-empty, at most 255 characters, no control characters).

Also here, so an adapter needs nothing private: ``codec`` (the JSON codec every store and engine
writes payloads with: ``codec.encode``, ``codec.decode``, ``codec.roundtrip``,
``codec.DEFAULT_MAX_PAYLOAD_BYTES``), and the workflow registry (``lookup``, ``registered``,
``register_function``, ``workflow_name``).

Planning (``Planner``, ``Leaf``, ``Node``, ``Race``, ``leaves``, ``gather_outcome``; see
``coro_durable._core.planning``) numbers effects and builds gather trees exactly as the embedded
runtime does, so a run's seqs and idempotency keys are the same on every engine; a driver passes
its own validation as ``Planner(check=...)``. ``exception_info`` and ``rebuild_error`` are the one
outcome/error-info codec: what a failure is recorded as, and the exception a recorded failure is
fed back as (``UNJOURNALABLE``: the failures retrying cannot fix).

``refuse_effects(fn, {"send": hint}, "Temporal")`` reads a workflow's source (best effort) and
raises EffectNotAllowedError, before a run is started, when it uses an effect the engine does
not offer (``refuse_effect(effect, ...)``: the same at the effect, in a driver's check); ``coro_durable.engine.source`` holds it and the helpers it is built on (``evaluate``,
``function_scope``, ``bound_names``: how a call's target is found in the source).

``EngineRuntime`` is the base class of an adapter's runtime (what ``cd.Runtime("temporal://...")``
returns): the options, checks and errors every engine runtime shares, and the abstract client
operations of ``coro_durable.RuntimeClient`` it implements. ``TERMINAL`` is the set of final
run statuses.

May import: ``coro_durable.errors``, ``coro_durable._core``, ``coro_durable.workflow``,
``coro_durable.journal`` and the runtime's client side (``RunHandle``, ``RunInfo``); never the
stores or the CLI. The embedded runtime does not import this package.
"""

from .._core import codec
from .._core.planning import (
    UNJOURNALABLE,
    Leaf,
    Node,
    Planner,
    Race,
    exception_info,
    gather_outcome,
    leaves,
    rebuild_error,
)
from ..journal._records import TERMINAL, check_run_id
from ..workflow._effects import (
    AwaitSignal,
    Call,
    Effect,
    Error,
    First,
    Gather,
    Now,
    Outcome,
    Random,
    RetryPolicy,
    Send,
    Sleep,
    Uuid4,
    Value,
    WorkflowInfo,
    step_name,
)
from ..workflow._registry import lookup, register_function, registered, workflow_name
from ._base import EngineRuntime
from ._drive import drive, step_context
from .source import refuse_effect, refuse_effects

__all__ = [
    "TERMINAL",
    "UNJOURNALABLE",
    "Leaf",
    "Node",
    "Planner",
    "Race",
    "exception_info",
    "gather_outcome",
    "leaves",
    "rebuild_error",
    "AwaitSignal",
    "Call",
    "Effect",
    "EngineRuntime",
    "Error",
    "First",
    "Gather",
    "Now",
    "Outcome",
    "Random",
    "RetryPolicy",
    "Send",
    "Sleep",
    "Uuid4",
    "Value",
    "WorkflowInfo",
    "check_run_id",
    "codec",
    "drive",
    "lookup",
    "register_function",
    "refuse_effect",
    "refuse_effects",
    "registered",
    "step_context",
    "step_name",
    "workflow_name",
]
