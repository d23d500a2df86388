"""Checkpoint benchmark: the core server's instance protocol end to end, on SQLite and PostgreSQL.

    .venv/bin/python bench/checkpoint.py                     # full run, both backends, ~1.5 min
    .venv/bin/python bench/checkpoint.py --quick             # smoke run, ~30 s
    .venv/bin/python bench/checkpoint.py --only sqlite       # or --only postgres
    .venv/bin/python bench/checkpoint.py --duration 10       # seconds per measured phase
    .venv/bin/python bench/checkpoint.py --load-procs 2      # spread concurrent loads over 2 processes
    .venv/bin/python bench/checkpoint.py --profile 10        # then cProfile the core under 10 conns

This process is the load generator (instances). The core server (``CoreServer``, the production
class, on QUIC with ALPN ``runtara-instance/1``) runs in a child process of its own, so its CPU
is measured apart (psutil / schedstat, as in ``bench/transport.py``). For each backend (SQLite on
a temporary file; PostgreSQL on RUNTARA_TEST_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/test, in a throwaway schema dropped at the end; skipped with
a note when unreachable) the run measures:

- ``checkpoint, N conns``: N instance connections (N = 1, 10, 100), each registered as its own
  instance and saving checkpoints back to back, every one a new id (a real save) with a
  200-byte state. N = 1 is the sequential latency of one instance.
- ``register, 1000 saved``: ``register`` again and again on one connection for an instance with
  1,000 saved checkpoints (the response carries every id and state, ~220 KB).
- ``floor: QUIC echo``: the raw QUIC RPC path (``bench/transport.py``'s echo server, in its own
  child process, same ~200-byte frames), one connection, sequential.
- ``floor: raw insert``: the bare driver doing the same ``INSERT ... ON CONFLICT DO NOTHING``
  (``bench/persistence.py``: sqlite3 on this thread / an asyncpg pool), one writer.

Below the table: checkpoint p50 against the floors (p50 / (echo p50 + raw insert p50)), the
team's targets, and which side was busy.

Columns (as in ``bench/transport.py``): n ops measured; p50 / p99 of one call as the caller sees
it; ops/s all connections together; srv us/op and cli us/op CPU microseconds per op in the core
process / in the load generator process(es) (with ``--load-procs 2`` both load processes
summed); srv CPU / cli CPU the share of one core each kept busy (the client can exceed 100%
with two load processes; a side near 100% per process is the bottleneck); others CPU taken
meanwhile by everything else (PostgreSQL's backends included; above ~20% for SQLite rows the
row is noisy); dgram/op QUIC datagrams per op, both directions, counted in the load generator.
For the raw insert floor, "srv" is the idle core and the driver's CPU is "cli" (plus PostgreSQL
in "others").

The machine has 2 cores and is shared: runs minutes apart differ by +-30%; CPU per op is the
steadiest number. Every phase is bounded in time and in count; each backend's work is bounded by
an overall time limit, and every child process is stopped (stdin closed, then killed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: runtara_core, bench

from bench.persistence import DEFAULT_PG_URL, bench_raw_postgres, bench_raw_sqlite
from bench.transport import (
    CALL_TIMEOUT_S,
    HOST,
    SEQUENTIAL,
    Budget,
    Child,
    DatagramCounter,
    Meter,
    PhaseResult,
    Tuning,
    Usage,
    bench_subprocess,
    measure_rpcs,
    profile_report,
    quic_transport,
    server_process,
    stdin_closed,
    stdin_reader,
    table_header,
    table_row,
)
from bench.transport import Plan as EchoPlan
from runtara_core.config import load_settings
from runtara_core.instance_tokens import InstanceTokens
from runtara_core.persistence import NewImage, NewInstance, Persistence, open_persistence
from runtara_core.persistence.migrations import drop_schema
from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.server import CoreServer
from runtara_core.transport import quic_config
from runtara_core.transport.certs import DevCertificates, ensure_dev_certificates
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.messages import (
    CheckpointRequest,
    CheckpointResponse,
    RegisterRequest,
    RegisterResponse,
)

SECRET_ENV = "RUNTARA_INSTANCE_SECRET"
CONNECT_TIMEOUT_S = 30.0
CONNECT_PARALLEL = 10
"""Handshakes in flight while opening a load's connections (they are CPU-bound on both sides)."""
WORKER_RESULT_TIMEOUT_S = 30.0
PROFILE_WRITE_TIMEOUT_S = 10.0
HISTORY_CHECKPOINTS = 1000
IMAGE_ID = "bench-image"
CONCURRENCY = (1, 10, 100)


