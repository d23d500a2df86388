"""SDK benchmark: what a workflow author pays per ``@step``, for replay and for a cold start,
on SQLite and PostgreSQL, next to DBOS running the same workflow in the same run.

    .venv/bin/python bench/sdk.py                      # full run, both backends + DBOS, ~3 min
    .venv/bin/python bench/sdk.py --quick              # smoke run, under a minute
    .venv/bin/python bench/sdk.py --only sqlite        # or --only postgres
    .venv/bin/python bench/sdk.py --steps 100 --workflows 20 --no-dbos
    .venv/bin/python bench/sdk.py --profile            # then cProfile one instance and the core

(``pip install -e '.[bench]'`` installs DBOS; without it the DBOS side is skipped with a note.)

For each backend (SQLite on a temporary file; PostgreSQL on RUNTARA_TEST_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/test, in a throwaway schema dropped at the end, skipped
with a note when unreachable) this process creates instance rows, starts the production
``CoreServer`` in a child process (``bench/checkpoint.py --serve-core``: QUIC, ALPN
``runtara-instance/1``) and launches real instances one at a time, each its own process,
``python -m runtara_sdk`` with the RUNTARA_* environment and nothing else, running the image
``bench/images/steps.py``: an async ``@workflow`` that awaits an empty async ``@step`` (it
returns 1) N times. The image writes its measurements to its run directory; see its docstring.
Then the core is stopped and DBOS (``bench/dbos_baseline.py``, in a child process) runs the same
N-step workflow, the same number of times, on the same SQLite directory / PostgreSQL server.

What the numbers mean:

- ``per step``: ``time.perf_counter()`` around each ``await empty()`` inside the workflow, over
  ``workflows`` sequential instances (after ``warmup`` unmeasured ones): one ``checkpoint`` RPC
  through QUIC plus the durable save (SQLite WAL + synchronous=FULL, or a PostgreSQL commit),
  plus the SDK's bookkeeping. p50 / p99 over all measured steps; DBOS's are measured the same way.
- ``per workflow``: register sent -> completion acknowledged, in the instance (register, N steps,
  the completed report): the counterpart of DBOS's ``await workflow(N)``. ``launch`` adds what
  only a process-per-instance runtime pays: spawn -> exit as the parent sees it.
- ``CPU/step``: the instance process's CPU in the step loop; the core process's CPU (all its
  threads; "loop" its event-loop thread alone) and everything else on the machine ("others":
  PostgreSQL's backends, kernel threads doing fsync journaling and loopback softirq work, other
  tenants of the VM) over the measured workflows, divided by their steps, so the core's and
  others' include each workflow's register and completion (1/N each).
  DBOS's figure is its process's CPU over its measured workflows, per step.
- ``replay``: an instance saves ``replay_steps`` (1,000) steps, SIGKILLs itself after the last
  one, and is relaunched with the next attempt (what crash recovery does), ``replay_repeats``
  times. ``register`` is the round trip of the register RPC, whose response carries the 1,000
  checkpoint ids and states; ``loop`` is the workflow's 1,000 awaits, answered from that history;
  ``RPCs`` counts the RPCs the SDK sent during the loop (0: no round trip per step). DBOS's
  ``replay`` is its forked body's loop over 1,000 checkpointed steps (one SELECT per step; see
  ``DbosResult``): compare it with our loop, and our register with DBOS's fork call.
- ``floor: bare checkpoint RPC``: right after, the same number of ``checkpoint`` RPCs (a new id
  each, the 5-byte state an empty step saves) from a bare ``RpcClient`` in this process
  (``bench/checkpoint.py``'s instance connection), no SDK: what the step costs without the
  SDK's own work. "the SDK adds" is per-step p50 minus this p50, and instance loop CPU per step
  minus this client's CPU per RPC.
- ``cold start``: the parent's wall clock just before it spawns ``python -m runtara_sdk`` to the
  instance's wall clock when the register response arrived (a 0-step workflow), split into
  interpreter + imports (until the image module ran), the QUIC handshake, and register. Above
  the tables, for context: ``python -c pass`` and ``python -c "import runtara_sdk.runner"``
  (median wall time) and where ``-X importtime`` puts the import time, by top-level package.
- ``ratio``: ours / DBOS for per-step p50 and p99; the goal is at most 1/3 on both backends.

Caveats: the machine has 2 cores and is shared: runs minutes apart differ by +-30%, CPU per
step is the steadiest number; compare interleaved runs. The core, the instance and this process
are separate processes (as in production), so one step's round trip crosses two processes and
two cores; DBOS runs in one process (plus its own threads) and PostgreSQL. DBOS on SQLite uses
its defaults, a rollback journal with synchronous=FULL (several fsyncs per commit); we use WAL
with synchronous=FULL (one). Our p99 includes the SQLite WAL checkpoints and the occasional
slow fsync; DBOS's includes its background threads (queue poller, notification polling).
Every launch, phase and child is bounded in time; every process this script starts is killed
in a ``finally`` (instances by their process group, the core by closing its stdin, then kill).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: runtara_*, bench

import psutil

from bench.checkpoint import (
    SECRET_ENV,
    CoreTarget,
    Database,
    core_arguments,
    drop_schema,
    loop_thread_cpu_s,
    open_instance,
    postgres_problem,
)
from bench.cold_start import measure_cold_start
from bench.dbos_baseline import DbosBenchError, DbosResult, DbosUnavailable, percentile, run_dbos
from bench.persistence import DEFAULT_PG_URL
from bench.transport import Child, bench_subprocess, cpu_seconds, machine_cpu_seconds, profile_report
from runtara_core.instance_tokens import InstanceTokens
from runtara_core.persistence import (
    InstanceStatus,
    InstanceUpdate,
    NewImage,
    NewInstance,
    Persistence,
    open_persistence,
)
from runtara_core.transport.certs import DevCertificates, ensure_dev_certificates
from runtara_sdk.exit_codes import ExitCode
from runtara_sdk.steps import encode_success

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "bench" / "images" / "steps.py"
IMAGE_ID = "bench-sdk-steps"
LAUNCH_TIMEOUT_S = 60.0
FLOOR_LIMIT_S = 20.0
FLOOR_MAX_RPCS = 1000
PROFILE_WRITE_TIMEOUT_S = 10.0
GOAL_RATIO = 1 / 3
KILLED = -signal.SIGKILL


@dataclass(frozen=True, slots=True)
class Plan:
    steps: int
    workflows: int
    warmup: int
    cold_starts: int
    replay_steps: int
    replay_repeats: int
    import_runs: int
    profile_steps: int
    backend_limit_s: float
    """Everything one backend does on our side, core start and setup included."""
    dbos_timeout_s: float


FULL = Plan(steps=100, workflows=20, warmup=1, cold_starts=10, replay_steps=1000, replay_repeats=3,
            import_runs=5, profile_steps=500, backend_limit_s=150, dbos_timeout_s=180)  # fmt: skip
QUICK = Plan(steps=30, workflows=5, warmup=1, cold_starts=3, replay_steps=100, replay_repeats=1,
             import_runs=2, profile_steps=200, backend_limit_s=45, dbos_timeout_s=90)  # fmt: skip


# --- instances --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launch:
    """One finished instance process and what its image wrote (empty if it wrote nothing)."""

    instance_id: str
    attempt: int
    exit_code: int
    spawned_at: float
    """This process's wall clock just before the spawn."""
    exited_at: float
    probe: dict[str, Any]
    stderr: str

    @property
    def durations_s(self) -> list[float]:
        return list(self.probe.get("durations_s", []))

    def since_spawn(self, key: str) -> float:
        return float(self.probe[key]) - self.spawned_at

    def expect(self, code: int) -> Launch:
        if self.exit_code != code or not self.probe:
            tail = "\n".join(self.stderr.strip().splitlines()[-15:])
            raise RuntimeError(
                f"instance {self.instance_id} attempt {self.attempt} exited {self.exit_code} (expected "
                f"{code}){'' if self.probe else ' without measurements'}; stderr tail:\n{tail}"
            )
        return self


