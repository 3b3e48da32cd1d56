"""What only the Redis store does: durability checks, outages, lost replies, pub/sub wake-ups.

Every test runs under asyncio and trio against the machine's Redis server (127.0.0.1:6379, or
$CORO_DURABLE_TEST_REDIS), under a fresh key prefix that the session deletes at the end. Tests that
change the server's configuration do it through ``redis_server_config``, which restores it.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.tls import TLSListener

import coro_durable as cd
from conftest import REDIS_URL, redis_server_config, redis_test_url
from coro_durable.errors import (
    ConfigurationError,
    CorruptJournalError,
    PermanentStoreError,
    StoreError,
    StoreUnavailableError,
)
from coro_durable.journal._records import JournalEntry, RunRecord, RunStatus, WorkerRecord
from coro_durable.store import ClaimRequest, RunQuery
from coro_durable.testing import wait_for_status
from coro_durable.testing.conformance import signal_wait
from group_commit_common import Write, batch_after_one, claimed, record_batches
from group_commit_common import entry as gc_entry

pytest.importorskip(
    "coro_durable_redis",
    reason="coro-durable-redis is not installed: pip install -e backends/redis",
)
import redis  # after the skip: redis-py comes with the plugin
from coro_durable_redis import RedisDurabilityError, RedisStore
from coro_durable_redis._native import _INCOMPLETE, _Parser

pytestmark = pytest.mark.anyio

CALLS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@pytest.fixture(params=["auto", "native", "thread"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each way the store can talk to Redis (auto: redis-py's asyncio client under asyncio)."""
    return str(request.param)


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain synchronous redis-py client on the test server."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        client.close()


def entry(seq: int, result: str = "1") -> JournalEntry:
    return JournalEntry(seq, "call", "step", "d0", "ok", None, result, key=f"r:{seq}").sealed()


async def bare(**params: str) -> RedisStore:
    store = RedisStore(redis_test_url(**params))
    await store.open()
    return store


# -- a TCP proxy in front of the server, to break connections and lose replies ------------------