@dataclass(frozen=True, slots=True)
class Plan:
    warmup_s: float
    phase_s: float
    max_ops: int
    """Per checkpoint or echo phase, all connections and load processes together."""
    register_s: float
    max_registers: int
    raw_ops: int
    backend_limit_s: float
    """Everything one backend does, setup included."""

    def echo_plan(self) -> EchoPlan:
        return EchoPlan(
            warmup_s=self.warmup_s, phase_s=self.phase_s, max_rpcs=self.max_ops,
            connect_s=0, max_connects=0, run_limit_s=self.backend_limit_s,
        )  # fmt: skip


FULL = Plan(warmup_s=1.0, phase_s=6.0, max_ops=60_000, register_s=4.0, max_registers=1000,
            raw_ops=3000, backend_limit_s=150)  # fmt: skip
QUICK = Plan(warmup_s=0.3, phase_s=1.5, max_ops=15_000, register_s=1.0, max_registers=200,
             raw_ops=500, backend_limit_s=45)  # fmt: skip


# --- the core server process ----------------------------------------------------------------------


async def serve_core(args: argparse.Namespace) -> None:
    """Run the production ``CoreServer`` until the parent closes our stdin.

    The instance secret comes from RUNTARA_INSTANCE_SECRET (set by the parent). PostgreSQL gets
    its throwaway schema through a persistence opened here with the production pool sizes; SQLite
    is opened by the server itself from the URL, as ``runtara-core`` does.
    """
    certs = DevCertificates.in_dir(args.certs)
    settings = load_settings(
        data_dir=args.data_dir,
        database_url=args.database_url,
        core_addr=f"{HOST}:0",
        certs_dir=args.certs,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_ca=certs.ca_cert,
    )
    persistence = await open_persistence(args.database_url, schema=args.schema) if args.schema else None
    server = CoreServer(settings, persistence)
    try:
        _, port = await server.start()
        install_profile_signals(args.profile_path)
        print(f"READY {port}", flush=True)
        await stdin_closed()
    finally:
        await server.stop(grace_s=1.0)
        if persistence is not None:
            await persistence.close()


def install_profile_signals(path: Path | None) -> None:
    """SIGUSR1 starts cProfile on the loop's thread, SIGUSR2 stops it and writes ``path``.

    The profiler counts this thread's CPU time only: with the process's (as ``bench/transport.py``
    does for its single-threaded server) aiosqlite's worker thread would show up as time spent in
    ``epoll.poll``.
    """
    if path is None:
        return
    loop = asyncio.get_running_loop()
    profile = cProfile.Profile(time.thread_time)

    def stop() -> None:
        profile.disable()
        profile.dump_stats(path)

    loop.add_signal_handler(signal.SIGUSR1, profile.enable)
    loop.add_signal_handler(signal.SIGUSR2, stop)


@dataclass(frozen=True, slots=True)
class CoreTarget:
    """Where the core listens, and what an instance needs to register with it."""

    port: int
    ca_cert: Path
    tokens: InstanceTokens


def core_arguments(
    certs_dir: Path, data_dir: Path, database_url: str, schema: str | None, profile_path: Path | None
) -> list[str]:
    arguments = [
        str(Path(__file__).resolve()), "--serve-core", "--certs", str(certs_dir),
        "--data-dir", str(data_dir), "--database-url", database_url,
    ]  # fmt: skip
    if schema is not None:
        arguments += ["--schema", schema]
    if profile_path is not None:
        arguments += ["--profile-path", str(profile_path)]
    return arguments


# --- instances ------------------------------------------------------------------------------------