@dataclass
class Harness:
    """A core (in a child process) over one database, and instance processes launched against it."""

    store: Persistence
    core: Child
    port: int
    ca_cert: Path
    tokens: InstanceTokens
    runs: Path
    running: set[asyncio.subprocess.Process] = field(default_factory=set)

    async def create(self, instance_id: str, params: dict[str, Any]) -> str:
        new = NewInstance(instance_id=instance_id, image_id=IMAGE_ID, input=json.dumps(params).encode(),
                          max_attempts=100)  # fmt: skip
        _, created = await self.store.create_instance(new)
        if not created:
            raise RuntimeError(f"instance {instance_id} already existed")
        return instance_id

    async def launch(self, instance_id: str, env: dict[str, str] | None = None) -> Launch:
        """Spawn ``python -m runtara_sdk`` for the instance's current attempt, wait for its exit."""
        row = await self.store.get_instance(instance_id)
        if row is None:
            raise RuntimeError(f"instance {instance_id} does not exist")
        run_dir = self.runs / instance_id
        run_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = run_dir / f"stderr-{row.attempt}.log"
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RUNTARA_INSTANCE_ID": instance_id,
            "RUNTARA_INSTANCE_TOKEN": self.tokens.mint(instance_id, row.attempt),
            "RUNTARA_ATTEMPT": str(row.attempt),
            "RUNTARA_SERVER_ADDR": f"127.0.0.1:{self.port}",
            "RUNTARA_TLS_CA": str(self.ca_cert),
            "RUNTARA_RUN_DIR": str(run_dir),
            "RUNTARA_IMAGE_PATH": str(IMAGE),
            **(env or {}),
        }
        with stderr_path.open("wb") as stderr:
            spawned_at = time.time()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtara_sdk", env=child_env, cwd=run_dir,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,
            )  # fmt: skip
        self.running.add(process)
        try:
            async with asyncio.timeout(LAUNCH_TIMEOUT_S):
                code = await process.wait()
        except TimeoutError:
            raise RuntimeError(
                f"instance {instance_id} attempt {row.attempt} ran over {LAUNCH_TIMEOUT_S:g} s"
            ) from None
        finally:
            await self.kill(process)
        exited_at = time.time()
        probe_path = run_dir / f"bench-{row.attempt}.json"
        probe = json.loads(probe_path.read_text()) if probe_path.exists() else {}
        stderr_text = stderr_path.read_text(errors="replace")
        return Launch(instance_id, row.attempt, code, spawned_at, exited_at, probe, stderr_text)

    async def after_crash(self, instance_id: str) -> int:
        """What crash recovery does: the next attempt, pending again. Returns the attempt."""
        row = await self.store.get_instance(instance_id)
        assert row is not None
        moved = await self.store.transition(
            instance_id, {InstanceStatus.RUNNING, InstanceStatus.PENDING}, InstanceStatus.PENDING,
            update=InstanceUpdate(attempt=row.attempt + 1),
        )  # fmt: skip
        return moved.attempt

    async def saved_checkpoints(self, instance_id: str) -> int:
        return (await self.store.list_checkpoints(instance_id, limit=1)).total

    async def kill(self, process: asyncio.subprocess.Process) -> None:
        """Kill an instance's process group (its own session) if it still runs; reap it."""
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        self.running.discard(process)

    async def kill_all(self) -> None:
        for process in list(self.running):
            await self.kill(process)