class Proxy:
    """Forwards 127.0.0.1:<port> to the Redis server; a test can take it down (every connection
    is cut and new ones are refused), bring it back on the same port, or lose replies."""

    def __init__(self, tg: anyio.abc.TaskGroup, tls: ssl.SSLContext | None = None) -> None:
        self._tg = tg
        self._tls = tls
        self.port = 0
        self._scope: anyio.CancelScope | None = None
        self.lose = -1  # lose the reply this many replies from now (0: the next one)

    async def up(self) -> None:
        tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = tcp.extra(anyio.abc.SocketAttribute.local_port)
        listener: anyio.abc.Listener[Any] = tcp
        if self._tls is not None:
            listener = TLSListener(tcp, self._tls, standard_compatible=False)
        scope = self._scope = anyio.CancelScope()

        async def serve() -> None:
            with scope:
                async with listener:
                    await listener.serve(self._forward)

        self._tg.start_soon(serve)

    def down(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    def lose_reply(self, after: int = 0) -> None:
        """Execute the request but cut the connection instead of passing its reply on."""
        self.lose = after

    async def _forward(self, client: anyio.abc.ByteStream) -> None:
        async with client:
            host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
            upstream = await anyio.connect_tcp(host, int(port))
            async with upstream, anyio.create_task_group() as tg:

                async def pump(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
                    try:
                        async for chunk in src:
                            if src is upstream and self.lose >= 0:
                                self.lose -= 1
                                if self.lose < 0:
                                    break  # the server executed it; the client never hears
                            await dst.send(chunk)
                    except (
                        anyio.BrokenResourceError,
                        anyio.ClosedResourceError,
                        anyio.EndOfStream,  # a TLS peer that hung up without close_notify
                        ssl.SSLError,
                    ):
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)


@asynccontextmanager
async def proxied(tls: ssl.SSLContext | None = None) -> AsyncIterator[Proxy]:
    async with anyio.create_task_group() as tg:
        proxy = Proxy(tg, tls)
        await proxy.up()
        yield proxy
        tg.cancel_scope.cancel()


def proxy_url(proxy: Proxy, **params: str) -> str:
    return redis_test_url(**params).replace(
        REDIS_URL.split("//", 1)[1].split("/", 1)[0], f"127.0.0.1:{proxy.port}", 1
    )


# -- durability ---------------------------------------------------------------------------------


async def test_server_without_persistence_is_refused_by_default() -> None:
    """With appendonly off, opening a store that did not opt in fails and explains the risk and
    both ways out; a Runtime on that URL does not start."""
    with redis_server_config(appendonly="no"):
        url = redis_test_url().replace("durability=volatile", "durability=strict")
        store = RedisStore(url)
        with pytest.raises(RedisDurabilityError) as caught:
            await store.open()
        message = str(caught.value)
        assert "appendonly no" in message and "lost when the server restarts" in message
        assert "durability=volatile" in message and "CONFIG SET appendonly yes" in message
        assert isinstance(caught.value, ConfigurationError)
        await store.close()
        default = redis_test_url().replace("&durability=volatile", "")
        with pytest.raises(RedisDurabilityError):
            async with cd.Runtime(default):
                pass


async def test_volatile_opt_in_accepts_a_server_without_persistence() -> None:
    """``durability=volatile`` opens on a server without persistence and says what it found."""
    with redis_server_config(appendonly="no"):
        store = await bare()
        try:
            settings = await store.settings()
            assert settings["appendonly"] == "no" and settings["durability"] == "volatile"
            run, created = await store.create_run(RunRecord("r1", "wf", "{}"))
            assert created and run.status == RunStatus.PENDING
        finally:
            await store.close()


async def test_appendonly_is_detected_and_each_mode_enforced() -> None:
    """With the AOF turned on at runtime, strict opens; ``always`` needs appendfsync always;
    appendfsync no is refused in strict mode. The server's settings are restored afterwards."""
    with redis_server_config(appendonly="yes", appendfsync="everysec") as before:
        strict = await bare(durability="strict")
        assert (await strict.settings())["appendfsync"] == "everysec"
        await strict.close()
        with pytest.raises(RedisDurabilityError, match="appendfsync always"):
            await bare(durability="always")
        with redis_server_config(appendfsync="always"):
            always = await bare(durability="always")
            assert (await always.settings())["appendfsync"] == "always"
            await always.close()
        with (
            redis_server_config(appendfsync="no"),
            pytest.raises(RedisDurabilityError, match="appendfsync no"),
        ):
            await bare(durability="strict")
    with redis.Redis.from_url(REDIS_URL) as client:
        assert client.config_get("appendonly")["appendonly"] == before["appendonly"]


async def test_a_server_that_may_evict_keys_is_refused() -> None:
    """An allkeys-* eviction policy with a memory limit could drop journal entries: strict mode
    refuses it even with the AOF on; volatile-* policies (only keys with a TTL) are accepted."""
    with redis_server_config(appendonly="yes", appendfsync="everysec", maxmemory="4gb"):
        with redis_server_config(**{"maxmemory-policy": "allkeys-lru"}):
            with pytest.raises(RedisDurabilityError, match="allkeys-lru"):
                await bare(durability="strict")
            volatile = await bare()
            assert (await volatile.settings())["maxmemory_policy"] == "allkeys-lru"
            await volatile.close()
        with redis_server_config(**{"maxmemory-policy": "volatile-lru"}):
            strict = await bare(durability="strict")
            await strict.close()


@cd.workflow(name="redis_specific_counting")
async def counting(n: int) -> int:
    total = 0
    for i in range(n):
        total += await cd.call(count_step, i)
    return total


async def count_step(i: int) -> int:
    CALLS[f"step{i}"] += 1
    await anyio.sleep(0.005)
    return i


async def test_runtime_on_a_server_with_appendonly_on() -> None:
    """A Runtime with the default (strict) durability runs a workflow on an AOF server."""
    with redis_server_config(appendonly="yes", appendfsync="everysec"):
        url = redis_test_url().replace("&durability=volatile", "")
        async with cd.Runtime(url, poll_interval=0.05) as rt:
            handle = await rt.start(counting, 5)
            assert await handle.result(timeout=10) == 10
    assert all(CALLS[f"step{i}"] == 1 for i in range(5))


# -- connections lost -------------------------------------------------------------------------------


async def test_connections_killed_mid_run_lose_and_repeat_nothing(
    raw: redis.Redis, transport: str
) -> None:
    """CLIENT KILL of every connection of the store, again and again during a run: the run
    completes, every step ran exactly once and the journal has one entry per step."""
    name = f"cdt_{uuid.uuid4().hex[:8]}"
    url = redis_test_url(client_name=name, transport=transport)
    kills = 0
    async with cd.Runtime(url, poll_interval=0.02, lease_ttl=5.0) as rt:
        handle = await rt.start(counting, 40)
        with anyio.fail_after(60):
            while (await rt.describe(handle.run_id)).status != RunStatus.COMPLETED:
                for client in raw.client_list():
                    if client.get("name") == name:
                        kills += raw.client_kill_filter(_id=client["id"])
                await anyio.sleep(0.03)
        assert await handle.result(timeout=1) == sum(range(40))
        history = await handle.history()
    assert kills >= 3
    assert [e.seq for e in history] == list(range(40))
    assert all(CALLS[f"step{i}"] == 1 for i in range(40)), CALLS


async def test_lost_replies_are_recognised_as_our_own_writes(transport: str) -> None:
    """Each write whose reply is lost (executed by the server, connection cut before the answer)
    is retried and recognised: no LeaseLost, no second claim, no second signal consumed, no
    duplicate entry, and the first answer the caller gets is the right one."""
    async with proxied() as proxy:
        store = RedisStore(proxy_url(proxy, transport=transport))
        await store.open()
        try:
            proxy.lose_reply()
            _, created = await store.create_run(RunRecord("r1", "wf", "{}"))
            assert created
            proxy.lose_reply()
            claimed = await store.claim(ClaimRequest("w1", ("wf",), 5, 30, 3))
            assert [r.run_id for r in claimed] == ["r1"] and claimed[0].epoch == 1
            proxy.lose_reply()
            await store.append("r1", 1, [entry(0)])
            proxy.lose_reply()
            assert await store.deliver_signal("r1", "go", '"a"', "s1")
            assert await store.deliver_signal("r1", "go", '"b"', "s2")
            waiting = JournalEntry(1, "signal", "go", "d", "pending", key="r1:1").sealed()
            proxy.lose_reply(after=1)  # the consume itself, not the read before it
            got = await store.consume_signal("r1", 1, "go", waiting)
            assert got is not None and got.result == '"a"'
            assert [e.seq for e in await store.load_journal("r1")] == [0, 1]
            proxy.lose_reply()
            await store.park("r1", 1, None, signal_wait("go"))
            parked = await store.get_run("r1")
            assert parked is not None and parked.status == RunStatus.WAITING
            assert parked.wake_at is not None  # the second signal is still there: runnable
            epoch = (await store.claim(ClaimRequest("w1", ("wf",), 1, 30, 3)))[0].epoch
            proxy.lose_reply()
            crashed = await store.record_crash("r1", epoch, "boom", time.time() - 1, 5)
            assert crashed.crash_count == 1 and crashed.status == RunStatus.WAITING
            epoch = (await store.claim(ClaimRequest("w1", ("wf",), 1, 30, 3)))[0].epoch
            proxy.lose_reply()
            await store.finish("r1", epoch, RunStatus.COMPLETED, '"done"', None)
            done = await store.get_run("r1")
            assert done is not None and done.status == RunStatus.COMPLETED
        finally:
            await store.close()


async def test_outage_mid_run_is_retried_and_the_run_resumes() -> None:
    """The server unreachable for a while in the middle of a run (every connection cut, new ones
    refused): the runtime retries with backoff, then the run completes, each step exactly once."""
    async with proxied() as proxy:
        url = proxy_url(proxy)
        async with cd.Runtime(url, poll_interval=0.05, lease_ttl=5.0, store_deadline=30) as rt:
            handle = await rt.start(counting, 30)
            with anyio.fail_after(10):
                while (await rt.describe(handle.run_id)).step < 10:
                    await anyio.sleep(0.01)
            proxy.down()
            await anyio.sleep(1.0)
            await proxy.up()
            assert await handle.result(timeout=30) == sum(range(30))
            assert len(await handle.history()) == 30
    assert all(CALLS[f"step{i}"] == 1 for i in range(30)), CALLS


async def test_a_short_outage_is_retried_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server unreachable for a second while a client starts a run (every connection cut,
    new ones refused): the call is retried until the server is back and then succeeds, and the
    runtime logs exactly one warning saying what failed and for how long it will retry."""
    caplog.set_level(logging.INFO, logger="coro_durable")
    async with proxied() as proxy:
        url = proxy_url(proxy, retry_window="0.1")
        async with cd.Runtime(url, worker=False, store_deadline=30) as rt:
            await rt.start(counting, 1, run_id="before")
            proxy.down()

            async def back_after_a_second() -> None:
                await anyio.sleep(1.0)
                await proxy.up()

            async with anyio.create_task_group() as tg:
                tg.start_soon(back_after_a_second)
                started = time.monotonic()
                handle = await rt.start(counting, 2, run_id="during")
            assert time.monotonic() - started >= 0.9
            assert handle.created and (await rt.describe("during")).status == RunStatus.PENDING
    warnings = [r for r in caplog.records if r.name == "coro_durable.runtime" and r.levelno >= 30]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "create_run" in warnings[0].getMessage() and "30" in warnings[0].getMessage()


async def test_unreachable_server_raises_store_unavailable_after_the_deadline() -> None:
    """A server that does not answer: open() gives up after open_timeout, and calls on an open
    Runtime give up after store_deadline, with StoreUnavailableError naming the server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    nowhere = f"redis://127.0.0.1:{free_port}/0?prefix=cdt_x:&durability=volatile&open_timeout=0.5"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{free_port}"):
        await RedisStore(nowhere).open()
    assert 0.4 <= time.monotonic() - started < 5

    async with proxied() as proxy:
        url = proxy_url(proxy, retry_window="0.2")
        async with cd.Runtime(url, store_deadline=1.0, poll_interval=0.05) as rt:
            await rt.start(counting, 1)
            proxy.down()
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="kept failing"):
                await rt.start(counting, 2)
            assert 0.9 <= time.monotonic() - started < 5