@dataclass
class InstanceConnection:
    """One registered instance on its own connection, saving a new checkpoint per call."""

    client: RpcClient
    instance_id: str
    saved: int

    async def checkpoint(self, state: bytes) -> None:
        self.saved += 1
        request = CheckpointRequest(checkpoint_id=f"step-{self.saved}", state=state)
        response = await self.client.request(request, CheckpointResponse, CALL_TIMEOUT_S)
        if response.found:
            raise RuntimeError(f"{self.instance_id} step-{self.saved} existed: not a new save")

    async def register(self, tokens: InstanceTokens) -> RegisterResponse:
        token = tokens.mint(self.instance_id, 1)
        request = RegisterRequest(instance_id=self.instance_id, token=token, attempt=1)
        return await self.client.request(request, RegisterResponse, CALL_TIMEOUT_S)


async def open_instance(target: CoreTarget, instance_id: str) -> InstanceConnection:
    client = RpcClient(
        HOST,
        target.port,
        alpn=INSTANCE_ALPN,
        tls=ClientTls(target.ca_cert),
        options=ClientOptions(request_timeout_s=CALL_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S),
    )
    await client.connect()
    connection = InstanceConnection(client, instance_id, 0)
    try:
        connection.saved = len((await connection.register(target.tokens)).checkpoints)
    except BaseException:
        await client.close()
        raise
    return connection


async def open_instances(target: CoreTarget, instance_ids: Sequence[str]) -> list[InstanceConnection]:
    """Connect and register each instance, a few handshakes at a time; all or none."""
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one(instance_id: str) -> InstanceConnection:
        async with gate:
            return await open_instance(target, instance_id)

    results = await asyncio.gather(*(one(i) for i in instance_ids), return_exceptions=True)
    connections = [r for r in results if isinstance(r, InstanceConnection)]
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        await close_instances(connections)
        raise failure
    return connections


async def close_instances(connections: Sequence[InstanceConnection]) -> None:
    await asyncio.gather(*(c.client.close() for c in connections))


async def run_checkpoints(
    connections: Sequence[InstanceConnection], budget: Budget, state: bytes
) -> list[int]:
    """Every connection saves checkpoints back to back until the budget is spent."""
    latencies: list[int] = []

    async def instance(connection: InstanceConnection) -> None:
        while budget.take():
            started = time.perf_counter_ns()
            await connection.checkpoint(state)
            latencies.append(time.perf_counter_ns() - started)

    await asyncio.gather(*(instance(c) for c in connections))
    return latencies


# --- a second load process ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    port: int
    ca_cert: str
    instance_ids: list[str]
    warmup_s: float
    phase_s: float
    max_ops: int
    state_bytes: int


@dataclass(frozen=True, slots=True)
class WorkerResult:
    latencies_ns: list[int]
    cpu_s: float
    datagrams: int


async def load_worker(config: WorkerConfig) -> None:
    """Register our share of a load's instances, say READY, run on GO, print a WorkerResult."""
    counter = DatagramCounter()
    counter.install()
    target = CoreTarget(config.port, Path(config.ca_cert), InstanceTokens(os.environ[SECRET_ENV]))
    state = os.urandom(config.state_bytes)
    connections = await open_instances(target, config.instance_ids)
    try:
        control = await stdin_reader()
        print("READY", flush=True)
        if (await control.readline()).strip() != b"GO":
            return  # the parent gave up
        await run_checkpoints(connections, Budget.of(config.warmup_s, config.max_ops), state)
        cpu, datagrams = time.process_time(), counter.sent + counter.received
        latencies = await run_checkpoints(connections, Budget.of(config.phase_s, config.max_ops), state)
        result = WorkerResult(
            latencies, time.process_time() - cpu, counter.sent + counter.received - datagrams
        )
        print(json.dumps(dataclasses.asdict(result)), flush=True)
    finally:
        await close_instances(connections)


def start_worker(config: WorkerConfig, stack: contextlib.ExitStack) -> Child:
    arguments = [str(Path(__file__).resolve()), "--load-worker", json.dumps(dataclasses.asdict(config))]
    return stack.enter_context(bench_subprocess(arguments, {SECRET_ENV: os.environ[SECRET_ENV]}))


