"""A small RESP2 client on anyio streams: Redis natively under trio (and asyncio), no threads.

redis-py has no trio support; its sync client in threads costs a thread hop per command. This
transport speaks just what the store needs (a command, a reply; SUBSCRIBE and its messages) over
``anyio.connect_tcp`` / ``connect_unix``, with TLS from the ``rediss://`` URL. Connection options
are redis-py's URL options, parsed by redis-py (``redis.connection.parse_url``), and errors are
raised as redis-py's exception classes, so the store translates them in one place.

Each command takes an idle connection from the pool (or opens one, up to ``max_connections``),
sends the command and reads its reply. A connection that fails, times out or is cancelled in the
middle of a command is closed, never reused: its next reply could belong to the wrong command.
The reply parser keeps its state between reads, so a cancelled read loses nothing (the
subscription relies on that).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import redis.exceptions as rex
from redis.connection import SSLConnection, parse_url

from ._scripts import Script
from ._transport import Arg, Subscription

__all__ = ["NativeTransport", "native_options", "NATIVE_OPTIONS"]

#: redis-py URL options this transport honours; a URL with others uses the thread transport.
NATIVE_OPTIONS = frozenset(
    {
        "host", "port", "db", "username", "password", "path", "connection_class",
        "socket_timeout", "socket_connect_timeout", "client_name", "max_connections",
        "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname",
        "ssl_password", "ssl_ca_path", "ssl_ca_data", "ssl_min_version", "ssl_ciphers",
    }
)  # fmt: skip

#: Connections one store object keeps open per event loop unless the URL says max_connections.
DEFAULT_MAX_CONNECTIONS = 16

_CRLF = b"\r\n"
_INCOMPLETE = object()


@dataclass(frozen=True, slots=True)
class _Options:
    host: str
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None
    client_name: str | None
    timeout: float | None
    connect_timeout: float | None
    max_connections: int
    ssl_context: ssl.SSLContext | None
    check_hostname: bool


def native_options(url: str) -> tuple[dict[str, Any], list[str]]:
    """redis-py's parse of ``url`` and the options in it this transport does not support."""
    parse: Callable[[str], dict[str, Any]] = parse_url  # untyped in redis-py
    kwargs = parse(url)
    return kwargs, sorted(k for k in kwargs if k not in NATIVE_OPTIONS)