# -- errors ---------------------------------------------------------------------------------------------


async def test_expired_worker_keys_are_deleted(raw: redis.Redis) -> None:
    """The registry cannot grow forever: the next heartbeat deletes the entries of workers that
    expired, and remove_worker deletes its entry."""
    prefix = f"cdt_{uuid.uuid4().hex[:12]}:"
    store = RedisStore(redis_test_url(prefix))
    await store.open()
    try:
        for i in range(20):
            await store.heartbeat_worker(WorkerRecord(f"gone-{i}", "h", i, ("wf",)), 0.05)
        await anyio.sleep(0.1)
        await store.heartbeat_worker(WorkerRecord("live", "h", 99, ("wf",)), 30.0)
        assert raw.hkeys(f"{prefix}workers") == [b"live"]
        assert raw.zrange(f"{prefix}workers:expiry", 0, -1) == [b"live"]
        await store.remove_worker("live")
        assert raw.exists(f"{prefix}workers", f"{prefix}workers:expiry") == 0
    finally:
        await store.close()


async def test_redis_errors_are_translated(raw: redis.Redis) -> None:
    """No redis-py exception escapes: wrong key types, corrupt data, rejected credentials and bad
    URLs all become coro_durable errors."""
    store = await bare()
    try:
        raw.set(f"{store.prefix}run:r1", "not a hash")
        with pytest.raises(StoreError, match="WRONGTYPE") as caught:
            await store.get_run("r1")
        assert not isinstance(caught.value, redis.RedisError)

        await store.create_run(RunRecord("r2", "wf", "{}"))
        raw.hset(f"{store.prefix}run:r2", "status", "bogus")
        with pytest.raises(CorruptJournalError, match="r2"):
            await store.get_run("r2")

        raw.hset(f"{store.prefix}journal:r3", "0", "ok|abc|[1,2")
        with pytest.raises(CorruptJournalError, match="r3"):
            await store.load_journal("r3")
    finally:
        await store.close()

    denied = RedisStore(redis_test_url().replace("redis://", "redis://nobody:wrong@", 1))
    started = time.monotonic()
    with pytest.raises(PermanentStoreError, match="credentials"):
        await denied.open()
    assert time.monotonic() - started < 2  # not retried: it will not get better
    await denied.close()

    with pytest.raises(ConfigurationError, match="bogus_option"):
        RedisStore(redis_test_url(bogus_option="1"))
    with pytest.raises(ConfigurationError, match="durability"):
        RedisStore(redis_test_url(durability="sometimes"))


