"""Transport benchmark: the QUIC RPC path (RpcServer + RpcClient) against plain asyncio TCP.

    PYTHONPATH=. .venv/bin/python bench/transport.py [--quick] [--only quic|tcp]
        [--profile [--profile-in-flight N]] [--ack-delay SECONDS] [--uvloop]

This process is the client. It starts itself again with ``--serve`` as the server, in a
subprocess (as in production, where the two never share an event loop), which hosts both
servers on 127.0.0.1 and serves the same handler table on each: an echo op with ~200-byte
msgpack frames each way, validated through ``Request``/``Message``/``Route`` like a real op.

The TCP baseline sends the same 4-byte-length-prefixed msgpack frames through the project's
frame codec. Several RPCs in flight on one TCP connection are pipelined: the envelope carries
an ``id`` that the response echoes (the analogue of a QUIC stream id), and the server serves
each request in a task of its own, as the QUIC server does per stream.

Every phase warms up, then runs until its time or RPC budget is spent. Server CPU comes from
psutil on the server process (in nanoseconds from /proc/PID/schedstat where there is one), client
CPU from ``time.process_time()``, datagrams from counters wrapped around aioquic in this process
(on loopback, what the client receives is what the server sent). ``--profile`` runs the
sequential QUIC phase (``--profile-in-flight N``: N in flight) plain, then under cProfile in the
server process, then in the client, and prints where the CPU goes. ``--ack-delay`` and
``--uvloop`` try transport tuning without touching the project code: both patch this process
and the server process only. bench/README.md has the findings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.metadata
import itertools
import os
import platform
import pstats
import re
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import psutil
from aioquic.quic.connection import QuicConnection

from runtara_core.errors import ConnectionLost, RuntaraError
from runtara_core.transport import quic_config
from runtara_core.transport.certs import DevCertificates, ensure_dev_certificates
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.quic_server import RpcServer
from runtara_core.transport.tls import ClientTls, ServerTls
from runtara_core.wire.dispatch import Route, dispatch, routes
from runtara_core.wire.envelope import ok_response, parse_response
from runtara_core.wire.frame_codec import FrameDecoder, encode_frame, unpack_payload
from runtara_core.wire.messages import Message, Request

T = TypeVar("T")

HOST = "127.0.0.1"
ALPN = "runtara-bench/1"
CALL_TIMEOUT_S = 10.0
SERVER_START_TIMEOUT_S = 20.0
READ_CHUNK = 64 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]


# --- the service both transports serve ------------------------------------------------------------


class Echo(Request):
    op = "echo"
    text: str


class EchoReply(Message):
    text: str


class ProfileControl(Request):
    op = "bench_profile"
    action: Literal["start", "stop"]
    path: str = ""


PAYLOAD_TEXT = ("runtara bench payload " * 9)[:180]
ECHO = Echo(text=PAYLOAD_TEXT)


def cpu_profiler() -> cProfile.Profile:
    """A profiler that counts CPU time, so time asleep in epoll does not show as cost."""
    return cProfile.Profile(time.process_time)


class ServerProfiler:
    """cProfile in the server process, switched on and off by the client over RPC."""

    def __init__(self) -> None:
        self._profile: cProfile.Profile | None = None

    def start(self) -> None:
        self._profile = cpu_profiler()
        self._profile.enable()

    def stop(self, path: Path) -> None:
        if self._profile is not None:
            self._profile.disable()
            self._profile.dump_stats(path)
            self._profile = None


def service_routes(profiler: ServerProfiler) -> dict[str, Route[Any, Any]]:
    async def echo(request: Echo, session: object) -> EchoReply:
        return EchoReply(text=request.text)

    async def profile(request: ProfileControl, session: object) -> None:
        if request.action == "start":
            profiler.start()
        else:
            profiler.stop(Path(request.path))

    return routes(Route(Echo, echo), Route(ProfileControl, profile))


# --- the TCP baseline -----------------------------------------------------------------------------


class TcpRpcServer:
    """The same frames and handler table over asyncio TCP, one task per request."""

    def __init__(self, table: dict[str, Route[Any, Any]]) -> None:
        self._routes = table
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve_connection, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while data := await reader.read(READ_CHUNK):
                for payload in decoder.feed(data):
                    task = asyncio.create_task(self._serve(unpack_payload(payload), writer))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except (ConnectionError, RuntaraError):
            pass
        finally:
            writer.close()

    async def _serve(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        response = await dispatch(self._routes, message, None)
        response["id"] = message.get("id")
        if not writer.is_closing():
            # No drain: each client has at most a few dozen small responses outstanding.
            writer.write(encode_frame(response))


class TcpRpcClient:
    """Pipelines requests on one TCP connection and matches responses by ``id``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._receiver = asyncio.create_task(self._receive())

    @classmethod
    async def connect(cls, host: str, port: int) -> TcpRpcClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def call(self, request: Request, timeout_s: float | None = None) -> dict[str, Any]:
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self._writer.write(encode_frame({**request.to_wire(), "id": request_id}))
        try:
            async with asyncio.timeout(timeout_s):
                return parse_response(await future)
        finally:
            self._pending.pop(request_id, None)

    async def _receive(self) -> None:
        decoder = FrameDecoder()
        try:
            while data := await self._reader.read(READ_CHUNK):
                for payload in decoder.feed(data):
                    response = unpack_payload(payload)
                    future = self._pending.pop(response.pop("id"), None)
                    if future is not None and not future.done():
                        future.set_result(response)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionLost("the TCP connection closed"))

    async def close(self) -> None:
        self._receiver.cancel()
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


