"""The ``temporal://`` URL: where the server is and how runs are mapped onto it.

    temporal://HOST[:PORT][/NAMESPACE][?PARAM=VALUE&...]

Every parameter is documented in the package docstring (``coro_durable_temporal``); this module
parses and validates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from coro_durable.errors import ConfigurationError

__all__ = ["TemporalSettings", "parse_url"]

DEFAULT_PORT = 7233
DEFAULT_NAMESPACE = "default"
DEFAULT_TASK_QUEUE = "coro-durable"


@dataclass(frozen=True, slots=True)
class TemporalSettings:
    """A parsed ``temporal://`` URL."""

    address: str  # host:port of the Temporal frontend
    namespace: str = DEFAULT_NAMESPACE
    task_queue: str = DEFAULT_TASK_QUEUE
    tls: bool = False
    heartbeat_timeout: float = 30.0
    step_timeout: float = 86400.0
    sticky_timeout: float = 10.0
    max_cached_workflows: int = 1000
    query_timeout: float = 10.0
    sandbox: bool = True


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}  # fmt: skip


def _seconds(name: str, text: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(
            f"temporal URL parameter {name}={text!r} must be a number of seconds"
        ) from None
    if not (math.isfinite(value) and value > minimum):
        raise ConfigurationError(
            f"temporal URL parameter {name}={text!r} must be a finite number of seconds > {minimum:g}"
        )
    return value


def _bool(name: str, text: str) -> bool:
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise ConfigurationError(
            f"temporal URL parameter {name}={text!r} must be true or false"
        ) from None


def parse_url(url: str) -> TemporalSettings:
    """Parse ``temporal://host:port/namespace?task_queue=q&...`` (see the package docstring)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "temporal":
        raise ConfigurationError(f"not a temporal:// URL: {url!r}")
    try:
        host = parts.hostname or "127.0.0.1"
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigurationError(f"bad host:port in temporal URL {url!r}: {exc}") from None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.username or parts.password:
        raise ConfigurationError(
            f"temporal URL {url!r} carries credentials; coro_durable_temporal does not take "
            "them from the URL (use tls=true and pass client=... for custom authentication)"
        )
    path = unquote(parts.path.strip("/"))
    if "/" in path:
        raise ConfigurationError(
            f"temporal URL {url!r}: the path is the namespace and must be one segment, got {path!r}"
        )
    namespace = path or DEFAULT_NAMESPACE
    values: dict[str, object] = {}
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key in values:
            raise ConfigurationError(f"temporal URL parameter {key!r} is given twice in {url!r}")
        if key == "task_queue":
            if not text:
                raise ConfigurationError("temporal URL parameter task_queue must not be empty")
            values[key] = text
        elif key in ("tls", "sandbox"):
            values[key] = _bool(key, text)
        elif key in ("heartbeat_timeout", "step_timeout", "sticky_timeout", "query_timeout"):
            values[key] = _seconds(key, text)
        elif key == "max_cached_workflows":
            try:
                count = int(text)
            except ValueError:
                count = -1
            if count < 0:
                raise ConfigurationError(
                    f"temporal URL parameter max_cached_workflows={text!r} must be an integer >= 0"
                )
            values[key] = count
        else:
            raise ConfigurationError(
                f"unknown temporal URL parameter {key!r} in {url!r}; known: task_queue, tls, "
                "heartbeat_timeout, step_timeout, sticky_timeout, max_cached_workflows, "
                "query_timeout, sandbox"
            )
    return TemporalSettings(f"{host}:{port}", namespace, **values)  # type: ignore[arg-type]
