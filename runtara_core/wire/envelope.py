"""The request/response envelope of DESIGN section 2.

Request ``{"op": str, ...fields}``; response ``{"ok": true, ...fields}`` or
``{"ok": false, "error": {"code": str, "message": str}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runtara_core.errors import BadRequest, InternalError, RuntaraError, error_from_wire


def parse_request(message: Any) -> tuple[str, dict[str, Any]]:
    """Split an untrusted decoded frame into its op and fields."""
    if not isinstance(message, dict):
        raise BadRequest(
            f"a request must be a msgpack map with an 'op' field, got {type(message).__name__}"
        )
    op = message.get("op")
    if op is None:
        raise BadRequest("missing field 'op'")
    if not isinstance(op, str):
        raise BadRequest(f"field 'op' must be a string, got {type(op).__name__}")
    return op, message


def ok_response(fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"ok": True}
    if fields:
        response.update(fields)
    return response


def error_response(error: RuntaraError) -> dict[str, Any]:
    return {"ok": False, "error": {"code": str(error.code), "message": error.message}}


def parse_response(message: Any) -> dict[str, Any]:
    """Return the fields of a successful response; raise the typed error of a failed one."""
    if not isinstance(message, dict) or not isinstance(message.get("ok"), bool):
        raise InternalError("server sent a response without a boolean 'ok' field")
    if message["ok"]:
        return message
    error = message.get("error")
    if not isinstance(error, dict):
        raise InternalError("server sent a failed response without an 'error' map")
    code, text = error.get("code"), error.get("message")
    raise error_from_wire(str(code), str(text))
