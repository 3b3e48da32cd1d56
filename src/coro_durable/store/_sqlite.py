"""SqliteStore: the store protocol on one SQLite file (``sqlite:///path/to/runs.db``), stdlib only.

URL forms::

    sqlite:///relative/path/runs.db          relative to the current directory
    sqlite:////absolute/path/runs.db         absolute (four slashes)
    sqlite:///runs.db?synchronous=NORMAL&busy_timeout=10000
    sqlite:///runs.db?group_commit=0                 every write in its own transaction
    sqlite:///runs.db?group_commit_wait_us=500&group_commit_max=128
    sqlite:///runs.db?mode=ro                        read-only: inspect a file (or a copy) that
                                                     must not change; every write fails at once

Durability. The file is opened in WAL mode with ``synchronous=FULL`` (the default): every commit
fsyncs the write-ahead log before the call returns, so a committed journal entry survives a power
loss. ``synchronous=NORMAL`` is faster but can lose the last commits on power loss (never on a
mere process crash) and must be asked for explicitly. Parent directories are created.

Concurrency. Each SqliteStore owns one ``sqlite3`` connection, opened with
``check_same_thread=False`` and guarded by a ``threading.Lock``. Every operation is a plain
function run in a worker thread through ``anyio.to_thread.run_sync`` (so neither asyncio's nor
trio's event loop ever blocks on disk), under the store's own capacity limiter of one thread: its
operations queue on the event loop rather than as threads blocked on the lock, and slow
synchronous steps filling anyio's default thread pool cannot delay a journal append or a lease
renewal.

Group commit (on by default; ``group_commit=0`` turns it off). Writes that arrive while another
transaction of this store is committing queue up, and the next transaction takes them all (up to
``group_commit_max``, default 256): one ``BEGIN IMMEDIATE`` ... ``COMMIT`` and one fsync for many
concurrent runs (``store._groupcommit``). Each write keeps its own outcome: if one fails (fenced out, a
conflict, a value SQLite cannot bind), the transaction is redone with each write in its own
SAVEPOINT, so only that write is undone and only its caller gets the error; if the COMMIT itself
fails, every write of the batch fails with that error and nothing of it is on disk. Callers resume
only after COMMIT returned. A write that finds no transaction in flight commits at once, alone, so
one run stepping sequentially never waits; the next batch's leader waits up to
``group_commit_wait_us`` (default 200 us) for more writes only when the previous batch, just
finished, released several journal appends (runs whose next step is about to write).

Each operation (or batch of them) is exactly one transaction: ``BEGIN IMMEDIATE`` for writes,
which takes SQLite's write lock up front, so the fencing check and the write it guards are atomic
against every other connection, in this process or another. A connection that finds the write
lock taken waits up to ``busy_timeout`` ms (default 5000), then gets
:class:`~coro_durable.errors.StoreUnavailableError`. The worker thread is not abandoned on
cancellation: a started transaction always commits or rolls back before the caller resumes.

Listeners registered with ``subscribe`` are called on the event loop after the write returns; they
hear about writes made through *this* store object only (other processes are found by polling).

Schema. ``PRAGMA user_version`` records the schema version; ``_MIGRATIONS`` lists the steps to
reach the current one (1: the tables, 2: the worker registry, 3: the ``meta`` columns of runs and
journal, ``'{}'`` for the rows already there, 4: ``runs.waits``, the structured waits of
``encode_waits`` in place of the prose ``waiting_on``; a run parked before is made due at once so
that it re-parks with structured waits). ``open()`` applies the missing steps to the file in
place, in one ``BEGIN IMMEDIATE`` transaction, so two processes opening an old or fresh file at
once migrate it exactly once. A file written by a newer coro_durable is refused rather than
misread. Rows are read by column name (``sqlite3.Row``); the statements are written from the
column lists (``_RUN_COLUMNS``, ``_ENTRY_COLUMNS``) but bind positional parameters (a named one
costs a GIL release each, see ``_SQL_INSERT_RUN``), so a column added later is that list and the
tuple built for it (``_entry_params``, ``create_run``).

Errors. Every ``sqlite3`` exception is translated into the ``coro_durable.errors.StoreError`` tree
at one boundary (``_translate``, by SQLite's primary result code); none leaks. Failures retrying
cannot fix are a :class:`~coro_durable.errors.PermanentStoreError` naming the file and the fix: a
read-only file (``SQLITE_READONLY``: no write permission on the file or its directory, a read-only
file system, ``mode=ro``), a file or directory that cannot be opened or created
(``SQLITE_CANTOPEN``, a failed ``mkdir``), a file that is not a database or is malformed, a
value SQLite cannot store. A lock held past ``busy_timeout``, an I/O error and a full disk are a
:class:`~coro_durable.errors.TransientStoreError` (the runtime retries them; space can be freed).
"""

from __future__ import annotations

import asyncio
import errno
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import anyio
import anyio.to_thread

