"""The schema, its migrations, and every statement the store sends, as SQL text.

Each store operation is ONE statement sent in autocommit mode: one network round trip and one
implicit transaction, atomic without BEGIN/COMMIT. The rules that make a single statement safe
under READ COMMITTED:

* A fenced write either *is* an ``UPDATE runs ... WHERE run_id = ? AND epoch = ? AND status =
  'running'`` or starts with ``SELECT ... FOR NO KEY UPDATE`` of that row. Both lock the run row
  and check the condition on its newest committed version (PostgreSQL's EvalPlanQual), so a
  concurrent claim that bumped the epoch is always seen, and no claim can commit in between.
* Whatever a write decides from the run row (``cancel_requested``, ``crash_count``, the number of
  unconsumed signals ``unconsumed``) is read from that locked, newest row, never from the
  statement's snapshot. That is why ``runs.unconsumed`` exists: ``park`` and ``deliver_signal``
  both update the run row, so whichever commits second sees the other (no lost wake-up). Only a
  signal the run waits for wakes it (``awaited_signals``): ``deliver_signal`` checks the name
  against the locked row's ``waits``; ``park`` goes through ``write_batch()``, whose statements
  each take a fresh snapshot after it locked the row, so its look at the ``signals`` table sees
  every delivery committed before.
* The journal append is the server-side function ``append()`` (PL/pgSQL), called by one
  ``SELECT``: it locks the run row if the epoch matches, inserts the entries with ``ON CONFLICT
  DO NOTHING``, and only when some seq was already there (rare) checks those rows: identical
  final entries are accepted, pending ones replaced, a different final entry raises SQLSTATE
  ``CDCNF`` (the whole call rolls back). Each statement inside the function takes a fresh
  snapshot after the lock, so it sees every committed write. A single data-modifying CTE did the
  same in one statement but cost about 0.5 ms more server time per append (executor setup of a
  dozen CTE and subplan nodes); the function's three small cached plans do not.

Times are ``date_part('epoch', clock_timestamp())`` of the database server: one clock decides
lease expiry and due timers for every worker (faults.md: ownership is never decided by comparing
clocks across machines). ``{s}`` in the text is the quoted schema name.
"""

from __future__ import annotations

__all__ = [
    "MIGRATIONS",
    "SQLSTATE_CONFLICT",
    "SCHEMA_VERSION",
    "RUN_COLUMNS",
    "ENTRY_COLUMNS",
    "ENTRY_TYPES",
    "WORKER_COLUMNS",
    "Statements",
]

# ---- schema -------------------------------------------------------------------------------------
#
# Times are double precision seconds since the epoch. ``journal.due_at`` is text (the repr of the
# number): its repr is part of the entry checksum, and a float column would turn 5 into 5.0.
# ``runs.rowid`` breaks ties between runs created in the same microsecond (claim order).
# ``meta`` (migration 5) is the records' JSON object: ``jsonb`` for runs (queryable, indexable;
# it returns numbers in its own form, 1e16 as the equal integer 10000000000000000); ``json`` for
# journal entries, which keeps the text as written, since an entry's checksum covers its meta.
# Every statement names its result columns; the store reads rows by those names (dict rows).

#: SQLSTATE raised by ``append()`` when a seq already holds a different final entry.
SQLSTATE_CONFLICT = "CDCNF"

RUN_COLUMNS = (
    "run_id", "workflow", "input", "status", "epoch", "owner", "lease_expires", "wake_at",
    "waits", "cancel_requested", "result", "error", "crash_count", "last_error", "steps",
    "created_at", "updated_at", "meta",
)  # fmt: skip
#: The journal's columns (but run_id) and the SQL types the append functions take them as.
ENTRY_TYPES = {
    "seq": "int", "kind": "text", "name": "text", "digest": "text", "status": "text",
    "args": "text", "result": "text", "error": "text", "attempts": "int", "key": "text",
    "started_at": "float8", "finished_at": "float8", "due_at": "text", "checksum": "text",
    "meta": "json",
}  # fmt: skip
ENTRY_COLUMNS = tuple(ENTRY_TYPES)
WORKER_COLUMNS = (
    "worker_id", "host", "pid", "workflows", "started_at", "last_seen", "expires_at",
)  # fmt: skip


def _fill(template: str, **parts: str) -> str:
    for key, value in parts.items():
        template = template.replace(f"@{key}@", value)
    return template


