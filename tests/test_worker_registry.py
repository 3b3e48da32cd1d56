"""The worker registry through the Runtime, on every store, under asyncio and trio: workers list
themselves while they run, starting a workflow nobody serves is refused, and describe says why a
runnable run does not move."""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import coro_durable as cd
from coro_durable import errors
from coro_durable.journal._records import WorkerRecord

pytestmark = pytest.mark.anyio


@pytest.fixture
def runtime(make_store: Callable[[], cd.Store]) -> Callable[..., Any]:
    """Open Runtimes on the test's store (several may share it, like processes would)."""

    @asynccontextmanager
    async def open_rt(**options: Any) -> AsyncIterator[cd.Runtime]:
        options.setdefault("poll_interval", 0.02)
        options.setdefault("lease_ttl", 2.0)
        async with cd.Runtime(make_store(), **options) as rt:
            yield rt

    return open_rt


def one(x: int) -> int:
    return x


@cd.workflow
async def registry_wf(x: int) -> int:
    return await cd.call(one, x)


async def elsewhere(store: cd.Store, *workflows: str, worker_id: str = "other-host:1") -> None:
    """Register a worker of another process that serves ``workflows`` (as its heartbeat would)."""
    await store.heartbeat_worker(WorkerRecord(worker_id, "other-host", 1, workflows), 30.0)


async def test_a_worker_is_listed_with_its_workflows_until_it_closes(runtime: Any) -> None:
    """A worker Runtime registers itself when it opens: a client's workers() lists its id, host,
    pid and the workflows it serves; once it closes it is gone. Clients are not listed."""
    async with runtime(worker=False) as client:
        assert await client.workers() == []
        before = dt.datetime.now(dt.UTC)
        async with runtime(worker_id="w-listed"):
            (info,) = await client.workers()
            assert isinstance(info, cd.WorkerInfo)
            assert (info.worker_id, info.host, info.pid) == (
                "w-listed",
                socket.gethostname(),
                os.getpid(),
            )
            assert "registry_wf" in info.workflows
            assert info.workflows == tuple(sorted(info.workflows))
            slack = dt.timedelta(seconds=1)
            assert before - slack <= info.started_at <= info.last_seen
            assert info.last_seen <= dt.datetime.now(dt.UTC) + slack
        assert await client.workers() == []


async def test_a_worker_heartbeats_to_stay_listed(runtime: Any) -> None:
    """A worker heartbeats every lease_ttl / 3: it stays listed long past one ttl, with a
    last_seen that moves on and the same started_at."""
    async with runtime(worker=False) as client, runtime(worker_id="w-beating", lease_ttl=0.3):
        (first,) = await client.workers()
        await anyio.sleep(1.0)
        (later,) = await client.workers()
        assert later.worker_id == "w-beating"
        assert later.started_at == first.started_at
        assert later.last_seen > first.last_seen


async def test_start_of_a_name_nobody_serves_raises_and_creates_nothing(runtime: Any) -> None:
    """start('typo') with a name this process does not register and no live worker serves raises
    UnknownWorkflowError naming the live workers and what they serve, and how to start it anyway;
    no run is created. Once a worker of another process serves the name, it starts."""
    async with runtime(worker=False) as client, runtime(worker_id="w-serving"):
        with pytest.raises(errors.UnknownWorkflowError) as caught:
            await client.start("registry_typo", 1, run_id="typo-1")
        message = str(caught.value)
        assert "no workflow named 'registry_typo'" in message
        assert "w-serving serves" in message and "registry_wf" in message
        assert "allow_unknown=True" in message
        assert "before deploying a worker that serves it" in message
        assert await client.list_runs() == []
        with pytest.raises(errors.RunNotFoundError):
            await client.describe("typo-1")
        await elsewhere(client.store, "registry_typo")  # deployed in another process
        handle = await client.start("registry_typo", 1, run_id="typo-1")
        assert handle.created and (await client.describe("typo-1")).workflow == "registry_typo"


async def test_allow_unknown_starts_it_and_describe_says_nobody_serves_it(runtime: Any) -> None:
    """allow_unknown=True starts a run of a workflow nobody serves yet; describe of it notes
    that no live worker serves it, and stops saying so once one does."""
    async with runtime(worker=False) as client:
        handle = await client.start("registry_later", 7, run_id="later-1", allow_unknown=True)
        assert handle.created
        info = await client.describe("later-1")
        assert info.status == cd.RunStatus.PENDING
        assert info.note is not None
        assert "no live worker serves workflow 'registry_later'" in info.note
        await elsewhere(client.store, "registry_later")
        assert (await client.describe("later-1")).note is None


async def test_a_name_registered_here_needs_no_live_worker(runtime: Any) -> None:
    """A workflow registered in this process is started by name (or by function) with no live
    worker anywhere; describe then notes that none serves it yet."""
    async with runtime(worker=False) as client:
        await client.start("registry_wf", 1, run_id="here-1")
        await client.start(registry_wf, 2, run_id="here-2")
        note = (await client.describe("here-1")).note
        assert note is not None and "no live worker serves workflow 'registry_wf'" in note
        async with runtime():
            assert await client.result("here-1", timeout=10) == 1
            assert await client.result("here-2", timeout=10) == 2
        assert (await client.describe("here-1")).note is None  # finished: nothing to explain


async def test_start_with_an_empty_name_is_a_configuration_error(runtime: Any) -> None:
    """start('') raises ConfigurationError, even with allow_unknown=True; nothing is created."""
    async with runtime(worker=False) as client:
        for allow in (False, True):
            with pytest.raises(errors.ConfigurationError, match="workflow name is empty"):
                await client.start("", run_id="empty", allow_unknown=allow)
        assert await client.list_runs() == []


async def test_starting_an_existing_run_again_by_name_needs_no_live_worker(runtime: Any) -> None:
    """start() stays idempotent on run_id: starting an existing run again by name returns its
    handle even while no worker serves the workflow (the check guards new runs only)."""
    async with runtime(worker=False) as client:
        first = await client.start("nobody_serves_this", run_id="again", allow_unknown=True)
        again = await client.start("nobody_serves_this", run_id="again")
    assert first.created and not again.created
