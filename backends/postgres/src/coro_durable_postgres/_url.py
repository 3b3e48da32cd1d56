"""Parse a ``postgresql://`` store URL into coro_durable's options and the DSN handed to psycopg.

The options are documented in the package docstring (``coro_durable_postgres``); everything this
module does not recognise is left in the DSN for libpq (``sslmode``, ``connect_timeout``,
``application_name``, ``options``...).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from coro_durable.errors import ConfigurationError
from coro_durable.store import GROUP_COMMIT_OPTIONS, GroupCommitOptions, parse_group_option

__all__ = ["Options", "parse_url"]

_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_DRIVERS = ("auto", "async", "thread")


@dataclass(frozen=True, slots=True)
class Options:
    """coro_durable's own URL options, with the DSN left for psycopg."""

    dsn: str
    schema: str = "coro_durable"
    pool_min: int = 1
    pool_max: int = 10
    pool_timeout: float = 10.0
    open_timeout: float = 30.0
    driver: str = "auto"
    prepare_threshold: int | None = 5
    group_commit: GroupCommitOptions = field(default_factory=GroupCommitOptions)

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel of this schema (channels are per database, like schemas)."""
        return f"{self.schema}.wake"

    @property
    def redacted(self) -> str:
        """The DSN without its password, for messages."""
        parts = urlsplit(self.dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}@{host}" if user else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _number(url: str, key: str, value: str, *, integer: bool, minimum: float) -> float:
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= minimum):
        kind = "a whole number" if integer else "a number of seconds"
        raise ConfigurationError(
            f"PostgreSQL store URL {url!r}: {key} must be {kind} >= {minimum:g}, not {value!r}"
        )
    return number


def parse_url(url: str) -> Options:
    """Split ``url`` into :class:`Options`; raise ConfigurationError for a bad URL or option."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"{url!r} is not a PostgreSQL URL; write postgresql://user@host:5432/dbname"
        )
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    known = set(Options.__dataclass_fields__) - {"dsn", "group_commit"}
    group = GroupCommitOptions()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in GROUP_COMMIT_OPTIONS:
            group = parse_group_option(group, key, value, f"PostgreSQL store URL {url!r}")
        elif key in known:
            if key in ours:
                raise ConfigurationError(f"PostgreSQL store URL {url!r} gives {key} twice")
            ours[key] = value
        else:
            theirs.append((key, value))
    keys = {k for k, _ in theirs}
    if "application_name" not in keys:
        theirs.append(("application_name", "coro_durable"))
    if "connect_timeout" not in keys:
        theirs.append(("connect_timeout", "5"))
    # quote (not quote_plus): libpq decodes %20 but not "+" in URI parameters.
    query = urlencode(theirs, quote_via=quote)
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, query, ""))

    schema = ours.get("schema", "coro_durable")
    if not _SCHEMA_RE.fullmatch(schema):
        raise ConfigurationError(
            f"PostgreSQL store URL {url!r}: schema must be a lower-case identifier of at most 48 "
            f"characters (letters, digits, underscores, not starting with a digit), not {schema!r}"
        )
    pool_min = int(_number(url, "pool_min", ours.get("pool_min", "1"), integer=True, minimum=0))
    pool_max = int(_number(url, "pool_max", ours.get("pool_max", "10"), integer=True, minimum=1))
    if pool_max < pool_min:
        raise ConfigurationError(
            f"PostgreSQL store URL {url!r}: pool_max ({pool_max}) is below pool_min ({pool_min})"
        )
    pool_timeout = _number(
        url, "pool_timeout", ours.get("pool_timeout", "10"), integer=False, minimum=0.001
    )
    open_timeout = _number(
        url, "open_timeout", ours.get("open_timeout", "30"), integer=False, minimum=0
    )
    driver = ours.get("driver", "auto")
    if driver not in _DRIVERS:
        raise ConfigurationError(
            f"PostgreSQL store URL {url!r}: driver must be one of {', '.join(_DRIVERS)}, "
            f"not {driver!r}"
        )
    raw_threshold = ours.get("prepare_threshold", "5")
    prepare_threshold: int | None
    if raw_threshold.lower() == "none":
        prepare_threshold = None
    else:
        prepare_threshold = int(
            _number(url, "prepare_threshold", raw_threshold, integer=True, minimum=0)
        )
    return Options(
        dsn=dsn,
        schema=schema,
        pool_min=pool_min,
        pool_max=pool_max,
        pool_timeout=pool_timeout,
        open_timeout=open_timeout,
        driver=driver,
        prepare_threshold=prepare_threshold,
        group_commit=group,
    )