def _build_options(kwargs: dict[str, Any]) -> _Options:
    context: ssl.SSLContext | None = None
    check_hostname = False
    if kwargs.get("connection_class") is SSLConnection:
        context = ssl.create_default_context(
            cafile=kwargs.get("ssl_ca_certs"),
            capath=kwargs.get("ssl_ca_path"),
            cadata=kwargs.get("ssl_ca_data"),
        )
        reqs = kwargs.get("ssl_cert_reqs", "required")
        mode = (
            {
                "none": ssl.CERT_NONE,
                "optional": ssl.CERT_OPTIONAL,
                "required": ssl.CERT_REQUIRED,
            }.get(str(reqs).lower(), ssl.CERT_REQUIRED)
            if isinstance(reqs, str)
            else reqs
        )
        check_hostname = bool(kwargs.get("ssl_check_hostname", True)) and mode != ssl.CERT_NONE
        context.check_hostname = check_hostname
        context.verify_mode = mode
        if kwargs.get("ssl_certfile"):
            context.load_cert_chain(
                kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"), kwargs.get("ssl_password")
            )
        if kwargs.get("ssl_min_version") is not None:
            context.minimum_version = kwargs["ssl_min_version"]
        if kwargs.get("ssl_ciphers"):
            context.set_ciphers(kwargs["ssl_ciphers"])
    return _Options(
        host=str(kwargs.get("host", "localhost")),
        port=int(kwargs.get("port", 6379)),
        path=kwargs.get("path"),
        db=int(kwargs.get("db", 0) or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        client_name=kwargs.get("client_name"),
        timeout=kwargs.get("socket_timeout", 5.0),
        connect_timeout=kwargs.get("socket_connect_timeout", 5.0),
        max_connections=int(kwargs.get("max_connections") or DEFAULT_MAX_CONNECTIONS),
        ssl_context=context,
        check_hostname=check_hostname,
    )


# ---- the protocol -----------------------------------------------------------------------------


def _encode(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8", "surrogatepass")
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        out += [b"$%d\r\n" % len(data), data, _CRLF]
    return b"".join(out)


class _Error:
    __slots__ = ("line",)

    def __init__(self, line: bytes) -> None:
        self.line = line


def _exception(line: bytes) -> rex.RedisError:
    """redis-py's exception for an error reply (the classes its own parser would raise)."""
    text = line.decode("utf-8", "replace")
    code = text.split(" ", 1)[0]
    if code == "NOSCRIPT":
        return rex.NoScriptError(text)
    if code in ("WRONGPASS", "NOAUTH") or text.startswith("ERR invalid password"):
        return rex.AuthenticationError(text)
    if code == "NOPERM":
        return rex.NoPermissionError(text)
    if code == "READONLY":
        return rex.ReadOnlyError(text)
    if code == "OOM":
        return rex.OutOfMemoryError(text)
    if code == "LOADING":
        return rex.BusyLoadingError(text)
    return rex.ResponseError(text)


class _Parser:
    """Incremental RESP2 reply parser; ``get()`` returns a whole reply or ``_INCOMPLETE``.

    Its state (buffer, position, open arrays) survives between calls, so bytes may arrive in any
    pieces and a cancelled read loses nothing. One tight loop: replies of thousands of runs are
    hundreds of thousands of tokens."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._stack: list[list[Any]] = []  # open arrays: [items, still missing]

    def feed(self, data: bytes) -> None:
        self._buf += data

    def get(self) -> Any:
        buf, pos, stack = self._buf, self._pos, self._stack
        find, size_of = buf.find, len(buf)
        while True:
            end = find(_CRLF, pos)
            if end < 0:
                break
            kind = buf[pos]
            item: Any
            if kind == 0x24:  # $ bulk string
                size = int(buf[pos + 1 : end])
                if size < 0:
                    item, pos = None, end + 2
                else:
                    stop = end + 2 + size
                    if stop + 2 > size_of:
                        break
                    item, pos = bytes(buf[end + 2 : stop]), stop + 2
            elif kind == 0x2A:  # * array
                size = int(buf[pos + 1 : end])
                pos = end + 2
                if size > 0:
                    stack.append([[], size])
                    continue
                item = [] if size == 0 else None
            elif kind == 0x3A:  # : integer
                item, pos = int(buf[pos + 1 : end]), end + 2
            elif kind == 0x2B:  # + simple string
                item, pos = bytes(buf[pos + 1 : end]), end + 2
            elif kind == 0x2D:  # - error
                item, pos = _Error(bytes(buf[pos + 1 : end])), end + 2
            else:
                raise rex.InvalidResponse(f"unexpected RESP reply type {chr(kind)!r}")
            while stack:
                top = stack[-1]
                top[0].append(item)
                top[1] -= 1
                if top[1]:
                    break
                stack.pop()
                item = top[0]
            else:  # a whole reply
                if pos == size_of:
                    buf.clear()
                    pos = 0
                elif pos > 65536:
                    del buf[:pos]
                    pos = 0
                self._pos = pos
                return item
        self._pos = pos
        return _INCOMPLETE


class _Connection:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.parser = _Parser()

    async def send(self, args: Sequence[Arg]) -> None:
        await self.stream.send(_encode(args))

    async def read(self) -> Any:
        while True:
            reply = self.parser.get()
            if reply is not _INCOMPLETE:
                if isinstance(reply, _Error):
                    raise _exception(reply.line)
                return reply
            self.parser.feed(await self.stream.receive(262144))

    async def request(self, *args: Arg) -> Any:
        await self.send(args)
        return await self.read()

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)


_IO_ERRORS = (
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ssl.SSLError,
)


class NativeTransport:
    """Pooled RESP2 connections on anyio streams, bound to the event loop that created them."""

    name = "native"

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self._options = _build_options(kwargs)
        self._token = anyio.lowlevel.current_token()
        self._idle: list[_Connection] = []
        self._slots = anyio.Semaphore(self._options.max_connections)
        self._closed = False

    def usable(self) -> bool:
        try:
            return anyio.lowlevel.current_token() == self._token
        except RuntimeError:
            return False

    async def _connect(self) -> _Connection:
        o = self._options
        with anyio.fail_after(o.connect_timeout):
            stream: anyio.abc.ByteStream
            if o.path:
                stream = await anyio.connect_unix(o.path)
            elif o.ssl_context is not None:
                stream = await anyio.connect_tcp(
                    o.host,
                    o.port,
                    ssl_context=o.ssl_context,
                    tls_hostname=o.host if o.check_hostname else None,
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(o.host, o.port)
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if raw is not None and not o.path:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # as redis-py does
        conn = _Connection(stream)
        try:
            with anyio.fail_after(o.timeout):
                if o.password is not None:
                    auth: list[Arg] = ["AUTH", o.password]
                    if o.username:
                        auth.insert(1, o.username)
                    await conn.request(*auth)
                if o.client_name:
                    await conn.request("CLIENT", "SETNAME", o.client_name)
                if o.db:
                    await conn.request("SELECT", str(o.db))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.aclose()
            raise
        return conn

    async def _roundtrip(self, args: Sequence[Arg]) -> Any:
        async with self._slots:
            conn: _Connection | None = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = await self._connect()
                with anyio.fail_after(self._options.timeout):
                    reply = await conn.request(*args)
            except rex.ResponseError:
                if conn is not None:
                    await self._release(conn)  # an error reply leaves the connection in step
                raise
            except BaseException as exc:
                if conn is not None:
                    with anyio.CancelScope(shield=True):
                        await conn.aclose()
                if isinstance(exc, TimeoutError):
                    raise rex.TimeoutError(f"Redis did not answer in time ({exc})") from exc
                if isinstance(exc, _IO_ERRORS):
                    raise rex.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
                raise
            await self._release(conn)
            return reply

    async def _release(self, conn: _Connection) -> None:
        if self._closed:  # the store closed while this command ran: keep nothing open
            await conn.aclose()
        else:
            self._idle.append(conn)

    async def command(self, *args: Arg) -> Any:
        return await self._roundtrip(args)

    async def script(self, script: Script, args: Sequence[Arg]) -> Any:
        try:
            return await self._roundtrip(["EVALSHA", script.sha, 0, *args])
        except rex.NoScriptError:
            await self._roundtrip(["SCRIPT", "LOAD", script.source])
            return await self._roundtrip(["EVALSHA", script.sha, 0, *args])

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[Subscription]:
        try:
            conn = await self._connect()
        except TimeoutError as exc:
            raise rex.TimeoutError(f"connecting to Redis timed out ({exc})") from exc
        except _IO_ERRORS as exc:
            raise rex.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        try:
            with anyio.fail_after(self._options.timeout):
                await conn.request("SUBSCRIBE", channel)
        except TimeoutError as exc:
            with anyio.CancelScope(shield=True):
                await conn.aclose()
            raise rex.TimeoutError(f"Redis did not confirm SUBSCRIBE ({exc})") from exc
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await conn.aclose()
            if isinstance(exc, _IO_ERRORS):
                raise rex.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
            raise
        try:
            yield _NativeSubscription(conn, self._options.timeout)
        except _IO_ERRORS as exc:
            raise rex.ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()


class _NativeSubscription:
    def __init__(self, conn: _Connection, timeout: float | None) -> None:
        self._conn = conn
        self._timeout = timeout
        self._pending: deque[bytes] = deque()  # messages read while waiting for a PONG

    async def _read(self) -> Any:
        try:
            return await self._conn.read()  # cancel-safe: the parser keeps its state
        except _IO_ERRORS as exc:
            raise rex.ConnectionError(f"{type(exc).__name__}: {exc}") from exc

    async def get(self, timeout: float) -> bytes | None:
        if self._pending:
            return self._pending.popleft()
        with anyio.move_on_after(max(timeout, 0.0)):
            while True:
                reply = await self._read()
                if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                    data: bytes = reply[2]
                    return data
        return None

    async def ping(self) -> None:
        """Prove the subscription is alive (a silently dropped connection would never say)."""
        try:
            with anyio.fail_after(self._timeout):
                await self._conn.send(["PING"])
                while True:
                    reply = await self._read()
                    if isinstance(reply, list) and reply and reply[0] == b"pong":
                        return
                    if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                        self._pending.append(reply[2])
        except TimeoutError as exc:
            raise rex.TimeoutError("the subscription did not answer PING") from exc
        except _IO_ERRORS as exc:
            raise rex.ConnectionError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._conn.aclose()
