"""Scenario 2, environment kills: SIGKILL the environment (and its embedded core) at random
moments while 30 instances run steps, 30 sleep (some in-process, most hibernated) and 10 wait
for a signal; restart it; five times per trial. Instance processes outlive their environment
and must be adopted; hibernated ones must wake on time; signals sent between the kills must
each be consumed once. Every instance must end completed with the right output, none may be
left pending or running with no process, and no saved step may run again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path

from chaos.audit import Audit, audit, percentile
from chaos.cluster import ChaosEnvironment, FinalWatcher
from chaos.example_runs import HIBERNATE_AFTER_MS, RunPlan, approval_payload, example_input
from chaos.report import ScenarioReport
from runtara_core.errors import RuntaraError, TransportError
from runtara_environment.client import ManagementClient

log = logging.getLogger(__name__)

SETTINGS = {
    "hibernate_after_ms": HIBERNATE_AFTER_MS,
    "crash_backoff_initial_ms": 100,
    "max_concurrent_instances": 100,
}
SEND_RETRY_S = 0.2


async def run(
    backend: str,
    workdir: Path,
    *,
    seed: int,
    trials: int = 3,
    kills_per_trial: int = 5,
    running: int = 30,
    sleeping: int = 30,
    waiting: int = 10,
    budget_s: float = 600.0,
) -> ScenarioReport:
    report = ScenarioReport("environment-kills", backend, seed, trials=trials)
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + budget_s
    restart_s: list[float] = []
    down_to_serving_s: list[float] = []
    for trial in range(trials):
        if time.monotonic() >= deadline:
            break
        trial_report = await _trial(
            backend, workdir / f"trial-{trial}", rng, f"e{seed}-{trial}", report, deadline,
            kills=kills_per_trial, counts=(running, sleeping, waiting), restart_s=restart_s,
            down_to_serving_s=down_to_serving_s,
        )  # fmt: skip
        report.audit.merge(trial_report)
    report.measurements.update(
        restarts=len(restart_s),
        restart_to_serving_ms_p50=_ms(percentile(restart_s, 0.5)),
        restart_to_serving_ms_p99=_ms(percentile(restart_s, 0.99)),
        kill_to_serving_ms_p50=_ms(percentile(down_to_serving_s, 0.5)),
        kill_to_serving_ms_p99=_ms(percentile(down_to_serving_s, 0.99)),
    )
    report.duration_s = time.monotonic() - started
    return report


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _plans(rng: random.Random, prefix: str, ledger: str, counts: tuple[int, int, int]) -> list[RunPlan]:
    running, sleeping, waiting = counts
    plans = []
    for n in range(running):
        image = rng.choice(["order", "batch"])
        knobs = {"ledger": ledger}
        if image == "batch":
            knobs.update(items=rng.randint(10, 40), item_delay_s=rng.uniform(0.1, 0.3))
        else:
            knobs.update(step_delay_s=rng.uniform(0.5, 3.0))
        run_input = example_input(image, rng, knobs, step_delay_s=0.0, short_sleep=True)
        plans.append(RunPlan(f"{prefix}-run{n}", image, run_input, "environment-kill"))
    for n in range(sleeping):
        # Most hibernate (past the threshold), some sleep in-process.
        sleep_s = rng.uniform(0.5, 2.0) if rng.random() < 0.2 else rng.uniform(3.0, 12.0)
        run_input = example_input("welcome-email", rng, {"ledger": ledger, "follow_up_after_s": sleep_s}, step_delay_s=0.0, short_sleep=True)
        plans.append(RunPlan(f"{prefix}-sleep{n}", "welcome-email", run_input, "environment-kill"))
    for n in range(waiting):
        iid = f"{prefix}-wait{n}"
        run_input = example_input("approval", rng, {"ledger": ledger, "timeout_s": 600}, step_delay_s=0.0, short_sleep=True)
        plans.append(
            RunPlan(iid, "approval", run_input, "environment-kill", signal_after_s=rng.uniform(0.5, 15.0),
                    signal_payload=approval_payload(rng, iid))
        )  # fmt: skip
    return plans


async def _trial(
    backend: str,
    workdir: Path,
    rng: random.Random,
    prefix: str,
    report: ScenarioReport,
    deadline: float,
    *,
    kills: int,
    counts: tuple[int, int, int],
    restart_s: list[float],
    down_to_serving_s: list[float],
) -> Audit:
    environment = await ChaosEnvironment.open(backend, workdir, **SETTINGS)
    try:
        plans = _plans(rng, prefix, str(environment.ledger), counts)
        async with environment.client() as client:
            await environment.register_examples(client)
            for plan in plans:
                await client.start_instance(plan.image, plan.input, instance_id=plan.instance_id, max_attempts=8)
        began = time.monotonic()
        signalling = [asyncio.create_task(_signal_when_due(environment, plan, began, deadline)) for plan in plans if plan.signal_payload]
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.3, 3.0))
            killed_at = time.monotonic()
            await environment.env.crash()
            report.fault("environment:sigkill")
            if rng.random() < 0.5:  # some instances die too while nobody supervises them
                live = sorted(environment.live_instance_ids())
                for instance_id in rng.sample(live, min(len(live), rng.randint(1, 5))):
                    if environment.kill_instance(instance_id):
                        report.fault("instance:sigkill-while-environment-down")
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # down for a while: wakes and signals come due
            restart_s.append(await environment.env.start())
            down_to_serving_s.append(time.monotonic() - killed_at)
        await asyncio.gather(*signalling)
        watcher = FinalWatcher(environment)
        stop = asyncio.Event()
        watching = asyncio.create_task(watcher.run(stop))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(watcher.expect(p.instance_id).wait() for p in plans)),
                max(1.0, deadline - time.monotonic()),
            )
        except TimeoutError:
            pass  # the audit names what was stranded
        finally:
            stop.set()
            await watching
        facts = await environment.facts([p.instance_id for p in plans])
        result = audit(facts, {p.instance_id: p.expectation() for p in plans})
        lingering = environment.live_instance_ids() & {p.instance_id for p in plans if p.instance_id in watcher.final}
        for instance_id in sorted(lingering):
            result.violations.append(f"{instance_id}: final, but its process is still alive")
        return result
    finally:
        await environment.close()


async def _signal_when_due(environment: ChaosEnvironment, plan: RunPlan, began: float, deadline: float) -> None:
    """Send the plan's signal at its time; while the environment is down, retry until it is
    acknowledged (a send cut off by a kill may or may not have been queued: the audit accepts
    one extra queued copy, never two deliveries). A refusal is final: the audit reports it."""
    assert plan.signal_after_s is not None
    await asyncio.sleep(max(0.0, began + plan.signal_after_s - time.monotonic()))
    while time.monotonic() < deadline:
        client: ManagementClient = environment.client()
        try:
            async with client:
                await client.send_custom_signal(plan.instance_id, "approval", plan.signal_payload)
                return
        except RuntaraError as error:
            log.warning("signal to %s refused: %s", plan.instance_id, error)
            return
        except (TransportError, OSError) as error:  # down or restarting: try again shortly
            log.debug("signal to %s not acknowledged yet: %s", plan.instance_id, error)
        with contextlib.suppress(Exception):
            await client.close()
        await asyncio.sleep(SEND_RETRY_S)