from .._core.clock import SYSTEM_CLOCK, Clock
from .._core.waits import Wait, awaited_signals, decode_waits, encode_waits
from ..errors import (
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
from ..journal._meta import decode_meta, encode_meta
from ..journal._records import (
    CANCELLED_ERROR,
    RETRYABLE,
    TERMINAL,
    JournalEntry,
    RunRecord,
    RunStatus,
    WorkerRecord,
    check_run_id,
    retry_conflict,
    retry_refused,
)
from ._groupcommit import OPTION_NAMES as GROUP_COMMIT_OPTIONS
from ._groupcommit import GroupCommit, GroupCommitOptions
from ._groupcommit import parse_option as parse_group_option
from ._listeners import Listener, ListenerSet
from ._requests import ClaimRequest, RunQuery

__all__ = ["SqliteStore", "SCHEMA_VERSION"]

T = TypeVar("T")

# ---- schema --------------------------------------------------------------------------------------
#
# Times are REAL (time.time() floats). ``journal.due_at`` deliberately has no declared type: its
# repr() is part of the entry checksum, and a REAL column would turn an int 5 into 5.0 on the way
# back. RunStatus is stored as its string value, booleans as 0/1, ``meta`` as the text of
# ``encode_meta`` ('{}' when empty).

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: initial schema
    (
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            input TEXT NOT NULL,
            status TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            owner TEXT,
            lease_expires REAL,
            wake_at REAL,
            waiting_on TEXT,
            cancel_requested INTEGER NOT NULL,
            result TEXT,
            error TEXT,
            crash_count INTEGER NOT NULL,
            last_error TEXT,
            steps INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX runs_claim_wake ON runs (status, wake_at)",
        "CREATE INDEX runs_claim_lease ON runs (status, lease_expires)",
        "CREATE INDEX runs_created ON runs (created_at, run_id)",
        "CREATE INDEX runs_status_created ON runs (status, created_at, run_id)",
        "CREATE INDEX runs_workflow_created ON runs (workflow, created_at, run_id)",
        """CREATE TABLE journal (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            digest TEXT NOT NULL,
            status TEXT NOT NULL,
            args TEXT,
            result TEXT,
            error TEXT,
            attempts INTEGER NOT NULL,
            key TEXT NOT NULL,
            started_at REAL NOT NULL,
            finished_at REAL,
            due_at,
            checksum TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE signals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            signal_id TEXT NOT NULL,
            name TEXT NOT NULL,
            payload TEXT NOT NULL,
            consumed INTEGER NOT NULL DEFAULT 0,
            UNIQUE (run_id, signal_id)
        )""",
        "CREATE INDEX signals_unconsumed ON signals (run_id, name, id) WHERE consumed = 0",
    ),
    # 2: the worker registry (workflows: a JSON array of names)
    (
        """CREATE TABLE workers (
            worker_id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            workflows TEXT NOT NULL,
            started_at REAL NOT NULL,
            last_seen REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
    ),
    # 3: the records' meta (a JSON object; rows written before it have none: '{}')
    (
        "ALTER TABLE runs ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE journal ADD COLUMN meta TEXT NOT NULL DEFAULT '{}'",
    ),
    # 4: structured waits (encode_waits' JSON) instead of the prose ``waiting_on``. A run parked
    # before holds prose: it is made runnable now (wake_at 0 is due on any clock) and re-parks
    # with its structured waits at its next activation (a wake-up before due only replays).
    (
        "ALTER TABLE runs RENAME COLUMN waiting_on TO waits",
        "UPDATE runs SET wake_at = 0 WHERE status = 'waiting' AND waits IS NOT NULL",
        "UPDATE runs SET waits = NULL",
    ),
)

SCHEMA_VERSION = len(_MIGRATIONS)

_RUN_COLUMNS = (
    "run_id", "workflow", "input", "status", "epoch", "owner", "lease_expires", "wake_at",
    "waits", "cancel_requested", "result", "error", "crash_count", "last_error", "steps",
    "created_at", "updated_at", "meta",
)  # fmt: skip
_ENTRY_COLUMNS = (
    "seq", "kind", "name", "digest", "status", "args", "result", "error", "attempts", "key",
    "started_at", "finished_at", "due_at", "checksum", "meta",
)  # fmt: skip

_SELECT_RUN = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
_SQL_GET_RUN = f"{_SELECT_RUN} WHERE run_id = ?"
# The insert and journal statements bind a tuple (positional ``?`` or numbered ``?N``
# parameters), not a dict of named ones: the sqlite3 module releases the GIL around the lookup of
# every named parameter, so a dict of 16 lets the event loop's thread take the GIL from the store's
# thread 16 times per statement (W2 measured ~10% fewer steps/s on SQLite with named ones).
_SQL_INSERT_RUN = (
    f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_RUN_COLUMNS))}) ON CONFLICT (run_id) DO NOTHING"
)
_SQL_LOAD_JOURNAL = f"SELECT {', '.join(_ENTRY_COLUMNS)} FROM journal WHERE run_id = ? ORDER BY seq"
# Both journal writes bind ``_entry_params``: parameter N is column N of _ENTRY_PARAMS.
_ENTRY_PARAMS = ("run_id", *_ENTRY_COLUMNS)
_ENTRY_SLOTS = {column: f"?{n}" for n, column in enumerate(_ENTRY_PARAMS, 1)}
_SQL_INSERT_ENTRY = (
    f"INSERT INTO journal ({', '.join(_ENTRY_PARAMS)}) VALUES ({', '.join(_ENTRY_SLOTS.values())}) "
    "ON CONFLICT (run_id, seq) DO NOTHING"
)
_SQL_REPLACE_ENTRY = (
    "UPDATE journal SET "
    + ", ".join(f"{c} = {_ENTRY_SLOTS[c]}" for c in _ENTRY_COLUMNS if c != "seq")
    + f" WHERE run_id = {_ENTRY_SLOTS['run_id']} AND seq = {_ENTRY_SLOTS['seq']}"
)
_SQL_GET_ENTRY = "SELECT status, checksum, kind, name FROM journal WHERE run_id = ? AND seq = ?"
# The fencing read: the run's token and status, and what the fenced writes need besides.
_SQL_FENCE = "SELECT epoch, status, cancel_requested, crash_count, steps FROM runs WHERE run_id = ?"
# Fenced writes in one statement: the common case (the lease is ours). When they match no row,
# ``_fenced`` tells lease lost from unknown run.
_FENCE_CLAUSE = " AND epoch = ? AND status = 'running'"
# An append resets crash_count only when it writes a final entry (the first parameter, 1 or 0).
_RESET_CRASHES = "crash_count = CASE WHEN ? THEN 0 ELSE crash_count END"
_SQL_FENCED_BUMP = (
    f"UPDATE runs SET steps = steps + 1, {_RESET_CRASHES}, updated_at = ? WHERE run_id = ?"
    + _FENCE_CLAUSE
)
_SQL_UNBUMP = "UPDATE runs SET steps = steps - 1 WHERE run_id = ?"
# The names of the signals a park's waits (the encode_waits JSON parameter) wait for: only an
# unconsumed signal of one of them wakes the run at once (awaited_signals).
_AWAITED = (
    "SELECT json_extract(w.value, '$.name') FROM json_each(?) w "
    "WHERE json_extract(w.value, '$.kind') = 'signal'"
)
_SQL_FENCED_PARK = (
    "UPDATE runs SET status = 'waiting', wake_at = CASE WHEN cancel_requested OR EXISTS "
    "(SELECT 1 FROM signals s WHERE s.run_id = runs.run_id AND s.consumed = 0 "
    f"AND s.name IN ({_AWAITED})) THEN ? ELSE ? END, "
    "waits = ?, owner = NULL, lease_expires = NULL, updated_at = ? WHERE run_id = ?" + _FENCE_CLAUSE
)
_SQL_FINISH = (
    "UPDATE runs SET status = ?, result = ?, error = ?, owner = NULL, lease_expires = NULL, "
    "wake_at = NULL, waits = NULL, updated_at = ? WHERE run_id = ?"
)
_SQL_APPENDED = f"UPDATE runs SET steps = ?, {_RESET_CRASHES}, updated_at = ? WHERE run_id = ?"
_SQL_OLDEST_SIGNAL = (
    "SELECT id, payload FROM signals WHERE run_id = ? AND name = ? AND consumed = 0 "
    "ORDER BY id LIMIT 1"
)
_SQL_HAS_SIGNAL = (
    f"SELECT 1 FROM signals WHERE run_id = ? AND consumed = 0 AND name IN ({_AWAITED}) LIMIT 1"
)
# RunQuery.waiting_for / wait_name: a waiting run with a wait of that kind (and name).
_SQL_WAITING_FOR = (
    "status = 'waiting' AND EXISTS (SELECT 1 FROM json_each(runs.waits) w WHERE "
    "json_extract(w.value, '$.kind') = ? AND (? IS NULL OR json_extract(w.value, '$.name') = ?))"
)
_WORKER_COLUMNS = ("worker_id", "host", "pid", "workflows", "started_at", "last_seen", "expires_at")
_SQL_PUT_WORKER = (
    f"INSERT OR REPLACE INTO workers ({', '.join(_WORKER_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SQL_LIST_WORKERS = (
    f"SELECT {', '.join(_WORKER_COLUMNS)} FROM workers WHERE expires_at > ? "
    "ORDER BY started_at, worker_id"
)

_SYNCHRONOUS = ("FULL", "EXTRA", "NORMAL")

# sqlite3 errors that concern one statement and its values and leave the transaction usable: in
# a group commit batch, the write that raised one is rolled back to its savepoint and its caller
# gets the error. Any other sqlite3 error (OperationalError: I/O, disk full, busy...) fails the
# whole batch.
_STATEMENT_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
)
# SQLite's primary result codes (https://sqlite.org/rescode.html) that _translate tells apart.
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_NOMEM = 7
_SQLITE_READONLY = 8
_SQLITE_INTERRUPT = 9
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_PROTOCOL = 15
_SQLITE_TOOBIG = 18
_SQLITE_AUTH = 23
_SQLITE_NOTADB = 26
#: Codes a retry can get past: memory, an interrupted call, I/O trouble, a full disk (space can
#: be freed), a lock protocol race.
_TRANSIENT_CODES = (_SQLITE_NOMEM, _SQLITE_INTERRUPT, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_PROTOCOL)
#: mkdir errors a retry can get past; any other (permission, a file in the way) is permanent.
_TRANSIENT_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EINTR, errno.EAGAIN)


def _parse_url(url: str) -> tuple[str, str, int, bool, GroupCommitOptions]:
    """``(path, synchronous, busy_timeout_ms, read_only, group commit options)`` from a
    ``sqlite:///`` URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"{url!r} is not a sqlite:/// URL")
    if parts.netloc:
        raise ConfigurationError(
            f"SQLite URL {url!r} has a host part ({parts.netloc!r}); write sqlite:///relative.db "
            "or sqlite:////absolute/path.db (three slashes, then the path)"
        )
    path = unquote(parts.path)[1:]  # drop the slash that ends "sqlite://"
    if not path or path.endswith("/"):
        raise ConfigurationError(
            f"SQLite URL {url!r} names no database file; write sqlite:///path/to/runs.db"
        )
    if path == ":memory:":
        raise ConfigurationError(
            "sqlite:///:memory: is not supported (it would not be durable); use memory:// for an "
            "in-process store"
        )
    synchronous, busy_timeout, read_only = "FULL", 5000, False
    group = GroupCommitOptions()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in GROUP_COMMIT_OPTIONS:
            group = parse_group_option(group, key, value, f"SQLite URL {url!r}")
        elif key == "synchronous":
            synchronous = value.upper()
            if synchronous not in _SYNCHRONOUS:
                raise ConfigurationError(
                    f"SQLite URL {url!r}: synchronous must be FULL (default) or NORMAL, "
                    f"not {value!r}"
                )
        elif key == "busy_timeout":
            try:
                busy_timeout = int(value)
            except ValueError:
                busy_timeout = -1
            if busy_timeout < 0:
                raise ConfigurationError(
                    f"SQLite URL {url!r}: busy_timeout is a whole number of milliseconds, "
                    f"not {value!r}"
                )
        elif key == "mode":
            if value.lower() not in ("rw", "ro"):
                raise ConfigurationError(
                    f"SQLite URL {url!r}: mode must be rw (default) or ro, not {value!r}"
                )
            read_only = value.lower() == "ro"
        else:
            raise ConfigurationError(
                f"SQLite URL {url!r}: unknown option {key!r} (known: synchronous, busy_timeout, "
                f"mode, {', '.join(GROUP_COMMIT_OPTIONS)})"
            )
    return path, synchronous, busy_timeout, read_only, group


def _run_from_row(row: sqlite3.Row) -> RunRecord:
    fields = {column: row[column] for column in _RUN_COLUMNS}
    where = f"run {fields['run_id']!r}"
    try:
        fields["status"] = RunStatus(fields["status"])
    except ValueError:
        raise CorruptJournalError(
            f"{where}: stored status {fields['status']!r} is not a run status; the row was "
            "modified outside coro_durable"
        ) from None
    fields["cancel_requested"] = bool(fields["cancel_requested"])
    fields["meta"] = decode_meta(fields["meta"], where)
    fields["waits"] = decode_waits(fields["waits"], where)
    return RunRecord(**fields)


def _entry_from_row(run_id: str, row: sqlite3.Row) -> JournalEntry:
    fields = {column: row[column] for column in _ENTRY_COLUMNS}
    fields["meta"] = decode_meta(fields["meta"], f"run {run_id!r} journal seq {fields['seq']}")
    return JournalEntry(**fields)


def _worker_from_row(row: sqlite3.Row) -> WorkerRecord:
    fields = {column: row[column] for column in _WORKER_COLUMNS}
    try:
        workflows = json.loads(fields["workflows"])
        if not isinstance(workflows, list) or not all(isinstance(w, str) for w in workflows):
            raise ValueError("not a list of names")
    except ValueError:
        raise CorruptJournalError(
            f"worker {fields['worker_id']!r}: stored workflows {fields['workflows']!r} are not a "
            "JSON list of names; the row was modified outside coro_durable"
        ) from None
    fields["workflows"] = tuple(workflows)
    fields["pid"] = int(fields["pid"])
    return WorkerRecord(**fields)


def _entry_params(run_id: str, e: JournalEntry) -> tuple[Any, ...]:
    """The parameters of the journal statements for entry ``e`` of ``run_id``, in
    ``_ENTRY_PARAMS`` order."""
    return (
        run_id, e.seq, e.kind, e.name, e.digest, e.status, e.args, e.result, e.error, e.attempts,
        e.key, e.started_at, e.finished_at, e.due_at, e.checksum, encode_meta(e.meta),
    )  # fmt: skip


class SqliteStore:
    """A store in one SQLite file (``sqlite:///path``), safe across threads and processes."""

    def __init__(
        self, url: str = "sqlite:///.coro_durable/runs.db", *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.url = url
        self.clock = clock  # timers and timestamps; leases and worker expiry use real time
        path, self.synchronous, self.busy_timeout, self.read_only, group = _parse_url(url)
        self.group_commit: GroupCommit[Callable[[sqlite3.Connection], Any], Any] | None = (
            GroupCommit(self._flush, group) if group.enabled else None
        )
        self.path = Path(path)
        self._lock = threading.Lock()
        self._limiters: dict[str, anyio.CapacityLimiter] = {}  # one per kind of event loop
        self._conn: sqlite3.Connection | None = None
        self._listeners = ListenerSet()

    def __repr__(self) -> str:
        return f"SqliteStore({self.url!r})"

    # -- plumbing -----------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._read(lambda conn: None)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._close_sync, limiter=self._limiter())

    def _close_sync(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self._translate(exc) from exc

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    def _connect(self) -> sqlite3.Connection:
        """Open the connection, set WAL and synchronous, and migrate (called under the lock)."""
        if not self.read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                error = (
                    TransientStoreError if exc.errno in _TRANSIENT_ERRNOS else PermanentStoreError
                )
                raise error(
                    f"cannot create the directory {self.path.parent} for SQLite store "
                    f"{self.path} ({exc.strerror or exc}); check the path in the store URL and "
                    "that this process may create directories there"
                ) from exc
        conn = sqlite3.connect(
            f"file:{quote(str(self.path))}?mode=ro" if self.read_only else self.path,
            timeout=self.busy_timeout / 1000,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # used from anyio worker threads, one at a time (the lock)
            cached_statements=256,
            uri=self.read_only,
        )
        conn.row_factory = sqlite3.Row  # every row is read by column name
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout}")
            if not self.read_only:  # a read-only connection reads any journal mode
                self._enable_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a fresh file to WAL needs a moment of exclusive access; a concurrent opener can
        # get SQLITE_BUSY without the busy handler being consulted, so retry within busy_timeout.
        give_up = time.monotonic() + self.busy_timeout / 1000
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()["journal_mode"]
                break
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) not in (_SQLITE_BUSY, _SQLITE_LOCKED):
                    raise
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.005)
        if str(mode).lower() != "wal":
            raise PermanentStoreError(
                f"SQLite store {self.path}: could not enable WAL mode (journal_mode is {mode!r}); "
                "the file system may not support it (network file systems often do not)"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()["user_version"] == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-read under the lock: another connection may have migrated it meanwhile
            version = conn.execute("PRAGMA user_version").fetchone()["user_version"]
            if version > SCHEMA_VERSION:
                raise PermanentStoreError(
                    f"SQLite store {self.path} has schema version {version}, newer than this "
                    f"coro_durable understands ({SCHEMA_VERSION}); upgrade coro_durable"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _run_locked(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """Run ``fn`` as one transaction on the connection (in a worker thread)."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                if not write:
                    return fn(conn)  # a single SELECT is its own consistent snapshot
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc
            except (UnicodeError, OverflowError) as exc:
                raise self._unstorable(exc) from exc

    def _limiter(self) -> anyio.CapacityLimiter:
        """This store's one-thread limiter for the running kind of event loop (a limiter made
        under asyncio does not work under trio, and a store object may meet both)."""
        try:
            asyncio.get_running_loop()
            kind = "asyncio"
        except RuntimeError:
            kind = "trio"
        limiter = self._limiters.get(kind)
        if limiter is None:
            limiter = self._limiters[kind] = anyio.CapacityLimiter(1)
        return limiter

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._run_locked, fn, False, limiter=self._limiter())

    async def _write(self, fn: Callable[[sqlite3.Connection], T], again: bool = False) -> T:
        """Run ``fn`` as a write transaction, through group commit when it is on (``again``: the
        caller will probably write again right after, see ``GroupCommit.submit``)."""
        if self.group_commit is not None:
            result: T = await self.group_commit.submit(fn, again=again)
            return result
        return await anyio.to_thread.run_sync(self._run_locked, fn, True, limiter=self._limiter())

    async def _flush(
        self, ops: Sequence[Callable[[sqlite3.Connection], Any]]
    ) -> list[Any | BaseException]:
        """Group commit: run the queued writes in one transaction (see ``_run_batch``)."""
        if len(ops) == 1:  # alone: exactly the single-write path (its error is its outcome)
            return [
                await anyio.to_thread.run_sync(
                    self._run_locked, ops[0], True, limiter=self._limiter()
                )
            ]
        return await anyio.to_thread.run_sync(self._run_batch, ops, limiter=self._limiter())

    def _run_batch(self, ops: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """Run several writes in ONE transaction (in a worker thread); one outcome per write.

        First all writes run back to back. If one of them fails (fenced out, a conflict, a value
        SQLite cannot bind), the transaction is rolled back and run again with each write inside
        its own SAVEPOINT, so the failed one is undone alone and its caller gets its error while
        the others commit (a write is a function of the database state, so running it again is
        the same write). An error that may have broken the transaction itself (I/O, disk full,
        corruption: an ``OperationalError`` or any ``DatabaseError`` not about one statement's
        values) rolls everything back and is raised, failing every write of the batch as it
        would have failed each alone. Results are handed out only after COMMIT returned:
        acknowledged writes are on disk (``synchronous=FULL``).
        """
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                conn.execute("BEGIN IMMEDIATE")
                try:
                    outcomes = self._apply(conn, ops, isolate=False)
                    if outcomes is None:
                        conn.execute("ROLLBACK")
                        conn.execute("BEGIN IMMEDIATE")
                        outcomes = self._apply(conn, ops, isolate=True)
                    assert outcomes is not None
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return outcomes
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    def _apply(
        self,
        conn: sqlite3.Connection,
        ops: Sequence[Callable[[sqlite3.Connection], Any]],
        isolate: bool,
    ) -> list[Any] | None:
        """Run ``ops`` in the open transaction. ``isolate``: each in a savepoint, a failure
        becoming its outcome; otherwise the first failure returns None (nothing is decided)."""
        outcomes: list[Any] = []
        for op in ops:
            if isolate:
                conn.execute("SAVEPOINT gc")
            try:
                outcomes.append(op(conn))
            except (Exception, LeaseLost) as exc:
                if isinstance(exc, sqlite3.Error) and not isinstance(exc, _STATEMENT_ERRORS):
                    raise  # the transaction itself may be broken: fail the batch
                if not conn.in_transaction:
                    raise  # SQLite rolled the whole transaction back
                if not isolate:
                    return None
                conn.execute("ROLLBACK TO gc")
                outcomes.append(self._item_error(exc))
            if isolate:
                conn.execute("RELEASE gc")
        return outcomes

    def _item_error(self, exc: BaseException) -> BaseException:
        """What the single-write path would have raised for ``exc`` (see ``_run_locked``)."""
        if isinstance(exc, sqlite3.Error):
            return self._translate(exc)
        if isinstance(exc, UnicodeError | OverflowError):
            return self._unstorable(exc)
        return exc

    def _unstorable(self, exc: UnicodeError | OverflowError) -> PermanentStoreError:
        return PermanentStoreError(
            f"SQLite store {self.path} cannot store a value: {exc}; the value must be valid "
            "UTF-8 text and integers must fit in 64 bits"
        )

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        """The coro_durable error for a sqlite3 exception, by its primary result code."""
        code = _primary_code(exc)
        where = f"SQLite store {self.path}"
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StoreUnavailableError(
                f"{where} stayed locked by another connection for more than "
                f"busy_timeout={self.busy_timeout} ms ({exc}); another process holds a long "
                "write transaction, or raise busy_timeout in the URL"
            )
        if code == _SQLITE_READONLY:
            how = (
                "the store URL says mode=ro; drop it to write"
                if self.read_only
                else "give this process write permission on the file and its directory (or "
                "move the store to a writable path); a read-only file system or a file owned "
                "by another user does this"
            )
            return PermanentStoreError(f"{where} is read-only ({exc}): {how}")
        if code == _SQLITE_CANTOPEN:
            what = "does not exist or cannot be read" if self.read_only else "cannot be opened"
            return PermanentStoreError(
                f"{where}: the database file {what} ({exc}); check the path in the store URL, "
                "that it is not a directory, and that this process may read and write the file "
                "and create files in its directory"
            )
        if code in (_SQLITE_PERM, _SQLITE_AUTH):
            return PermanentStoreError(
                f"{where}: access denied ({exc}); check the file's permissions"
            )
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            return PermanentStoreError(
                f"{where} is not a usable SQLite database ({exc}): point the store URL at a "
                "coro_durable database file, or restore this one from a backup"
            )
        if code == _SQLITE_TOOBIG:
            return PermanentStoreError(f"{where} cannot store a value this large ({exc})")
        if code in _TRANSIENT_CODES:
            return TransientStoreError(
                f"{where} failed: {type(exc).__name__}: {exc}"
                + ("; free some disk space" if code == _SQLITE_FULL else "")
            )
        return StoreError(f"{where} failed: {type(exc).__name__}: {exc}")

    # -- helpers (run inside a transaction) ---------------------------------------------------------

    @staticmethod
    def _fenced(conn: sqlite3.Connection, run_id: str, epoch: int) -> sqlite3.Row:
        """epoch, status, cancel_requested, crash_count and steps of a run we hold, or raise."""
        row: sqlite3.Row | None = conn.execute(_SQL_FENCE, (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        if row["epoch"] != epoch or row["status"] != RunStatus.RUNNING.value:
            raise LeaseLost(
                run_id, epoch, f"current token is {row['epoch']}, status {row['status']}"
            )
        return row

    @staticmethod
    def _get(conn: sqlite3.Connection, run_id: str) -> RunRecord:
        row = conn.execute(_SQL_GET_RUN, (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(run_id)
        return _run_from_row(row)

    def _append_in(
        self, conn: sqlite3.Connection, run_id: str, steps: int, entries: Sequence[JournalEntry]
    ) -> None:
        """Write ``entries`` (the run is fenced); ``steps`` is the run's entry count before."""
        for entry in entries:
            params = _entry_params(run_id, entry)
            if conn.execute(_SQL_INSERT_ENTRY, params).rowcount:
                steps += 1  # the common case: a new seq, one statement
                continue
            existing = conn.execute(_SQL_GET_ENTRY, (run_id, entry.seq)).fetchone()
            if existing["status"] != "pending":
                if existing["checksum"] == entry.checksum:
                    continue  # our own earlier write, acknowledgement lost
                raise ConflictError(
                    f"run {run_id!r}: seq {entry.seq} already holds a final "
                    f"{existing['kind']}({existing['name']}) entry"
                )
            conn.execute(_SQL_REPLACE_ENTRY, params)
        final = any(entry.final for entry in entries)
        conn.execute(_SQL_APPENDED, (steps, final, self.clock.time(), run_id))

    # -- runs ---------------------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        check_run_id(run.run_id)

        def op(conn: sqlite3.Connection) -> tuple[RunRecord, bool]:
            stored = run.copy()
            stored.created_at = stored.updated_at = self.clock.time()
            stored.status = RunStatus.PENDING
            stored.wake_at = stored.created_at
            params = {column: getattr(stored, column) for column in _RUN_COLUMNS}
            params["status"] = stored.status.value
            params["cancel_requested"] = int(stored.cancel_requested)
            params["meta"] = encode_meta(stored.meta)
            params["waits"] = encode_waits(stored.waits)
            values = tuple(params[column] for column in _RUN_COLUMNS)
            if conn.execute(_SQL_INSERT_RUN, values).rowcount == 0:
                return self._get(conn, run.run_id), False
            return stored, True

        result = await self._write(op)
        if result[1]:
            self._listeners.notify()
        return result

    async def get_run(self, run_id: str) -> RunRecord | None:
        def op(conn: sqlite3.Connection) -> RunRecord | None:
            row = conn.execute(_SQL_GET_RUN, (run_id,)).fetchone()
            return _run_from_row(row) if row is not None else None

        return await self._read(op)

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        where: list[str] = []
        params: list[Any] = []
        if query.status is not None:
            where.append("status = ?")
            params.append(RunStatus(query.status).value)
        if query.workflow is not None:
            where.append("workflow = ?")
            params.append(query.workflow)
        for key, value in (query.tags or {}).items():  # keys are plain names (check_tags)
            where.append("json_extract(meta, '$.tags.\"' || ? || '\"') = ?")
            params += [key, value]
        if query.waiting_for is not None:
            where.append(_SQL_WAITING_FOR)
            params += [query.waiting_for.value, query.wait_name, query.wait_name]
        sql = _SELECT_RUN
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?"
        params += [query.limit, query.offset]

        def op(conn: sqlite3.Connection) -> list[RunRecord]:
            return [_run_from_row(row) for row in conn.execute(sql, params)]

        return await self._read(op)

    # -- journal ------------------------------------------------------------------------------------

    async def load_journal(self, run_id: str) -> list[JournalEntry]:
        def op(conn: sqlite3.Connection) -> list[JournalEntry]:
            return [
                _entry_from_row(run_id, row) for row in conn.execute(_SQL_LOAD_JOURNAL, (run_id,))
            ]

        return await self._read(op)

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        def op(conn: sqlite3.Connection) -> None:
            # The common case in two statements: the fenced step count, then a new seq.
            if (
                len(entries) == 1
                and conn.execute(
                    _SQL_FENCED_BUMP, (entries[0].final, self.clock.time(), run_id, epoch)
                ).rowcount
            ):
                if conn.execute(_SQL_INSERT_ENTRY, _entry_params(run_id, entries[0])).rowcount:
                    return
                conn.execute(_SQL_UNBUMP, (run_id,))  # the seq is taken: the general path
            fence = self._fenced(conn, run_id, epoch)
            self._append_in(conn, run_id, fence["steps"], entries)

        await self._write(op, again=True)

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        def op(conn: sqlite3.Connection) -> JournalEntry | None:
            fence = self._fenced(conn, run_id, epoch)
            row = conn.execute(_SQL_OLDEST_SIGNAL, (run_id, name)).fetchone()
            if row is None:
                return None
            final = entry.with_result(row["payload"], self.clock.time())
            self._append_in(conn, run_id, fence["steps"], [final])
            conn.execute("UPDATE signals SET consumed = 1 WHERE id = ?", (row["id"],))
            return final

        return await self._write(op)

    # -- leases -------------------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[RunRecord]:
        worker, limit, lease_ttl = request.worker, request.limit, request.lease_ttl
        max_crashes = request.max_crashes
        names = sorted(set(request.workflows))
        if not names or limit <= 0:
            return []
        candidates_sql = (
            "SELECT run_id, status, crash_count, owner FROM runs "
            f"WHERE workflow IN ({', '.join('?' * len(names))}) AND ("
            "(status IN ('pending', 'waiting') AND wake_at <= ?) "
            "OR (status = 'running' AND lease_expires <= ?)) "
            "ORDER BY COALESCE(wake_at, 0.0), created_at, rowid LIMIT ?"
        )

        def op(conn: sqlite3.Connection) -> list[RunRecord]:
            now, live = self.clock.time(), time.time()
            claimed: list[str] = []
            seen: set[str] = set()
            while len(claimed) < limit:
                # Quarantined takeovers do not count towards the limit, so page on until we
                # have `limit` runs or run out; `seen` skips rows already handled.
                want = limit - len(claimed) + len(seen)
                rows = conn.execute(candidates_sql, (*names, now, live, want)).fetchall()
                for row in rows:
                    run_id, crash_count = row["run_id"], row["crash_count"]
                    if run_id in seen or len(claimed) >= limit:
                        continue
                    seen.add(run_id)
                    if row["status"] == RunStatus.RUNNING.value:
                        # Its worker died or stalled: the takeover counts as a crash.
                        crash_count += 1
                        last_error = f"worker {row['owner']} lost its lease (crashed or stalled) while running"
                        if crash_count >= max_crashes:
                            conn.execute(
                                "UPDATE runs SET status = ?, crash_count = ?, last_error = ?, "
                                "owner = NULL, lease_expires = NULL, wake_at = NULL, "
                                "updated_at = ? WHERE run_id = ?",
                                (RunStatus.QUARANTINED.value, crash_count, last_error, now, run_id),
                            )
                            continue
                        conn.execute(
                            "UPDATE runs SET crash_count = ?, last_error = ? WHERE run_id = ?",
                            (crash_count, last_error, run_id),
                        )
                    conn.execute(
                        "UPDATE runs SET status = 'running', epoch = epoch + 1, owner = ?, "
                        "lease_expires = ?, wake_at = NULL, updated_at = ? WHERE run_id = ?",
                        (worker, live + lease_ttl, now, run_id),
                    )
                    claimed.append(run_id)
                if len(rows) < want:
                    break
            return [self._get(conn, run_id) for run_id in claimed]

        return await self._write(op)

    async def renew(self, worker: str, leases: dict[str, int], lease_ttl: float) -> dict[str, bool]:
        items = list(leases.items())

        def op(conn: sqlite3.Connection) -> dict[str, bool]:
            now = time.time()  # leases measure live workers: real time
            held: dict[str, bool] = {}
            for run_id, epoch in items:
                row = conn.execute(
                    "SELECT cancel_requested FROM runs WHERE run_id = ? AND epoch = ? "
                    "AND status = 'running' AND owner = ?",
                    (run_id, epoch, worker),
                ).fetchone()
                if row is not None:
                    conn.execute(
                        "UPDATE runs SET lease_expires = ? WHERE run_id = ?",
                        (now + lease_ttl, run_id),
                    )
                    held[run_id] = bool(row["cancel_requested"])
            return held

        return await self._write(op)

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        stored_waits = encode_waits(waits)

        def op(conn: sqlite3.Connection) -> None:
            now = self.clock.time()
            if conn.execute(
                _SQL_FENCED_PARK, (stored_waits, now, wake_at, stored_waits, now, run_id, epoch)
            ).rowcount:
                return
            fence = self._fenced(conn, run_id, epoch)
            wake = wake_at
            cancelled = fence["cancel_requested"]
            awaited = conn.execute(_SQL_HAS_SIGNAL, (run_id, stored_waits)).fetchone()
            if cancelled or awaited is not None:
                wake = now  # a signal or a cancel request is already here: no lost wake-up
            conn.execute(
                "UPDATE runs SET status = 'waiting', wake_at = ?, waits = ?, owner = NULL, "
                "lease_expires = NULL, updated_at = ? WHERE run_id = ?",
                (wake, stored_waits, now, run_id),
            )

        await self._write(op)
        self._listeners.notify()

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        status_value = RunStatus(status).value

        def op(conn: sqlite3.Connection) -> None:
            params = (status_value, result, error, self.clock.time(), run_id)
            if conn.execute(_SQL_FINISH + _FENCE_CLAUSE, (*params, epoch)).rowcount:
                return
            self._fenced(conn, run_id, epoch)
            conn.execute(_SQL_FINISH, params)

        await self._write(op)
        self._listeners.notify()

    async def record_crash(
        self, run_id: str, epoch: int | None, error: str, retry_at: float, max_crashes: int
    ) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            if epoch is None:
                crash_count = self._get(conn, run_id).crash_count + 1
            else:
                crash_count = self._fenced(conn, run_id, epoch)["crash_count"] + 1
            if epoch is None or crash_count >= max_crashes:
                status, wake = RunStatus.QUARANTINED.value, None
            else:
                status, wake = RunStatus.WAITING.value, retry_at
            conn.execute(
                "UPDATE runs SET crash_count = ?, last_error = ?, owner = NULL, "
                "lease_expires = NULL, status = ?, wake_at = ?, updated_at = ? WHERE run_id = ?",
                (crash_count, error, status, wake, self.clock.time(), run_id),
            )
            return self._get(conn, run_id)

        result = await self._write(op)
        self._listeners.notify()
        return result

    async def resume(self, run_id: str) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            now = self.clock.time()
            conn.execute(
                "UPDATE runs SET status = 'pending', crash_count = 0, wake_at = ?, updated_at = ? "
                "WHERE run_id = ? AND status = 'quarantined'",
                (now, now, run_id),
            )
            return self._get(conn, run_id)

        result = await self._write(op)
        self._listeners.notify()
        return result

    async def retry_run(
        self, run_id: str, reopen: Sequence[int], after: int | None, note: JournalEntry
    ) -> RunRecord:
        doomed = sorted({int(seq) for seq in reopen})
        beyond = "" if after is None else " OR seq > ?"
        delete = (
            f"DELETE FROM journal WHERE run_id = ? AND seq >= 0 AND (seq IN "
            f"({', '.join('?' * len(doomed))}){beyond})"
        )

        def op(conn: sqlite3.Connection) -> RunRecord:
            run = self._get(conn, run_id)
            taken = conn.execute(_SQL_GET_ENTRY, (run_id, note.seq)).fetchone()
            if taken is not None:
                if taken["checksum"] == note.checksum:
                    return run  # our own earlier call, acknowledgement lost
                raise retry_conflict(run_id, note.seq)
            if run.status not in RETRYABLE:
                raise retry_refused(run_id, run.status)
            conn.execute(delete, (run_id, *doomed, *(() if after is None else (after,))))
            conn.execute(_SQL_INSERT_ENTRY, _entry_params(run_id, note))
            now = self.clock.time()
            conn.execute(
                "UPDATE runs SET status = 'pending', wake_at = ?, waits = NULL, owner = NULL, "
                "lease_expires = NULL, error = NULL, result = NULL, cancel_requested = 0, "
                "crash_count = 0, steps = (SELECT count(*) FROM journal WHERE run_id = ? AND "
                "seq >= 0), updated_at = ? WHERE run_id = ?",
                (now, run_id, now, run_id),
            )
            return self._get(conn, run_id)

        result = await self._write(op)
        self._listeners.notify()
        return result

    # -- signals and cancellation -------------------------------------------------------------------

    async def deliver_signal(self, run_id: str, name: str, payload: str, signal_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            run = conn.execute(
                "SELECT status, waits FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if run is None:
                raise RunNotFoundError(run_id)
            inserted = conn.execute(
                "INSERT INTO signals (run_id, signal_id, name, payload) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (run_id, signal_id) DO NOTHING",
                (run_id, signal_id, name, payload),
            ).rowcount
            if not inserted:
                return False
            if run["status"] == RunStatus.WAITING.value and name in awaited_signals(
                decode_waits(run["waits"], f"run {run_id!r}")
            ):
                conn.execute(
                    "UPDATE runs SET wake_at = ? WHERE run_id = ?", (self.clock.time(), run_id)
                )
            return True

        delivered = await self._write(op)
        if delivered:
            self._listeners.notify()
        return delivered

    async def request_cancel(self, run_id: str) -> RunRecord:
        def op(conn: sqlite3.Connection) -> RunRecord:
            run = self._get(conn, run_id)
            now = self.clock.time()
            if run.status == RunStatus.QUARANTINED or (
                run.status == RunStatus.PENDING and run.steps == 0
            ):
                # Nothing is executing it: cancel on the spot.
                conn.execute(
                    "UPDATE runs SET status = 'cancelled', cancel_requested = 1, error = ?, "
                    "wake_at = NULL, updated_at = ? WHERE run_id = ?",
                    (CANCELLED_ERROR, now, run_id),
                )
            elif run.status not in TERMINAL:
                if run.status in (RunStatus.WAITING, RunStatus.PENDING):
                    conn.execute(
                        "UPDATE runs SET cancel_requested = 1, wake_at = ? WHERE run_id = ?",
                        (now, run_id),
                    )
                else:
                    conn.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))
            return self._get(conn, run_id)

        result = await self._write(op)
        self._listeners.notify()
        return result

    # -- the worker registry ------------------------------------------------------------------------

    async def heartbeat_worker(self, worker: WorkerRecord, ttl: float) -> WorkerRecord:
        workflows = json.dumps(list(worker.workflows), ensure_ascii=False)

        def op(conn: sqlite3.Connection) -> WorkerRecord:
            now = time.time()  # the registry measures live workers: real time
            conn.execute(
                "DELETE FROM workers WHERE expires_at <= ? AND worker_id <> ?",
                (now, worker.worker_id),
            )
            row = conn.execute(
                "SELECT started_at, expires_at FROM workers WHERE worker_id = ?",
                (worker.worker_id,),
            ).fetchone()
            started = row["started_at"] if row is not None and row["expires_at"] > now else now
            stored = WorkerRecord(
                worker.worker_id,
                worker.host,
                worker.pid,
                tuple(worker.workflows),
                started,
                now,
                now + ttl,
            )
            conn.execute(
                _SQL_PUT_WORKER,
                (stored.worker_id, stored.host, stored.pid, workflows, started, now, now + ttl),
            )
            return stored

        return await self._write(op)

    async def list_workers(self) -> list[WorkerRecord]:
        def op(conn: sqlite3.Connection) -> list[WorkerRecord]:
            rows = conn.execute(_SQL_LIST_WORKERS, (time.time(),)).fetchall()
            return [_worker_from_row(row) for row in rows]

        return await self._read(op)

    async def remove_worker(self, worker_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))

        await self._write(op)

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
        connection of its own, so it works on a store that is not open."""
        changes: dict[str, Any] = {}
        if result is not None:
            changes["result"] = result
        if meta is not None:
            changes["meta"] = json.dumps(dict(meta))
        sql = (
            f"UPDATE journal SET {', '.join(f'{c} = :{c}' for c in changes)} "
            "WHERE run_id = :run_id AND seq = :seq"
        )

        def corrupt() -> int:
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                with conn:
                    return conn.execute(sql, {**changes, "run_id": run_id, "seq": seq}).rowcount
            finally:
                conn.close()

        if changes and not await anyio.to_thread.run_sync(corrupt):
            raise LookupError(f"run {run_id!r} has no journal entry at seq {seq}")

    # -- diagnostics ----------------------------------------------------------------------------------

    async def settings(self) -> dict[str, Any]:
        """The connection's effective ``journal_mode``, ``synchronous`` (0 OFF, 1 NORMAL, 2 FULL,
        3 EXTRA), ``busy_timeout`` and ``schema_version``, as SQLite reports them."""

        def op(conn: sqlite3.Connection) -> dict[str, Any]:
            return {
                name: conn.execute(f"PRAGMA {pragma}").fetchone()[0]
                for name, pragma in (
                    ("journal_mode", "journal_mode"),
                    ("synchronous", "synchronous"),
                    ("busy_timeout", "busy_timeout"),
                    ("schema_version", "user_version"),
                )
            }

        return await self._read(op)


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None
