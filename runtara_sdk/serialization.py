"""How the SDK stores values: msgpack for step results, JSON where a person reads them.

Step results are msgpack (compact, binary-safe); dataclasses and pydantic models travel as
msgpack extension types naming their class, so a replay returns the same type. Workflow input
and output, custom event and signal payloads are JSON, because operators send and read them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

import msgpack
import pydantic_core
from pydantic import BaseModel

from runtara_sdk.errors import SerializationError

EXT_DATACLASS = 1
EXT_PYDANTIC = 2


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(path: str) -> type:
    """The class a stored ``module:qualname`` names (its module imported if need be)."""
    module_name, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise SerializationError(f"a stored value has type {path}, which cannot be imported: {exc}") from None
    if not isinstance(target, type):
        raise SerializationError(f"a stored value names {path}, which is not a class")
    return target


def _encode_ext(value: Any) -> msgpack.ExtType:
    cls = type(value)
    if "<locals>" in cls.__qualname__:
        raise TypeError(f"{cls.__qualname__} is defined inside a function; define it at module level so a replay can rebuild it")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        body = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        return msgpack.ExtType(EXT_DATACLASS, _pack([class_path(cls), body]))
    if isinstance(value, BaseModel):
        # Python mode keeps bytes as bytes; other leaves msgpack lacks (datetimes, UUIDs, enums)
        # go in their JSON form, which the model's validation turns back on load.
        body = msgpack.packb(
            [class_path(cls), value.model_dump(mode="python")],
            default=pydantic_core.to_jsonable_python,
            use_bin_type=True,
        )
        return msgpack.ExtType(EXT_PYDANTIC, body)
    raise TypeError(f"a {cls.__module__}.{cls.__qualname__} is not JSON-compatible, a dataclass or a pydantic model")


def _decode_ext(code: int, data: bytes) -> Any:
    if code not in (EXT_DATACLASS, EXT_PYDANTIC):
        raise SerializationError(f"stored value has unknown extension type {code}")
    path, body = _unpack(data)
    cls = resolve_class(path)
    if code == EXT_DATACLASS:
        if not dataclasses.is_dataclass(cls):
            raise SerializationError(f"{path} was stored as a dataclass but is not one now")
        return cls(**body)
    if not issubclass(cls, BaseModel):
        raise SerializationError(f"{path} was stored as a pydantic model but is not one now")
    return cls.model_validate(body)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, default=_encode_ext, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, ext_hook=_decode_ext, strict_map_key=False)


def dumps(value: Any, what: str) -> bytes:
    """msgpack bytes of ``value``; ``what`` names it in the error ("the result of step 'x'")."""
    try:
        return _pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"{what} cannot be stored: {exc}") from None


def loads(data: bytes) -> Any:
    try:
        return _unpack(data)
    except SerializationError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise SerializationError(f"a stored value cannot be read: {exc}") from None


def to_json(value: Any, what: str) -> bytes:
    """JSON bytes for a value a person will read (output, event payload)."""
    try:
        return pydantic_core.to_json(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise SerializationError(f"{what} is not JSON-compatible: {exc}") from None


def from_json(data: bytes, what: str) -> Any:
    """The value of JSON bytes; empty bytes mean no value (None)."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{what} is not valid JSON: {exc}") from None