# -- wake-ups ---------------------------------------------------------------------------------------------


async def test_pubsub_wakes_an_idle_worker_at_once() -> None:
    """A worker polling only every 10 s picks up a run started by another process within ~1 s:
    the start is published and the worker's watcher wakes it."""
    url = redis_test_url()
    async with cd.Runtime(url, poll_interval=10.0) as worker:
        await anyio.sleep(0.3)  # its first claim found nothing; it now waits up to 10 s
        async with cd.Runtime(url, worker=False) as client:
            started = time.monotonic()
            handle = await client.start(counting, 3)
            assert await handle.result(timeout=5) == 3
            assert time.monotonic() - started < 1.0
        assert worker.worker


@cd.workflow(name="redis_specific_nap")
async def nap(seconds: float) -> str:
    await cd.sleep(seconds)
    return "rested"


async def test_parked_timer_wakes_a_worker_when_due() -> None:
    """A run parked on a 1.5 s timer resumes when it falls due, although the worker polls only
    every 10 s: the watcher sleeps until the store's next timer."""
    async with cd.Runtime(redis_test_url(), poll_interval=10.0, inline_wait=0.1) as rt:
        started = time.monotonic()
        handle = await rt.start(nap, 1.5)
        await wait_for_status(rt, handle.run_id, RunStatus.WAITING)
        assert await handle.result(timeout=8) == "rested"
        assert 1.4 <= time.monotonic() - started < 3.0


