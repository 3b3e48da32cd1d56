"""Effect planning, shared by the embedded runtime and every engine adapter (coro_durable.engine):
seq numbering, gather trees and their outcomes, and the recorded-error codec."""

from __future__ import annotations

from typing import Any

import pytest

import coro_durable as cd
from coro_durable import engine, errors


def step(x: Any = None) -> Any:
    return x


def test_leaves_take_seqs_in_issue_order_and_a_gather_one_per_sub_effect_depth_first() -> None:
    """call -> seq 0; gather(call, gather(sleep, signal), now) -> seqs 1..4 depth first; the
    journal identity (name, args JSON, digest) is computed while planning."""
    planner = engine.Planner()
    first = planner.plan(engine.Call(step, (1,), {}))
    assert isinstance(first, engine.Leaf) and (first.seq, first.name) == (0, step.__qualname__)
    assert first.args == "[[1],{}]" and first.digest
    tree = planner.plan(
        engine.Gather(
            (
                engine.Call(step, (), {}),
                engine.Gather((engine.Sleep(5.0), engine.AwaitSignal("ok", None)), False),
                engine.Now(),
            ),
            False,
        )
    )
    assert isinstance(tree, engine.Node)
    assert [(leaf.seq, leaf.effect.kind) for leaf in engine.leaves(tree)] == [
        (1, "call"),
        (2, "sleep"),
        (3, "signal"),
        (4, "now"),
    ]
    assert planner.next_seq == 5


def test_a_gather_that_cannot_be_planned_takes_no_seq() -> None:
    """An unencodable argument, or the driver's check refusing a leaf, fails the whole gather and
    leaves the seq counter where it was (the same way on every replay)."""

    def refuse_sleeps(leaf: engine.Leaf) -> None:
        if leaf.effect.kind == "sleep":
            raise errors.EffectNotAllowedError("no sleeps here")

    planner = engine.Planner(check=refuse_sleeps)
    planner.plan(engine.Now())
    with pytest.raises(errors.SerializationError):
        planner.plan(
            engine.Gather((engine.Call(step, (), {}), engine.Call(step, (object(),), {})), False)
        )
    with pytest.raises(errors.EffectNotAllowedError):
        planner.plan(engine.Gather((engine.Call(step, (), {}), engine.Sleep(1.0)), False))
    assert planner.next_seq == 1
    assert planner.plan(engine.Now()).seq == 1  # type: ignore[union-attr]


def test_gather_outcome_keeps_argument_order_and_fails_on_the_first_failed_child() -> None:
    """Values come back in argument order; without return_exceptions the first failure in
    argument order (not in finishing order) fails the gather."""
    planner = engine.Planner()
    calls = tuple(engine.Call(step, (i,), {}) for i in range(3))
    node = planner.plan(engine.Gather(calls, False))
    assert isinstance(node, engine.Node)
    boom1, boom2 = RuntimeError("1"), RuntimeError("2")
    ok: dict[int, engine.Outcome] = {
        0: engine.Value("a"),
        1: engine.Value("b"),
        2: engine.Value("c"),
    }
    assert engine.gather_outcome(node, ok) == engine.Value(["a", "b", "c"])
    failed: dict[int, engine.Outcome] = {
        0: engine.Value("a"),
        1: engine.Error(boom1),
        2: engine.Error(boom2),
    }
    assert engine.gather_outcome(node, failed) == engine.Error(boom1)
    lenient = planner.plan(engine.Gather(calls, True))
    assert isinstance(lenient, engine.Node)
    shifted = {leaf.seq: failed[i] for i, leaf in enumerate(engine.leaves(lenient))}
    assert engine.gather_outcome(lenient, shifted) == engine.Value(["a", boom1, boom2])


def test_a_recorded_failure_comes_back_as_the_exception_the_workflow_first_saw() -> None:
    """exception_info records (type name, message); rebuild_error turns them back into the run's
    RunCancelledError, a signal wait's SignalTimeout, the codec's own errors, or a StepError."""
    assert engine.exception_info(ValueError("bad")) == ("ValueError", "bad")
    wrapped = errors.StepError("KeyError", "'k'", step="s", attempts=2)
    assert engine.exception_info(wrapped) == ("KeyError", "'k'")

    def rebuilt(type_name: str, kind: str = "call") -> BaseException:
        return engine.rebuild_error(type_name, "m", run_id="r", step="s", attempts=3, kind=kind)

    assert isinstance(rebuilt("RunCancelledError"), cd.RunCancelledError)
    assert isinstance(rebuilt("SignalTimeout", kind="signal"), errors.SignalTimeout)
    assert isinstance(rebuilt("PayloadTooLargeError"), errors.PayloadTooLargeError)
    assert type(rebuilt("SerializationError")) is errors.SerializationError
    step_error = rebuilt("ValueError")
    assert isinstance(step_error, errors.StepError)
    assert (step_error.type_name, step_error.attempts) == ("ValueError", 3)
    assert {"SerializationError", "PayloadTooLargeError"} == engine.UNJOURNALABLE