async def worker_result(worker: Child) -> WorkerResult:
    assert worker.popen.stdout is not None
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WORKER_RESULT_TIMEOUT_S):
        line = await loop.run_in_executor(None, worker.popen.stdout.readline)
    if not line:
        raise RuntimeError(f"load worker {worker.popen.pid} ended without a result")
    return WorkerResult(**json.loads(line))


# --- the phases -----------------------------------------------------------------------------------


def loop_thread_cpu_s(process: psutil.Process) -> float:
    """CPU time of a process's main thread, which runs its event loop (the rest of the core's
    CPU is aiosqlite's worker thread and executor threads)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{process.pid}/task/{process.pid}/schedstat").read_text().split()[0]) / 1e9
    main = next(t for t in process.threads() if t.id == process.pid)
    return float(main.user_time + main.system_time)


@dataclass(frozen=True, slots=True)
class CoreMeter:
    """``bench/transport.py``'s meter on the core process, plus its event-loop thread alone."""

    meter: Meter

    def read(self) -> tuple[Usage, float]:
        return self.meter.read(), loop_thread_cpu_s(self.meter.server)


@dataclass(frozen=True, slots=True)
class Row:
    """One table row: a ``bench/transport.py`` phase result, and the CPU of the core's
    event-loop thread during it (None where the core was not the server measured)."""

    result: PhaseResult
    loop_cpu_s: float | None = None

    def text(self) -> str:
        loop = "-" if self.loop_cpu_s is None else f"{self.loop_cpu_s / self.result.count * 1e6:.0f}"
        return f"{table_row(self.result)}  {loop:>{len(LOOP_COLUMN)}}"


LOOP_COLUMN = "loop us/op"


def header() -> str:
    first = f"{table_header('backend').splitlines()[0]}  {LOOP_COLUMN}"
    return first + "\n" + "-" * len(first)


@dataclass(frozen=True, slots=True)
class BackendRun:
    backend: str
    plan: Plan
    target: CoreTarget
    core: CoreMeter
    state: bytes
    load_procs: int


def checkpoint_label(connections: int) -> str:
    return f"checkpoint, {connections} conn{'s' if connections > 1 else ''}"


async def measure_checkpoints(
    run: BackendRun,
    instance_ids: Sequence[str],
    around: contextlib.AbstractContextManager[None] | None = None,
) -> Row:
    """One checkpoint load: warm-up, then the measured window (``around`` wraps only that).

    With several load processes the instances are dealt out among them; this process keeps the
    first share, and the others' latencies, CPU and datagrams are added to its own.
    """
    procs = min(run.load_procs, len(instance_ids))
    shares = [list(instance_ids[i::procs]) for i in range(procs)]
    plan = run.plan
    per_process = plan.max_ops // procs
    window = (plan.warmup_s, plan.phase_s, per_process, len(run.state))
    with contextlib.ExitStack() as stack:
        workers = [
            start_worker(WorkerConfig(run.target.port, str(run.target.ca_cert), share, *window), stack)
            for share in shares[1:]
        ]
        connections = await open_instances(run.target, shares[0])
        try:
            for worker in workers:
                assert worker.popen.stdin is not None
                worker.popen.stdin.write("GO\n")
                worker.popen.stdin.flush()
            await run_checkpoints(connections, Budget.of(plan.warmup_s, per_process), run.state)
            with around or contextlib.nullcontext():
                before, loop_before = run.core.read()
                latencies = await run_checkpoints(
                    connections, Budget.of(plan.phase_s, per_process), run.state
                )
                after, loop_after = run.core.read()
            usage = after - before
            for result in [await worker_result(w) for w in workers]:
                latencies += result.latencies_ns
                usage = dataclasses.replace(
                    usage,
                    client_cpu_s=usage.client_cpu_s + result.cpu_s,
                    datagrams=usage.datagrams + result.datagrams,
                )
        finally:
            await close_instances(connections)
    phase = checkpoint_label(len(instance_ids)) + (f" /{procs}p" if procs > 1 else "")
    return Row(
        PhaseResult(run.backend, phase, latencies, usage, datagrams_counted=True), loop_after - loop_before
    )


