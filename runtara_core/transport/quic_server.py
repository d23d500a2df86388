"""QUIC RPC server: one bidirectional stream per request, plus server-initiated push streams.

Each stream carries one RPC in one of three shapes (``dispatch.RouteMode``): unary (one frame
each way), upload (a request frame, then raw body bytes) or server stream (a request frame, then
frames from the server until it ends the stream). The request frame is routed as soon as it is
complete, so an upload's handler reads the body while it still arrives.

A thin adapter around aioquic. It handles stream events itself instead of using aioquic's
stream readers (which are never released: one leak per RPC), feeds bytes to the pure frame
codec, and hands whole requests to ``dispatch`` with the connection's ``Session``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from runtara_core.config import Settings
from runtara_core.errors import (
    BadRequest,
    ConnectionLost,
    FrameTooLarge,
    InternalError,
    InvalidState,
    RuntaraError,
)
from runtara_core.transport.quic_protocol import RpcConnectionProtocol
from runtara_core.transport.quic_config import server_configuration, tune_connection
from runtara_core.transport.tls import ServerTls
from runtara_core.transport.udp_socket import bound_server_socket
from runtara_core.wire.dispatch import (
    Resolved,
    Route,
    resolve,
    run_server_stream,
    run_unary,
    run_upload,
    stream_frame,
)
from runtara_core.wire.envelope import error_response
from runtara_core.wire.frame_codec import FrameDecoder, HeadFrameReader, encode_frame, unpack_payload
from runtara_core.wire.messages import Message

log = logging.getLogger(__name__)

# Application error code sent with STOP_SENDING / RESET_STREAM when we refuse a stream.
STREAM_REFUSED = 0x1
DEFAULT_MAX_UPLOAD_BYTES = 1 << 30
SHUTTING_DOWN = InvalidState("the server is shutting down; retry once it is back")


def is_client_bidi(stream_id: int) -> bool:
    return stream_id & 0x3 == 0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_frame_bytes: int = 16 * 1024 * 1024
    max_streams_per_connection: int = 128
    idle_timeout_s: float = 60.0
    max_buffered_bytes_per_connection: int = 64 * 1024 * 1024
    """Unfinished request bytes one connection may make the server hold across its streams."""
    max_connections: int = 10_000
    handshake_timeout_s: float = 10.0
    """A connection that has not completed its handshake by then is closed (frees its slot)."""
    request_arrival_timeout_s: float = 30.0
    """How long a request may take to arrive in full after its first bytes; for an upload, how
    long its body may go without progress (a long upload that keeps arriving is not cut)."""
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    """The most body bytes one upload may carry after its request frame."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_frame_bytes=settings.max_frame_bytes,
            max_streams_per_connection=settings.max_streams_per_connection,
            idle_timeout_s=settings.idle_timeout_s,
            max_buffered_bytes_per_connection=settings.max_buffered_bytes_per_connection,
            max_connections=settings.max_connections,
            request_arrival_timeout_s=settings.request_arrival_timeout_s,
            max_upload_bytes=getattr(settings, "max_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES),
        )


class Session:
    """One client connection as a handler sees it: a slot for the service's own state,
    a push channel to the client, and close notification."""

    def __init__(self, protocol: RpcServerProtocol) -> None:
        self._protocol = protocol
        self.state: Any = None
        self._close_callbacks: list[Callable[[Session], None]] = []

    @property
    def closed(self) -> bool:
        return self._protocol.terminated

    def push(self, message: Message | Mapping[str, Any]) -> bool:
        """Send one frame on a new server-initiated unidirectional stream.

        Best effort: returns False if the connection is gone. Anything pushed must also
        reach the client through the request path.
        """
        return self._protocol.push(message)

    def on_close(self, callback: Callable[[Session], None]) -> None:
        self._close_callbacks.append(callback)

    def close(self, reason: str = "") -> None:
        self._protocol.shutdown(reason)

    def _closed(self) -> None:
        for callback in self._close_callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("session close callback failed")
        self._close_callbacks.clear()


