"""PostgreSQL store for coro_durable: ``Runtime("postgresql://user@host:5432/db?schema=name")``.

Install ``coro-durable-postgres``; the ``coro_durable.stores`` entry points ``postgresql`` and
``postgres`` make ``Runtime("postgresql://...")`` build a :class:`PostgresStore`, or pass one
explicitly: ``Runtime(PostgresStore(url))``. Many worker processes may share one database.

URL::

    postgresql://user:password@host:5432/dbname?schema=coro_durable&pool_max=10&sslmode=require

coro_durable's own query parameters (removed before the URL is handed to psycopg/libpq):

``schema`` (default ``coro_durable``)
    The PostgreSQL schema holding the tables; created on first use (the role needs CREATE on the
    database). Stores with different schemas in one database are fully independent, which is how
    the test suite isolates each test. A lower-case identifier of at most 48 characters.
``pool_min`` (default 1), ``pool_max`` (default 10)
    Size of the connection pool. Each statement borrows one connection for its single round trip;
    ``watch`` (the LISTEN connection, one per open Runtime) is not counted.
``pool_timeout`` (default 10 seconds)
    How long one operation waits for a pool connection before failing with a
    ``TransientStoreError`` (the server is down, or all ``pool_max`` connections are busy).
``open_timeout`` (default 30 seconds)
    How long ``open()`` keeps retrying an unreachable server (connection refused or timed out)
    before raising ``StoreUnavailableError``. A host name that does not resolve, wrong
    credentials or a missing database fail at once with ``PermanentStoreError``.
``driver`` (default ``auto``)
    ``async``: psycopg's asyncio connections and ``AsyncConnectionPool`` (asyncio only).
    ``thread``: the blocking pool, each statement in a worker thread (``anyio.to_thread``).
    ``auto``: ``async`` under asyncio, ``thread`` under trio. psycopg's async connections wait
    on their socket through asyncio's event loop and cannot run on trio.
``prepare_threshold`` (default 5)
    psycopg's server-side prepared statements after this many uses of a statement on a
    connection; ``none`` disables them (needed behind PgBouncer in transaction mode before 1.21).

``group_commit`` (default 1), ``group_commit_wait_us`` (default 200), ``group_commit_max`` (256)
    Group commit: appends of one entry, parks and finishes that arrive while another batch of this
    store is committing queue up, and the next batch sends them all in ONE statement
    (``write_batch()``, one round trip, one transaction, one commit). ``group_commit=0`` sends
    each in its own statement. A write finding nothing in flight goes at once, alone, in its usual
    single statement (a run stepping sequentially never waits); the next batch's leader waits up
    to ``group_commit_wait_us`` microseconds for more writes only when the batch just committed
    held several. At most ``group_commit_max`` writes per batch.

Everything else is passed to libpq (``sslmode``, ``options``, ``target_session_attrs``, ...).
coro_durable sets ``application_name=coro_durable`` and ``connect_timeout=5`` unless given.

How it works (details in the module docstrings of ``_sql`` and ``_driver``):

* **One statement per operation.** Every operation is a single SQL statement in autocommit mode:
  one network round trip, atomic without BEGIN/COMMIT (``consume_signal`` alone takes two: it
  reads the signal, then appends it fenced, since the entry's checksum is computed here). A
  journal append is one ``SELECT <schema>.append(...)``: a PL/pgSQL function that locks the run
  row (``FOR NO KEY UPDATE``), checks the fencing token (epoch) and status on it, inserts the
  entries and updates the run's step count; its answer tells "lease lost", "unknown run" and
  "seq taken by a different final entry" (SQLSTATE ``CDCNF``, the call rolled back) apart, and
  an identical retry is accepted. Claims lock candidates with ``FOR NO KEY UPDATE SKIP LOCKED``.
* **Group commit.** ``write_batch()`` (PL/pgSQL, one call per batch) takes the writes as a JSON
  array, locks their run rows in ``run_id`` byte order (``renew`` locks in the same order, so a
  batch and a renewal cannot deadlock), inserts every fenced append of a new seq in one INSERT and
  bumps the step counts in one UPDATE, then decides the rest one by one (refusals, seqs already
  taken, parks, finishes). Every write is fenced and answered on its own, exactly as its single
  statement would answer (NULL, 'missing', 'lost <epoch> <status>', 'conflict ...'), and nothing
  is written for a refused one; if the statement or its commit fails, every caller of the batch
  gets that error. Callers resume only once the commit returned.
* **One clock.** Lease expiry, creation times, worker heartbeats and "due now" comparisons use
  the database server's clock (``clock_timestamp()``), never the workers' clocks. Timer due times
  (``wake_at``) come from the worker that parked the run; a worker whose clock is off by *d*
  wakes its timers *d* early or late, never decides ownership with it.
* **Versioned schema.** ``schema_version`` records the applied migrations (1 the tables, 2 group
  commit, 3 the crash-count rule, 4 the worker registry, 5 the records' ``meta``: ``jsonb`` on
  runs, ``json`` on journal entries, whose checksum covers the exact text); ``open()`` applies
  the missing ones to an existing schema in place, in one transaction under
  ``pg_advisory_xact_lock``, so processes starting together migrate once. A schema newer than
  the installed package is refused. Rows are read by column name (psycopg's ``dict_row``).
* **Wake-ups.** Creating a run, delivering a signal, requesting a cancel, parking, finishing and
  resuming send ``NOTIFY`` on the channel ``<schema>.wake`` in the same statement. ``watch()``,
  run by every open Runtime, LISTENs on a dedicated connection and calls the store's listeners;
  it also sleeps until the next timer or lease expiry (read from the database) and wakes the
  workers then, so workers need not poll fast.
* **Errors.** psycopg exceptions are translated into ``coro_durable.errors``. A dropped
  connection (server restart, ``pg_terminate_backend``) raises a ``TransientStoreError``, the
  pool replaces dead connections, and the runtime retries (logging one warning); a retried append
  whose first attempt had committed is recognised as identical. What no retry can fix raises a
  ``PermanentStoreError`` at once, saying what to fix: a host name that does not resolve, refused
  credentials, a missing database, a missing privilege (e.g. CREATE on the database).
* **Durability.** With ``synchronous_commit=on`` (PostgreSQL's default) an acknowledged journal
  entry survives a server crash. With ``off`` the last ~``3 * wal_writer_delay`` of commits can be
  lost on a server crash; ``open()`` logs a warning when it finds it off.
"""

from __future__ import annotations

from ._sql import SCHEMA_VERSION
from ._store import PostgresStore

__all__ = ["PostgresStore", "SCHEMA_VERSION"]
