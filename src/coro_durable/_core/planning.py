"""Effect planning and outcomes: the one place that numbers a workflow's effects, builds gather
trees, combines a gather's outcome and turns recorded errors back into exceptions.

Every driver (the embedded activation, the Temporal, Restate and Inngest adapters) plans the
effects a workflow yields the same way, so a journal means the same thing everywhere:

* A leaf effect (``call``, ``sleep``, ``await_signal``, ``now``, ...) takes the next ``seq``.
* A ``gather`` takes one seq per sub-effect, depth first, in argument order; nested gathers are
  nodes of the tree. If any sub-effect cannot be planned (arguments that do not encode, an effect
  the engine cannot express), the whole gather fails before any seq is taken, the same way on
  every replay.
* Planning computes each leaf's journal identity: its name, its arguments as codec JSON (a call's
  ``[args, kwargs]``, a timer's or signal wait's spec) and the digest the determinism check
  compares.
* A gather's outcome is the list of its children's values in argument order; with
  ``return_exceptions=False`` the first failed child (in argument order) fails the gather.
* A ``first`` (a race) takes one seq for its decision (the winner's index, journaled once the
  winner's own entry is), then one per raced effect in argument order: a ``Race``. The decision
  is planned first, so an engine that refuses races does so before any raced effect is planned.

Outcomes. ``exception_info(exc)`` is the ``(type name, message)`` every driver records for a
failure, and ``rebuild_error`` the exception a recorded ``(type name, message)`` stands for when
the workflow is fed it (on the first execution and on every replay alike).

``Planner``, ``Leaf``, ``Node``, ``Race``, ``leaves``, ``gather_outcome``, ``exception_info``,
``rebuild_error`` and ``UNJOURNALABLE`` are public through the engine SPI (``coro_durable.engine``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    PayloadTooLargeError,
    RunCancelledError,
    RunNotFoundError,
    SerializationError,
    SignalTimeout,
    StepError,
)
from ..workflow._effects import (
    AwaitSignal,
    Call,
    Effect,
    Error,
    First,
    Gather,
    Outcome,
    Send,
    Sleep,
    Value,
    digest,
)
from . import codec

__all__ = [
    "UNJOURNALABLE",
    "Leaf",
    "Node",
    "Planner",
    "Race",
    "exception_info",
    "gather_outcome",
    "identity",
    "leaves",
    "rebuild_error",
]

_EMPTY_DIGEST = digest("")
_NO_ARGS = "[[],{}]"  # what codec.encode([[], {}]) gives
_NO_ARGS_DIGEST = digest(_NO_ARGS)

#: Step failures that retrying cannot fix: the step's result (or arguments) cannot be journaled.
UNJOURNALABLE = frozenset({"SerializationError", "PayloadTooLargeError"})


@dataclass(slots=True)
class Leaf:
    """One planned effect: what it is, its seq, and its journal identity."""

    effect: Effect
    seq: int
    name: str
    args: str | None  # codec JSON of a call's [args, kwargs]; a timer's or signal wait's spec
    digest: str  # compared on replay (the determinism check)
    concurrent: bool = False  # the embedded runtime: runs in a task beside other gather branches
    data: Any = None  # whatever the driver attaches (Temporal: the step's dispatch reference)

    def describe(self) -> str:
        return f"{self.effect.kind}({self.name})"


@dataclass(slots=True)
class Node:
    """A planned gather: its children are leaves or nested gathers, in argument order."""

    gather: Gather
    children: list[Leaf | Node] = field(default_factory=list)


@dataclass(slots=True)
class Race:
    """A planned ``first``: the decision leaf (its effect is the First itself; the entry's result
    is the winner's index) and the raced leaves in argument order (seqs after the decision's)."""

    first: First
    decision: Leaf
    children: list[Leaf] = field(default_factory=list)


def identity(effect: Effect, limit: int) -> tuple[str, str | None, str]:
    """(name, arguments JSON, digest) of an effect, as the journal records and compares them.

    A call's arguments must encode within ``limit`` bytes (SerializationError or
    PayloadTooLargeError otherwise)."""
    if isinstance(effect, Call):
        if not effect.args and not effect.kwargs:
            return effect.name, _NO_ARGS, _NO_ARGS_DIGEST
        args = codec.encode(
            [list(effect.args), effect.kwargs],
            where=f"arguments of step {effect.name}",
            limit=limit,
        )
        return effect.name, args, digest(args)
    if isinstance(effect, Sleep):
        spec = {"until": effect.until.isoformat()} if effect.until else {"seconds": effect.seconds}
        return "", json.dumps(spec), _EMPTY_DIGEST
    if isinstance(effect, AwaitSignal):
        timeout = effect.timeout
        spec = {"timeout": timeout if timeout is None or math.isfinite(timeout) else None}
        return effect.signal, json.dumps(spec), _EMPTY_DIGEST
    if isinstance(effect, Send):  # the target and payload are checked on replay, as call args
        args = codec.encode(
            {"run_id": effect.run_id, "payload": effect.payload},
            where=f"payload of cd.send({effect.signal!r})",
            limit=limit,
        )
        return effect.signal, args, digest(args)
    if isinstance(effect, First):
        return effect.name, None, _EMPTY_DIGEST
    return "", None, _EMPTY_DIGEST


class Planner:
    """Numbers one run's effects in the order the workflow issues them (see the module).

    ``check(leaf)``, if given, is the driver's own validation of each leaf (an engine refusing a
    step timeout it cannot express raises EffectNotAllowedError there); it may also attach
    ``leaf.data``. An exception from it fails the effect (a whole gather) with no seq taken.
    """

    __slots__ = ("check", "limit", "next_seq")

    def __init__(
        self,
        *,
        limit: int = codec.DEFAULT_MAX_PAYLOAD_BYTES,
        check: Callable[[Leaf], None] | None = None,
        next_seq: int = 0,
    ) -> None:
        self.next_seq = next_seq
        self.limit = limit
        self.check = check

    def plan(self, effect: Effect) -> Leaf | Node | Race:
        """Plan the effect the workflow awaits: a leaf, for a gather its whole tree, for a first
        its race."""
        if isinstance(effect, Gather | First):
            start = self.next_seq
            try:
                if isinstance(effect, First):
                    decision = self.leaf(effect)
                    return Race(effect, decision, [self.leaf(sub) for sub in effect.effects])
                return self._node(effect)
            except BaseException:
                self.next_seq = start  # the whole effect fails before any seq is taken
                raise
        return self.leaf(effect)

    def leaf(self, effect: Effect) -> Leaf:
        """Plan one leaf effect: it takes the next seq."""
        name, args, dig = identity(effect, self.limit)
        leaf = Leaf(effect, self.next_seq, name, args, dig)
        if self.check is not None:
            self.check(leaf)
        self.next_seq += 1
        return leaf

    def _node(self, gather: Gather) -> Node:
        node = Node(gather)
        for sub in gather.effects:
            node.children.append(self._node(sub) if isinstance(sub, Gather) else self.leaf(sub))
        return node


def leaves(node: Node) -> Iterator[Leaf]:
    """The leaves of a gather tree, depth first (seq order)."""
    for child in node.children:
        if isinstance(child, Node):
            yield from leaves(child)
        else:
            yield child


def gather_outcome(node: Node, outcomes: dict[int, Outcome]) -> Outcome:
    """A gather's outcome from its leaves' outcomes (by seq): the values in argument order, or
    the first failure (in argument order) unless ``return_exceptions``."""
    results: list[Any] = []
    first_error: BaseException | None = None
    for child in node.children:
        outcome = (
            gather_outcome(child, outcomes) if isinstance(child, Node) else outcomes[child.seq]
        )
        if isinstance(outcome, Error):
            first_error = first_error or outcome.error
            results.append(outcome.error)
        else:
            results.append(outcome.value)
    if first_error is not None and not node.gather.return_exceptions:
        return Error(first_error)
    return Value(results)


def exception_info(exc: BaseException) -> tuple[str, str]:
    """The ``(type name, message)`` a driver records for a failure (a StepError keeps the
    original step exception's)."""
    if isinstance(exc, StepError):
        return exc.type_name, exc.message
    return type(exc).__name__, str(exc)


def rebuild_error(
    type_name: str,
    message: str,
    *,
    run_id: str,
    step: str,
    attempts: int,
    kind: str = "call",
    args: str | None = None,
) -> BaseException:
    """The exception a recorded failure stands for, as the workflow is fed it: the run's
    RunCancelledError, a signal wait's SignalTimeout, the codec's own errors for an unjournalable
    value, a send's RunNotFoundError (for the target named in the entry's ``args``), and
    otherwise a StepError carrying the step exception's type name and message."""
    if type_name == "RunCancelledError":
        return RunCancelledError(run_id)
    if kind == "signal" and type_name == "SignalTimeout":
        return SignalTimeout(message)
    if kind == "send" and type_name == "RunNotFoundError":
        target = json.loads(args).get("run_id") if args else None
        return RunNotFoundError(str(target)) if target else RunNotFoundError(message)
    if type_name == "PayloadTooLargeError":
        return PayloadTooLargeError(message)
    if type_name == "SerializationError":
        return SerializationError(message)
    return StepError(type_name, message, step=step, attempts=attempts)
