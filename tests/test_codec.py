"""The journal codec: exact round trips for the types we promise, typed errors, no pickle."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coro_durable import errors
from coro_durable._core import codec as _codec


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float
    label: str = ""


class Model(pydantic.BaseModel):
    name: str
    when: dt.datetime
    tags: list[str]


json_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
extras = (
    st.binary()
    | st.datetimes(timezones=st.just(dt.UTC))
    | st.dates()
    | st.times()
    | st.timedeltas()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
    | st.sampled_from(Color)
    | st.builds(Point, st.integers(), st.floats(allow_nan=False), st.text())
)
hashables = json_scalars | st.binary() | st.uuids() | st.dates()
values = st.recursive(
    json_scalars | extras,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=5), children, max_size=4)
        | st.dictionaries(st.integers(), children, max_size=3)
        | st.frozensets(hashables, max_size=4)
        | st.sets(st.integers(), max_size=4)
        | st.dictionaries(st.just("$cd"), children, max_size=1)
    ),
    max_leaves=12,
)


@given(values)
def test_round_trip_is_exact(value: Any) -> None:
    """Every supported value decodes to an equal value of the same type."""
    text, decoded = _codec.roundtrip(value)
    assert decoded == value
    assert type(decoded) is type(value)
    assert _codec.encode(decoded) == text  # encoding is stable: replays digest the same


def test_pydantic_models_round_trip() -> None:
    """pydantic models come back as the model class when it is importable here."""
    model = Model(name="n", when=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), tags=["a"])
    assert _codec.roundtrip(model)[1] == model


def test_unknown_class_decodes_to_fields_without_importing() -> None:
    """A dataclass tag naming a module that is not loaded decodes to a plain dict, importing nothing."""
    text = '{"$cd":"dataclass","t":"some_module_never_imported:Thing","v":{"a":1}}'
    assert _codec.decode(text) == {"a": 1}
    import sys

    assert "some_module_never_imported" not in sys.modules


def test_unserialisable_value_names_where_and_type() -> None:
    """An unsupported type raises SerializationError naming the place and the type."""
    with pytest.raises(errors.SerializationError, match=r"result of step x: .*builtins\.object"):
        _codec.encode({"a": [object()]}, where="result of step x")


def test_payload_limit() -> None:
    """Payloads over the limit raise PayloadTooLargeError, a SerializationError."""
    with pytest.raises(errors.PayloadTooLargeError, match="over the limit of 10"):
        _codec.encode("x" * 100, limit=10)
    assert _codec.encode("x" * 5, limit=10) == '"xxxxx"'


def test_no_pickle_anywhere() -> None:
    """The codec module never touches pickle or marshal."""
    import inspect

    source = inspect.getsource(_codec)
    assert "pickle" not in source.replace("no pickle", "").replace("No pickle", "")
    assert "marshal" not in source


def test_corrupt_text_is_a_typed_error() -> None:
    """Invalid JSON or an unknown tag raises SerializationError, never a bare exception."""
    with pytest.raises(errors.SerializationError):
        _codec.decode("{not json")
    with pytest.raises(errors.SerializationError, match="unknown journal value tag"):
        _codec.decode('{"$cd":"martian","v":1}')


def test_lone_surrogates_round_trip_as_storable_text() -> None:
    """Strings with lone surrogates round-trip, encoded as text every store can keep (UTF-8)."""
    text, decoded = _codec.roundtrip({"s": "a\ud800b"})
    assert decoded == {"s": "a\ud800b"}
    text.encode()  # no UnicodeEncodeError