# --- CPU meter --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cpu:
    wall_s: float
    core_s: float
    core_loop_s: float
    parent_s: float
    machine_s: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)))


def read_cpu(core: psutil.Process) -> Cpu:
    return Cpu(time.perf_counter(), cpu_seconds(core), loop_thread_cpu_s(core), time.process_time(),
               machine_cpu_seconds())  # fmt: skip


# --- the phases -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepsResult:
    steps: int
    workflows: int
    durations_s: list[float]
    workflow_s: list[float]
    """Register sent -> completion acknowledged, in the instance."""
    launch_s: list[float]
    """Spawn -> exit, in this process."""
    loop_cpu_s: float
    instance_cpu_s: float
    """The instance processes' whole CPU (from interpreter start to completion)."""
    cpu: Cpu
    loop_rpcs: dict[str, int]

    @property
    def measured_steps(self) -> int:
        return self.steps * self.workflows

    @property
    def others_s(self) -> float:
        return max(0.0, self.cpu.machine_s - self.cpu.core_s - self.cpu.parent_s - self.instance_cpu_s)


async def measure_steps(h: Harness, plan: Plan, tag: str) -> StepsResult:
    """``warmup`` then ``workflows`` sequential N-step instances."""
    params = {"steps": plan.steps}
    for i in range(plan.warmup):
        (await h.launch(await h.create(f"{tag}-warm-{i}", params))).expect(ExitCode.COMPLETED)
    ids = [await h.create(f"{tag}-wf-{i}", params) for i in range(plan.workflows)]
    launches: list[Launch] = []
    before = read_cpu(h.core.process)
    for instance_id in ids:
        launches.append((await h.launch(instance_id)).expect(ExitCode.COMPLETED))
    cpu = read_cpu(h.core.process) - before
    rpcs: dict[str, int] = {}
    for launch in launches:
        for op, count in launch.probe["loop_rpcs"].items():
            rpcs[op] = rpcs.get(op, 0) + count
    return StepsResult(
        steps=plan.steps,
        workflows=plan.workflows,
        durations_s=[d for launch in launches for d in launch.durations_s],
        workflow_s=[launch.probe["completed_at"] - launch.probe["register_sent_at"] for launch in launches],
        launch_s=[launch.exited_at - launch.spawned_at for launch in launches],
        loop_cpu_s=sum(launch.probe["loop_cpu_s"] for launch in launches),
        instance_cpu_s=sum(launch.probe["process_cpu_s"] for launch in launches),
        cpu=cpu,
        loop_rpcs=rpcs,
    )