async def measure_registers(run: BackendRun, instance_id: str) -> Row:
    """``register`` over and over on one connection, for an instance with a long history."""
    connection = await open_instance(run.target, instance_id)
    try:
        response = await connection.register(run.target.tokens)
        with_state = sum(c.state is not None for c in response.checkpoints)
        if len(response.checkpoints) != HISTORY_CHECKPOINTS or with_state != HISTORY_CHECKPOINTS:
            raise RuntimeError(
                f"register returned {len(response.checkpoints)} checkpoints, {with_state} with "
                f"their state; expected {HISTORY_CHECKPOINTS} of each"
            )
        warmup = Budget.of(run.plan.warmup_s, run.plan.max_registers)
        while warmup.take():
            await connection.register(run.target.tokens)
        latencies: list[int] = []
        budget = Budget.of(run.plan.register_s, run.plan.max_registers)
        before, loop_before = run.core.read()
        while budget.take():
            started = time.perf_counter_ns()
            await connection.register(run.target.tokens)
            latencies.append(time.perf_counter_ns() - started)
        after, loop_after = run.core.read()
    finally:
        await connection.client.close()
    phase = f"register, {HISTORY_CHECKPOINTS} saved"
    result = PhaseResult(run.backend, phase, latencies, after - before, datagrams_counted=True)
    return Row(result, loop_after - loop_before)


async def measure_echo(run: BackendRun, echo_port: int, echo_meter: Meter) -> Row:
    result = await measure_rpcs(
        quic_transport(echo_port, run.target.ca_cert), SEQUENTIAL, run.plan.echo_plan(), echo_meter
    )
    return Row(dataclasses.replace(result, transport=run.backend, phase="floor: QUIC echo, 1 conn"))


async def measure_raw_insert(run: BackendRun, database: Database, instance_id: str) -> Row:
    """``bench/persistence.py``'s raw single-writer insert, with this run's state size."""
    before, _ = run.core.read()
    if database.sqlite_path is not None:
        raw = bench_raw_sqlite(database.sqlite_path, instance_id, run.state, run.plan.raw_ops)
    else:
        assert database.schema is not None
        (raw,) = await bench_raw_postgres(
            database.url, database.schema, [instance_id], run.state, run.plan.raw_ops, writer_counts=(1,)
        )
    after, _ = run.core.read()
    usage = dataclasses.replace(after - before, wall_s=raw.wall_s)
    latencies = [round(seconds * 1e9) for seconds in raw.latencies_s]
    return Row(PhaseResult(run.backend, "floor: raw insert", latencies, usage, datagrams_counted=False))


# --- the database ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Database:
    backend: str
    url: str
    schema: str | None = None
    sqlite_path: Path | None = None


@dataclass(frozen=True, slots=True)
class Instances:
    """The instance ids of one backend's run, each used by one phase only."""

    loads: dict[int, list[str]]
    history: str
    raw: str
    profile: list[str]

    @classmethod
    def for_run(cls, concurrency: Sequence[int], profile_connections: int | None) -> Instances:
        return cls(
            loads={n: [f"load{n}-{i}" for i in range(n)] for n in concurrency},
            history="history",
            raw="raw",
            profile=[f"profile-{i}" for i in range(profile_connections or 0)],
        )

    def all(self) -> list[str]:
        ids = [i for group in self.loads.values() for i in group]
        return ids + [self.history, self.raw] + self.profile


async def prepare(database: Database, instances: Instances, state: bytes) -> None:
    """Migrate, then create the image, every instance (pending) and the long history."""
    store: Persistence = await open_persistence(database.url, schema=database.schema)
    try:
        image = await store.create_image(
            NewImage(image_id=IMAGE_ID, tenant="bench", name="bench", entrypoint="w:main",
                     sha256="0" * 64, size_bytes=1)
        )  # fmt: skip
        for instance_id in instances.all():
            await store.create_instance(NewInstance(instance_id=instance_id, image_id=image.image_id))
        for n in range(HISTORY_CHECKPOINTS):
            await store.save_checkpoint_if_absent(instances.history, f"step-{n + 1}", state)
    finally:
        await store.close()


