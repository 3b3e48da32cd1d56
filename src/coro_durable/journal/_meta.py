"""The ``meta`` map of runs and journal entries, and its one JSON encoding.

``RunRecord.meta`` and ``JournalEntry.meta`` are how later features add fields to the records
without a schema migration per store: a JSON object with string keys, empty by default, that
every store persists and returns as it was given. It is read-only (:class:`Meta`, a ``dict``
that refuses changes, so ``json``, the codec and ``dataclasses.asdict`` take it as a dict); a new
value means a new record (``dataclasses.replace(entry, meta={...}).sealed()``).

One encoding for every store (:func:`encode_meta`): compact JSON with sorted keys, ASCII only,
no NaN or infinity. An entry's checksum covers that text when the meta is not empty (an empty
meta leaves the checksum what it was before meta existed, so older journals still verify).
Values are normalised when a record is built (:func:`freeze_meta`: through that encoding and
back, so a tuple becomes a list), so the meta a store returns equals the meta it was given and
its checksum matches. :func:`decode_meta` reads what a store kept: the text, a mapping its driver
already parsed, or nothing (a row written before meta existed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from ..errors import CorruptJournalError, SerializationError

__all__ = ["EMPTY_META", "Meta", "decode_meta", "empty_meta", "encode_meta", "freeze_meta"]


class Meta(dict[str, Any]):
    """A read-only ``dict`` of JSON data: the ``meta`` of a run or journal entry."""

    __slots__ = ()

    def __setitem__(self, key: str, value: Any) -> NoReturn:
        _read_only()

    def __delitem__(self, key: str) -> NoReturn:
        _read_only()

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        _read_only()

    def clear(self) -> NoReturn:
        _read_only()

    def pop(self, *args: Any) -> NoReturn:
        _read_only()

    def popitem(self) -> NoReturn:
        _read_only()

    def setdefault(self, *args: Any) -> NoReturn:
        _read_only()

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _read_only()

    def __reduce__(self) -> tuple[type[Meta], tuple[dict[str, Any]]]:
        return Meta, (dict(self),)  # copy, deepcopy and pickle rebuild it without __setitem__

    def __repr__(self) -> str:
        return f"Meta({dict.__repr__(self)})"


def _read_only() -> NoReturn:
    raise TypeError(
        "a record's meta is read-only; build a new record with "
        "dataclasses.replace(record, meta={...}) (a journal entry: then .sealed())"
    )


EMPTY_META = Meta()


def empty_meta() -> Meta:
    """The shared empty meta (the records' default)."""
    return EMPTY_META


def _reject(value: object) -> NoReturn:
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_meta(meta: Mapping[str, Any]) -> str:
    """The canonical JSON text of ``meta`` (``"{}"`` when empty), as stores keep it and checksums
    cover it."""
    if not meta:
        return "{}"
    return json.dumps(
        dict(meta), sort_keys=True, separators=(",", ":"), allow_nan=False, default=_reject
    )


def freeze_meta(value: Mapping[str, Any] | None) -> Meta:
    """``value`` as a :class:`Meta`: checked to be a JSON object with str keys and normalised
    through :func:`encode_meta`. Raises SerializationError saying what is wrong."""
    if type(value) is Meta:
        return value
    if value is None or (isinstance(value, Mapping) and not value):
        return EMPTY_META
    if not isinstance(value, Mapping):
        raise SerializationError(
            f"meta must be a mapping of str keys to JSON values, not {type(value).__name__}"
        )
    bad = [key for key in value if not isinstance(key, str)]
    if bad:
        raise SerializationError(f"meta keys must be str; {bad[0]!r} is a {type(bad[0]).__name__}")
    try:
        text = encode_meta(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(
            f"meta must hold JSON data only (str, int, float, bool, None, lists and str-keyed "
            f"dicts of them, no NaN or infinity): {exc}"
        ) from None
    return Meta(json.loads(text))


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def decode_meta(stored: str | Mapping[str, Any] | None, where: str) -> Meta:
    """The meta a store kept for ``where`` (e.g. ``"run 'r1'"``): JSON text, a mapping its driver
    parsed from JSON, or None (written before meta existed). Raises CorruptJournalError when it
    is not a JSON object."""
    if stored is None or stored == "{}":
        return EMPTY_META
    try:
        value = (
            json.loads(stored, parse_constant=_no_constant) if isinstance(stored, str) else stored
        )
        if not isinstance(value, Mapping):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
    except ValueError as exc:
        raise CorruptJournalError(
            f"{where}: its stored meta {str(stored)[:80]!r} cannot be read ({exc}); the row was "
            "modified outside coro_durable"
        ) from None
    return Meta(value) if value else EMPTY_META