@dataclass(frozen=True, slots=True)
class FloorResult:
    """The same checkpoint RPC without the SDK: a bare ``RpcClient`` in this process."""

    latencies_s: list[float]
    client_cpu_s: float
    core_cpu_s: float

    @property
    def count(self) -> int:
        return len(self.latencies_s)


async def measure_floor(h: Harness, plan: Plan, tag: str) -> FloorResult:
    """``bench/checkpoint.py``'s instance connection saving checkpoints back to back, each a new
    id with the state an empty step saves, as many as the measured steps (at most 1,000, and
    bounded in time)."""
    instance_id = await h.create(f"{tag}-floor", {"steps": 0})
    state = encode_success(1, "empty")
    connection = await open_instance(CoreTarget(h.port, h.ca_cert, h.tokens), instance_id)
    try:
        for _ in range(max(10, plan.steps)):  # warm-up
            await connection.checkpoint(state)
        latencies: list[float] = []
        deadline = time.monotonic() + FLOOR_LIMIT_S
        before = read_cpu(h.core.process)
        count = min(FLOOR_MAX_RPCS, plan.steps * plan.workflows)
        while len(latencies) < count and time.monotonic() < deadline:
            started = time.perf_counter()
            await connection.checkpoint(state)
            latencies.append(time.perf_counter() - started)
        cpu = read_cpu(h.core.process) - before
    finally:
        await connection.client.close()
    return FloorResult(latencies, cpu.parent_s, cpu.core_s)


@dataclass(frozen=True, slots=True)
class ColdResult:
    to_registered_s: list[float]
    """Spawn -> register response received."""
    to_image_s: list[float]
    """Spawn -> the image module ran (interpreter start, SDK and image imports)."""
    handshake_s: list[float]
    """Connect started -> register sent (QUIC + TLS handshake, and the client's setup)."""
    register_s: list[float]
    launch_s: list[float]
    """Spawn -> exit of a 0-step workflow (completion report included)."""


async def measure_cold_starts(h: Harness, plan: Plan, tag: str) -> ColdResult:
    params = {"steps": 0}
    (await h.launch(await h.create(f"{tag}-cold-warm", params))).expect(ExitCode.COMPLETED)
    launches = [
        (await h.launch(await h.create(f"{tag}-cold-{i}", params))).expect(ExitCode.COMPLETED)
        for i in range(plan.cold_starts)
    ]
    return ColdResult(
        to_registered_s=[launch.since_spawn("registered_at") for launch in launches],
        to_image_s=[launch.since_spawn("loaded_at") for launch in launches],
        handshake_s=[launch.probe["register_sent_at"] - launch.probe["connect_at"] for launch in launches],
        register_s=[launch.probe["register_s"] for launch in launches],
        launch_s=[launch.exited_at - launch.spawned_at for launch in launches],
    )


@dataclass(frozen=True, slots=True)
class Replay:
    register_s: float
    history: int
    history_states: int
    history_complete: bool
    loop_s: float
    step_p50_s: float
    loop_rpcs: dict[str, int]
    register_to_body_s: float
    """Register response -> the workflow body starts (Context, input, tasks)."""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    steps: int
    live_loop_s: float
    live_step_p50_s: float
    replays: list[Replay]

    def median(self, pick: str) -> float:
        return float(statistics.median(getattr(r, pick) for r in self.replays))


async def measure_replay(h: Harness, plan: Plan, tag: str) -> ReplayResult:
    """Save ``replay_steps`` steps, crash, then replay them ``replay_repeats`` times (attempts 2..)."""
    instance_id = await h.create(f"{tag}-replay", {"steps": plan.replay_steps, "crash_attempts": plan.replay_repeats})
    live = (await h.launch(instance_id)).expect(KILLED)
    saved = await h.saved_checkpoints(instance_id)
    if saved != plan.replay_steps:
        raise RuntimeError(f"{saved} checkpoints saved before the crash, expected {plan.replay_steps}")
    replays: list[Replay] = []
    for repeat in range(plan.replay_repeats):
        await h.after_crash(instance_id)
        last = repeat == plan.replay_repeats - 1
        launch = (await h.launch(instance_id)).expect(ExitCode.COMPLETED if last else KILLED)
        probe = launch.probe
        if not probe["replaying_at_start"]:
            raise RuntimeError(f"attempt {launch.attempt} did not replay (history of {probe['history']})")
        replays.append(
            Replay(
                register_s=probe["register_s"],
                history=probe["history"],
                history_states=probe["history_states"],
                history_complete=probe["history_complete"],
                loop_s=probe["loop_s"],
                step_p50_s=percentile(launch.durations_s, 0.5),
                loop_rpcs=probe["loop_rpcs"],
                register_to_body_s=probe["body_at"] - probe["registered_at"],
            )
        )
    return ReplayResult(plan.replay_steps, live.probe["loop_s"], percentile(live.durations_s, 0.5), replays)