async def postgres_problem(url: str) -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    try:
        async with asyncio.timeout(5):
            connection = await asyncpg.connect(url)
        await connection.close()
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return str(exc) or type(exc).__name__
    return None


# --- one backend ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    plan: Plan
    concurrency: tuple[int, ...]
    load_procs: int
    state_bytes: int
    profile_connections: int | None


@dataclass(frozen=True, slots=True)
class BackendReport:
    backend: str
    rows: list[Row]
    profile: str | None


async def bench_backend(
    database: Database, options: Options, scratch: Path, certs: DevCertificates,
    echo_port: int, echo_meter: Meter, counter: DatagramCounter,
) -> BackendReport:  # fmt: skip
    """Every phase on one backend, its core server in a child process for the duration."""
    state = os.urandom(options.state_bytes)
    instances = Instances.for_run(options.concurrency, options.profile_connections)
    await prepare(database, instances, state)
    profile_path = scratch / f"core-{database.backend}.prof" if options.profile_connections else None
    data_dir = scratch / f"data-{database.backend}"
    arguments = core_arguments(certs.ca_cert.parent, data_dir, database.url, database.schema, profile_path)
    rows: list[Row] = []

    def record(row: Row) -> None:
        rows.append(row)
        print(row.text(), flush=True)

    with bench_subprocess(arguments) as core:
        target = CoreTarget(core.ports[0], certs.ca_cert, InstanceTokens(os.environ[SECRET_ENV]))
        run = BackendRun(
            database.backend,
            options.plan,
            target,
            CoreMeter(Meter(core.process, counter)),
            state,
            options.load_procs,
        )
        async with asyncio.timeout(options.plan.backend_limit_s):
            first, *others = options.concurrency
            record(await measure_checkpoints(run, instances.loads[first]))
            record(await measure_echo(run, echo_port, echo_meter))
            record(await measure_raw_insert(run, database, instances.raw))
            for connections in others:
                record(await measure_checkpoints(run, instances.loads[connections]))
            record(await measure_registers(run, instances.history))
            profile = None
            if profile_path is not None:
                profile = await profile_core(run, instances.profile, core, profile_path, rows)
    return BackendReport(database.backend, rows, profile)


async def profile_core(
    run: BackendRun, instance_ids: list[str], core: Child, path: Path, rows: list[Row]
) -> str:
    """The load once more with the core under cProfile (started and stopped by signals)."""

    @contextlib.contextmanager
    def profiling() -> Iterator[None]:
        os.kill(core.popen.pid, signal.SIGUSR1)
        try:
            yield
        finally:
            os.kill(core.popen.pid, signal.SIGUSR2)

    profiled = await measure_checkpoints(run, instance_ids, profiling())
    phase = profiled.result.phase.replace("checkpoint", "profiled")
    print(
        dataclasses.replace(profiled, result=dataclasses.replace(profiled.result, phase=phase)).text(),
        flush=True,
    )
    deadline = time.monotonic() + PROFILE_WRITE_TIMEOUT_S
    while not path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # let the dump finish writing
    label = checkpoint_label(len(instance_ids))
    plain = next((r for r in rows if r.result.phase.split(" /")[0] == label), profiled)
    assert plain.loop_cpu_s is not None
    title = f"{run.backend}: core process, event-loop thread only, {label}"
    return profile_report(title, path, profiled.result.count, plain.loop_cpu_s / plain.result.count * 1e6)


# --- reporting ------------------------------------------------------------------------------------

TARGET_P50_MS = (1.2, 1.8)
TARGET_RATE = {"sqlite": 1500, "postgres": 1200}
TARGET_P99_MS = 100.0
TARGET_CONNECTIONS = 100
SATURATED = 0.85
"""Used this much (a thread or process: of one core; the machine: of all cores), a resource is
taken as the bottleneck of its row (scheduling on 2 shared cores keeps anything from 100%)."""
NOISY = 0.2
"""Above this share of a core taken by other processes, a SQLite row is noisy (on PostgreSQL,
"others" is mostly the database's own backends)."""


