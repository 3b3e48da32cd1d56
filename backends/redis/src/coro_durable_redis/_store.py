"""RedisStore: the store protocol on Redis. The user-facing documentation (URL parameters, key
layout, durability modes) is the package docstring, in ``coro_durable_redis/__init__.py``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import redis
import redis.exceptions as rex

from coro_durable.errors import (
    ConfigurationError,
    ConflictError,
    CorruptJournalError,
    LeaseLost,
    PermanentStoreError,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
    TransientStoreError,
)
from coro_durable.store import (
    CANCELLED_ERROR,
    GROUP_COMMIT_OPTIONS,
    ClaimRequest,
    GroupCommit,
    GroupCommitOptions,
    JournalEntry,
    Listener,
    ListenerSet,
    RunQuery,
    RunRecord,
    RunStatus,
    Wait,
    WorkerRecord,
    check_run_id,
    decode_meta,
    decode_waits,
    encode_meta,
    encode_waits,
    parse_group_option,
    retry_conflict,
    retry_refused,
)

from ._native import NativeTransport, native_options
from ._scripts import LAYOUT_VERSION, SCRIPTS
from ._transport import Arg, AsyncioTransport, ThreadTransport, Transport

__all__ = ["RedisStore", "RedisDurabilityError", "DURABILITY_MODES"]

log = logging.getLogger("coro_durable.redis")

T = TypeVar("T")

DURABILITY_MODES = ("strict", "always", "volatile")
_TRANSPORTS = ("auto", "native", "asyncio", "thread")
_OUR_PARAMS = (
    "prefix",
    "durability",
    "transport",
    "threads",
    "retry_window",
    "open_timeout",
    *GROUP_COMMIT_OPTIONS,
)
_DEFAULT_PREFIX = "coro_durable:"

# The longest a watcher sleeps without asking the server when work next falls due.
_WATCH_BACKSTOP = 30.0

#: The layout upgrade's lock expires this long after the upgrader last renewed it (ms).
_UPGRADE_LOCK_MS = 30_000

#: A group commit batch is sent in ``batch`` script calls of at most about this many bytes of
#: arguments, so a batch of large payloads does not block the server in one long script.
BATCH_BYTES = 1 << 20


class RedisDurabilityError(PermanentStoreError, ConfigurationError):
    """The Redis server does not persist writes the way the store URL's ``durability`` asks.

    Permanent (no retry makes the server persist), and a ConfigurationError: the server's
    configuration or the URL's ``durability`` must change."""


@dataclass(frozen=True, slots=True)
class _Write:
    """One fenced write (append, park, finish): its own script and arguments (after the prefix),
    and its op letter in the group commit ``batch`` script."""

    script: str
    op: bytes
    args: Sequence[Arg]


# ---- URL ------------------------------------------------------------------------------------------


