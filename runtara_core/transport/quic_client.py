"""QUIC RPC client: one long-lived connection, concurrent RPCs on separate streams.

Keeps its connection alive with pings, notices a dead or closed connection, fails the RPCs
that were in flight with ``ConnectionLost``, and reconnects in the background with capped
exponential backoff. Server pushes arrive through ``on_push``. Built on the aioquic pitfalls in
``shared/reference/aioquic-notes.md``: our own handshake future instead of ``wait_connected``,
our own stream bookkeeping instead of aioquic's leaking readers, a loopback-bound socket that
we close ourselves, and handshake failures surfaced with their reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode

from runtara_core.errors import (
    ConnectionLost,
    HandshakeError,
    RequestTimeout,
    RuntaraError,
    TransportError,
)
from runtara_core.transport.quic_protocol import RpcConnectionProtocol
from runtara_core.transport.quic_config import client_configuration, tune_connection
from runtara_core.transport.tls import ClientTls
from runtara_core.transport.udp_socket import literal_address, resolve
from runtara_core.wire.envelope import parse_response
from runtara_core.wire.frame_codec import FrameDecoder, SingleFrameReader, encode_frame, unpack_payload
from runtara_core.wire.messages import Message, Request, validate_message

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
T = TypeVar("T")

STREAM_CANCELLED = 0x2
# aioquic holds at most 128 concurrent bidirectional streams per connection and queues the rest
# silently; staying under it keeps per-request timeouts honest.
DEFAULT_MAX_IN_FLIGHT = 100
UPLOAD_CHUNK_BYTES = 64 * 1024
"""An upload's body is written in pieces this size, waiting for ACKs when the stream's send
buffer is full, so a large body never sits in aioquic's buffer whole."""
_END = object()