# -- transports ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_with_a_verified_certificate(
    tls_files: tuple[Path, Path], transport: str
) -> None:
    """rediss:// URLs work with each transport, verifying the server's certificate against
    ssl_ca_certs; a server whose certificate is not trusted is refused."""
    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    async with proxied(tls=server) as proxy:
        plain = proxy_url(proxy, transport=transport).replace("redis://", "rediss://", 1)
        async with cd.Runtime(f"{plain}&ssl_ca_certs={cert}", poll_interval=0.05) as rt:
            assert await (await rt.start(counting, 3)).result(timeout=10) == 3
        untrusted = RedisStore(f"{plain}&open_timeout=0.3")
        with pytest.raises(StoreError):
            await untrusted.open()
        await untrusted.close()


def test_resp_parser_reassembles_replies_split_anywhere() -> None:
    """The native transport's parser gives whole replies however the bytes arrive, and keeps
    what follows a reply for the next one."""
    wire = (
        b"*4\r\n$3\r\nabc\r\n*2\r\n:-5\r\n$-1\r\n+OK\r\n*0\r\n$5\r\na\r\nb!\r\n-ERR boom\r\n*-1\r\n"
    )
    expected = [[b"abc", [-5, None], b"OK", []], b"a\r\nb!"]
    for step in (1, 2, 3, 7, len(wire)):
        parser = _Parser()
        got: list[Any] = []
        for i in range(0, len(wire), step):
            parser.feed(wire[i : i + step])
            while (reply := parser.get()) is not _INCOMPLETE:
                got.append(reply)
        assert got[:2] == expected
        assert type(got[2]).__name__ == "_Error" and got[2].line == b"ERR boom"
        assert got[3] is None and len(got) == 4