class _Incoming:
    """A client stream until its request is handed to a handler: the head frame being read,
    then (unary and server-stream routes) the resolved request waiting for the stream's end."""

    __slots__ = ("reader", "held", "resolved", "error", "tail")

    def __init__(self, max_frame_bytes: int) -> None:
        self.reader = HeadFrameReader(max_frame_bytes)
        self.held = 0
        self.resolved: Resolved[Session] | None = None
        self.error: RuntaraError | None = None
        self.tail: FrameDecoder | None = None


class _UploadBody:
    """The server's ``RequestBody``: chunks queued as they arrive, taken by the handler.

    Queued bytes count against the connection's buffer budget until the handler takes them
    (``on_taken``), so a handler that does not keep up gets its upload refused, not the server
    swamped.
    """

    def __init__(self, on_taken: Callable[[int], None]) -> None:
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._on_taken = on_taken
        self._arrived = asyncio.Event()
        self._error: BaseException | None = None
        self.ended = False
        self.received = 0
        self.last_progress = asyncio.get_running_loop().time()

    def feed(self, data: bytes, end_stream: bool) -> None:
        if data:
            self._chunks.append(data)
            self._queued += len(data)
            self.received += len(data)
            self.last_progress = asyncio.get_running_loop().time()
        if end_stream:
            self.ended = True
        self._arrived.set()

    def fail(self, error: BaseException) -> int:
        """The body will never arrive in full; returns the queued bytes it dropped."""
        dropped = self._queued
        self._chunks.clear()
        self._queued = 0
        if self._error is None and not self.ended:
            self._error = error
        self.ended = True
        self._arrived.set()
        return dropped

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._error is not None:
                raise self._error
            if self._chunks:
                chunk = self._chunks.popleft()
                self._queued -= len(chunk)
                self._on_taken(len(chunk))
                return chunk
            if self.ended:
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()


class _StreamOut:
    """The server's ``ResponseStream``: ok frames on the request's own stream, with backpressure."""

    def __init__(self, protocol: RpcServerProtocol, stream_id: int) -> None:
        self._protocol = protocol
        self._stream_id = stream_id
        self.stopped = False

    @property
    def closed(self) -> bool:
        return self.stopped or self._protocol.terminated

    async def send(self, message: Message | Mapping[str, Any]) -> None:
        if self.closed:
            raise ConnectionLost("the client stopped reading this stream")
        frame = encode_frame(stream_frame(message), self._protocol.max_frame_bytes)
        if not self._protocol.write(self._stream_id, frame, end_stream=False):
            self.stopped = True
            raise ConnectionLost("the client stopped reading this stream")
        if not await self._protocol.drain(self._stream_id):
            self.stopped = True
            raise ConnectionLost("the client stopped reading this stream")


