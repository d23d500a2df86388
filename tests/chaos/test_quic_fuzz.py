"""Issue 7, scenario 6 (fuzz): bytes thrown at both QUIC endpoints, at two levels.

- Streams: random bytes, cut and lying length prefixes, valid frames of random bytes, msgpack of
  random structures, real op names with ill-typed fields, mutated valid requests, sent many at
  once on hostile connections (one unauthenticated, one registered / said hello); plus streams
  reset midway, streams left half-open, and answers refused with STOP_SENDING.
- Datagrams: random UDP datagrams, and mutated copies (bit flips, cuts, extensions, splices,
  duplicates, reordering) of the real datagrams of a client's connection, captured through a
  loopback UDP relay, sent to the server from fresh sockets and on the live connection's path.

Invariants: the server never crashes (the in-process core logs no error, the environment
process stays alive with no traceback in its log); every answered stream is a success or an
error envelope with a stable code from DESIGN section 2, never INTERNAL, never a traceback
text, never a dropped or reset stream; a well-behaved client on its own connection keeps
succeeding throughout and after.

Seeded (``RUNTARA_FUZZ_SEED``, printed in every failure) and bounded: ``RUNTARA_FUZZ_EXAMPLES``
scales the number of cases (default 12: 1,200 stream cases, 360 raw streams per hostile
connection and 1,800 datagrams per endpoint and backend), ``RUNTARA_FUZZ_SECONDS`` caps each phase's time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest

from runtara_core.errors import ErrorCode, RuntaraError
from runtara_core.protocol import INSTANCE_ALPN, MANAGEMENT_ALPN
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.frame_codec import encode_frame
from runtara_core.wire.management_messages import MANAGEMENT_REQUESTS
from runtara_core.wire.messages import (
    INSTANCE_REQUESTS,
    CheckpointRequest,
    CheckpointResponse,
    RegisterRequest,
    RegisterResponse,
)
from tests.core.conftest import Core, CoreFactory, start_core  # noqa: F401 (fixture)
from tests.core.test_hostile_clients import well_behaved_instance
from tests.environment.conftest import (  # noqa: F401 (fixtures)
    EnvironmentProcess,
    MakeEnvironment,
    env_backend,
    env_launcher,
    make_environment,
)

pytestmark = [pytest.mark.chaos]

SEED = int(os.environ.get("RUNTARA_FUZZ_SEED", "20261124"))
EXAMPLES = int(os.environ.get("RUNTARA_FUZZ_EXAMPLES", "12"))
PHASE_SECONDS = float(os.environ.get("RUNTARA_FUZZ_SECONDS", "12"))
STREAM_CASES = 100 * EXAMPLES
RAW_STREAMS = 30 * EXAMPLES
DATAGRAMS = 150 * EXAMPLES
CONCURRENCY = 12
MAX_FRAME = 64 * 1024
STABLE = {code.value for code in ErrorCode} - {ErrorCode.INTERNAL.value}
OPTIONS = ClientOptions(request_timeout_s=15, connect_timeout_s=10)


def passthrough_env() -> dict[str, str]:
    """PYTHONPATH, if set, reaches the environment process too (to fuzz a modified copy)."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