@dataclass(frozen=True, slots=True)
class Profiles:
    instance: str
    core: str


async def profile_launch(h: Harness, plan: Plan, tag: str, scratch: Path, loop_cpu_per_step_s: float,
                         core_cpu_per_step_s: float) -> Profiles:  # fmt: skip
    """One ``profile_steps`` workflow with the instance (BENCH_SDK_PROFILE) and the core's event
    loop (SIGUSR1 / SIGUSR2, see ``bench/checkpoint.py``) under cProfile."""
    instance_id = await h.create(f"{tag}-profile", {"steps": plan.profile_steps})
    core_path = scratch / f"core-{tag}.prof"
    os.kill(h.core.popen.pid, signal.SIGUSR1)
    try:
        launch = (await h.launch(instance_id, {"BENCH_SDK_PROFILE": "1"})).expect(ExitCode.COMPLETED)
    finally:
        os.kill(h.core.popen.pid, signal.SIGUSR2)
    deadline = time.monotonic() + PROFILE_WRITE_TIMEOUT_S
    while not core_path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # let the dump finish writing
    steps = plan.profile_steps
    instance_path = h.runs / instance_id / f"instance-{launch.attempt}.prof"
    instance = profile_report(
        f"{tag}: instance process (python -m runtara_sdk), from image import to completion, {steps} steps",
        instance_path, steps, loop_cpu_per_step_s * 1e6,
    )  # fmt: skip
    core = profile_report(
        f"{tag}: core process, event-loop thread only, the same launch", core_path, steps, core_cpu_per_step_s * 1e6
    )
    return Profiles(instance, core)


# --- one backend ------------------------------------------------------------------------------------


@dataclass
class BackendReport:
    backend: str
    steps: StepsResult | None = None
    floor: FloorResult | None = None
    cold: ColdResult | None = None
    replay: ReplayResult | None = None
    profiles: Profiles | None = None
    dbos: DbosResult | None = None
    dbos_note: str | None = None
    error: str | None = None


async def prepare(database: Database) -> Persistence:
    """Migrate (before the core opens the database) and register the bench image."""
    store = await open_persistence(database.url, schema=database.schema, max_pool_size=2)
    try:
        await store.create_image(
            NewImage(image_id=IMAGE_ID, tenant="bench", name="sdk-steps", entrypoint="steps:main",
                     sha256="0" * 64, size_bytes=IMAGE.stat().st_size)
        )  # fmt: skip
    except BaseException:
        await store.close()
        raise
    return store


Show = Callable[[str], None]
"""Where a finished phase's line goes (the CLI prints it at once)."""


async def bench_runtara(database: Database, plan: Plan, scratch: Path, certs: DevCertificates, profile: bool,
                        report: BackendReport, show: Show) -> None:  # fmt: skip
    """Our phases on one backend, the core in a child process for the duration."""
    tag = database.backend
    store = await prepare(database)
    profile_path = scratch / f"core-{tag}.prof" if profile else None
    data_dir = scratch / f"data-{tag}"
    arguments = core_arguments(certs.ca_cert.parent, data_dir, database.url, database.schema, profile_path)
    try:
        with bench_subprocess(arguments) as core:
            h = Harness(store, core, core.ports[0], certs.ca_cert, InstanceTokens(os.environ[SECRET_ENV]),
                        scratch / f"runs-{tag}")  # fmt: skip
            try:
                async with asyncio.timeout(plan.backend_limit_s):
                    report.steps = await measure_steps(h, plan, tag)
                    show(steps_line(tag, report.steps))
                    report.floor = await measure_floor(h, plan, tag)
                    show(floor_line(tag, report.floor, report.steps))
                    report.cold = await measure_cold_starts(h, plan, tag)
                    show(cold_line(tag, report.cold))
                    report.replay = await measure_replay(h, plan, tag)
                    show(replay_line(tag, report.replay))
                    if profile:
                        s = report.steps
                        report.profiles = await profile_launch(
                            h, plan, tag, scratch, s.loop_cpu_s / s.measured_steps, s.cpu.core_loop_s / s.measured_steps
                        )
            finally:
                await h.kill_all()
    finally:
        await store.close()