# --- tuning applied to both processes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tuning:
    ack_delay_s: float
    uvloop: bool

    def apply(self) -> None:
        """Patch the project's ACK delay in this process; ``tune_connection`` reads the constant
        for each new connection."""
        quic_config.ACK_DELAY_S = self.ack_delay_s

    def as_args(self) -> list[str]:
        return ["--ack-delay", repr(self.ack_delay_s)] + (["--uvloop"] if self.uvloop else [])

    def describe(self) -> str:
        loop = "uvloop" if self.uvloop else "asyncio"
        return f"loop {loop}, QUIC ACK delay {self.ack_delay_s * 1000:g} ms"


def run_async(coroutine: Coroutine[Any, Any, T], tuning: Tuning) -> T:
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if tuning.uvloop:
        import uvloop  # optional: pip install uvloop into the venv; not a project dependency

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coroutine)


# --- the server process ---------------------------------------------------------------------------


async def serve(certs: DevCertificates) -> None:
    """Serve both transports until the parent closes our stdin, then stop."""
    table = service_routes(ServerProfiler())
    quic = RpcServer(alpn=ALPN, routes=table, tls=ServerTls(certs.server_cert, certs.server_key))
    tcp = TcpRpcServer(table)
    _, quic_port = await quic.start(HOST, 0)
    tcp_port = await tcp.start(HOST, 0)
    print(f"READY {quic_port} {tcp_port}", flush=True)
    try:
        await stdin_closed()
    finally:
        await tcp.stop()
        await quic.stop(grace_s=0.5)


async def stdin_reader() -> asyncio.StreamReader:
    """This process's stdin, read without blocking the loop (the parent's control channel)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def stdin_closed() -> None:
    await (await stdin_reader()).read()


@dataclass(frozen=True, slots=True)
class ServerHandle:
    process: psutil.Process
    quic_port: int
    tcp_port: int


@contextlib.contextmanager
def server_process(certs_dir: Path, tuning: Tuning) -> Iterator[ServerHandle]:
    """Start ``--serve`` in a subprocess; always stop it (stdin EOF, then kill)."""
    script = [str(Path(__file__).resolve()), "--serve", "--certs", str(certs_dir), *tuning.as_args()]
    with bench_subprocess(script) as child:
        quic_port, tcp_port = child.ports[:2]
        yield ServerHandle(child.process, quic_port, tcp_port)


@dataclass(frozen=True, slots=True)
class Child:
    """A bench subprocess that announced itself with ``READY [PORT ...]``."""

    popen: subprocess.Popen[str]
    process: psutil.Process
    ports: list[int]


@contextlib.contextmanager
def bench_subprocess(arguments: Sequence[str], env: dict[str, str] | None = None) -> Iterator[Child]:
    """Run ``python ARGUMENTS`` with the repository importable and pipes on stdin and stdout;
    wait for its ``READY`` line. Closing its stdin asks it to stop; it is killed if it lingers."""
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, **(env or {}), "PYTHONPATH": python_path}
    command = [sys.executable, *arguments]
    pipe = subprocess.PIPE
    popen = subprocess.Popen(command, stdin=pipe, stdout=pipe, text=True, env=environment)
    try:
        yield Child(popen, psutil.Process(popen.pid), read_ready_line(popen))
    finally:
        assert popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            popen.stdin.close()
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def read_ready_line(child: subprocess.Popen[str]) -> list[int]:
    """The ports on the child's ``READY`` line (none for a child that serves nothing)."""
    assert child.stdout is not None
    readable, _, _ = select.select([child.stdout], [], [], SERVER_START_TIMEOUT_S)
    line = child.stdout.readline() if readable else ""
    if line.split()[:1] != ["READY"]:
        raise RuntimeError(f"the bench subprocess did not start (exit code {child.poll()}): {line!r}")
    return [int(word) for word in line.split()[1:]]