@pytest.fixture(params=[("sqlite", "spawn"), ("postgres", "spawn")], ids=["sqlite", "postgres"])
def env_variant(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Both backends; no instance is launched here, so one launcher is enough."""
    return request.param


# --------------------------------------------------------------------------- generators (pure)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value: scalars of every type, and small nested containers."""
    kinds = ["nil", "bool", "int", "bigint", "float", "str", "bin", "ext"] + (["list", "map"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "nil":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-5, 300)
    if kind == "bigint":
        return rng.choice([-(2**63), 2**63 - 1, 2**64 - 1, -(2**31), 2**32, 10**15])
    if kind == "float":
        return rng.choice([0.0, -1.5, 1e308, float("inf"), float("-inf"), float("nan"), 3.25])
    if kind == "str":
        return "".join(rng.choice("ab\x00é☃ \n-_/.*%") for _ in range(rng.randrange(0, 12)))
    if kind == "bin":
        return rng.randbytes(rng.randrange(0, 16))
    if kind == "ext":  # an extension type, or a timestamp (ext -1), which decoders may build
        if rng.random() < 0.5:
            return msgpack.Timestamp(rng.randrange(-(2**33), 2**33), rng.randrange(10**9))
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(0, 9)))
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {random_key(rng): random_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def random_key(rng: random.Random) -> Any:
    return rng.choice(["op", "instance_id", "name", "state", "token", "x", 1, b"op", None, ""])


def fields_of(requests: dict[str, Any]) -> dict[str, list[str]]:
    return {op: list(model.model_fields) for op, model in requests.items()}


def typed_request(rng: random.Random, ops: dict[str, list[str]]) -> dict[Any, Any]:
    """A real op with its real field names, each given a random (usually wrong) value."""
    op = rng.choice(list(ops))
    message: dict[Any, Any] = {"op": op}
    for name in ops[op]:
        if rng.random() < 0.8:
            message[name] = random_value(rng)
    if rng.random() < 0.2:
        message[random_key(rng)] = random_value(rng)
    return message


def perturb(rng: random.Random, request: dict[str, Any]) -> dict[Any, Any]:
    """``request`` as is, or with one field dropped, given a random value, or added."""
    message: dict[Any, Any] = dict(request)
    fields = [k for k in message if k != "op"]
    kind = rng.randrange(4)
    if kind == 1 and fields:
        del message[rng.choice(fields)]
    elif kind == 2 and fields:
        message[rng.choice(fields)] = random_value(rng)
    elif kind == 3:
        message[random_key(rng)] = random_value(rng)
    return message


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One random edit: flip bits, cut, extend, overwrite a run, or duplicate a slice."""
    if not data:
        return rng.randbytes(rng.randrange(1, 32))
    kind = rng.randrange(5)
    buf = bytearray(data)
    if kind == 0:
        for _ in range(rng.randrange(1, 9)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        return bytes(buf[: rng.randrange(len(buf))])
    elif kind == 2:
        buf += rng.randbytes(rng.randrange(1, 64))
    elif kind == 3:
        i = rng.randrange(len(buf))
        run = rng.randbytes(rng.randrange(1, 16))
        buf[i : i + len(run)] = run
    else:
        i, j = sorted(rng.randrange(len(buf) + 1) for _ in range(2))
        buf[i:i] = buf[i:j]
    return bytes(buf)


def fuzz_stream_bytes(rng: random.Random, ops: dict[str, list[str]], valid: list[dict[str, Any]]) -> bytes:
    """What one hostile request stream carries (the frame level, DESIGN section 2)."""
    kind = rng.randrange(11)
    if kind >= 8:  # a valid request with one field dropped, retyped or added: reaches the handlers
        return encode_frame(perturb(rng, rng.choice(valid)))
    if kind == 0:  # random bytes
        return rng.randbytes(rng.randrange(0, 400))
    if kind == 1:  # a length prefix cut short
        return rng.randbytes(rng.randrange(0, 4))
    if kind == 2:  # a length that lies (too short, too long, or absurd)
        body = msgpack.packb(typed_request(rng, ops))
        claimed = rng.choice([0, 1, len(body) - 1, len(body) + 1, len(body) + 1000, MAX_FRAME + 1, 2**32 - 1])
        return struct.pack(">I", max(0, claimed)) + body
    if kind == 3 and rng.random() < 0.3:  # {"op": <a reserved, negative extension type>}
        body = b"\x81\xa2op\xd4" + bytes([rng.randrange(0x80, 0x100)]) + rng.randbytes(1)
        return struct.pack(">I", len(body)) + body
    if kind == 3:  # a valid length, random bytes inside
        body = rng.randbytes(rng.randrange(0, 200))
        return struct.pack(">I", len(body)) + body
    if kind == 4:  # msgpack of a random structure
        return encode_frame(random_value(rng))
    if kind == 5:  # a real op with ill-typed fields
        return encode_frame(typed_request(rng, ops))
    if kind == 6:  # a valid request, mutated at the byte level
        return mutate(rng, encode_frame(rng.choice(valid)))
    return encode_frame(rng.choice(valid)) + rng.randbytes(rng.randrange(1, 8))  # trailing bytes


# --------------------------------------------------------------------------- stream-level driving


def check_refusal(error: RuntaraError, seed: int, data: bytes) -> None:
    assert error.code.value in STABLE, f"seed {seed}: {error.code} for {data[:80]!r}: {error.message}"
    text = error.message
    assert text.strip() and "Traceback" not in text and 'File "' not in text, f"seed {seed}: {text}"


async def throw_streams(
    clients: list[RpcClient], rng: random.Random, ops: dict[str, list[str]], valid: list[dict[str, Any]], seed: int
) -> dict[str, int]:
    """STREAM_CASES hostile requests, CONCURRENCY at a time; returns the count per outcome."""
    outcomes: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PHASE_SECONDS
    sent = 0
    while sent < STREAM_CASES and loop.time() < deadline:
        batch = [(rng.choice(clients), fuzz_stream_bytes(rng, ops, valid)) for _ in range(CONCURRENCY)]
        results = await asyncio.gather(*(client.send_raw(data) for client, data in batch), return_exceptions=True)
        for (_, data), result in zip(batch, results, strict=True):
            if isinstance(result, RuntaraError):
                check_refusal(result, seed, data)
                key = result.code.value
            elif isinstance(result, BaseException):
                pytest.fail(f"seed {seed}: {data[:80]!r} got {result!r}, not an error envelope")
            else:
                assert result.get("ok") is True, f"seed {seed}: {result}"
                key = "ok"
            outcomes[key] = outcomes.get(key, 0) + 1
        sent += len(batch)
    return outcomes


async def abuse_raw_streams(client: RpcClient, rng: random.Random, ops: dict[str, list[str]], valid: list[dict[str, Any]]) -> None:
    """Streams reset midway, left half-open, or whose answer is refused (STOP_SENDING)."""
    protocol = client._protocol
    assert protocol is not None
    quic = protocol._quic
    half_open: list[int] = []
    for _ in range(RAW_STREAMS):
        if not protocol._has_stream_credit():
            # The server refuses a half-open stream at its arrival deadline with STOP_SENDING;
            # its credit comes back once we reset our half (RFC 9000 3.5), as a real client must.
            await asyncio.sleep(0.6)
            for sid in half_open:
                quic.reset_stream(sid, 0)
            half_open.clear()
            protocol.transmit()
            async with asyncio.timeout(10):  # a server that never gives credit back fails here
                await protocol._await_stream_credit()
        stream_id = quic.get_next_available_stream_id()
        data = fuzz_stream_bytes(rng, ops, valid)
        kind = rng.randrange(3)
        if kind == 0:  # reset midway
            quic.send_stream_data(stream_id, data[: rng.randrange(len(data) + 1)])
            quic.reset_stream(stream_id, rng.randrange(0x100))
        elif kind == 1:  # half-open: the request never ends
            quic.send_stream_data(stream_id, data[: rng.randrange(len(data) + 1)])
            half_open.append(stream_id)
        else:  # a whole request, then STOP_SENDING: the answer is refused
            quic.send_stream_data(stream_id, data, end_stream=True)
            quic.stop_stream(stream_id, rng.randrange(0x100))
        protocol.transmit()
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- datagram-level driving


class Relay:
    """A loopback UDP relay between one client and a server that keeps every client datagram:
    the real packets of a real connection, to mutate and replay."""

    def __init__(self) -> None:
        self.captured: list[bytes] = []
        self.client_addr: tuple[str, int] | None = None
        self.up: asyncio.DatagramTransport | None = None
        self.down: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self, server_port: int) -> None:
        loop = asyncio.get_running_loop()
        relay = self

        class Up(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if relay.down is not None and relay.client_addr is not None:
                    relay.down.sendto(data, relay.client_addr)

        class Down(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.client_addr = addr
                relay.captured.append(data)
                if relay.up is not None:
                    relay.up.sendto(data)

        self.up, _ = await loop.create_datagram_endpoint(Up, remote_addr=("127.0.0.1", server_port))
        self.down, _ = await loop.create_datagram_endpoint(Down, local_addr=("127.0.0.1", 0))
        self.port = self.down.get_extra_info("sockname")[1]

    def close(self) -> None:
        for transport in (self.up, self.down):
            if transport is not None:
                transport.close()


def fuzz_datagrams(rng: random.Random, captured: list[bytes]) -> list[bytes]:
    """One batch: mutated real packets, duplicates, a reordered run, splices, random datagrams."""
    kind = rng.randrange(6)
    if kind == 0 or not captured:
        return [rng.randbytes(rng.randrange(1, 1400)) for _ in range(rng.randrange(1, 6))]
    if kind == 1:
        return [mutate(rng, rng.choice(captured)) for _ in range(rng.randrange(1, 6))]
    if kind == 2:  # exact duplicates (replays)
        return [rng.choice(captured)] * rng.randrange(1, 4)
    if kind == 3:  # a reordered run of the real conversation
        run = list(captured[: rng.randrange(1, len(captured) + 1)])
        rng.shuffle(run)
        return run
    if kind == 4:  # splice two real packets
        a, b = rng.choice(captured), rng.choice(captured)
        return [a[: rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1) :]]
    # a long header kept (type bits and version), the rest random: reaches deeper parsing
    a = rng.choice(captured)
    keep = rng.randrange(1, min(len(a), 24) + 1)
    return [a[:keep] + rng.randbytes(rng.randrange(0, 1300))]


async def throw_datagrams(
    server_port: int, rng: random.Random, connect: Callable[[int], Awaitable[RpcClient]], talk: Callable[[RpcClient], Awaitable[Any]]
) -> int:
    """Capture a real connection through a relay, then DATAGRAMS mutated or random datagrams at
    the server: from fresh sockets, and on the live connection's own path. Returns how many."""
    relay = Relay()
    await relay.start(server_port)
    client = await connect(relay.port)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PHASE_SECONDS
    sent = 0
    try:
        await talk(client)
        assert relay.captured, "the relay saw no datagram"
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        while sent < DATAGRAMS and loop.time() < deadline:
            for datagram in fuzz_datagrams(rng, relay.captured):
                if rng.random() < 0.3 and relay.up is not None:
                    relay.up.sendto(datagram)  # on the live connection's path
                else:
                    rng.choice(sockets).sendto(datagram, ("127.0.0.1", server_port))
                sent += 1
            await asyncio.sleep(0.002)
    finally:
        for sock in sockets:
            sock.close()
        await client.close()
        relay.close()
    return sent


# --------------------------------------------------------------------------- the core's endpoint


def assert_no_server_errors(caplog: pytest.LogCaptureFixture, seed: int) -> None:
    """The in-process server logged no error: nothing it did not handle."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"seed {seed}: " + "\n".join(f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in errors[:5])


async def test_core_endpoint_survives_stream_fuzz(start_core: CoreFactory, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811 (the imported fixture)
    caplog.set_level(logging.WARNING)
    core: Core = await start_core(max_frame_bytes=MAX_FRAME, request_arrival_timeout_s=0.5)
    rng = random.Random(SEED)
    ops = fields_of(INSTANCE_REQUESTS)
    async with well_behaved_instance(core) as good:
        stranger = await core.client()  # never registers: every op but register is refused
        registered, row = await core.running_instance()
        token = core.token(row.instance_id)
        valid: list[dict[str, Any]] = [
            {"op": "register", "instance_id": row.instance_id, "token": token, "attempt": 1},
            {"op": "register", "instance_id": "ghost", "token": token, "attempt": 1},
            {"op": "checkpoint", "checkpoint_id": "c1", "state": b"s"},
            {"op": "get_checkpoint", "checkpoint_id": "c1"},
            {"op": "sleep", "checkpoint_id": "z", "duration_ms": 10, "state": b""},
            {"op": "wait_signal", "name": "n", "checkpoint_id": "w", "timeout_ms": 0},
            {"op": "poll_signals"},
            {"op": "event", "type": "heartbeat"},
            {"op": "status"},
        ]
        outcomes = await throw_streams([stranger, registered], rng, ops, valid, SEED)
        await abuse_raw_streams(stranger, rng, ops, valid)
        await abuse_raw_streams(registered, rng, ops, valid)
        before = good[0]
        await asyncio.sleep(1.0)  # half-open streams reach their arrival deadline meanwhile
        assert good[0] > before, "the well-behaved instance stalled"
        assert sum(outcomes.values()) >= min(STREAM_CASES, 100), outcomes
        assert set(outcomes) - {"ok"}, outcomes
        # Both hostile connections still get answers to well-formed requests (a fuzzed
        # register may have bound the stranger: an answer either way, never a dropped stream).
        for client in (stranger, registered):
            try:
                await client.call({"op": "status"})
            except RuntaraError as error:
                check_refusal(error, SEED, b"status")
    fresh, _ = await core.running_instance()
    await fresh.request(CheckpointRequest(checkpoint_id="after", state=b"ok"), CheckpointResponse)
    assert_no_server_errors(caplog, SEED)


async def test_core_endpoint_survives_datagram_fuzz(start_core: CoreFactory, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811 (the imported fixture)
    caplog.set_level(logging.WARNING)
    core: Core = await start_core(max_frame_bytes=MAX_FRAME)
    rng = random.Random(SEED + 1)
    victim = await core.new_instance()

    async def connect(port: int) -> RpcClient:
        client = RpcClient("127.0.0.1", port, alpn=INSTANCE_ALPN, tls=ClientTls(core.ca), options=OPTIONS)
        await client.connect()
        return client

    async def talk(client: RpcClient) -> None:
        await client.request(
            RegisterRequest(instance_id=victim.instance_id, token=core.token(victim.instance_id), attempt=1),
            RegisterResponse,
        )
        for n in range(5):
            await client.request(CheckpointRequest(checkpoint_id=f"v{n}", state=b"v"), CheckpointResponse)

    async with well_behaved_instance(core) as good:
        sent = await throw_datagrams(core.port, rng, connect, talk)
        before = good[0]
        await asyncio.sleep(0.3)
        assert good[0] > before, "the well-behaved instance stalled"
    assert sent >= min(DATAGRAMS, 100)
    fresh, _ = await core.running_instance()  # new connections are still accepted
    await fresh.request(CheckpointRequest(checkpoint_id="after", state=b"ok"), CheckpointResponse)
    assert_no_server_errors(caplog, SEED + 1)


# --------------------------------------------------------------------------- the environment's endpoint


@asynccontextmanager
async def good_manager(environment: EnvironmentProcess) -> AsyncIterator[list[int]]:
    """A management client calling health and list_instances back to back; fails the test if
    any call fails."""
    done = [0]
    stop = asyncio.Event()
    async with environment.client() as client:

        async def work() -> None:
            for _ in range(1_000_000):
                if stop.is_set():
                    return
                health, _ = await asyncio.gather(client.health(), client.list_instances())
                assert health.version
                done[0] += 1
                await asyncio.sleep(0.005)

        task = asyncio.ensure_future(work())
        try:
            yield done
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        await client.health()


def assert_environment_healthy(environment: EnvironmentProcess, seed: int) -> None:
    assert environment.alive, f"seed {seed}: the environment died:\n{environment.log()[-4000:]}"
    log = environment.log()
    assert "Traceback" not in log and "Exception in callback" not in log, f"seed {seed}:\n{log[-4000:]}"


async def management_client(environment: EnvironmentProcess, port: int | None = None, *, hello: bool) -> RpcClient:
    rpc = RpcClient("127.0.0.1", port or environment.mgmt_port, alpn=MANAGEMENT_ALPN, tls=ClientTls(environment.ca), options=OPTIONS)
    await rpc.connect()
    if hello:
        await rpc.call({"op": "hello", "token": environment.admin_token})
    return rpc


async def test_management_endpoint_survives_stream_fuzz(make_environment: MakeEnvironment) -> None:  # noqa: F811 (the imported fixture)
    environment = await make_environment(
        extra_env=passthrough_env(), max_frame_bytes=MAX_FRAME, request_arrival_timeout_s=0.5, max_image_bytes=100_000
    )
    rng = random.Random(SEED + 2)
    ops = fields_of(MANAGEMENT_REQUESTS)
    token = environment.admin_token
    valid: list[dict[str, Any]] = [
        {"op": "hello", "token": token},
        {"op": "health"},
        {"op": "list_images"},
        {"op": "list_instances", "limit": 5},
        {"op": "get_instance", "instance_id": "nope"},
        {"op": "start_instance", "image": "nope", "input": {"a": 1}},
        {"op": "send_signal", "instance_id": "nope", "signal": "cancel"},
        {"op": "send_custom_signal", "instance_id": "nope", "name": "n", "payload": 1},
        {"op": "list_events", "instance_id": "nope"},
        {"op": "get_image", "image": "nope"},
    ]
    async with good_manager(environment) as good:
        stranger = await management_client(environment, hello=False)
        authenticated = await management_client(environment, hello=True)
        outcomes = await throw_streams([stranger, authenticated], rng, ops, valid, SEED + 2)
        await abuse_raw_streams(stranger, rng, ops, valid)
        await abuse_raw_streams(authenticated, rng, ops, valid)
        before = good[0]
        await asyncio.sleep(1.0)
        assert good[0] > before, "the well-behaved client stalled"
        assert sum(outcomes.values()) >= min(STREAM_CASES, 100), outcomes
        await authenticated.call({"op": "hello", "token": token})  # a fuzzed hello may have logged it out
        assert "instances" in await authenticated.call({"op": "health"})
        for client in (stranger, authenticated):
            await client.close()
    assert_environment_healthy(environment, SEED + 2)


async def test_management_endpoint_survives_datagram_fuzz(make_environment: MakeEnvironment) -> None:  # noqa: F811 (the imported fixture)
    environment = await make_environment(extra_env=passthrough_env(), max_frame_bytes=MAX_FRAME)
    rng = random.Random(SEED + 3)

    async def connect(port: int) -> RpcClient:
        return await management_client(environment, port, hello=False)

    async def talk(client: RpcClient) -> None:
        await client.call({"op": "hello", "token": environment.admin_token})
        for _ in range(3):
            await client.call({"op": "health"})

    async with good_manager(environment) as good:
        sent = await throw_datagrams(environment.mgmt_port, rng, connect, talk)
        before = good[0]
        await asyncio.sleep(0.3)
        assert good[0] > before, "the well-behaved client stalled"
    assert sent >= min(DATAGRAMS, 100)
    async with environment.client() as fresh:  # new connections are still accepted
        await fresh.health()
    assert_environment_healthy(environment, SEED + 3)




# --------------------------------------------------------------------------- regressions found by the fuzz


async def test_request_streams_reset_midway_give_their_credit_back(start_core: CoreFactory) -> None:  # noqa: F811
    """Found by ``abuse_raw_streams`` (RUNTARA_FUZZ_EXAMPLES=36, seed 1): a client that resets
    its request streams midway ran out of stream credit after 128 of them, for good. The server
    never closed its own half of such a stream, so none of them ever closed; it now resets it
    (``RpcServerProtocol._reset_sending``)."""
    core: Core = await start_core()
    client = await core.client()
    protocol = client._protocol
    assert protocol is not None
    quic = protocol._quic
    for n in range(3 * core.server.settings.max_streams_per_connection):
        async with asyncio.timeout(5):  # credit must come back
            await protocol._await_stream_credit()
        stream_id = quic.get_next_available_stream_id()
        if n % 2:
            quic.send_stream_data(stream_id, b"\x00\x00\x00\x10\x81")  # a frame cut short
        quic.reset_stream(stream_id, 0x7)
        protocol.transmit()
        await asyncio.sleep(0)
    with pytest.raises(RuntaraError) as caught:  # and the connection still answers
        await client.request(CheckpointRequest(checkpoint_id="x", state=b""), CheckpointResponse)
    assert caught.value.code is ErrorCode.UNAUTHENTICATED