async def test_native_subscription_answers_ping_and_keeps_messages(raw: redis.Redis) -> None:
    """The watcher's liveness PING on the native transport's subscription returns, and a message
    published while it waited for the PONG is still delivered afterwards."""
    store = await bare(transport="native")
    try:
        channel = f"{store.prefix}wake"
        async with store._transport().subscribe(channel) as sub:
            assert await sub.get(0.05) is None
            raw.publish(channel, b"first|")
            await sub.ping()
            raw.publish(channel, b"second|")
            assert await sub.get(1.0) == b"first|"
            assert await sub.get(1.0) == b"second|"
    finally:
        await store.close()


async def test_persistence_is_read_from_info_where_config_is_denied(raw: redis.Redis) -> None:
    """Managed Redis services often deny CONFIG: the store reads ``INFO persistence`` instead; with
    neither readable, strict mode refuses (it cannot vouch for durability) and volatile opens."""
    user = f"cdt_{uuid.uuid4().hex[:8]}"
    raw.acl_setuser(
        user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-config"],
    )  # fmt: skip
    url = redis_test_url().replace("redis://", f"redis://{user}:pw@", 1)
    try:
        with redis_server_config(appendonly="no"):
            with pytest.raises(RedisDurabilityError, match="appendonly no"):
                await RedisStore(url.replace("durability=volatile", "durability=strict")).open()
            with redis_server_config(appendonly="yes", appendfsync="everysec"):
                store = RedisStore(url.replace("durability=volatile", "durability=strict"))
                await store.open()
                assert (await store.settings())["appendonly"] == "yes"
                await store.close()
            raw.acl_setuser(user, enabled=True, commands=["-info"])
            with pytest.raises(RedisDurabilityError, match="cannot be read"):
                await RedisStore(url.replace("durability=volatile", "durability=strict")).open()
            volatile = RedisStore(url)
            await volatile.open()
            assert (await volatile.settings())["appendonly"] == "unknown"
            await volatile.close()
    finally:
        raw.acl_deluser(user)


async def test_any_text_round_trips_through_every_read_path(transport: str) -> None:
    """Inputs, results, names and payloads with non-ASCII text, control characters, separators
    and even lone surrogates come back exactly as written, from get_run, list_runs (decoded as
    one JSON document), claim, the journal and a consumed signal (the run_id has every odd
    character a run_id may have: no control character or lone surrogate, see check_run_id)."""
    odd = 'ünï\x00c\x1fødé ✓ | "q" \\ / \U0001f600'
    lone = odd + "\ud800"  # journal entries cannot hold it: the core's checksum encodes strictly
    run_id = 'r|ünïcødé ✓ | "q" \\ / \U0001f600'
    store = await bare(transport=transport)
    try:
        run, _ = await store.create_run(RunRecord(run_id, f"wf {lone}", f'"{lone}"'))
        assert (await store.get_run(run.run_id)) == run
        assert await store.list_runs(RunQuery(workflow=run.workflow)) == [run]
        (claimed,) = await store.claim(ClaimRequest(f"w {lone}", (run.workflow,), 1, 30, 3))
        assert claimed.owner == f"w {lone}" and claimed.input == run.input
        written = JournalEntry(
            0, "call", odd, "d", "ok", f'["{odd}"]', f'"{odd}"', key=odd
        ).sealed()
        await store.append(run.run_id, claimed.epoch, [written])
        assert await store.load_journal(run.run_id) == [written]
        await store.deliver_signal(run.run_id, odd, f'"{odd}"', odd)
        waiting = JournalEntry(1, "signal", odd, "d", "pending", key="k").sealed()
        got = await store.consume_signal(run.run_id, claimed.epoch, odd, waiting)
        assert got is not None and got.result == f'"{odd}"'
        await store.finish(run.run_id, claimed.epoch, RunStatus.COMPLETED, f'"{odd}"', None)
        (done,) = await store.list_runs(RunQuery(status=RunStatus.COMPLETED, workflow=run.workflow))
        assert done.result == f'"{odd}"' and done.run_id == run.run_id
    finally:
        await store.close()


