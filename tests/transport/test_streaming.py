"""Upload and server-stream RPCs over real QUIC on loopback, plus their pure pieces."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from runtara_core.errors import BadRequest, ConnectionLost, FrameTooLarge, NotFound, UnknownOp
from runtara_core.transport.quic_protocol import SEND_BUFFER_HIGH_WATER
from runtara_core.transport.quic_server import RpcServer, ServerLimits
from runtara_core.transport.tls import ServerTls
from runtara_core.wire.dispatch import (
    Route,
    resolve,
    routes,
    run_server_stream,
    run_unary,
    run_upload,
)
from runtara_core.wire.frame_codec import HeadFrameReader, encode_frame
from tests.transport.echo_service import ALPN, Echo, Recorder
from tests.transport.streaming_service import (
    Count,
    Forever,
    PutBlob,
    StreamRecorder,
    Tick,
    streaming_routes,
)

MiB = 1 << 20


@pytest.fixture
def seen() -> StreamRecorder:
    return StreamRecorder()


@pytest.fixture
async def start_streaming(dev_certs, recorder: Recorder, seen: StreamRecorder):
    servers: list[RpcServer] = []

    async def start(limits: ServerLimits | None = None) -> RpcServer:
        server = RpcServer(
            alpn=ALPN,
            routes=streaming_routes(recorder, seen),
            tls=ServerTls(dev_certs.server_cert, dev_certs.server_key),
            limits=limits or ServerLimits(),
        )
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace_s=0.1)


@pytest.fixture
async def served(start_streaming, make_client):
    server = await start_streaming()
    return server, await make_client(server.address[1])


async def pieces(total: int, piece: int = MiB, digest=None) -> AsyncIterator[bytes]:
    """``total`` bytes that are never all in memory, hashed into ``digest`` as they go."""
    sent = 0
    n = 0
    while sent < total:
        size = min(piece, total - sent)
        chunk = hashlib.sha256(str(n).encode()).digest() * (size // 32 + 1)
        chunk = chunk[:size]
        if digest is not None:
            digest.update(chunk)
        sent += size
        n += 1
        yield chunk


# --- uploads -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 5000])
async def test_small_uploads_arrive_intact(served, size):
    _, client = served
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    reply = await client.upload(PutBlob(name="b"), body)
    assert reply["size"] == size and reply["sha256"] == hashlib.sha256(body).hexdigest()


async def test_upload_larger_than_the_frame_limit_arrives_intact_with_bounded_buffers(
    start_streaming, make_client, seen
):
    server = await start_streaming(limits=ServerLimits(max_frame_bytes=MiB))
    client = await make_client(server.address[1])
    peak = {"client": 0, "server": 0}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            protocol = client._protocol
            for stream_id in list(protocol._pending):
                peak["client"] = max(peak["client"], protocol.send_buffered(stream_id) or 0)
            for connection in server._connections:
                peak["server"] = max(peak["server"], connection.buffered_bytes)
            await asyncio.sleep(0.005)

    sampler = asyncio.ensure_future(sample())
    digest = hashlib.sha256()
    total = 40 * MiB
    try:
        reply = await client.upload(PutBlob(name="big"), pieces(total, digest=digest), timeout_s=60)
    finally:
        done.set()
        await asyncio.wait_for(sampler, 5)
    assert reply["size"] == total and reply["sha256"] == digest.hexdigest()
    assert peak["client"] <= SEND_BUFFER_HIGH_WATER + 64 * 1024  # never the whole body
    assert peak["server"] < 16 * MiB
    assert seen.largest_chunk <= MiB
    (connection,) = server._connections
    assert connection.buffered_bytes == 0 and not connection._bodies and not connection._tasks


async def test_upload_over_the_limit_is_refused_and_the_connection_serves_on(start_streaming, make_client):
    server = await start_streaming(limits=ServerLimits(max_upload_bytes=2 * MiB))
    client = await make_client(server.address[1])
    with pytest.raises(FrameTooLarge, match="max_upload_bytes"):
        await client.upload(PutBlob(name="huge"), pieces(8 * MiB), timeout_s=20)
    assert (await client.call(Echo(text="still here")))["text"] == "still here"
    assert (await client.upload(PutBlob(name="ok"), b"abc"))["size"] == 3
    assert client.connections_made == 1
    (connection,) = server._connections
    async with asyncio.timeout(5):
        while connection.buffered_bytes or connection._bodies:
            await asyncio.sleep(0.01)


async def test_upload_a_handler_does_not_keep_up_with_is_refused(start_streaming, make_client, seen):
    limits = ServerLimits(max_frame_bytes=MiB, max_buffered_bytes_per_connection=4 * MiB)
    server = await start_streaming(limits=limits)
    client = await make_client(server.address[1])
    with pytest.raises(FrameTooLarge, match="faster than the server consumes"):
        await client.upload(PutBlob(name="slow", hold_s=5), pieces(16 * MiB), timeout_s=20)
    async with asyncio.timeout(5):
        await seen.upload_failed.wait()  # its handler was cancelled
    assert (await client.call(Echo(text="fine")))["text"] == "fine"
    (connection,) = server._connections
    assert connection.buffered_bytes == 0


async def test_client_abandoning_an_upload_midway_stops_the_handler(served, seen):
    server, client = served

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 100_000
            await asyncio.sleep(0.02)
        raise OSError("disk read failed")

    with pytest.raises(OSError, match="disk read failed"):
        await client.upload(PutBlob(name="half"), broken())
    async with asyncio.timeout(5):
        await seen.upload_failed.wait()
    assert isinstance(seen.upload_errors[0], (BadRequest, asyncio.CancelledError))
    assert (await client.call(Echo(text="after")))["text"] == "after"
    (connection,) = server._connections
    async with asyncio.timeout(5):
        while connection._bodies or connection._tasks or connection.buffered_bytes:
            await asyncio.sleep(0.01)


async def test_a_reset_upload_body_raises_bad_request_in_the_handler(served, seen):
    server, client = served
    protocol = client._protocol
    quic = protocol._quic
    stream_id = quic.get_next_available_stream_id()
    quic.send_stream_data(stream_id, encode_frame(PutBlob(name="r").to_wire()) + b"z" * 5000)
    protocol.transmit()
    await asyncio.sleep(0.1)
    quic.reset_stream(stream_id, 0x2)  # only the sending half: the answer is still wanted
    protocol.transmit()
    async with asyncio.timeout(5):
        await seen.upload_failed.wait()
    assert isinstance(seen.upload_errors[0], BadRequest)
    assert "reset" in seen.upload_errors[0].message
    assert (await client.call(Echo(text="after")))["text"] == "after"


async def test_upload_with_an_unknown_op_is_refused_at_once(served):
    _, client = served
    with pytest.raises(UnknownOp, match="teleport"):
        await client.upload({"op": "teleport"}, pieces(64 * MiB), timeout_s=10)
    assert (await client.call(Echo(text="ok")))["text"] == "ok"


async def test_upload_route_called_without_a_body_gets_an_empty_one(served):
    _, client = served
    assert (await client.call(PutBlob(name="e")))["size"] == 0


# --- server streams ------------------------------------------------------------------------


async def test_server_stream_frames_arrive_in_order(served):
    _, client = served
    got = [frame async for frame in client.stream(Count(n=200), timeout_s=5)]
    assert got == [{"seq": i} for i in range(200)]
    final = [frame async for frame in client.stream(Count(n=3, final=True), timeout_s=5)]
    assert final == [{"seq": 0}, {"seq": 1}, {"seq": 2}, {"seq": -1}]
    assert [frame async for frame in client.stream(Count(n=0), timeout_s=5)] == []
    assert not client._protocol._pending


async def test_server_stream_ending_in_an_error_raises_its_type(served):
    _, client = served
    got: list = []
    with pytest.raises(NotFound, match="tick 3 is missing"):
        async with asyncio.timeout(5):
            async for frame in client.stream(Count(n=10, fail_at=3)):
                got.append(frame["seq"])
    assert got == [0, 1, 2]


async def test_breaking_out_of_a_stream_cancels_the_server_handler(served, seen):
    server, client = served
    stream = client.stream(Forever(), timeout_s=5)
    async with asyncio.timeout(5):
        async for frame in stream:
            if frame["seq"] == 3:
                break
        await stream.aclose()
        await seen.stream_cancelled.wait()
    (connection,) = server._connections
    async with asyncio.timeout(5):
        while connection._tasks or connection._outputs:
            await asyncio.sleep(0.01)
    assert (await client.call(Echo(text="ok")))["text"] == "ok"


async def test_connection_closed_mid_stream_raises_connection_lost(start_streaming, make_client, seen):
    server = await start_streaming()
    client = await make_client(server.address[1])
    got: list = []
    with pytest.raises(ConnectionLost):
        async with asyncio.timeout(5):
            async for frame in client.stream(Forever()):
                got.append(frame)
                if len(got) == 2:
                    (connection,) = server._connections
                    connection.session.close("going away")
    assert len(got) >= 2
    async with asyncio.timeout(5):
        await seen.stream_cancelled.wait()


async def test_unknown_op_on_a_stream_gets_unknown_op(served):
    _, client = served
    with pytest.raises(UnknownOp, match="teleport"):
        async with asyncio.timeout(5):
            async for _ in client.stream({"op": "teleport"}):
                pass


async def test_stream_route_with_bad_fields_gets_one_error_frame(served):
    _, client = served
    with pytest.raises(BadRequest, match="field 'n'"):
        async with asyncio.timeout(5):
            async for _ in client.stream({"op": "count", "n": "many"}):
                pass


async def test_unary_routes_still_refuse_bytes_after_the_frame(served):
    _, client = served
    with pytest.raises(BadRequest, match="frame header"):
        await client.send_raw(encode_frame(Echo(text="x").to_wire()) + b"\x00\x00")
    with pytest.raises(BadRequest, match="exactly one frame"):
        await client.send_raw(encode_frame(Echo(text="x").to_wire()) + encode_frame({"op": "x"}))
    with pytest.raises(BadRequest, match="exactly one frame"):
        await client.send_raw(encode_frame(Count(n=1).to_wire()) + encode_frame({"op": "x"}))
    with pytest.raises(FrameTooLarge):  # read as a frame header, as before
        await client.send_raw(encode_frame(Echo(text="x").to_wire()) + b"extra")
    assert (await client.call(Echo(text="ok")))["text"] == "ok"


# --- pure pieces ---------------------------------------------------------------------------


def test_head_frame_reader_returns_the_frame_and_what_follows():
    frame = encode_frame({"op": "put_blob", "name": "n"})
    reader = HeadFrameReader()
    data = frame + b"raw body"
    assert reader.feed(data[:3]) is None
    assert reader.feed(data[3:10]) is None
    payload, rest = reader.feed(data[10:])
    assert payload == frame[4:] and rest == b"raw body"
    reader.check_complete()  # done: nothing to complain about


@pytest.mark.parametrize("data,text", [(b"", "without a frame"), (b"\x00\x00", "frame header"), (b"\x00\x00\x00\x09ab", "inside a frame")])
def test_head_frame_reader_rejects_streams_that_end_early(data, text):
    reader = HeadFrameReader()
    assert reader.feed(data) is None
    with pytest.raises(BadRequest, match=text):
        reader.check_complete()


def test_head_frame_reader_refuses_an_oversized_header_before_its_body():
    with pytest.raises(FrameTooLarge):
        HeadFrameReader(max_frame_bytes=10).feed(b"\x00\x00\x01\x00")


class ListBody:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self):
        for chunk in self.chunks:
            yield chunk


class ListOut:
    def __init__(self) -> None:
        self.sent: list = []
        self.closed = False

    async def send(self, message) -> None:
        self.sent.append(message)


def table():
    async def put(request: PutBlob, session: None, body) -> Tick:
        return Tick(seq=len(b"".join([c async for c in body])))

    async def count(request: Count, session: None, out) -> Tick | None:
        for i in range(request.n):
            await out.send(Tick(seq=i))
        if request.fail_at is not None:
            raise ValueError("secret")
        return Tick(seq=-1) if request.final else None

    return routes(Route(PutBlob, put, mode="upload"), Route(Count, count, mode="server_stream"))


async def test_runners_serve_each_mode_and_turn_failures_into_envelopes():
    t = table()
    up = resolve(t, {"op": "put_blob", "name": "n"})
    assert up.mode == "upload"
    assert await run_upload(up, None, ListBody([b"ab", b"cde"])) == {"ok": True, "seq": 5}
    out = ListOut()
    assert await run_server_stream(resolve(t, {"op": "count", "n": 2}), None, out) is None
    assert [m.seq for m in out.sent] == [0, 1]
    last = await run_server_stream(resolve(t, {"op": "count", "n": 1, "final": True}), None, ListOut())
    assert last == {"ok": True, "seq": -1}
    failed = await run_server_stream(resolve(t, {"op": "count", "n": 1, "fail_at": 0}), None, ListOut())
    assert failed["ok"] is False and failed["error"]["code"] == "INTERNAL"
    assert "secret" not in failed["error"]["message"]
    # A route served in the wrong shape is a BadRequest envelope, not a crash.
    wrong = await run_unary(up, None)
    assert wrong["error"]["code"] == "BAD_REQUEST"
    with pytest.raises(UnknownOp):
        resolve(t, {"op": "nope"})