class RpcServerProtocol(RpcConnectionProtocol):
    def __init__(self, quic: QuicConnection, *, server: RpcServer, **_: Any) -> None:
        super().__init__(quic)
        tune_connection(quic, max_streams_bidi=server.limits.max_streams_per_connection)
        self._server = server
        self._readers: dict[int, _Incoming] = {}
        self._arrival_deadlines: dict[int, asyncio.TimerHandle] = {}
        self._bodies: dict[int, _UploadBody] = {}
        self._outputs: dict[int, _StreamOut] = {}
        self._buffered = 0
        self._refused: set[int] = set()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.terminated = False
        self.session = Session(self)
        # A peer that starts a handshake and never finishes would hold a connection slot.
        self._handshake_deadline: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            server.limits.handshake_timeout_s, self._handshake_expired
        )

    @property
    def max_frame_bytes(self) -> int:
        return self._server.limits.max_frame_bytes

    @property
    def gone(self) -> bool:
        return self.terminated

    # -- events -------------------------------------------------------------------------------

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, events.StreamReset):
            body = self._bodies.get(event.stream_id)
            if body is not None:
                # The handler is reading the body: it sees the reset as an error of its own.
                self._buffered -= body.fail(BadRequest("the client reset the upload before finishing it"))
                self._drop_deadline(event.stream_id)
            else:
                self._abandon(event.stream_id)  # the request will never arrive in full
                self._reset_sending(event.stream_id)  # nor will an answer leave
        elif isinstance(event, events.StopSendingReceived):
            # The client no longer wants the answer; ignore the rest of a request still arriving.
            body = self._bodies.get(event.stream_id)
            still_arriving = event.stream_id in self._readers or (body is not None and not body.ended)
            self._abandon(event.stream_id)
            if still_arriving:
                self._refused.add(event.stream_id)
        elif isinstance(event, events.HandshakeCompleted):
            self._cancel_handshake_deadline()
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated()

    def _handshake_expired(self) -> None:
        self._handshake_deadline = None
        if not self.terminated:
            timeout = self._server.limits.handshake_timeout_s
            self.refuse(f"the handshake did not complete within {timeout:g}s")

    def _cancel_handshake_deadline(self) -> None:
        if self._handshake_deadline is not None:
            self._handshake_deadline.cancel()
            self._handshake_deadline = None

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        stream_id = event.stream_id
        if stream_id in self._refused:
            if event.end_stream:
                self._refused.discard(stream_id)
            return
        if not is_client_bidi(stream_id):
            # Clients have no reason to open unidirectional streams: ask the peer to stop.
            if not event.end_stream:
                self._refused.add(stream_id)
                self._quic.stop_stream(stream_id, STREAM_REFUSED)
            return
        body = self._bodies.get(stream_id)
        if body is not None:
            self._upload_data(stream_id, body, event.data, event.end_stream)
            return
        try:
            head = self._collect(stream_id, event.data, event.end_stream)
        except RuntaraError as error:
            self._refuse(stream_id, error, ended=event.end_stream)
            return
        if head is None:
            return
        resolved, rest = head
        self._drop_reader(stream_id)
        if self._server.draining:
            self._refuse(stream_id, SHUTTING_DOWN, ended=event.end_stream)
            return
        if resolved.mode == "upload":
            body = self._start_upload(stream_id, rest, event.end_stream)
            coro: Coroutine[Any, Any, None] = self._serve_upload(stream_id, resolved, body)
        elif resolved.mode == "server_stream":
            coro = self._serve_stream(stream_id, resolved)
        else:
            coro = self._serve(stream_id, resolved)
        task = asyncio.ensure_future(coro)
        self.expect_reply()
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _t, sid=stream_id: self._task_done(sid))

    def _collect(
        self, stream_id: int, data: bytes, end_stream: bool
    ) -> tuple[Resolved[Session], bytes] | None:
        """Buffer a request's head frame and route it as soon as it is complete.

        Returns the resolved request and the bytes after its frame once it can be served: at
        once for an upload (its body follows), at the stream's end for the other shapes (for
        which any byte after the frame is a ``BadRequest``, as a stream carries one frame).
        """
        budget = self._server.limits.max_buffered_bytes_per_connection
        if self._buffered + len(data) > budget:
            raise FrameTooLarge(
                f"this connection already holds {self._buffered} bytes of unfinished requests "
                f"and the limit is {budget}; send large requests fewer at a time"
            )
        incoming = self._readers.get(stream_id)
        if incoming is None:
            incoming = self._readers[stream_id] = _Incoming(self._server.limits.max_frame_bytes)
            if not end_stream:
                self._arrival_deadlines[stream_id] = asyncio.get_running_loop().call_later(
                    self._server.limits.request_arrival_timeout_s, self._arrival_expired, stream_id
                )
        self._buffered += len(data)
        incoming.held += len(data)
        if incoming.resolved is None and incoming.error is None:
            head = incoming.reader.feed(data)
            if head is None:
                if end_stream:
                    incoming.reader.check_complete()  # raises: the stream ended early
                return None
            payload, data = head
            try:
                incoming.resolved = resolve(self._server.routes, unpack_payload(payload))
            except RuntaraError as error:
                incoming.error = error
            if incoming.resolved is not None and incoming.resolved.mode == "upload":
                return incoming.resolved, data
        if incoming.error is not None and not end_stream:
            raise incoming.error  # no need to read the rest (it may be a large body)
        # One frame per stream: the bytes after it are framing errors first (as they were when
        # the whole stream was read before decoding), then the head's own error, if any.
        if data:
            if incoming.tail is None:
                incoming.tail = FrameDecoder(self._server.limits.max_frame_bytes)
            if incoming.tail.feed(data):
                raise BadRequest("a stream carries exactly one frame; got a second one")
        if not end_stream:
            return None
        if incoming.tail is not None:
            incoming.tail.check_complete()
            raise BadRequest("a stream carries exactly one frame; got bytes after it")
        if incoming.error is not None:
            raise incoming.error
        assert incoming.resolved is not None
        return incoming.resolved, b""

    def _drop_reader(self, stream_id: int) -> None:
        incoming = self._readers.pop(stream_id, None)
        if incoming is not None:
            self._buffered -= incoming.held
        self._drop_deadline(stream_id)

    def _drop_deadline(self, stream_id: int) -> None:
        deadline = self._arrival_deadlines.pop(stream_id, None)
        if deadline is not None:
            deadline.cancel()

    def _arrival_expired(self, stream_id: int) -> None:
        """A request that stalls half-sent would hold its stream credit and buffer forever."""
        self._arrival_deadlines.pop(stream_id, None)
        if self.terminated or stream_id not in self._readers:
            return
        timeout = self._server.limits.request_arrival_timeout_s
        self._refuse(
            stream_id,
            BadRequest(f"the request did not arrive in full within {timeout:g}s; send it whole"),
            ended=False,
        )

    # -- uploads ------------------------------------------------------------------------------

    def _start_upload(self, stream_id: int, rest: bytes, ended: bool) -> _UploadBody:
        body = self._bodies[stream_id] = _UploadBody(self._body_taken)
        self._buffered += len(rest)
        body.feed(rest, ended)
        if not ended:
            self._arm_upload_deadline(stream_id, self._server.limits.request_arrival_timeout_s)
        return body

    def _body_taken(self, size: int) -> None:
        self._buffered -= size

    def _upload_data(self, stream_id: int, body: _UploadBody, data: bytes, end_stream: bool) -> None:
        limits = self._server.limits
        if body.received + len(data) > limits.max_upload_bytes:
            error = FrameTooLarge(
                f"upload exceeds the limit of {limits.max_upload_bytes} bytes (max_upload_bytes)"
            )
        elif self._buffered + len(data) > limits.max_buffered_bytes_per_connection:
            error = FrameTooLarge(
                f"this connection already holds {self._buffered} bytes of unprocessed requests "
                f"and the limit is {limits.max_buffered_bytes_per_connection}; the upload arrives "
                "faster than the server consumes it"
            )
        else:
            self._buffered += len(data)
            body.feed(data, end_stream)
            if end_stream:
                self._drop_deadline(stream_id)
            return
        self._refuse_upload(stream_id, body, error, ended=end_stream)

    def _arm_upload_deadline(self, stream_id: int, delay: float) -> None:
        self._arrival_deadlines[stream_id] = asyncio.get_running_loop().call_later(
            delay, self._upload_stalled, stream_id
        )

    def _upload_stalled(self, stream_id: int) -> None:
        """The arrival timeout applies to an upload's progress, not its total duration."""
        self._arrival_deadlines.pop(stream_id, None)
        body = self._bodies.get(stream_id)
        if self.terminated or body is None or body.ended:
            return
        timeout = self._server.limits.request_arrival_timeout_s
        idle = asyncio.get_running_loop().time() - body.last_progress
        if idle < timeout:
            self._arm_upload_deadline(stream_id, timeout - idle)
            return
        self._refuse_upload(
            stream_id, body, BadRequest(f"the upload made no progress for {timeout:g}s"), ended=False
        )

    def _refuse_upload(self, stream_id: int, body: _UploadBody, error: RuntaraError, *, ended: bool) -> None:
        """Stop an upload in progress: its handler is cancelled and the client gets ``error``."""
        self._buffered -= body.fail(error)
        task = self._tasks.pop(stream_id, None)
        if task is not None:
            task.cancel()
        self._bodies.pop(stream_id, None)
        self._refuse(stream_id, error, ended=ended)

    # -- serving ------------------------------------------------------------------------------

    def _refuse(self, stream_id: int, error: RuntaraError, *, ended: bool) -> None:
        """Answer a malformed or oversized request with an error and stop reading the stream.

        DESIGN section 2 says the stream is reset: we reset the client's sending half
        (STOP_SENDING) and still answer on ours, since resetting ours would discard the error.
        """
        self._drop_reader(stream_id)
        if not ended:
            self._refused.add(stream_id)
            try:
                self._quic.stop_stream(stream_id, STREAM_REFUSED)
            except ValueError:  # aioquic already discarded the stream
                pass
        log.debug("refused stream %d: %s", stream_id, error)
        self._respond(stream_id, error_response(error))

    def _task_done(self, stream_id: int) -> None:
        self._tasks.pop(stream_id, None)
        self._outputs.pop(stream_id, None)
        body = self._bodies.get(stream_id)
        if body is not None:
            if body.ended:
                self._bodies.pop(stream_id, None)
            elif not self.terminated:
                self._refuse_rest(stream_id)  # the handler failed or was cancelled mid-body

    async def _serve(self, stream_id: int, resolved: Resolved[Session]) -> None:
        self._respond(stream_id, await run_unary(resolved, self.session))

    async def _serve_upload(self, stream_id: int, resolved: Resolved[Session], body: _UploadBody) -> None:
        response = await run_upload(resolved, self.session, body)
        if not body.ended:
            # Answered before the body ended: the rest is not wanted (and must not be read as a
            # new request).
            self._refuse_rest(stream_id)
        self._respond(stream_id, response)

    def _refuse_rest(self, stream_id: int) -> None:
        body = self._bodies.pop(stream_id, None)
        if body is not None:
            self._buffered -= body.fail(InvalidState("the handler finished"))
        self._drop_deadline(stream_id)
        self._refused.add(stream_id)
        try:
            self._quic.stop_stream(stream_id, STREAM_REFUSED)
        except ValueError:
            pass

    async def _serve_stream(self, stream_id: int, resolved: Resolved[Session]) -> None:
        out = self._outputs[stream_id] = _StreamOut(self, stream_id)
        last = await run_server_stream(resolved, self.session, out)
        if out.stopped:
            return
        if last is None:
            self.write(stream_id, b"", end_stream=True)
        else:
            self._respond(stream_id, last)

    def write(self, stream_id: int, data: bytes, *, end_stream: bool) -> bool:
        """Queue bytes on a stream; False if the client reset or stopped it (or it is gone)."""
        if self.terminated:
            return False
        try:
            self._quic.send_stream_data(stream_id, data, end_stream=end_stream)
        except (RuntimeError, ValueError) as exc:  # the client reset or stopped the stream
            log.debug("data on stream %d dropped: %s", stream_id, exc)
            return False
        self.send_soon()
        return True

    def _respond(self, stream_id: int, response: dict[str, Any]) -> None:
        if self.terminated:
            return
        try:
            frame = encode_frame(response, self._server.limits.max_frame_bytes)
        except RuntaraError as error:
            log.error("response on stream %d cannot be sent: %s", stream_id, error)
            frame = encode_frame(error_response(InternalError(f"response could not be sent: {error.message}")))
        self.write(stream_id, frame, end_stream=True)

    def push(self, message: Message | Mapping[str, Any]) -> bool:
        if self.terminated or not self._has_push_credit():
            return False
        body = message.to_wire() if isinstance(message, Message) else dict(message)
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(
            stream_id, encode_frame(body, self._server.limits.max_frame_bytes), end_stream=True
        )
        self.send_soon()
        return True

    def _has_push_credit(self) -> bool:
        """Whether the client allows one more unidirectional stream now (aioquic private state).

        Beyond it aioquic would queue pushes in memory without bound; a push is best effort,
        so one the client has no room for is dropped.
        """
        quic = self._quic
        return quic._local_next_stream_id_uni // 4 < quic._remote_max_streams_uni

    def _abandon(self, stream_id: int) -> None:
        self._drop_reader(stream_id)
        self._refused.discard(stream_id)
        body = self._bodies.pop(stream_id, None)
        if body is not None:
            self._buffered -= body.fail(BadRequest("the client abandoned the upload"))
        out = self._outputs.pop(stream_id, None)
        if out is not None:
            out.stopped = True
        task = self._tasks.pop(stream_id, None)
        if task is not None:
            task.cancel()

    def _reset_sending(self, stream_id: int) -> None:
        """End our half of a request stream the client reset before its request arrived.

        Nothing will ever be sent on it, and a bidirectional stream only closes (giving the
        client its stream credit back) once both halves have: left open, every reset stream
        was held until the connection closed, and a client that reset 128 requests (the
        per-connection stream limit) could never send another one on that connection.
        """
        if not is_client_bidi(stream_id):
            return
        try:
            self._quic.reset_stream(stream_id, STREAM_REFUSED)
        except ValueError:  # aioquic already discarded the stream
            pass

    def shutdown(self, reason: str) -> None:
        """Close the connection now; in-flight handlers are cancelled."""
        self.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase=reason)
        self._terminated()

    def refuse(self, reason: str) -> None:
        """Turn a new connection away with a reason the client can show.

        A transport-level CONNECTION_REFUSED: an application close sent during the handshake
        reaches the peer stripped of its reason (RFC 9000 section 10.2.3).
        """
        self._quic.close(
            error_code=QuicErrorCode.CONNECTION_REFUSED,
            frame_type=QuicFrameType.PADDING,
            reason_phrase=reason,
        )
        self.transmit()
        self._terminated()

    def _terminated(self) -> None:
        if self.terminated:
            return
        self.terminated = True
        self._cancel_handshake_deadline()
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
        for deadline in self._arrival_deadlines.values():
            deadline.cancel()
        self._arrival_deadlines.clear()
        self._readers.clear()
        for body in self._bodies.values():
            body.fail(ConnectionLost("the connection closed before the upload ended"))
        self._bodies.clear()
        self._outputs.clear()
        self._buffered = 0
        self._refused.clear()
        self._server._connection_closed(self)
        self.session._closed()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    @property
    def settled(self) -> bool:
        """No request being served and every response acknowledged by the client."""
        return not self._tasks and not self.has_unacknowledged_data()


