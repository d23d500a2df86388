"""The connection protocol both RPC endpoints build on."""

from __future__ import annotations

from aioquic.asyncio.protocol import QuicConnectionProtocol


class RpcConnectionProtocol(QuicConnectionProtocol):
    """aioquic's protocol, made safe to outlive its socket.

    aioquic keeps a timer per connection that transmits (close frames, retransmissions) even
    after we closed the UDP transport, which then fails inside asyncio. Once the transport is
    closing there is nothing left to send, so transmitting stops and the timer is dropped.
    """

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
