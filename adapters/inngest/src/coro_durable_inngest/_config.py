"""The ``inngest://`` URL: where the Inngest server is, and how this process serves its endpoint.

    inngest://HOST[:PORT][?PARAM=VALUE&...]

Every parameter is documented in the package docstring (``coro_durable_inngest``); this module
parses and validates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from coro_durable.errors import ConfigurationError

__all__ = ["InngestSettings", "parse_url"]

DEV_PORT = 8288
CLOUD_API = "https://api.inngest.com"
CLOUD_EVENT_API = "https://inn.gs"
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class InngestSettings:
    """A parsed ``inngest://`` URL."""

    api_origin: str  # the REST API (v1) and, in dev mode, app sync: http(s)://host:port
    event_api_origin: str  # where events are sent (POST /e/<event key>)
    mode: str = "dev"  # "dev" (a dev server, no signatures) or "cloud" (signed requests)
    app_id: str = "coro-durable"
    listen: tuple[str, int] = ("127.0.0.1", 0)  # where this process serves its endpoint
    serve_path: str = "/api/inngest"
    serve_origin: str | None = None  # the origin Inngest calls; default http://<listen>
    event_key: str | None = None
    signing_key: str | None = None
    sync: bool = True  # register the app with Inngest when the runtime opens
    retries: int = 20  # Inngest's retries for infrastructure failures (crashed endpoint, 5xx)
    signal_recheck: float = 3600.0  # longest window between two looks at the run's mailbox
    max_sleep: float = 365 * DAY  # Inngest's longest sleep (7 days on the free plan)
    max_step_timeout: float = 7200.0  # Inngest's longest step (2 hours)
    poll_interval: float = 0.2  # how often result() asks the REST API
    cancel: str = "cooperative"  # or "native": DELETE /v1/runs/{id}, no cleanup code runs


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}  # fmt: skip
_SECONDS = ("signal_recheck", "max_sleep", "max_step_timeout", "poll_interval")
_KNOWN = (
    "mode, app_id, listen, serve_path, serve_origin, event_api, event_key, signing_key, tls, "
    "sync, retries, signal_recheck, max_sleep, max_step_timeout, poll_interval, cancel"
)


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"inngest URL parameter {name}={text!r} must be a finite number of seconds > 0"
        )
    return value


def _bool(name: str, text: str) -> bool:
    try:
        return _BOOLS[text.strip().lower()]
    except KeyError:
        raise ConfigurationError(
            f"inngest URL parameter {name}={text!r} must be true or false"
        ) from None


def _host_port(name: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigurationError(
            f"inngest URL parameter {name}={text!r} must be HOST:PORT (PORT 0 picks a free port)"
        )
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ConfigurationError(f"inngest URL parameter {name}={text!r}: bad port {port!r}")
    return host.strip("[]"), number


def _origin(name: str, text: str, tls: bool) -> str:
    if "://" not in text:
        text = f"{'https' if tls else 'http'}://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"inngest URL parameter {name}={text!r} is not an http(s) origin")
    return f"{parts.scheme}://{parts.netloc}"


def parse_url(url: str) -> InngestSettings:
    """Parse ``inngest://host:port?app_id=...&listen=...`` (see the package docstring)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "inngest":
        raise ConfigurationError(f"not an inngest:// URL: {url!r}")
    if parts.username or parts.password:
        raise ConfigurationError(
            f"inngest URL {url!r} carries credentials in its authority; pass signing_key= and "
            "event_key= as parameters or, better, set INNGEST_SIGNING_KEY / INNGEST_EVENT_KEY"
        )
    if parts.path.strip("/"):
        raise ConfigurationError(
            f"inngest URL {url!r} has a path; the endpoint's path is the serve_path parameter"
        )
    raw: dict[str, str] = {}
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key in raw:
            raise ConfigurationError(f"inngest URL parameter {key!r} is given twice in {url!r}")
        raw[key] = text
    mode = raw.pop("mode", "dev")
    if mode not in ("dev", "cloud"):
        raise ConfigurationError(f"inngest URL parameter mode={mode!r} must be dev or cloud")
    tls = _bool("tls", raw.pop("tls")) if "tls" in raw else mode == "cloud"
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad host:port in inngest URL {url!r}: {exc}") from None
    if host:
        shown = f"[{host}]" if ":" in host else host
        default_port = DEV_PORT if mode == "dev" else None
        port = port or default_port
        api = f"{'https' if tls else 'http'}://{shown}{f':{port}' if port else ''}"
    else:
        api = CLOUD_API if mode == "cloud" else f"http://127.0.0.1:{DEV_PORT}"
    if "event_api" in raw:
        event_api = _origin("event_api", raw.pop("event_api"), tls)
    else:
        event_api = CLOUD_EVENT_API if mode == "cloud" and not host else api
    values: dict[str, object] = {}
    for key, text in raw.items():
        if key == "app_id":
            if not text or any(c.isspace() for c in text):
                raise ConfigurationError(
                    f"inngest URL parameter app_id={text!r} must be a non-empty word"
                )
            values[key] = text
        elif key == "listen":
            values[key] = _host_port(key, text)
        elif key == "serve_path":
            if not text.startswith("/"):
                raise ConfigurationError(
                    f"inngest URL parameter serve_path={text!r} must start with /"
                )
            values[key] = text
        elif key == "serve_origin":
            values[key] = _origin(key, text, tls)
        elif key in ("event_key", "signing_key"):
            values[key] = text or None
        elif key == "sync":
            values[key] = _bool(key, text)
        elif key == "retries":
            try:
                count = int(text)
            except ValueError:
                count = -1
            if not 0 <= count <= 20:
                raise ConfigurationError(
                    f"inngest URL parameter retries={text!r} must be an integer from 0 to 20 "
                    "(Inngest's maximum)"
                )
            values[key] = count
        elif key in _SECONDS:
            values[key] = _seconds(key, text)
        elif key == "cancel":
            if text not in ("cooperative", "native"):
                raise ConfigurationError(
                    f"inngest URL parameter cancel={text!r} must be cooperative or native"
                )
            values[key] = text
        else:
            raise ConfigurationError(
                f"unknown inngest URL parameter {key!r} in {url!r}; known: {_KNOWN}"
            )
    return InngestSettings(api, event_api, mode, **values)  # type: ignore[arg-type]