async def bench_backend(database: Database, plan: Plan, scratch: Path, certs: DevCertificates,
                        args: argparse.Namespace, show: Show) -> BackendReport:  # fmt: skip
    """Our side on one backend, then (our core stopped) DBOS's on the same database."""
    report = BackendReport(database.backend)
    try:
        await bench_runtara(database, plan, scratch, certs, args.profile, report, show)
    except Exception as error:  # reported, and the DBOS side still runs
        report.error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        show(f"{database.backend:<9}runtara side stopped: {report.error}")
    finally:
        if database.schema is not None:
            await drop_schema(database.url, database.schema)
    if args.no_dbos:
        report.dbos_note = "not measured (--no-dbos)"
        return report
    workdir = database.sqlite_path.parent if database.sqlite_path is not None else scratch / "dbos-postgres"
    try:
        report.dbos = await asyncio.to_thread(
            run_dbos, database.backend, workdir=workdir, postgres_url=postgres_url(),
            steps=plan.steps, workflows=plan.workflows, warmup=plan.warmup, replay_steps=plan.replay_steps,
            timeout_s=plan.dbos_timeout_s,
        )  # fmt: skip
        show(dbos_line(database.backend, report.dbos))
    except DbosUnavailable as unavailable:
        report.dbos_note = f"skipped: {unavailable}"
    except DbosBenchError as failed:
        report.dbos_note = f"failed: {failed}"
    if report.dbos_note:
        show(f"{database.backend:<9}DBOS {report.dbos_note}")
    return report


def postgres_url() -> str:
    return os.environ.get("RUNTARA_TEST_DATABASE_URL", DEFAULT_PG_URL)


def databases(only: str | None, scratch: Path) -> list[Database]:
    found = []
    if only in (None, "sqlite"):
        path = scratch / "sqlite" / "runtara.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        found.append(Database("sqlite", f"sqlite:///{path}", sqlite_path=path))
    if only in (None, "postgres"):
        found.append(Database("postgres", postgres_url(), schema=f"rt_sdk_bench_{uuid.uuid4().hex[:12]}"))
    return found


# --- import times (context for the cold start) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportTimes:
    bare_s: float
    sdk_s: float
    by_package_s: list[tuple[str, float]]


def measure_imports(runs: int) -> ImportTimes:
    """Median wall time of ``python -c pass`` and of importing the launcher's modules, and the
    self time ``-X importtime`` reports, summed by top-level package (one run)."""
    cold = measure_cold_start(runs)
    by_package: dict[str, float] = {}
    for module in cold.modules:
        package = module.name.split(".")[0]
        by_package[package] = by_package.get(package, 0.0) + module.self_s
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    return ImportTimes(cold.bare_s, cold.sdk_s, ranked)


# --- reporting --------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def p(values: Sequence[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


def steps_line(tag: str, s: StepsResult) -> str:
    n = s.measured_steps
    checkpoints = s.loop_rpcs.get("checkpoint", 0)
    return (
        f"{tag:<9}runtara per step: n={n} p50 {ms(p(s.durations_s, .5))} ms, p99 {ms(p(s.durations_s, .99))} ms, "
        f"mean {ms(statistics.fmean(s.durations_s))} ms; workflow p50 {ms(p(s.workflow_s, .5))} ms, launch p50 "
        f"{ms(p(s.launch_s, .5))} ms; CPU/step: instance loop {s.loop_cpu_s / n * 1e6:.0f} us, core "
        f"{s.cpu.core_s / n * 1e6:.0f} us (loop {s.cpu.core_loop_s / n * 1e6:.0f}), others "
        f"{s.others_s / n * 1e6:.0f} us; {checkpoints / n:.2f} checkpoint RPCs/step"
    )


def floor_line(tag: str, f: FloorResult, s: StepsResult) -> str:
    n = f.count
    sdk_p50 = p(s.durations_s, 0.5) - p(f.latencies_s, 0.5)
    sdk_cpu = s.loop_cpu_s / s.measured_steps - f.client_cpu_s / n
    return (
        f"{tag:<9}floor: bare checkpoint RPC, no SDK: n={n} p50 {ms(p(f.latencies_s, .5))} ms, p99 "
        f"{ms(p(f.latencies_s, .99))} ms; CPU/RPC: client {f.client_cpu_s / n * 1e6:.0f} us, core "
        f"{f.core_cpu_s / n * 1e6:.0f} us -> the SDK adds {sdk_p50 * 1e3:+.3f} ms p50, {sdk_cpu * 1e6:+.0f} us "
        "instance CPU per step"
    )


def cold_line(tag: str, c: ColdResult) -> str:
    return (
        f"{tag:<9}runtara cold start (spawn -> registered), n={len(c.to_registered_s)}: p50 "
        f"{ms(p(c.to_registered_s, .5))} ms, p99 {ms(p(c.to_registered_s, .99))} ms = imports p50 "
        f"{ms(p(c.to_image_s, .5))} + handshake {ms(p(c.handshake_s, .5))} + register {ms(p(c.register_s, .5))}; "
        f"0-step launch spawn -> exit p50 {ms(p(c.launch_s, .5))} ms"
    )


