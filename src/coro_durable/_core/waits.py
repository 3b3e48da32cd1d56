"""What a waiting run waits for: :class:`Wait`, and its one stored encoding.

A run parks (``Store.park``) with the waits of the effects it cannot complete now: a signal
(``await_signal``, with its timeout's deadline), a durable timer (``sleep``), the backoff before a
step's next attempt, or any worker (a worker shutting down handed it back). A ``gather`` parks on
several at once, so a run holds a tuple of waits. They are data, not prose: "runs waiting on
signal approval" is the store query ``RunQuery(waiting_for=WaitKind.SIGNAL, wait_name="approval")``,
and ``Wait.describe()`` renders what describe(), the CLI and the worker log show.

Every store keeps the tuple as the text :func:`encode_waits` writes (a JSON array of objects
``{"kind", "seq", "name", "until"}`` without the absent fields; NULL for no wait) and reads it
back with :func:`decode_waits`. Stores that query inside it (SQLite's ``json_each``, Postgres's
jsonb containment) rely on that shape.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptJournalError

__all__ = ["Wait", "WaitKind", "awaited_signals", "decode_waits", "describe_waits", "encode_waits"]


class WaitKind(enum.StrEnum):
    """What a :class:`Wait` is for."""

    SIGNAL = "signal"  # signal ``name``; ``until``: the wait's timeout, None without one
    TIMER = "timer"  # a durable timer (cd.sleep) due at ``until``
    RETRY = "retry"  # the backoff before step ``name``'s next attempt, ending at ``until``
    WORKER = "worker"  # any worker: worker ``name`` handed the run back (shutting down, or
    # giving up a run it could not drive); ``until``: when, the run is due at once


@dataclass(frozen=True, slots=True)
class Wait:
    """One thing a parked run waits for (see the module docstring)."""

    kind: WaitKind
    seq: int | None = None  # the effect waiting (None: the run as a whole)
    name: str | None = None  # the signal's name, the step's name, or the worker's id
    until: float | None = None  # epoch seconds when it ends by itself (None: never)

    def describe(self) -> str:
        """The wait in words, e.g. ``signal 'approval'`` or ``timer until 2026-12-04T10:00:00+00:00``."""
        if self.kind == WaitKind.SIGNAL:
            return f"signal {self.name!r}"
        if self.kind == WaitKind.TIMER:
            return f"timer until {_iso(self.until)}"
        if self.kind == WaitKind.RETRY:
            return f"retry of step {self.name}"
        return f"a worker (handed back by {self.name})"

    def to_json(self) -> dict[str, Any]:
        """The stored object: ``kind`` and the fields that are set."""
        data: dict[str, Any] = {"kind": self.kind.value}
        for key in ("seq", "name", "until"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


def awaited_signals(waits: Iterable[Wait]) -> set[str | None]:
    """The names of the signals ``waits`` wait for: only these wake a parked run (a signal of
    another name is kept, unconsumed, for a later ``await_signal``, and wakes nothing)."""
    return {wait.name for wait in waits if wait.kind == WaitKind.SIGNAL}


def describe_waits(waits: Iterable[Wait]) -> str | None:
    """The waits in words, joined by ", " (None when there is none)."""
    return ", ".join(wait.describe() for wait in waits) or None


def encode_waits(waits: Sequence[Wait]) -> str | None:
    """The text a store keeps for a run's waits (None: no wait)."""
    if not waits:
        return None
    return json.dumps([wait.to_json() for wait in waits], separators=(",", ":"))


def decode_waits(stored: str | Sequence[Any] | None, where: str) -> tuple[Wait, ...]:
    """The waits a store kept for ``where`` (e.g. ``"run 'r1'"``): the text of encode_waits, the
    list a driver parsed from it, or None. Raises CorruptJournalError when it cannot be read."""
    if stored is None:
        return ()
    try:
        items = json.loads(stored) if isinstance(stored, str) else stored
        if not isinstance(items, list):
            raise ValueError(f"a JSON {type(items).__name__}, not an array")
        return tuple(_wait(item) for item in items)
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptJournalError(
            f"{where}: its stored waits {str(stored)[:80]!r} cannot be read ({exc}); the row was "
            "modified outside coro_durable"
        ) from None


def _wait(item: Any) -> Wait:
    if not isinstance(item, Mapping):
        raise ValueError(f"a wait is a JSON {type(item).__name__}, not an object")
    seq, name, until = item.get("seq"), item.get("name"), item.get("until")
    return Wait(
        kind=WaitKind(item["kind"]),
        seq=int(seq) if seq is not None else None,
        name=str(name) if name is not None else None,
        until=float(until) if until is not None else None,
    )


def _iso(ts: float | None) -> str:
    if ts is None:
        return "never"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).isoformat(timespec="seconds")
