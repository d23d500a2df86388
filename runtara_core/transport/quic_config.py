"""QuicConfiguration for Runtara's servers and clients, with the transport tuning in one place."""

from __future__ import annotations

import ipaddress
import logging
import ssl

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from runtara_core.transport.tls import ClientTls, ServerTls

log = logging.getLogger(__name__)

# aioquic acknowledges 1 ms after a packet arrives, usually just before our answer leaves, so the
# ACK costs a datagram of its own. With a longer delay, the ACK is still pending when we next send
# data and rides along (RpcConnectionProtocol.send_soon); idle ACKs are batched. 20 ms stays under
# the 25 ms max_ack_delay both ends advertise, so loss detection is unaffected.
ACK_DELAY_S = 0.02

INTERNET_DATAGRAM_BYTES = 1200
"""QUIC's safe datagram size on any path (aioquic's default)."""
LOOPBACK_DATAGRAM_BYTES = 16 * 1024
"""On loopback (MTU 64 KiB) one datagram can carry 13 times more: a register that replays a
long history, or a large checkpoint, costs a tenth of the packets (each costs aioquic CPU)."""


def datagram_size_for(ip: str) -> int:
    """The datagram size for a path to or from ``ip``: large only where it never leaves the host."""
    try:
        loopback = ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    return LOOPBACK_DATAGRAM_BYTES if loopback else INTERNET_DATAGRAM_BYTES


def server_configuration(
    alpn: str, tls: ServerTls, idle_timeout_s: float, bound_ip: str
) -> QuicConfiguration:
    """For a server listening on ``bound_ip``: on loopback every peer is on this host."""
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=[alpn],
        idle_timeout=idle_timeout_s,
        max_datagram_size=datagram_size_for(bound_ip),
    )
    config.load_cert_chain(str(tls.cert), str(tls.key))
    return config


def client_configuration(
    alpn: str, tls: ClientTls, server_name: str, idle_timeout_s: float, server_ip: str
) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn],
        idle_timeout=idle_timeout_s,
        server_name=server_name,
        max_datagram_size=datagram_size_for(server_ip),
    )
    if tls.insecure:
        config.verify_mode = ssl.CERT_NONE
    elif tls.ca is not None:
        config.load_verify_locations(cafile=str(tls.ca))
    return config


def tune_connection(quic: QuicConnection, *, max_streams_bidi: int | None = None) -> None:
    """Apply the settings aioquic has no public knob for (private attributes, aioquic 1.x)."""
    quic._ack_delay = ACK_DELAY_S
    if max_streams_bidi is not None:
        quic._local_max_streams_bidi.value = max_streams_bidi
        quic._local_max_streams_bidi.sent = max_streams_bidi