def background(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task of the client itself, in a fresh context: it inherits nothing from the caller
    whose request happened to start it (the SDK numbers the tasks its workflows start)."""
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())


def is_server_uni(stream_id: int) -> bool:
    return stream_id & 0x3 == 0x3


# What a person should check for the TLS alerts a misconfiguration produces.
ALERT_HINTS = {
    42: "the server's certificate is not signed by the CA this client trusts (RUNTARA_TLS_CA)",
    48: "the server's certificate is not signed by the CA this client trusts (RUNTARA_TLS_CA)",
    46: "the server's certificate does not match the address dialled (check its SANs)",
    120: "the server does not serve this protocol (ALPN); is this the right port?",
}


def tls_alert(event: events.ConnectionTerminated) -> int | None:
    """The TLS alert a handshake failure carries in its QUIC error code (CRYPTO_ERROR range)."""
    alert = event.error_code - QuicErrorCode.CRYPTO_ERROR
    return alert if 0 <= alert < 0x100 else None


def describe_termination(event: events.ConnectionTerminated) -> str:
    """A sentence for why a connection ended; TLS alerts carry the real handshake reason."""
    reason = event.reason_phrase or "no reason given"
    alert = tls_alert(event)
    if alert is not None:
        hint = ALERT_HINTS.get(alert)
        return f"TLS handshake refused (alert {alert}): {reason}" + (f": {hint}" if hint else "")
    if event.error_code == QuicErrorCode.CONNECTION_REFUSED:
        return f"connection refused by the server: {reason}"
    if event.error_code == QuicErrorCode.APPLICATION_ERROR and not event.reason_phrase:
        # An application close before the handshake is confirmed travels without its reason.
        return "connection closed by the server early in the handshake (is it shutting down?)"
    return f"connection closed (QUIC error 0x{event.error_code:x}): {reason}"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    request_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_frame_bytes: int = 16 * 1024 * 1024
    idle_timeout_s: float = 60.0
    keepalive_s: float = 5.0
    keepalive_timeout_s: float = 3.0
    reconnect_initial_s: float = 0.05
    reconnect_max_s: float = 2.0


class _Call:
    """A unary call or an upload: one response frame awaited on ``future``."""

    __slots__ = ("reader", "future", "stopped")

    def __init__(self, max_frame_bytes: int) -> None:
        self.reader = SingleFrameReader(max_frame_bytes)
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.stopped = False  # the server sent STOP_SENDING: it wants no more of the body

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class _Stream:
    """A server stream: every decoded frame queued for the iterating caller, then ``_END``."""

    __slots__ = ("decoder", "queue")

    def __init__(self, max_frame_bytes: int) -> None:
        self.decoder = FrameDecoder(max_frame_bytes)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def fail(self, error: BaseException) -> None:
        self.queue.put_nowait(error)


class _ClientProtocol(RpcConnectionProtocol):
    """One connection's stream bookkeeping; the ``RpcClient`` owns reconnects."""

    def __init__(
        self,
        quic: QuicConnection,
        *,
        max_frame_bytes: int,
        on_push: Callable[[Any], None],
        on_terminated: Callable[[_ClientProtocol], None],
    ) -> None:
        super().__init__(quic)
        tune_connection(quic)
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.termination: str | None = None
        self._max_frame = max_frame_bytes
        self._on_push = on_push
        self._on_terminated = on_terminated
        self._pending: dict[int, _Call | _Stream] = {}
        self._pushes: dict[int, SingleFrameReader] = {}
        self._credit = asyncio.Event()

    @property
    def alive(self) -> bool:
        return self.termination is None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            if not self.handshake.done():
                self.handshake.set_result(None)
        elif isinstance(event, events.StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, events.StreamReset):
            self._stream_reset(event.stream_id)
        elif isinstance(event, events.StopSendingReceived):
            entry = self._pending.get(event.stream_id)
            if isinstance(entry, _Call):
                entry.stopped = True  # an upload the server refused: stop writing, await the answer
                self.wake_drainers()
        elif isinstance(event, events.ConnectionTerminated):
            self._terminate(
                describe_termination(event),
                HandshakeError if tls_alert(event) is not None else ConnectionLost,
            )

    def error_received(self, exc: Exception) -> None:
        """ICMP errors on the connected socket: nobody listens at the address."""
        if not self.handshake.done():
            self._terminate(f"{exc.strerror or exc} (is the server running?)", ConnectionLost)

    def _stream_data(self, event: events.StreamDataReceived) -> None:
        stream_id = event.stream_id
        entry = self._pending.get(stream_id)
        if isinstance(entry, _Call):
            future = entry.future
            try:
                entry.reader.feed(event.data)
                if event.end_stream:
                    del self._pending[stream_id]
                    message = entry.reader.finish()
                    if not future.done():
                        future.set_result(message)
                        self.expect_reply()  # callers usually follow up: our ACK rides on that
            except RuntaraError as error:
                self._pending.pop(stream_id, None)
                entry.fail(TransportError(f"malformed response from server: {error.message}"))
            return
        if isinstance(entry, _Stream):
            try:
                for payload in entry.decoder.feed(event.data):
                    entry.queue.put_nowait(unpack_payload(payload))
                if event.end_stream:
                    del self._pending[stream_id]
                    entry.decoder.check_complete()
                    entry.queue.put_nowait(_END)
            except RuntaraError as error:
                self._pending.pop(stream_id, None)
                entry.fail(TransportError(f"malformed response from server: {error.message}"))
            return
        if is_server_uni(stream_id):
            push_reader = self._pushes.setdefault(stream_id, SingleFrameReader(self._max_frame))
            try:
                push_reader.feed(event.data)
                if not event.end_stream:
                    return
                del self._pushes[stream_id]
                message = push_reader.finish()
            except RuntaraError as error:
                self._pushes.pop(stream_id, None)
                log.warning("dropped a malformed push from the server: %s", error.message)
                return
            try:
                self._on_push(message)
            except Exception:
                log.exception("push handler failed")

    def _stream_reset(self, stream_id: int) -> None:
        self._pushes.pop(stream_id, None)
        entry = self._pending.pop(stream_id, None)
        if entry is not None:
            entry.fail(ConnectionLost("the server reset the request stream"))

    def _terminate(self, reason: str, error_type: type[TransportError]) -> None:
        if self.termination is not None:
            return
        self.termination = reason
        if not self.handshake.done():
            self.handshake.set_exception(error_type(reason))
            self.handshake.exception()  # retrieved here; connect() re-raises it if awaited
        for entry in self._pending.values():
            entry.fail(ConnectionLost(f"connection lost mid-request: {reason}"))
        self._pending.clear()
        self._pushes.clear()
        self._credit.set()  # wake requests waiting for stream credit: they fail now
        self.wake_drainers()  # and uploads waiting for send buffer
        if self._transport is not None:
            self._transport.close()  # aioquic never closes it (pitfall 1)
        self.stop_timer()
        self._on_terminated(self)

    def _has_stream_credit(self) -> bool:
        """Whether the server allows one more stream now (aioquic 1.x private state).

        aioquic queues a stream opened beyond the server's limit and still sends frames for it
        if it is reset, which the server rightly treats as a protocol violation; so a request
        opens its stream only when the server has granted credit for it.
        """
        quic = self._quic
        return quic._local_next_stream_id_bidi // 4 < quic._remote_max_streams_bidi

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if self._has_stream_credit():
            self._credit.set()  # a MAX_STREAMS update may have arrived

    async def _await_stream_credit(self) -> None:
        while not self._has_stream_credit():
            if self.termination is not None:
                raise ConnectionLost(self.termination)
            self._credit.clear()
            await self._credit.wait()

    @property
    def gone(self) -> bool:
        return self.termination is not None

    async def _open(self, entry: _Call | _Stream, frame: bytes, end_stream: bool) -> int:
        await self._await_stream_credit()
        if self.termination is not None:
            raise ConnectionLost(self.termination)
        stream_id = self._quic.get_next_available_stream_id()
        self._pending[stream_id] = entry
        self._quic.send_stream_data(stream_id, frame, end_stream=end_stream)
        self.send_soon()
        return stream_id

    def abandon(self, stream_id: int) -> None:
        """If the stream is still pending (timeout, cancellation, early exit): reset and stop it,
        so the server cancels its handler and the stream is freed."""
        if self._pending.pop(stream_id, None) is not None and self.alive:
            self._quic.reset_stream(stream_id, STREAM_CANCELLED)
            try:
                self._quic.stop_stream(stream_id, STREAM_CANCELLED)
            except ValueError:  # aioquic already discarded the stream
                pass
            self.transmit()

    async def send(self, frame: bytes) -> Any:
        """Send one request frame on a new stream and await the decoded response."""
        entry = _Call(self._max_frame)
        stream_id = await self._open(entry, frame, end_stream=True)
        try:
            return await entry.future
        finally:
            self.abandon(stream_id)

    async def upload(self, frame: bytes, body: bytes | AsyncIterable[bytes]) -> Any:
        """Send a request frame, then ``body`` raw, then end the stream; await the response.

        Writing stops early if the server answers or refuses (STOP_SENDING) before the end.
        """
        entry = _Call(self._max_frame)
        stream_id = await self._open(entry, frame, end_stream=False)
        try:
            async for chunk in _chunks(body):
                if entry.stopped or entry.future.done():
                    break
                try:
                    self._quic.send_stream_data(stream_id, chunk)
                except RuntimeError:  # the server reset our sending half (STOP_SENDING)
                    break
                self.send_soon()
                if not await self.drain(stream_id):
                    break
                await asyncio.sleep(0)  # a body already in memory must not starve the loop
            else:
                if not entry.stopped and not entry.future.done():
                    try:
                        self._quic.send_stream_data(stream_id, b"", end_stream=True)
                        self.send_soon()
                    except RuntimeError:
                        pass
            return await entry.future
        finally:
            self.abandon(stream_id)

    async def open_stream(self, frame: bytes) -> tuple[int, _Stream]:
        """Send a request frame on a new stream and return the queue its responses arrive on."""
        entry = _Stream(self._max_frame)
        return await self._open(entry, frame, end_stream=True), entry

    def shutdown(self, reason: str) -> None:
        if self.alive:
            self.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase=reason)
            self._terminate(f"closed by client: {reason}", ConnectionLost)


