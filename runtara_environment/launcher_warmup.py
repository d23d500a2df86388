"""Warm the launcher up before its first fork, so every child inherits the work instead of
repeating it.

Importing a module is not all of a launch's first-time cost: OpenSSL fetches and caches its
algorithms on first use, ``abc`` fills its subclass caches, some modules are imported lazily,
asyncio creates its event loop policy. Done once here, before ``gc.freeze``, it is shared by
every child; measured per launch it is about a third of a forked launch's CPU.

Everything runs in memory: an in-memory QUIC + TLS 1.3 handshake between a client and a server
``QuicConnection`` (with an ephemeral certificate, our own client configuration and the frame
codec), the launch settings model, the asyncio policy. No socket, file or event loop is left
open for a child to inherit.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import tempfile
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.transport.quic_config import client_configuration, tune_connection
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.frame_codec import FrameDecoder, encode_frame, unpack_payload
from runtara_sdk.settings import InstanceSettings

log = logging.getLogger(__name__)

_CLIENT_ADDR = ("127.0.0.1", 40001)
_SERVER_ADDR = ("127.0.0.1", 40002)
_MAX_ROUNDS = 20


def warm_up() -> None:
    """Best effort: a failure only costs speed, never correctness, so it is logged, not raised."""
    try:
        asyncio.get_event_loop_policy()
        InstanceSettings(instance_id="warm-up", instance_token="warm-up")  # type: ignore[call-arg]
        _handshake_in_memory()
    except Exception:
        log.warning("launcher warm-up failed; forked launches will be slower", exc_info=True)


def _handshake_in_memory() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(minutes=5))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory(prefix="runtara-warm-up-") as scratch:
        ca = Path(scratch) / "ca.pem"  # the client reads its CA from a file, as a launch does
        ca.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        client_config = client_configuration(INSTANCE_ALPN, ClientTls(ca), "localhost", 5.0, _SERVER_ADDR[0])
        _exchange(client_config, certificate, key)


def _exchange(client_config: QuicConfiguration, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    server_config = QuicConfiguration(is_client=False, alpn_protocols=[INSTANCE_ALPN])
    server_config.certificate = certificate
    server_config.private_key = key
    client = QuicConnection(configuration=client_config)
    tune_connection(client)
    server = QuicConnection(
        configuration=server_config, original_destination_connection_id=client.original_destination_connection_id
    )
    clock = 0.0
    client.connect(_SERVER_ADDR, now=clock)
    stream_id: int | None = None
    echoed = False
    decoder = FrameDecoder()
    for _ in range(_MAX_ROUNDS):
        clock += 0.001
        for data, _addr in client.datagrams_to_send(now=clock):
            server.receive_datagram(data, _CLIENT_ADDR, now=clock)
        for data, _addr in server.datagrams_to_send(now=clock):
            client.receive_datagram(data, _SERVER_ADDR, now=clock)
        while (event := server.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                for payload in decoder.feed(event.data):
                    server.send_stream_data(event.stream_id, encode_frame(unpack_payload(payload)), end_stream=True)
        while (event := client.next_event()) is not None:
            if isinstance(event, HandshakeCompleted) and stream_id is None:
                stream_id = client.get_next_available_stream_id()
                client.send_stream_data(stream_id, encode_frame({"op": "warm-up", "n": 1}), end_stream=True)
            elif isinstance(event, StreamDataReceived) and event.end_stream:
                echoed = True
        if echoed:
            break
    client.close()
    server.close()
    if not echoed:
        log.warning("launcher warm-up: the in-memory handshake did not finish")
