"""Scenario 5, soak: continuous starts at a fixed rate for a while (10 minutes at 10/s from the
CLI, well under a minute in CI), with about 5% of runs crash-injected and random signals, while
the environment process is sampled every second.

The mix: runs of the example images (order, batch, welcome-email with short in-process and long
hibernating sleeps, approval whose signal comes at a random time); ``crash_fraction`` of them get
one planned fault from ``chaos.example_runs.plan_run`` (a failpoint or an outside SIGKILL);
``cancel_fraction`` get a cancel at a random time (then completed and cancelled are both legal);
``pause_fraction`` get a pause at a random time and, once paused, a resume (they must complete);
and "noise" custom signals go to random live instances (no workflow waits on that name: each must
be queued exactly as sent and never consumed, and must not disturb the instance).

What it reports besides the audit over every run started (``report.measurements``):

- the environment process's RSS, open file descriptors and threads: first, last, max, and the
  least-squares slope over the second half of the samples (after warm-up), per minute;
- its live child processes, and zombies whose parent is the environment or its fork launcher
  (max seen in one sample, and how many are left after everything ended and settled);
- run directories: with ``RUNTARA_RUN_RETENTION_S`` set small, what is left of ``DATA_DIR/runs``
  after the retention plus a sweep must be non-terminal instances or ones finished within the
  retention; anything else is an orphaned run directory;
- the start rate achieved, the start latency, and the launch lag (start to first launch): when
  the lag grows through the run, the rate is more than the machine launches (on the shared
  2-core test machine about 3.5 launches/s: at 10/s a backlog of 120 s built up in 3 minutes)
  and the soak measures a growing queue rather than a steady state.

``python -m chaos soak --backend postgres --trials 4 --budget-s 600`` (trials: starts/s) runs one and prints
its report; ``soak-samples.jsonl`` in the work directory keeps every sample.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from chaos.audit import Audit, Expectation, InstanceFacts, audit, percentile
from chaos.cluster import FINAL_STATUSES, ChaosEnvironment, FinalWatcher
from chaos.example_runs import FAULTS, HIBERNATE_AFTER_MS, RunPlan, plan_run
from chaos.report import ScenarioReport
from runtara_core.errors import InvalidState, RuntaraError, TransportError
from runtara_core.persistence.rows import EventType, InstanceStatus
from runtara_environment.client import ManagementClient
from runtara_environment.fork_launcher import LAUNCHER_MODULE
from runtara_environment.run_retention import RETIRED_PREFIX

log = logging.getLogger(__name__)

T = TypeVar("T")

RUN_RETENTION_INTERVAL_S = 1.0
SETTINGS: dict[str, Any] = {
    "hibernate_after_ms": HIBERNATE_AFTER_MS,
    "crash_backoff_initial_ms": 100,
    "max_concurrent_instances": 64,
    "run_retention_interval_s": RUN_RETENTION_INTERVAL_S,
}
MAX_ATTEMPTS = 8
CRASH_FAULTS = tuple(f for f in FAULTS if f != "signal.waiting")
"""``signal.waiting`` plans a 2.25 s signal wait, and the soak sends approvals up to 3 s after
the start: a signal that legally comes after the deadline would read as a wrong outcome here.
instance_kills covers that window."""
NOISE_SIGNAL = "noise"
"""A custom signal name no example waits on."""
DISRUPT_WITHIN_S = 0.8
"""Cancels and pauses come at a uniformly random time this long after the start was acked (most
runs of the mix take about a second: later, most would find them final)."""
START_TRIES = 3
RPC_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the environment process."""

    t_s: float
    rss_bytes: int
    fds: int
    threads: int
    children: int
    """Live child processes (instances; the fork launcher excluded)."""
    zombies: int
    """Exited, unreaped children of the environment or of its fork launcher."""


@dataclass
class SoakRun:
    plan: RunPlan
    disruption: str
    """"none", "crash", "cancel" or "pause"."""
    started: bool = False
    start_latency_ms: float | None = None
    signals: list[Any] = field(default_factory=list)
    """Approval payloads the server acknowledged (each must be consumed at most once)."""
    noise: list[Any] = field(default_factory=list)
    """Noise payloads the server acknowledged (each must be queued and never consumed)."""

    def expectation(self) -> Expectation:
        allowed = frozenset({InstanceStatus.COMPLETED, InstanceStatus.CANCELLED}) if self.disruption == "cancel" else frozenset()
        return Expectation(check_output=self.plan.expectation().check_output, allowed=allowed, signals=tuple(self.signals))