def summary(report: BackendReport, load_procs: int) -> str:
    by_phase = {row.result.phase.split(" /")[0]: row.result for row in report.rows}
    lines = [f"{report.backend}:"]
    single = by_phase.get(checkpoint_label(1))
    echo = by_phase.get("floor: QUIC echo, 1 conn")
    raw = by_phase.get("floor: raw insert")
    if single and echo and raw:
        p50, echo_p50, raw_p50 = single.percentile_ms(50), echo.percentile_ms(50), raw.percentile_ms(50)
        low, high = TARGET_P50_MS
        floor = echo_p50 + raw_p50
        lines.append(
            f"  checkpoint p50 {p50:.3f} ms (target {low:g}-{high:g}: {verdict(p50, low, high)}); floor "
            f"{echo_p50:.3f} echo + {raw_p50:.3f} raw insert = {floor:.3f} ms; overhead x{p50 / floor:.2f}"
        )
    loads = {row.result.phase.split(" /")[0]: row for row in report.rows}
    for connections in sorted({int(p.split()[1]) for p in by_phase if p.startswith("checkpoint, ")}):
        load = loads[checkpoint_label(connections)]
        row = load.result
        busy_client = row.client_busy / min(load_procs, connections)
        busy_loop = (load.loop_cpu_s or 0.0) / row.usage.wall_s
        line = (
            f"  {connections:>3} conns: {row.per_second:,.0f} checkpoints/s, "
            f"p99 {row.percentile_ms(99):.1f} ms; core {row.server_busy:.0%} busy (its loop thread "
            f"{busy_loop:.0%}), load generator {busy_client:.0%} per process, others {row.others_busy:.0%}"
            f" -> bottleneck: {bottleneck(busy_loop, busy_client, row)}"
        )
        if report.backend == "sqlite" and row.others_busy > NOISY:
            line += " (noisy)"
        if connections == TARGET_CONNECTIONS:
            rate = TARGET_RATE[report.backend]
            met = row.per_second >= rate and row.percentile_ms(99) < TARGET_P99_MS
            line += f"; target >= {rate:,}/s with p99 < {TARGET_P99_MS:g} ms: {'met' if met else 'missed'}"
        lines.append(line)
    register = by_phase.get(f"register, {HISTORY_CHECKPOINTS} saved")
    if register is not None:
        lines.append(
            f"  register with {HISTORY_CHECKPOINTS} saved checkpoints: "
            f"p50 {register.percentile_ms(50):.1f} ms, p99 {register.percentile_ms(99):.1f} ms, "
            f"{register.usage.datagrams / register.count:.0f} datagrams each"
        )
    return "\n".join(lines)


def bottleneck(busy_loop: float, busy_client: float, row: PhaseResult) -> str:
    """The most used of what can limit a load: the core's event-loop thread (one core at most), a
    load process (one core each), or the machine's cores all together."""
    cores = os.cpu_count() or 1
    machine = (row.server_busy + row.client_busy + row.others_busy) / cores
    name, share = max(
        (("the core's event loop", busy_loop), ("the load generator", busy_client), ("all cores", machine)),
        key=lambda candidate: candidate[1],
    )
    return (
        f"{name} ({share:.0%} used)"
        if share >= SATURATED
        else f"none saturated, most used {name} {share:.0%}"
    )


def verdict(value: float, low: float, high: float) -> str:
    return "below (faster)" if value < low else "above" if value > high else "within"


def banner(options: Options) -> str:
    plan = options.plan
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    aioquic = importlib.metadata.version("aioquic")
    machine = f"Python {platform.python_version()}, aioquic {aioquic}, {os.cpu_count()} CPUs (load {load})"
    phases = (
        f"each phase {plan.warmup_s:g} s warm-up, then up to {plan.phase_s:g} s or {plan.max_ops} ops "
        f"(register: {plan.register_s:g} s or {plan.max_registers})"
    )
    lines = (
        f"Runtara checkpoint bench: {machine}, QUIC ACK delay {quic_config.ACK_DELAY_S * 1000:g} ms",
        (
            f"{options.state_bytes}-byte states, a new checkpoint id per op; {phases}; "
            f"load processes: {options.load_procs}"
        ),
        (
            "us/op: CPU microseconds per op in the core / load-generator process(es); CPU: share of one "
            "core busy; others: everything else on the machine (PostgreSQL included);"
        ),
        "loop us/op: the core's event-loop thread alone (the rest of srv us/op: aiosqlite's worker thread)",
    )
    return "\n".join(lines) + "\n"


