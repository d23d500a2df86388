"""Request dispatch: decoded frame in, response envelope(s) out, for any handler table.

Transport-independent so it can be unit-tested and fuzzed without a socket. ``resolve`` turns an
untrusted message into a route and a validated request (raising typed errors); the runners serve
a resolved request in one of the three RPC shapes and turn every failure (handler error,
unexpected exception) into an error envelope, never an exception. ``dispatch`` is both at once
for the unary shape.

The three shapes (DESIGN section 2: one bidirectional stream per RPC):

- ``unary``: one request frame, one response frame. ``handler(request, session)``.
- ``upload``: one request frame, then raw bytes until the client ends the stream; one response
  frame. ``handler(request, session, body)`` where ``body`` is a ``RequestBody``.
- ``server_stream``: one request frame; zero or more ok frames, possibly a last error frame.
  ``handler(request, session, out)`` where ``out`` is a ``ResponseStream``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from runtara_core.errors import BadRequest, InternalError, RuntaraError, TransportError, UnknownOp
from runtara_core.wire.envelope import error_response, ok_response, parse_request
from runtara_core.wire.messages import Message, Request, validate_message

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Request)
S = TypeVar("S")

RouteMode = Literal["unary", "upload", "server_stream"]


class RequestBody(Protocol):
    """The raw bytes that follow an upload's request frame, as they arrive.

    ``async for chunk in body`` ends when the client ends its stream; it raises a typed error
    (``BadRequest`` if the client reset the stream, ``ConnectionLost`` if the connection closed).
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class ResponseStream(Protocol):
    """Where a server-stream handler writes its ok frames."""

    @property
    def closed(self) -> bool:
        """True once the client went away (stopped reading, reset, or the connection closed)."""
        ...

    async def send(self, message: Message | Mapping[str, Any]) -> None:
        """Write one ok frame; waits while the peer is behind (backpressure).

        Raises ``ConnectionLost`` once the stream is closed.
        """
        ...


@dataclass(frozen=True, slots=True)
class Route(Generic[R, S]):
    """One op: the message type its fields are validated into, the handler that serves it and
    the RPC shape (``mode``) that decides the handler's extra argument.

    ``S`` is the per-connection session type the transport passes along.
    """

    request: type[R]
    handler: Callable[..., Awaitable[Message | None]]
    mode: RouteMode = "unary"


@dataclass(frozen=True, slots=True)
class Resolved(Generic[S]):
    """A request that parsed and validated, with the route that serves it."""

    op: str
    route: Route[Any, S]
    request: Request

    @property
    def mode(self) -> RouteMode:
        return self.route.mode


def routes(*entries: Route[Any, S]) -> dict[str, Route[Any, S]]:
    """A handler table keyed by each request type's op."""
    return {entry.request.op: entry for entry in entries}


def resolve(table: Mapping[str, Route[Any, S]], message: Any) -> Resolved[S]:
    """Parse an untrusted decoded frame, find its route and validate its fields.

    Raises a typed ``RuntaraError`` (``BadRequest``, ``UnknownOp``): the transport needs to know
    the route's mode before it decides how to read the rest of the stream.
    """
    op, fields = parse_request(message)
    route = table.get(op)
    if route is None:
        known = ", ".join(sorted(table)) or "(none yet)"
        raise UnknownOp(f"unknown op {op[:64]!r}; this server serves: {known}")
    return Resolved(op, route, validate_message(route.request, fields, op))


def stream_frame(message: Message | Mapping[str, Any] | None) -> dict[str, Any]:
    """The ok envelope for one frame a handler sends (an ``ok`` of its own is ignored)."""
    if isinstance(message, Message):
        fields: dict[str, Any] | None = message.to_wire()
    elif message is None:
        fields = None
    else:
        fields = dict(message)
        fields.pop("ok", None)
    return ok_response(fields)


async def _run(op: str, call: Callable[[], Awaitable[Any]], *, peer_may_vanish: bool) -> dict[str, Any]:
    try:
        return stream_frame(await call())
    except RuntaraError as error:
        return error_response(error)
    except asyncio.CancelledError:
        raise
    except TransportError as error:
        if not peer_may_vanish:
            log.exception("handler for op %r failed", op)
        else:  # the client went away mid-upload or mid-stream: nobody left to tell
            log.debug("client of op %r went away: %s", op, error)
        return error_response(InternalError(f"the connection failed while serving {op!r}"))
    except Exception:
        log.exception("handler for op %r failed", op)
        return error_response(
            InternalError(f"the server failed while handling {op!r}; details are in its log")
        )


def _wrong_mode(resolved: Resolved[Any], expected: RouteMode) -> dict[str, Any] | None:
    if resolved.mode == expected:
        return None
    return error_response(
        BadRequest(f"op {resolved.op!r} is a {resolved.mode} RPC and cannot be sent as a {expected} one")
    )


async def run_unary(resolved: Resolved[S], session: S) -> dict[str, Any]:
    """Serve a unary request; always returns the response envelope."""
    wrong = _wrong_mode(resolved, "unary")
    if wrong is not None:
        return wrong
    return await _run(
        resolved.op, lambda: resolved.route.handler(resolved.request, session), peer_may_vanish=False
    )


async def run_upload(resolved: Resolved[S], session: S, body: RequestBody) -> dict[str, Any]:
    """Serve an upload; always returns the one response envelope."""
    wrong = _wrong_mode(resolved, "upload")
    if wrong is not None:
        return wrong
    return await _run(
        resolved.op, lambda: resolved.route.handler(resolved.request, session, body), peer_may_vanish=True
    )


async def run_server_stream(
    resolved: Resolved[S], session: S, out: ResponseStream
) -> dict[str, Any] | None:
    """Serve a server stream; returns the last frame to send before ending the stream: the
    handler's non-None result, an error envelope, or None (end the stream with no frame)."""
    wrong = _wrong_mode(resolved, "server_stream")
    if wrong is not None:
        return wrong
    returned: list[Any] = []

    async def call() -> Any:
        result = await resolved.route.handler(resolved.request, session, out)
        returned.append(result)
        return result

    envelope = await _run(resolved.op, call, peer_may_vanish=True)
    if returned and returned[0] is None:
        return None
    return envelope


async def dispatch(table: Mapping[str, Route[Any, S]], message: Any, session: S) -> dict[str, Any]:
    """Serve one decoded unary request; always returns a response envelope."""
    try:
        resolved = resolve(table, message)
    except RuntaraError as error:
        return error_response(error)
    return await run_unary(resolved, session)