class RpcServer:
    """Serves a handler table over QUIC with one ALPN."""

    def __init__(
        self,
        *,
        alpn: str,
        routes: Mapping[str, Route[Any, Session]],
        tls: ServerTls,
        limits: ServerLimits = ServerLimits(),
        on_connect: Callable[[Session], None] | None = None,
    ) -> None:
        self.alpn = alpn
        self.routes = routes
        self.limits = limits
        self._tls = tls
        self._on_connect = on_connect
        self._listener: QuicServer | None = None
        self._connections: set[RpcServerProtocol] = set()
        self.draining = False
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (port 0 picks a free one); returns the bound address."""
        loop = asyncio.get_running_loop()
        sock = bound_server_socket(host, port)
        configuration = server_configuration(
            self.alpn, self._tls, self.limits.idle_timeout_s, sock.getsockname()[0]
        )
        listener = QuicServer(configuration=configuration, create_protocol=self._new_protocol)
        await loop.create_datagram_endpoint(lambda: listener, sock=sock)
        self._listener = listener
        self.draining = False
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        log.info("serving %s on %s:%d (UDP)", self.alpn, *self.address)
        return self.address

    def _new_protocol(self, quic: QuicConnection, **kwargs: Any) -> RpcServerProtocol:
        protocol = RpcServerProtocol(quic, server=self, **kwargs)
        self._connections.add(protocol)
        if self.draining:
            # Tell the newcomer at once instead of letting its handshake time out.
            asyncio.get_running_loop().call_soon(
                protocol.refuse, "the server is shutting down; retry once it is back"
            )
        elif len(self._connections) > self.limits.max_connections:
            log.warning("refused a connection: %d open is the limit", self.limits.max_connections)
            asyncio.get_running_loop().call_soon(
                protocol.refuse,
                f"the server has too many connections (limit {self.limits.max_connections}); "
                "retry later",
            )
        elif self._on_connect is not None:
            try:
                self._on_connect(protocol.session)
            except Exception:
                log.exception("on_connect callback failed")
        return protocol

    def _connection_closed(self, protocol: RpcServerProtocol) -> None:
        self._connections.discard(protocol)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain, then close: new connections and new RPCs are refused at once, RPCs in flight
        finish and their responses are acknowledged (bounded by ``grace_s``)."""
        listener = self._listener
        if listener is None:
            return
        self.draining = True
        deadline = time.monotonic() + grace_s
        while not all(p.settled for p in self._connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for protocol in list(self._connections):
            protocol.shutdown("server shutting down")
        self._connections.clear()
        listener.close()
        self._listener = None
        log.info("stopped serving %s", self.alpn)