# The fenced journal append. Returns NULL once written, 'lost <epoch> <status>' when the lease is
# not ours, 'missing' for an unknown run, 'taken' when signal p_signal was already consumed; raises
# CDCNF when a seq holds a different final entry. p_uniform[k]: every entry the caller's batch
# had for p_seq[k] was identical (required to accept an existing final entry). crash_count is
# reset only when the batch holds a final entry (an append of pending entries is no progress).
#
# The functions are created with CREATE OR REPLACE from their current text: a migration step
# that changes a body re-issues it (see MIGRATIONS), and a fresh schema ends the same.
_APPEND_FUNCTION = _fill(
    """CREATE OR REPLACE FUNCTION {s}.append(p_run_id text, p_epoch bigint, @PARAMS@,
    p_uniform boolean[], p_signal bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_run record;
    v_inserted integer[];
    v_bad record;
BEGIN
    -- Lock the run row by its key, then check the fencing token on that newest version.
    SELECT steps, epoch, status INTO v_run FROM {s}.runs WHERE run_id = p_run_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'missing';
    END IF;
    IF v_run.epoch <> p_epoch OR v_run.status <> 'running' THEN
        RETURN 'lost ' || v_run.epoch || ' ' || v_run.status;
    END IF;
    IF p_signal IS NOT NULL THEN
        UPDATE {s}.signals SET consumed = true WHERE id = p_signal AND NOT consumed;
        IF NOT FOUND THEN
            RETURN 'taken';
        END IF;
    END IF;
    WITH ins AS (
        INSERT INTO {s}.journal AS j (run_id, @NAMES@)
        SELECT p_run_id, i.* FROM unnest(@ARRAYS@) AS i
        ON CONFLICT (run_id, seq) DO NOTHING
        RETURNING j.seq
    )
    SELECT coalesce(array_agg(ins.seq), '{}') INTO v_inserted FROM ins;
    IF cardinality(v_inserted) < cardinality(p_seq) THEN
        -- Some seqs were there already: a retry of our own write, or pending entries.
        SELECT j.seq, j.kind, j.name INTO v_bad
        FROM unnest(p_seq, p_checksum, p_uniform) AS i(seq, checksum, uniform)
        JOIN {s}.journal j ON j.run_id = p_run_id AND j.seq = i.seq
        WHERE NOT i.seq = ANY(v_inserted) AND j.status <> 'pending'
          AND (j.checksum <> i.checksum OR NOT i.uniform)
        ORDER BY j.seq LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '@CONFLICT@', MESSAGE = format(
                'run %L: seq %s already holds a final %s(%s) entry',
                p_run_id, v_bad.seq, v_bad.kind, v_bad.name);
        END IF;
        UPDATE {s}.journal j SET @SET@
        FROM unnest(@ARRAYS@) AS i(@NAMES@)
        WHERE j.run_id = p_run_id AND j.seq = i.seq AND j.status = 'pending'
          AND NOT i.seq = ANY(v_inserted);
    END IF;
    UPDATE {s}.runs SET steps = v_run.steps + cardinality(v_inserted),
        crash_count = CASE WHEN 'pending' = ALL(p_status) THEN crash_count ELSE 0 END,
        updated_at = date_part('epoch', clock_timestamp()),
        unconsumed = unconsumed - (p_signal IS NOT NULL)::integer
    WHERE run_id = p_run_id;
    RETURN NULL;
END $$""",
    PARAMS=", ".join(f"p_{c} {t}[]" for c, t in ENTRY_TYPES.items()),
    ARRAYS=", ".join(f"p_{c}" for c in ENTRY_COLUMNS),
    NAMES=", ".join(ENTRY_COLUMNS),
    SET=", ".join(f"{c} = i.{c}" for c in ENTRY_COLUMNS if c != "seq"),
    CONFLICT=SQLSTATE_CONFLICT,
)

# The fenced append of ONE entry, the common case, with scalar parameters: the same rules and
# answers as append() (NULL, 'missing', 'lost <epoch> <status>', SQLSTATE CDCNF for a different
# final entry at the seq), about 0.1 ms less server time than building and unnesting 15 arrays.
_APPEND_ENTRY_FUNCTION = _fill(
    """CREATE OR REPLACE FUNCTION {s}.append_entry(p_run_id text, p_epoch bigint, @PARAMS@)
    RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_run record;
    v_old record;
BEGIN
    SELECT epoch, status INTO v_run FROM {s}.runs WHERE run_id = p_run_id
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'missing';
    END IF;
    IF v_run.epoch <> p_epoch OR v_run.status <> 'running' THEN
        RETURN 'lost ' || v_run.epoch || ' ' || v_run.status;
    END IF;
    INSERT INTO {s}.journal (run_id, @NAMES@) VALUES (p_run_id, @VALUES@)
    ON CONFLICT (run_id, seq) DO NOTHING;
    IF FOUND THEN
        UPDATE {s}.runs SET steps = steps + 1,
            crash_count = CASE WHEN p_status = 'pending' THEN crash_count ELSE 0 END,
            updated_at = date_part('epoch', clock_timestamp())
        WHERE run_id = p_run_id;
        RETURN NULL;
    END IF;
    -- The seq is there already: a retry of our own write, or a pending entry to replace.
    SELECT status, checksum, kind, name INTO v_old FROM {s}.journal
    WHERE run_id = p_run_id AND seq = p_seq;
    IF v_old.status <> 'pending' THEN
        IF v_old.checksum <> p_checksum THEN
            RAISE EXCEPTION USING ERRCODE = '@CONFLICT@', MESSAGE = format(
                'run %L: seq %s already holds a final %s(%s) entry',
                p_run_id, p_seq, v_old.kind, v_old.name);
        END IF;
    ELSE
        UPDATE {s}.journal SET @SET@ WHERE run_id = p_run_id AND seq = p_seq;
    END IF;
    UPDATE {s}.runs
    SET crash_count = CASE WHEN p_status = 'pending' THEN crash_count ELSE 0 END,
        updated_at = date_part('epoch', clock_timestamp())
    WHERE run_id = p_run_id;
    RETURN NULL;
END $$""",
    PARAMS=", ".join(f"p_{c} {t}" for c, t in ENTRY_TYPES.items()),
    NAMES=", ".join(ENTRY_COLUMNS),
    VALUES=", ".join(f"p_{c}" for c in ENTRY_COLUMNS),
    SET=", ".join(f"{c} = p_{c}" for c in ENTRY_COLUMNS if c != "seq"),
    CONFLICT=SQLSTATE_CONFLICT,
)