def replay_line(tag: str, r: ReplayResult) -> str:
    rpcs = sum(sum(x.loop_rpcs.values()) for x in r.replays) / len(r.replays)
    first = r.replays[0]
    return (
        f"{tag:<9}runtara replay of {r.steps} steps (median of {len(r.replays)}): register "
        f"{ms(r.median('register_s'))} ms ({first.history} checkpoints, {first.history_states} with state, "
        f"complete={first.history_complete}), loop {ms(r.median('loop_s'))} ms ({r.median('step_p50_s') * 1e6:.1f} "
        f"us/step p50), {rpcs:.0f} RPCs in the loop; register -> body {ms(r.median('register_to_body_s'))} ms; "
        f"the live run of those steps: {ms(r.live_loop_s)} ms"
    )


def dbos_line(tag: str, d: DbosResult) -> str:
    replay = "-" if d.replay_ms is None else f"{d.replay_ms:.1f}"
    return (
        f"{tag:<9}DBOS    per step: n={d.steps * d.workflows} p50 {d.step_p50_ms:.3f} ms, p99 {d.step_p99_ms:.3f} ms; "
        f"workflow p50 {d.workflow_p50_ms:.1f} ms; "
        f"CPU/step {d.details.get('cpu_per_step_ms', float('nan')) * 1e3:.0f} us;"
        f" replay loop {replay} ms (fork call {d.details.get('fork_call_ms', float('nan')):.1f} ms)"
    )


def ratio_cell(ours_ms: float, theirs_ms: float) -> str:
    value = ours_ms / theirs_ms
    return f"{value:.2f} ({'met' if value <= GOAL_RATIO else 'missed'})"


def summary(reports: Sequence[BackendReport], plan: Plan) -> str:
    header = (
        f"{'backend':<9} {'who':<8} {'step p50':>9} {'step p99':>9} {'step mean':>9} {'wf p50':>8} "
        f"{'CPU/step':>9} {'replay reg':>10} {'replay loop':>11} {'cold p50':>9} {'cold p99':>9}"
    )
    lines = [
        f"per step: {plan.steps} steps x {plan.workflows} workflows, sequential, {plan.warmup} warm-up; "
        f"replay: {plan.replay_steps} saved steps; times in ms; CPU/step in us: ours instance loop + core process, "
        "DBOS its process (neither counts PostgreSQL's backends)",
        header,
        "-" * len(header),
    ]
    verdicts = []
    for r in reports:
        s, c, rp, d = r.steps, r.cold, r.replay, r.dbos
        if s is not None:
            n = s.measured_steps
            cpu = (s.loop_cpu_s + s.cpu.core_s) / n * 1e6
            lines.append(
                f"{r.backend:<9} {'runtara':<8} {ms(p(s.durations_s, .5)):>9} {ms(p(s.durations_s, .99)):>9} "
                f"{ms(statistics.fmean(s.durations_s)):>9} {ms(p(s.workflow_s, .5)):>8} {cpu:>9.0f} "
                f"{ms(rp.median('register_s')) if rp else '-':>10} {ms(rp.median('loop_s')) if rp else '-':>11} "
                f"{ms(p(c.to_registered_s, .5)) if c else '-':>9} {ms(p(c.to_registered_s, .99)) if c else '-':>9}"
            )
        f = r.floor
        if f is not None and f.count:
            cpu = (f.client_cpu_s + f.core_cpu_s) / f.count * 1e6
            lines.append(
                f"{r.backend:<9} {'bare RPC':<8} {ms(p(f.latencies_s, .5)):>9} {ms(p(f.latencies_s, .99)):>9} "
                f"{ms(statistics.fmean(f.latencies_s)):>9} {'-':>8} {cpu:>9.0f} {'-':>10} {'-':>11} {'-':>9} {'-':>9}"
            )
        if d is not None:
            dcpu = d.details.get("cpu_per_step_ms")
            lines.append(
                f"{r.backend:<9} {'DBOS':<8} {d.step_p50_ms:>9.3f} {d.step_p99_ms:>9.3f} "
                f"{d.details.get('step_mean_ms', float('nan')):>9.3f} {d.workflow_p50_ms:>8.1f} "
                f"{'-' if dcpu is None else f'{dcpu * 1e3:.0f}':>9} "
                f"{d.details.get('fork_call_ms', float('nan')):>10.1f} "
                f"{'-' if d.replay_ms is None else f'{d.replay_ms:.1f}':>11} {'-':>9} {'-':>9}"
            )
        if s is not None and d is not None:
            p50, p99 = p(s.durations_s, .5) * 1e3, p(s.durations_s, .99) * 1e3
            verdicts.append(
                f"{r.backend}: ours / DBOS per step: p50 {ratio_cell(p50, d.step_p50_ms)}, p99 "
                f"{ratio_cell(p99, d.step_p99_ms)}, mean "
                f"{statistics.fmean(s.durations_s) * 1e3 / d.details['step_mean_ms']:.2f}; workflow p50 "
                f"{p(s.workflow_s, .5) * 1e3 / d.workflow_p50_ms:.2f}"
                + (f"; replay loop {rp.median('loop_s') * 1e3 / d.replay_ms:.3f}" if rp and d.replay_ms else "")
                + f" (goal: per-step overhead <= {GOAL_RATIO:.2f} of DBOS's)"
            )
        elif s is not None:
            verdicts.append(f"{r.backend}: no DBOS ratio ({r.dbos_note or r.error})")
    lines.append(
        "('bare RPC': the same checkpoint RPC from a bare client, no SDK, no instance process; DBOS's "
        "'replay reg' is its fork call, which copies the checkpoints to the new workflow)"
    )
    lines.append("")
    lines.extend(verdicts)
    for r in reports:
        if r.dbos is not None:
            lines.append(f"{r.backend} DBOS: {r.dbos.note}")
        if r.error:
            lines.append(f"{r.backend}: runtara side incomplete: {r.error}")
    return "\n".join(lines)


