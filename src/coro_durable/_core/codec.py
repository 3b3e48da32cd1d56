"""The journal codec: values <-> JSON text, with no pickle anywhere.

Plain JSON types map to themselves. Other types are written as a tagged object
``{"$cd": tag, "v": ...}`` and come back as the same type:

    tuple, set, frozenset, bytes (base64), datetime, date, time, timedelta, Decimal, UUID,
    dicts with non-string keys, dataclass instances, pydantic models, Enum members.

Dataclasses, pydantic models and enums are rebuilt only from classes that are *already imported*
in this process (looked up in ``sys.modules``, never imported on demand), so a payload read from a
shared database cannot make us import or run arbitrary code. When the class is not loaded the
value decodes to a plain dict of its fields.

Results are always fed to workflows *after* a round trip through this codec (invariant 7), so the
first execution and a replay see equal values.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import enum
import json
import sys
import uuid
from typing import Any

from ..errors import PayloadTooLargeError, SerializationError

TAG = "$cd"
DEFAULT_MAX_PAYLOAD_BYTES = 2 * 1024 * 1024

_SCALARS = (str, int, float, bool, type(None))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _loaded_class(path: str) -> type | None:
    """The class named ``module:qualname`` if that module is already imported, else None."""
    module_name, _, qualname = path.partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        if obj is None or part == "<locals>":
            return None
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def _is_pydantic_model(value: object) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(value, pydantic.BaseModel)


def _to_json(value: Any, where: str) -> Any:
    """Convert ``value`` to JSON-native data, tagging every non-JSON type."""
    if isinstance(value, _SCALARS) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, list):
        return [_to_json(v, where) for v in value]
    if isinstance(value, dict):
        if all(type(k) is str for k in value):
            if TAG in value:  # a user dict using our tag key: stored as pairs, so never mistaken
                return {TAG: "dict", "v": [[k, _to_json(v, where)] for k, v in value.items()]}
            return {k: _to_json(v, where) for k, v in value.items()}
        return {
            TAG: "map",
            "v": [[_to_json(k, where), _to_json(v, where)] for k, v in value.items()],
        }
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {TAG: "tuple", "v": [_to_json(v, where) for v in value]}
    if isinstance(value, set | frozenset):
        tag = "set" if isinstance(value, set) else "frozenset"
        items = [_to_json(v, where) for v in value]
        items.sort(key=json.dumps)  # a stable order, so equal sets encode equally
        return {TAG: tag, "v": items}
    if isinstance(value, bytes | bytearray):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, _dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, _dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, _dt.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, _dt.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "t": _class_path(type(value)), "v": _to_json(value.value, where)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: _to_json(getattr(value, f.name), where) for f in dataclasses.fields(value)
        }
        return {TAG: "dataclass", "t": _class_path(type(value)), "v": fields}
    if _is_pydantic_model(value):
        return {TAG: "pydantic", "t": _class_path(type(value)), "v": value.model_dump(mode="json")}
    raise SerializationError(
        f"{where}: cannot encode a value of type {type(value).__module__}.{type(value).__qualname__} "
        "to the journal. Return or pass JSON-friendly data (str, int, float, bool, None, list, "
        "dict, tuple, bytes, datetime, Decimal, UUID, Enum, dataclasses, pydantic models)"
    )


def _from_tagged(obj: dict[str, Any]) -> Any:
    tag = obj.get(TAG)
    if tag is None:
        return obj
    v: Any = obj.get("v")
    try:
        if tag == "dict":
            return dict(v)
        if tag == "map":
            return {_hashable(k): val for k, val in v}
        if tag == "tuple":
            return tuple(v)
        if tag == "set":
            return {_hashable(x) for x in v}
        if tag == "frozenset":
            return frozenset(_hashable(x) for x in v)
        if tag == "bytes":
            return base64.b64decode(v)
        if tag == "datetime":
            return _dt.datetime.fromisoformat(v)
        if tag == "date":
            return _dt.date.fromisoformat(v)
        if tag == "time":
            return _dt.time.fromisoformat(v)
        if tag == "timedelta":
            return _dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2])
        if tag == "decimal":
            return decimal.Decimal(v)
        if tag == "uuid":
            return uuid.UUID(v)
        if tag in ("enum", "dataclass", "pydantic"):
            cls = _loaded_class(str(obj.get("t", "")))
            if cls is None:
                return v
            if tag == "enum" and issubclass(cls, enum.Enum):
                return cls(v)
            if tag == "dataclass" and dataclasses.is_dataclass(cls):
                return cls(**v)
            if tag == "pydantic" and hasattr(cls, "model_validate"):
                return cls.model_validate(v)
            return v
    except (TypeError, ValueError, KeyError) as exc:
        raise SerializationError(f"cannot decode a journal value tagged {tag!r}: {exc}") from exc
    raise SerializationError(
        f"unknown journal value tag {tag!r}; was it written by a newer version?"
    )


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def encode(value: Any, *, where: str = "value", limit: int | None = None) -> str:
    """Encode ``value`` as compact JSON text; raise SerializationError naming ``where``."""
    if value is None:
        text = "null"
    else:
        try:
            data = _to_json(value, where)
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
            try:
                if not text.isascii():
                    text.encode()
            except UnicodeEncodeError:  # lone surrogates: escape them, so every store can keep it
                text = json.dumps(data, separators=(",", ":"))
        except (ValueError, RecursionError) as exc:
            raise SerializationError(f"{where}: cannot encode value: {exc}") from exc
    if limit is not None and len(text) > limit and len(text.encode()) > limit:
        raise PayloadTooLargeError(
            f"{where}: encoded payload is {len(text.encode())} bytes, over the limit of {limit}; "
            "store large data elsewhere (a blob store) and journal a reference to it, or raise "
            "max_payload_bytes"
        )
    return text


def decode(text: str) -> Any:
    """Decode JSON text written by :func:`encode`."""
    if text == "null":
        return None
    try:
        return json.loads(text, object_hook=_from_tagged)
    except json.JSONDecodeError as exc:
        raise SerializationError(f"journal value is not valid JSON: {exc}") from exc


def roundtrip(value: Any, *, where: str = "value", limit: int | None = None) -> tuple[str, Any]:
    """Encode ``value`` and decode it again: the text to store and the value to feed."""
    text = encode(value, where=where, limit=limit)
    return text, decode(text)
