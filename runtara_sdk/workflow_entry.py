"""``@workflow``: marks an image's entrypoint, and turns its JSON input into the declared type."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

WORKFLOW_MARK = "__runtara_workflow__"
PASS_THROUGH = (inspect.Parameter.empty, Any, object, dict, typing.Dict)


def workflow(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``async def main(ctx, input)`` as a workflow entrypoint."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"@workflow needs an async function (async def {getattr(fn, '__name__', fn)}(ctx, input))")
    setattr(fn, WORKFLOW_MARK, True)
    return fn


def is_workflow(fn: object) -> bool:
    return bool(getattr(fn, WORKFLOW_MARK, False))


def coerce_input(fn: Callable[..., Any], value: Any) -> Any:
    """The decoded JSON input as the type of the entrypoint's second parameter, if annotated
    with a dataclass, pydantic model or other concrete type. Raises ValueError if it does not fit."""
    parameters = list(inspect.signature(fn).parameters.values())
    if len(parameters) < 2:
        return value
    try:
        annotation = typing.get_type_hints(fn).get(parameters[1].name, inspect.Parameter.empty)
    except Exception:  # an annotation that does not resolve: take the input as it is
        return value
    if annotation in PASS_THROUGH:
        return value
    try:
        return TypeAdapter(annotation).validate_python(value)
    except ValidationError as error:
        raise ValueError(f"the instance input does not fit {annotation!r}: {error}") from None
