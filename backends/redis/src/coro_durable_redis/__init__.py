"""coro_durable_redis: the coro_durable store on Redis (redis-py), under asyncio and trio.

    pip install coro-durable-redis
    async with cd.Runtime("redis://127.0.0.1:6379/0?prefix=myapp:") as rt: ...
    # or explicitly: cd.Runtime(RedisStore("redis://..."))

URL
---
``redis://[[user]:password@]host[:port][/db][?option=value&...]``; ``rediss://`` for TLS and
``unix:///path/redis.sock?db=0`` for a Unix socket. coro_durable's own options are removed from
the URL before the rest goes to redis-py's ``Redis.from_url`` (so ``socket_timeout``,
``socket_connect_timeout``, ``client_name``, ``health_check_interval``, ``max_connections``,
``ssl_cert_reqs``, ... work as redis-py documents them; redis-py's defaults are 5 s socket
timeouts). An option neither side knows is a ConfigurationError when the store is built.

``prefix`` (default ``coro_durable:``)
    Every key, and the pub/sub channel, starts with it. Stores with different prefixes on one
    server are independent (tests use a fresh prefix each). Redis Cluster is not supported (a
    claim reads many runs in one script); since no key leaves the prefix, a hash tag in it
    (``prefix={myapp}:``) keeps them all in one slot for proxies that require that.
``durability`` (default ``strict``)
    What the server must guarantee before the store agrees to use it; checked in ``open()`` with
    ``CONFIG GET appendonly`` / ``appendfsync`` (``INFO persistence`` where CONFIG is disabled):

    * ``strict``: the append-only file must be on (``appendonly yes``) with ``appendfsync
      everysec`` or ``always``. With ``everysec`` (Redis's default once AOF is on) the AOF is
      fsynced once a second in the background: a machine crash or power loss can lose about the
      last second of acknowledged writes (up to two while the disk is slow); a crash of the Redis
      process alone normally loses nothing, the AOF having been handed to the OS before the
      replies went out. ``appendfsync no`` is refused (the OS flushes when it likes, about 30 s
      on Linux).
    * ``always``: additionally requires ``appendfsync always``: Redis fsyncs the AOF before it
      replies, so an acknowledged journal entry survives a power loss (each write waits for the
      disk).
    * ``volatile``: anything goes, including no persistence at all (Redis's out-of-the-box
      ``appendonly no``: nothing survives a restart; RDB snapshots lose everything since the
      last one). For tests and throwaway data only.

    Both strict modes also refuse a server that may evict keys (``maxmemory`` set with an
    ``allkeys-*`` ``maxmemory-policy``): a journal entry must never vanish to make room. With
    ``noeviction`` a full server refuses writes (OOM), which the store reports and retries.

    Replication does not change this: Redis replicates asynchronously, a failover can lose
    acknowledged writes, and ``WAIT`` only narrows the window, it does not make Redis strongly
    consistent. The check runs at ``open()``; a server reconfigured later is not noticed.
``transport`` (default ``auto``)
    How the store talks to Redis. ``asyncio``: redis-py's asyncio client (asyncio only);
    ``native``: the store's own small RESP2 client on anyio streams (``_native.py``), which runs
    under asyncio and trio alike; ``thread``: redis-py's synchronous client in worker threads (any
    loop). ``auto`` is redis-py's asyncio client under asyncio and the native client under trio,
    where redis-py has no support; a URL with a redis-py option the native client does not handle
    (it handles host, port, db, username, password, unix sockets, ``client_name``,
    ``socket_timeout``, ``socket_connect_timeout``, ``max_connections`` and the ``ssl_*`` options
    of ``rediss://``) uses threads under trio instead. Measured with
    ``backends/redis/benchmarks/latency.py`` (best of 3 rounds, loopback, 2-core machine): a
    fenced append takes 123 us with redis-py's asyncio client, 128 us native under asyncio,
    114 us native under trio and 264 us through threads under trio (246 us under asyncio).
``max_connections`` (redis-py's option)
    Connections one store object opens per event loop; the native client also honours it
    (default 16 there, commands beyond it wait their turn; unlimited in redis-py).
``threads`` (default 16)
    Worker threads the ``thread`` transport may use at once (its own limiter, so store calls
    never queue behind sync workflow steps running in anyio's default thread pool).
``retry_window`` (default 2 s)
    How long one store call retries a lost connection (with the same operation token, so a write
    whose reply was lost is recognised, never applied twice). Past it the call raises a
    TransientStoreError, which the Runtime keeps retrying up to its ``store_deadline`` (logging
    one warning) before it gives up with StoreUnavailableError.
``open_timeout`` (default 10 s)
    How long ``open()`` keeps trying to reach the server before StoreUnavailableError (a host
    name that does not resolve or refused credentials fail at once).
``group_commit`` (default 1), ``group_commit_wait_us`` (default 200), ``group_commit_max`` (256)
    Group commit: appends, parks and finishes that arrive while another batch of this store is
    in flight queue up, and the next batch runs them all in ONE script call (the ``batch``
    script: one round trip, applied atomically, one AOF write and, with ``appendfsync always``,
    one fsync). Each write is fenced and answered exactly as its own script would answer it; a
    write whose script fails answers with that error without stopping the others; a lost reply
    is retried as a whole, every write recognising itself (identical entries, operation tokens).
    ``group_commit=0`` sends each write in its own call. A write finding nothing in flight goes
    at once in its own script (a run stepping sequentially never waits); the next batch's leader
    waits up to ``group_commit_wait_us`` microseconds for more writes only when the batch just
    answered held several. At most ``group_commit_max`` writes per batch.

Clock
-----
Leases are decided by the server's clock alone: ``claim`` and ``renew`` compute
``lease_expires`` from ``TIME`` inside their scripts and compare it with ``TIME``, so two workers
never compare their own clocks. Wake-up times given by the runtime (timers, retry backoffs) are the
client's ``time.time()``, compared with the server clock at claim time: skew between them makes a
timer fire that much early or late, never twice. ``created_at``/``updated_at``, the
``wake_at`` set by the store and the worker registry's heartbeat and expiry times are server time
too.

Atomicity
---------
Every write is one Lua script (EVALSHA), so each fenced write checks the run's epoch and writes in
one round trip, atomically: an append is the fence check plus the journal ``HSET``, nothing read
before it on the client. ``consume_signal`` is the one two-step operation: it reads the run's
waiting signals (fenced), builds the journal entry (its checksum is computed in Python), then a
script consumes that signal only if it is still there, and journals it, atomically. The scripts use
``TIME`` and therefore need effects replication (the default since Redis 5; older servers are
switched to it by the scripts). Redis >= 5 is required; the suite runs on 7.0.

Wake-ups
--------
Writes that create work (a new run, a signal, a cancel request, a resume, a park or a crash with a
wake-up time) ``PUBLISH`` ``<origin>|<wake time>`` on ``<prefix>wake`` from inside their script.
``watch()``, which every open Runtime runs, subscribes to it and calls the listeners at once for
work that is claimable now, and otherwise when the next entry of the ``timeline`` (the earliest
timer or lease expiry, read with the server's clock) falls due, so parked timers and dead
workers' leases are picked up on time rather than at the next poll.
A quiet subscription is PINGed every 30 s (and its socket has TCP keepalive), so a silently
dropped connection is found and re-established; anything published meanwhile is covered by a
notification on resubscribing and by the Runtime's own polling.
Listeners also hear about this store object's own writes directly, as with the other stores.

Key layout (``P`` is the prefix)
--------------------------------
============================  =====  ==========================================================
``P meta``                    hash   ``layout``: version of this layout (a newer one is refused)
``P meta:upgrade``            str    lock held while a store upgrades an older layout
``P run:<run_id>``            hash   the RunRecord's fields by name (a missing field is None,
                                     ``meta`` the text of ``encode_meta``, ``waits`` that of
                                     ``encode_waits``), and ``notes``: how
                                     many audit notes (seq < 0) the journal has
``P journal:<run_id>``        hash   seq -> ``<status>|<checksum>|<entry as a JSON object>``:
                                     the JournalEntry's fields by name, ``meta`` included
``P sigq:<run_id>``           list   unconsumed signals, oldest first: ``[signal_id, name, payload]``
``P sigids:<run_id>``         set    every signal_id ever delivered (idempotency)
``P due:<workflow>``          zset   pending/waiting runs with a wake-up time, by ``wake_at``
``P lease:<workflow>``        zset   running runs, by ``lease_expires`` (server clock)
``P timeline``                zset   the union of the two above, for watchers
``P ix:all``                  zset   every run by ``created_at`` (``list_runs``)
``P ix:wf:<workflow>``        zset   by workflow
``P ix:st:<status>``          zset   by status
``P ix:wfst:<status>:<wf>``   zset   by status and workflow
``P ix:tag:<key>=<value>``    zset   the runs started with that tag (``list_runs(tags=)``)
``P op:<token>``              str    outcome of a write whose reply may be lost (expires in 10 min)
``P workers``                 hash   worker id -> ``started|last_seen|expires|[host, pid, names]``
``P workers:expiry``          zset   worker ids by registration expiry (server clock)
``P wake``                    chan   pub/sub wake-ups
============================  =====  ==========================================================

A claim reads the ``due`` and ``lease`` sets of the worker's workflows only, so runs of workflows
nobody serves cost nothing; an expired lease is a crash (``crash_count``) and past
``max_crashes`` the run is quarantined instead of claimed.

Layout versions
---------------
``open()`` upgrades an older layout in place, once: the first store to take the lock
``P meta:upgrade`` rewrites what changed, the others wait until ``layout`` says it is done (a
dead upgrader's lock expires in 30 s; the rewrite is idempotent, so the next store finishes it).
Version 1 kept journal entries as JSON arrays, read by position; version 2 keeps JSON objects,
read by field name, with the entry's ``meta`` (the upgrade rewrites every entry; run hashes
already had named fields). A value still in the version 1 form (written by an older worker that
was running during the upgrade) is read as such. Version 3 keeps a parked run's waits as ``waits`` (the text of
``encode_waits``) instead of the prose ``waiting_on``; the upgrade drops ``waiting_on`` and makes
each waiting run due at once, so that its next activation re-parks it with structured waits.

Errors
------
redis-py's exceptions never escape: connection loss, timeouts, a loading or read-only (failing
over) server, BUSY and OOM replies become a ``TransientStoreError`` (the Runtime retries it with
backoff, logging one warning); rejected credentials or ACL permissions and a host name that does
not resolve become a ``PermanentStoreError``, raised at once and saying what to fix; a server
whose persistence does not match ``durability`` raises :class:`RedisDurabilityError` (a
``PermanentStoreError`` and a ``ConfigurationError``) at ``open()``.
"""

from __future__ import annotations

from ._store import DURABILITY_MODES, RedisDurabilityError, RedisStore

__all__ = ["RedisStore", "RedisDurabilityError", "DURABILITY_MODES"]
