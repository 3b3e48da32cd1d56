"""The ``restate://`` URL: where the Restate server is, where this process serves, how runs map.

    restate://HOST[:PORT][?PARAM=VALUE&...]

Every parameter is documented in the package docstring (``coro_durable_restate``) and the
adapter's README; this module parses and validates them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from coro_durable.errors import ConfigurationError

__all__ = ["RestateSettings", "parse_url"]

DEFAULT_INGRESS_PORT = 8080
DEFAULT_ADMIN_PORT = 9070
DEFAULT_LISTEN = "127.0.0.1:9080"
DEFAULT_SERVICE = "coro_durable"

_SERVICE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}  # fmt: skip
_KNOWN = (
    "admin, listen, advertise, service, inactivity_timeout, abort_timeout, retry_max_interval, "
    "request_timeout, http1"
)


@dataclass(frozen=True, slots=True)
class RestateSettings:
    """A parsed ``restate://`` URL."""

    ingress: str  # base URL of the ingress, e.g. http://127.0.0.1:8080
    admin: str  # base URL of the admin API, e.g. http://127.0.0.1:9070
    listen: tuple[str, int] = ("127.0.0.1", 9080)  # where this process serves its endpoint
    advertise: str = "http://127.0.0.1:9080"  # how the server reaches that endpoint
    service: str = DEFAULT_SERVICE  # the Restate workflow service every run belongs to
    inactivity_timeout: float = 60.0
    abort_timeout: float = 600.0
    retry_max_interval: float = 10.0
    request_timeout: float = 30.0
    http1: bool = False  # register the endpoint as HTTP/1.1 (request/response) instead of HTTP/2

    @property
    def step_limit(self) -> float:
        """The longest a step attempt can run before Restate aborts it (and runs it again)."""
        return self.inactivity_timeout + self.abort_timeout


def _seconds(name: str, text: str, *, allow_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(
            f"restate URL parameter {name}={text!r} must be a number of seconds"
        ) from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"restate URL parameter {name}={text!r} must be a finite number of seconds {bound}"
        )
    return value


def _host_port(name: str, text: str) -> tuple[str, int]:
    parts = urlsplit(f"//{text}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None or parts.path or parts.username:
        raise ConfigurationError(
            f"restate URL parameter {name}={text!r} must be HOST:PORT, e.g. 127.0.0.1:9080"
        )
    return host, port


def _base_url(name: str, text: str) -> str:
    parts = urlsplit(text if "://" in text else f"http://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        raise ConfigurationError(
            f"restate URL parameter {name}={text!r} must be an http(s)://HOST:PORT URL"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_url(url: str) -> RestateSettings:
    """Parse ``restate://host:port?admin=...&listen=...`` (see the package docstring)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "restate":
        raise ConfigurationError(f"not a restate:// URL: {url!r}")
    try:
        host = parts.hostname or "127.0.0.1"
        port = parts.port or DEFAULT_INGRESS_PORT
    except ValueError as exc:
        raise ConfigurationError(f"bad host:port in restate URL {url!r}: {exc}") from None
    if parts.username or parts.password:
        raise ConfigurationError(
            f"restate URL {url!r} carries credentials; coro_durable_restate does not take them "
            "from the URL"
        )
    if parts.path.strip("/"):
        raise ConfigurationError(
            f"restate URL {url!r} has a path; the service name goes in ?service=NAME"
        )
    values: dict[str, object] = {}
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key in values:
            raise ConfigurationError(f"restate URL parameter {key!r} is given twice in {url!r}")
        if key in ("admin", "advertise"):
            values[key] = _base_url(key, text)
        elif key == "listen":
            values[key] = _host_port(key, text)
        elif key == "service":
            if not _SERVICE_NAME.match(text):
                raise ConfigurationError(
                    f"restate URL parameter service={text!r} must be a name of letters, digits "
                    "and _ (not starting with a digit)"
                )
            values[key] = text
        elif key == "inactivity_timeout":
            values[key] = _seconds(key, text, allow_zero=True)
        elif key in ("abort_timeout", "retry_max_interval", "request_timeout"):
            values[key] = _seconds(key, text)
        elif key == "http1":
            try:
                values[key] = _BOOLS[text.strip().lower()]
            except KeyError:
                raise ConfigurationError(
                    f"restate URL parameter http1={text!r} must be true or false"
                ) from None
        else:
            raise ConfigurationError(
                f"unknown restate URL parameter {key!r} in {url!r}; known: {_KNOWN}"
            )
    ingress = f"http://{_format_host(host)}:{port}"
    values.setdefault("admin", f"http://{_format_host(host)}:{DEFAULT_ADMIN_PORT}")
    listen = values.setdefault("listen", ("127.0.0.1", 9080))
    assert isinstance(listen, tuple)
    if "advertise" not in values:
        listen_host = listen[0]
        if listen_host in ("0.0.0.0", "::"):
            raise ConfigurationError(
                f"restate URL {url!r} listens on {listen_host}; give advertise=http://HOST:PORT, "
                "the address the Restate server uses to reach this process"
            )
        values["advertise"] = f"http://{_format_host(listen_host)}:{listen[1]}"
    return RestateSettings(ingress, **values)  # type: ignore[arg-type]
