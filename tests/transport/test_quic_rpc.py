"""The QUIC adapters against a real server and client on loopback."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from runtara_core.errors import (
    ConnectionLost,
    InvalidState,
    BadRequest,
    FrameTooLarge,
    HandshakeError,
    InternalError,
    RequestTimeout,
    TransportError,
    UnknownOp,
)
from runtara_core.transport.quic_client import ClientOptions
from runtara_core.transport.quic_server import ServerLimits
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.frame_codec import encode_frame

from tests.transport.echo_service import Echo, EchoReply, HangUp, PushMe, Slow, other_ca


async def test_one_rpc(client):
    assert await client.request(Echo(text="hello"), EchoReply) == EchoReply(text="hello")


async def test_thousand_concurrent_rpcs_on_one_connection(client, server):
    texts = [f"msg-{i}-" + "x" * (i % 200) for i in range(1000)]
    replies = await asyncio.gather(*(client.call(Echo(text=t)) for t in texts))
    assert [r["text"] for r in replies] == texts
    assert client.connections_made == 1
    assert server.connection_count == 1
    # Nothing is kept per finished RPC on either side (aioquic's own readers would leak one each).
    (connection,) = server._connections
    await asyncio.sleep(0.2)  # let the last acknowledgements arrive so aioquic discards streams
    assert connection.in_flight == 0 and not connection._readers
    assert len(connection._quic._streams) < 10
    assert not client._protocol._pending and len(client._protocol._quic._streams) < 10


async def test_handler_exception_returns_internal_and_connection_survives(client):
    with pytest.raises(InternalError) as caught:
        await client.call({"op": "boom"})
    assert "kaboom" not in caught.value.message  # no internals leak to the peer
    assert (await client.call(Echo(text="still here")))["text"] == "still here"


async def test_unknown_op_and_bad_fields(client):
    with pytest.raises(UnknownOp, match="teleport"):
        await client.call({"op": "teleport"})
    with pytest.raises(BadRequest, match="field 'text'"):
        await client.call({"op": "echo", "text": 5})


async def test_malformed_bytes_get_bad_request_and_connection_survives(client):
    for garbage in (b"\x00\x00\x00\x02\xc1\xc1", b"\x00\x00", encode_frame({"a": 1}) + b"\x00", b""):
        with pytest.raises(BadRequest):
            await client.send_raw(garbage)
    assert (await client.call(Echo(text="ok")))["text"] == "ok"


async def test_oversized_frame_is_refused_and_connection_survives(start_server, make_client):
    server = await start_server(limits=ServerLimits(max_frame_bytes=1024))
    client = await make_client(server.address[1])
    with pytest.raises(FrameTooLarge, match="exceeds the limit of 1024"):
        await client.call(Echo(text="x" * 5000))
    # A header announcing a huge frame is refused before any body arrives.
    with pytest.raises(FrameTooLarge):
        await client.send_raw(struct.pack(">I", 2**31))
    assert (await client.call(Echo(text="small")))["text"] == "small"


async def test_push_delivery(server, make_client):
    pushes: list = []
    arrived = asyncio.Event()

    def on_push(message):
        pushes.append(message)
        if len(pushes) == 5:
            arrived.set()

    client = await make_client(server.address[1], on_push=on_push)
    await client.call(PushMe(count=5))
    async with asyncio.timeout(5):
        await arrived.wait()
    assert sorted(p["seq"] for p in pushes) == [0, 1, 2, 3, 4]
    assert all(p["signal"] == "pause" for p in pushes)


async def test_request_timeout_cancels_the_server_side_and_connection_survives(client, recorder):
    with pytest.raises(RequestTimeout, match="'slow'"):
        await client.call(Slow(seconds=30), timeout_s=0.2)
    async with asyncio.timeout(5):
        await recorder.cancelled.wait()  # the reset stream cancelled the handler
    assert (await client.call(Echo(text="after"))).get("text") == "after"


async def test_wrong_alpn_is_refused_at_handshake(server, make_client):
    with pytest.raises(HandshakeError, match="TLS handshake refused"):
        await make_client(server.address[1], alpn="something-else/1")


async def test_untrusted_server_is_refused(server, make_client, tmp_path):
    stranger = other_ca(tmp_path)
    with pytest.raises(HandshakeError, match="TLS handshake refused.*certificate"):
        await make_client(server.address[1], tls=ClientTls(stranger.ca_cert))


async def test_insecure_mode_connects_with_a_warning(server, make_client, caplog):
    with caplog.at_level(logging.WARNING):
        client = await make_client(server.address[1], tls=ClientTls(ca=None, insecure=True))
    assert (await client.call(Echo(text="x")))["text"] == "x"
    assert "TLS verification is OFF" in caplog.text


async def test_nothing_listening_fails_fast_with_a_reason(make_client):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransportError, match="server running"):
        await make_client(port)


async def test_reconnects_after_server_restart(start_server, make_client):
    server = await start_server()
    port = server.address[1]
    client = await make_client(port, options=ClientOptions(request_timeout_s=10, reconnect_max_s=0.2))
    assert (await client.call(Echo(text="before")))["text"] == "before"
    await server.stop(grace_s=0.1)
    async with asyncio.timeout(5):
        while client.connected:
            await asyncio.sleep(0.01)
    await start_server(port=port)
    assert (await client.call(Echo(text="after")))["text"] == "after"
    assert client.connections_made == 2


async def test_reconnects_after_server_vanishes_silently(start_server, make_client):
    """A server that dies without a CONNECTION_CLOSE is noticed by the keepalive ping."""
    server = await start_server()
    port = server.address[1]
    options = ClientOptions(
        request_timeout_s=10, keepalive_s=0.2, keepalive_timeout_s=0.3, reconnect_max_s=0.2
    )
    client = await make_client(port, options=options)
    assert (await client.call(Echo(text="before")))["text"] == "before"
    server._listener._transport.close()  # the socket goes away; no close frame is sent
    server._listener = None
    async with asyncio.timeout(5):
        while client.connected:
            await asyncio.sleep(0.02)
    await start_server(port=port)
    assert (await client.call(Echo(text="after")))["text"] == "after"


async def test_in_flight_rpcs_fail_with_connection_lost_when_the_server_stops(start_server, make_client):
    server = await start_server()
    client = await make_client(server.address[1])
    pending = asyncio.ensure_future(client.call(Slow(seconds=30)))
    await asyncio.sleep(0.1)
    await server.stop(grace_s=0.1)
    with pytest.raises(TransportError):
        await pending


async def test_graceful_stop_finishes_in_flight_rpcs(start_server, make_client, recorder):
    server = await start_server()
    client = await make_client(server.address[1])
    pending = asyncio.ensure_future(client.call(Slow(seconds=0.3)))
    await asyncio.sleep(0.1)
    await server.stop(grace_s=5)
    assert (await pending)["text"] == "done"
    assert recorder.finished == 1


async def test_many_connections_each_served(server, make_client):
    clients = await asyncio.gather(*(make_client(server.address[1]) for _ in range(10)))
    replies = await asyncio.gather(*(c.call(Echo(text=str(i))) for i, c in enumerate(clients)))
    assert [r["text"] for r in replies] == [str(i) for i in range(10)]


# --- regressions from the transport review: each of these once hung, leaked or lost data ------


async def test_failed_first_connect_leaves_nothing_running(server, make_client):
    async def hang_up_during_setup(client):
        await client.call_on_connection(HangUp())  # the server drops the connection mid-setup

    client = await make_client(server.address[1], on_connected=hang_up_during_setup, connect=False)
    with pytest.raises(ConnectionLost):
        await client.connect()
    await asyncio.sleep(0.5)
    assert client.connections_made == 1  # no hidden reconnect loop kept dialling
    async with asyncio.timeout(5):
        while server.connection_count:
            await asyncio.sleep(0.02)


async def test_close_wakes_calls_waiting_for_a_connection(start_server, make_client):
    server = await start_server()
    client = await make_client(server.address[1], options=ClientOptions(request_timeout_s=10, reconnect_max_s=5))
    await server.stop(grace_s=0.1)
    async with asyncio.timeout(5):
        while client.connected:
            await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(client.call(Echo(text="x")))
    await asyncio.sleep(0.2)
    await client.close()
    async with asyncio.timeout(2):
        with pytest.raises(TransportError, match="client is closed"):
            await waiting


async def test_graceful_stop_delivers_large_responses_in_flight(start_server, make_client, dev_certs, recorder):
    from runtara_core.transport.quic_server import RpcServer
    from runtara_core.transport.tls import ServerTls
    from tests.transport.echo_service import ALPN, Big, big_routes

    server = RpcServer(alpn=ALPN, routes=big_routes(recorder), tls=ServerTls(dev_certs.server_cert, dev_certs.server_key))
    await server.start("127.0.0.1", 0)
    client = await make_client(server.address[1])
    pending = asyncio.ensure_future(client.call(Big(size=2_000_000, delay_s=0.2)))
    await asyncio.sleep(0.05)
    await server.stop(grace_s=10)
    assert len((await pending)["data"]) == 2_000_000


async def test_draining_server_refuses_new_work_at_once(start_server, make_client):
    server = await start_server()
    client = await make_client(server.address[1])
    in_flight = asyncio.ensure_future(client.call(Slow(seconds=0.5)))
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(server.stop(grace_s=5))
    await asyncio.sleep(0.05)
    with pytest.raises(InvalidState, match="shutting down"):
        await client.call(Echo(text="late"))
    started = asyncio.get_running_loop().time()
    with pytest.raises(TransportError):
        await make_client(server.address[1], options=ClientOptions(connect_timeout_s=5))
    assert asyncio.get_running_loop().time() - started < 2  # told, not left to time out
    assert (await in_flight)["text"] == "done"
    await stopping


async def test_per_connection_buffer_budget_bounds_partial_requests(start_server, make_client):
    limits = ServerLimits(max_frame_bytes=1 << 20, max_buffered_bytes_per_connection=3 << 20)
    server = await start_server(limits=limits)
    client = await make_client(server.address[1])
    quic = client._protocol._quic  # a hostile client: frames started, never finished
    for _ in range(6):
        stream_id = quic.get_next_available_stream_id()
        quic.send_stream_data(stream_id, struct.pack(">I", (1 << 20) - 1) + b"y" * (900 << 10))
    client._protocol.transmit()
    (connection,) = server._connections
    await asyncio.sleep(0.5)
    assert 0 < connection.buffered_bytes <= 3 << 20
    assert (await client.call(Echo(text="fine")))["text"] == "fine"


async def test_many_timeouts_under_load_keep_the_connection(client, server):
    results = await asyncio.gather(
        *(client.call(Slow(seconds=0.05), timeout_s=0.01) for _ in range(400)), return_exceptions=True
    )
    assert all(isinstance(r, (RequestTimeout, dict)) for r in results), {type(r) for r in results}
    assert (await client.call(Echo(text="alive")))["text"] == "alive"
    assert client.connections_made == 1


async def test_sessions_report_their_end_to_the_service(dev_certs, make_client, recorder):
    from runtara_core.transport.quic_server import RpcServer, Session
    from runtara_core.transport.tls import ServerTls
    from tests.transport.echo_service import ALPN, echo_routes

    opened: list[Session] = []
    ended: list[Session] = []

    def on_connect(session: Session) -> None:
        opened.append(session)
        session.on_close(ended.append)

    server = RpcServer(
        alpn=ALPN, routes=echo_routes(recorder), tls=ServerTls(dev_certs.server_cert, dev_certs.server_key), on_connect=on_connect
    )
    await server.start("127.0.0.1", 0)
    try:
        polite = await make_client(server.address[1])
        await polite.call(Echo(text="hi"))
        await polite.close()
        hung_up = await make_client(server.address[1])
        with pytest.raises(TransportError):
            await hung_up.call(HangUp())
        await hung_up.close()  # it may have reconnected meanwhile; that session must end too
        async with asyncio.timeout(5):
            while len(ended) < len(opened):
                await asyncio.sleep(0.02)
        assert len(opened) >= 2
        assert set(ended) == set(opened) and all(s.closed for s in ended)
    finally:
        await server.stop(grace_s=0.1)


async def test_a_request_that_never_arrives_in_full_is_refused_after_the_deadline(start_server, make_client):
    server = await start_server(limits=ServerLimits(request_arrival_timeout_s=0.3))
    client = await make_client(server.address[1])
    quic = client._protocol._quic  # a stalled client: a frame header, then nothing
    for _ in range(50):
        quic.send_stream_data(quic.get_next_available_stream_id(), struct.pack(">I", 100) + b"abc")
    client._protocol.transmit()
    (connection,) = server._connections
    async with asyncio.timeout(5):
        while not connection._readers:
            await asyncio.sleep(0.01)
        while connection._readers:  # every stalled stream is refused once its deadline passes
            await asyncio.sleep(0.05)
    assert connection.buffered_bytes == 0 and not connection._arrival_deadlines
    assert (await client.call(Echo(text="fine")))["text"] == "fine"


async def test_connections_over_the_cap_are_refused_with_a_reason(start_server, make_client):
    server = await start_server(limits=ServerLimits(max_connections=2))
    first = await make_client(server.address[1])
    await make_client(server.address[1])
    with pytest.raises(TransportError, match="too many connections"):
        await make_client(server.address[1], options=ClientOptions(connect_timeout_s=5))
    assert (await first.call(Echo(text="still served")))["text"] == "still served"


async def test_client_unidirectional_streams_are_stopped_and_ignored(client, server):
    quic = client._protocol._quic
    for _ in range(20):
        quic.send_stream_data(quic.get_next_available_stream_id(is_unidirectional=True), b"x" * 1000)
    client._protocol.transmit()
    await asyncio.sleep(0.2)
    (connection,) = server._connections
    assert connection.buffered_bytes == 0 and not connection._readers
    assert (await client.call(Echo(text="ok")))["text"] == "ok"


async def test_half_open_handshakes_are_dropped_and_free_their_slots(start_server, make_client, dev_certs):
    import socket

    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    from tests.transport.echo_service import ALPN

    server = await start_server(limits=ServerLimits(max_connections=3, handshake_timeout_s=0.5))
    port = server.address[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for _ in range(3):  # the first flight of a handshake each, never continued
            quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN]))
            quic.connect(("127.0.0.1", port), now=0.0)
            first, _ = quic.datagrams_to_send(now=0.0)[0]
            raw.sendto(first, ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        assert server.connection_count == 3
        with pytest.raises(TransportError, match="too many connections"):
            await make_client(port, options=ClientOptions(connect_timeout_s=5))
        async with asyncio.timeout(5):
            while server.connection_count:
                await asyncio.sleep(0.05)
    client = await make_client(port)
    assert (await client.call(Echo(text="in"))) ["text"] == "in"


async def test_pushes_beyond_the_clients_stream_credit_are_dropped(server, make_client):
    from runtara_core.transport.quic_server import Session

    received: list = []
    client = await make_client(server.address[1], on_push=received.append)
    await client.call(Echo(text="hi"))
    (connection,) = server._connections
    session: Session = connection.session
    quic = connection._quic
    credit = quic._remote_max_streams_uni - quic._local_next_stream_id_uni // 4
    sent = [session.push({"n": n}) for n in range(credit + 50)]
    assert sent.count(False) >= 50  # not queued in memory without bound
    async with asyncio.timeout(5):
        while len(received) < sent.count(True):
            await asyncio.sleep(0.02)
    assert (await client.call(Echo(text="ok")))["text"] == "ok"


def test_large_datagrams_only_where_the_path_never_leaves_the_host():
    from runtara_core.transport.quic_config import (
        INTERNET_DATAGRAM_BYTES,
        LOOPBACK_DATAGRAM_BYTES,
        datagram_size_for,
    )

    assert datagram_size_for("127.0.0.1") == datagram_size_for("::1") == LOOPBACK_DATAGRAM_BYTES
    assert datagram_size_for("127.8.9.1") == LOOPBACK_DATAGRAM_BYTES
    for remote in ("10.0.0.5", "192.168.1.2", "2001:db8::1", "0.0.0.0", "::", "not-an-ip"):
        assert datagram_size_for(remote) == INTERNET_DATAGRAM_BYTES


async def test_both_ends_of_a_loopback_connection_use_large_datagrams(server, make_client):
    from runtara_core.transport.quic_config import LOOPBACK_DATAGRAM_BYTES

    client = await make_client(server.address[1])
    assert (await client.call(Echo(text="x" * 50_000)))["text"] == "x" * 50_000
    (connection,) = server._connections
    assert connection._quic._max_datagram_size == LOOPBACK_DATAGRAM_BYTES
    assert client._protocol._quic._max_datagram_size == LOOPBACK_DATAGRAM_BYTES


async def test_the_rest_of_a_request_whose_answer_was_declined_is_ignored(server, make_client, recorder):
    client = await make_client(server.address[1])
    quic = client._protocol._quic
    stream_id = quic.get_next_available_stream_id()
    quic.send_stream_data(stream_id, b"\x00\x00\x00")  # a request begins...
    client._protocol.transmit()
    await asyncio.sleep(0.1)
    quic.stop_stream(stream_id, 0x1)  # ...the client declines the answer...
    # ...and the rest arrives; were it read afresh, it would hold a whole request of its own.
    quic.send_stream_data(stream_id, encode_frame(Slow(seconds=0.0).to_wire()), end_stream=True)
    client._protocol.transmit()
    await asyncio.sleep(0.2)
    (connection,) = server._connections
    assert recorder.finished == 0 and connection.in_flight == 0 and not connection._readers
    assert (await client.call(Echo(text="ok")))["text"] == "ok"
