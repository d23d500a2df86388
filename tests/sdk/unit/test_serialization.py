"""msgpack for step results (with dataclasses and pydantic models), JSON for people."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import msgpack
import pytest
from pydantic import BaseModel

from runtara_sdk.errors import SerializationError
from runtara_sdk.serialization import EXT_DATACLASS, EXT_PYDANTIC, dumps, from_json, loads, to_json


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Shape:
    name: str
    corners: list[Point]
    origin: Point | None = None
    blob: bytes = b""


@dataclasses.dataclass
class WithDerived:
    base: int
    double: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.double = self.base * 2


class Address(BaseModel):
    street: str
    number: int


class Customer(BaseModel):
    name: str
    tags: list[str]
    address: Address
    balance: float = 0.0


class Attachment(BaseModel):
    name: str
    data: bytes
    sent_at: datetime.datetime


@dataclasses.dataclass
class Order:
    customer: Customer
    points: dict[str, Point]


class Outer:
    @dataclasses.dataclass
    class Inner:
        value: str


def round_trip(value: Any) -> Any:
    return loads(dumps(value, "the value"))


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        "text ünïcode",
        "",
        [],
        {},
        [1, "a", None, [2, [3]]],
        {"a": {"b": [1, 2.5, None]}, "c": ""},
    ],
)
def test_json_compatible_values_round_trip(value: Any) -> None:
    assert round_trip(value) == value


def test_bytes_round_trip_as_bytes() -> None:
    data = bytes(range(256))
    back = round_trip({"blob": data})
    assert back == {"blob": data}
    assert isinstance(back["blob"], bytes)


def test_int_keys_round_trip() -> None:
    assert round_trip({1: "a", 2: "b"}) == {1: "a", 2: "b"}


def test_tuples_come_back_as_lists() -> None:
    assert round_trip((1, (2, 3))) == [1, [2, 3]]


def test_dataclass_round_trip() -> None:
    back = round_trip(Point(1, 2))
    assert type(back) is Point
    assert back == Point(1, 2)


def test_nested_dataclasses_round_trip() -> None:
    shape = Shape("tri", [Point(0, 0), Point(1, 0)], origin=Point(5, 5), blob=b"\x00\xff")
    back = round_trip(shape)
    assert type(back) is Shape
    assert back == shape
    assert all(type(p) is Point for p in back.corners)
    assert type(back.origin) is Point


def test_dataclass_with_non_init_field_is_rebuilt() -> None:
    back = round_trip(WithDerived(4))
    assert type(back) is WithDerived
    assert back.double == 8


def test_nested_class_round_trip() -> None:
    back = round_trip(Outer.Inner("v"))
    assert type(back) is Outer.Inner
    assert back == Outer.Inner("v")


def test_pydantic_model_round_trip() -> None:
    customer = Customer(name="ada", tags=["a", "b"], address=Address(street="Main", number=3), balance=2.5)
    back = round_trip(customer)
    assert type(back) is Customer
    assert type(back.address) is Address
    assert back == customer


def test_pydantic_inside_dataclass_inside_list() -> None:
    order = Order(Customer(name="b", tags=[], address=Address(street="s", number=1)), {"p": Point(1, 1)})
    back = round_trip([order, {"k": order}])
    assert back == [order, {"k": order}]
    assert type(back[0]) is Order and type(back[0].customer) is Customer and type(back[0].points["p"]) is Point


def test_local_dataclass_is_refused_clearly() -> None:
    @dataclasses.dataclass
    class Local:
        a: int

    with pytest.raises(SerializationError) as caught:
        dumps(Local(1), "the result of step 'x'")
    message = str(caught.value)
    assert "the result of step 'x'" in message
    assert "inside a function" in message
    assert "module level" in message


def test_local_pydantic_model_is_refused() -> None:
    class LocalModel(BaseModel):
        a: int

    with pytest.raises(SerializationError, match="inside a function"):
        dumps({"m": LocalModel(a=1)}, "the value")


@pytest.mark.parametrize("value", [object(), {1, 2}, frozenset(), 1 + 2j, Point, [1, object()]])
def test_unserializable_values_name_what(value: Any) -> None:
    with pytest.raises(SerializationError, match="^the result of step 'charge' cannot be stored"):
        dumps(value, "the result of step 'charge'")


def test_int_too_large_for_msgpack() -> None:
    with pytest.raises(SerializationError, match="big number"):
        dumps(2**70, "big number")


def test_serialization_error_is_a_type_error() -> None:
    """Callers catching TypeError for 'cannot store this' keep working."""
    with pytest.raises(TypeError):
        dumps(object(), "x")


def ext(code: int, path: str, body: Any) -> bytes:
    return msgpack.packb(msgpack.ExtType(code, msgpack.packb([path, body], use_bin_type=True)), use_bin_type=True)


def test_unknown_ext_code_on_load() -> None:
    data = msgpack.packb(msgpack.ExtType(42, b"whatever"), use_bin_type=True)
    with pytest.raises(SerializationError, match="unknown extension type 42"):
        loads(data)


def test_unimportable_module_on_load() -> None:
    with pytest.raises(SerializationError, match="no_such_module_rt:Thing"):
        loads(ext(EXT_DATACLASS, "no_such_module_rt:Thing", {}))


def test_missing_class_on_load() -> None:
    with pytest.raises(SerializationError, match="cannot be imported"):
        loads(ext(EXT_DATACLASS, f"{__name__}:Vanished", {"a": 1}))


def test_stored_name_that_is_not_a_class() -> None:
    with pytest.raises(SerializationError, match="not a class"):
        loads(ext(EXT_DATACLASS, f"{__name__}:round_trip", {}))


def test_stored_dataclass_that_is_no_longer_one() -> None:
    with pytest.raises(SerializationError, match="not one now"):
        loads(ext(EXT_DATACLASS, f"{__name__}:Address", {"street": "s", "number": 1}))


def test_stored_model_that_is_no_longer_one() -> None:
    with pytest.raises(SerializationError, match="not one now"):
        loads(ext(EXT_PYDANTIC, f"{__name__}:Point", {"x": 1, "y": 2}))


def test_stored_dataclass_whose_fields_changed() -> None:
    with pytest.raises(SerializationError):
        loads(ext(EXT_DATACLASS, f"{__name__}:Point", {"x": 1, "z": 2}))


def test_garbage_bytes_on_load() -> None:
    with pytest.raises(SerializationError, match="cannot be read"):
        loads(b"\xc1")


# ---------------------------------------------------------------- JSON


def test_to_json_of_plain_values() -> None:
    assert from_json(to_json({"a": [1, 2.5, None, "x"]}, "output"), "output") == {"a": [1, 2.5, None, "x"]}


def test_to_json_of_dataclass_and_model() -> None:
    value = {"p": Point(1, 2), "a": Address(street="s", number=3)}
    assert from_json(to_json(value, "output"), "output") == {"p": {"x": 1, "y": 2}, "a": {"street": "s", "number": 3}}


def test_to_json_refuses_arbitrary_objects_naming_what() -> None:
    with pytest.raises(SerializationError, match="^the workflow output is not JSON-compatible"):
        to_json(object(), "the workflow output")


def test_from_json_empty_bytes_is_none() -> None:
    assert from_json(b"", "input") is None


def test_from_json_null_is_none() -> None:
    assert from_json(b"null", "input") is None


@pytest.mark.parametrize("data", [b"{", b"not json", b"\xff\xfe", b"[1,]"])
def test_from_json_invalid_names_what(data: bytes) -> None:
    with pytest.raises(SerializationError, match="^the instance input is not valid JSON"):
        from_json(data, "the instance input")


def test_a_pydantic_model_with_binary_bytes_and_a_datetime_round_trips() -> None:
    value = Attachment(name="scan", data=b"\xff\x00\xfe", sent_at=datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC))
    back = loads(dumps(value, "attachment"))
    assert type(back) is Attachment and back == value
