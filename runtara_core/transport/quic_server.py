"""QUIC RPC server: one bidirectional stream per request, plus server-initiated push streams.

A thin adapter around aioquic. It handles stream events itself instead of using aioquic's
stream readers (which are never released: one leak per RPC), feeds bytes to the pure frame
codec, and hands whole requests to ``dispatch`` with the connection's ``Session``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from runtara_core.config import Settings
from runtara_core.errors import BadRequest, FrameTooLarge, InternalError, InvalidState, RuntaraError
from runtara_core.transport.quic_protocol import RpcConnectionProtocol
from runtara_core.transport.quic_config import server_configuration, tune_connection
from runtara_core.transport.tls import ServerTls
from runtara_core.transport.udp_socket import bound_server_socket
from runtara_core.wire.dispatch import Route, dispatch
from runtara_core.wire.envelope import error_response
from runtara_core.wire.frame_codec import SingleFrameReader, encode_frame
from runtara_core.wire.messages import Message

log = logging.getLogger(__name__)

# Application error code sent with STOP_SENDING / RESET_STREAM when we refuse a stream.
STREAM_REFUSED = 0x1
SHUTTING_DOWN = InvalidState("the server is shutting down; retry once it is back")
_INCOMPLETE = object()


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
    """How long a request may take to arrive in full after its first bytes."""

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_frame_bytes=settings.max_frame_bytes,
            max_streams_per_connection=settings.max_streams_per_connection,
            idle_timeout_s=settings.idle_timeout_s,
            max_buffered_bytes_per_connection=settings.max_buffered_bytes_per_connection,
            max_connections=settings.max_connections,
            request_arrival_timeout_s=settings.request_arrival_timeout_s,
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


class RpcServerProtocol(RpcConnectionProtocol):
    def __init__(self, quic: QuicConnection, *, server: RpcServer, **_: Any) -> None:
        super().__init__(quic)
        tune_connection(quic, max_streams_bidi=server.limits.max_streams_per_connection)
        self._server = server
        self._readers: dict[int, SingleFrameReader] = {}
        self._arrival_deadlines: dict[int, asyncio.TimerHandle] = {}
        self._buffered = 0
        self._refused: set[int] = set()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.terminated = False
        self.session = Session(self)
        # A peer that starts a handshake and never finishes would hold a connection slot.
        self._handshake_deadline: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            server.limits.handshake_timeout_s, self._handshake_expired
        )

    # -- events -------------------------------------------------------------------------------

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, events.StreamReset):
            self._abandon(event.stream_id)  # the request will never arrive in full
        elif isinstance(event, events.StopSendingReceived):
            # The client no longer wants the answer; ignore the rest of a request still arriving.
            still_arriving = event.stream_id in self._readers
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
        try:
            message = self._collect(stream_id, event.data, event.end_stream)
        except RuntaraError as error:
            self._refuse(stream_id, error, ended=event.end_stream)
            return
        if message is _INCOMPLETE:
            return
        if self._server.draining:
            self._respond(stream_id, error_response(SHUTTING_DOWN))
            return
        task = asyncio.ensure_future(self._serve(stream_id, message))
        self.expect_reply()
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _t, sid=stream_id: self._tasks.pop(sid, None))

    def _collect(self, stream_id: int, data: bytes, end_stream: bool) -> Any:
        """Buffer a request's bytes; return the decoded request once the stream ends."""
        budget = self._server.limits.max_buffered_bytes_per_connection
        if self._buffered + len(data) > budget:
            raise FrameTooLarge(
                f"this connection already holds {self._buffered} bytes of unfinished requests "
                f"and the limit is {budget}; send large requests fewer at a time"
            )
        reader = self._readers.get(stream_id)
        if reader is None:
            reader = self._readers[stream_id] = SingleFrameReader(self._server.limits.max_frame_bytes)
            if not end_stream:
                self._arrival_deadlines[stream_id] = asyncio.get_running_loop().call_later(
                    self._server.limits.request_arrival_timeout_s, self._arrival_expired, stream_id
                )
        self._buffered += len(data)
        reader.feed(data)
        if not end_stream:
            return _INCOMPLETE
        self._drop_reader(stream_id)
        return reader.finish()

    def _drop_reader(self, stream_id: int) -> None:
        reader = self._readers.pop(stream_id, None)
        if reader is not None:
            self._buffered -= reader.received
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

    def _refuse(self, stream_id: int, error: RuntaraError, *, ended: bool) -> None:
        """Answer a malformed or oversized request with an error and stop reading the stream.

        DESIGN section 2 says the stream is reset: we reset the client's sending half
        (STOP_SENDING) and still answer on ours, since resetting ours would discard the error.
        """
        self._drop_reader(stream_id)
        if not ended:
            self._refused.add(stream_id)
            self._quic.stop_stream(stream_id, STREAM_REFUSED)
        log.debug("refused stream %d: %s", stream_id, error)
        self._respond(stream_id, error_response(error))

    async def _serve(self, stream_id: int, message: Any) -> None:
        response = await dispatch(self._server.routes, message, self.session)
        self._respond(stream_id, response)

    def _respond(self, stream_id: int, response: dict[str, Any]) -> None:
        if self.terminated:
            return
        try:
            frame = encode_frame(response, self._server.limits.max_frame_bytes)
        except RuntaraError as error:
            log.error("response on stream %d cannot be sent: %s", stream_id, error)
            frame = encode_frame(error_response(InternalError(f"response could not be sent: {error.message}")))
        try:
            self._quic.send_stream_data(stream_id, frame, end_stream=True)
        except (RuntimeError, ValueError) as exc:  # the client reset or stopped the stream
            log.debug("response on stream %d dropped: %s", stream_id, exc)
            return
        self.send_soon()

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
        task = self._tasks.pop(stream_id, None)
        if task is not None:
            task.cancel()

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
