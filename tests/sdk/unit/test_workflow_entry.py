"""``@workflow`` and turning the JSON input into the entrypoint's declared type.

This module uses ``from __future__ import annotations``: every annotation below is a string
that ``coerce_input`` must resolve.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest
from pydantic import BaseModel

from runtara_sdk.workflow_entry import coerce_input, is_workflow, workflow


@dataclasses.dataclass
class OrderIn:
    customer: str
    amount: float
    items: list[str] = dataclasses.field(default_factory=list)


class Address(BaseModel):
    city: str


class CustomerIn(BaseModel):
    name: str
    address: Address


async def untyped(ctx, input):  # type: ignore[no-untyped-def]
    return input


async def as_dict(ctx: Any, input: dict) -> Any:  # type: ignore[type-arg]
    return input


async def as_typing_dict(ctx: Any, input: typing.Dict) -> Any:  # type: ignore[type-arg]
    return input


async def as_any(ctx: Any, input: Any) -> Any:
    return input


async def as_object(ctx: Any, input: object) -> Any:
    return input


async def as_dataclass(ctx: Any, order: OrderIn) -> Any:
    return order


async def as_model(ctx: Any, customer: CustomerIn) -> Any:
    return customer


async def as_int_list(ctx: Any, numbers: list[int]) -> Any:
    return numbers


async def as_optional(ctx: Any, order: OrderIn | None) -> Any:
    return order


async def only_ctx(ctx: Any) -> Any:
    return None


async def unresolvable(ctx: Any, input: NotDefinedAnywhere) -> Any:  # type: ignore[name-defined]  # noqa: F821
    return input


# ---------------------------------------------------------------- @workflow


def test_workflow_marks_an_async_function() -> None:
    async def main(ctx: Any, input: Any) -> None: ...

    assert not is_workflow(main)
    assert workflow(main) is main
    assert is_workflow(main)


def test_workflow_refuses_a_sync_function() -> None:
    with pytest.raises(TypeError, match="async"):

        @workflow
        def main(ctx: Any, input: Any) -> None: ...


def test_is_workflow_of_other_things() -> None:
    assert not is_workflow(None)
    assert not is_workflow(untyped)


# ---------------------------------------------------------------- coerce_input


@pytest.mark.parametrize("fn", [untyped, as_dict, as_typing_dict, as_any, as_object, only_ctx, unresolvable])
@pytest.mark.parametrize("value", [None, {"a": [1]}, [1, 2], "text"])
def test_pass_through(fn: Any, value: Any) -> None:
    assert coerce_input(fn, value) is value


def test_dataclass_input_is_built() -> None:
    order = coerce_input(as_dataclass, {"customer": "ada", "amount": 12.5, "items": ["a"]})
    assert type(order) is OrderIn
    assert order == OrderIn("ada", 12.5, ["a"])


def test_dataclass_default_fields() -> None:
    assert coerce_input(as_dataclass, {"customer": "ada", "amount": 1}) == OrderIn("ada", 1.0, [])


def test_pydantic_input_is_built() -> None:
    customer = coerce_input(as_model, {"name": "ada", "address": {"city": "Oslo"}})
    assert type(customer) is CustomerIn
    assert type(customer.address) is Address
    assert customer.address.city == "Oslo"


def test_generic_annotation_is_validated() -> None:
    assert coerce_input(as_int_list, [1, 2]) == [1, 2]
    with pytest.raises(ValueError):
        coerce_input(as_int_list, {"not": "a list"})


def test_optional_dataclass_accepts_none() -> None:
    assert coerce_input(as_optional, None) is None
    assert coerce_input(as_optional, {"customer": "c", "amount": 0}) == OrderIn("c", 0.0)


def test_non_string_annotation_is_used_too() -> None:
    async def main(ctx: Any, order: Any) -> Any: ...

    main.__annotations__ = {"ctx": Any, "order": OrderIn}
    assert coerce_input(main, {"customer": "x", "amount": 2}) == OrderIn("x", 2.0)


def test_mismatching_input_names_type_and_field() -> None:
    with pytest.raises(ValueError) as caught:
        coerce_input(as_dataclass, {"customer": "ada"})
    message = str(caught.value)
    assert message.startswith("the instance input does not fit")
    assert "OrderIn" in message
    assert "amount" in message


def test_mismatching_nested_model_input() -> None:
    with pytest.raises(ValueError, match="city"):
        coerce_input(as_model, {"name": "ada", "address": {}})


def test_none_for_a_required_dataclass_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        coerce_input(as_dataclass, None)