async def _chunks(body: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """An upload body as pieces of at most ``UPLOAD_CHUNK_BYTES``."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        view = memoryview(body)
        for start in range(0, len(view), UPLOAD_CHUNK_BYTES):
            yield bytes(view[start : start + UPLOAD_CHUNK_BYTES])
        return
    async for piece in body:
        view = memoryview(piece)
        for start in range(0, len(view), UPLOAD_CHUNK_BYTES):
            yield bytes(view[start : start + UPLOAD_CHUNK_BYTES])


class RpcClient:
    """A client of one Runtara QUIC service (one ALPN, one server address).

    Invariant: ``_ready`` is set exactly when the client is closed or holds a live connection
    whose ``on_connected`` hook has completed; callers wait on it and re-check.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        alpn: str,
        tls: ClientTls,
        options: ClientOptions = ClientOptions(),
        on_push: Callable[[Any], None] | None = None,
        on_connected: Callable[[RpcClient], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.alpn = alpn
        self.options = options
        self._tls = tls
        self._on_push = on_push or (lambda _m: None)
        self._on_connected = on_connected
        self._protocol: _ClientProtocol | None = None
        self._ready = asyncio.Event()
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._started = False
        self._reconnector: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[bool] | None = None
        self._closed = False
        self.last_error: str | None = None
        self.connections_made = 0

    # -- connection management -------------------------------------------------------------

    async def connect(self) -> None:
        """Connect now; raises ``HandshakeError`` or ``TransportError`` with the reason.

        Only after a first successful connect does the client reconnect on its own.
        """
        if self._started:
            return
        try:
            async with asyncio.timeout(self.options.connect_timeout_s):
                await self._establish()
        except TimeoutError:
            detail = f"; last error: {self.last_error}" if self.last_error else ""
            raise TransportError(
                f"no answer from {self.host}:{self.port} within "
                f"{self.options.connect_timeout_s:g}s (is the server running?){detail}"
            ) from None
        self._started = True
        self._keepalive = background(self._keep_alive())

    async def _establish(self) -> None:
        if self._tls.insecure:
            log.warning(
                "TLS verification is OFF (RUNTARA_TLS_INSECURE): connecting to %s:%d without "
                "checking the server's certificate",
                self.host,
                self.port,
            )
        loop = asyncio.get_running_loop()
        family, sockaddr = literal_address(self.host, self.port) or await loop.run_in_executor(
            None, resolve, self.host, self.port
        )
        configuration = client_configuration(
            self.alpn, self._tls, self.host, self.options.idle_timeout_s, sockaddr[0]
        )
        quic = QuicConnection(configuration=configuration)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _ClientProtocol(
                quic,
                max_frame_bytes=self.options.max_frame_bytes,
                on_push=self._on_push,
                on_terminated=self._connection_terminated,
            ),
            family=family,
            remote_addr=sockaddr[:2] if family == socket.AF_INET else sockaddr,
        )
        try:
            protocol.connect(transport.get_extra_info("peername"))
            await protocol.handshake
            if self._closed:
                raise TransportError("client is closed")
            self._protocol = protocol
            self.connections_made += 1
            if self._on_connected is not None:
                await self._on_connected(self)
            if not protocol.alive or self._protocol is not protocol:
                raise ConnectionLost(f"connection lost while setting up: {protocol.termination}")
        except BaseException as exc:
            if self._protocol is protocol:
                self._protocol = None
            self.last_error = str(exc) or type(exc).__name__
            protocol.shutdown("connect failed")
            transport.close()
            raise
        self._ready.set()

    def _connection_terminated(self, protocol: _ClientProtocol) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self.last_error = protocol.termination
        if self._closed:
            return
        self._ready.clear()
        if self._started:
            log.warning(
                "lost connection to %s:%d: %s; reconnecting", self.host, self.port, protocol.termination
            )
            self._start_reconnecting()

    def _start_reconnecting(self) -> None:
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = background(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self.options.reconnect_initial_s
        while not self._closed and self._protocol is None:
            try:
                async with asyncio.timeout(self.options.connect_timeout_s):
                    await self._establish()
                log.info("reconnected to %s:%d", self.host, self.port)
                return
            except Exception as exc:  # keep trying whatever went wrong; calls time out meanwhile
                self.last_error = str(exc) or type(exc).__name__
                log.debug("reconnect to %s:%d failed: %s", self.host, self.port, self.last_error)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.options.reconnect_max_s)

    async def _keep_alive(self) -> None:
        """Ping so the idle timeout never fires and a dead server is noticed within seconds."""
        while not self._closed:
            await asyncio.sleep(self.options.keepalive_s)
            await self.probe()

    async def probe(self) -> bool:
        """Ping the server; drop the connection (and so reconnect) if it does not answer."""
        protocol = self._protocol
        if protocol is None:
            return False
        try:
            async with asyncio.timeout(self.options.keepalive_timeout_s):
                await protocol.ping()
            return True
        except (TimeoutError, ConnectionError):
            protocol.shutdown("server did not answer a ping")
            return False

    def _probe_soon(self) -> None:
        """One background probe at a time, however many requests time out."""
        if self.connected and (self._probe is None or self._probe.done()):
            self._probe = background(self.probe())

    async def close(self) -> None:
        self._closed = True
        for task in (self._keepalive, self._reconnector, self._probe):
            if task is not None:
                task.cancel()
        if self._protocol is not None:
            self._protocol.shutdown("client closed")
            self._protocol = None
        self._ready.set()  # wake waiting calls: they see the client is closed

    async def __aenter__(self) -> RpcClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.alive

    # -- requests --------------------------------------------------------------------------

    async def call(self, request: Request | dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Send one request and return the response fields; raise its typed error if it failed.

        The timeout covers waiting for a connection, for an in-flight slot and for the answer.
        """
        body = request.to_wire() if isinstance(request, Request) else request
        frame = encode_frame(body, self.options.max_frame_bytes)
        try:
            return await self._exchange(frame, timeout_s)
        except RequestTimeout as timeout:
            raise RequestTimeout(f"no response to {body.get('op', '?')!r}: {timeout.args[0]}") from None

    async def send_raw(self, data: bytes, timeout_s: float | None = None) -> dict[str, Any]:
        """Send arbitrary bytes as a request stream (for protocol tests and fuzzing)."""
        return await self._exchange(data, timeout_s)

    async def _exchange(self, frame: bytes, timeout_s: float | None) -> dict[str, Any]:
        timeout = timeout_s if timeout_s is not None else self.options.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with self._slots:
                    protocol = await self._live_protocol()
                    return parse_response(await protocol.send(frame))
        except TimeoutError:
            reason = "" if self.connected else f"; not connected: {self.last_error}"
            self._probe_soon()  # a silent server would otherwise hold every call until timeout
            raise RequestTimeout(
                f"nothing from {self.host}:{self.port} within {timeout:g}s{reason}"
            ) from None

    async def _live_protocol(self) -> _ClientProtocol:
        while True:
            await self._ready.wait()
            if self._closed:
                raise TransportError("client is closed")
            protocol = self._protocol
            if protocol is not None and protocol.alive:
                return protocol
            self._ready.clear()  # stale: the termination callback has not run yet

    async def request(self, request: Request, response_type: type[M], timeout_s: float | None = None) -> M:
        """``call`` with the response validated into ``response_type``."""
        fields = await self.call(request, timeout_s)
        fields.pop("ok", None)
        return validate_message(response_type, fields, f"response to {request.op}")

    async def call_on_connection(self, request: Request) -> dict[str, Any]:
        """Send on the connection being set up, without waiting for readiness (for ``on_connected``)."""
        protocol = self._protocol
        if protocol is None or not protocol.alive:
            raise ConnectionLost("not connected")
        frame = encode_frame(request.to_wire(), self.options.max_frame_bytes)
        async with asyncio.timeout(self.options.request_timeout_s):
            return parse_response(await protocol.send(frame))

    async def upload(
        self,
        request: Request | dict[str, Any],
        body: bytes | AsyncIterable[bytes],
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Send a request frame followed by ``body`` as raw bytes (an upload route), return the
        response fields; raise its typed error if it failed.

        The body is written in chunks as the server acknowledges them, so memory stays bounded
        whatever its size. The timeout covers the whole exchange (connection, slot, body and
        answer): callers should scale it with the body size. If the server refuses early
        (``FRAME_TOO_LARGE``, an unknown op), writing stops and its error is raised.
        """
        message = request.to_wire() if isinstance(request, Request) else request
        frame = encode_frame(message, self.options.max_frame_bytes)
        timeout = timeout_s if timeout_s is not None else self.options.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                async with self._slots:
                    protocol = await self._live_protocol()
                    return parse_response(await protocol.upload(frame, body))
        except TimeoutError:
            reason = "" if self.connected else f"; not connected: {self.last_error}"
            self._probe_soon()
            raise RequestTimeout(
                f"upload {message.get('op', '?')!r} to {self.host}:{self.port} did not complete "
                f"within {timeout:g}s{reason}"
            ) from None

    def stream(
        self, request: Request | dict[str, Any], timeout_s: float | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Send a request to a server-stream route; iterate the fields of each ok frame.

        An error frame raises its typed error; the iteration ends when the server ends the
        stream. Opening the stream (connection and in-flight slot) is bounded by the request
        timeout; after that ``timeout_s``, if given, bounds the wait for each next frame
        (``RequestTimeout``), and by default there is none (a watch may last hours). Losing the
        connection raises ``ConnectionLost`` at once. Stopping early (``break``, ``aclose()``)
        resets the stream so the server cancels its handler.
        """
        message = request.to_wire() if isinstance(request, Request) else request
        frame = encode_frame(message, self.options.max_frame_bytes)
        return self._stream(frame, str(message.get("op", "?")), timeout_s)

    async def _stream(self, frame: bytes, op: str, timeout_s: float | None) -> AsyncIterator[dict[str, Any]]:
        try:
            async with asyncio.timeout(self.options.request_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise RequestTimeout(f"could not open a stream for {op!r}: too many requests in flight") from None
        try:
            try:
                async with asyncio.timeout(self.options.request_timeout_s):
                    protocol = await self._live_protocol()
                    stream_id, entry = await protocol.open_stream(frame)
            except TimeoutError:
                raise RequestTimeout(
                    f"could not open a stream for {op!r} to {self.host}:{self.port}: "
                    f"not connected: {self.last_error}"
                ) from None
            try:
                while True:
                    try:
                        async with asyncio.timeout(timeout_s):
                            item = await entry.queue.get()
                    except TimeoutError:
                        raise RequestTimeout(f"no frame on stream {op!r} within {timeout_s:g}s") from None
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    fields = parse_response(item)
                    fields.pop("ok", None)
                    yield fields
            finally:
                protocol.abandon(stream_id)
        finally:
            self._slots.release()