# --- what the client measures ---------------------------------------------------------------------


class DatagramCounter:
    """Counts the QUIC datagrams this process sends and receives, at aioquic's connection level
    (below any protocol class, so an override of ``datagram_received`` cannot hide them)."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    def install(self) -> None:
        counter = self
        build = QuicConnection.datagrams_to_send
        receive = QuicConnection.receive_datagram

        def datagrams_to_send(self: QuicConnection, now: float) -> list[tuple[bytes, Any]]:
            datagrams = build(self, now)
            counter.sent += len(datagrams)
            return datagrams

        def receive_datagram(self: QuicConnection, data: bytes, addr: Any, now: float) -> None:
            counter.received += 1
            receive(self, data, addr, now)

        QuicConnection.datagrams_to_send = datagrams_to_send  # type: ignore[method-assign]
        QuicConnection.receive_datagram = receive_datagram  # type: ignore[method-assign]


@dataclass(frozen=True, slots=True)
class Usage:
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    machine_cpu_s: float
    datagrams: int

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.wall_s - other.wall_s,
            self.server_cpu_s - other.server_cpu_s,
            self.client_cpu_s - other.client_cpu_s,
            self.machine_cpu_s - other.machine_cpu_s,
            self.datagrams - other.datagrams,
        )

    @property
    def others_cpu_s(self) -> float:
        """CPU that neither bench process used: other processes, and time the host stole."""
        return max(0.0, self.machine_cpu_s - self.server_cpu_s - self.client_cpu_s)


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of a process. psutil counts in 10 ms clock ticks; for a single-threaded process
    (the server) Linux's /proc/PID/schedstat has the same in nanoseconds."""
    if process.num_threads() == 1:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(Path(f"/proc/{process.pid}/schedstat").read_text().split()[0]) / 1e9
    times = process.cpu_times()
    return float(times.user + times.system)


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine, all cores, in 10 ms clock ticks."""
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq + times.steal)


@dataclass(frozen=True, slots=True)
class Meter:
    server: psutil.Process
    datagrams: DatagramCounter

    def read(self) -> Usage:
        return Usage(
            wall_s=time.perf_counter(),
            server_cpu_s=cpu_seconds(self.server),
            client_cpu_s=time.process_time(),
            machine_cpu_s=machine_cpu_seconds(),
            datagrams=self.datagrams.sent + self.datagrams.received,
        )


class BenchConnection(Protocol):
    async def call(self, request: Request, timeout_s: float | None = None) -> dict[str, Any]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Transport:
    name: str
    connect: Callable[[], Awaitable[BenchConnection]]
    counts_datagrams: bool


def quic_transport(port: int, ca_cert: Path) -> Transport:
    async def connect() -> BenchConnection:
        client = RpcClient(
            HOST,
            port,
            alpn=ALPN,
            tls=ClientTls(ca_cert),
            options=ClientOptions(request_timeout_s=CALL_TIMEOUT_S),
        )
        await client.connect()
        return client

    return Transport("QUIC", connect, counts_datagrams=True)


def tcp_transport(port: int) -> Transport:
    async def connect() -> BenchConnection:
        return await TcpRpcClient.connect(HOST, port)

    return Transport("TCP", connect, counts_datagrams=False)


@dataclass(frozen=True, slots=True)
class Plan:
    warmup_s: float
    phase_s: float
    max_rpcs: int
    connect_s: float
    max_connects: int
    run_limit_s: float


FULL = Plan(warmup_s=0.5, phase_s=5.0, max_rpcs=50_000, connect_s=2.0, max_connects=1000, run_limit_s=150)
QUICK = Plan(warmup_s=0.2, phase_s=1.5, max_rpcs=10_000, connect_s=0.5, max_connects=200, run_limit_s=45)
CONNECT_WARMUP = 3


@dataclass(frozen=True, slots=True)
class Load:
    connections: int
    in_flight: int  # per connection

    @property
    def label(self) -> str:
        if self.connections == 1:
            return "sequential" if self.in_flight == 1 else f"{self.in_flight} in flight, 1 conn"
        return f"{self.connections} conns x {self.in_flight} in flight"


LOADS = (Load(1, 1), Load(1, 8), Load(1, 64), Load(16, 1))
SEQUENTIAL = LOADS[0]


@dataclass
class Budget:
    """How many more RPCs (or connects) may start, and until when."""

    remaining: int
    deadline: float

    @classmethod
    def of(cls, seconds: float, count: int) -> Budget:
        return cls(remaining=count, deadline=time.perf_counter() + seconds)

    def take(self) -> bool:
        if self.remaining <= 0 or time.perf_counter() >= self.deadline:
            return False
        self.remaining -= 1
        return True


@dataclass(frozen=True, slots=True)
class PhaseResult:
    transport: str
    phase: str
    latencies_ns: Sequence[int]
    usage: Usage
    datagrams_counted: bool

    @property
    def count(self) -> int:
        return len(self.latencies_ns)

    def percentile_ms(self, percent: int) -> float:
        if self.count == 1:
            return self.latencies_ns[0] / 1e6
        cuts = statistics.quantiles(self.latencies_ns, n=100, method="inclusive")
        return cuts[percent - 1] / 1e6

    @property
    def per_second(self) -> float:
        return self.count / self.usage.wall_s

    @property
    def server_us_per_op(self) -> float:
        return self.usage.server_cpu_s / self.count * 1e6

    @property
    def client_us_per_op(self) -> float:
        return self.usage.client_cpu_s / self.count * 1e6

    @property
    def server_busy(self) -> float:
        return self.usage.server_cpu_s / self.usage.wall_s

    @property
    def client_busy(self) -> float:
        return self.usage.client_cpu_s / self.usage.wall_s

    @property
    def others_busy(self) -> float:
        return self.usage.others_cpu_s / self.usage.wall_s

    @property
    def datagrams_per_op(self) -> float | None:
        return self.usage.datagrams / self.count if self.datagrams_counted else None


# --- the phases -----------------------------------------------------------------------------------


async def measure_connects(transport: Transport, plan: Plan, meter: Meter) -> PhaseResult:
    """Connect and close one connection at a time, until the plan's connect budget is spent;
    latency is the connect alone, CPU includes the close."""
    for _ in range(CONNECT_WARMUP):
        await (await transport.connect()).close()
    latencies: list[int] = []
    budget = Budget.of(plan.connect_s, plan.max_connects)
    before = meter.read()
    while budget.take():
        started = time.perf_counter_ns()
        connection = await transport.connect()
        latencies.append(time.perf_counter_ns() - started)
        await connection.close()
    usage = meter.read() - before
    return PhaseResult(transport.name, "connect (handshake)", latencies, usage, transport.counts_datagrams)


async def measure_rpcs(
    transport: Transport,
    load: Load,
    plan: Plan,
    meter: Meter,
    measured: contextlib.AbstractAsyncContextManager[None] | None = None,
) -> PhaseResult:
    """Warm up, then run ``load`` until the plan's time or RPC budget is spent.

    ``measured`` wraps only the measured part (the profiler, for ``--profile``).
    """
    connections = await asyncio.gather(*(transport.connect() for _ in range(load.connections)))
    try:
        await check_echo(connections[0])
        await run_load(connections, load.in_flight, Budget.of(plan.warmup_s, plan.max_rpcs))
        async with measured or contextlib.nullcontext():
            before = meter.read()
            latencies = await run_load(connections, load.in_flight, Budget.of(plan.phase_s, plan.max_rpcs))
            usage = meter.read() - before
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))
    return PhaseResult(transport.name, load.label, latencies, usage, transport.counts_datagrams)


async def check_echo(connection: BenchConnection) -> None:
    response = await connection.call(ECHO, CALL_TIMEOUT_S)
    if response.get("text") != PAYLOAD_TEXT:
        raise RuntimeError(f"echo came back wrong: {response!r}")


async def run_load(connections: Sequence[BenchConnection], in_flight: int, budget: Budget) -> list[int]:
    latencies: list[int] = []
    await asyncio.gather(
        *(
            call_until_spent(connection, budget, latencies)
            for connection in connections
            for _ in range(in_flight)
        )
    )
    return latencies


async def call_until_spent(connection: BenchConnection, budget: Budget, latencies: list[int]) -> None:
    while budget.take():
        started = time.perf_counter_ns()
        await connection.call(ECHO, CALL_TIMEOUT_S)
        latencies.append(time.perf_counter_ns() - started)


# --- reporting ------------------------------------------------------------------------------------

COLUMNS = (
    ("transport", 9), ("phase", 25), ("n", 6), ("p50 ms", 7), ("p99 ms", 7), ("ops/s", 7),
    ("srv us/op", 9), ("srv CPU", 7), ("cli us/op", 9), ("cli CPU", 7), ("others", 6), ("dgram/op", 8),
)  # fmt: skip


def table_header(first_column: str = "transport") -> str:
    header = format_cells([first_column] + [name for name, _ in COLUMNS[1:]])
    return header + "\n" + "-" * len(header)


def table_row(result: PhaseResult) -> str:
    datagrams = result.datagrams_per_op
    return format_cells(
        [
            result.transport,
            result.phase,
            str(result.count),
            f"{result.percentile_ms(50):.3f}",
            f"{result.percentile_ms(99):.3f}",
            f"{result.per_second:.0f}",
            f"{result.server_us_per_op:.0f}",
            f"{result.server_busy:.0%}",
            f"{result.client_us_per_op:.0f}",
            f"{result.client_busy:.0%}",
            f"{result.others_busy:.0%}",
            "-" if datagrams is None else f"{datagrams:.2f}",
        ]
    )


def format_cells(values: Sequence[str]) -> str:
    """The text columns (the first two) left-aligned, the numbers right-aligned."""
    return "  ".join(
        value.ljust(width) if index < 2 else value.rjust(width)
        for index, (value, (_, width)) in enumerate(zip(values, COLUMNS, strict=True))
    )


def comparison(results: Sequence[PhaseResult]) -> str:
    """QUIC divided by TCP, phase by phase."""
    by_key = {(r.transport, r.phase): r for r in results}
    lines = ["QUIC / TCP                   p50 latency  throughput  server CPU per op"]
    for phase in dict.fromkeys(r.phase for r in results):
        quic, tcp = by_key.get(("QUIC", phase)), by_key.get(("TCP", phase))
        if quic is None or tcp is None:
            continue
        latency = ratio(quic.percentile_ms(50), tcp.percentile_ms(50))
        throughput = ratio(quic.per_second, tcp.per_second)
        server_cpu = ratio(quic.server_us_per_op, tcp.server_us_per_op)
        lines.append(f"  {phase:<25} {latency:>13} {throughput:>11} {server_cpu:>18}")
    return "\n".join(lines)


def ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b else "-"


def banner(plan: Plan, tuning: Tuning, server: ServerHandle) -> str:
    request = len(encode_frame(ECHO.to_wire()))
    response = len(encode_frame(ok_response(EchoReply(text=PAYLOAD_TEXT).to_wire())))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    aioquic = importlib.metadata.version("aioquic")
    machine = f"Python {platform.python_version()}, aioquic {aioquic}, {os.cpu_count()} CPUs (load {load})"
    frames = f"request {request} B, response {response} B (TCP adds a 2-3 B request id)"
    phases = f"{plan.warmup_s:g} s warm-up, then up to {plan.phase_s:g} s or {plan.max_rpcs} RPCs"
    lines = (
        f"Runtara transport bench: {machine}, {tuning.describe()}",
        f"frames: {frames}; server pid {server.process.pid} on {HOST}",
        f"each phase: {phases}; TCP in flight > 1: pipelined on one connection, matched by request id",
        "us/op: CPU microseconds per RPC (per connect) in the server / client process; "
        + "CPU: share of one core busy during the phase;",
        "others: CPU that other processes (and the hypervisor) took meanwhile; above ~20% the row is noisy",
    )
    return "\n".join(lines) + "\n"


# --- profiles -------------------------------------------------------------------------------------

PROFILE_TOP = 20
PROFILE_AREAS = 14


@dataclass(frozen=True, slots=True)
class ProfileLine:
    where: str
    calls: int
    tottime_s: float
    cumtime_s: float


def load_profile(path: Path) -> list[ProfileLine]:
    # pstats keeps {(file, line, function): (primitive calls, calls, tottime, cumtime, callers)}
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    return [
        ProfileLine(describe_function(*key), calls, tottime, cumtime)
        for key, (_, calls, tottime, cumtime, _) in stats.items()
    ]


def describe_function(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name  # a C function: "<method 'sendto' of '_socket.socket' objects>"
    return f"{short_path(filename)}:{line}({name})"


def short_path(filename: str) -> str:
    for marker in ("site-packages/", f"python{sys.version_info.major}.{sys.version_info.minor}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    with contextlib.suppress(ValueError):
        return str(Path(filename).relative_to(REPO_ROOT))
    return filename


C_OWNER = re.compile(r"of '([\w.]+)' objects|built-in method ([\w]+)\.")


def area_of(where: str) -> str:
    """Group a function by module (Python) or by extension type (C)."""
    if where.startswith("<"):
        owner = C_OWNER.search(where)
        return "C: " + (owner.group(1) or owner.group(2) if owner else "other")
    module = where.split(":", 1)[0].removesuffix(".py").replace("/", ".")
    parts = module.split(".")
    depth = 3 if parts[0] == "aioquic" else 2 if parts[0] in ("runtara_core", "asyncio") else 1
    return ".".join(parts[:depth])


def profile_report(title: str, path: Path, rpcs: int, unprofiled_us_per_rpc: float) -> str:
    """Where the CPU goes, as shares of the profiled total (the profiler's own overhead
    inflates many-small-call Python code most, so read shares as rough)."""
    lines = load_profile(path)
    total = sum(line.tottime_s for line in lines)
    profiled_us = total / rpcs * 1e6
    out = [
        f"== {title}, {rpcs} RPCs: {profiled_us:.0f} us CPU per RPC under the profiler, "
        + f"{unprofiled_us_per_rpc:.0f} us without ==",
        "-- own time by module or C type: share, profiled us/RPC, area",
    ]
    areas: dict[str, float] = {}
    for line in lines:
        area = area_of(line.where)
        areas[area] = areas.get(area, 0.0) + line.tottime_s
    for area, seconds in sorted(areas.items(), key=lambda item: -item[1])[:PROFILE_AREAS]:
        out.append(f"  {seconds / total:4.0%}  {seconds / rpcs * 1e6:7.1f}  {area}")
    orders: tuple[tuple[str, Callable[[ProfileLine], float]], ...] = (
        ("own time", lambda line: line.tottime_s),
        ("cumulative time", lambda line: line.cumtime_s),
    )
    for label, key in orders:
        out.append(f"-- top {PROFILE_TOP} by {label}: own share, cumulative share, calls/RPC, function")
        for line in sorted(lines, key=key, reverse=True)[:PROFILE_TOP]:
            out.append(
                f"  {line.tottime_s / total:5.1%}  {line.cumtime_s / total:6.1%}  "
                f"{line.calls / rpcs:6.2f}  {line.where}"
            )
    return "\n".join(out)


@contextlib.asynccontextmanager
async def profiled_server(control: BenchConnection, path: Path) -> AsyncIterator[None]:
    await control.call(ProfileControl(action="start"), CALL_TIMEOUT_S)
    try:
        yield
    finally:
        await control.call(ProfileControl(action="stop", path=str(path)), CALL_TIMEOUT_S)


@contextlib.asynccontextmanager
async def profiled_client(path: Path) -> AsyncIterator[None]:
    profile = cpu_profiler()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(path)


# --- the two runs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchRun:
    plan: Plan
    meter: Meter
    transports: Sequence[Transport]
    scratch: Path
    results: list[PhaseResult] = field(default_factory=list)

    def record(self, result: PhaseResult) -> None:
        self.results.append(result)
        print(table_row(result), flush=True)


async def run_benchmark(run: BenchRun) -> None:
    print(table_header(), flush=True)
    async with asyncio.timeout(run.plan.run_limit_s):
        for transport in run.transports:
            run.record(await measure_connects(transport, run.plan, run.meter))
            for load in LOADS:
                run.record(await measure_rpcs(transport, load, run.plan, run.meter))
    if len({r.transport for r in run.results}) > 1:
        print("\n" + comparison(run.results))


async def run_profiles(run: BenchRun, load: Load) -> None:
    """The QUIC phase three times: plain, with the server profiled, with the client profiled."""
    quic = next(t for t in run.transports if t.name == "QUIC")
    server_stats, client_stats = run.scratch / "server.prof", run.scratch / "client.prof"
    print(f"QUIC {load.label}: unprofiled, then server under cProfile, then client (slower)")
    print(table_header(), flush=True)
    async with asyncio.timeout(run.plan.run_limit_s):
        plain = await measure_rpcs(quic, load, run.plan, run.meter)
        run.record(plain)
        control = await quic.connect()
        try:
            measured = profiled_server(control, server_stats)
            server_run = await measure_rpcs(quic, load, run.plan, run.meter, measured)
        finally:
            await control.close()
        run.record(server_run)
        client_run = await measure_rpcs(quic, load, run.plan, run.meter, profiled_client(client_stats))
        run.record(client_run)
    print("\n" + profile_report("server process", server_stats, server_run.count, plain.server_us_per_op))
    print("\n" + profile_report("client process", client_stats, client_run.count, plain.client_us_per_op))


async def client_main(
    args: argparse.Namespace, server: ServerHandle, certs: DevCertificates, scratch: Path
) -> None:
    counter = DatagramCounter()
    counter.install()
    transports = [quic_transport(server.quic_port, certs.ca_cert), tcp_transport(server.tcp_port)]
    if args.profile:
        transports = transports[:1]
    elif args.only:
        transports = [t for t in transports if t.name.lower() == args.only]
    run = BenchRun(QUICK if args.quick else FULL, Meter(server.process, counter), transports, scratch)
    if args.profile:
        await run_profiles(run, Load(1, args.profile_in_flight))
    else:
        await run_benchmark(run)


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (whole run under ~20 s)")
    parser.add_argument("--only", choices=("quic", "tcp"), help="measure one transport")
    parser.add_argument("--profile", action="store_true", help="cProfile the sequential QUIC phase")
    parser.add_argument(
        "--profile-in-flight", type=int, default=1, metavar="N", help="profile N in flight instead"
    )
    parser.add_argument(
        "--ack-delay", type=float, default=quic_config.ACK_DELAY_S, metavar="SECONDS",
        help=f"QUIC delayed-ACK time on both ends (project: {quic_config.ACK_DELAY_S:g}, aioquic: 0.001)",
    )  # fmt: skip
    parser.add_argument("--uvloop", action="store_true", help="run both processes on uvloop")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tuning = Tuning(ack_delay_s=args.ack_delay, uvloop=args.uvloop)
    tuning.apply()
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
            run_async(serve(DevCertificates.in_dir(args.certs)), tuning)
        return 0
    with tempfile.TemporaryDirectory(prefix="runtara-bench-") as scratch:
        certs = ensure_dev_certificates(Path(scratch) / "certs")
        with server_process(certs.server_cert.parent, tuning) as server:
            print(banner(QUICK if args.quick else FULL, tuning, server), flush=True)
            run_async(client_main(args, server, certs, Path(scratch)), tuning)
    return 0


if __name__ == "__main__":
    sys.exit(main())
