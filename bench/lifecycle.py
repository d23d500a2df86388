"""Lifecycle benchmark: a real environment process, per backend, from the outside.

    .venv/bin/python bench/lifecycle.py                       # both backends, fork vs spawn, full, ~5-7 min
    .venv/bin/python bench/lifecycle.py --quick               # smoke run, ~2.5 min (~70 s per backend)
    .venv/bin/python bench/lifecycle.py --backend sqlite      # or postgres
    .venv/bin/python bench/lifecycle.py --launcher fork       # or spawn (then all phases with it), or both
    .venv/bin/python bench/lifecycle.py --database-url postgresql://postgres@127.0.0.1:5432/test

Launchers. The environment launches every instance as its own OS process, in one of two ways
(the setting ``RUNTARA_LAUNCHER``): ``fork`` (the default) forks it from a pre-forked launcher
process (``python -m runtara_environment.launcher_process``, a child of the environment that has
imported the SDK once; the instance is re-parented to the environment), ``spawn`` starts a cold
``python -m runtara_sdk`` (about 0.6 s of CPU per launch). With ``--launcher both`` (the default)
each backend runs twice, each time with a fresh environment (and on PostgreSQL a fresh schema):
every phase below with ``fork``, then for the comparison phases 1-2, 3 (the empty workflow with 1
starter, and the sustained case) and 5 with ``spawn`` (the wake phase costs ~60 s with cold
spawns: it runs with spawn only for ``--launcher spawn``). A side-by-side table per backend ends
the output: metric | fork | spawn | goal | met?.

For each backend and launcher this script starts ``python -m runtara_environment`` (embedded core, its own
data directory, generated certificates and admin token, free loopback UDP ports; on PostgreSQL
a fresh schema through RUNTARA_DATABASE_SCHEMA, dropped at the end), registers the images
``bench/images/empty.py`` and ``bench/images/lifecycle_steps.py`` through the management client,
and measures, as a user of the management protocol sees it:

1. ``start -> registered``: epoch ms taken just before ``start_instance`` to the ``started``
   event's ``created_at_ms`` (recorded by the core when ``register`` commits; same machine, same
   clock), empty workflow, N sequential starts (each waited to completion; 1 unmeasured warm-up).
2. ``start -> completed``: the same starts, to the ``completed`` event.
3. throughput: completed workflows/s for the empty and the 10-step workflow with 1 and 20
   concurrent starters (each loops: start, then ``client.wait`` until completed) over a fixed
   count per case (20 workflows with 1 starter, 40 with 20; quick 10 and 20); wall time from the
   first start call to the last completion. Latency p50/p99 of those starts is printed too.
   Sustained case: 20 starters on the empty workflow until N complete (fork 600, quick 200;
   spawn 40, quick 20: it does ~3/s), completions/s in total and over the steady middle (the
   first and last 10% of completions left out; only when N is at least 5 rounds of the
   starters). Per case, CPU per launch (per completed workflow, one launch each), from
   before/after deltas over the case: the environment process's own user+system time
   (``psutil`` ``cpu_times``, not its reaped children), the fork launcher's (its own plus its
   short-lived middle children; '-' with spawn), the instance processes' ``cpu_time_ms`` (recorded
   by the environment when it reaps each one, read back through ``get_instance`` for up to 200 of
   them; a fork's is counted from the fork), the whole machine's busy time (``psutil.cpu_times()``:
   user+nice+system+irq+softirq over all CPUs, so including this script and anything else
   running) and this script's own share.
4. wake lateness: the environment is stopped, N instances are written straight into its database
   (with its node id, as a previous run of this node leaves them) as suspended (sleeping), wake times spread over 10 s starting ~5 s after the restart, input
   ``sleep_until_ms`` = the wake time; restart with RUNTARA_MAX_CONCURRENT_INSTANCES=40; lateness
   = the output's ``woke_at_ms`` (taken in the workflow right after ``sleep_until`` returned)
   minus the wake time. Also how many were launched (``launched`` event) and registered
   (``started`` event) before their wake time: the scheduler claims RUNTARA_WAKE_LEAD_MS
   (default 1000) early so the spawn is paid before the wake time. Then a control: 3 instances
   started normally with ``sleep_until`` 7, 8 and 9 s ahead (they hibernate at once, with the
   default RUNTARA_HIBERNATE_AFTER_MS=5000 for this restart) are woken one at a time: the
   scheduler's precision when nothing else competes for the cores.
5. memory: the environment's RSS idle right after start, idle again after phases 1-3, and with
   M live instances (each in an in-process ``ctx.sleep`` of 30 s, below
   RUNTARA_HIBERNATE_AFTER_MS=60000); per live instance process the median RSS and USS
   (``psutil.memory_full_info().uss``: its private pages; what a fork still shares with the
   launcher is not in it) and how many were forked (their cmdline is the launcher's). Instance
   processes are found by their working directory (their run directory): a forked one's /proc
   environ is the launcher's. Then they are cancelled.
6. launch breakdown (once per run, then per backend and launcher): ``python -c pass`` and
   ``python -c "import runtara_sdk.runner"`` wall time in fresh processes (median), the 8
   biggest cumulative imports of ``-X importtime``; from the environment's own launches of
   phase 1: ``launched`` event (recorded right after the spawn or fork) -> image module ran
   (interpreter + imports for a cold spawn, only the image's import for a fork; reported by the
   empty image) -> ``started`` (QUIC handshake + register).

Goals printed next to the numbers (from the issues): wake lateness p99 under 100 ms, environment
idle RSS under 80 MB; for the fork launcher on this 2-core machine: start -> registered p50 under
30 ms, at least 60 empty workflows/s sustained (steady middle of the sustained case) with every
workflow in its own process, private memory (USS) per live instance under 10 MB. The table
shows the verdict for both launchers; the goals are for fork. No baseline for throughput
beyond that goal: ``bench/sdk.py``'s DBOS side measures a sequential in-process N-step workflow's latency, not workflows/s with concurrent starters, and
would cost a DBOS run per backend (it is skipped, and the table says so).

Every phase is bounded in time and count. Whatever happens (failure, Ctrl-C, SIGTERM), the
environment processes, their fork launchers and every instance process working in (or, cold
spawns, with RUNTARA_RUN_DIR in) one of this run's data directories are killed, and the
PostgreSQL schemas are dropped. Loopback only.
The machine has 2 cores and is shared: runs minutes apart differ by +-30%.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: runtara_*, bench

import psutil

from bench.checkpoint import drop_schema, postgres_problem
from bench.cold_start import measure_cold_start
from bench.persistence import DEFAULT_PG_URL
from runtara_core.persistence import InstanceStatus, InstanceUpdate, NewInstance, open_persistence
from runtara_core.persistence.rows import TerminationReason
from runtara_environment.client import ManagementClient
from runtara_environment.fork_launcher import LAUNCHER_MODULE
from runtara_environment.local_environment import LocalEnvironment, instance_processes, kill_instances
from runtara_core.wire.management_messages import EventRow

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "bench" / "images"
EMPTY_IMAGE = IMAGES / "empty.py"
STEPS_IMAGE = IMAGES / "lifecycle_steps.py"
WAIT_TIMEOUT_S = 60.0
"""One instance, start to terminal."""
TERMINAL = ("completed", "failed", "cancelled")
GOAL_WAKE_P99_MS = 100.0
GOAL_IDLE_RSS_MB = 80.0
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    sequential: int
    """Phases 1 and 2: sequential starts of the empty workflow (after 1 warm-up)."""
    cases: tuple[tuple[int, int], ...]
    """Phase 3: (concurrent starters, completed workflows) per throughput case."""
    hibernated: int
    """Phase 4: hibernated instances woken."""
    live: int
    """Phase 5: live instances."""
    live_sleep_s: float
    import_runs: int
    phase_limit_s: float
    """Any single phase (start-ups and waits included)."""
    sustained: dict[str, int] = field(default_factory=dict)
    """Phase 3, sustained case: empty workflows completed by SUSTAINED_STARTERS starters, per launcher."""


SUSTAINED_STARTERS = 20
STEADY_MIN_ROUNDS = 5
FULL = Plan(sequential=30, cases=((1, 20), (20, 40)), hibernated=200, live=50, live_sleep_s=30.0,
            import_runs=5, phase_limit_s=150.0, sustained={"fork": 600, "spawn": 40})  # fmt: skip
QUICK = Plan(sequential=10, cases=((1, 10), (20, 20)), hibernated=50, live=25, live_sleep_s=30.0,
             import_runs=3, phase_limit_s=90.0, sustained={"fork": 200, "spawn": 20})  # fmt: skip
LAUNCHERS = ("fork", "spawn")
"""In the cmdline of the fork launcher (a child of the environment) and of every instance forked from it."""
GOAL_REGISTERED_P50_MS = 30.0
GOAL_SUSTAINED_PER_S = 60.0
GOAL_INSTANCE_USS_MB = 10.0
INSTANCE_CPU_SAMPLE = 200
"""Instances whose ``cpu_time_ms`` is read back after a throughput case (evenly spread)."""


def now_ms() -> float:
    return time.time() * 1000.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (as the other benches); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# --- the environment process ------------------------------------------------------------------------

Environment = LocalEnvironment
"""``python -m runtara_environment`` on loopback, in its own session (Ctrl-C reaches only this
script, which then ends it)."""


def launcher_processes(env_pid: int) -> list[psutil.Process]:
    """The environment's fork launcher (none with ``RUNTARA_LAUNCHER=spawn``, or while it restarts).

    Forked instances are children of the environment too, with the launcher's cmdline; they work
    in their run directory, the launcher in ``/``."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(env_pid).children():
            with contextlib.suppress(psutil.Error):
                if (
                    LAUNCHER_MODULE in " ".join(child.cmdline())
                    and child.status() != psutil.STATUS_ZOMBIE
                    and child.cwd() == "/"
                ):
                    found.append(child)
    return sorted(found, key=lambda p: p.create_time())


