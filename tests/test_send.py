"""cd.send: one run signals another from inside its workflow, exactly once.

Every test runs on every store under asyncio and trio. The send is an effect: journaled once,
its signal id derived from the sending effect's identity, so a crash after the delivery and
before the journal write (or any replay) delivers it once; an unknown target raises
RunNotFoundError at the await, not retried.
"""

from __future__ import annotations

from typing import Any

import pytest

import coro_durable as cd
from coro_durable import errors
from coro_durable.testing import wait_for_status

pytestmark = pytest.mark.anyio


@cd.workflow
async def receiver() -> list[Any]:
    first = await cd.await_signal("note")
    try:
        second = await cd.await_signal("note", timeout=0.5)
    except cd.SignalTimeout:
        second = "no second"
    return [first, second]


@cd.workflow
async def sender(target: str, payload: Any) -> str:
    await cd.send(target, "note", payload)
    return "sent"


@cd.workflow
async def sends_to_nobody(target: str) -> str:
    try:
        await cd.send(target, "note", 1)
    except errors.RunNotFoundError as exc:
        return f"not found: {exc.run_id}"
    return "sent"


@cd.workflow
async def fan_out(targets: list[str]) -> str:
    await cd.gather(*(cd.send(t, "note", {"to": t}) for t in targets))
    return "all sent"


async def test_send_delivers_a_signal_to_another_run(runtime: Any) -> None:
    """A workflow's cd.send reaches the other run's await_signal with its payload (the target
    was already waiting), and the send is one journal entry naming target and payload."""
    async with runtime() as rt:
        await rt.start(receiver, run_id="rx")
        await wait_for_status(rt, "rx", cd.RunStatus.WAITING, timeout=10)
        assert await rt.result(await _start(rt, sender, "rx", {"x": 1}), timeout=10) == "sent"
        assert await rt.result("rx", timeout=10) == [{"x": 1}, "no second"]
        (entry,) = [e for e in await rt.history("tx") if e.seq >= 0]
    assert (entry.kind, entry.name, entry.status) == ("send", "note", "ok")
    assert entry.key == "tx:0" and entry.args is not None and '"rx"' in entry.args


async def test_a_send_before_the_target_waits_is_kept(runtime: Any) -> None:
    """A signal sent while the target has not reached its await_signal yet (here: not even
    claimed, no worker for it) is kept and consumed when it gets there."""
    async with runtime(worker=False) as client:
        await client.start(receiver, run_id="rx")
        async with runtime() as rt:
            await rt.result(await _start(rt, sender, "rx", "early"), timeout=10)
            assert await rt.result("rx", timeout=10) == ["early", "no second"]


class CrashAfterDelivery(cd.Instrument):
    """Crash the sender's activation once, after its send was delivered and before it was
    journaled (fault point X3)."""

    def __init__(self) -> None:
        self.crashed = 0

    def fault_point(self, event: cd.FaultPoint) -> None:
        if event.point == "X3" and event.run_id == "tx" and not self.crashed:
            self.crashed += 1
            raise RuntimeError("crash after the delivery, before the journal write")


async def test_a_crash_after_delivery_does_not_send_twice(runtime: Any) -> None:
    """The activation dies after the store took the signal and before the send was journaled:
    the resumed run sends again under the same signal id, the store keeps one delivery, the
    target sees the payload once, and the sender's journal has one send."""
    crash = CrashAfterDelivery()
    async with runtime(instruments=[crash]) as rt:
        await rt.start(receiver, run_id="rx")
        await wait_for_status(rt, "rx", cd.RunStatus.WAITING, timeout=10)
        assert await rt.result(await _start(rt, sender, "rx", "once"), timeout=10) == "sent"
        assert await rt.result("rx", timeout=10) == ["once", "no second"]
        sends = [e for e in await rt.history("tx") if e.kind == "send"]
        info = await rt.describe("tx")
    assert crash.crashed == 1 and info.crash_count == 0  # it crashed once, then made progress
    assert len(sends) == 1


async def test_send_to_an_unknown_run_raises_run_not_found_once(runtime: Any) -> None:
    """An unknown target: RunNotFoundError at the await (the workflow may catch it), journaled
    as the effect's error and not retried; a replay sees the same error."""
    async with runtime() as rt:
        run_id = await _start(rt, sends_to_nobody, "ghost")
        assert await rt.result(run_id, timeout=10) == "not found: ghost"
        (entry,) = [e for e in await rt.history(run_id) if e.seq >= 0]
        report = await rt.replay(run_id)
    assert entry.status == "error" and entry.error_info is not None
    assert entry.error_info["type"] == "RunNotFoundError" and entry.attempts == 0
    assert report.matched, report.detail


async def test_sends_in_a_gather_reach_every_target(runtime: Any) -> None:
    """Sends inside a gather each get their own seq and signal id: every target gets its own."""
    async with runtime() as rt:
        for name in ("r1", "r2", "r3"):
            await rt.start(receiver, run_id=name)
        for name in ("r1", "r2", "r3"):
            await wait_for_status(rt, name, cd.RunStatus.WAITING, timeout=10)
        fan = await _start(rt, fan_out, ["r1", "r2", "r3"])
        assert await rt.result(fan, timeout=10) == "all sent"
        for name in ("r1", "r2", "r3"):
            assert await rt.result(name, timeout=10) == [{"to": name}, "no second"]


def test_send_checks_its_arguments() -> None:
    """An empty target or signal name is refused where the workflow builds the effect."""
    with pytest.raises(errors.ConfigurationError, match="target's run_id"):
        cd.send("", "note")
    with pytest.raises(errors.ConfigurationError, match="signal name"):
        cd.send("rx", "")


async def _start(rt: cd.Runtime, wf: Any, *args: Any) -> str:
    run_id = "tx" if wf is sender else None
    handle = await rt.start(wf, *args, run_id=run_id)
    return handle.run_id
