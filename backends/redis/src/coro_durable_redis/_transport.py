"""The redis-py transports: its asyncio client, and its synchronous client in worker threads.

The store's default transport is its own RESP client on anyio (``_native``); these two serve URLs
with redis-py options the native client lacks, and ``transport=asyncio|thread``. redis-py's
asyncio client runs on asyncio only. The thread transport calls the synchronous client through
``anyio.to_thread.run_sync`` with a limiter of its own, so the store's calls never queue behind
sync workflow steps that also run in threads; a thread call is never abandoned on cancellation (a
command that was sent completes or fails before the caller resumes), like the SQLite store.

Every transport runs scripts with EVALSHA and loads them on NOSCRIPT (a restarted or flushed
server). redis-py's own retries are turned off: the store retries with operation tokens so that a
retried write recognises itself (see ``_scripts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import redis
import redis.asyncio
import redis.asyncio.client
import redis.client
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from ._scripts import Script

__all__ = ["Transport", "Subscription", "AsyncioTransport", "ThreadTransport"]

T = TypeVar("T")
Arg = str | bytes | int | float

# How long a thread-side pub/sub read waits before handing control back (cancellation latency).
_THREAD_POLL = 0.1


class Subscription(Protocol):
    async def get(self, timeout: float) -> bytes | None:
        """The next message published on the channel, or None after ``timeout`` seconds."""
        ...

    async def ping(self) -> None:
        """Check the subscription's connection answers (raise if it does not)."""

    async def close(self) -> None: ...


class Transport(Protocol):
    name: str

    async def command(self, *args: Arg) -> Any: ...

    async def script(self, script: Script, args: Sequence[Arg]) -> Any: ...

    def subscribe(self, channel: str) -> contextlib.AbstractAsyncContextManager[Subscription]: ...

    async def close(self) -> None: ...

    def usable(self) -> bool:
        """Whether this transport can serve the current event loop."""
        ...


def _no_retry_kwargs(sync: bool) -> dict[str, Any]:
    if sync:
        from redis.retry import Retry as SyncRetry

        return {"retry": SyncRetry(NoBackoff(), 0)}
    from redis.asyncio.retry import Retry as AsyncRetry

    return {"retry": AsyncRetry(NoBackoff(), 0)}


class AsyncioTransport:
    """redis-py's asyncio client, bound to the event loop that created it."""

    name = "asyncio"

    def __init__(self, url: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, **_no_retry_kwargs(sync=False)
        )
        # redis-py leaves these untyped; name their types once here
        self._execute: Callable[..., Awaitable[Any]] = self._client.execute_command
        self._aclose: Callable[[], Awaitable[None]] = self._client.aclose

    def usable(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def command(self, *args: Arg) -> Any:
        return await self._execute(*args)

    async def script(self, script: Script, args: Sequence[Arg]) -> Any:
        try:
            return await self._execute("EVALSHA", script.sha, 0, *args)
        except NoScriptError:
            await self._execute("SCRIPT", "LOAD", script.source)
            return await self._execute("EVALSHA", script.sha, 0, *args)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            yield _AsyncioSubscription(pubsub)
        finally:
            closing: Callable[[], Awaitable[None]] = pubsub.aclose
            with anyio.CancelScope(shield=True):
                await closing()

    async def close(self) -> None:
        await self._aclose()


class _AsyncioSubscription:
    def __init__(self, pubsub: redis.asyncio.client.PubSub) -> None:
        self._pubsub = pubsub
        self._aclose: Callable[[], Awaitable[None]] = pubsub.aclose

    async def ping(self) -> None:
        return None  # redis-py's connections have TCP keepalive on

    async def get(self, timeout: float) -> bytes | None:
        give_up = anyio.current_time() + max(timeout, 0.0)
        while True:
            left = give_up - anyio.current_time()
            if left <= 0:
                return None
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
            if msg is not None and msg.get("type") == "message":
                data: bytes = msg["data"]
                return data

    async def close(self) -> None:
        await self._aclose()


class ThreadTransport:
    """redis-py's synchronous client, called from worker threads (works under any loop)."""

    name = "thread"

    def __init__(self, url: str, threads: int) -> None:
        self._client: redis.Redis = redis.Redis.from_url(url, **_no_retry_kwargs(sync=True))
        self._execute: Callable[..., Any] = self._client.execute_command
        self._pubsub: Callable[..., redis.client.PubSub] = self._client.pubsub
        self._threads = threads
        self._limiters: dict[object, anyio.CapacityLimiter] = {}
        self._lock = threading.Lock()

    def usable(self) -> bool:
        return True

    def _limiter(self) -> anyio.CapacityLimiter:
        token = anyio.lowlevel.current_token()
        with self._lock:
            limiter = self._limiters.get(token)
            if limiter is None:
                self._limiters.clear()  # a limiter belongs to one event loop; keep the current one
                limiter = self._limiters[token] = anyio.CapacityLimiter(self._threads)
            return limiter

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter())

    async def command(self, *args: Arg) -> Any:
        return await self._run(self._execute, *args)

    def _script_sync(self, script: Script, args: Sequence[Arg]) -> Any:
        try:
            return self._execute("EVALSHA", script.sha, 0, *args)
        except NoScriptError:
            self._execute("SCRIPT", "LOAD", script.source)
            return self._execute("EVALSHA", script.sha, 0, *args)

    async def script(self, script: Script, args: Sequence[Arg]) -> Any:
        return await self._run(self._script_sync, script, args)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        pubsub = self._pubsub(ignore_subscribe_messages=True)
        try:
            await self._run(pubsub.subscribe, channel)
            yield _ThreadSubscription(pubsub, self._run)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pubsub.close)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._client.close)


class _ThreadSubscription:
    def __init__(self, pubsub: redis.client.PubSub, run: Callable[..., Any]) -> None:
        self._pubsub = pubsub
        self._run = run

    async def ping(self) -> None:
        return None  # redis-py's connections have TCP keepalive on

    async def get(self, timeout: float) -> bytes | None:
        give_up = anyio.current_time() + max(timeout, 0.0)
        while True:
            left = give_up - anyio.current_time()
            # Short slices: a thread read cannot be cancelled, so cancellation waits for the slice.
            msg = await self._run(self._pubsub.get_message, True, max(min(left, _THREAD_POLL), 0))
            if msg is not None and msg.get("type") == "message":
                data: bytes = msg["data"]
                return data
            if anyio.current_time() >= give_up:
                return None

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._pubsub.close)