@dataclass(frozen=True, slots=True)
class CpuSample:
    env_s: float
    """The environment process itself (user + system; not its reaped children, the instances)."""
    launcher: tuple[int, float, float] | None
    """(pid, create time, user + system of it and of its reaped middle children), if it runs."""
    client_s: float
    """This script (the starters' management clients)."""
    machine_busy_s: float
    """Whole machine: user + nice + system + irq + softirq, summed over the CPUs."""


def sample_cpu(env_pid: int) -> CpuSample:
    t = psutil.Process(env_pid).cpu_times()
    launcher = None
    for proc in launcher_processes(env_pid)[:1]:
        with contextlib.suppress(psutil.Error):
            lt = proc.cpu_times()
            launcher = (proc.pid, proc.create_time(), lt.user + lt.system + lt.children_user + lt.children_system)
    own = psutil.Process().cpu_times()
    m = psutil.cpu_times()
    busy = m.user + m.nice + m.system + getattr(m, "irq", 0.0) + getattr(m, "softirq", 0.0)
    return CpuSample(t.user + t.system, launcher, own.user + own.system, busy)


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds spent during one throughput case (before/after deltas)."""

    env_s: float
    launcher_s: float | None
    """None: no launcher (spawn), or it was restarted during the case."""
    client_s: float
    machine_busy_s: float

    @staticmethod
    def between(before: CpuSample, after: CpuSample) -> CpuUse:
        launcher_s = None
        if before.launcher is not None and after.launcher is not None and before.launcher[:2] == after.launcher[:2]:
            launcher_s = after.launcher[2] - before.launcher[2]
        return CpuUse(after.env_s - before.env_s, launcher_s, after.client_s - before.client_s,
                      after.machine_busy_s - before.machine_busy_s)  # fmt: skip


async def wait_no_instances(under: Path, timeout_s: float) -> int:
    """Wait (bounded) until no instance process of ours is alive; kill what is left. Returns
    how many had to be killed."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if not instance_processes(under):
            return 0
        await asyncio.sleep(0.1)
    return kill_instances(under)


# --- phases -----------------------------------------------------------------------------------------


@dataclass
class Run:
    """One start, waited to its end: client time of the start call and the event times."""

    instance_id: str
    start_ms: float
    status: str = ""
    events: dict[str, int] = field(default_factory=dict)
    """First ``created_at_ms`` per event type."""
    output: Any = None
    done_ms: float = 0.0
    """Client time when ``wait`` returned."""

    def since_start(self, event: str) -> float | None:
        at = self.events.get(event)
        return None if at is None else at - self.start_ms


async def start_and_wait(client: ManagementClient, image: str, input: Any) -> Run:
    start_ms = now_ms()
    response = await client.start_instance(image, input)
    run = Run(response.instance_id, start_ms)

    def seen(event: EventRow) -> None:
        run.events.setdefault(event.type, event.created_at_ms)

    detail = await client.wait(response.instance_id, WAIT_TIMEOUT_S, on_event=seen)
    run.done_ms = now_ms()
    run.status = detail.status
    run.output = detail.output
    if detail.status != "completed":
        raise RuntimeError(
            f"instance {run.instance_id} ended {detail.status} ({detail.termination_reason}): {detail.error}; "
            f"stderr tail: {(detail.stderr_tail or '')[-800:]}"
        )
    return run


