"""Inngest's REST API (v1) as the adapter uses it, and the names of the events it sends.

    GET    /v1/events?name=N&received_after=T&cursor=C&limit=L   events, newest first
    GET    /v1/events/{internal event id}/runs                     the runs an event started
    GET    /v1/runs/{run id}                                       a run: status and output
    DELETE /v1/runs/{run id}                                       cancel a run (native)

Inngest Cloud wraps each answer as ``{"data": ...}``; a bare answer is accepted too. Requests carry
``Authorization: Bearer <sha256 of the signing key>`` when a signing key is configured (the dev
server needs none).

Events the adapter sends:

- ``coro_durable/start`` starts a run: ``data = {"run_id", "workflow", "input"}`` (the input is the
  coro_durable codec's JSON text of ``{"args", "kwargs"}``). One Inngest function per registered
  workflow is triggered by it (``event.data.workflow == "<name>"``) and is idempotent on
  ``event.data.run_id``.
- ``coro_durable/signal.<digest of the run id>`` is the run's mailbox: one event per signal sent
  with ``rt.signal`` (``data = {"run_id", "name", "signal_id", "payload", "sent_ns"}``) and one for
  a cooperative ``rt.cancel`` (name ``$cancel``). One event name per run keeps the look-ups of a run
  bounded by that run's own signals.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from typing import Any

import httpx

from coro_durable.errors import RunNotFoundError, StoreUnavailableError

from ._config import InngestSettings

__all__ = [
    "CANCEL",
    "START_EVENT",
    "InngestApi",
    "Signal",
    "hash_signing_key",
    "mailbox_event",
    "order_signals",
]

START_EVENT = "coro_durable/start"
CANCEL = "$cancel"  # the signal name of a cooperative cancellation
PAGE = 100

Signal = dict[str, Any]  # {"name", "signal_id", "payload", "sent_ns"} from an event's data


def mailbox_event(run_id: str) -> str:
    """The event name of a run's mailbox (signals and cancellation)."""
    return "coro_durable/signal." + hashlib.sha1(run_id.encode()).hexdigest()[:24]


def hash_signing_key(key: str) -> str:
    """How Inngest authenticates API requests: sha256 of the key's hex bytes, prefix removed."""
    bare = re.sub(r"^signkey-\w+-", "", key)
    return hashlib.sha256(bytes.fromhex(bare)).hexdigest()


def order_signals(events: list[dict[str, Any]], run_id: str) -> list[Signal]:
    """The run's signals in the order they were sent, each signal id once (the first send)."""
    found: dict[str, Signal] = {}
    for event in events:
        data = event.get("data") or {}
        if not isinstance(data, dict) or data.get("run_id") != run_id:
            continue
        sid = str(data.get("signal_id", ""))
        signal = {
            "name": str(data.get("name", "")),
            "signal_id": sid,
            "payload": data.get("payload"),
            "sent_ns": int(data.get("sent_ns") or 0),
        }
        known = found.get(sid)
        if known is None or signal["sent_ns"] < known["sent_ns"]:
            found[sid] = signal
    return sorted(found.values(), key=lambda s: (s["sent_ns"], s["signal_id"]))


def _unwrap(body: Any) -> Any:
    if isinstance(body, dict) and "data" in body and set(body) <= {"data", "metadata", "cursor"}:
        return body["data"]
    return body


class InngestApi:
    """A small async client of Inngest's REST API v1 (one connection pool per runtime)."""

    def __init__(self, settings: InngestSettings) -> None:
        self.origin = settings.api_origin
        headers = {"accept": "application/json"}
        if settings.signing_key:
            headers["authorization"] = f"Bearer {hash_signing_key(settings.signing_key)}"
        self._http = httpx.AsyncClient(base_url=self.origin, headers=headers, timeout=30.0)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        try:
            return await self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(
                f"Inngest's API at {self.origin} did not answer GET {path}: {exc!r}"
            ) from exc

    @staticmethod
    def _check(res: httpx.Response, what: str) -> Any:
        if res.status_code >= 400:
            raise StoreUnavailableError(
                f"Inngest's API refused {what}: HTTP {res.status_code} {res.text[:300]}"
            )
        return _unwrap(res.json())

    async def list_events(
        self, name: str, received_after: _dt.datetime | None = None
    ) -> list[dict[str, Any]]:
        """Every stored event named ``name`` (received after ``received_after``), newest first."""
        params: dict[str, Any] = {"name": name, "limit": PAGE}
        if received_after is not None:
            params["received_after"] = received_after.astimezone(_dt.UTC).isoformat()
        out: list[dict[str, Any]] = []
        while True:
            page = self._check(await self._get("/v1/events", params), f"listing events {name}")
            if not isinstance(page, list):
                raise StoreUnavailableError(f"Inngest's API answered events as {type(page)}")
            out.extend(e for e in page if isinstance(e, dict))
            if len(page) < PAGE:
                return out
            params["cursor"] = page[-1].get("internal_id") or page[-1].get("id")

    async def mailbox(self, run_id: str, since: _dt.datetime | None) -> list[Signal]:
        """The run's signals (and cancellations), in the order they were sent."""
        return order_signals(await self.list_events(mailbox_event(run_id), since), run_id)

    async def event_runs(self, event_id: str) -> list[dict[str, Any]]:
        runs = self._check(
            await self._get(f"/v1/events/{event_id}/runs"), f"the runs of event {event_id}"
        )
        return [r for r in runs or [] if isinstance(r, dict)]

    async def get_run(self, run_id: str, ours: str) -> dict[str, Any]:
        res = await self._get(f"/v1/runs/{run_id}")
        if res.status_code == 404:
            raise RunNotFoundError(ours)
        run = self._check(res, f"run {run_id}")
        if not isinstance(run, dict):
            raise StoreUnavailableError(f"Inngest's API answered run {run_id} as {type(run)}")
        return run

    async def cancel_run(self, run_id: str) -> None:
        try:
            res = await self._http.delete(f"/v1/runs/{run_id}")
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(
                f"Inngest's API at {self.origin} did not answer DELETE /v1/runs/{run_id}: {exc!r}"
            ) from exc
        self._check(res, f"cancelling run {run_id}")