# -- group commit -----------------------------------------------------------------------------------


async def test_a_batch_whose_reply_is_lost_is_retried_and_recognised(transport: str) -> None:
    """The server runs a whole batch (appends, a park, a finish) but its reply is lost: the store
    retries the batch on a new connection and every write recognises itself (identical entries,
    operation tokens), so nothing is applied twice and every caller succeeds. With no retry
    window, every caller of the batch gets the error instead, though the batch was applied: an
    append retried alone is then recognised as the same entry."""
    for retry_window in ("2", "0"):
        async with proxied() as proxy:
            url = proxy_url(proxy, transport=transport, retry_window=retry_window)
            await lost_batch_reply(RedisStore(url), proxy, retried=retry_window != "0")


async def lost_batch_reply(store: RedisStore, proxy: Proxy, retried: bool) -> None:
    await store.open()
    try:
        epochs = await claimed(store, [f"r{i}" for i in range(6)])

        def append(run_id: str) -> Write:
            return lambda: store.append(run_id, epochs[run_id], [gc_entry(run_id, 0)])

        appends = [append(r) for r in ("r1", "r2", "r3")]
        sizes = record_batches(store)
        proxy.lose_reply(after=1)  # the first write's reply passes, the batch's is lost
        outcomes = await batch_after_one(
            store,
            append("r0"),
            *appends,
            lambda: store.park("r4", epochs["r4"], None, signal_wait("go")),
            lambda: store.finish("r5", epochs["r5"], RunStatus.COMPLETED, "7", None),
        )
        assert sizes[:2] == [1, 5]
        if retried:
            assert outcomes == [None] * 5
        else:
            assert all(isinstance(o, StoreError) for o in outcomes), outcomes
            for write in appends:
                await write()
        for run_id in ("r0", "r1", "r2", "r3"):
            assert [e.seq for e in await store.load_journal(run_id)] == [0]
            run = await store.get_run(run_id)
            assert run is not None and run.steps == 1
        r4, r5 = await store.get_run("r4"), await store.get_run("r5")
        assert r4 is not None and r4.status == RunStatus.WAITING
        assert r5 is not None and r5.status == RunStatus.COMPLETED and r5.result == "7"
    finally:
        await store.close()


async def test_a_failing_write_in_a_batch_fails_alone(raw: redis.Redis) -> None:
    """A write whose script fails on the server (here its journal key has the wrong type) gets
    the error its own script would have raised; the other writes of the batch are applied."""
    store = await bare()
    try:
        epochs = await claimed(store, [f"r{i}" for i in range(4)])
        raw.set(f"{store.prefix}journal:r2", "not a hash")

        def append(run_id: str) -> Write:
            return lambda: store.append(run_id, epochs[run_id], [gc_entry(run_id, 0)])

        sizes = record_batches(store)
        outcomes = await batch_after_one(
            store, append("r0"), append("r1"), append("r2"), append("r3")
        )
        assert sizes == [1, 3]
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], StoreError) and "WRONGTYPE" in str(outcomes[1])
        for run_id in ("r1", "r3"):
            assert [e.seq for e in await store.load_journal(run_id)] == [0]
    finally:
        await store.close()
