"""Bad input on the management port (the environment's mirror of tests/core/test_hostile_clients.py):
every case gets an error response with a stable code and a message a person can act on, and a
well-behaved management client on another connection keeps working throughout. Real environment
process on loopback, both backends."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from runtara_core.errors import (
    BadRequest,
    FrameTooLarge,
    HandshakeError,
    RuntaraError,
    TransportError,
    Unauthenticated,
    UnknownOp,
)
from runtara_core.protocol import INSTANCE_ALPN, MANAGEMENT_ALPN
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.frame_codec import encode_frame
from tests.environment.conftest import EnvironmentProcess, MakeEnvironment

MAX_FRAME = 64 * 1024
OPTIONS = ClientOptions(request_timeout_s=15, connect_timeout_s=10)


@pytest.fixture
async def environment(make_environment: MakeEnvironment) -> EnvironmentProcess:
    return await make_environment(max_frame_bytes=MAX_FRAME, max_image_bytes=200_000)


async def hostile_client(
    environment: EnvironmentProcess,
    *,
    hello: bool = True,
    alpn: str = MANAGEMENT_ALPN,
    port: int | None = None,
    options: ClientOptions = OPTIONS,
) -> RpcClient:
    rpc = RpcClient(
        "127.0.0.1", port or environment.mgmt_port, alpn=alpn, tls=ClientTls(environment.ca), options=options
    )
    await rpc.connect()
    if hello:
        await rpc.call({"op": "hello", "token": environment.admin_token})
    return rpc


@asynccontextmanager
async def well_behaved_client(environment: EnvironmentProcess) -> AsyncIterator[list[int]]:
    """A management client calling health / list_* back to back on its own connection; yields its
    count of successes and fails the test if any call fails."""
    done: list[int] = [0]
    stop = asyncio.Event()
    async with environment.client() as client:

        async def work() -> None:
            while not stop.is_set():
                health, images, instances = await asyncio.gather(
                    client.health(), client.list_images(), client.list_instances()
                )
                assert health.version and images.total == 0 and instances.total == 0
                done[0] += 1
                await asyncio.sleep(0.005)

        task = asyncio.ensure_future(work())
        try:
            yield done
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)  # re-raises any failure of the good client
        before = done[0]
        await client.health()
        assert before > 0


def assert_actionable(error: RuntaraError) -> None:
    assert error.message.strip(), error
    assert "Traceback" not in error.message and 'File "' not in error.message, error.message


def assert_still_healthy(environment: EnvironmentProcess) -> None:
    assert environment.alive, "environment died"
    assert "Traceback" not in environment.log(), environment.log()[-4000:]


async def test_malformed_frames_are_refused_with_a_clear_code(environment: EnvironmentProcess) -> None:
    async with well_behaved_client(environment) as good:
        hostile = await hostile_client(environment)
        cases: list[tuple[bytes, type[RuntaraError]]] = [
            (b"\xde\xad\xbe\xef" * 8, FrameTooLarge),  # a length prefix of 3.7 GB
            (struct.pack(">I", MAX_FRAME + 1), FrameTooLarge),
            (struct.pack(">I", 2**31), FrameTooLarge),
            (struct.pack(">I", 100) + b"only ten b", BadRequest),  # truncated
            (b"\x00\x00", BadRequest),  # truncated header
            (b"", BadRequest),
            (encode_frame({"op": "health"}) + b"\x00\x00", BadRequest),  # bytes after the frame
            (encode_frame({"op": "list_images"}) + encode_frame({"op": "health"}), BadRequest),  # two frames
            (encode_frame({"op": "health"}) + b"trailing", FrameTooLarge),
            (struct.pack(">I", 2) + b"\xc1\xc1", BadRequest),  # not msgpack
            (struct.pack(">I", 3) + b"\x81\xa2o", BadRequest),  # msgpack cut short
            (encode_frame([1, 2, 3]), BadRequest),
            (encode_frame(42), BadRequest),
            (encode_frame(None), BadRequest),
            (encode_frame({"no": "op"}), BadRequest),
            (encode_frame({"op": 17}), BadRequest),
            (encode_frame({"op": b"health"}), BadRequest),
            (encode_frame({"op": "teleport"}), UnknownOp),
            (encode_frame({"op": "register"}), UnknownOp),  # an instance op, not a management one
            (encode_frame({"op": ""}), UnknownOp),
            # missing or ill-typed fields
            (encode_frame({"op": "hello"}), BadRequest),
            (encode_frame({"op": "hello", "token": 5}), BadRequest),
            (encode_frame({"op": "get_instance"}), BadRequest),
            (encode_frame({"op": "get_instance", "instance_id": ["x"]}), BadRequest),
            (encode_frame({"op": "get_instance", "instance_id": "x\x00y"}), BadRequest),
            (encode_frame({"op": "get_instance", "instance_id": "x" * 10_000}), BadRequest),
            (encode_frame({"op": "get_image", "image": None}), BadRequest),
            (encode_frame({"op": "list_instances", "limit": "10"}), BadRequest),
            (encode_frame({"op": "list_instances", "limit": -1}), BadRequest),
            (encode_frame({"op": "list_instances", "offset": -1}), BadRequest),
            (encode_frame({"op": "list_instances", "status": ["exploded"]}), BadRequest),
            (encode_frame({"op": "list_instances", "order": "drop table"}), BadRequest),
            (encode_frame({"op": "list_events", "instance_id": "x", "after_id": "0"}), BadRequest),
            (encode_frame({"op": "start_instance", "image": "x", "env": {"A": 1}}), BadRequest),
            (encode_frame({"op": "start_instance", "image": "x", "env": ["A=1"]}), BadRequest),
            (encode_frame({"op": "start_instance", "image": "x", "timeout_s": float("nan")}), BadRequest),
            (encode_frame({"op": "start_instance", "image": "x", "max_attempts": 0}), BadRequest),
            (encode_frame({"op": "start_instance", "image": "x", "tenant": "*"}), BadRequest),
            (encode_frame({"op": "stop_instance", "instance_id": "x", "grace_s": -1}), BadRequest),
            (encode_frame({"op": "send_signal", "instance_id": "x", "signal": "explode"}), BadRequest),
            (encode_frame({"op": "send_custom_signal", "instance_id": "x"}), BadRequest),
            (encode_frame({"op": "register_image", "name": "x"}), BadRequest),
            (encode_frame({"op": "register_image", "name": "x", "filename": "x.py", "size_bytes": -1,
                           "sha256": "0" * 64, "data": b""}), BadRequest),
            (encode_frame({"op": "register_image", "name": "x", "filename": "x.py", "size_bytes": 3,
                           "sha256": "not-hex", "data": b"x=1"}), BadRequest),
            (encode_frame({"op": "register_image", "name": "x", "filename": "x.py", "size_bytes": 3,
                           "sha256": "0" * 64, "data": "x=1"}), BadRequest),  # str, not bin
            (encode_frame({"op": "register_image", "name": "x", "filename": "x.py", "size_bytes": 3,
                           "sha256": "0" * 64, "data": b"x=1", "input_schema": {"type": 12}}), BadRequest),
            (encode_frame({"op": "watch"}), BadRequest),
            (encode_frame({"op": "watch", "instance_id": 3}), BadRequest),
        ]
        for data, error in cases:
            with pytest.raises(error) as caught:
                await hostile.send_raw(data)
            assert_actionable(caught.value)
        rng = random.Random(1234)
        for _ in range(200):
            garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
            with pytest.raises(RuntaraError) as caught:
                await hostile.send_raw(garbage)
            assert_actionable(caught.value)
        # The hostile connection itself is still usable for well-formed requests.
        assert "instances" in await hostile.call({"op": "health"})
        await hostile.close()
        await asyncio.sleep(0.1)
    assert good[0] > 0
    assert_still_healthy(environment)


async def test_garbage_before_hello_is_refused_and_authenticates_nothing(environment: EnvironmentProcess) -> None:
    async with well_behaved_client(environment):
        hostile = await hostile_client(environment, hello=False)
        for data, error in [
            (struct.pack(">I", 2) + b"\xc1\xc1", BadRequest),
            (encode_frame({"op": "teleport"}), UnknownOp),
            (encode_frame({"op": "hello", "token": ""}), BadRequest),
            (encode_frame({"op": "hello", "token": "x" * 5000}), BadRequest),
            (encode_frame({"op": "hello", "token": "x" * 100}), Unauthenticated),
            (encode_frame({"op": "health", "token": environment.admin_token}), Unauthenticated),
        ]:
            with pytest.raises(error) as caught:
                await hostile.send_raw(data)
            assert_actionable(caught.value)
        with pytest.raises(Unauthenticated):
            await hostile.call({"op": "list_images"})
        await hostile.close()
    assert_still_healthy(environment)


async def test_msgpack_bombs_and_deep_nesting_are_refused(environment: EnvironmentProcess) -> None:
    async with well_behaved_client(environment):
        hostile = await hostile_client(environment)
        nested = b"\x91" * 60_000 + b"\xc0"  # [[[[...None...]]]] 60,000 deep, under the frame limit
        with pytest.raises(BadRequest):
            await hostile.send_raw(struct.pack(">I", len(nested)) + nested)
        bomb = b"\xdf\xff\xff\xff\xff"  # a map header announcing 2**32-1 entries in five bytes
        with pytest.raises(BadRequest):
            await hostile.send_raw(struct.pack(">I", len(bomb)) + bomb)
        big_bin = b"\xc6\xff\xff\xff\xf0"  # a bin of 4 GB announced in five bytes
        with pytest.raises(BadRequest):
            await hostile.send_raw(struct.pack(">I", len(big_bin)) + big_bin)
        nested_input = {"op": "start_instance", "image": "x", "input": None}
        deep: Any = None
        for _ in range(5_000):
            deep = [deep]
        nested_input["input"] = deep
        with pytest.raises(RuntaraError) as caught:  # refused one way or another, never a crash
            await hostile.call(nested_input)
        assert_actionable(caught.value)
        await hostile.close()
    assert_still_healthy(environment)


async def test_an_oversized_request_is_refused(environment: EnvironmentProcess) -> None:
    async with well_behaved_client(environment):
        hostile = await hostile_client(environment, options=ClientOptions(max_frame_bytes=1 << 20, request_timeout_s=15))
        with pytest.raises(FrameTooLarge) as caught:
            await hostile.call({"op": "start_instance", "image": "x", "input": "a" * 100_000})
        assert_actionable(caught.value)
        with pytest.raises(FrameTooLarge):
            await hostile.call({"op": "hello", "token": "t" * 200_000})
        # The upload route: an inline image too big for a frame, and a body over what was announced.
        with pytest.raises(FrameTooLarge):
            await hostile.call({"op": "register_image", "name": "big", "filename": "big.py", "size_bytes": 300_000,
                                "sha256": "0" * 64, "data": b"#" * 300_000})
        with pytest.raises(BadRequest, match="more than"):
            await hostile.upload({"op": "register_image", "name": "liar", "filename": "liar.py", "size_bytes": 10,
                                  "sha256": "0" * 64}, b"#" * 150_000)
        with pytest.raises(FrameTooLarge, match="RUNTARA_MAX_IMAGE_BYTES"):
            await hostile.upload({"op": "register_image", "name": "huge", "filename": "huge.py",
                                  "size_bytes": 10**9, "sha256": "0" * 64}, b"#" * 300_000)
        # Still answering on the same connection.
        assert "instances" in await hostile.call({"op": "health"})
        await hostile.close()
    assert not (environment.data_dir / "images").exists() or not list((environment.data_dir / "images").iterdir())
    assert_still_healthy(environment)


async def test_wrong_alpn_is_refused_at_handshake(environment: EnvironmentProcess) -> None:
    async with well_behaved_client(environment) as good:
        for alpn, port in (
            ("something-else/1", environment.mgmt_port),
            (INSTANCE_ALPN, environment.mgmt_port),  # an instance dialling the management port
            (MANAGEMENT_ALPN, environment.core_port),  # a management client dialling the core
            ("h3", environment.mgmt_port),
        ):
            with pytest.raises(HandshakeError, match="TLS handshake refused"):
                await hostile_client(environment, hello=False, alpn=alpn, port=port,
                                     options=ClientOptions(connect_timeout_s=5))
        before = good[0]
        await asyncio.sleep(0.2)
        assert good[0] > before
    assert_still_healthy(environment)


async def test_many_concurrent_garbage_streams(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(max_frame_bytes=MAX_FRAME, request_arrival_timeout_s=0.5)
    async with well_behaved_client(environment) as good:
        rng = random.Random(99)
        hostiles = [await hostile_client(environment, hello=bool(i % 2)) for i in range(6)]

        async def garbage(client: RpcClient, seed: int) -> str:
            data = bytes(random.Random(seed).randrange(256) for _ in range(rng.randrange(1, 2000)))
            try:
                await client.send_raw(data)
            except RuntaraError as error:
                assert_actionable(error)
                return str(error.code)
            except TransportError as error:  # a reset stream is an acceptable answer too
                return type(error).__name__
            return "ok"

        async def invalid(client: RpcClient, n: int) -> str:
            try:
                await client.call({"op": "get_instance", "instance_id": ["x", n]})
            except RuntaraError as error:
                return str(error.code)
            return "ok"

        codes = await asyncio.gather(
            *(garbage(client, i * 1000 + n) for i, client in enumerate(hostiles) for n in range(40)),
            *(invalid(client, n) for client in hostiles for n in range(20)),
        )
        assert "ok" not in codes
        assert set(codes) <= {"BAD_REQUEST", "FRAME_TOO_LARGE", "UNKNOWN_OP", "UNAUTHENTICATED"}, set(codes)

        # Streams opened and never finished: each is refused at its arrival deadline.
        quic_client = hostiles[0]
        protocol = quic_client._protocol
        assert protocol is not None
        quic = protocol._quic
        for _ in range(1_000):
            quic.send_stream_data(quic.get_next_available_stream_id(), b"\x00")
        protocol.transmit()
        await asyncio.sleep(1.5)
        at_flood_end = good[0]
        await asyncio.sleep(0.3)
        assert good[0] > at_flood_end
        for client in hostiles[1::2]:  # the authenticated ones still get answers
            assert "instances" in await client.call({"op": "health"})
        for client in hostiles:
            await client.close()
    assert_still_healthy(environment)
