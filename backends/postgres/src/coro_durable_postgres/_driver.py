"""How statements reach PostgreSQL: psycopg's asyncio pool, or its thread pool under trio.

psycopg 3's ``AsyncConnection`` waits on its socket with asyncio's ``loop.add_reader`` and guards
itself with ``asyncio.Lock``; ``psycopg_pool.AsyncConnectionPool`` runs asyncio tasks. Neither works
under trio (psycopg has no anyio support: its issue #29 is open and the anyio pull request #146
was closed unmerged). So there are two drivers with one interface, ``fetch(sql, params) -> rows``:

* :class:`AsyncDriver` (asyncio): ``AsyncConnectionPool`` and native async statements.
* :class:`ThreadDriver` (trio, or asyncio with ``driver=thread``): the blocking
  ``psycopg_pool.ConnectionPool``, each statement run in a worker thread through
  ``anyio.to_thread.run_sync``, at most ``pool_max`` threads at a time (a limiter of its own).

With both, a started statement is finished even when its caller is cancelled (the caller waits;
every statement is short): interrupting it would cost the connection and could not undo a commit
anyway. Only a statement with no answer for ``STATEMENT_DEADLINE`` seconds is abandoned (async).

Every connection is in autocommit mode: each statement is its own transaction. Rows come back as
dicts keyed by the statement's column names (psycopg's ``dict_row``), which the store reads them
by. Errors are
translated at one boundary, :func:`translate` (with :func:`connection_refusal` for a connection
attempt); no psycopg exception leaves this package. What a retry can fix (connection refused,
lost or timed out, the server starting up or shutting down, a serialization failure or deadlock,
a read-only standby during a failover, resources such as disk or connection slots exhausted) is
a :class:`~coro_durable.errors.TransientStoreError`. What it cannot is a
:class:`~coro_durable.errors.PermanentStoreError` saying what to fix: a host name that does not
resolve, credentials refused (SQLSTATE class 28), a missing database (3D000) or schema (3F000),
a missing privilege (42501) or other schema damage (class 42), a value PostgreSQL cannot store
(class 22). Anything else stays a plain, retried StoreError.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio
import anyio.to_thread
import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.rows import dict_row

from coro_durable.errors import (
    ConflictError,
    PermanentStoreError,
    StoreError,
    TransientStoreError,
)

from ._sql import SQLSTATE_CONFLICT
from ._url import Options

__all__ = [
    "Driver",
    "AsyncDriver",
    "ThreadDriver",
    "make_driver",
    "translate",
    "connection_refusal",
    "connect_kwargs",
]

log = logging.getLogger("coro_durable.postgres")

Params = Mapping[str, Any] | Sequence[Any] | None
#: A result row: column name -> value.
Row = dict[str, Any]


def connect_kwargs(options: Options) -> dict[str, Any]:
    return {
        "autocommit": True,
        "prepare_threshold": options.prepare_threshold,
        "row_factory": dict_row,  # rows are read by column name
    }


#: A statement that gets no answer for this long is abandoned (its connection closed): the
#: network or the server hangs. Every statement of this store is a short single-row or small
#: batch operation.
STATEMENT_DEADLINE = 60.0

#: How long the pool retries replacing a lost connection (with its own backoff: 1 s, 2 s, ...)
#: before giving the slot up; the next request that finds no connection starts a new attempt at
#: once. psycopg_pool's default, 5 minutes of doubling delays, could leave a recovered server
#: unused for minutes after a long outage; this bounds the wait to a couple of seconds.
RECONNECT_TIMEOUT = 5.0


def pool_kwargs(options: Options) -> dict[str, Any]:
    return {
        "kwargs": connect_kwargs(options),
        "min_size": options.pool_min,
        "max_size": options.pool_max,
        "timeout": options.pool_timeout,
        "reconnect_timeout": RECONNECT_TIMEOUT,
        "open": False,
        "name": f"coro_durable:{options.schema}",
    }


def translate(exc: BaseException, options: Options) -> StoreError:
    """The coro_durable error for a psycopg (or pool) exception (see the module docstring).

    Transient errors are retried by the runtime's ``store_call`` with backoff, which gives up
    with StoreUnavailableError after its deadline; permanent ones are raised at once.
    """
    where = f"PostgreSQL store {options.redacted} (schema {options.schema})"
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return TransientStoreError(
            f"{where}: no database connection within pool_timeout={options.pool_timeout:g}s "
            f"(server unreachable, or all pool_max={options.pool_max} connections busy): {exc}"
        )
    if isinstance(exc, psycopg_pool.PoolClosed):
        return TransientStoreError(f"{where}: the store was closed while in use: {exc}")
    if not isinstance(exc, psycopg.Error):
        return StoreError(f"{where} failed: {type(exc).__name__}: {exc}")
    state = exc.sqlstate or ""
    line = _first_line(exc)
    if state == SQLSTATE_CONFLICT:
        return ConflictError(exc.diag.message_primary or str(exc))
    if isinstance(exc, psycopg.OperationalError) and not state:
        refusal = connection_refusal(exc, options)
        if refusal is not None:
            return refusal
        return TransientStoreError(f"{where}: lost the connection to the server: {line}")
    if state.startswith(("08", "57")):  # connection exception, operator intervention
        return TransientStoreError(f"{where}: the server dropped the connection: {line}")
    if state in ("40001", "40P01"):  # serialization failure, deadlock
        return TransientStoreError(f"{where}: transaction conflict, retrying: {line}")
    if state == "25006":  # read-only transaction: a standby, e.g. during a failover
        return TransientStoreError(
            f"{where}: the server is read-only ({line}); it is a standby (a failover in "
            "progress?). If it lasts, point the URL at the primary (target_session_attrs="
            "read-write)"
        )
    if state.startswith(("53", "58")) or state == "55P03":  # resources, system I/O, lock
        return TransientStoreError(f"{where}: the server is out of resources: {line}")
    if state.startswith("28"):  # invalid authorization specification
        return PermanentStoreError(
            f"{where}: the server refused our credentials ({line}); fix the user and password "
            "in the store URL"
        )
    if state == "3D000":
        return PermanentStoreError(
            f"{where}: the database does not exist ({line}); create it or fix the database "
            "name in the store URL"
        )
    if state == "42501":
        return PermanentStoreError(
            f"{where}: permission denied ({line}); GRANT the store's role what it needs: "
            f"CREATE on the database (to create schema {options.schema!r} on first use), then "
            "USAGE and CREATE on that schema and all privileges on its tables and functions, or "
            "use a role that owns them"
        )
    if state == "3F000" or state.startswith("42"):
        return PermanentStoreError(
            f"{where}: the store's schema is missing or was changed outside coro_durable "
            f"({type(exc).__name__}, SQLSTATE {state}: {line}); restore it, or use a fresh "
            "schema= in the store URL"
        )
    if state.startswith("22"):  # data exception
        return PermanentStoreError(
            f"{where}: PostgreSQL cannot store a value (SQLSTATE {state}): {line}"
        )
    return StoreError(
        f"{where} failed: {type(exc).__name__}"
        + (f" (SQLSTATE {state})" if state else "")
        + f": {line}"
    )


# A server that answers a connection with one of these is busy, not misconfigured: retry.
_TRANSIENT_FATAL = (
    "starting up",
    "shutting down",
    "recovery mode",
    "too many clients",
    "connection slots",
    "not yet accepting",
)
# What a failed name lookup looks like, from psycopg's resolver or libpq's.
_DNS_FAILURE = ("failed to resolve host", "could not translate host name")
# getaddrinfo's EAI_AGAIN: the resolver could not answer now, the name may well exist.
_DNS_TRY_AGAIN = ("Temporary failure in name resolution", "[Errno -3]", "try again")
_QUOTED = re.compile(r'"([^"]*)"')


def connection_refusal(exc: psycopg.Error, options: Options) -> PermanentStoreError | None:
    """The PermanentStoreError for a connection attempt that cannot succeed however often it is
    retried (a host name that does not resolve; the server's FATAL refusal of the database, the
    user, the password or an option), or None when a retry may connect (refused, timed out, the
    server starting up or out of connection slots)."""
    text = str(exc)
    line = _first_line(exc)
    where = f"cannot use PostgreSQL store {options.redacted}"
    if any(marker in text for marker in _DNS_FAILURE):
        if any(marker in text for marker in _DNS_TRY_AGAIN):
            return None
        return PermanentStoreError(
            f"{where}: its host name does not resolve ({line}); fix the host in the store URL "
            "(a typo, or a DNS name that does not exist)"
        )
    if "FATAL:" not in text or any(marker in text for marker in _TRANSIENT_FATAL):
        return None
    fatal = text.split("FATAL:", 1)[1].strip().splitlines()[0]
    named = _QUOTED.findall(fatal)
    name = repr(named[0]) if named else ""
    if "database" in fatal and "does not exist" in fatal:
        return PermanentStoreError(
            f"{where}: the database {name} does not exist (FATAL: {fatal}); create it "
            f"(CREATE DATABASE, or createdb) or fix the database name in the store URL"
        )
    if "permission denied" in fatal:
        return PermanentStoreError(
            f"{where}: the server refused the connection (FATAL: {fatal}); GRANT CONNECT on the "
            "database to the URL's user, or use another user"
        )
    if any(m in fatal for m in ("role", "authentication", "password", "pg_hba.conf")):
        return PermanentStoreError(
            f"{where}: the server refused our credentials (FATAL: {fatal}); fix the user and "
            "password in the store URL (or the server's pg_hba.conf)"
        )
    return PermanentStoreError(
        f"{where}: the server refused the connection (FATAL: {fatal}); fix the store URL"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_connection_loss(exc: BaseException) -> bool:
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate or ""
    return not state or state.startswith(("08", "57"))


class Driver(Protocol):
    kind: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def fetch(self, sql: str, params: Params = None) -> list[Row]: ...


class AsyncDriver:
    """Native asyncio statements on a ``psycopg_pool.AsyncConnectionPool``."""

    kind = "async"

    def __init__(self, options: Options) -> None:
        self.options = options
        self.pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Row]] = (
            psycopg_pool.AsyncConnectionPool(options.dsn, **pool_kwargs(options))
        )

    async def open(self) -> None:
        try:
            await self.pool.open(wait=self.options.pool_min > 0, timeout=self.options.pool_timeout)
        except Exception as exc:
            await self.pool.close()
            raise translate(exc, self.options) from exc

    async def close(self) -> None:
        await self.pool.close(timeout=5.0)

    async def fetch(self, sql: str, params: Params = None) -> list[Row]:
        try:
            async with self.pool.connection() as conn:
                # A started statement is finished even if the caller is cancelled (the thread
                # driver cannot do otherwise): cancelling it mid-flight would make psycopg close
                # the connection, and the statement may have committed anyway.
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + STATEMENT_DEADLINE
                    cur = await conn.execute(sql, params)
                    rows = await cur.fetchall()
                if scope.cancelled_caught:
                    raise TransientStoreError(
                        f"PostgreSQL store {self.options.redacted}: no answer to a statement "
                        f"within {STATEMENT_DEADLINE:g}s; the connection was dropped"
                    )
                return rows
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            if _is_connection_loss(exc):
                await self._purge()
            raise translate(exc, self.options) from exc

    async def _purge(self) -> None:
        """One connection died: test the idle ones too, so the retry gets a live connection
        (after a server restart or pg_terminate_backend, all of them are dead)."""
        try:
            await self.pool.check()
        except Exception:  # the check is best effort; the retry will tell
            log.debug("checking the pool's connections failed", exc_info=True)


class ThreadDriver:
    """Blocking psycopg statements on a ``psycopg_pool.ConnectionPool``, in worker threads."""

    kind = "thread"

    def __init__(self, options: Options) -> None:
        self.options = options
        self.limiter: anyio.CapacityLimiter | None = None
        self.pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]] = (
            psycopg_pool.ConnectionPool(options.dsn, **pool_kwargs(options))
        )

    async def open(self) -> None:
        # At most pool_max statements in threads at once: more would only wait for a pool
        # connection inside a thread (holding one of anyio's default 40 worker threads).
        self.limiter = anyio.CapacityLimiter(self.options.pool_max)
        await anyio.to_thread.run_sync(self._open_sync)

    def _open_sync(self) -> None:
        try:
            self.pool.open(wait=self.options.pool_min > 0, timeout=self.options.pool_timeout)
        except Exception as exc:
            self.pool.close()
            raise translate(exc, self.options) from exc

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.pool.close, 5.0)

    async def fetch(self, sql: str, params: Params = None) -> list[Row]:
        return await anyio.to_thread.run_sync(self._fetch_sync, sql, params, limiter=self.limiter)

    def _fetch_sync(self, sql: str, params: Params) -> list[Row]:
        try:
            with self.pool.connection() as conn:
                cur = conn.execute(sql, params)
                return cur.fetchall()
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            if _is_connection_loss(exc):
                try:
                    self.pool.check()
                except Exception:
                    log.debug("checking the pool's connections failed", exc_info=True)
            raise translate(exc, self.options) from exc


def running_asyncio() -> bool:
    """True when called from a task of a running asyncio event loop (not trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def make_driver(options: Options) -> AsyncDriver | ThreadDriver:
    """The driver for this event loop: async on asyncio, threads on trio (or as configured)."""
    if options.driver == "async":
        if not running_asyncio():
            from coro_durable.errors import ConfigurationError

            raise ConfigurationError(
                "PostgreSQL store: driver=async needs asyncio (psycopg's async connections do "
                "not run on trio); use driver=auto or driver=thread"
            )
        return AsyncDriver(options)
    if options.driver == "thread" or not running_asyncio():
        return ThreadDriver(options)
    return AsyncDriver(options)