# --- the run --------------------------------------------------------------------------------------


def databases(only: str | None, scratch: Path) -> list[Database]:
    found = []
    if only in (None, "sqlite"):
        path = scratch / "bench.db"
        found.append(Database("sqlite", f"sqlite:///{path}", sqlite_path=path))
    if only in (None, "postgres"):
        url = os.environ.get("RUNTARA_TEST_DATABASE_URL", DEFAULT_PG_URL)
        found.append(Database("postgres", url, schema=f"rt_ckpt_bench_{uuid.uuid4().hex[:12]}"))
    return found


async def bench_main(args: argparse.Namespace, options: Options, scratch: Path) -> None:
    counter = DatagramCounter()
    counter.install()
    certs = ensure_dev_certificates(scratch / "certs")
    echo_tuning = Tuning(ack_delay_s=quic_config.ACK_DELAY_S, uvloop=False)
    print(banner(options), flush=True)
    reports: list[BackendReport] = []
    with server_process(certs.ca_cert.parent, echo_tuning) as echo:
        echo_meter = Meter(echo.process, counter)
        print(header(), flush=True)
        for database in databases(args.only, scratch):
            if database.schema is not None:
                problem = await postgres_problem(database.url)
                if problem is not None:
                    print(f"postgres   PostgreSQL at {database.url} is unreachable ({problem}); skipped")
                    continue
            try:
                reports.append(
                    await bench_backend(
                        database, options, scratch, certs, echo.quic_port, echo_meter, counter
                    )
                )
            finally:
                if database.schema is not None:
                    await drop_schema(database.url, database.schema)
    print()
    for report in reports:
        print(summary(report, options.load_procs))
    for report in reports:
        if report.profile:
            print("\n" + report.profile)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run under a minute)")
    parser.add_argument("--only", choices=("sqlite", "postgres"), help="measure one backend")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="measured seconds per phase")
    parser.add_argument(
        "--connections", default=",".join(map(str, CONCURRENCY)), metavar="N,N,...",
        help="concurrent instance connections per checkpoint load (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--load-procs", type=int, default=1, choices=(1, 2, 3, 4),
        help="load-generator processes for the concurrent loads (default 1)",
    )  # fmt: skip
    parser.add_argument("--state-bytes", type=int, default=200, help="checkpoint state size (default 200)")
    parser.add_argument(
        "--profile", type=int, metavar="N", help="after the table, cProfile the core under N connections"
    )
    # internal: the child processes
    parser.add_argument("--serve-core", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    parser.add_argument("--profile-path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--load-worker", metavar="JSON", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    plan = QUICK if args.quick else FULL
    if args.duration is not None:
        if not 0 < args.duration <= 60:
            raise SystemExit("--duration must be in (0, 60] seconds")
        plan = dataclasses.replace(
            plan, phase_s=args.duration, backend_limit_s=plan.backend_limit_s + 8 * args.duration
        )
    concurrency = tuple(int(n) for n in args.connections.split(","))
    if not concurrency or any(not 1 <= n <= 500 for n in concurrency):
        raise SystemExit("--connections takes 1 to 500 per load, e.g. 1,10,100")
    if args.profile is not None and not 1 <= args.profile <= 500:
        raise SystemExit("--profile takes 1 to 500 connections")
    return Options(plan, concurrency, args.load_procs, args.state_bytes, args.profile)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.serve_core or args.load_worker:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
            if args.serve_core:
                asyncio.run(serve_core(args))
            else:
                asyncio.run(load_worker(WorkerConfig(**json.loads(args.load_worker))))
        return 0
    options = options_from(args)
    os.environ[SECRET_ENV] = secrets.token_hex(16)  # the core and load workers inherit it
    with tempfile.TemporaryDirectory(prefix="runtara-ckpt-bench-") as scratch:
        asyncio.run(bench_main(args, options, Path(scratch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