# Group commit: many fenced writes of concurrent runs (appends of one entry, parks, finishes) in
# ONE statement and transaction. ``p_items`` is a JSON array (type json, not jsonb: it is parsed
# faster) of ``p_count`` objects with ``i`` (1, 2, ...: the item's place in the answer), ``op``
# ('append', 'park' or 'finish'), ``run_id``, ``epoch`` and the op's fields (an append's entry
# columns; a park's ``wake_at``/``waits``; a finish's ``status``/``result``/``error``). The
# answer has one element per item: NULL once written, else 'missing', 'lost <epoch> <status>' or
# 'conflict <message>'. Each item is fenced and decided on its own, as by the single-write
# statements, and nothing is written for an item refused (every check comes before the item's
# writes, so no savepoint is needed). The common case is set-based: the batch's run rows are
# locked in run_id byte order (the order renew and every other batch use, so they cannot
# deadlock), then all fenced appends of new seqs are one INSERT and one UPDATE of the step counts;
# what remains (refused appends, appends that found their seq taken, parks, finishes) is decided
# item by item. The caller sends at most one append per (run_id, seq). As alone, an append resets
# its run's crash_count only when its entry is final.
_ITEM_COLUMNS = ", ".join(
    [
        "i int",
        "op text",
        "run_id text",
        "epoch bigint",
        *(f"{c} {t}" for c, t in ENTRY_TYPES.items()),
        "wake_at float8",
        "waits jsonb",
    ]
)
_WRITE_BATCH_FUNCTION = _fill(
    """CREATE OR REPLACE FUNCTION {s}.write_batch(p_items json, p_count integer, p_channel text,
    p_origin text)
    RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_run record;
    v_old record;
    v_now double precision := date_part('epoch', clock_timestamp());
    v_wake double precision;
    v_res text;
    v_fenced integer;
    v_inserted integer;
    v_out text[] := array_fill(NULL::text, ARRAY[p_count]);
BEGIN
    PERFORM 1 FROM {s}.runs
    WHERE run_id IN (SELECT x.run_id FROM json_to_recordset(p_items) AS x(run_id text))
    ORDER BY run_id COLLATE "C"
    FOR NO KEY UPDATE;

    -- Every fenced append of a new seq: one INSERT, one UPDATE of the step counts.
    WITH fenced AS MATERIALIZED (
        SELECT x.* FROM json_to_recordset(p_items) AS x(@ITEMS@)
        JOIN {s}.runs r ON r.run_id = x.run_id AND r.epoch = x.epoch AND r.status = 'running'
        WHERE x.op = 'append'
    ), ins AS (
        INSERT INTO {s}.journal (run_id, @NAMES@)
        SELECT run_id, @NAMES@ FROM fenced
        ON CONFLICT (run_id, seq) DO NOTHING
        RETURNING run_id, status
    ), counted AS (
        UPDATE {s}.runs r SET steps = r.steps + c.n,
            crash_count = CASE WHEN c.final THEN 0 ELSE r.crash_count END, updated_at = v_now
        FROM (SELECT run_id, count(*) AS n, bool_or(status <> 'pending') AS final
              FROM ins GROUP BY run_id) c
        WHERE r.run_id = c.run_id
    )
    SELECT (SELECT count(*) FROM fenced), (SELECT count(*) FROM ins)
    INTO v_fenced, v_inserted;

    IF v_fenced = v_inserted AND v_fenced = p_count THEN
        RETURN v_out;  -- the common case: every item a fenced append of a new seq, all written
    END IF;

    -- The rest, item by item: refused appends, appends that found their seq taken (when some
    -- did), parks and finishes.
    FOR v IN SELECT * FROM json_to_recordset(p_items) AS x(@ITEMS@) ORDER BY x.i LOOP
        v_res := NULL;
        IF v.op = 'append' THEN
            SELECT epoch, status INTO v_run FROM {s}.runs WHERE run_id = v.run_id;
            IF NOT FOUND THEN
                v_res := 'missing';
            ELSIF v_run.epoch <> v.epoch OR v_run.status <> 'running' THEN
                v_res := 'lost ' || v_run.epoch || ' ' || v_run.status;
            ELSIF v_fenced <> v_inserted THEN
                -- Inserted above (the row is ours) or there before: a final entry must be ours
                -- (a retry whose acknowledgement was lost), a pending one is replaced.
                SELECT status, checksum, kind, name INTO v_old FROM {s}.journal
                WHERE run_id = v.run_id AND seq = v.seq;
                IF v_old.checksum = v.checksum THEN
                    UPDATE {s}.runs SET updated_at = v_now,
                        crash_count = CASE WHEN v.status = 'pending' THEN crash_count ELSE 0 END
                    WHERE run_id = v.run_id;
                ELSIF v_old.status <> 'pending' THEN
                    v_res := format(
                        'conflict run %L: seq %s already holds a final %s(%s) entry',
                        v.run_id, v.seq, v_old.kind, v_old.name);
                ELSE
                    UPDATE {s}.journal SET @SET@ WHERE run_id = v.run_id AND seq = v.seq;
                    UPDATE {s}.runs SET updated_at = v_now,
                        crash_count = CASE WHEN v.status = 'pending' THEN crash_count ELSE 0 END
                    WHERE run_id = v.run_id;
                END IF;
            END IF;
        ELSIF v.op = 'park' THEN
            -- Awake at once for a cancel, or a signal already here that the waits name (this
            -- statement's snapshot is taken after the row locks above: it sees every delivery
            -- committed before them; a later one sees this park and wakes the run itself).
            UPDATE {s}.runs r SET status = 'waiting',
                wake_at = CASE WHEN r.cancel_requested OR (r.unconsumed > 0 AND EXISTS (
                        SELECT 1 FROM {s}.signals s
                        WHERE s.run_id = r.run_id AND NOT s.consumed AND s.name IN (
                            SELECT w->>'name' FROM jsonb_array_elements(
                                coalesce(v.waits, '[]'::jsonb)) w
                            WHERE w->>'kind' = 'signal')))
                    THEN v_now ELSE v.wake_at END,
                waits = v.waits, owner = NULL, lease_expires = NULL, updated_at = v_now
            WHERE r.run_id = v.run_id AND r.epoch = v.epoch AND r.status = 'running'
            RETURNING r.wake_at INTO v_wake;
            IF FOUND THEN
                IF v_wake IS NOT NULL THEN
                    PERFORM pg_notify(p_channel,
                        p_origin || ' ' || greatest(v_wake - v_now, 0)::text);
                END IF;
            ELSE
                SELECT 'lost ' || epoch || ' ' || status INTO v_res FROM {s}.runs
                WHERE run_id = v.run_id;
                v_res := coalesce(v_res, 'missing');
            END IF;
        ELSIF v.op = 'finish' THEN
            UPDATE {s}.runs SET status = v.status, result = v.result, error = v.error,
                owner = NULL, lease_expires = NULL, wake_at = NULL, waits = NULL,
                updated_at = v_now
            WHERE run_id = v.run_id AND epoch = v.epoch AND status = 'running';
            IF FOUND THEN
                PERFORM pg_notify(p_channel, p_origin || ' ');
            ELSE
                SELECT 'lost ' || epoch || ' ' || status INTO v_res FROM {s}.runs
                WHERE run_id = v.run_id;
                v_res := coalesce(v_res, 'missing');
            END IF;
        ELSE
            RAISE EXCEPTION 'write_batch: unknown op %', v.op;
        END IF;
        v_out[v.i] := v_res;
    END LOOP;
    RETURN v_out;
END $$""",
    ITEMS=_ITEM_COLUMNS,
    NAMES=", ".join(ENTRY_COLUMNS),
    SET=", ".join(f"{c} = v.{c}" for c in ENTRY_COLUMNS if c != "seq"),
)