async def phase_sequential(client: ManagementClient, plan: Plan) -> list[Run]:
    await start_and_wait(client, "bench-empty", None)  # warm-up: the first spawn pays cold caches
    runs = []
    for _ in range(plan.sequential):
        runs.append(await start_and_wait(client, "bench-empty", None))
    return runs


@dataclass(slots=True)
class Throughput:
    workflow: str
    starters: int
    completed: int
    wall_s: float
    latencies_ms: list[float]
    done_s: list[float] = field(default_factory=list)
    """Seconds from the first start call to each completion, in completion order."""
    instance_ids: list[str] = field(default_factory=list)
    sustained: bool = False
    cpu: CpuUse | None = None
    instance_cpu_ms: list[int] = field(default_factory=list)
    """``cpu_time_ms`` of (a sample of) its instances, read back once they exited."""

    @property
    def per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def steady_per_s(self) -> float:
        """Completions/s between the first and the last 10% of completions; NaN unless the case
        ran for at least STEADY_MIN_ROUNDS rounds of its starters (below that, the first round
        finishing together is most of the window, and the rate means nothing)."""
        n = len(self.done_s)
        lo, hi = n // 10, n - 1 - n // 10
        if n < STEADY_MIN_ROUNDS * self.starters or hi - lo < 2 or self.done_s[hi] <= self.done_s[lo]:
            return float("nan")
        return (hi - lo) / (self.done_s[hi] - self.done_s[lo])

    def per_launch_ms(self, seconds: float | None) -> float:
        return float("nan") if seconds is None or not self.completed else seconds * 1000 / self.completed


async def phase_throughput(client: ManagementClient, env_pid: int, workflow: str, image: str, input: Any,
                           starters: int, total: int, sustained: bool = False) -> Throughput:  # fmt: skip
    """``starters`` loops of start + wait until ``total`` completed; CPU of the environment, its
    launcher, this client and the machine over the case, from the first start to the last completion."""
    issued = 0
    latencies: list[float] = []
    done_s: list[float] = []
    ids: list[str] = []

    async def starter() -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            run = await start_and_wait(client, image, input)
            latencies.append(run.done_ms - run.start_ms)
            done_s.append(time.perf_counter() - started)
            ids.append(run.instance_id)

    before = sample_cpu(env_pid)
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(starters):
            group.create_task(starter())
    wall_s = time.perf_counter() - started
    cpu = CpuUse.between(before, sample_cpu(env_pid))
    return Throughput(workflow, starters, len(latencies), wall_s, latencies, done_s, ids, sustained, cpu)


