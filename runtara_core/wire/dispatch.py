"""Request dispatch: decoded frame in, response envelope out, for any handler table.

Transport-independent so it can be unit-tested and fuzzed without a socket: every failure
(unknown op, invalid field, handler error) becomes an error envelope, never an exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from runtara_core.errors import InternalError, RuntaraError, UnknownOp
from runtara_core.wire.envelope import error_response, ok_response, parse_request
from runtara_core.wire.messages import Message, Request, validate_message

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Request)
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Route(Generic[R, S]):
    """One op: the message type its fields are validated into and the handler that serves it.

    ``S`` is the per-connection session type the transport passes along.
    """

    request: type[R]
    handler: Callable[[R, S], Awaitable[Message | None]]


def routes(*entries: Route[Any, S]) -> dict[str, Route[Any, S]]:
    """A handler table keyed by each request type's op."""
    return {entry.request.op: entry for entry in entries}


async def dispatch(table: Mapping[str, Route[Any, S]], message: Any, session: S) -> dict[str, Any]:
    """Serve one decoded request; always returns a response envelope."""
    op = "?"
    try:
        op, fields = parse_request(message)
        route = table.get(op)
        if route is None:
            known = ", ".join(sorted(table)) or "(none yet)"
            raise UnknownOp(f"unknown op {op[:64]!r}; this server serves: {known}")
        request = validate_message(route.request, fields, op)
        result = await route.handler(request, session)
        return ok_response(result.to_wire() if result is not None else None)
    except RuntaraError as error:
        return error_response(error)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("handler for op %r failed", op)
        return error_response(
            InternalError(f"the server failed while handling {op!r}; details are in its log")
        )
