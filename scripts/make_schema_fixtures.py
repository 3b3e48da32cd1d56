"""Write the old-schema fixtures of tests/test_schema_upgrade.py with an OLDER coro_durable.

The upgrade test proves that a database written by an earlier commit opens with today's code and
its runs carry on. This script makes that database: run it with the old commit's code first on
the import path, and it runs the workflows of tests/schema_upgrade_app.py on SQLite, PostgreSQL
and Redis until each fixture run is where the test expects it (completed, parked on a signal, on
a timer, in a gather with a pending retry), then writes beside a manifest:

* ``runs.db``: the SQLite file;
* ``postgres.sql``: a plain SQL dump (``pg_dump --inserts``, psql meta-commands removed) of the
  store's schema, which the test loads into a fresh schema (it renames the schema in the text);
* ``redis.json``: every key under the store's prefix as ``{"key", "type", "value"}`` (the key
  without the prefix), which the test restores under a fresh prefix;
* ``manifest.json``: the commit, the schema versions each store wrote, the fixture runs, and the
  completed run's describe and history as the old code answered them.

Usage (from the repository root, with PostgreSQL and Redis running)::

    git worktree add --detach /tmp/old <commit>        # or: git archive <commit> | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src:/tmp/old/backends/postgres/src:/tmp/old/backends/redis/src \\
        python scripts/make_schema_fixtures.py --commit <commit>
    git worktree remove /tmp/old

It writes ``tests/fixtures/schema_<short commit>/`` (``--out`` to choose). The workflows come
from THIS checkout's tests/ (they must run on the old code too), the store code from the path.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import coro_durable as cd  # noqa: E402  (the old code, from PYTHONPATH)
import schema_upgrade_app as app  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


async def write_runs(url: str) -> dict[str, Any]:
    """Run the fixture runs on ``url`` until each is in its fixture state; return the completed
    run's describe and history."""
    async with cd.Runtime(url, lease_ttl=5.0, workflows=app.WORKFLOWS) as rt:
        for run_id, (workflow, arg, _) in app.RUNS.items():
            await rt.start(workflow, arg, run_id=run_id)
        give_up = time.monotonic() + 60
        while True:
            infos = {run_id: await rt.describe(run_id) for run_id in app.RUNS}
            entries = await rt.history("gather")
            retrying = any(e.status == "pending" and e.attempts == 1 for e in entries)
            if retrying and all(
                infos[run_id].status.value == state for run_id, (_, _, state) in app.RUNS.items()
            ):
                break
            if time.monotonic() > give_up:
                raise RuntimeError(f"the fixture runs did not settle: {infos}")
            await anyio.sleep(0.05)
        # Stop before the timer and the backoff fall due (app.TIMER_SECONDS away).
        return {
            "describe": app.jsonable(await rt.describe("done")),
            "history": app.jsonable(await rt.history("done")),
        }


def with_query(url: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def libpq_url(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(query=""))


def sqlite_fixture(out: Path) -> dict[str, Any]:
    import sqlite3

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.db"
        expected = anyio.run(write_runs, f"sqlite:///{path}")
        if path.with_name("runs.db-wal").exists():
            raise RuntimeError("the SQLite store left a WAL file behind; it must be closed")
        shutil.copyfile(path, out / "runs.db")
    conn = sqlite3.connect(out / "runs.db")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    return {"file": "runs.db", "schema_version": version, "expected": expected}


def postgres_fixture(out: Path, pg_url: str, short: str) -> dict[str, Any]:
    import psycopg

    schema = f"cdfix_{short}"
    with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    try:
        expected = anyio.run(write_runs, with_query(pg_url, schema=schema))
        dump = subprocess.run(
            ["pg_dump", "--dbname", libpq_url(pg_url), "--schema", schema, "--inserts",
             "--no-owner", "--no-privileges", "--no-comments"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
            version = conn.execute(f'SELECT max(version) FROM "{schema}".schema_version')
            row = version.fetchone()
    finally:
        with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    # psql meta-commands (\restrict, \connect, ...) are not SQL: the test runs the text itself.
    lines = [line for line in dump.splitlines() if not line.startswith("\\")]
    (out / "postgres.sql").write_text("\n".join(lines) + "\n")
    return {
        "file": "postgres.sql",
        "schema": schema,
        "schema_version": row[0] if row else None,
        "expected": expected,
    }


def redis_fixture(out: Path, redis_url: str, short: str) -> dict[str, Any]:
    import redis

    prefix = f"cdfix_{short}:"
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    def wipe() -> None:
        for key in list(client.scan_iter(match=f"{prefix}*", count=1000)):
            client.delete(key)

    wipe()
    try:
        expected = anyio.run(
            write_runs, with_query(redis_url, prefix=prefix, durability="volatile")
        )
        dump: list[dict[str, Any]] = []
        for key in sorted(client.scan_iter(match=f"{prefix}*", count=1000)):
            name = key[len(prefix) :]
            if name.startswith("op:"):
                continue  # operation tokens of lost replies: they expire anyway
            kind = client.type(key)
            value: Any
            if kind == "hash":
                value = dict(sorted(client.hgetall(key).items()))
            elif kind == "zset":
                value = [list(pair) for pair in client.zrange(key, 0, -1, withscores=True)]
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = sorted(client.smembers(key))
            elif kind == "string":
                value = client.get(key)
            else:
                raise RuntimeError(f"unexpected Redis key type {kind!r} of {key!r}")
            dump.append({"key": name, "type": kind, "value": value})
        layout = client.hget(f"{prefix}meta", "layout")
    finally:
        wipe()
        client.close()
    (out / "redis.json").write_text(json.dumps(dump, indent=1, ensure_ascii=False) + "\n")
    return {"file": "redis.json", "layout": int(layout) if layout else None, "expected": expected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", required=True, help="the commit whose code is on the path")
    parser.add_argument("--out", type=Path, help="default: tests/fixtures/schema_<short>")
    parser.add_argument("--pg", default=PG_URL, help=f"PostgreSQL URL (default {PG_URL})")
    parser.add_argument("--redis", default=REDIS_URL, help=f"Redis URL (default {REDIS_URL})")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", args.commit],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    short = commit[:7]
    if Path(cd.__file__).resolve().is_relative_to(ROOT):
        raise SystemExit(
            f"coro_durable comes from this checkout ({cd.__file__}), not from commit {short}: put "
            "the old commit's src/ and backends/*/src first on PYTHONPATH"
        )
    out: Path = args.out or ROOT / "tests" / "fixtures" / f"schema_{short}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"writing the fixtures of {commit} with coro_durable from {cd.__file__} to {out}")
    manifest = {
        "commit": commit,
        "runs": {
            run_id: {"workflow": workflow.__name__, "arg": arg, "status": state}
            for run_id, (workflow, arg, state) in app.RUNS.items()
        },
        "sqlite": sqlite_fixture(out),
        "postgres": postgres_fixture(out, args.pg, short),
        "redis": redis_fixture(out, args.redis, short),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print("done:", ", ".join(sorted(p.name for p in out.iterdir())))


if __name__ == "__main__":
    main()