# ---------------------------------------------------------------------------- measurements


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """dy/dx of the least-squares line through ``points``; None for fewer than 3 or no spread."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def series_summary(
    samples: Sequence[Sample], value: Callable[[Sample], float], *, load: tuple[float, float], scale: float = 1.0
) -> dict[str, Any]:
    """first / last / max over all samples, and the slope per minute over the second half of
    the samples taken under load (``load``: when starts began and ended, on the samples' clock).
    The first half is warm-up (caches, pools, allocator arenas filling); after the load, a leak
    stops growing, so idle samples would only flatten the slope."""
    if not samples:
        return {}
    values = [value(s) * scale for s in samples]
    loaded = [s for s in samples if load[0] <= s.t_s <= load[1]]
    half = loaded[len(loaded) // 2 :]
    slope = least_squares_slope([(s.t_s / 60.0, value(s) * scale) for s in half])
    return {
        "first": round(values[0], 1),
        "last": round(values[-1], 1),
        "max": round(max(values), 1),
        "slope_per_min": None if slope is None else round(slope, 1),
    }


def find_launcher(children: Sequence[psutil.Process]) -> psutil.Process | None:
    for child in children:
        with contextlib.suppress(psutil.Error):
            if LAUNCHER_MODULE in " ".join(child.cmdline()):
                return child
    return None


def sample(pid: int, t0: float) -> Sample | None:
    """RSS, fds, threads, live children and zombies of the environment (None if it is gone)."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            rss = proc.memory_info().rss
            fds = proc.num_fds()
            threads = proc.num_threads()
        children = proc.children()
    except psutil.Error:
        return None
    launcher = find_launcher(children)
    candidates = list(children)
    if launcher is not None:
        with contextlib.suppress(psutil.Error):
            candidates += launcher.children()
    zombies = 0
    live = 0
    for child in candidates:
        try:
            status = child.status()
        except psutil.Error:
            continue
        if status == psutil.STATUS_ZOMBIE:
            zombies += 1
        elif child in children and child != launcher:
            live += 1
    return Sample(time.monotonic() - t0, rss, fds, threads, live, zombies)


@dataclass
class Sampler:
    """Samples the environment process every ``interval_s`` until stopped."""

    environment: ChaosEnvironment
    interval_s: float = 1.0
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)

    async def take(self) -> Sample | None:
        taken = await asyncio.to_thread(sample, self.environment.env.pid, self.t0)
        if taken is not None:
            self.samples.append(taken)
        return taken

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.take()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)


# ---------------------------------------------------------------------------- run directories


@dataclass(frozen=True, slots=True)
class RunDirCheck:
    remaining: int
    orphaned: list[str]
    """Run directories that retention should have deleted: of instances finished longer than
    the retention (plus a sweep) ago, with no instance, or left over from a deletion."""


async def check_run_dirs(environment: ChaosEnvironment, retention_s: float, grace_s: float) -> RunDirCheck:
    """What is left of ``DATA_DIR/runs`` must be of non-terminal instances or ones finished
    within ``retention_s + grace_s``."""
    try:
        names = sorted(p.name for p in environment.runs_dir.iterdir())
    except FileNotFoundError:
        names = []
    cutoff_ms = int((time.time() - retention_s - grace_s) * 1000)
    orphaned: list[str] = []
    db = await environment.open_database()
    try:
        for name in names:
            if name.startswith(RETIRED_PREFIX):
                orphaned.append(f"{name} (left over from a deletion)")
                continue
            row = await db.get_instance(name)
            if row is None:
                orphaned.append(f"{name} (no instance)")
            elif row.status.value in FINAL_STATUSES and (row.finished_at_ms or 0) < cutoff_ms:
                orphaned.append(f"{name} ({row.status.value} {(cutoff_ms - (row.finished_at_ms or 0)) / 1000:.1f} s past the retention)")
    finally:
        await db.close()
    return RunDirCheck(len(names), orphaned)


