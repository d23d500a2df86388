"""Bad input at the core: every case gets an error or a reset, and a well-behaved instance on
the same server keeps working throughout."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from runtara_core.errors import BadRequest, FrameTooLarge, RuntaraError, TransportError, UnknownOp
from runtara_core.transport.quic_client import ClientOptions
from runtara_core.wire.frame_codec import encode_frame
from runtara_core.wire.messages import CheckpointRequest, CheckpointResponse
from tests.core.conftest import Core


@asynccontextmanager
async def well_behaved_instance(core: Core) -> AsyncIterator[list[int]]:
    """An instance checkpointing back to back in the background; yields its count of successes
    and fails the test if any of its calls fails."""
    client, row = await core.running_instance()
    done: list[int] = [0]
    stop = asyncio.Event()

    async def work() -> None:
        for n in range(100_000):
            if stop.is_set():
                return
            response = await client.request(
                CheckpointRequest(checkpoint_id=f"good-{n}", state=b"ok"), CheckpointResponse
            )
            assert not response.found
            done[0] += 1
            await asyncio.sleep(0.005)

    task = asyncio.ensure_future(work())
    try:
        yield done
    finally:
        stop.set()
        await task  # re-raises any failure of the good instance
    before = done[0]
    await client.request(CheckpointRequest(checkpoint_id="good-final", state=b"ok"), CheckpointResponse)
    assert (await core.persistence.list_checkpoints(row.instance_id)).total == before + 1


async def test_malformed_frames_are_refused_with_a_clear_code(core: Core) -> None:
    async with well_behaved_instance(core) as good:
        hostile = await core.client()
        cases: list[tuple[bytes, type[RuntaraError]]] = [
            (b"\xde\xad\xbe\xef" * 8, FrameTooLarge),  # a length prefix of 3.7 GB
            (struct.pack(">I", 2**31), FrameTooLarge),
            (struct.pack(">I", 100) + b"only ten b", BadRequest),  # truncated
            (b"\x00\x00", BadRequest),  # truncated header
            (b"", BadRequest),
            (encode_frame({"op": "checkpoint"}) + b"\x00\x00", BadRequest),  # bytes after the frame
            (encode_frame({"op": "checkpoint"}) + b"trailing", FrameTooLarge),
            (struct.pack(">I", 2) + b"\xc1\xc1", BadRequest),  # not msgpack
            (encode_frame([1, 2, 3]), BadRequest),
            (encode_frame(42), BadRequest),
            (encode_frame({"no": "op"}), BadRequest),
            (encode_frame({"op": 17}), BadRequest),
            (encode_frame({"op": "teleport"}), UnknownOp),
            (encode_frame({"op": "register", "instance_id": ["x"], "token": "t", "attempt": 1}), BadRequest),
            (encode_frame({"op": "register", "instance_id": "x", "token": "t", "attempt": "1"}), BadRequest),
            (encode_frame({"op": "checkpoint", "checkpoint_id": "a", "state": {"nested": True}}), BadRequest),
        ]
        for data, error in cases:
            with pytest.raises(error):
                await hostile.send_raw(data)
        rng = random.Random(1234)
        for _ in range(200):
            garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            with pytest.raises(RuntaraError):
                await hostile.send_raw(garbage)
        await asyncio.sleep(0.1)
    assert good[0] > 0


async def test_msgpack_bombs_and_deep_nesting_are_refused(core: Core) -> None:
    async with well_behaved_instance(core):
        hostile = await core.client()
        nested = b"\x91" * 100_000 + b"\xc0"  # [[[[...None...]]]] 100,000 deep
        with pytest.raises(BadRequest):
            await hostile.send_raw(struct.pack(">I", len(nested)) + nested)
        # A map header announcing 2**32-1 entries in a five-byte body.
        bomb = b"\xdf\xff\xff\xff\xff"
        with pytest.raises(BadRequest):
            await hostile.send_raw(struct.pack(">I", len(bomb)) + bomb)


async def test_an_oversized_request_is_refused(start_core) -> None:
    core: Core = await start_core(max_frame_bytes=64 * 1024, max_buffered_bytes_per_connection=64 * 1024)
    async with well_behaved_instance(core):
        hostile = await core.client(options=ClientOptions(max_frame_bytes=1 << 20, request_timeout_s=10))
        with pytest.raises(FrameTooLarge):
            await hostile.call(CheckpointRequest(checkpoint_id="big", state=os.urandom(100_000)))


async def test_ten_thousand_streams_opened_without_a_request(start_core) -> None:
    core: Core = await start_core(request_arrival_timeout_s=0.5)
    async with well_behaved_instance(core) as good:
        hostile = await core.client()
        quic = hostile._protocol._quic
        for _ in range(10_000):  # one byte each: opened, never finished
            quic.send_stream_data(quic.get_next_available_stream_id(), b"\x00")
        hostile._protocol.transmit()
        rpc = core.server._rpc
        assert rpc is not None
        await asyncio.sleep(0.3)
        held = max(len(c._readers) for c in rpc._connections)
        assert 0 < held <= core.server.settings.max_streams_per_connection
        async with asyncio.timeout(10):  # each stalled stream is refused at its deadline
            while any(c._readers for c in rpc._connections):
                await asyncio.sleep(0.05)
        at_flood_end = good[0]
        await asyncio.sleep(0.2)
    assert good[0] > at_flood_end


async def test_many_connections_that_never_register(core: Core) -> None:
    async with well_behaved_instance(core) as good:
        idle = [await core.client() for _ in range(30)]
        assert all(c.connected for c in idle)
        for client in idle:
            await client.close()
    assert good[0] > 0


async def test_connections_over_the_cap_are_refused_and_the_rest_keep_working(start_core) -> None:
    core: Core = await start_core(max_connections=3)
    async with well_behaved_instance(core):
        await core.client()
        await core.client()  # with the well-behaved one, three: the cap
        with pytest.raises(TransportError, match="too many connections"):
            await core.client(options=ClientOptions(connect_timeout_s=5))


async def test_an_idle_connection_is_closed_after_the_idle_timeout(start_core) -> None:
    core: Core = await start_core(idle_timeout_s=0.5)
    quiet = await core.client(options=ClientOptions(keepalive_s=3600, idle_timeout_s=3600, connect_timeout_s=5))
    async with asyncio.timeout(10):  # the server ends it; the client notices and reconnects
        while quiet.connections_made < 2:
            await asyncio.sleep(0.05)
    assert "Idle timeout" in (quiet.last_error or "")