def banner(plan: Plan, imports: ImportTimes) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    dbos = "not installed"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dbos = importlib.metadata.version("dbos")
    top = ", ".join(f"{name} {seconds * 1e3:.0f}" for name, seconds in imports.by_package_s[:8])
    return "\n".join((
        f"Runtara SDK bench: Python {platform.python_version()}, aioquic {importlib.metadata.version('aioquic')}, "
        f"dbos {dbos}, {os.cpu_count()} CPUs (load {load})",
        f"{plan.steps} empty steps x {plan.workflows} workflows (+{plan.warmup} warm-up), replay of "
        f"{plan.replay_steps} steps x {plan.replay_repeats}, {plan.cold_starts} cold starts; the same for DBOS",
        f"context: python -c pass {ms(imports.bare_s)} ms; python -c 'import runtara_sdk.runner' "
        f"{ms(imports.sdk_s)} ms (median of {plan.import_runs}); -X importtime self ms by package: {top}",
    ))  # fmt: skip


# --- the run (CLI: everything printed is printed from here) ------------------------------------------


def show_now(line: str) -> None:
    print(line, flush=True)


async def bench_main(args: argparse.Namespace, plan: Plan, scratch: Path) -> None:
    imports = await asyncio.to_thread(measure_imports, plan.import_runs)
    print(banner(plan, imports) + "\n", flush=True)
    certs = ensure_dev_certificates(scratch / "certs")
    reports: list[BackendReport] = []
    for database in databases(args.only, scratch):
        if database.schema is not None:
            problem = await postgres_problem(database.url)
            if problem is not None:
                print(f"postgres PostgreSQL at {database.url} is unreachable ({problem}); skipped", flush=True)
                continue
        reports.append(await bench_backend(database, plan, scratch, certs, args, show_now))
    print("\n" + summary(reports, plan))
    for report in reports:
        if report.profiles is not None:
            print("\n" + report.profiles.instance + "\n\n" + report.profiles.core)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and shorter workflows (a smoke run under a minute)")
    parser.add_argument("--only", choices=("sqlite", "postgres"), help="measure one backend")
    parser.add_argument("--steps", type=int, help="steps per workflow (default 100, quick 30)")
    parser.add_argument("--workflows", type=int, help="measured workflows per backend (default 20, quick 5)")
    parser.add_argument("--replay-steps", type=int, help="saved steps replayed (default 1000, quick 100)")
    parser.add_argument("--no-dbos", action="store_true", help="skip the DBOS baseline")
    parser.add_argument("--profile", action="store_true",
                        help="then cProfile one instance process and the core's event loop")  # fmt: skip
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.steps is not None:
        if not 1 <= args.steps <= 2000:
            raise SystemExit("--steps takes 1 to 2000")
        plan = dataclasses.replace(plan, steps=args.steps)
    if args.workflows is not None:
        if not 1 <= args.workflows <= 200:
            raise SystemExit("--workflows takes 1 to 200")
        plan = dataclasses.replace(plan, workflows=args.workflows)
    if args.replay_steps is not None:
        if not 1 <= args.replay_steps <= 10_000:
            raise SystemExit("--replay-steps takes 1 to 10000")
        plan = dataclasses.replace(plan, replay_steps=args.replay_steps)
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_from(args)
    os.environ[SECRET_ENV] = secrets.token_hex(16)  # the core child inherits it; instances get tokens only
    with tempfile.TemporaryDirectory(prefix="runtara-sdk-bench-") as scratch:
        asyncio.run(bench_main(args, plan, Path(scratch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