# ---------------------------------------------------------------------------- the scenario


def plan_soak_run(rng: random.Random, instance_id: str, ledger: str, *, crash_fraction: float, cancel_fraction: float, pause_fraction: float) -> SoakRun:
    """One run of the mix; at most one disruption each."""
    roll = rng.random()
    if roll < crash_fraction:
        return SoakRun(plan_run(rng, instance_id, ledger, fault=rng.choice(CRASH_FAULTS)), "crash")
    disruption = "none"
    if roll < crash_fraction + cancel_fraction:
        disruption = "cancel"
    elif roll < crash_fraction + cancel_fraction + pause_fraction:
        disruption = "pause"
    image = rng.choices(["order", "batch", "welcome-email", "approval"], weights=[30, 25, 25, 20])[0]
    base: dict[str, Any] = {"ledger": ledger}
    signal_after_s: float | None = None
    payload: dict[str, Any] = {}
    if image == "order":
        run_input = {
            **base, "order_id": f"o-{rng.randrange(10**6)}", "customer": f"c-{rng.randrange(100)}",
            "amount": round(rng.uniform(1, 500), 2), "items": [f"sku-{rng.randrange(50)}" for _ in range(rng.randint(1, 3))],
            "step_delay_s": 0.05,
        }  # fmt: skip
    elif image == "batch":
        run_input = {**base, "items": rng.randint(3, 12), "item_delay_s": 0.03}
    elif image == "welcome-email":
        # Half sleep in process, half hibernate (longer than HIBERNATE_AFTER_MS) and are woken.
        sleep_s = rng.uniform(0.2, 1.0) if rng.random() < 0.5 else rng.uniform(3.0, 4.0)
        run_input = {**base, "user": f"u{rng.randrange(1000)}", "follow_up_after_s": sleep_s, "step_delay_s": 0.05}
    else:
        run_input = {**base, "requester": f"r{rng.randrange(1000)}", "timeout_s": 120}
        signal_after_s = rng.uniform(0.0, 3.0)  # often after the wait hibernated
        payload = {"approved": rng.random() < 0.7, "by": f"approver-{instance_id}"}
    plan = RunPlan(instance_id, image, run_input, "none", signal_after_s=signal_after_s, signal_payload=payload)
    return SoakRun(plan, disruption)


async def run(
    backend: str,
    workdir: Path,
    *,
    seed: int,
    rate: float = 10.0,
    budget_s: float = 600.0,
    crash_fraction: float = 0.05,
    cancel_fraction: float = 0.03,
    pause_fraction: float = 0.03,
    noise_per_s: float = 1.0,
    retention_s: int = 5,
    drain_s: float = 300.0,
    sample_interval_s: float = 1.0,
    max_concurrent_instances: int = 64,
) -> ScenarioReport:
    """Starts at ``rate`` per second for ``budget_s`` seconds, then waits (at most ``drain_s``)
    until every run is final and retention had ``retention_s`` plus a sweep to clean up."""
    report = ScenarioReport("soak", backend, seed)
    report.command = (
        f"python -m chaos soak --backend {backend} --seed {seed} --trials {rate:g} --budget-s {budget_s:g}"
    )
    began = time.monotonic()
    rng = random.Random(seed)
    settings = {**SETTINGS, "max_concurrent_instances": max_concurrent_instances, "run_retention_s": retention_s}
    environment = await ChaosEnvironment.open(backend, workdir, **settings)
    runs: list[SoakRun] = []
    try:
        watcher = FinalWatcher(environment)
        sampler = Sampler(environment, sample_interval_s)
        stop = asyncio.Event()
        async with environment.client() as client:
            await environment.register_examples(client)
            baseline = await sampler.take()
            background = [asyncio.create_task(watcher.run(stop)), asyncio.create_task(sampler.run(stop))]
            try:
                drain_deadline = time.monotonic() + budget_s + drain_s
                load_began = time.monotonic() - sampler.t0
                # Its own generator: the driver's choices interleave with planning in an order
                # timing decides, and the plans must be the same for a seed.
                driver = _Driver(environment, client, watcher, report, random.Random(seed + 1), drain_deadline)
                await driver.start_for(
                    budget_s, rate, runs, noise_per_s,
                    lambda n: plan_soak_run(
                        rng, f"s{seed}-{n}", str(environment.ledger), crash_fraction=crash_fraction,
                        cancel_fraction=cancel_fraction, pause_fraction=pause_fraction,
                    ),
                )  # fmt: skip
                drained_at = time.monotonic()
                load = (load_began, drained_at - sampler.t0)
                await driver.wait_all()
                report.measurements["drain_s"] = round(time.monotonic() - drained_at, 1)
                # Retention deletes a run directory once it is older than the retention; give
                # it that plus two sweeps, then everything must be reaped, closed and deleted.
                await asyncio.sleep(retention_s + 2 * RUN_RETENTION_INTERVAL_S + 1.0)
                end = await sampler.take()
            finally:
                stop.set()
                for task in background:  # a poll in flight may wait a request timeout: do not
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
        started = [r for r in runs if r.started]
        ids = [r.plan.instance_id for r in started]
        facts = await environment.facts(ids)
        report.audit = audit(facts, {r.plan.instance_id: r.expectation() for r in started})
        report.trials = len(runs)
        _audit_noise(report.audit, facts, started, report)
        dirs = await check_run_dirs(environment, retention_s, 2 * RUN_RETENTION_INTERVAL_S)
        _measure(report, runs, sampler.samples, load, baseline, end, dirs, rate, budget_s)
        _measure_launch_lag(report, facts)
        samples_path = workdir / "soak-samples.jsonl"
        samples_path.write_text("".join(json.dumps(asdict(s)) + "\n" for s in sampler.samples))
        report.measurements["samples_file"] = str(samples_path)
    finally:
        await environment.close()
    report.duration_s = time.monotonic() - began
    return report