def _parse_url(url: str) -> tuple[str, dict[str, str], str]:
    """``(redis-py URL without our parameters, our parameters, URL safe to show)``."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"{_safe(url)!r} is not a Redis URL; write redis://host:6379/0 (or rediss:// for TLS)"
        )
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in _OUR_PARAMS:
            if key in ours:
                raise ConfigurationError(f"Redis store URL {_safe(url)!r} gives {key} twice")
            ours[key] = value
        else:
            theirs.append((key, value))
    stripped = urlunsplit(parts._replace(query=urlencode(theirs)))
    return stripped, ours, _safe(url)


def _safe(url: str) -> str:
    """The URL without credentials or query, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "") if parts.netloc else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _positive(url: str, key: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not (number >= 0 and math.isfinite(number)):
        raise ConfigurationError(
            f"Redis store URL {url!r}: {key} is a number of seconds >= 0, not {value!r}"
        )
    return number


# ---- encoding -------------------------------------------------------------------------------------
#
# Everything is sent as bytes we encoded ourselves (``surrogatepass``: a lone surrogate in a payload
# is stored and read back as it was instead of failing the write) and read back as bytes.


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _s(data: Any) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:  # not written by us: keep what can be read (checksums catch it)
            return data.decode("utf-8", "replace")
    return str(data)


def _opt(value: str | None) -> bytes:
    return b"" if value is None else b"=" + _b(value)


def _opt_time(value: float | None) -> bytes:
    return b"" if value is None else b"=" + _b(repr(float(value)))


_RUN_STRINGS = ("owner", "result", "error", "last_error")


def _run_fields(run: RunRecord) -> list[bytes]:
    """Field/value pairs of a new run's hash, beside those the create script sets itself."""
    pairs: list[bytes] = [
        b"input", _b(run.input),
        b"epoch", _b(str(int(run.epoch))),
        b"cancel_requested", b"1" if run.cancel_requested else b"0",
        b"crash_count", _b(str(int(run.crash_count))),
        b"steps", _b(str(int(run.steps))),
    ]  # fmt: skip
    for name in _RUN_STRINGS:
        value = getattr(run, name)
        if value is not None:
            pairs += [_b(name), _b(value)]
    if run.lease_expires is not None:
        pairs += [b"lease_expires", _b(repr(float(run.lease_expires)))]
    if run.meta:
        pairs += [b"meta", _b(encode_meta(run.meta))]
    if run.waits:
        pairs += [b"waits", _b(encode_waits(run.waits) or "")]
    return pairs


def _index(status: RunStatus | None, workflow: str | None) -> str:
    """The run index (after the prefix) for a status and/or workflow filter."""
    if status is not None and workflow is not None:
        return f"ix:wfst:{RunStatus(status).value}:{workflow}"
    if status is not None:
        return f"ix:st:{RunStatus(status).value}"
    if workflow is not None:
        return f"ix:wf:{workflow}"
    return "ix:all"


def _hash(reply: Sequence[Any] | dict[Any, Any]) -> dict[str, str]:
    """A hash as text, from HGETALL's flat field/value list (a script's reply, or a JSON list of
    it) or the dict redis-py makes of an HGETALL command's reply."""
    if isinstance(reply, dict):
        return {_s(k): _s(v) for k, v in reply.items()}
    return {_s(reply[i]): _s(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}


def _row(reply: Any) -> dict[str, str]:
    """A script's row (see ``row`` in the scripts: the run hash's flat field/value pairs as JSON
    text, ``{}`` for an unknown run) or a flat list of them, as a dict; empty for no run."""
    if isinstance(reply, bytes | str):
        try:
            reply = json.loads(reply)
        except ValueError as exc:
            raise CorruptJournalError(f"a run row from Redis cannot be decoded ({exc})") from None
    return _hash(reply) if reply else {}


def _run_from_row(row: Any) -> RunRecord:
    """A RunRecord from a script's row (``_row``), read by field name; a field that is absent
    is None (or its default)."""
    h = _row(row)
    where = f"run {h.get('run_id', '?')!r}"
    try:
        return RunRecord(
            run_id=h["run_id"],
            workflow=h["workflow"],
            input=h["input"],
            status=RunStatus(h["status"]),
            epoch=int(h.get("epoch") or 0),
            owner=h.get("owner"),
            lease_expires=_float(h.get("lease_expires")),
            wake_at=_float(h.get("wake_at")),
            waits=decode_waits(h.get("waits"), where),
            cancel_requested=h.get("cancel_requested") == "1",
            result=h.get("result"),
            error=h.get("error"),
            crash_count=int(h.get("crash_count") or 0),
            last_error=h.get("last_error"),
            steps=int(h.get("steps") or 0),
            created_at=float(h["created_at"]),
            updated_at=float(h["updated_at"]),
            meta=decode_meta(h.get("meta"), where),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptJournalError(
            f"{where}: its Redis hash is missing or has a malformed field "
            f"({type(exc).__name__}: {exc}); it was modified outside coro_durable"
        ) from None


def _float(value: str | None) -> float | None:
    return None if value is None else float(value)


#: A journal entry's stored fields: JournalEntry's, by name (layout 2).
_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(JournalEntry))
#: Layout 1 stored an entry as a JSON array of these fields, in this order (no meta).
_V1_ENTRY_FIELDS = (
    "seq", "kind", "name", "digest", "status", "args", "result", "error", "attempts", "key",
    "started_at", "finished_at", "due_at", "checksum",
)  # fmt: skip


def _entry_value(entry: JournalEntry) -> str:
    """The journal hash's value of an entry: ``<status>|<checksum>|<JSON object of its fields>``
    (the scripts read the status and checksum before the JSON)."""
    if "|" in entry.status or "|" in entry.checksum:
        raise StoreError(
            f"journal entry seq {entry.seq} has a status or checksum containing '|', which the "
            "Redis store cannot frame; entries come from JournalEntry.sealed()"
        )
    fields = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return f"{entry.status}|{entry.checksum}|{body}"


def _entry_quad(entry: JournalEntry) -> list[bytes]:
    """``seq, status, checksum, stored value`` of a journal entry, as the scripts take them."""
    value = _entry_value(entry)
    return [_b(str(int(entry.seq))), _b(entry.status), _b(entry.checksum), _b(value)]


def _entry_fields(text: str) -> dict[str, Any]:
    """The fields of a stored entry by name; a layout-1 entry (a JSON array) is read by its
    positions. Raises ValueError or IndexError when the value is not an entry."""
    fields = json.loads(text.split("|", 2)[2])
    if isinstance(fields, list):  # layout 1 (an older worker may still write it)
        if len(fields) != len(_V1_ENTRY_FIELDS):
            raise ValueError(f"not a {len(_V1_ENTRY_FIELDS)}-field entry")
        return dict(zip(_V1_ENTRY_FIELDS, fields, strict=True))
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    return fields


def _entry_from_value(run_id: str, raw: Any) -> JournalEntry:
    try:
        fields = _entry_fields(_s(raw))
        where = f"run {run_id!r} journal seq {fields.get('seq')}"
        known = {name: fields[name] for name in _ENTRY_FIELDS if name in fields}
        known["meta"] = decode_meta(fields.get("meta"), where)
        return JournalEntry(**known)
    except (IndexError, ValueError, TypeError) as exc:
        raise CorruptJournalError(
            f"run {run_id!r}: a journal entry in Redis cannot be decoded ({exc}); it was torn or "
            "modified outside coro_durable. The run is quarantined rather than replayed with a "
            "wrong value; inspect it with `coro-durable show`"
        ) from None


def _pairs(reply: Any) -> dict[str, str]:
    """CONFIG GET / INFO replies as {str: str}, whatever shape redis-py parsed them into."""
    if isinstance(reply, dict):
        return {_s(k): _s(v) for k, v in reply.items()}
    if isinstance(reply, list | tuple):
        return {_s(reply[i]): _s(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
    if isinstance(reply, bytes | str):
        out: dict[str, str] = {}
        for line in _s(reply).splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out
    return {}


# ---- errors ---------------------------------------------------------------------------------------

_TRANSIENT_REPLIES = ("READONLY", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "OOM", "NOREPLICAS")


def _unresolvable(exc: BaseException) -> socket.gaierror | None:
    """The name lookup failure behind ``exc`` when the host name does not exist (not when the
    resolver merely could not answer now: EAI_AGAIN is transient)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return None if cause.errno == socket.EAI_AGAIN else cause
        cause = cause.__cause__ or cause.__context__
    return None


def _is_transient(exc: BaseException) -> bool:
    """Connection trouble and server states that pass (failover, loading, busy, out of memory)."""
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError | rex.NoPermissionError):
        return False
    if _unresolvable(exc) is not None:
        return False
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError):
        return True
    if isinstance(exc, rex.ReadOnlyError | rex.OutOfMemoryError | rex.BusyLoadingError):
        return True
    if isinstance(exc, rex.ResponseError):
        return str(exc).split(" ", 1)[0].upper() in _TRANSIENT_REPLIES
    return isinstance(exc, rex.MaxConnectionsError)


class RedisStore:
    """A store on a Redis server (``redis://host:port/db?prefix=...``); see the package docs."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0") -> None:
        self.url = url
        self._redis_url, ours, self.where = _parse_url(url)
        self.prefix = ours.get("prefix", _DEFAULT_PREFIX)
        if not self.prefix:
            raise ConfigurationError(
                f"Redis store URL {self.where!r}: prefix must not be empty (it scopes every key)"
            )
        self.durability = ours.get("durability", "strict").lower()
        if self.durability not in DURABILITY_MODES:
            raise ConfigurationError(
                f"Redis store URL {self.where!r}: durability must be one of "
                f"{', '.join(DURABILITY_MODES)}, not {ours['durability']!r}"
            )
        self.transport = ours.get("transport", "auto").lower()
        if self.transport not in _TRANSPORTS:
            raise ConfigurationError(
                f"Redis store URL {self.where!r}: transport must be one of "
                f"{', '.join(_TRANSPORTS)}, not {ours['transport']!r}"
            )
        self.threads = int(_positive(self.where, "threads", ours.get("threads"), 16)) or 1
        self.retry_window = _positive(self.where, "retry_window", ours.get("retry_window"), 2.0)
        self.open_timeout = _positive(self.where, "open_timeout", ours.get("open_timeout"), 10.0)
        group = GroupCommitOptions()
        for key in GROUP_COMMIT_OPTIONS:
            if key in ours:
                group = parse_group_option(group, key, ours[key], f"Redis store URL {self.where!r}")
        #: Batches concurrent appends, parks and finishes into one script call (``group_commit=0``
        #: in the URL turns it off; see the package docstring).
        self.group_commit: GroupCommit[_Write, Any] | None = (
            GroupCommit(self._flush, group) if group.enabled else None
        )
        try:  # let redis-py reject unknown or malformed parameters now, not at the first command
            redis.ConnectionPool.from_url(self._redis_url).make_connection()
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"Redis store URL {self.where!r} has an option redis-py does not accept: {exc}. "
                f"coro_durable's own options are {', '.join(_OUR_PARAMS)}; the others go to "
                "redis-py (socket_timeout, client_name, ...)"
            ) from None
        self._native_kwargs, unsupported = native_options(self._redis_url)
        self._native_ok = not unsupported
        if self.transport == "native" and unsupported:
            raise ConfigurationError(
                f"Redis store URL {self.where!r}: transport=native does not support the option(s) "
                f"{', '.join(unsupported)}; drop them or use transport=thread"
            )
        self._origin = uuid.uuid4().hex[:12]  # tags our pub/sub messages: we notify ourselves
        self._channel = _b(self.prefix + "wake")
        self._listeners = ListenerSet()
        self._asyncio: AsyncioTransport | None = None
        self._native: NativeTransport | None = None
        self._thread: ThreadTransport | None = None
        self._opened = False
        self._clock_offset = 0.0  # server time minus anyio.current_time(), measured by watch()
        self.server: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r}, prefix={self.prefix!r})"

    # -- plumbing -------------------------------------------------------------------------------

    def _transport(self) -> Transport:
        on_asyncio = _on_asyncio()
        choice = self.transport
        if choice == "auto":
            # redis-py's asyncio client under asyncio; under trio (no redis-py support) the native
            # client, or redis-py in threads for URL options the native client does not handle
            choice = "asyncio" if on_asyncio else ("native" if self._native_ok else "thread")
        if choice == "asyncio":
            if not on_asyncio:
                raise ConfigurationError(
                    f"Redis store {self.where!r}: transport=asyncio needs an asyncio event loop; "
                    "use transport=auto or native"
                )
            if self._asyncio is None or not self._asyncio.usable():
                self._asyncio = AsyncioTransport(self._redis_url)
            return self._asyncio
        if choice == "native":
            if self._native is None or not self._native.usable():
                self._native = NativeTransport(self._native_kwargs)
            return self._native
        if self._thread is None:
            self._thread = ThreadTransport(self._redis_url, self.threads)
        return self._thread

    def _translate(self, exc: BaseException) -> StoreError:
        """The coro_durable error for a redis-py (or socket) exception: permanent for refused
        credentials or ACL permissions and a host name that does not resolve, transient for
        connection trouble and passing server states (see ``_is_transient``)."""
        what = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError):
            return PermanentStoreError(
                f"Redis at {self.where} refused our credentials ({what}); fix the user and "
                "password in the store URL"
            )
        lookup = _unresolvable(exc)
        if lookup is not None:
            return PermanentStoreError(
                f"Redis at {self.where}: its host name does not resolve ({lookup}); fix the host "
                "in the store URL (a typo, or a DNS name that does not exist)"
            )
        if isinstance(exc, rex.NoPermissionError):
            return PermanentStoreError(
                f"Redis at {self.where} denied a command to our user ({what}); its ACL must allow "
                "EVALSHA, SCRIPT LOAD, SUBSCRIBE, PUBLISH, INFO, CONFIG GET (or run with "
                "durability=volatile), TIME and the hash, list, set, sorted-set and string "
                f"commands, on the keys and channel starting with {self.prefix!r}"
            )
        if _is_transient(exc):
            return TransientStoreError(
                f"Redis at {self.where} is unreachable or busy ({what}); retrying"
            )
        return StoreError(f"Redis at {self.where} failed ({what})")

    async def _io(self, fn: Callable[[Transport], Awaitable[T]]) -> T:
        """Run ``fn`` on the transport, retrying connection trouble for ``retry_window`` seconds.

        Callers make every retried write recognisable (identical journal entries, or an operation
        token the script remembers), so a write whose reply was lost is never applied twice.
        """
        give_up: float | None = None
        delay = 0.01
        while True:
            try:
                return await fn(self._transport())
            except (rex.RedisError, OSError) as exc:
                error = self._translate(exc)
                if not _is_transient(exc):
                    raise error from exc
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self.retry_window
                if now + delay > give_up:
                    raise error from exc
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _script(self, name: str, args: Sequence[Arg]) -> Any:
        script = SCRIPTS[name]
        full: list[Arg] = [_b(self.prefix), *args]
        return await self._io(lambda t: t.script(script, full))

    def _refused(self, reply: Sequence[Any], run_id: str, epoch: int | None) -> NoReturn:
        kind = _s(reply[0])
        if kind == "missing":
            raise RunNotFoundError(run_id)
        if kind == "lease":
            raise LeaseLost(
                run_id, epoch or 0, f"current token is {_s(reply[1])}, status {_s(reply[2])}"
            )
        if kind == "error":  # a write of a group commit batch failed (as its own script would)
            raise self._translate(rex.ResponseError(_s(reply[1])))
        if kind == "conflict":
            existing = _entry_from_value(run_id, reply[2])
            raise ConflictError(
                f"run {run_id!r}: seq {_s(reply[1])} already holds a final "
                f"{existing.describe()} entry"
            )
        raise StoreError(f"Redis store {self.where}: unexpected script reply {reply!r}")

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    # -- opening ------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check the server's persistence against ``durability``, load the scripts.

        Connection trouble is retried for ``open_timeout`` seconds, then StoreUnavailableError.
        """
        if self._opened:
            return
        try:
            await self._open_retrying()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()  # a store that failed to open holds no connection
            raise
        self._opened = True

    async def _open_retrying(self) -> None:
        give_up = time.monotonic() + self.open_timeout
        delay = 0.05
        warned = False
        while True:
            try:
                await self._open_once()
                break
            except (rex.RedisError, OSError) as exc:
                if not _is_transient(exc):
                    raise self._translate(exc) from exc
                left = give_up - time.monotonic()
                if left <= 0:
                    raise StoreUnavailableError(
                        f"Redis at {self.where} did not answer within open_timeout="
                        f"{self.open_timeout:g}s ({type(exc).__name__}: {exc}); check that the "
                        "server is running and the URL's host, port and TLS scheme are right"
                    ) from exc
                if not warned:
                    warned = True
                    log.warning(
                        "Redis store %s: cannot connect (%s: %s); retrying for up to "
                        "open_timeout=%gs",
                        self.where,
                        type(exc).__name__,
                        exc,
                        self.open_timeout,
                    )
            await anyio.sleep(min(delay, max(left, 0.0)))
            delay = min(delay * 2, 1.0)

    async def _open_once(self) -> None:
        transport = self._transport()
        await self._check_durability(transport)
        for script in SCRIPTS.values():
            await transport.command("SCRIPT", "LOAD", script.source)
        meta = _b(self.prefix + "meta")
        await transport.command("HSETNX", meta, "layout", str(LAYOUT_VERSION))  # a fresh prefix
        while (layout := await self._layout(transport)) < LAYOUT_VERSION:
            await self._upgrade(transport, layout)

    async def _layout(self, transport: Transport) -> int:
        """The prefix's key layout version; refuses one newer than this code knows."""
        layout = int(_s(await transport.command("HGET", _b(self.prefix + "meta"), "layout")))
        if layout > LAYOUT_VERSION:
            raise PermanentStoreError(
                f"Redis store {self.where} prefix {self.prefix!r} holds key layout version "
                f"{layout}, newer than this coro_durable_redis understands ({LAYOUT_VERSION}); "
                "upgrade coro-durable-redis"
            )
        return layout

    async def _upgrade(self, transport: Transport, layout: int) -> None:
        """Bring an older key layout to LAYOUT_VERSION, in place, once.

        The upgrade holds the lock key ``P meta:upgrade`` (renewed as it goes, so a dead
        upgrader's lock expires within ``_UPGRADE_LOCK_MS``); a store that finds it taken waits
        for the layout to change, then finds the work done. Layout 1 -> 2 rewrites every journal
        entry from a JSON array to a JSON object of its named fields (runs need nothing: their
        hashes have named fields already, and a missing ``meta`` reads as empty). Layout 2 -> 3
        drops each run's prose ``waiting_on`` and makes a waiting run due now, so that it
        re-parks with its structured ``waits``. Each run's
        entries are rewritten in one script that skips a value changed meanwhile, so an upgrade
        that dies halfway is simply done again by the next open.
        """
        token = _b(uuid.uuid4().hex)

        async def locked() -> bool:  # take or renew the lock
            args = self._args(token, _b(str(_UPGRADE_LOCK_MS)))
            return bool(int(await transport.script(SCRIPTS["upgrade_lock"], args)))

        if not await locked():
            await anyio.sleep(0.05)  # another store is upgrading: wait for the layout to change
            return
        try:
            if await self._layout(transport) != layout:
                return  # done by another store just before we took the lock
            runs = rewritten = woken = 0
            index = _b(f"{self.prefix}ix:all")  # every run
            while ids := await transport.command("ZRANGE", index, runs, runs + 499):
                if not await locked():
                    return  # our lock expired and another store took over: wait for it
                for run_id in ids:
                    if layout < 2:
                        rewritten += await self._upgrade_journal(transport, _s(run_id))
                    if layout < 3:
                        args = self._args(run_id)
                        woken += int(await transport.script(SCRIPTS["upgrade_waits"], args))
                runs += len(ids)
            layout_arg = b"=" + _b(str(LAYOUT_VERSION))
            if int(await transport.script(SCRIPTS["upgrade_done"], self._args(token, layout_arg))):
                log.info(
                    "Redis store %s prefix %r: upgraded the key layout from version %d to %d "
                    "(%d journal entries of %d runs rewritten, %d parked runs made due to "
                    "re-park with structured waits)",
                    self.where, self.prefix, layout, LAYOUT_VERSION, rewritten, runs, woken,
                )  # fmt: skip
        finally:
            with anyio.CancelScope(shield=True):
                await transport.script(SCRIPTS["upgrade_done"], self._args(token, b""))

    async def _upgrade_journal(self, transport: Transport, run_id: str) -> int:
        """Rewrite the layout-1 entries of one run's journal; how many were rewritten."""
        flat = await transport.command("HGETALL", _b(f"{self.prefix}journal:{run_id}"))
        changes: list[Arg] = []
        for seq, value in _hash(flat).items():
            try:
                entry = _entry_from_value(run_id, value)
            except CorruptJournalError:
                continue  # left as it is: loading the journal reports it
            new = _entry_value(entry)
            if new != value:
                changes += [_b(seq), _b(value), _b(new)]
        if not changes:
            return 0
        return int(
            await transport.script(SCRIPTS["upgrade_entries"], self._args(_b(run_id), *changes))
        )

    def _args(self, *args: Arg) -> list[Arg]:
        return [_b(self.prefix), *args]

    async def _check_durability(self, transport: Transport) -> None:
        settings: dict[str, str] = {}
        try:
            settings.update(_pairs(await transport.command("CONFIG", "GET", "appendonly")))
            settings.update(_pairs(await transport.command("CONFIG", "GET", "appendfsync")))
        except rex.ResponseError:  # CONFIG is disabled or renamed (managed services): ask INFO
            try:
                persistence = _pairs(await transport.command("INFO", "persistence"))
            except rex.ResponseError:
                persistence = {}  # unknowable: strict modes refuse below, volatile does not care
            if "aof_enabled" in persistence:
                settings["appendonly"] = "yes" if persistence["aof_enabled"] == "1" else "no"
        info: dict[str, str] = {}
        for section in ("server", "memory"):
            try:
                info.update(_pairs(await transport.command("INFO", section)))
            except rex.ResponseError:
                pass
        self.server = {
            "redis_version": info.get("redis_version", "unknown"),
            "appendonly": settings.get("appendonly", "unknown"),
            "appendfsync": settings.get("appendfsync", "unknown"),
            "maxmemory": info.get("maxmemory", "unknown"),
            "maxmemory_policy": info.get("maxmemory_policy", "unknown"),
            "durability": self.durability,
        }
        if self.durability == "volatile":
            return
        appendonly, fsync = self.server["appendonly"], self.server["appendfsync"]
        opt_in = (
            "or, for tests and data you can afford to lose, accept the risk with "
            "`durability=volatile` in the store URL"
        )
        if appendonly != "yes":
            seen = "appendonly no" if appendonly == "no" else "its persistence cannot be read"
            raise RedisDurabilityError(
                f"Redis at {self.where} runs without an append-only file ({seen}): every run, "
                "journal entry and signal would be lost when the server restarts (RDB snapshots "
                "lose everything since the last one), so coro_durable refuses to use it. Turn "
                "persistence on (`CONFIG SET appendonly yes`, and `appendonly yes` in redis.conf, "
                f"with appendfsync everysec or always), {opt_in}"
            )
        policy = self.server["maxmemory_policy"]
        if policy.startswith("allkeys-") and self.server["maxmemory"] != "0":
            raise RedisDurabilityError(
                f"Redis at {self.where} evicts keys when it reaches maxmemory "
                f"(maxmemory-policy {policy}): runs and journal entries could silently vanish, so "
                "coro_durable refuses to use it. Set `CONFIG SET maxmemory-policy noeviction` "
                "(writes then fail loudly when memory is full, and the store retries them), or a "
                f"volatile-* policy, which only evicts keys with a TTL, {opt_in}"
            )
        if fsync == "no" or (self.durability == "always" and fsync != "always"):
            wanted = "always" if self.durability == "always" else "everysec or always"
            raise RedisDurabilityError(
                f"Redis at {self.where} has appendfsync {fsync}, but durability={self.durability} "
                f"needs appendfsync {wanted}: with `no` the OS decides when writes reach the disk "
                "(about 30 s on Linux), with `everysec` a machine crash can lose the last second "
                f"of acknowledged writes. Set `CONFIG SET appendfsync {wanted.split()[-1]}`, "
                f"{opt_in}"
            )

    async def close(self) -> None:
        self._opened = False
        transports = (self._asyncio, self._native, self._thread)
        self._asyncio = self._native = self._thread = None
        for transport in transports:
            if transport is not None and transport.usable():
                try:
                    await transport.close()
                except (rex.RedisError, OSError) as exc:
                    log.debug("closing %s: %s", self.where, exc)

    async def settings(self) -> dict[str, str]:
        """What the server said at ``open()``: redis_version, appendonly, appendfsync, and the
        store's durability mode and transport for this event loop."""
        return {**self.server, "transport": self._transport().name}

    # -- notifications ------------------------------------------------------------------------------

    async def watch(self) -> None:
        """Call the listeners when another process publishes new work, and when the next timer or
        lease expiry in the store falls due. Runs until cancelled (the Runtime runs it)."""
        delay = 0.05
        while True:
            try:
                async with self._transport().subscribe(_s(self._channel)) as sub:
                    delay = 0.05
                    self._listeners.notify()  # (re)subscribed: anything published before was missed
                    due = await self._next_wake()
                    while True:
                        now = anyio.current_time()
                        wait = _WATCH_BACKSTOP if due is None else max(due - now, 0.002)
                        message = await sub.get(min(wait, _WATCH_BACKSTOP))
                        if message is None:
                            if due is not None and anyio.current_time() >= due:
                                self._listeners.notify()
                            else:  # a quiet backstop period: is the subscription alive?
                                await sub.ping()
                            due = await self._next_wake()
                            continue
                        origin, _, at = _s(message).partition("|")
                        local = float(at) - self._clock_offset if at else None
                        if local is not None and local > anyio.current_time() + 0.001:
                            if due is None or local < due:
                                due = local  # a future timer: wake the listeners then
                        elif origin != self._origin:  # work now (ours was notified directly)
                            self._listeners.notify()
            except Exception as exc:  # never let a watcher crash the Runtime; retry
                log.warning(
                    "Redis store %s: listening for wake-ups failed (%s: %s); retrying in %.2fs",
                    self.where, type(exc).__name__, exc, delay,
                )  # fmt: skip
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _next_wake(self) -> float | None:
        """anyio.current_time() at which the store's next future timer or lease expiry falls."""
        reply = await self._script("next_wake", [])
        server_now = float(_s(reply[0]))
        self._clock_offset = server_now - anyio.current_time()
        nxt = _s(reply[1])
        return float(nxt) - self._clock_offset if nxt else None

    # -- runs ---------------------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        check_run_id(run.run_id)
        args = [
            _b(self._origin), _b(uuid.uuid4().hex), _b(run.run_id), _b(run.workflow),
            *_run_fields(run),
        ]  # fmt: skip
        reply = await self._script("create", args)
        created = int(reply[0]) == 1
        stored = _run_from_row(reply[1])
        if created:
            self._listeners.notify()
        return stored, created

    async def get_run(self, run_id: str) -> RunRecord | None:
        reply = _row(await self._script("get", [_b(run_id)]))
        return _run_from_row(reply) if reply else None  # an unknown run's hash is empty

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        if query.limit <= 0:
            return []
        if query.tags:  # the index of one of the tags; the other filters on its runs
            key, value = min(query.tags.items())
            return await self._list_matching(query, f"ix:tag:{key}={value}")
        if query.waiting_for is not None:  # no index holds the waits: the waiting runs
            if query.status not in (None, RunStatus.WAITING):
                return []
            return await self._list_matching(query, _index(RunStatus.WAITING, query.workflow))
        return await self._list(_index(query.status, query.workflow), query.offset, query.limit)

    async def _list_matching(self, query: RunQuery, index: str) -> list[RunRecord]:
        """Page through ``index``, newest first, keeping the runs ``query`` matches."""
        matched: list[RunRecord] = []
        want, start, page = max(query.offset, 0) + query.limit, 0, 500
        while len(matched) < want:
            runs = await self._list(index, start, page)
            matched += [run for run in runs if query.matches(run)]
            if len(runs) < page:
                break
            start += page
        return matched[max(query.offset, 0) : want]

    async def _list(self, index: str, offset: int, limit: int) -> list[RunRecord]:
        start = max(offset, 0)
        reply = await self._script("list", [_b(index), _b(str(start)), _b(str(start + limit - 1))])
        try:
            rows = json.loads(_s(reply))
        except ValueError as exc:
            raise CorruptJournalError(
                f"Redis store {self.where}: unreadable run list ({exc})"
            ) from None
        # a run deleted since the index was read has an empty hash (cjson writes it as {})
        return [_run_from_row(row) for row in rows if isinstance(row, list) and row]

    # -- journal ------------------------------------------------------------------------------------

    async def load_journal(self, run_id: str) -> list[JournalEntry]:
        key = _b(f"{self.prefix}journal:{run_id}")
        values = await self._io(lambda t: t.command("HVALS", key))
        entries = [_entry_from_value(run_id, v) for v in values]
        entries.sort(key=lambda e: e.seq)
        return entries

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        args: list[Arg] = [_b(run_id), _b(str(epoch))]
        for entry in entries:
            args += _entry_quad(entry)
        reply = await self._write(_Write("append", b"a", args))
        if _s(reply[0]) != "ok":
            self._refused(reply, run_id, epoch)

    async def _write(self, write: _Write) -> Any:
        """A fenced write's script reply: through group commit, or its own script call."""
        if self.group_commit is None:
            return await self._script(write.script, write.args)
        return await self.group_commit.submit(write, again=write.op == b"a")

    async def _flush(self, writes: Sequence[_Write]) -> list[Any]:
        """Group commit: the queued writes in one ``batch`` script call (one round trip, applied
        atomically, one AOF write), each fenced and answered as its own script would answer. A
        write alone takes its own script. A batch of more than ``BATCH_BYTES`` of arguments goes
        in several calls; one that fails fails its writes only."""
        if len(writes) == 1:
            return [await self._script(writes[0].script, writes[0].args)]
        chunks: list[list[int]] = [[]]
        size = 0
        for i, write in enumerate(writes):
            length = sum(len(a) if isinstance(a, bytes | str) else 8 for a in write.args)
            if size + length > BATCH_BYTES and chunks[-1]:
                chunks.append([])
                size = 0
            chunks[-1].append(i)
            size += length
        outcomes: list[Any] = [None] * len(writes)
        for chunk in chunks:
            try:
                replies = await self._batch([writes[i] for i in chunk])
            except Exception as exc:  # this call failed: all its writes fail with it
                if len(chunks) == 1:
                    raise
                replies = [exc] * len(chunk)
            for i, reply in zip(chunk, replies, strict=True):
                outcomes[i] = reply
        return outcomes

    async def _batch(self, writes: Sequence[_Write]) -> list[Any]:
        if len(writes) == 1:
            return [await self._script(writes[0].script, writes[0].args)]
        args: list[Arg] = []
        for write in writes:
            args += [write.op, str(len(write.args)).encode(), *write.args]
        replies = await self._script("batch", args)
        if not isinstance(replies, list) or len(replies) != len(writes):
            raise StoreError(f"Redis store {self.where}: unexpected batch reply {replies!r}")
        return [reply if isinstance(reply, list) else [reply] for reply in replies]

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        while True:
            reply = await self._script("signals", [_b(run_id), _b(str(epoch))])
            if _s(reply[0]) != "ok":
                self._refused(reply, run_id, epoch)
            for element in reply[1]:
                _signal_id, signal_name, payload = json.loads(_s(element))
                if signal_name == name:
                    break
            else:
                return None
            final = entry.with_result(payload, time.time())
            args = [_b(uuid.uuid4().hex), _b(run_id), _b(str(epoch)), element]
            taken = await self._script("consume", [*args, *_entry_quad(final)])
            outcome = _s(taken[0])
            if outcome == "ok":
                return final
            if outcome != "gone":  # "gone": taken meanwhile (cannot happen to the lease owner)
                self._refused(taken, run_id, epoch)

    # -- leases -------------------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[RunRecord]:
        worker, limit, lease_ttl = request.worker, request.limit, request.lease_ttl
        max_crashes = request.max_crashes
        names = sorted(set(request.workflows))
        if not names or limit <= 0:
            return []
        args = [
            _b(uuid.uuid4().hex), _b(worker), _b(str(int(limit))), _b(repr(float(lease_ttl))),
            _b(str(int(max_crashes))), *(_b(n) for n in names),
        ]  # fmt: skip
        reply = await self._script("claim", args)
        return [_run_from_row(flat) for flat in reply]

    async def renew(self, worker: str, leases: dict[str, int], lease_ttl: float) -> dict[str, bool]:
        if not leases:
            return {}
        args: list[Arg] = [_b(worker), _b(repr(float(lease_ttl)))]
        for run_id, epoch in leases.items():
            args += [_b(run_id), _b(str(epoch))]
        reply = await self._script("renew", args)
        return {_s(reply[i]): _s(reply[i + 1]) == "1" for i in range(0, len(reply) - 1, 2)}

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        args = [
            _b(self._origin), _b(uuid.uuid4().hex), _b(run_id), _b(str(epoch)),
            _opt_time(wake_at), _opt(encode_waits(waits)),
        ]  # fmt: skip
        reply = await self._write(_Write("park", b"p", args))
        if _s(reply[0]) != "ok":
            self._refused(reply, run_id, epoch)
        self._listeners.notify()

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        args = [
            _b(uuid.uuid4().hex), _b(run_id), _b(str(epoch)), _b(RunStatus(status).value),
            _opt(result), _opt(error),
        ]  # fmt: skip
        reply = await self._write(_Write("finish", b"f", args))
        if _s(reply[0]) != "ok":
            self._refused(reply, run_id, epoch)
        self._listeners.notify()

    async def record_crash(
        self, run_id: str, epoch: int | None, error: str, retry_at: float, max_crashes: int
    ) -> RunRecord:
        args = [
            _b(self._origin), _b(uuid.uuid4().hex), _b(run_id),
            b"" if epoch is None else b"=" + _b(str(epoch)), _b(error),
            _b(repr(float(retry_at))), _b(str(int(max_crashes))),
        ]  # fmt: skip
        reply = await self._script("crash", args)
        if _s(reply[0]) != "ok":
            self._refused(reply, run_id, epoch)
        self._listeners.notify()
        return _run_from_row(reply[1])

    async def resume(self, run_id: str) -> RunRecord:
        reply = await self._script("resume", [_b(self._origin), _b(run_id)])
        if _s(reply[0]) != "ok":
            self._refused(reply, run_id, None)
        self._listeners.notify()
        return _run_from_row(reply[1])

    async def retry_run(
        self, run_id: str, reopen: Sequence[int], after: int | None, note: JournalEntry
    ) -> RunRecord:
        args: list[Arg] = [
            _b(self._origin), _b(run_id), b"" if after is None else b"=" + _b(str(int(after))),
            *_entry_quad(note), *(_b(str(int(seq))) for seq in reopen),
        ]  # fmt: skip
        reply = await self._script("retry", args)
        kind = _s(reply[0])
        if kind == "taken":
            current = await self.get_run(run_id)
            if _s(reply[1]) == note.checksum and current is not None:
                return current  # our own earlier call, acknowledgement lost
            raise retry_conflict(run_id, note.seq)
        if kind == "status":
            raise retry_refused(run_id, _s(reply[1]))
        if kind != "ok":
            self._refused(reply, run_id, None)
        self._listeners.notify()
        return _run_from_row(reply[1])

    # -- signals and cancellation -------------------------------------------------------------------

    async def deliver_signal(self, run_id: str, name: str, payload: str, signal_id: str) -> bool:
        element = json.dumps([signal_id, name, payload], ensure_ascii=False)
        args = [_b(self._origin), _b(uuid.uuid4().hex), _b(run_id), _b(signal_id), _b(element)]
        reply = await self._script("deliver", args)
        if _s(reply[0]) != "ok":
            self._refused(reply, run_id, None)
        delivered = int(reply[1]) == 1
        if delivered:
            self._listeners.notify()
        return delivered

    async def request_cancel(self, run_id: str) -> RunRecord:
        reply = await self._script("cancel", [_b(self._origin), _b(run_id), _b(CANCELLED_ERROR)])
        if _s(reply[0]) != "ok":
            self._refused(reply, run_id, None)
        self._listeners.notify()
        return _run_from_row(reply[1])

    # -- the worker registry ------------------------------------------------------------------------

    async def heartbeat_worker(self, worker: WorkerRecord, ttl: float) -> WorkerRecord:
        info = json.dumps(
            [worker.host, int(worker.pid), list(worker.workflows)], ensure_ascii=False
        )
        args = [_b(worker.worker_id), _b(repr(float(ttl))), _b(info)]
        started, last_seen, expires = (
            float(_s(x)) for x in await self._script("worker_beat", args)
        )
        return WorkerRecord(
            worker.worker_id,
            worker.host,
            int(worker.pid),
            tuple(worker.workflows),
            started,
            last_seen,
            expires,
        )

    async def list_workers(self) -> list[WorkerRecord]:
        reply = await self._script("workers", [])
        workers = [
            _worker_from_value(_s(reply[i]), _s(reply[i + 1])) for i in range(0, len(reply) - 1, 2)
        ]
        return sorted(workers, key=lambda w: (w.started_at, w.worker_id))

    async def remove_worker(self, worker_id: str) -> None:
        await self._script("worker_remove", [_b(worker_id)])

    # -- testing hook (CorruptibleStore) ------------------------------------------------------------

    async def corrupt_entry(
        self,
        run_id: str,
        seq: int,
        *,
        result: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Overwrite entry ``seq``'s result and/or meta, keeping its checksum (for tests). Uses a
        client of its own, so it works on a store that is not open."""
        key = f"{self.prefix}journal:{run_id}"

        def corrupt() -> None:
            client = redis.Redis.from_url(self._redis_url)
            try:
                raw = client.hget(key, str(seq))
                if raw is None:
                    raise LookupError(f"run {run_id!r} has no journal entry at seq {seq}")
                status, checksum, body = _s(raw).split("|", 2)
                fields = json.loads(body)
                if result is not None:
                    fields["result"] = result
                if meta is not None:
                    fields["meta"] = dict(meta)
                client.hset(key, str(seq), f"{status}|{checksum}|{json.dumps(fields)}")
            finally:
                client.close()

        await anyio.to_thread.run_sync(corrupt)


def _worker_from_value(worker_id: str, value: str) -> WorkerRecord:
    """A WorkerRecord from its ``P workers`` value: ``started|last_seen|expires|JSON info``."""
    try:
        started, last_seen, expires, info = value.split("|", 3)
        host, pid, workflows = json.loads(info)
        if not all(isinstance(name, str) for name in workflows):
            raise ValueError("workflow names are not strings")
        return WorkerRecord(
            worker_id,
            str(host),
            int(pid),
            tuple(workflows),
            float(started),
            float(last_seen),
            float(expires),
        )
    except (TypeError, ValueError) as exc:
        raise CorruptJournalError(
            f"worker {worker_id!r}: its registration in Redis cannot be decoded ({exc}); it was "
            "modified outside coro_durable"
        ) from None


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