# The entry arguments of the append functions before migration 5 (every column but meta).
_V4_SCALARS = ", ".join(t for c, t in ENTRY_TYPES.items() if c != "meta")
_V4_ARRAYS = ", ".join(f"{t}[]" for c, t in ENTRY_TYPES.items() if c != "meta")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: initial schema
    (
        """CREATE TABLE {s}.runs (
            run_id text PRIMARY KEY,
            rowid bigint GENERATED ALWAYS AS IDENTITY,
            workflow text NOT NULL,
            input text NOT NULL,
            status text NOT NULL,
            epoch bigint NOT NULL,
            owner text,
            lease_expires double precision,
            wake_at double precision,
            waiting_on text,
            cancel_requested boolean NOT NULL,
            result text,
            error text,
            crash_count integer NOT NULL,
            last_error text,
            steps integer NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            unconsumed integer NOT NULL DEFAULT 0
        ) WITH (fillfactor = 80)""",
        "CREATE INDEX runs_due ON {s}.runs (wake_at, created_at, rowid) "
        "WHERE status IN ('pending', 'waiting')",
        "CREATE INDEX runs_leased ON {s}.runs (lease_expires) WHERE status = 'running'",
        "CREATE INDEX runs_created ON {s}.runs (created_at, run_id)",
        "CREATE INDEX runs_status_created ON {s}.runs (status, created_at, run_id)",
        "CREATE INDEX runs_workflow_created ON {s}.runs (workflow, created_at, run_id)",
        """CREATE TABLE {s}.journal (
            run_id text NOT NULL,
            seq integer NOT NULL,
            kind text NOT NULL,
            name text NOT NULL,
            digest text NOT NULL,
            status text NOT NULL,
            args text,
            result text,
            error text,
            attempts integer NOT NULL,
            key text NOT NULL,
            started_at double precision NOT NULL,
            finished_at double precision,
            due_at text,
            checksum text NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE {s}.signals (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id text NOT NULL,
            signal_id text NOT NULL,
            name text NOT NULL,
            payload text NOT NULL,
            consumed boolean NOT NULL DEFAULT false,
            UNIQUE (run_id, signal_id)
        )""",
        "CREATE INDEX signals_unconsumed ON {s}.signals (run_id, name, id) WHERE NOT consumed",
        _APPEND_FUNCTION,
    ),
    # 2: group commit, and a leaner one-entry append
    (_WRITE_BATCH_FUNCTION, _APPEND_ENTRY_FUNCTION),
    # 3: only an append holding a final entry resets crash_count (the three append functions)
    (_APPEND_FUNCTION, _APPEND_ENTRY_FUNCTION, _WRITE_BATCH_FUNCTION),
    # 4: the worker registry
    (
        """CREATE TABLE {s}.workers (
            worker_id text PRIMARY KEY,
            host text NOT NULL,
            pid bigint NOT NULL,
            workflows text[] NOT NULL,
            started_at double precision NOT NULL,
            last_seen double precision NOT NULL,
            expires_at double precision NOT NULL
        )""",
    ),
    # 5: the records' meta ('{}' for the rows already there); the append functions take it, so
    # the old ones (one argument fewer) are dropped, not left beside them as overloads
    (
        "ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS meta jsonb NOT NULL DEFAULT '{}'",
        "ALTER TABLE {s}.journal ADD COLUMN IF NOT EXISTS meta json NOT NULL DEFAULT '{}'",
        f"DROP FUNCTION IF EXISTS {{s}}.append(text, bigint, {_V4_ARRAYS}, boolean[], bigint)",
        f"DROP FUNCTION IF EXISTS {{s}}.append_entry(text, bigint, {_V4_SCALARS})",
        _APPEND_FUNCTION,
        _APPEND_ENTRY_FUNCTION,
        _WRITE_BATCH_FUNCTION,
    ),
    # 6: structured waits (jsonb, encode_waits' array) instead of the prose waiting_on. A run
    # parked before holds prose: it is made runnable now and re-parks with structured waits at
    # its next activation (a wake-up before due only replays). write_batch parks with them.
    # Idempotent, like 5: applying it to a schema that has it already changes nothing.
    (
        "ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS waits jsonb",
        """DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '{s}.runs'::regclass
               AND attname = 'waiting_on' AND NOT attisdropped) THEN
        UPDATE {s}.runs SET wake_at = 0 WHERE status = 'waiting' AND waiting_on IS NOT NULL;
        ALTER TABLE {s}.runs DROP COLUMN waiting_on;
    END IF;
END $$""",
        _WRITE_BATCH_FUNCTION,
    ),
    # 7: list_runs(tags=...) is a jsonb containment on meta -> 'tags', served by this index
    (
        "CREATE INDEX IF NOT EXISTS runs_tags ON {s}.runs "
        "USING gin ((meta -> 'tags') jsonb_path_ops)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


_CLOCK = "clock AS (SELECT date_part('epoch', clock_timestamp()) AS t)"


def _cols(prefix: str = "") -> str:
    return ", ".join(prefix + c for c in RUN_COLUMNS)


def _current(run: str = "%(run_id)s") -> str:
    """The run's ``'<epoch> <status>'`` (snapshot read, for LeaseLost messages only)."""
    return "(SELECT epoch || ' ' || status FROM {s}.runs WHERE run_id = " + run + ")"


def _notify(delay: str = "''") -> str:
    """A pg_notify call whose payload is ``'<origin> <delay>'``; delay is seconds from now on
    the database clock until the work is due, or empty for now."""
    return "pg_notify(%(channel)s, %(origin)s || ' ' || " + delay + ")"


class Statements:
    """Every statement, with the schema filled in."""

    def __init__(self, quoted_schema: str) -> None:
        def q(sql: str) -> str:
            return sql.replace("{s}", quoted_schema)

        self.migrations = tuple(tuple(q(stmt) for stmt in step) for step in MIGRATIONS)
        self.create_version_table = q(
            "CREATE TABLE IF NOT EXISTS {s}.schema_version ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        self.version = q("SELECT coalesce(max(version), 0) AS version FROM {s}.schema_version")
        self.insert_version = q("INSERT INTO {s}.schema_version (version) VALUES (%s)")

        cols = _cols()
        self.create_run = q(
            f"""WITH {_CLOCK},
ins AS (
    INSERT INTO {{s}}.runs ({cols})
    SELECT %(run_id)s, %(workflow)s, %(input)s, 'pending', %(epoch)s, %(owner)s,
        %(lease_expires)s::float8, c.t, %(waits)s::jsonb, %(cancel_requested)s, %(result)s,
        %(error)s, %(crash_count)s, %(last_error)s, %(steps)s, c.t, c.t, %(meta)s::jsonb
    FROM clock c
    ON CONFLICT (run_id) DO NOTHING
    RETURNING {cols}
)
SELECT true AS created, {cols}, {_notify()}::text AS notified FROM ins
UNION ALL
SELECT false, {cols}, NULL FROM {{s}}.runs
WHERE run_id = %(run_id)s AND NOT EXISTS (SELECT 1 FROM ins)"""
        )
        self.get_run = q(f"SELECT {cols} FROM {{s}}.runs WHERE run_id = %s")
        self.list_runs = q(f"SELECT {cols} FROM {{s}}.runs")
        self.load_journal = q(
            f"SELECT {', '.join(ENTRY_COLUMNS)} FROM {{s}}.journal WHERE run_id = %s ORDER BY seq"
        )
        # The append functions answer NULL once written, else why not (see their text).
        casts = ", ".join(f"%({c})s::{t}[]" for c, t in ENTRY_TYPES.items())
        self.append = q(
            f"SELECT {{s}}.append(%(run_id)s, %(epoch)s, {casts}, %(uniform)s::boolean[], "
            "%(signal)s::bigint) AS outcome"
        )
        # The common case, one entry: scalar parameters (cheaper to send than 15 arrays).
        singles = ", ".join(f"ARRAY[%({c})s::{t}]" for c, t in ENTRY_TYPES.items())
        self.append_one = q(
            f"SELECT {{s}}.append(%(run_id)s, %(epoch)s, {singles}, ARRAY[true], "
            "%(signal)s::bigint) AS outcome"
        )
        self.write_batch = q("SELECT {s}.write_batch(%s::json, %s, %s, %s) AS outcomes")
        scalars = ", ".join(f"%({c})s::{t}" for c, t in ENTRY_TYPES.items())
        self.append_entry = q(
            f"SELECT {{s}}.append_entry(%(run_id)s, %(epoch)s, {scalars}) AS outcome"
        )
        self.oldest_signal = q(
            """SELECT r.epoch, r.status, s.id AS signal, s.payload FROM {s}.runs r
LEFT JOIN LATERAL (
    SELECT id, payload FROM {s}.signals
    WHERE run_id = r.run_id AND name = %(name)s AND NOT consumed ORDER BY id LIMIT 1
) s ON true
WHERE r.run_id = %(run_id)s"""
        )
        quarantine = "(p.was = 'running' AND p.crashes >= %(max_crashes)s)"
        self.claim = q(
            f"""WITH {_CLOCK},
picked AS (
    SELECT r.run_id, r.status AS was, r.crash_count + 1 AS crashes, r.owner AS old_owner,
        coalesce(r.wake_at, 0) AS k1, r.created_at AS k2, r.rowid AS k3
    FROM {{s}}.runs r
    WHERE r.workflow = ANY(%(workflows)s::text[]) AND NOT r.run_id = ANY(%(seen)s::text[])
      AND ((r.status IN ('pending', 'waiting') AND r.wake_at <= (SELECT t FROM clock))
        OR (r.status = 'running' AND r.lease_expires <= (SELECT t FROM clock)))
    ORDER BY coalesce(r.wake_at, 0), r.created_at, r.rowid
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
),
upd AS (
    UPDATE {{s}}.runs r SET
        status = CASE WHEN {quarantine} THEN 'quarantined' ELSE 'running' END,
        epoch = CASE WHEN {quarantine} THEN r.epoch ELSE r.epoch + 1 END,
        owner = CASE WHEN {quarantine} THEN NULL ELSE %(worker)s END,
        lease_expires = CASE WHEN {quarantine} THEN NULL ELSE c.t + %(ttl)s END,
        wake_at = NULL,
        crash_count = CASE WHEN p.was = 'running' THEN p.crashes ELSE r.crash_count END,
        last_error = CASE WHEN p.was = 'running'
            THEN 'worker ' || coalesce(p.old_owner, 'None')
                 || ' lost its lease (crashed or stalled) while running'
            ELSE r.last_error END,
        updated_at = c.t
    FROM picked p, clock c
    WHERE r.run_id = p.run_id
    RETURNING {_cols("r.")}, p.k1, p.k2, p.k3
)
SELECT {cols} FROM upd ORDER BY k1, k2, k3"""
        )
        # The held rows are locked in run_id byte order first, the order group commit batches
        # lock them in, so a renewal and a batch over the same runs cannot deadlock.
        self.renew = q(
            f"""WITH {_CLOCK},
held AS (
    SELECT r.run_id FROM {{s}}.runs r
    JOIN unnest(%(run_ids)s::text[], %(epochs)s::bigint[]) AS l(run_id, epoch)
      ON r.run_id = l.run_id AND r.epoch = l.epoch
    WHERE r.status = 'running' AND r.owner = %(worker)s
    ORDER BY r.run_id COLLATE "C"
    FOR NO KEY UPDATE OF r
)
UPDATE {{s}}.runs r SET lease_expires = c.t + %(ttl)s
FROM held h, clock c
WHERE r.run_id = h.run_id
RETURNING r.run_id, r.cancel_requested"""
        )
        self.park = q(
            f"""WITH {_CLOCK},
upd AS (
    UPDATE {{s}}.runs r SET status = 'waiting',
        wake_at = CASE WHEN r.cancel_requested OR (r.unconsumed > 0 AND EXISTS (
                SELECT 1 FROM {{s}}.signals s
                WHERE s.run_id = r.run_id AND NOT s.consumed AND s.name IN (
                    SELECT w->>'name' FROM jsonb_array_elements(
                        coalesce(%(waits)s::jsonb, '[]'::jsonb)) w
                    WHERE w->>'kind' = 'signal')))
            THEN c.t ELSE %(wake_at)s::float8 END,
        waits = %(waits)s::jsonb, owner = NULL, lease_expires = NULL, updated_at = c.t
    FROM clock c
    WHERE r.run_id = %(run_id)s AND r.epoch = %(epoch)s AND r.status = 'running'
    RETURNING r.wake_at, c.t AS now
)
SELECT (SELECT count(*) FROM upd)::int AS updated,
    CASE WHEN NOT EXISTS (SELECT 1 FROM upd) THEN {_current()} END AS current,
    (SELECT {_notify("greatest(wake_at - now, 0)::text")} FROM upd
     WHERE wake_at IS NOT NULL)::text AS notified"""
        )
        self.finish = q(
            f"""WITH {_CLOCK},
upd AS (
    UPDATE {{s}}.runs r SET status = %(status)s, result = %(result)s, error = %(error)s,
        owner = NULL, lease_expires = NULL, wake_at = NULL, waits = NULL, updated_at = c.t
    FROM clock c
    WHERE r.run_id = %(run_id)s AND r.epoch = %(epoch)s AND r.status = 'running'
    RETURNING 1
)
SELECT (SELECT count(*) FROM upd)::int AS updated,
    CASE WHEN NOT EXISTS (SELECT 1 FROM upd) THEN {_current()} END AS current,
    (SELECT {_notify()} FROM upd)::text AS notified"""
        )
        final = "(%(quarantine)s OR r.crash_count + 1 >= %(max_crashes)s)"
        self.record_crash = q(
            f"""WITH {_CLOCK},
upd AS (
    UPDATE {{s}}.runs r SET crash_count = r.crash_count + 1, last_error = %(error)s,
        owner = NULL, lease_expires = NULL,
        status = CASE WHEN {final} THEN 'quarantined' ELSE 'waiting' END,
        wake_at = CASE WHEN {final} THEN NULL ELSE %(retry_at)s::float8 END,
        updated_at = c.t
    FROM clock c
    WHERE r.run_id = %(run_id)s
      AND (%(quarantine)s OR (r.epoch = %(epoch)s AND r.status = 'running'))
    RETURNING {_cols("r.")}, c.t AS now
)
SELECT {cols}, NULL AS current,
    {_notify("CASE WHEN wake_at IS NULL THEN '' ELSE greatest(wake_at - now, 0)::text END")}::text
    AS notified
FROM upd
UNION ALL
SELECT {", ".join("NULL" for _ in RUN_COLUMNS)}, {_current()}, NULL
WHERE NOT EXISTS (SELECT 1 FROM upd)"""
        )
        self.resume = q(
            f"""WITH {_CLOCK},
upd AS (
    UPDATE {{s}}.runs r SET status = 'pending', crash_count = 0, wake_at = c.t, updated_at = c.t
    FROM clock c
    WHERE r.run_id = %(run_id)s AND r.status = 'quarantined'
    RETURNING {_cols("r.")}
)
SELECT {cols}, {_notify()}::text AS notified FROM upd
UNION ALL
SELECT {cols}, NULL FROM {{s}}.runs
WHERE run_id = %(run_id)s AND NOT EXISTS (SELECT 1 FROM upd)"""
        )
        # Retry: one statement. The run row is locked (its newest version decides the status);
        # nothing else writes the journal of a failed or cancelled run, so the statement's
        # snapshot of it is current. Answers one row: whether it retried, the run, and the
        # checksum of an entry already at the note's seq (an earlier call of ours, or a
        # concurrent retry), which makes it do nothing.
        note_values = ", ".join(f"%(note_{c})s::{t}" for c, t in ENTRY_TYPES.items())
        self.retry_run = q(
            f"""WITH {_CLOCK},
run AS MATERIALIZED (
    SELECT {cols} FROM {{s}}.runs WHERE run_id = %(run_id)s FOR NO KEY UPDATE
),
taken AS (
    SELECT checksum FROM {{s}}.journal WHERE run_id = %(run_id)s AND seq = %(note_seq)s::int
),
go AS MATERIALIZED (
    SELECT 1 FROM run WHERE status IN ('failed', 'cancelled')
    AND NOT EXISTS (SELECT 1 FROM taken)
),
del AS (
    DELETE FROM {{s}}.journal j
    WHERE j.run_id = %(run_id)s AND EXISTS (SELECT 1 FROM go) AND j.seq >= 0
      AND (j.seq = ANY(%(reopen)s::int[]) OR j.seq > %(after)s::int)
    RETURNING j.seq
),
ins AS (
    INSERT INTO {{s}}.journal (run_id, {", ".join(ENTRY_COLUMNS)})
    SELECT %(run_id)s, {note_values} FROM go
    RETURNING 1
),
upd AS (
    UPDATE {{s}}.runs r SET status = 'pending', wake_at = c.t, waits = NULL,
        owner = NULL, lease_expires = NULL, error = NULL, result = NULL,
        cancel_requested = false, crash_count = 0, updated_at = c.t,
        steps = (SELECT count(*) FROM {{s}}.journal WHERE run_id = %(run_id)s AND seq >= 0)
            - (SELECT count(*) FROM del)
    FROM clock c
    WHERE r.run_id = %(run_id)s AND EXISTS (SELECT 1 FROM go)
      AND (SELECT count(*) FROM ins) = 1
    RETURNING {_cols("r.")}
)
SELECT true AS retried, {cols}, NULL AS taken, {_notify()}::text AS notified FROM upd
UNION ALL
SELECT false, {cols}, (SELECT checksum FROM taken), NULL FROM run
WHERE NOT EXISTS (SELECT 1 FROM upd)"""
        )
        self.deliver_signal = q(
            f"""WITH {_CLOCK},
run AS (SELECT run_id FROM {{s}}.runs WHERE run_id = %(run_id)s),
ins AS (
    INSERT INTO {{s}}.signals (run_id, signal_id, name, payload)
    SELECT run_id, %(signal_id)s, %(name)s, %(payload)s FROM run
    ON CONFLICT (run_id, signal_id) DO NOTHING
    RETURNING id
),
upd AS (
    UPDATE {{s}}.runs r SET unconsumed = r.unconsumed + 1,
        wake_at = CASE WHEN r.status = 'waiting' AND r.waits @> jsonb_build_array(
                jsonb_build_object('kind', 'signal', 'name', %(name)s::text))
            THEN c.t ELSE r.wake_at END
    FROM clock c
    WHERE r.run_id = %(run_id)s AND EXISTS (SELECT 1 FROM ins)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM run) AS found, EXISTS (SELECT 1 FROM upd) AS delivered,
    (SELECT {_notify()} FROM upd)::text AS notified"""
        )
        now_cancel = "(r.status = 'quarantined' OR (r.status = 'pending' AND r.steps = 0))"
        done = "r.status IN ('completed', 'failed', 'cancelled')"
        self.request_cancel = q(
            f"""WITH {_CLOCK},
upd AS (
    UPDATE {{s}}.runs r SET
        status = CASE WHEN {now_cancel} THEN 'cancelled' ELSE r.status END,
        cancel_requested = CASE WHEN {done} THEN r.cancel_requested ELSE true END,
        error = CASE WHEN {now_cancel} THEN %(cancelled_error)s ELSE r.error END,
        wake_at = CASE WHEN {now_cancel} THEN NULL
                       WHEN r.status IN ('waiting', 'pending') THEN c.t
                       ELSE r.wake_at END,
        updated_at = CASE WHEN {now_cancel} THEN c.t ELSE r.updated_at END
    FROM clock c
    WHERE r.run_id = %(run_id)s
    RETURNING {_cols("r.")}
)
SELECT {cols}, {_notify()}::text AS notified FROM upd"""
        )
        # The worker registry. A heartbeat deletes the other workers' expired registrations
        # (skipping rows another heartbeat holds, so two of them never wait on each other) and
        # upserts its own; a registration that had expired starts again (started_at now).
        workers = ", ".join(WORKER_COLUMNS)
        self.heartbeat_worker = q(
            f"""WITH {_CLOCK},
pruned AS (
    DELETE FROM {{s}}.workers WHERE worker_id IN (
        SELECT worker_id FROM {{s}}.workers
        WHERE expires_at <= (SELECT t FROM clock) AND worker_id <> %(worker_id)s
        FOR UPDATE SKIP LOCKED
    )
    RETURNING 1
)
INSERT INTO {{s}}.workers AS w ({workers})
SELECT %(worker_id)s, %(host)s, %(pid)s, %(workflows)s::text[], c.t, c.t, c.t + %(ttl)s
FROM clock c
ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
    workflows = excluded.workflows,
    started_at = CASE WHEN w.expires_at > excluded.last_seen THEN w.started_at
                      ELSE excluded.started_at END,
    last_seen = excluded.last_seen, expires_at = excluded.expires_at
RETURNING {workers}"""
        )
        self.list_workers = q(
            f"""SELECT {workers} FROM {{s}}.workers
WHERE expires_at > date_part('epoch', clock_timestamp())
ORDER BY started_at, worker_id"""
        )
        self.remove_worker = q("DELETE FROM {s}.workers WHERE worker_id = %s RETURNING worker_id")
        # Seconds from now (database clock) until the next run falls due: a parked run's timer
        # or a running run's lease expiry. Past-due runs are left to the workers' polling.
        self.next_due = q(
            f"""WITH {_CLOCK}
SELECT least(
    (SELECT min(wake_at) FROM {{s}}.runs
     WHERE status IN ('pending', 'waiting') AND wake_at > (SELECT t FROM clock)),
    (SELECT min(lease_expires) FROM {{s}}.runs
     WHERE status = 'running' AND lease_expires > (SELECT t FROM clock))
) - (SELECT t FROM clock) AS seconds"""
        )
