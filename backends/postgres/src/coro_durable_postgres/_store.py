"""PostgresStore: the coro_durable store protocol on PostgreSQL (see the package docstring)."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg.rows import dict_row

from coro_durable.errors import (
    ConfigurationError,
    ConflictError,
    CorruptJournalError,
    LeaseLost,
    PermanentStoreError,
    RunNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from coro_durable.store import (
    CANCELLED_ERROR,
    ClaimRequest,
    GroupCommit,
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
    retry_conflict,
    retry_refused,
)

from ._driver import (
    AsyncDriver,
    Params,
    Row,
    ThreadDriver,
    connection_refusal,
    make_driver,
    translate,
)
from ._sql import (
    ENTRY_COLUMNS,
    ENTRY_TYPES,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    WORKER_COLUMNS,
    Statements,
)
from ._url import Options, parse_url

__all__ = ["PostgresStore"]

log = logging.getLogger("coro_durable.postgres")


#: How often ``watch`` re-reads the next due time and checks its LISTEN connection (seconds).
RESYNC_INTERVAL = 30.0
_MIN_SERVER_VERSION = 120000
#: A group commit batch is sent in ``write_batch()`` calls of at most about this many bytes of
#: JSON (each its own transaction), so a batch of large payloads stays a reasonable statement.
BATCH_BYTES = 1 << 20


def _run_from_row(row: Row) -> RunRecord:
    fields = {column: row[column] for column in RUN_COLUMNS}
    where = f"run {fields['run_id']!r}"
    try:
        fields["status"] = RunStatus(fields["status"])
    except ValueError:
        raise CorruptJournalError(
            f"{where}: stored status {fields['status']!r} is not a run status; the row was "
            "modified outside coro_durable"
        ) from None
    fields["meta"] = decode_meta(fields["meta"], where)
    fields["waits"] = decode_waits(fields["waits"], where)
    return RunRecord(**fields)


def _worker_from_row(row: Row) -> WorkerRecord:
    fields = {column: row[column] for column in WORKER_COLUMNS}
    fields["pid"] = int(fields["pid"])
    fields["workflows"] = tuple(fields["workflows"])
    return WorkerRecord(**fields)


def _due_at(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise CorruptJournalError(
            f"journal due_at {text!r} is not a number; the row was modified outside coro_durable"
        ) from None


def _entry_from_row(run_id: str, row: Row) -> JournalEntry:
    fields = {column: row[column] for column in ENTRY_COLUMNS}
    fields["due_at"] = _due_at(fields["due_at"])
    fields["meta"] = decode_meta(fields["meta"], f"run {run_id!r} journal seq {fields['seq']}")
    return JournalEntry(**fields)


def _no_nul(what: str, value: str) -> None:
    if "\x00" in value:
        raise ConfigurationError(
            f"{what} {value!r} contains a NUL character, which PostgreSQL text cannot store"
        )


def _single(entry: JournalEntry) -> dict[str, Any]:
    """Parameters of the one-entry append statement."""
    params = {column: getattr(entry, column) for column in ENTRY_COLUMNS}
    params["due_at"] = None if entry.due_at is None else repr(entry.due_at)
    params["meta"] = encode_meta(entry.meta)
    return params


def _batch(entries: Sequence[JournalEntry]) -> tuple[dict[str, list[Any]], tuple[int, str] | None]:
    """Column arrays for the append statement: one effective entry per seq.

    A batch may name a seq more than once; the store protocol applies its entries in order, so
    the effective entry is the first final one (or the last pending one), later entries must
    equal it, and ``uniform`` says whether all of them are identical (required when the seq
    already holds a final entry). Returns the arrays and the first seq the batch contradicts
    itself on, if any.
    """
    groups: dict[int, list[JournalEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.seq, []).append(entry)
    columns: dict[str, list[Any]] = {c: [] for c in ENTRY_COLUMNS}
    columns["uniform"] = []
    contradiction: tuple[int, str] | None = None
    for seq, group in groups.items():
        chosen = next((e for e in group if e.final), group[-1])
        if chosen.final:
            later = group[group.index(chosen) + 1 :]
            if contradiction is None and any(e.checksum != chosen.checksum for e in later):
                contradiction = (seq, chosen.describe())
        for column in ENTRY_COLUMNS:
            columns[column].append(getattr(chosen, column))
        columns["uniform"].append(all(e.checksum == group[0].checksum for e in group))
    # One Python type per array (psycopg refuses mixed int/float lists); due_at keeps its repr.
    columns["due_at"] = [None if d is None else repr(d) for d in columns["due_at"]]
    columns["meta"] = [encode_meta(m) for m in columns["meta"]]
    for column in ("started_at", "finished_at"):
        columns[column] = [None if t is None else float(t) for t in columns[column]]
    for column in ("seq", "attempts"):
        columns[column] = [int(n) for n in columns[column]]
    return columns, contradiction


@dataclass(frozen=True, slots=True)
class _Write:
    """One fenced write (an append, a park, a finish) on its way to the database."""

    op: str  # "append", "park" or "finish"
    run_id: str
    epoch: int
    params: dict[str, Any]  # the single-write statement's parameters (not for several entries)
    entries: Sequence[JournalEntry] = ()

    def item(self) -> str | None:
        """Its JSON object for ``write_batch()``, or None when it must be written alone (an
        append of several entries; text that JSON cannot carry into PostgreSQL)."""
        if self.op == "park":  # write_batch() reads the waits as a JSON array, not as text
            waits = self.params["waits"]
            fields = {**self.params, "waits": json.loads(waits) if waits is not None else None}
            return _batch_item(self.op, self.run_id, self.epoch, fields)
        if self.op != "append":
            return _batch_item(self.op, self.run_id, self.epoch, self.params)
        if len(self.entries) != 1:
            return None
        # write_batch() reads the item's meta as a JSON object (a json column), not as text.
        fields = {**self.params, "meta": self.entries[0].meta}
        return _batch_item(self.op, self.run_id, self.epoch, fields)


def _batch_item(op: str, run_id: str, epoch: int, fields: dict[str, Any]) -> str | None:
    """The JSON object ``write_batch()`` takes for one write, or None if it must go alone.

    PostgreSQL refuses ``\\u0000`` in JSON it converts to text (text cannot hold NUL), and a lone
    surrogate cannot be sent at all: such an item (rare: payloads come from the codec) is written
    by itself, where it fails or succeeds exactly as without group commit. So is a non-finite
    float."""
    try:
        text = json.dumps(
            {"op": op, "run_id": run_id, "epoch": epoch, **fields},
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        )
        if not text.isascii():
            text.encode()
    except (ValueError, UnicodeEncodeError):
        return None
    return None if "\\u0000" in text else text


class PostgresStore:
    """A store in a PostgreSQL schema (``postgresql://user@host:5432/db?schema=name``).

    Safe for many worker processes on one database. Use it as ``Runtime(PostgresStore(url))`` or
    ``Runtime(url)``; the URL options are documented in :mod:`coro_durable_postgres`.
    """

    def __init__(self, url: str = "postgresql://localhost/postgres") -> None:
        self.url = url
        self.options: Options = parse_url(url)
        self.schema = self.options.schema
        self._quoted = f'"{self.schema}"'
        self._sql = Statements(self._quoted)
        self._driver: AsyncDriver | ThreadDriver | None = None
        self._opening: anyio.Lock | None = None
        self._listeners = ListenerSet()
        # Notifications carry this token; a store ignores its own (it told its listeners already).
        self._origin = uuid.uuid4().hex[:12]
        group = self.options.group_commit
        #: Batches concurrent appends, parks and finishes into one statement and transaction
        #: (``group_commit=0`` in the URL turns it off; see the package docstring).
        self.group_commit: GroupCommit[_Write, None] | None = (
            GroupCommit(self._flush, group) if group.enabled else None
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self.options.redacted!r}, schema={self.schema!r})"

    @property
    def driver(self) -> str | None:
        """``"async"`` (asyncio pool) or ``"thread"`` (blocking pool in threads), once open."""
        return self._driver.kind if self._driver is not None else None

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (retrying an unreachable server up to ``open_timeout``), create or migrate the
        schema, and open the connection pool. Idempotent."""
        if self._driver is not None:
            return
        if self._opening is None:
            self._opening = anyio.Lock()
        async with self._opening:
            if self._driver is not None:
                return
            await self._migrate()
            driver = make_driver(self.options)
            await driver.open()
            self._driver = driver

    async def close(self) -> None:
        """Close the pool. Idempotent; a closed store reopens on its next use."""
        driver, self._driver = self._driver, None
        self._opening = None  # a reopen may happen on another event loop
        if driver is not None:
            await driver.close()

    async def _migrate(self) -> None:
        give_up = time.monotonic() + self.options.open_timeout
        delay = 0.05
        warned = False
        while True:
            try:
                await anyio.to_thread.run_sync(self._migrate_sync)
                return
            except psycopg.OperationalError as exc:
                refusal = connection_refusal(exc, self.options)  # unknown host, bad credentials,
                if refusal is not None:  # no such database, a bad option: fail at once
                    raise refusal from exc
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    raise StoreUnavailableError(
                        f"PostgreSQL store {self.options.redacted} stayed unreachable for "
                        f"open_timeout={self.options.open_timeout:g}s: {_first_line(exc)}. Check "
                        "that the server is running and the host, port and database in the URL"
                    ) from exc
                if not warned:
                    warned = True
                    log.warning(
                        "PostgreSQL store %s: cannot connect (%s); retrying for up to "
                        "open_timeout=%gs",
                        self.options.redacted,
                        _first_line(exc),
                        self.options.open_timeout,
                    )
            except psycopg.Error as exc:
                raise translate(exc, self.options) from exc
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)

    def _migrate_sync(self) -> None:
        """Bring the schema to SCHEMA_VERSION (in a worker thread, on its own connection).

        Two processes opening a fresh database at once serialise on a transaction-scoped advisory
        lock keyed by the schema name; the second one finds the work done.
        """
        with psycopg.connect(self.options.dsn, autocommit=True, row_factory=dict_row) as conn:
            if conn.info.server_version < _MIN_SERVER_VERSION:
                raise PermanentStoreError(
                    f"PostgreSQL store {self.options.redacted}: server version "
                    f"{conn.info.server_version} is too old; coro_durable needs PostgreSQL 12+"
                )
            version = self._schema_version(conn)
            if version != SCHEMA_VERSION:
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                        [f"coro_durable.migrate:{self.schema}"],
                    )
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._quoted}")
                    conn.execute(self._sql.create_version_table)
                    version = self._schema_version(conn)
                    for number, step in enumerate(
                        self._sql.migrations[version:], start=version + 1
                    ):
                        for statement in step:
                            conn.execute(statement)
                        conn.execute(self._sql.insert_version, [number])
            row = conn.execute("SHOW synchronous_commit").fetchone()
            if row is not None and row["synchronous_commit"] == "off":
                log.warning(
                    "PostgreSQL store %s: synchronous_commit is off, so the last journal entries "
                    "acknowledged before a server crash can be lost (a step may then run again); "
                    "set synchronous_commit=on for the coro_durable database or role",
                    self.options.redacted,
                )

    def _schema_version(self, conn: psycopg.Connection[Row]) -> int:
        row = conn.execute(
            "SELECT to_regclass(%s) AS version_table", [f"{self._quoted}.schema_version"]
        ).fetchone()
        if row is None or row["version_table"] is None:
            return 0
        found = conn.execute(self._sql.version).fetchone()
        version = int(found["version"]) if found is not None else 0
        if version > SCHEMA_VERSION:
            raise PermanentStoreError(
                f"PostgreSQL store {self.options.redacted}: schema {self.schema!r} has version "
                f"{version}, newer than this coro-durable-postgres understands "
                f"({SCHEMA_VERSION}); upgrade coro-durable-postgres"
            )
        return version

    async def _fetch(self, sql: str, params: Params = None) -> list[Row]:
        driver = self._driver
        if driver is None:
            await self.open()
            driver = self._driver
            assert driver is not None
        return await driver.fetch(sql, params)

    # -- notifications -------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    def _note(self) -> dict[str, str]:
        return {"channel": self.options.channel, "origin": self._origin}

    async def watch(self) -> None:
        """Call the listeners when other processes make work claimable, and when timers fall due.

        Each open Runtime runs this in its task group until it closes. It holds one dedicated
        connection that LISTENs on the schema's channel, waits on its socket through anyio
        (under asyncio and trio alike), and reconnects with backoff when the connection drops,
        waking the listeners once (notifications may have been missed). Writes that make work
        claimable send a NOTIFY in the same statement; a park's notification carries the seconds
        until its timer is due (database clock), so the watcher wakes the workers then, without
        polling. It never raises, except to be cancelled.
        """
        delay = 0.1
        while True:
            try:
                conn = await self._listen_connect()
            except Exception as exc:
                log.warning(
                    "PostgreSQL store %s: cannot LISTEN for wake-ups (%s); retrying in %.1fs",
                    self.options.redacted,
                    _first_line(exc),
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            try:
                await self._listen(conn)
            except Exception as exc:
                log.warning(
                    "PostgreSQL store %s: the LISTEN connection failed (%s); reconnecting",
                    self.options.redacted,
                    _first_line(exc),
                )
            finally:
                conn.close()

    async def _listen_connect(self) -> psycopg.Connection[Any]:
        """Connect and LISTEN in a worker thread. Cancelling the caller (the Runtime closing)
        does not wait for a slow connection attempt: the thread closes what it opened."""
        lock = threading.Lock()
        state: dict[str, Any] = {"abandoned": False, "conn": None}

        def connect() -> psycopg.Connection[Any]:
            conn = psycopg.connect(self.options.dsn, autocommit=True)
            try:
                conn.execute(f'LISTEN "{self.options.channel}"')
            except BaseException:
                conn.close()
                raise
            with lock:
                if state["abandoned"]:
                    conn.close()
                else:
                    state["conn"] = conn
            return conn

        try:
            return await anyio.to_thread.run_sync(connect, abandon_on_cancel=True)
        except BaseException:
            with lock:
                state["abandoned"] = True
                if state["conn"] is not None:
                    state["conn"].close()
            raise

    async def _next_due(self) -> float | None:
        """Monotonic time at which the next parked run falls due or lease expires, if any."""
        rows = await self._fetch(self._sql.next_due)
        seconds = rows[0]["seconds"] if rows else None
        if seconds is None:
            return None
        return time.monotonic() + max(0.0, float(seconds)) + 0.005

    async def _listen(self, conn: psycopg.Connection[Any]) -> None:
        self._listeners.notify()  # whatever happened while we were not listening
        due = await self._next_due()
        synced = time.monotonic()
        fd = conn.fileno()
        pending = False  # notifications may wait in psycopg's backlog (read during a query)
        while True:
            now = time.monotonic()
            wait = RESYNC_INTERVAL - (now - synced)
            if due is not None:
                wait = min(wait, due - now)
            readable = pending
            if wait > 0 and not pending:
                with anyio.move_on_after(wait):
                    await anyio.wait_readable(fd)
                    readable = True
            fire = False
            if readable:
                pending = False
                for notification in conn.notifies(timeout=0):
                    origin, _, delay = notification.payload.partition(" ")
                    try:
                        seconds = float(delay) if delay else 0.0
                    except ValueError:
                        seconds = 0.0
                    if seconds > 0:
                        at = time.monotonic() + seconds + 0.005
                        due = at if due is None else min(due, at)
                    elif origin != self._origin:
                        fire = True
            now = time.monotonic()
            if due is not None and due <= now:
                fire = True
                due = await self._next_due()
            if now - synced >= RESYNC_INTERVAL:
                await anyio.to_thread.run_sync(conn.execute, "SELECT 1")  # is it alive?
                due = await self._next_due()
                synced = now
                pending = True
            if fire:
                self._listeners.notify()

    # -- fencing helpers -----------------------------------------------------------------------

    @staticmethod
    def _lost(run_id: str, epoch: int, current: str | None) -> BaseException:
        """RunNotFoundError or LeaseLost from ``'<epoch> <status>'`` (None or 'missing': no run)."""
        if current is None or current == "missing":
            return RunNotFoundError(run_id)
        token, _, status = current.removeprefix("lost ").partition(" ")
        return LeaseLost(run_id, epoch, f"current token is {token}, status {status}")

    # -- runs ----------------------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> tuple[RunRecord, bool]:
        check_run_id(run.run_id)
        _no_nul("workflow name", run.workflow)
        params = {c: getattr(run, c) for c in RUN_COLUMNS}
        params["meta"] = encode_meta(run.meta)
        params["waits"] = encode_waits(run.waits)
        params.update(self._note())
        for _ in range(3):
            rows = await self._fetch(self._sql.create_run, params)
            if rows:
                created = bool(rows[0]["created"])
                record = _run_from_row(rows[0])
                if created:
                    self._listeners.notify()
                return record, created
            # Lost a race with a concurrent insert of the same run_id that committed after our
            # snapshot: it is there now.
            existing = await self.get_run(run.run_id)
            if existing is not None:
                return existing, False
        raise StoreError(f"run {run.run_id!r} could not be created or read back; retry")

    async def get_run(self, run_id: str) -> RunRecord | None:
        _no_nul("run_id", run_id)
        rows = await self._fetch(self._sql.get_run, [run_id])
        return _run_from_row(rows[0]) if rows else None

    async def list_runs(self, query: RunQuery) -> list[RunRecord]:
        where: list[str] = []
        params: list[Any] = []
        if query.status is not None:
            where.append("status = %s")
            params.append(RunStatus(query.status).value)
        if query.workflow is not None:
            _no_nul("workflow name", query.workflow)
            where.append("workflow = %s")
            params.append(query.workflow)
        if query.tags:  # jsonb containment on the tags, served by the runs_tags GIN index
            where.append("meta -> 'tags' @> %s::jsonb")
            params.append(json.dumps(dict(query.tags)))
        if query.waiting_for is not None:  # jsonb containment: a wait with that kind (and name)
            wanted: dict[str, Any] = {"kind": query.waiting_for.value}
            if query.wait_name is not None:
                _no_nul("wait name", query.wait_name)
                wanted["name"] = query.wait_name
            where.append("status = 'waiting' AND waits @> %s::jsonb")
            params.append(json.dumps([wanted]))
        sql = self._sql.list_runs
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, run_id DESC LIMIT %s OFFSET %s"
        params += [max(0, query.limit), max(0, query.offset)]
        return [_run_from_row(row) for row in await self._fetch(sql, params)]

    # -- journal -------------------------------------------------------------------------------

    async def load_journal(self, run_id: str) -> list[JournalEntry]:
        _no_nul("run_id", run_id)
        rows = await self._fetch(self._sql.load_journal, [run_id])
        return [_entry_from_row(run_id, row) for row in rows]

    async def append(self, run_id: str, epoch: int, entries: Sequence[JournalEntry]) -> None:
        """One round trip: the ``append()`` function checks the fence under the run's row lock,
        writes, and tells lease lost, unknown run and conflict (SQLSTATE CDCNF) apart. With group
        commit, concurrent one-entry appends (and parks, finishes) share one ``write_batch()``
        call and one commit."""
        fields = _single(entries[0]) if len(entries) == 1 else {}
        await self._write(_Write("append", run_id, epoch, fields, entries))

    async def _write(self, write: _Write) -> None:
        if self.group_commit is None:
            await self._write_alone(write)
        else:
            await self.group_commit.submit(write, again=write.op == "append")

    async def _flush(self, writes: Sequence[_Write]) -> list[BaseException | None]:
        """Group commit: the queued writes in one ``write_batch()`` statement (one round trip, one
        transaction, one commit), each fenced and answered on its own. A write alone, or one that
        cannot travel as JSON, takes its single-write statement instead. A batch of more than
        ``BATCH_BYTES`` of JSON goes in several statements; one that fails fails its writes only."""
        if len(writes) == 1:
            await self._write_alone(writes[0])  # its error is its outcome
            return [None]
        outcomes: list[BaseException | None] = [None] * len(writes)
        chunks: list[list[tuple[int, str]]] = [[]]
        size = 0
        seqs: set[tuple[str, int]] = set()
        for i, write in enumerate(writes):
            item = write.item()
            if item is None:
                continue
            if write.op == "append":  # at most one append per (run_id, seq) in a batch
                key = (write.run_id, write.entries[0].seq)
                if key in seqs:
                    continue
                seqs.add(key)
            if size + len(item) > BATCH_BYTES and chunks[-1]:
                chunks.append([])
                size = 0
            chunks[-1].append((i, item))
            size += len(item)
        done: set[int] = set()
        for chunk in chunks:
            if len(chunk) < 2:
                continue  # written alone below
            done.update(i for i, _ in chunk)
            payload = ",".join(f'{{"i":{k},{item[1:]}' for k, (_, item) in enumerate(chunk, 1))
            try:
                rows = await self._fetch(
                    self._sql.write_batch,
                    [f"[{payload}]", len(chunk), self.options.channel, self._origin],
                )
            except Exception as exc:  # this statement failed: all its writes fail with it
                if len(chunks) == 1:
                    raise
                for i, _ in chunk:
                    outcomes[i] = exc
                continue
            for (i, _), answer in zip(chunk, rows[0]["outcomes"], strict=True):
                if answer is not None:
                    outcomes[i] = self._refused(writes[i], answer)
        for i, write in enumerate(writes):
            if i not in done:
                try:
                    await self._write_alone(write)
                except (Exception, LeaseLost) as exc:
                    outcomes[i] = exc
        return outcomes

    def _refused(self, write: _Write, answer: str) -> BaseException:
        """The error a ``write_batch()`` answer stands for (as the single statements raise it)."""
        if answer.startswith("conflict "):
            return ConflictError(answer.removeprefix("conflict "))
        return self._lost(write.run_id, write.epoch, answer)

    async def _write_alone(self, write: _Write) -> None:
        """One write in its own statement and transaction (no group commit)."""
        run_id, epoch = write.run_id, write.epoch
        if write.op == "append":
            if len(write.entries) == 1:
                params = {"run_id": run_id, "epoch": epoch, **write.params}
                outcome = (await self._fetch(self._sql.append_entry, params))[0]["outcome"]
            else:
                columns, contradiction = _batch(write.entries)
                if contradiction is not None:
                    await self._raise_contradiction(run_id, epoch, contradiction)
                params = {"run_id": run_id, "epoch": epoch, "signal": None, **columns}
                outcome = (await self._fetch(self._sql.append, params))[0]["outcome"]
            if outcome is not None:
                raise self._lost(run_id, epoch, outcome)
            return
        if write.op == "park" and (item := write.item()) is not None:
            # Through write_batch(): it locks the run row before it looks for signals the waits
            # name, so a delivery committing meanwhile is never missed (see _sql).
            rows = await self._fetch(
                self._sql.write_batch,
                [f'[{{"i":1,{item[1:]}]', 1, self.options.channel, self._origin],
            )
            answer_text = rows[0]["outcomes"][0]
            if answer_text is not None:
                raise self._refused(write, answer_text)
            return
        params = {"run_id": run_id, "epoch": epoch, **write.params, **self._note()}
        sql = self._sql.park if write.op == "park" else self._sql.finish
        answer = (await self._fetch(sql, params))[0]
        if not answer["updated"]:
            raise self._lost(run_id, epoch, answer["current"])

    async def _raise_contradiction(
        self, run_id: str, epoch: int, contradiction: tuple[int, str]
    ) -> None:
        """A batch that gives one seq two different final entries: LeaseLost if not ours,
        else ConflictError (the second entry conflicts with the first)."""
        run = await self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        if run.epoch != epoch or run.status != RunStatus.RUNNING:
            raise self._lost(run_id, epoch, f"{run.epoch} {run.status}")
        seq, what = contradiction
        raise ConflictError(f"run {run_id!r}: seq {seq} already holds a final {what} entry")

    async def consume_signal(
        self, run_id: str, epoch: int, name: str, entry: JournalEntry
    ) -> JournalEntry | None:
        _no_nul("signal name", name)
        while True:
            rows = await self._fetch(self._sql.oldest_signal, {"run_id": run_id, "name": name})
            if not rows:
                raise RunNotFoundError(run_id)
            found = rows[0]
            if found["epoch"] != epoch or found["status"] != RunStatus.RUNNING.value:
                raise self._lost(run_id, epoch, f"{found['epoch']} {found['status']}")
            if found["signal"] is None:
                return None
            final = entry.with_result(found["payload"], time.time())
            params = {"run_id": run_id, "epoch": epoch, "signal": found["signal"], **_single(final)}
            outcome = (await self._fetch(self._sql.append_one, params))[0]["outcome"]
            if outcome is None:
                return final
            if outcome != "taken":
                raise self._lost(run_id, epoch, outcome)
            # Another activation of ours consumed that signal first: take the next one.

    # -- leases --------------------------------------------------------------------------------

    async def claim(self, request: ClaimRequest) -> list[RunRecord]:
        worker, limit, lease_ttl = request.worker, request.limit, request.lease_ttl
        max_crashes = request.max_crashes
        names = sorted(set(request.workflows))
        if not names or limit <= 0:
            return []
        _no_nul("worker id", worker)
        claimed: list[RunRecord] = []
        seen: list[str] = []  # handled by an earlier round of this call (claimed or quarantined)
        while len(claimed) < limit:
            want = limit - len(claimed)
            rows = await self._fetch(
                self._sql.claim,
                {
                    "workflows": names,
                    "limit": want,
                    "worker": worker,
                    "ttl": float(lease_ttl),
                    "max_crashes": max_crashes,
                    "seen": seen,
                },
            )
            runs = [_run_from_row(row) for row in rows]
            seen.extend(r.run_id for r in runs)
            got = [r for r in runs if r.status == RunStatus.RUNNING]
            claimed.extend(got)
            # Quarantined takeovers do not count towards the limit: look further if any were.
            if len(got) == len(runs) or len(runs) < want:
                break
        return claimed

    async def renew(self, worker: str, leases: dict[str, int], lease_ttl: float) -> dict[str, bool]:
        if not leases:
            return {}
        rows = await self._fetch(
            self._sql.renew,
            {
                "worker": worker,
                "ttl": float(lease_ttl),
                "run_ids": list(leases),
                "epochs": list(leases.values()),
            },
        )
        return {row["run_id"]: bool(row["cancel_requested"]) for row in rows}

    async def park(
        self, run_id: str, epoch: int, wake_at: float | None, waits: Sequence[Wait]
    ) -> None:
        fields = {"wake_at": wake_at, "waits": encode_waits(waits)}
        await self._write(_Write("park", run_id, epoch, fields))
        self._listeners.notify()

    async def finish(
        self, run_id: str, epoch: int, status: RunStatus, result: str | None, error: str | None
    ) -> None:
        fields = {"status": RunStatus(status).value, "result": result, "error": error}
        await self._write(_Write("finish", run_id, epoch, fields))
        self._listeners.notify()

    async def record_crash(
        self, run_id: str, epoch: int | None, error: str, retry_at: float, max_crashes: int
    ) -> RunRecord:
        params = {
            "run_id": run_id,
            "epoch": epoch,
            "quarantine": epoch is None,
            "error": error,
            "retry_at": retry_at,
            "max_crashes": max_crashes,
            **self._note(),
        }
        rows = await self._fetch(self._sql.record_crash, params)
        row = rows[0]
        if row["run_id"] is None:
            raise self._lost(run_id, epoch if epoch is not None else -1, row["current"])
        self._listeners.notify()
        return _run_from_row(row)

    async def resume(self, run_id: str) -> RunRecord:
        rows = await self._fetch(self._sql.resume, {"run_id": run_id, **self._note()})
        if not rows:
            raise RunNotFoundError(run_id)
        self._listeners.notify()
        return _run_from_row(rows[0])

    async def retry_run(
        self, run_id: str, reopen: Sequence[int], after: int | None, note: JournalEntry
    ) -> RunRecord:
        _no_nul("run_id", run_id)
        params: dict[str, Any] = {
            "run_id": run_id,
            "reopen": [int(seq) for seq in reopen],
            "after": after,
            **{f"note_{column}": value for column, value in _single(note).items()},
            **self._note(),
        }
        rows = await self._fetch(self._sql.retry_run, params)
        if not rows:
            raise RunNotFoundError(run_id)
        answer = rows[0]
        run = _run_from_row(answer)
        if answer["retried"]:
            self._listeners.notify()
            return run
        taken = answer["taken"]
        if taken == note.checksum:
            return run  # our own earlier call, acknowledgement lost
        if taken is not None:
            raise retry_conflict(run_id, note.seq)
        raise retry_refused(run_id, run.status)

    # -- signals and cancellation --------------------------------------------------------------

    async def deliver_signal(self, run_id: str, name: str, payload: str, signal_id: str) -> bool:
        _no_nul("run_id", run_id)
        _no_nul("signal name", name)
        _no_nul("signal id", signal_id)
        params = {
            "run_id": run_id,
            "name": name,
            "payload": payload,
            "signal_id": signal_id,
            **self._note(),
        }
        rows = await self._fetch(self._sql.deliver_signal, params)
        answer = rows[0]
        delivered = answer["delivered"]
        if not answer["found"]:
            raise RunNotFoundError(run_id)
        if delivered:
            self._listeners.notify()
        return bool(delivered)

    async def request_cancel(self, run_id: str) -> RunRecord:
        _no_nul("run_id", run_id)
        params = {"run_id": run_id, "cancelled_error": CANCELLED_ERROR, **self._note()}
        rows = await self._fetch(self._sql.request_cancel, params)
        if not rows:
            raise RunNotFoundError(run_id)
        self._listeners.notify()
        return _run_from_row(rows[0])

    # -- the worker registry -------------------------------------------------------------------

    async def heartbeat_worker(self, worker: WorkerRecord, ttl: float) -> WorkerRecord:
        _no_nul("worker id", worker.worker_id)
        _no_nul("worker host", worker.host)
        for name in worker.workflows:
            _no_nul("workflow name", name)
        params = {
            "worker_id": worker.worker_id,
            "host": worker.host,
            "pid": int(worker.pid),
            "workflows": list(worker.workflows),
            "ttl": float(ttl),
        }
        rows = await self._fetch(self._sql.heartbeat_worker, params)
        return _worker_from_row(rows[0])

    async def list_workers(self) -> list[WorkerRecord]:
        return [_worker_from_row(row) for row in await self._fetch(self._sql.list_workers)]

    async def remove_worker(self, worker_id: str) -> None:
        _no_nul("worker id", worker_id)
        await self._fetch(self._sql.remove_worker, [worker_id])

    # -- testing hook (CorruptibleStore) -------------------------------------------------------

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
        sets = ", ".join(f"{c} = %({c})s::{ENTRY_TYPES[c]}" for c in changes)
        sql = (
            f"UPDATE {self._quoted}.journal SET {sets} WHERE run_id = %(run_id)s AND seq = %(seq)s"
        )

        def corrupt() -> int:
            with psycopg.connect(self.options.dsn, autocommit=True) as conn:
                return conn.execute(sql, {**changes, "run_id": run_id, "seq": seq}).rowcount

        if changes and not await anyio.to_thread.run_sync(corrupt):
            raise LookupError(f"run {run_id!r} has no journal entry at seq {seq}")

    # -- diagnostics ---------------------------------------------------------------------------

    async def settings(self) -> dict[str, Any]:
        """The server's ``synchronous_commit``, ``server_version`` and this schema's version."""
        rows = await self._fetch(
            "SELECT current_setting('synchronous_commit') AS synchronous_commit, "
            "current_setting('server_version') AS server_version, "
            f"(SELECT max(version) FROM {self._quoted}.schema_version) AS schema_version"
        )
        return {**rows[0], "driver": self.driver}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
