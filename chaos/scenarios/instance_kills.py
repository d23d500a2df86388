"""Scenario 1, instance kills: runs of the example images, each SIGKILLed at a planned moment
(a failpoint: between a step's body and its checkpoint, just after a checkpoint, in a sleep,
just after a hibernation was recorded, in a signal wait, just after a signal was consumed) or at
a random moment from outside. Every run must complete with the output an uninterrupted run
returns, no saved step may run again, and every signal must be consumed exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path

from chaos.audit import audit
from chaos.cluster import ChaosEnvironment, FinalWatcher, count_failpoint_kills
from chaos.example_runs import FAULTS, HIBERNATE_AFTER_MS, RunPlan, plan_run
from chaos.report import ScenarioReport
from runtara_environment.client import ManagementClient

SETTINGS = {
    "hibernate_after_ms": HIBERNATE_AFTER_MS,
    "max_concurrent_instances": 64,
}
"""The crash backoff is the default (500 ms, doubling), so recovery latency is what users get."""
MAX_ATTEMPTS = 8


async def run(
    backend: str, workdir: Path, *, seed: int, runs: int = 200, concurrency: int = 16, budget_s: float = 600.0
) -> ScenarioReport:
    report = ScenarioReport("instance-kills", backend, seed, trials=runs)
    started = time.monotonic()
    rng = random.Random(seed)
    environment = await ChaosEnvironment.open(backend, workdir, **SETTINGS)
    try:
        # Every kind of fault in turn, so even a short run covers each window.
        plans = [plan_run(rng, f"k{seed}-{n}", str(environment.ledger), FAULTS[n % len(FAULTS)]) for n in range(runs)]
        watcher = FinalWatcher(environment)
        stop = asyncio.Event()
        watching = asyncio.create_task(watcher.run(stop))
        deadline = time.monotonic() + budget_s
        async with environment.client() as client:
            await environment.register_examples(client)
            slots = asyncio.Semaphore(concurrency)

            async def one(plan: RunPlan) -> None:
                async with slots:
                    if time.monotonic() < deadline:
                        await drive(environment, client, watcher, plan, report, deadline)

            await asyncio.gather(*(one(p) for p in plans))
        stop.set()
        await watching
        facts = await environment.facts([p.instance_id for p in plans])
        report.audit = audit(facts, {p.instance_id: p.expectation() for p in plans})
        for plan in plans:
            for point, n in count_failpoint_kills(environment.runs_dir / plan.instance_id).items():
                report.fault(f"failpoint:{point}", n)
    finally:
        await environment.close()
    report.duration_s = time.monotonic() - started
    return report


async def drive(
    environment: ChaosEnvironment,
    client: ManagementClient,
    watcher: FinalWatcher,
    plan: RunPlan,
    report: ScenarioReport,
    deadline: float,
) -> None:
    """Start one run, do what its plan says while it runs, and wait (bounded) until it is final."""
    final = watcher.expect(plan.instance_id)
    await client.start_instance(plan.image, plan.input, instance_id=plan.instance_id, max_attempts=MAX_ATTEMPTS, env=plan.env)
    actions = []
    if plan.kill_after_s is not None or plan.signal_after_s is not None:
        first_run = await wait_started(client, plan.instance_id, deadline)
        if plan.kill_after_s is not None:
            actions.append(asyncio.create_task(_kill_later(environment, plan, first_run, report)))
        if plan.signal_after_s is not None:
            actions.append(asyncio.create_task(_signal_later(client, plan, first_run)))
    try:
        await asyncio.wait_for(final.wait(), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        pass  # the audit reports it as stranded
    finally:
        for action in actions:
            if not action.done():
                action.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await action


async def wait_started(client: ManagementClient, instance_id: str, deadline: float) -> float:
    """The monotonic time by which the instance was first seen started (bounded by ``deadline``)."""
    while time.monotonic() < deadline:
        row = await client.get_instance(instance_id)
        if row.started_at_ms is not None or row.status in ("completed", "failed", "cancelled"):
            return time.monotonic()
        await asyncio.sleep(0.02)
    return time.monotonic()


async def _kill_later(environment: ChaosEnvironment, plan: RunPlan, first_run: float, report: ScenarioReport) -> None:
    assert plan.kill_after_s is not None
    await asyncio.sleep(max(0.0, first_run + plan.kill_after_s - time.monotonic()))
    if environment.kill_instance(plan.instance_id):
        report.fault("sigkill:random-time")


async def _signal_later(client: ManagementClient, plan: RunPlan, first_run: float) -> None:
    assert plan.signal_after_s is not None
    await asyncio.sleep(max(0.0, first_run + plan.signal_after_s - time.monotonic()))
    await client.send_custom_signal(plan.instance_id, "approval", plan.signal_payload)
