"""The connection protocol both RPC endpoints build on."""

from __future__ import annotations

import asyncio
from typing import Any

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol

from runtara_core.errors import ConnectionLost

SEND_BUFFER_HIGH_WATER = 1 << 20
"""Bytes a stream may hold written but unacknowledged before its writer waits (``drain``):
aioquic buffers whatever it is given, so without this an upload or a fast server stream would
hold its whole payload in memory."""


class RpcConnectionProtocol(QuicConnectionProtocol):
    """aioquic's protocol, made safe to outlive its socket.

    aioquic keeps a timer per connection that transmits (close frames, retransmissions) even
    after we closed the UDP transport, which then fails inside asyncio. Once the transport is
    closing there is nothing left to send, so transmitting stops and the timer is dropped.
    """

    REPLY_GRACE_S = 0.005
    """How long a received datagram that someone will answer may wait for that answer before
    whatever else it made due (an ACK, say) is sent on its own."""

    _reply_expected = False
    _progress: asyncio.Event | None = None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        # aioquic transmits right after every datagram, before our handlers have answered: a
        # packet-building pass that usually sends nothing. Deferring to the end of the loop
        # iteration makes it one pass, and lets answers finished in the same turn share packets.
        # When the datagram started work that will send (a request being served, a response a
        # caller will follow up), the pass waits for that send, up to REPLY_GRACE_S.
        self._quic.receive_datagram(bytes(data), addr, now=self._loop.time())
        self._reply_expected = False
        self._process_events()
        if self._reply_expected:
            self._transmit_later(self.REPLY_GRACE_S)
        else:
            self._transmit_soon()
        self.wake_drainers()  # an ACK may have freed send buffer

    def expect_reply(self) -> None:
        """Called while handling a received event: this side will send something soon."""
        self._reply_expected = True

    def _transmit_later(self, delay: float) -> None:
        if self._transmit_task is None:
            self._transmit_task = self._loop.call_later(delay, self.transmit)

    def _transmit_soon(self) -> None:
        pending = self._transmit_task
        if isinstance(pending, asyncio.TimerHandle):  # a grace-period pass: now it is due
            pending.cancel()
            self._transmit_task = None
        super()._transmit_soon()

    def send_soon(self) -> None:
        """Transmit queued stream data at the end of this loop iteration, carrying any ACK we owe.

        aioquic writes an ACK only once its delay has expired; making it due now lets the ACK of
        a request ride on its response (and the ACK of a response on the next request) instead
        of costing a datagram of its own.
        """
        space = self._quic._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None:
            space.ack_at = self._loop.time()
        self._transmit_soon()

    def transmit(self) -> None:
        if self._transport is None or self._transport.is_closing():
            self.stop_timer()
            return
        super().transmit()

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None

    def _handle_timer(self) -> None:
        if self._transport is not None and self._transport.is_closing():
            self._timer = None
            return
        super()._handle_timer()

    def has_unacknowledged_data(self) -> bool:
        """Whether anything written on a stream still awaits the peer's ACK (aioquic private state)."""
        return any(
            stream.sender._buffer_stop > 0 and not stream.sender.is_finished
            for stream in self._quic._streams.values()
        )

    @property
    def gone(self) -> bool:
        """Whether the connection is over (subclasses know better)."""
        return self._transport is None or self._transport.is_closing()

    def wake_drainers(self) -> None:
        """Let every ``drain`` re-check its stream (after ACKs arrived or the connection ended)."""
        if self._progress is not None:
            self._progress.set()

    def send_buffered(self, stream_id: int) -> int | None:
        """Bytes written on a stream and not yet acknowledged (aioquic private state, 1.x);
        None once its sending half was reset (e.g. the peer sent STOP_SENDING) or discarded."""
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return None
        sender = stream.sender
        if sender._reset_error_code is not None:
            return None
        return sender._buffer_stop - sender._buffer_start

    async def drain(self, stream_id: int, high_water: int = SEND_BUFFER_HIGH_WATER) -> bool:
        """Wait until the stream holds at most ``high_water`` unacknowledged bytes.

        aioquic has no write backpressure: this polls its send buffer each time a datagram
        (carrying ACKs) arrives. Returns False if the stream's sending half was reset meanwhile
        (stop writing); raises ``ConnectionLost`` if the connection ends.
        """
        while True:
            if self.gone:
                raise ConnectionLost("the connection closed while a stream was being written")
            pending = self.send_buffered(stream_id)
            if pending is None:
                return False
            if pending <= high_water:
                return True
            if self._progress is None:
                self._progress = asyncio.Event()
            self._progress.clear()
            await self._progress.wait()