async def read_instance_cpu(client: ManagementClient, t: Throughput) -> None:
    """``cpu_time_ms`` as the environment recorded it when it reaped each instance (call once
    they have exited); a spread sample of at most INSTANCE_CPU_SAMPLE instances."""
    ids = t.instance_ids
    step = max(1, len(ids) // INSTANCE_CPU_SAMPLE)
    semaphore = asyncio.Semaphore(8)

    async def one(instance_id: str) -> int | None:
        async with semaphore:
            return (await client.get_instance(instance_id)).cpu_time_ms

    values = await asyncio.gather(*(one(i) for i in ids[::step][:INSTANCE_CPU_SAMPLE]))
    t.instance_cpu_ms = [v for v in values if v is not None]


@dataclass(frozen=True, slots=True)
class Memory:
    idle_start_rss: int
    idle_after_rss: int
    live: int
    live_wait_s: float
    """From the first start call until all ``live`` were running (registered)."""
    env_live_rss: int
    instance_rss: list[int]
    instance_uss: list[int]
    cancelled: int
    killed_after: int
    forked: int = 0
    """Live instance processes forked from the launcher (their cmdline is the launcher's)."""


async def phase_live(env: Environment, client: ManagementClient, plan: Plan, idle_start_rss: int,
                     data_dir: Path) -> Memory:  # fmt: skip
    """``data_dir``: the environment's (its instances work in its ``runs`` directory)."""
    idle_after = env.rss_bytes()
    started = time.perf_counter()
    ids = [
        (await client.start_instance("bench-steps", {"n": 0, "sleep_s": plan.live_sleep_s})).instance_id
        for _ in range(plan.live)
    ]
    wanted = set(ids)
    deadline = time.perf_counter() + min(plan.phase_limit_s, plan.live_sleep_s * 2)
    running = 0
    while time.perf_counter() < deadline:
        page = await client.list_instances(status="running", limit=1000)
        running = len({i.instance_id for i in page.items} & wanted)
        if running == len(ids):
            break
        await asyncio.sleep(0.2)
    live_wait_s = time.perf_counter() - started
    if running < len(ids):
        raise RuntimeError(f"only {running} of {len(ids)} instances running after {live_wait_s:.0f} s")
    await asyncio.sleep(1.0)  # let them reach their sleep (one RPC after register)
    env_rss = env.rss_bytes()
    rss: list[int] = []
    uss: list[int] = []
    forked = 0
    for proc in instance_processes(data_dir):
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()  # USS: pages of its own (not shared with the launcher)
            rss.append(info.rss)
            uss.append(info.uss)
            forked += LAUNCHER_MODULE in " ".join(proc.cmdline())
    for instance_id in ids:
        await client.send_signal(instance_id, "cancel")
    cancel_deadline = time.perf_counter() + 30
    cancelled = 0
    while time.perf_counter() < cancel_deadline:
        page = await client.list_instances(status=list(TERMINAL), limit=1000)
        done = [i for i in page.items if i.instance_id in wanted]
        cancelled = sum(i.status == "cancelled" for i in done)
        if len(done) == len(ids):
            break
        await asyncio.sleep(0.2)
    killed = await wait_no_instances(data_dir, 15)
    return Memory(idle_start_rss, idle_after, len(ids), live_wait_s, env_rss, rss, uss, cancelled, killed, forked)


@dataclass(frozen=True, slots=True)
class Wake:
    count: int
    restart_s: float
    first_wake_after_ready_ms: float
    lateness_ms: list[float]
    launched_lead_ms: list[float]
    spawn_ms: list[float]
    """``launched`` -> ``started`` of each wake: a cold spawn while the others spawn too."""
    """wake time minus the ``launched`` event: positive = launched before the wake time."""
    registered_lead_ms: list[float]
    completed: int
    anomalies: list[str]
    control_lateness_ms: list[float] = field(default_factory=list)
    """Control, after the burst: a few instances hibernated through ``start_instance`` and woken
    one at a time, alone on the machine's cores (scheduler precision without contention)."""


async def phase_wake(env: Environment, plan: Plan, steps_image_id: str, node_id: str, data_dir: Path) -> Wake:
    """Rows are seeded with this environment's node id, as a previous run of this node leaves them
    (since the supervisor launches only its own node's instances, a row without a node id is
    claimed by the wake scheduler but never launched)."""
    await env.stop()
    await wait_no_instances(data_dir, 5)
    count = plan.hibernated
    # ~2-3 s of seeding and restart, then ~5 s before the first wake
    base_ms = int(now_ms()) + 7000
    wake_at = {f"w-{k}": base_ms + 10_000 * k // count for k in range(count)}
    db = await open_persistence(env.database_url, schema=env.schema)
    try:
        for instance_id, at in wake_at.items():
            await db.create_instance(
                NewInstance(instance_id, steps_image_id, json.dumps({"n": 1, "sleep_until_ms": at}).encode(),
                            node_id=node_id)
            )
            await db.transition(
                instance_id, {InstanceStatus.PENDING}, InstanceStatus.SUSPENDED, reason=TerminationReason.SLEEPING,
                update=InstanceUpdate(wake_at_ms=at),
            )  # fmt: skip
    finally:
        await db.close()
    env.settings["RUNTARA_MAX_CONCURRENT_INSTANCES"] = "40"
    env.settings["RUNTARA_HIBERNATE_AFTER_MS"] = "5000"  # the default: the control below hibernates
    restart_s = await env.start()
    ready_ms = now_ms()
    wanted = set(wake_at)
    anomalies: list[str] = []
    async with env.client() as client:
        node_after = (await client.health()).node_id
        if node_after != node_id:
            anomalies.append(f"the node id changed across the restart: {node_id} -> {node_after}")
        deadline = time.perf_counter() + (max(wake_at.values()) - now_ms()) / 1000 + 90
        rows: dict[str, Any] = {}
        while time.perf_counter() < deadline:
            page = await client.list_instances(status=list(TERMINAL), limit=1000)
            rows = {i.instance_id: i for i in page.items if i.instance_id in wanted}
            if len(rows) == count:
                break
            await asyncio.sleep(0.25)
        if len(rows) < count:
            anomalies.append(f"only {len(rows)} of {count} terminal within the time limit")
        lateness, launched_lead, registered_lead, spawn = [], [], [], []
        completed = 0
        semaphore = asyncio.Semaphore(8)

        async def inspect(instance_id: str) -> None:
            nonlocal completed
            row = rows[instance_id]
            at = wake_at[instance_id]
            if row.status != "completed":
                anomalies.append(f"{instance_id}: {row.status} ({row.termination_reason}) {row.error}")
                return
            completed += 1
            woke = (row.output or {}).get("woke_at_ms")
            if woke is None:
                anomalies.append(f"{instance_id}: no woke_at_ms in its output {row.output!r}")
                return
            lateness.append(woke - at)
            if woke < at:
                anomalies.append(f"{instance_id}: woke {at - woke} ms EARLY")
            if row.attempt != 1:
                anomalies.append(f"{instance_id}: attempt {row.attempt}")
            async with semaphore:
                events = (await client.list_events(instance_id, limit=1000)).items
            types = [e.type for e in events]
            if types.count("launched") != 1:
                anomalies.append(f"{instance_id}: launched {types.count('launched')} times")
            first = {}
            for e in events:
                first.setdefault(e.type, e.created_at_ms)
            if "launched" in first:
                launched_lead.append(at - first["launched"])
            if "started" in first:
                registered_lead.append(at - first["started"])
            if "started" in first and "launched" in first:
                spawn.append(first["started"] - first["launched"])

        await asyncio.gather(*(inspect(i) for i in rows))
        control = await wake_control(client, anomalies)
    return Wake(count, restart_s, min(wake_at.values()) - ready_ms, lateness, launched_lead, spawn,
                registered_lead, completed, anomalies, control)


CONTROL_WAKES = 3


async def wake_control(client: ManagementClient, anomalies: list[str]) -> list[float]:
    """Three instances that hibernate at once (7, 8 and 9 s to go) and are woken alone."""
    base = int(now_ms()) + 7000
    ids = {}
    for k in range(CONTROL_WAKES):
        at = base + 1000 * k
        ids[(await client.start_instance("bench-steps", {"n": 1, "sleep_until_ms": at})).instance_id] = at
    deadline = time.perf_counter() + 7 + CONTROL_WAKES + 20
    rows: dict[str, Any] = {}
    while time.perf_counter() < deadline:
        page = await client.list_instances(status=list(TERMINAL), limit=1000)
        rows = {i.instance_id: i for i in page.items if i.instance_id in ids}
        if len(rows) == len(ids):
            break
        await asyncio.sleep(0.25)
    lateness = []
    for instance_id, at in ids.items():
        row = rows.get(instance_id)
        if row is None or row.status != "completed":
            anomalies.append(f"control {instance_id}: {row.status if row else 'not terminal'}")
            continue
        events = (await client.list_events(instance_id, limit=1000)).items
        types = [e.type for e in events]
        if types.count("launched") != 2 or "suspended" not in types:
            anomalies.append(f"control {instance_id}: did not hibernate once and wake once: {types}")
        late = (row.output or {}).get("woke_at_ms", float("nan")) - at
        lateness.append(late)
        if late > GOAL_WAKE_P99_MS:
            timeline = ", ".join(f"{e.type} {e.created_at_ms - at:+d}" for e in events)
            anomalies.append(f"control {instance_id} woke {late:.0f} ms late; events (ms from wake time): {timeline}")
    return lateness  # fmt: skip


# --- cold spawn, outside the environment ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Imports:
    bare_s: float
    sdk_s: float
    top_cumulative: list[tuple[str, int, float]]
    """(module, nesting depth, cumulative seconds), the biggest first."""


def measure_imports(runs: int) -> Imports:
    cold = measure_cold_start(runs)
    biggest = sorted(cold.modules, key=lambda m: -m.cumulative_s)[:8]
    return Imports(cold.bare_s, cold.sdk_s, [(m.name, m.depth, m.cumulative_s) for m in biggest])


# --- one backend ------------------------------------------------------------------------------------


@dataclass
class Report:
    backend: str
    launcher: str = "fork"
    env_start_s: float = float("nan")
    sequential: list[Run] = field(default_factory=list)
    throughput: list[Throughput] = field(default_factory=list)
    wake: Wake | None = None
    memory: Memory | None = None
    launcher_ready_ms: str = ""
    """What the environment logged when its launcher was ready (fork only)."""
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def sustained(self) -> Throughput | None:
        return next((t for t in self.throughput if t.sustained), None)

    def case(self, workflow: str, starters: int) -> Throughput | None:
        return next((t for t in self.throughput if t.workflow == workflow and t.starters == starters
                     and not t.sustained), None)  # fmt: skip


def show(line: str) -> None:
    print(line, flush=True)


async def bench_backend(backend: str, launcher: str, url: str, schema: str | None, plan: Plan, scratch: Path,
                        everything: bool) -> Report:  # fmt: skip
    """One environment with ``RUNTARA_LAUNCHER=launcher``. ``everything``: all phases; otherwise
    the comparison subset (phases 1-2, phase 3 empty with 1 starter and the sustained case, 5)."""
    report = Report(backend, launcher)
    tag = f"{backend}/{launcher}"
    workdir = scratch / f"{backend}-{launcher}"
    env = Environment(workdir, url, schema, {
        "RUNTARA_MAX_CONCURRENT_INSTANCES": str(max(60, plan.live + 10, SUSTAINED_STARTERS, *(c for c, _ in plan.cases))),
        "RUNTARA_HIBERNATE_AFTER_MS": "60000",
        "RUNTARA_LAUNCHER": launcher,
    })  # fmt: skip
    launchers_seen: dict[int, float] = {}

    def note_launchers() -> None:
        if env.alive:
            for proc in launcher_processes(env.pid):
                with contextlib.suppress(psutil.Error):
                    launchers_seen[proc.pid] = proc.create_time()

    try:
        report.env_start_s = await env.start()
        note_launchers()
        async with env.client() as client:
            await client.register_image(EMPTY_IMAGE, name="bench-empty")
            steps_image = await client.register_image(STEPS_IMAGE, name="bench-steps")
            node_id = (await client.health()).node_id
            await asyncio.sleep(1.0)
            idle_rss = env.rss_bytes()
            if launcher == "fork" and not launcher_processes(env.pid):
                report.warnings.append("no fork launcher process found after start: launches may be cold spawns")
            show(f"{tag:<16}environment ready in {report.env_start_s:.2f} s, idle RSS {idle_rss / MB:.1f} MB")
            try:
                async with asyncio.timeout(plan.phase_limit_s):
                    report.sequential = await phase_sequential(client, plan)
                show(f"{tag:<16}phases 1-2: {len(report.sequential)} sequential empty workflows done")
            except Exception as error:
                report.errors.append(f"phases 1-2: {describe(error)}")
                show(f"{tag:<16}phases 1-2 FAILED: {describe(error)}")
            cases = [(workflow, image, input, starters, total, False)
                     for workflow, image, input in (("empty", "bench-empty", None), ("10-step", "bench-steps", {"n": 10}))
                     for starters, total in plan.cases
                     if everything or (workflow == "empty" and starters == 1)]  # fmt: skip
            cases.append(("empty", "bench-empty", None, SUSTAINED_STARTERS, plan.sustained[launcher], True))
            for workflow, image, input, starters, total, sustained in cases:
                name = f"{workflow} x{starters}{' sustained' if sustained else ''}"
                try:
                    note_launchers()
                    async with asyncio.timeout(plan.phase_limit_s):
                        t = await phase_throughput(client, env.pid, workflow, image, input, starters, total, sustained)
                    report.throughput.append(t)
                    show(f"{tag:<16}phase 3: {workflow}, {starters} starter(s){', sustained' if sustained else ''}, "
                         f"{t.completed} wf: {t.per_s:.2f} wf/s" + (f" (steady {rate(t.steady_per_s)})" if sustained else ""))  # fmt: skip
                except Exception as error:
                    report.errors.append(f"phase 3 {name}: {describe(error)}")
                    show(f"{tag:<16}phase 3 {name} FAILED: {describe(error)}")
                    t = None
                await wait_no_instances(env.data_dir, 10)
                if t is not None:
                    await asyncio.sleep(0.3)  # the exits' metrics are written when they are reaped
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(30):
                            await read_instance_cpu(client, t)
            try:
                note_launchers()
                async with asyncio.timeout(plan.phase_limit_s):
                    report.memory = await phase_live(env, client, plan, idle_rss, env.data_dir)
                m = report.memory
                show(f"{tag:<16}phase 5: {m.live} live after {m.live_wait_s:.1f} s ({m.forked} forked), "
                     f"env RSS {m.env_live_rss / MB:.1f} MB")  # fmt: skip
                if launcher == "fork" and m.forked < len(m.instance_uss):
                    report.warnings.append(f"only {m.forked} of {len(m.instance_uss)} live instances were forked")
            except Exception as error:
                report.errors.append(f"phase 5: {describe(error)}")
                show(f"{tag:<16}phase 5 FAILED: {describe(error)}")
        if everything:
            try:
                async with asyncio.timeout(plan.phase_limit_s + 60):  # the burst drains at the launch rate
                    report.wake = await phase_wake(env, plan, steps_image.image_id, node_id, env.data_dir)
                note_launchers()
                w = report.wake
                show(f"{tag:<16}phase 4: {w.completed}/{w.count} woken, lateness p99 {percentile(w.lateness_ms, .99):.0f} ms")
            except Exception as error:
                report.errors.append(f"phase 4: {describe(error)}")
                show(f"{tag:<16}phase 4 FAILED: {describe(error)}")
        logs = "\n".join(path.read_text(errors="replace") for path in sorted(workdir.glob("environment-*.log")))
        crashes = [line for line in logs.splitlines() if "Traceback" in line or " ERROR " in line]
        if crashes:
            report.errors.append(f"environment log has {len(crashes)} ERROR/Traceback line(s), first: {crashes[0][:300]}")
        if launcher == "fork":
            cold = [line for line in logs.splitlines() if "launches are cold spawns" in line]
            if cold:
                report.warnings.append(f"the environment launched cold for a while ({len(cold)}x): {cold[0][-200:]}")
            ready = [line for line in logs.splitlines() if "fork launcher ready" in line]
            report.launcher_ready_ms = ", ".join(line.rsplit("warm-up took ", 1)[-1].rstrip(")") for line in ready)
    except Exception as error:
        report.errors.append(describe(error))
        show(f"{tag:<16}FAILED: {describe(error)}")
    finally:
        env.kill()
        for pid, created in launchers_seen.items():  # it exits when the environment's end of its channel closes
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 0.01:
                    proc.kill()
        kill_instances(env.data_dir)
        if schema is not None:
            with contextlib.suppress(Exception):
                await drop_schema(url, schema)
    return report


def describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out (phase limit)"
    if isinstance(error, ExceptionGroup):
        return "; ".join(describe(e) for e in error.exceptions[:3])
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# --- reporting --------------------------------------------------------------------------------------


def verdict(value: float, goal: float) -> str:
    if value != value:  # NaN
        return "-"
    return "met" if value < goal else "MISSED"


def row(metric: str, n: Any, p50: str, p99: str, extra: str = "", goal: str = "", result: str = "") -> str:
    return f"  {metric:<44} {str(n):>5} {p50:>10} {p99:>10} {extra:>12}  {goal:<14} {result}"


def fmt_ms(values: Sequence[float]) -> tuple[str, str]:
    return f"{percentile(values, .5):.0f} ms", f"{percentile(values, .99):.0f} ms"


def render(report: Report, plan: Plan, imports: Imports) -> str:
    lines = [f"== {report.backend}, {report.launcher} launcher ==", row("metric", "n", "p50", "p99", "max / rate", "goal", "")]
    runs = report.sequential
    if runs:
        for label, event in (("1. start -> registered (started), empty", "started"),
                             ("2. start -> completed, empty", "completed")):  # fmt: skip
            values = [v for r in runs if (v := r.since_start(event)) is not None]
            p50, p99 = fmt_ms(values)
            lines.append(row(label, len(values), p50, p99, f"{max(values):.0f} ms"))
    for t in report.throughput:
        p50, p99 = fmt_ms(t.latencies_ms)
        if t.sustained:
            lines.append(row(f"3. {t.workflow}, {t.starters} starters, sustained", t.completed, p50, p99,
                             f"{t.per_s:.2f} wf/s"))  # fmt: skip
            lines.append(row("   steady (middle 80% of completions)", "", "", "", rate(t.steady_per_s),
                             f">= {GOAL_SUSTAINED_PER_S:.0f} wf/s", verdict_at_least(t.steady_per_s, GOAL_SUSTAINED_PER_S)))  # fmt: skip
        else:
            lines.append(row(f"3. {t.workflow}, {t.starters} starter(s) (latency; wf/s)", t.completed, p50, p99,
                             f"{t.per_s:.2f} wf/s", "no baseline *"))  # fmt: skip
        if t.cpu is not None:
            c = t.cpu
            inst = f"{statistics.fmean(t.instance_cpu_ms):.0f}" if t.instance_cpu_ms else "-"
            launcher = "-" if c.launcher_s is None else f"{t.per_launch_ms(c.launcher_s):.1f}"
            lines.append(f"     CPU ms per launch: environment {t.per_launch_ms(c.env_s):.1f}, launcher {launcher}, "
                         f"instance {inst} (n={len(t.instance_cpu_ms)}), machine busy {t.per_launch_ms(c.machine_busy_s):.1f} "
                         f"(this client {t.per_launch_ms(c.client_s):.1f})")  # fmt: skip
    w = report.wake
    if w is not None:
        p50, p99 = fmt_ms(w.lateness_ms)
        late_max = max(w.lateness_ms) if w.lateness_ms else float("nan")
        lines.append(row(f"4. wake lateness, {w.count} hibernated", len(w.lateness_ms), p50, p99, f"{late_max:.0f} ms",
                         f"p99 < {GOAL_WAKE_P99_MS:.0f} ms",
                         verdict(percentile(w.lateness_ms, .99), GOAL_WAKE_P99_MS)))  # fmt: skip
        early_launch = sum(v > 0 for v in w.launched_lead_ms)
        early_reg = sum(v > 0 for v in w.registered_lead_ms)
        lp50, lp99 = fmt_ms(w.launched_lead_ms)
        lines.append(row("   launched before wake (lead: wake - launched)", f"{early_launch}/{len(w.launched_lead_ms)}",
                         lp50, lp99, ""))  # fmt: skip
        sp50, sp99 = fmt_ms(w.spawn_ms)
        lines.append(row("   spawn -> registered during the wakes", len(w.spawn_ms), sp50, sp99,
                         f"{max(w.spawn_ms):.0f} ms" if w.spawn_ms else "-"))  # fmt: skip
        rp50, rp99 = fmt_ms(w.registered_lead_ms)
        lines.append(row("   registered before wake (wake - started)", f"{early_reg}/{len(w.registered_lead_ms)}",
                         rp50, rp99, ""))  # fmt: skip
        cp50, cp99 = fmt_ms(w.control_lateness_ms)
        lines.append(row(f"   control: wake lateness, {CONTROL_WAKES} woken alone", len(w.control_lateness_ms), cp50, cp99,
                         f"{max(w.control_lateness_ms):.0f} ms" if w.control_lateness_ms else "-"))  # fmt: skip
        lines.append(f"     (restart took {w.restart_s:.2f} s; first wake {w.first_wake_after_ready_ms / 1000:.1f} s after "
                     f"ready; RUNTARA_MAX_CONCURRENT_INSTANCES=40, wake lead 1000 ms)")  # fmt: skip
        for anomaly in w.anomalies[:10]:
            lines.append(f"     ANOMALY: {anomaly}")
        if len(w.anomalies) > 10:
            lines.append(f"     ... and {len(w.anomalies) - 10} more anomalies")
    m = report.memory
    if m is not None:
        lines.append(row("5. env RSS, idle right after start", "", "", "", f"{m.idle_start_rss / MB:.1f} MB",
                         f"< {GOAL_IDLE_RSS_MB:.0f} MB", verdict(m.idle_start_rss / MB, GOAL_IDLE_RSS_MB)))  # fmt: skip
        lines.append(row("   env RSS, idle after phases 1-3", "", "", "", f"{m.idle_after_rss / MB:.1f} MB",
                         f"< {GOAL_IDLE_RSS_MB:.0f} MB", verdict(m.idle_after_rss / MB, GOAL_IDLE_RSS_MB)))  # fmt: skip
        lines.append(row(f"   env RSS, {m.live} live instances", "", "", "", f"{m.env_live_rss / MB:.1f} MB"))
        lines.append(row("   instance process RSS (median; max)", len(m.instance_rss),
                         f"{statistics.median(m.instance_rss) / MB:.1f} MB" if m.instance_rss else "-", "",
                         f"{max(m.instance_rss) / MB:.1f} MB" if m.instance_rss else "-"))  # fmt: skip
        lines.append(row("   instance process USS (median; max)", len(m.instance_uss),
                         f"{statistics.median(m.instance_uss) / MB:.1f} MB" if m.instance_uss else "-", "",
                         f"{max(m.instance_uss) / MB:.1f} MB" if m.instance_uss else "-"))  # fmt: skip
        lines.append(f"     ({m.live} started -> all running in {m.live_wait_s:.1f} s; {m.cancelled}/{m.live} cancelled "
                     f"on request; {m.killed_after} process(es) left to kill afterwards)")  # fmt: skip
    if runs:
        launched_to_loaded = [r.output["loaded_at_ms"] - r.events["launched"] for r in runs if "launched" in r.events]
        loaded_to_started = [r.events["started"] - r.output["loaded_at_ms"] for r in runs if "started" in r.events]
        launched_to_started = [r.events["started"] - r.events["launched"] for r in runs
                               if "started" in r.events and "launched" in r.events]  # fmt: skip
        start_to_launched = [v for r in runs if (v := r.since_start("launched")) is not None]
        started_to_body = [r.output["body_at_ms"] - r.events["started"] for r in runs if "started" in r.events]
        title = "cold spawn" if report.launcher == "spawn" else "fork launch (vs a cold spawn)"
        lines.append(f"  6. {title} (medians, ms)   fresh `python -c` runs   environment launches (phase 1)")
        lines.append(f"     start call -> launched event     {'':>14}   {statistics.median(start_to_launched):>8.0f}")
        lines.append(f"     interpreter                      {imports.bare_s * 1e3:>14.0f}")
        lines.append(f"     + imports (runtara_sdk.runner)   {(imports.sdk_s - imports.bare_s) * 1e3:>14.0f}")
        lines.append(f"     = interpreter + imports          {imports.sdk_s * 1e3:>14.0f}   "
                     f"{statistics.median(launched_to_loaded):>8.0f}  (launched -> image module ran"
                     f"{'' if report.launcher == 'spawn' else '; forked: image import only'})")  # fmt: skip
        lines.append(f"     handshake + register             {'':>14}   {statistics.median(loaded_to_started):>8.0f}  "
                     "(image module ran -> started)")  # fmt: skip
        lines.append(f"     total spawn -> registered        {'':>14}   {statistics.median(launched_to_started):>8.0f}  "
                     f"(launched -> started; p99 {percentile(launched_to_started, .99):.0f})")  # fmt: skip
        lines.append(f"     registered -> workflow body      {'':>14}   {statistics.median(started_to_body):>8.0f}")
    if report.launcher_ready_ms:
        lines.append(f"     (fork launcher ready: its imports and warm-up took {report.launcher_ready_ms}, paid once per environment start)")
    for warning in report.warnings:
        lines.append(f"  WARNING: {warning}")
    for error in report.errors:
        lines.append(f"  ERROR: {error}")
    return "\n".join(lines)


def rate(per_s: float) -> str:
    return "-" if per_s != per_s else f"{per_s:.2f} wf/s"


def verdict_at_least(value: float, goal: float) -> str:
    if value != value:  # NaN
        return "-"
    return "met" if value >= goal else "MISSED"


def compare(backend: str, fork: Report | None, spawn: Report | None) -> str:
    """metric | fork | spawn | goal | met? (the goals are for the fork launcher, the default)."""

    def seq(r: Report | None, event: str, q: float) -> float:
        if r is None:
            return float("nan")
        return percentile([v for run in r.sequential if (v := run.since_start(event)) is not None], q)

    def sus(r: Report | None, f: Any) -> float:
        t = r.sustained if r is not None else None
        v = f(t) if t is not None else None
        return float("nan") if v is None else v

    def one(r: Report | None) -> float:
        t = r.case("empty", 1) if r is not None else None
        return t.per_s if t is not None else float("nan")

    def mem(r: Report | None, attr: str) -> float:
        values = getattr(r.memory, attr) if r is not None and r.memory is not None else []
        return statistics.median(values) / MB if values else float("nan")

    def idle(r: Report | None) -> float:
        return r.memory.idle_start_rss / MB if r is not None and r.memory is not None else float("nan")

    def cpu_ms(attr: str) -> Any:
        return lambda t: t.per_launch_ms(getattr(t.cpu, attr)) if t.cpu is not None else None

    def inst_cpu(t: Throughput) -> float | None:
        return statistics.fmean(t.instance_cpu_ms) if t.instance_cpu_ms else None

    ms, per_s, mb = "{:.0f} ms", "{:.1f} wf/s", "{:.1f} MB"
    reg, sustained, uss, idle_rss = GOAL_REGISTERED_P50_MS, GOAL_SUSTAINED_PER_S, GOAL_INSTANCE_USS_MB, GOAL_IDLE_RSS_MB
    n_fork = fork.sustained.completed if fork is not None and fork.sustained else "-"
    n_spawn = spawn.sustained.completed if spawn is not None and spawn.sustained else "-"
    rows_: list[tuple[str, str, float, float, str, float]] = [
        # (metric, format, fork, spawn, goal kind "<" / ">=" / "", goal)
        ("start -> registered p50 (phase 1)", ms, seq(fork, "started", .5), seq(spawn, "started", .5),
         "<", reg),
        ("start -> registered p99", ms, seq(fork, "started", .99), seq(spawn, "started", .99), "", 0.0),
        ("start -> completed p50", ms, seq(fork, "completed", .5), seq(spawn, "completed", .5), "", 0.0),
        ("empty wf/s, 1 starter", per_s, one(fork), one(spawn), "", 0.0),
        (f"empty wf/s, {SUSTAINED_STARTERS} starters ({n_fork} / {n_spawn} wf), total", per_s,
         sus(fork, lambda t: t.per_s), sus(spawn, lambda t: t.per_s), "", 0.0),
        ("  steady (middle 80% of completions)", per_s, sus(fork, lambda t: t.steady_per_s),
         sus(spawn, lambda t: t.steady_per_s), ">=", sustained),
        ("USS per live instance (median)", mb, mem(fork, "instance_uss"), mem(spawn, "instance_uss"),
         "<", uss),
        ("RSS per live instance (median)", mb, mem(fork, "instance_rss"), mem(spawn, "instance_rss"), "", 0.0),
        ("environment RSS, idle after start", mb, idle(fork), idle(spawn), "<", idle_rss),
        ("CPU per launch: environment process", "{:.1f} ms", sus(fork, cpu_ms("env_s")),
         sus(spawn, cpu_ms("env_s")), "", 0.0),
        ("CPU per launch: fork launcher", "{:.1f} ms", sus(fork, cpu_ms("launcher_s")),
         sus(spawn, cpu_ms("launcher_s")), "", 0.0),
        ("CPU per launch: instance process (mean)", ms, sus(fork, inst_cpu), sus(spawn, inst_cpu), "", 0.0),
        ("CPU per workflow: whole machine busy", ms, sus(fork, cpu_ms("machine_busy_s")),
         sus(spawn, cpu_ms("machine_busy_s")), "", 0.0),
        ("  of which this bench's clients", "{:.1f} ms", sus(fork, cpu_ms("client_s")),
         sus(spawn, cpu_ms("client_s")), "", 0.0),
    ]  # fmt: skip

    def cell(fmt: str, v: float) -> str:
        return "-" if v != v else fmt.format(v)

    def met(kind: str, v: float, goal: float) -> str:
        return verdict(v, goal) if kind == "<" else verdict_at_least(v, goal)

    lines = [f"== {backend}: fork vs cold spawn (CPU from phase 3's sustained case; goals are for fork, the default) ==",
             f"  {'metric':<46} {'fork':>11} {'spawn':>11}  {'goal':<13} met? (fork; spawn)"]  # fmt: skip
    for metric, fmt, f_value, s_value, kind, goal in rows_:
        goal_text = result = ""
        if kind:
            goal_text = f"{kind} {fmt.format(goal).replace('.0 ', ' ')}"
            result = f"{met(kind, f_value, goal)}; {met(kind, s_value, goal)}"
        lines.append(f"  {metric:<46} {cell(fmt, f_value):>11} {cell(fmt, s_value):>11}  {goal_text:<13} {result}")
    lines.append(f"  (steady: '-' when the case ran fewer than {STEADY_MIN_ROUNDS} rounds of its starters, as the cold-spawn "
                 "side does to stay short)")
    lines.append("  (environment: its own user+system CPU; launcher: its own plus its short-lived middle children; instance:"
                 "\n   cpu_time_ms recorded at reaping, a fork's counted from the fork; whole machine: user+nice+system+irq+"
                 "\n   softirq of all CPUs over the case, per completed workflow, including this bench and other load)")  # fmt: skip
    return "\n".join(lines)


def banner(plan: Plan, imports: Imports, mode: str, launchers: Sequence[str], spawn_everything: bool) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    top = "\n".join(f"    {'  ' * depth}{name:<40} {seconds * 1e3:7.1f} ms" for name, depth, seconds in imports.top_cumulative)
    return (
        f"Runtara lifecycle bench ({mode}): Python {platform.python_version()}, aioquic "
        f"{importlib.metadata.version('aioquic')}, {os.cpu_count()} CPUs (load {load})\n"
        f"plan: {plan.sequential} sequential starts (+1 warm-up); throughput cases (starters x workflows) "
        f"{', '.join(f'{c} x {n}' for c, n in plan.cases)}, sustained {SUSTAINED_STARTERS} x "
        f"{' / '.join(f'{plan.sustained[x]} ({x})' for x in launchers)}; {plan.hibernated} hibernated wakes; "
        f"{plan.live} live instances\n"
        f"launcher(s): {', '.join(LAUNCHER_TEXT[x] for x in launchers)}"
        f"{'' if spawn_everything or 'spawn' not in launchers else ' (spawn: phases 1-2, 3 empty x1 and sustained, 5 only)'}\n"
        f"cold spawn context (median of {plan.import_runs}): python -c pass {imports.bare_s * 1e3:.0f} ms; "
        f"python -c 'import runtara_sdk.runner' {imports.sdk_s * 1e3:.0f} ms; -X importtime, 8 biggest cumulative:\n{top}"
    )


LAUNCHER_TEXT = {
    "fork": "fork (RUNTARA_LAUNCHER=fork, the default: forks of the pre-forked `python -m runtara_environment.launcher_process`)",
    "spawn": "spawn (RUNTARA_LAUNCHER=spawn: a cold `python -m runtara_sdk` per launch)",
}

FOOTNOTE = (
    "* throughput has no baseline: bench/sdk.py's DBOS side measures one in-process N-step workflow's latency,\n"
    "  sequentially, not workflows/s with concurrent starters (and DBOS is {dbos} here); the only throughput goal\n"
    "  (>= 60 empty wf/s sustained with the fork launcher) is judged in the sustained rows and the comparison table."
)


# --- the run ----------------------------------------------------------------------------------------


async def bench_main(args: argparse.Namespace, plan: Plan, scratch: Path, schemas: list[tuple[str, str]]) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    started = time.perf_counter()
    imports = await asyncio.to_thread(measure_imports, plan.import_runs)
    launchers = LAUNCHERS if args.launcher == "both" else (args.launcher,)
    spawn_everything = args.launcher == "spawn"  # the wake phase costs ~60 s with cold spawns: only when asked alone
    show(banner(plan, imports, "quick" if args.quick else "full", launchers, spawn_everything) + "\n")
    reports: list[Report] = []
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    for backend in backends:
        if backend == "postgres":
            problem = await postgres_problem(args.database_url)
            if problem is not None:
                show(f"postgres  PostgreSQL at {args.database_url} is unreachable ({problem}); skipped")
                continue
        for launcher in launchers:
            t0 = time.perf_counter()
            if backend == "postgres":
                url = args.database_url
                schema = f"rt_lifecycle_bench_{uuid.uuid4().hex[:12]}"
                schemas.append((url, schema))
            else:
                url = f"sqlite:///{scratch / f'{backend}-{launcher}' / 'data' / 'runtara.db'}"
                schema = None
            everything = launcher == "fork" or spawn_everything
            reports.append(await bench_backend(backend, launcher, url, schema, plan, scratch, everything))
            show(f"{backend + '/' + launcher:<16}done in {time.perf_counter() - t0:.0f} s\n")
    dbos = "not installed"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dbos = f"{importlib.metadata.version('dbos')}, but not run"
    for report in reports:
        show(render(report, plan, imports) + "\n")
    for backend in backends:
        by = {r.launcher: r for r in reports if r.backend == backend}
        if by:
            show(compare(backend, by.get("fork"), by.get("spawn")) + "\n")
    show(FOOTNOTE.format(dbos=dbos))
    show(f"total run time {time.perf_counter() - started:.0f} s")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--launcher", choices=("fork", "spawn", "both"), default="both",
                        help="fork: all phases with RUNTARA_LAUNCHER=fork; spawn alone: all phases with cold spawns; "
                             "both (default): all with fork, plus phases 1-3 and 5 with spawn for the comparison")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="fewer starts and wakes (a smoke run under ~3 min)")
    parser.add_argument("--database-url", default=os.environ.get("RUNTARA_TEST_DATABASE_URL", DEFAULT_PG_URL),
                        help="PostgreSQL server (a throwaway schema is created and dropped)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    schemas: list[tuple[str, str]] = []
    scratch = Path(tempfile.mkdtemp(prefix="runtara-lifecycle-bench-"))
    code = 0
    try:
        asyncio.run(bench_main(args, plan, scratch, schemas))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; cleaning up", file=sys.stderr, flush=True)
        code = 130
    finally:
        # Belt and braces: whatever the phases left behind (each backend already cleans up):
        # environments (RUNTARA_DATA_DIR in scratch), their fork launchers (whose environment is
        # clean, so: children of one of those), and instance processes (cwd in a run directory).
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.pid != os.getpid() and "runtara_environment" in " ".join(proc.cmdline()) \
                        and proc.environ().get("RUNTARA_DATA_DIR", "").startswith(str(scratch)):
                    for child in launcher_processes(proc.pid):
                        with contextlib.suppress(psutil.Error):
                            child.kill()
                    proc.kill()
        for workdir in scratch.iterdir() if scratch.is_dir() else ():
            kill_instances(workdir / "data")
        for url, schema in schemas:
            with contextlib.suppress(Exception):
                asyncio.run(drop_schema(url, schema))
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