class _Driver:
    """Starts runs and does what each plan says; one shared management connection."""

    def __init__(
        self,
        environment: ChaosEnvironment,
        client: ManagementClient,
        watcher: FinalWatcher,
        report: ScenarioReport,
        rng: random.Random,
        deadline: float,
    ) -> None:
        self.environment = environment
        self.client = client
        self.watcher = watcher
        self.report = report
        self.rng = rng
        self.deadline = deadline
        self.live: dict[str, SoakRun] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.noise_sent = 0

    async def start_for(
        self, budget_s: float, rate: float, runs: list[SoakRun], noise_per_s: float, plan: Callable[[int], SoakRun]
    ) -> None:
        """One start every 1/rate s (never bursting to catch up) and noise signals, for budget_s."""
        end = time.monotonic() + budget_s
        period = 1.0 / rate
        next_start = time.monotonic()
        next_noise = next_start + (1.0 / noise_per_s if noise_per_s > 0 else budget_s + 1)
        n = 0
        while (now := time.monotonic()) < end:
            if now >= next_start:
                soak_run = plan(n)
                n += 1
                runs.append(soak_run)
                self.tasks.append(asyncio.create_task(self.drive(soak_run)))
                next_start = max(next_start + period, now)
            if noise_per_s > 0 and now >= next_noise:
                self.tasks.append(asyncio.create_task(self.noise()))
                next_noise = max(next_noise + 1.0 / noise_per_s, now)
            await asyncio.sleep(max(0.0, min(next_start, next_noise, end) - time.monotonic()))

    async def wait_all(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def drive(self, soak_run: SoakRun) -> None:
        plan = soak_run.plan
        final = self.watcher.expect(plan.instance_id)
        if not await self._start(soak_run):
            return
        self.live[plan.instance_id] = soak_run
        actions: list[asyncio.Task[None]] = []
        if plan.kill_after_s is not None:
            actions.append(asyncio.create_task(self._kill_later(plan)))
        if plan.signal_after_s is not None:
            actions.append(asyncio.create_task(self._signal_later(soak_run)))
        if soak_run.disruption == "cancel":
            actions.append(asyncio.create_task(self._cancel_later(plan)))
        elif soak_run.disruption == "pause":
            actions.append(asyncio.create_task(self._pause_and_resume(plan, final)))
        try:
            await asyncio.wait_for(final.wait(), max(0.0, self.deadline - time.monotonic()))
        except TimeoutError:
            pass  # the audit reports it as stranded
        finally:
            self.live.pop(plan.instance_id, None)
            for action in actions:
                if not action.done():
                    action.cancel()
            results = await asyncio.gather(*actions, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.warning("soak: an action on %s failed: %r", plan.instance_id, result)

    async def _rpc(self, call: Callable[[], Awaitable[T]]) -> T:
        return await asyncio.wait_for(call(), RPC_TIMEOUT_S)

    async def _start(self, soak_run: SoakRun) -> bool:
        """Start (retrying with the same id: starts are idempotent); False if never acknowledged."""
        plan = soak_run.plan
        began = time.monotonic()
        for attempt in range(1, START_TRIES + 1):
            try:
                await self._rpc(lambda: self.client.start_instance(
                    plan.image, plan.input, instance_id=plan.instance_id, max_attempts=MAX_ATTEMPTS, env=plan.env
                ))  # fmt: skip
            except (RuntaraError, TransportError, TimeoutError) as error:
                log.warning("soak: start of %s failed (try %d): %r", plan.instance_id, attempt, error)
                continue
            soak_run.started = True
            soak_run.start_latency_ms = (time.monotonic() - began) * 1000
            if soak_run.disruption == "crash":
                self.report.fault(f"planned:{plan.fault}")
            return True
        return False

    async def _wait_started(self, instance_id: str) -> float:
        """When the instance was first seen started (polled gently: the soak loads the server)."""
        while time.monotonic() < self.deadline:
            row = await self._rpc(lambda: self.client.get_instance(instance_id))
            if row.started_at_ms is not None or row.status in FINAL_STATUSES:
                break
            await asyncio.sleep(0.05)
        return time.monotonic()

    async def _kill_later(self, plan: RunPlan) -> None:
        assert plan.kill_after_s is not None
        first_run = await self._wait_started(plan.instance_id)
        await asyncio.sleep(max(0.0, first_run + plan.kill_after_s - time.monotonic()))
        if self.environment.kill_instance(plan.instance_id):
            self.report.fault("sigkill:random-time")

    async def _signal_later(self, soak_run: SoakRun) -> None:
        plan = soak_run.plan
        assert plan.signal_after_s is not None
        await asyncio.sleep(plan.signal_after_s)
        try:
            await self._rpc(lambda: self.client.send_custom_signal(plan.instance_id, "approval", plan.signal_payload))
        except InvalidState:
            return  # final already (cancelled): nothing was queued
        soak_run.signals.append(plan.signal_payload)

    async def _cancel_later(self, plan: RunPlan) -> None:
        await asyncio.sleep(self.rng.uniform(0.0, DISRUPT_WITHIN_S))
        with contextlib.suppress(InvalidState):  # final already
            await self._rpc(lambda: self.client.send_signal(plan.instance_id, "cancel"))
            self.report.fault("signal:cancel")

    async def _pause_and_resume(self, plan: RunPlan, final: asyncio.Event) -> None:
        """Pause at a random time; once it is paused, resume it (once: a second pause would be a
        bug, and the audit then finds it stranded)."""
        await asyncio.sleep(self.rng.uniform(0.0, DISRUPT_WITHIN_S))
        by_signal = self.rng.random() < 0.5
        try:
            await self._rpc(lambda: self.client.send_signal(plan.instance_id, "pause"))
        except InvalidState:
            return  # final already
        self.report.fault("signal:pause")
        while not final.is_set() and time.monotonic() < self.deadline:
            row = await self._rpc(lambda: self.client.get_instance(plan.instance_id))
            if row.status == "suspended" and row.termination_reason == "paused":
                if by_signal:
                    await self._rpc(lambda: self.client.send_signal(plan.instance_id, "resume"))
                else:
                    await self._rpc(lambda: self.client.resume_instance(plan.instance_id))
                self.report.fault("signal:resume")
                return
            if row.status in FINAL_STATUSES:
                return
            await asyncio.sleep(0.25)

    async def noise(self) -> None:
        """A custom signal no workflow waits on, to a random live instance."""
        if not self.live:
            return
        instance_id = self.rng.choice(sorted(self.live))
        soak_run = self.live[instance_id]
        self.noise_sent += 1
        payload = {"noise": self.noise_sent, "to": instance_id}
        try:
            await self._rpc(lambda: self.client.send_custom_signal(instance_id, NOISE_SIGNAL, payload))
        except InvalidState:
            return  # it became final meanwhile
        soak_run.noise.append(payload)
        self.report.fault("signal:custom-noise")


def _audit_noise(result: Audit, facts: Sequence[InstanceFacts], runs: Sequence[SoakRun], report: ScenarioReport) -> None:
    """Every acknowledged noise signal is queued exactly once and never consumed."""
    by_id = {fact.row.instance_id: fact for fact in facts}
    lost = consumed = 0
    for soak_run in runs:
        fact = by_id.get(soak_run.plan.instance_id)
        if fact is None:
            continue  # the audit reported it already
        queued = [json.loads(s.payload) for s in fact.custom_signals if s.name == NOISE_SIGNAL]
        for payload in soak_run.noise:
            found = [p for p in queued if p == payload]
            if len(found) != 1:
                lost += 1
                result.violations.append(f"{soak_run.plan.instance_id}: noise signal {payload!r} queued {len(found)} times")
        for s in fact.custom_signals:
            if s.name == NOISE_SIGNAL and s.consumed_at_ms is not None:
                consumed += 1
                result.violations.append(f"{soak_run.plan.instance_id}: noise signal {s.payload!r} was consumed")
    report.measurements["noise_signals"] = {"acked": sum(len(r.noise) for r in runs), "lost": lost, "consumed": consumed}


def _measure(
    report: ScenarioReport,
    runs: Sequence[SoakRun],
    samples: Sequence[Sample],
    load: tuple[float, float],
    baseline: Sample | None,
    end: Sample | None,
    dirs: RunDirCheck,
    rate: float,
    budget_s: float,
) -> None:
    started = [r for r in runs if r.started]
    latencies = [r.start_latency_ms for r in started if r.start_latency_ms is not None]
    kb = 1 / 1024
    m = report.measurements
    m.update(
        rate_target=rate,
        budget_s=budget_s,
        starts=len(started),
        starts_failed=len(runs) - len(started),
        starts_per_s=round(len(started) / budget_s, 2) if budget_s else None,
        start_latency_ms_p50=_round(percentile(latencies, 0.5)),
        start_latency_ms_p99=_round(percentile(latencies, 0.99)),
        disruptions={d: sum(1 for r in started if r.disruption == d) for d in ("none", "crash", "cancel", "pause")},
        samples=len(samples),
        rss_kb=series_summary(samples, lambda s: s.rss_bytes, load=load, scale=kb),
        fds=series_summary(samples, lambda s: s.fds, load=load),
        threads=series_summary(samples, lambda s: s.threads, load=load),
        children_max=max((s.children for s in samples), default=0),
        zombies_max=max((s.zombies for s in samples), default=0),
        baseline=None if baseline is None else {"rss_kb": baseline.rss_bytes // 1024, "fds": baseline.fds, "threads": baseline.threads},
        end=None if end is None else {
            "rss_kb": end.rss_bytes // 1024, "fds": end.fds, "threads": end.threads,
            "children": end.children, "zombies": end.zombies,
        },
        run_dirs_remaining=dirs.remaining,
        run_dirs_orphaned=len(dirs.orphaned),
        run_dirs_orphaned_examples=dirs.orphaned[:10],
    )  # fmt: skip


def _measure_launch_lag(report: ScenarioReport, facts: Sequence[InstanceFacts]) -> None:
    """Start to first launch, per run: when it grows over the soak, the rate is more than this
    machine launches and the soak measures a growing backlog, not a steady state."""
    lags: list[tuple[int, int]] = []
    for fact in facts:
        launched = next((e.created_at_ms for e in fact.events if e.type == EventType.LAUNCHED), None)
        if launched is not None:
            lags.append((fact.row.created_at_ms, launched - fact.row.created_at_ms))
    lags.sort()
    values = [lag for _, lag in lags]
    tail = values[-max(1, len(values) // 10) :]
    report.measurements["launch_lag_ms"] = {
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values, default=None),
        "last_tenth_p50": percentile(tail, 0.5),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ---------------------------------------------------------------------------- CLI
