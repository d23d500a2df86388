"""Scenario 4, races: two actors reach for one instance at (nearly) the same moment.

Six races, each run as a number of trials whose timing offsets a seeded RNG draws (stratified
over each trial pair, so both orders of each race occur); every trial must end in exactly one
legal final state with a coherent history (one ``completed`` or ``cancelled`` event, never both;
nothing started or resumed after it), no process may be left, and the audit over the database
and the side-effect ledger must be clean (no saved step run again, no signal lost or doubled,
nothing stranded). ``report.measurements["orders"]`` counts, per race, which order (or which
phase of the other actor) each trial hit:

1. ``cancel-vs-completion``: cancel (or ``stop_instance``) around an instance's completion; it
   ends completed (with the right output) xor cancelled (no step body ran after the cancel).
2. ``pause-vs-crash``: a pause around a SIGKILL of the instance; it ends paused (by the first
   launch, or by the relaunch after the crash), then a resume completes it, every step once.
3. ``double-resume``: two resume requests at once for a paused and for a failed instance:
   exactly one wins (DESIGN section 5: every status change is a compare-and-set, the loser gets
   INVALID_STATE or CONFLICT), exactly one relaunch follows, it completes once.
4. ``signal-vs-relaunch``: an approval signal sent around a crash and its relaunch, around a
   hibernation, and around a sleep's wake relaunch; consumed exactly once, the output shows it.
5. ``stop-vs-hibernation``: stop or cancel around the moment an instance hibernates in a sleep
   or a signal wait (sometimes SIGKILLed by the ``hibernate.recorded`` failpoint); it ends
   cancelled, is never launched again, and no process is left.
6. ``wake-while-down``: hibernated sleepers whose wake time passes while the environment is
   SIGKILLed; after the restart each wakes exactly once, completes, and not early.

Races 1-5 run side by side on one environment; race 6 runs alone last (it kills the
environment). ``trials`` is per race: 20 by default (``python -m chaos races``), 4 in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.audit import Expectation, InstanceFacts, audit
from chaos.cluster import CHAOS_IMAGES, ChaosEnvironment, count_failpoint_kills
from chaos.example_runs import RunPlan
from chaos.report import ScenarioReport
from runtara_core.errors import Conflict, InvalidState
from runtara_core.persistence import Persistence
from runtara_core.persistence.rows import EventType, InstanceRow, InstanceStatus, TerminationReason
from runtara_environment.client import ManagementClient

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
TEST_IMAGES = REPO / "tests" / "environment" / "images"

HIBERNATE_AFTER_MS = 1000
SETTINGS = {
    "hibernate_after_ms": HIBERNATE_AFTER_MS,
    "crash_backoff_initial_ms": 100,
    "max_concurrent_instances": 64,
    "wake_lead_ms": 300,
    "wake_sweep_interval_s": 0.5,
    "supervisor_sweep_interval_s": 0.5,
    "stop_grace_s": 3,
}
RACES = (
    "cancel-vs-completion",
    "pause-vs-crash",
    "double-resume",
    "signal-vs-relaunch",
    "stop-vs-hibernation",
    "wake-while-down",
)
TERMINAL_EVENTS = frozenset({EventType.COMPLETED, EventType.CANCELLED})
AFTER_TERMINAL = frozenset({EventType.STARTED, EventType.RESUMED})
"""Events that must never follow a completed or cancelled event. (``launched`` is written once
the spawn returned, so under load a launch's ``launched`` can follow its own ``started`` and
even ``completed``; those are counted as ``launched_recorded_late``, not as violations.)"""
WAIT_S = 30.0
"""Longest wait for one state of one trial (bounded further by the scenario's budget)."""

Check = Callable[[InstanceFacts], list[str]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def squares(n: int) -> dict[str, Any]:
    """What ``steps.py`` returns for ``n`` steps without a sleep."""
    return {"results": [i * i for i in range(n)], "woke_at_ms": None}


@dataclass
class Trial:
    """One instance of one race: how it must end, and the race's own checks on its facts."""

    race: str
    instance_id: str
    expectation: Expectation
    checks: list[Check] = field(default_factory=list)


@dataclass
class Races:
    """What every race needs: the environment, two management connections (a race between two
    requests should not queue on one connection), a database handle for tight polling behind
    the servers' back, and the trials and orders seen so far."""

    environment: ChaosEnvironment
    client: ManagementClient
    client2: ManagementClient
    db: Persistence
    seed: int
    report: ScenarioReport
    deadline: float
    trials: list[Trial] = field(default_factory=list)
    orders: dict[str, Counter[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Violations seen while driving (a refused request that should have been accepted, ...)."""
    hibernation_delays: dict[str, list[float]] = field(default_factory=dict)
    """Seconds from registration to the hibernation being recorded, per race-5 variant."""

    def hibernation_delay_s(self, variant: str) -> float:
        seen = self.hibernation_delays.get(variant)
        return statistics.median(seen) if seen else 0.05

    def rng(self, race: str, k: int) -> random.Random:
        """A trial's own RNG (independent of how the trials interleave)."""
        return random.Random(f"{self.seed}/{race}/{k}")

    def saw(self, race: str, order: str) -> None:
        self.orders.setdefault(race, Counter())[order] += 1

    def add(self, trial: Trial) -> Trial:
        self.trials.append(trial)
        return trial

    def problem(self, instance_id: str, text: str) -> None:
        self.problems.append(f"{instance_id}: {text}")

    def remaining(self, limit: float = WAIT_S) -> float:
        return max(0.0, min(limit, self.deadline - time.monotonic()))

    async def wait_row(
        self, instance_id: str, predicate: Callable[[InstanceRow], bool], poll_s: float = 0.01, limit: float = WAIT_S
    ) -> InstanceRow | None:
        """The row once ``predicate`` holds, or None when the wait runs out (the audit then
        reports what is wrong with the instance)."""
        until = time.monotonic() + self.remaining(limit)
        while True:
            row = await self.db.get_instance(instance_id)
            if row is not None and predicate(row):
                return row
            if time.monotonic() >= until:
                return None
            await asyncio.sleep(poll_s)

    async def started(self, instance_id: str) -> InstanceRow | None:
        return await self.wait_row(instance_id, lambda r: r.started_at_ms is not None or r.is_terminal, poll_s=0.005)

    async def final(self, instance_id: str) -> InstanceRow | None:
        return await self.wait_row(instance_id, lambda r: r.is_terminal, poll_s=0.05)

    async def no_process(self, instance_id: str, limit_s: float = 5.0) -> bool:
        """True once no process runs the instance (a cancelled launch may take a moment to exit)."""
        until = time.monotonic() + limit_s
        while self.environment.instance_process(instance_id) is not None:
            if time.monotonic() >= until:
                return False
            await asyncio.sleep(0.05)
        return True


def stratified(rng: random.Random, k: int, lo: float, hi: float) -> float:
    """An offset in [lo, hi): even trials draw from the first half, odd ones from the second,
    so a handful of trials already covers both sides of a race."""
    return lo + (hi - lo) * ((k % 2) + rng.random()) / 2


# ---------------------------------------------------------------------------- history checks


def history_problems(fact: InstanceFacts) -> list[str]:
    """The event history must tell one story: at most one completed-or-cancelled event (the
    one the final status says), and nothing launched, started or resumed after it."""
    where = fact.row.instance_id
    events = sorted(fact.events, key=lambda e: e.id)
    terminal = [e for e in events if e.type in TERMINAL_EVENTS]
    problems = []
    if len(terminal) > 1:
        problems.append(f"{where}: {len(terminal)} terminal events: {[e.type.value for e in terminal]}")
    status = fact.row.status
    if status in (InstanceStatus.COMPLETED, InstanceStatus.CANCELLED):
        wanted = EventType.COMPLETED if status is InstanceStatus.COMPLETED else EventType.CANCELLED
        if [e.type for e in terminal] != [wanted]:
            problems.append(f"{where}: ended {status.value} but its terminal events are {[e.type.value for e in terminal]}")
    if terminal:
        late = [e for e in events if e.id > terminal[0].id and e.type in AFTER_TERMINAL]
        if late:
            problems.append(
                f"{where}: {[f'{e.type.value}({e.subtype})' for e in late]} after its {terminal[0].type.value} event"
            )
    return problems


def launched_late(fact: InstanceFacts) -> int:
    """``launched`` events written after the instance's completed or cancelled event."""
    terminal = [e.id for e in fact.events if e.type in TERMINAL_EVENTS]
    return sum(1 for e in fact.events if terminal and e.type is EventType.LAUNCHED and e.id > min(terminal))


def events_after(fact: InstanceFacts, event_type: EventType, after_id: int) -> list[Any]:
    return [e for e in fact.events if e.type is event_type and e.id > after_id]


def last_event(fact: InstanceFacts, event_type: EventType, subtype: str | None = None) -> Any | None:
    found = [e for e in fact.events if e.type is event_type and (subtype is None or e.subtype == subtype)]
    return max(found, key=lambda e: e.id) if found else None


def relaunched_once_by_the_resume(fact: InstanceFacts) -> list[str]:
    """One resume won, it launched the instance once, and nothing ran while it was paused."""
    where = fact.row.instance_id
    resumed = [e for e in fact.events if e.type is EventType.RESUMED]
    if len(resumed) != 1:
        return [f"{where}: {len(resumed)} resumed events, expected 1"]
    launched = events_after(fact, EventType.LAUNCHED, resumed[0].id)
    started = events_after(fact, EventType.STARTED, resumed[0].id)
    problems = []
    if (len(launched), len(started)) != (1, 1):
        problems.append(f"{where}: {len(launched)} launches / {len(started)} starts after the resume, expected 1 / 1")
    paused = [e for e in fact.events if e.type is EventType.SUSPENDED and e.subtype == "paused" and e.id < resumed[0].id]
    if paused:
        ran = [e for e in fact.events if paused[-1].id < e.id < resumed[0].id and e.type is EventType.STARTED]
        if ran:
            problems.append(f"{where}: {[e.type.value for e in ran]} while it was paused")
    return problems


def phase_at(fact: InstanceFacts, at_ms: int) -> str:
    """Where the instance was when something happened at ``at_ms``: its latest lifecycle event
    before then (``started#2`` is the second launch running, ``suspended:sleeping`` ...)."""
    kinds = {EventType.LAUNCHED, EventType.STARTED, EventType.SUSPENDED, EventType.CRASHED, EventType.COMPLETED,
             EventType.CANCELLED, EventType.RESUMED}  # fmt: skip
    before = [e for e in fact.events if e.type in kinds and e.created_at_ms <= at_ms]
    if not before:
        return "before-start"
    latest = max(before, key=lambda e: e.id)
    if latest.type in (EventType.STARTED, EventType.LAUNCHED):
        return f"{latest.type.value}#{sum(1 for e in before if e.type is latest.type)}"
    return f"{latest.type.value}:{latest.subtype}" if latest.subtype else latest.type.value


# ---------------------------------------------------------------------------- 1. cancel vs completion


async def cancel_vs_completion(races: Races, k: int) -> None:
    """A 3-step instance gets cancel (or stop) at a random moment around its completion."""
    rng = races.rng("cancel", k)
    iid = f"r1-{races.seed}-{k}"
    n = 3
    use_stop = rng.random() < 0.35
    offset = stratified(rng, k, 0.0, 0.6)
    ledger = str(races.environment.ledger)

    def no_step_after_cancel(fact: InstanceFacts) -> list[str]:
        if fact.row.status is not InstanceStatus.CANCELLED:
            return []
        cancelled = last_event(fact, EventType.CANCELLED)
        if cancelled is None:
            return []  # history_problems reports it
        late = [e for e in fact.ledger if e.at_ms > cancelled.created_at_ms]
        return [f"{iid}: step {e.step_id} ran at {e.at_ms}, after the cancel at {cancelled.created_at_ms}" for e in late]

    races.add(Trial(
        "cancel-vs-completion", iid,
        Expectation(allowed=frozenset({InstanceStatus.COMPLETED, InstanceStatus.CANCELLED}), output=squares(n)),
        [no_step_after_cancel],
    ))  # fmt: skip
    await races.client.start_instance("steps", {"n": n, "step_s": 0.1, "ledger": ledger}, instance_id=iid)
    if await races.started(iid) is None:
        return
    await asyncio.sleep(offset)
    refused = False
    try:
        if use_stop:
            await races.client.stop_instance(iid, grace_s=3)
        else:
            await races.client.send_signal(iid, "cancel")
    except InvalidState:
        refused = True  # legal only once it completed
    row = await races.final(iid)
    if row is None:
        return
    how = "stop" if use_stop else "cancel"
    if refused and row.status is not InstanceStatus.COMPLETED:
        races.problem(iid, f"{how} was refused but the instance ended {row.status.value}")
    races.saw("cancel-vs-completion", f"{how}:{row.status.value}{':refused' if refused else ''}")


# ---------------------------------------------------------------------------- 2. pause vs crash


async def pause_vs_crash(races: Races, k: int) -> None:
    """A pause and a SIGKILL of the instance, a few milliseconds apart in either order."""
    rng = races.rng("pause", k)
    iid = f"r2-{races.seed}-{k}"
    n = 8
    kill_at = rng.uniform(0.15, 0.45)
    pause_at = kill_at + stratified(rng, k, -0.15, 0.15)
    races.add(Trial("pause-vs-crash", iid, Expectation(output=squares(n)), [relaunched_once_by_the_resume]))
    await races.client.start_instance(
        "steps", {"n": n, "step_s": 0.1, "ledger": str(races.environment.ledger)}, instance_id=iid, max_attempts=5
    )
    if await races.started(iid) is None:
        return
    t0 = time.monotonic()
    killed = {"landed": False}

    async def kill() -> None:
        await asyncio.sleep(max(0.0, t0 + kill_at - time.monotonic()))
        killed["landed"] = races.environment.kill_instance(iid)
        if killed["landed"]:
            races.report.fault("sigkill:instance")

    async def pause() -> None:
        await asyncio.sleep(max(0.0, t0 + pause_at - time.monotonic()))
        await races.client.send_signal(iid, "pause")

    try:
        await asyncio.gather(kill(), pause())
    except InvalidState as error:
        races.problem(iid, f"pause refused while it was running: {error}")
        return
    row = await races.wait_row(iid, lambda r: r.is_terminal or r.termination_reason is TerminationReason.PAUSED)
    if row is None or row.status is not InstanceStatus.SUSPENDED:
        races.problem(iid, f"the pause was lost: it ended {row.status.value if row else 'nowhere in time'}")
        return
    order = "pause-first" if pause_at < kill_at else "kill-first"
    outcome = "crash-then-paused" if killed["landed"] and row.attempt > 1 else "paused-by-first-launch"
    races.saw("pause-vs-crash", f"{order}:{outcome}")
    if not await races.no_process(iid):
        races.problem(iid, "a process still runs it while it is paused")
    await races.client.resume_instance(iid)
    await races.final(iid)


# ---------------------------------------------------------------------------- 3. double resume


async def double_resume(races: Races, k: int) -> None:
    """Two resume requests at once (on two connections) for a paused or a failed instance."""
    rng = races.rng("resume", k)
    iid = f"r3-{races.seed}-{k}"
    kind = "paused" if k % 2 == 0 else "failed"
    ledger = str(races.environment.ledger)
    if kind == "paused":
        n = 5
        races.add(Trial("double-resume", iid, Expectation(output=squares(n)), [relaunched_once_by_the_resume]))
        await races.client.start_instance("steps", {"n": n, "step_s": 0.1, "ledger": ledger}, instance_id=iid)
        if await races.started(iid) is None:
            return
        await asyncio.sleep(rng.uniform(0.05, 0.25))
        await races.client.send_signal(iid, "pause")
        ready = await races.wait_row(iid, lambda r: r.is_terminal or r.termination_reason is TerminationReason.PAUSED)
    else:
        n = 4
        marker = races.environment.workdir / f"crash-{iid}"
        marker.touch()
        races.add(Trial("double-resume", iid, Expectation(output=squares(n)), [relaunched_once_by_the_resume]))
        await races.client.start_instance(
            "steps", {"n": n, "crash_at": 2, "crash_marker": str(marker), "ledger": ledger}, instance_id=iid,
            max_attempts=2,
        )  # fmt: skip
        ready = await races.wait_row(iid, lambda r: r.is_terminal, poll_s=0.05)
        marker.unlink()
    if ready is None or ready.is_terminal and ready.status is not InstanceStatus.FAILED:
        races.problem(iid, f"never became {kind}: {ready.status.value if ready else 'timeout'}")
        return
    if not await races.no_process(iid):
        races.problem(iid, f"a process still runs it while it is {kind}")
    second_is_signal = k % 4 == 2  # every other paused trial races resume_instance with a resume signal
    gap = rng.uniform(0.0, 0.01)

    async def first() -> Any:
        return await races.client.resume_instance(iid)

    async def second() -> Any:
        await asyncio.sleep(gap)
        if second_is_signal:
            return await races.client2.send_signal(iid, "resume")
        return await races.client2.resume_instance(iid)

    results = await asyncio.gather(first(), second(), return_exceptions=True)
    ok = [not isinstance(r, BaseException) for r in results]
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, InvalidState | Conflict):
            races.problem(iid, f"a resume failed with {type(r).__name__}: {r}")
    if second_is_signal:
        # A resume *signal* to an instance that is already pending or running is a no-op the
        # server accepts; the resume_instance call still may not both win.
        if not any(ok):
            races.problem(iid, f"neither resume won: {results}")
    elif ok.count(True) != 1:
        races.problem(iid, f"{ok.count(True)} of two concurrent resumes won (exactly one must): {results}")
    winner = "first" if ok[0] else "second"
    races.saw("double-resume", f"{kind}:{winner}-won{':signal' if second_is_signal else ''}")
    await races.final(iid)


# ---------------------------------------------------------------------------- 4. signal vs relaunch


async def signal_vs_relaunch(races: Races, k: int) -> None:
    """An approval signal sent while the instance crashes and is relaunched, while it
    hibernates in the wait, or while its sleep's wake relaunches it."""
    rng = races.rng("signal", k)
    iid = f"r4-{races.seed}-{k}"
    variant = ("crash", "hibernation", "wake")[k % 3]
    ledger = str(races.environment.ledger)
    payload = {"approved": rng.random() < 0.7, "by": f"approver-{iid}"}
    half = k // 3
    if variant == "wake":
        image, run_input, env = "nap-then-wait", {"ledger": ledger, "sleep_s": 1.5, "timeout_s": 120}, {}
        expectation = Expectation(output={"got": payload}, signals=(payload,))
    else:
        image, run_input = "approval", {"ledger": ledger, "requester": f"r-{k}", "timeout_s": 120}
        env = {"RUNTARA_FAILPOINTS": "step.after_body#1@1"} if variant == "crash" else {}
        plan = RunPlan(iid, "approval", run_input, variant, failpoints=env.get("RUNTARA_FAILPOINTS", ""), signal_payload=payload)
        expectation = plan.expectation()
    sent: dict[str, int] = {}
    status_then: dict[str, str] = {}

    def record_phase(fact: InstanceFacts) -> list[str]:
        if "at_ms" in sent:  # the row's status then (pending: claimed, not launched yet), and its history
            races.saw("signal-vs-relaunch", f"{variant}:{status_then.get('status')}/{phase_at(fact, sent['at_ms'])}")
        return []

    races.add(Trial("signal-vs-relaunch", iid, expectation, [record_phase]))
    await races.client.start_instance(image, run_input, instance_id=iid, env=env, max_attempts=5)
    if await races.started(iid) is None:
        return
    if variant == "wake":
        row = await races.wait_row(iid, lambda r: r.is_terminal or r.wake_at_ms is not None)
        if row is None or row.wake_at_ms is None:
            races.problem(iid, "its sleep never hibernated")
            return
        if half % 2 == 0:  # before the wake relaunch (it is claimed up to wake_lead_ms early)
            await asyncio.sleep(max(0.0, row.wake_at_ms / 1000 - rng.uniform(0.3, 0.8) - time.time()))
        else:  # while the wake relaunches it: claimed, launching, registering, replaying
            await races.wait_row(iid, lambda r: r.status is not InstanceStatus.SUSPENDED, poll_s=0.005)
            await asyncio.sleep(rng.uniform(0.0, 0.4))
    else:
        await asyncio.sleep(stratified(rng, half, 0.0, 0.7))
    sent["at_ms"] = now_ms()
    then = await races.db.get_instance(iid)
    status_then["status"] = then.status.value if then else "?"
    await races.client.send_custom_signal(iid, "approval", payload)
    await races.final(iid)


# ---------------------------------------------------------------------------- 5. stop vs hibernation


async def stop_vs_hibernation(races: Races, k: int) -> None:
    """Stop or cancel around the moment the instance hibernates in a sleep or a signal wait."""
    rng = races.rng("stop", k)
    iid = f"r5-{races.seed}-{k}"
    variant = ("sleep", "wait")[k % 2]
    use_stop = rng.random() < 0.5
    failpoint = rng.random() < 0.35
    half = k // 2
    sleep_s = 2.0
    if variant == "sleep":
        image, run_input = "steps", {"n": 2, "sleep_s": sleep_s, "ledger": str(races.environment.ledger)}
    else:
        image, run_input = "waiter", {"timeout_s": 3600}
    env = {"RUNTARA_FAILPOINTS": "hibernate.recorded#1@1"} if failpoint else {}

    def never_again(fact: InstanceFacts) -> list[str]:
        cancelled = last_event(fact, EventType.CANCELLED)
        if cancelled is None:
            return []
        # history_problems checks the events; the ledger must agree.
        late = [e for e in fact.ledger if e.at_ms > cancelled.created_at_ms]
        return [f"{iid}: step {e.step_id} ran at {e.at_ms}, after it was cancelled" for e in late]

    races.add(Trial("stop-vs-hibernation", iid, Expectation(status=InstanceStatus.CANCELLED), [never_again]))
    await races.client.start_instance(image, run_input, instance_id=iid, env=env, max_attempts=5)
    first = await races.started(iid)
    if first is None:
        return
    t0 = time.monotonic()
    mode = ("aimed", "after", "random")[half % 3]
    if mode == "random":  # from its start: mostly before the hibernation, sometimes across it
        await asyncio.sleep(rng.uniform(0.0, 0.5))
    elif mode == "aimed" and first.started_at_ms is not None:
        # Just before the hibernation is recorded (as far as earlier trials tell): the stop sees
        # it running, then the launch hibernates before the SIGTERM or the signal reaches it.
        at = first.started_at_ms / 1000 + races.hibernation_delay_s(variant) + rng.uniform(-0.04, 0.01)
        await asyncio.sleep(max(0.0, at - time.time()))
    else:  # just after the hibernation was recorded, while its launch may still be exiting
        await races.wait_row(iid, lambda r: r.status is not InstanceStatus.RUNNING, poll_s=0.002)
        await asyncio.sleep(rng.uniform(0.0, 0.03))
    before = await races.db.get_instance(iid)
    if use_stop:
        await races.client.stop_instance(iid, grace_s=3)
    else:
        await races.client.send_signal(iid, "cancel")
    row = await races.final(iid)
    if row is None:
        return
    state = before.status.value if before else "?"
    if before is not None and before.termination_reason is not None and before.status is InstanceStatus.SUSPENDED:
        state += f"({before.termination_reason.value})"
    races.saw("stop-vs-hibernation", f"{variant}:{mode}:{'stop' if use_stop else 'cancel'}@{state}{':failpoint' if failpoint else ''}")
    if first.started_at_ms is not None:
        events = await races.db.list_events(iid, after_id=0, limit=100)
        hibernated = [e for e in events if e.type is EventType.SUSPENDED and e.subtype in ("sleeping", "waiting")]
        if hibernated:
            races.hibernation_delays.setdefault(variant, []).append(
                (hibernated[0].created_at_ms - first.started_at_ms) / 1000
            )
    if not await races.no_process(iid):
        races.problem(iid, "a process still runs it after it was cancelled")
    if variant == "wait":
        try:
            await races.client.send_custom_signal(iid, "go", {"late": True})
            races.problem(iid, "a cancelled instance accepted a custom signal")
        except InvalidState:
            pass
    # Stay until its wake time (and the scheduler's next sweep) has passed: nothing may launch it.
    await asyncio.sleep(max(0.0, min(t0 + sleep_s + 1.0 - time.monotonic(), races.remaining())))
    if races.environment.instance_process(iid) is not None:
        races.problem(iid, "it runs again after it was cancelled")


# ---------------------------------------------------------------------------- 6. wake while down


async def wake_while_down(races: Races, trials: int) -> None:
    """Hibernated sleepers whose wake time passes while the environment is SIGKILLed."""
    rng = races.rng("down", 0)
    ledger = str(races.environment.ledger)
    ids = [f"r6-{races.seed}-{k}" for k in range(trials)]
    wake_at: dict[str, int] = {}
    times: dict[str, int] = {}
    for iid in ids:
        n = 2

        def woke_once(fact: InstanceFacts, iid: str = iid) -> list[str]:
            slept = last_event(fact, EventType.SUSPENDED, "sleeping")
            if slept is None:
                return [f"{iid}: never hibernated in its sleep"]
            # One wake: one launch that ran the workflow. A launch claimed (wake_lead_ms early)
            # just before the environment died may never have registered (the restart launches
            # it once more), may be adopted, or may even lack its launched event (the environment
            # died between the spawn and recording it; the launch id fences a second launch).
            started = events_after(fact, EventType.STARTED, slept.id)
            launched = events_after(fact, EventType.LAUNCHED, slept.id)
            relaunched = [e for e in launched if e.created_at_ms >= times.get("restart_ms", 0)]
            problems = []
            if len(started) != 1 or len(relaunched) > 1:
                problems.append(
                    f"{iid}: woke with {len(launched)} launches ({len(relaunched)} after the restart) and "
                    f"{len(started)} starts, expected one start and at most one launch after the restart"
                )
            crash_ms = times.get("crash_ms", 0)
            early = any(e.created_at_ms < crash_ms for e in launched) or not relaunched
            races.saw("wake-while-down", "launched-before-crash" if early else "woke-after-restart")
            due = wake_at.get(iid)
            early = [e for e in fact.ledger if due is not None and e.at_ms < due]  # every step follows the sleep
            problems += [f"{iid}: step {e.step_id} ran at {e.at_ms}, before its wake time {due}" for e in early]
            return problems

        def not_early(output: Any, fact: InstanceFacts, iid: str = iid, n: int = n) -> str | None:
            if not isinstance(output, dict) or output.get("results") != squares(n)["results"]:
                return f"got {output!r}, expected results {squares(n)['results']}"
            due = wake_at.get(iid)
            woke = output.get("woke_at_ms")
            if due is None or not isinstance(woke, int) or woke < due:
                return f"woke at {woke}, before its wake time {due}"
            return None

        races.add(Trial("wake-while-down", iid, Expectation(check_output=not_early), [woke_once]))
        await races.client.start_instance(
            "steps", {"n": n, "sleep_s": rng.uniform(1.5, 2.5), "ledger": ledger}, instance_id=iid
        )
    for iid in ids:
        row = await races.wait_row(iid, lambda r: r.is_terminal or r.termination_reason is TerminationReason.SLEEPING)
        if row is None or row.wake_at_ms is None:
            races.problem(iid, "never hibernated in its sleep")
            return
        wake_at[iid] = row.wake_at_ms
    await races.client.close()
    await races.client2.close()
    times["crash_ms"] = now_ms()
    await races.environment.env.crash()
    races.report.fault("environment:sigkill")
    await asyncio.sleep(max(0.0, max(wake_at.values()) / 1000 - time.time() + rng.uniform(0.2, 0.8)))
    times["restart_ms"] = now_ms()
    await races.environment.env.start()
    races.report.measurements["wake-while-down:down_s"] = round((times["restart_ms"] - times["crash_ms"]) / 1000, 2)
    for iid in ids:
        await races.final(iid)


# ---------------------------------------------------------------------------- the scenario


RACE_FUNCTIONS: dict[str, Callable[[Races, int], Awaitable[None]]] = {
    "cancel-vs-completion": cancel_vs_completion,
    "pause-vs-crash": pause_vs_crash,
    "double-resume": double_resume,
    "signal-vs-relaunch": signal_vs_relaunch,
    "stop-vs-hibernation": stop_vs_hibernation,
}


async def run(
    backend: str,
    workdir: Path,
    *,
    seed: int,
    trials: int = 20,
    races: tuple[str, ...] = RACES,
    concurrency: int = 12,
    budget_s: float = 600.0,
) -> ScenarioReport:
    """``trials`` per race (race 6 starts that many sleepers around one environment kill)."""
    unknown = set(races) - set(RACES)
    if unknown:
        raise ValueError(f"unknown races {sorted(unknown)}; known: {', '.join(RACES)}")
    report = ScenarioReport("races", backend, seed, trials=trials * len(races))
    started = time.monotonic()
    environment = await ChaosEnvironment.open(backend, workdir, **SETTINGS)
    db: Persistence | None = None
    try:
        db = await environment.open_database()
        client, client2 = environment.client(), environment.client()
        await client.connect()
        await client2.connect()
        state = Races(environment, client, client2, db, seed, report, time.monotonic() + budget_s)
        await environment.register_examples(client)
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        await client.register_image(TEST_IMAGES / "waiter.py", name="waiter")
        await client.register_image(CHAOS_IMAGES / "nap_then_wait.py", name="nap-then-wait")
        slots = asyncio.Semaphore(concurrency)

        async def one(race: str, k: int) -> None:
            async with slots:
                if time.monotonic() < state.deadline:
                    try:
                        await RACE_FUNCTIONS[race](state, k)
                    except Exception as error:  # a request that should not fail: a finding
                        log.exception("race %s trial %d failed", race, k)
                        state.problems.append(f"{race} trial {k}: {type(error).__name__}: {error}")

        # Interleave the races so each gets its first trials early.
        await asyncio.gather(*(one(race, k) for k in range(trials) for race in races if race in RACE_FUNCTIONS))
        if "wake-while-down" in races and time.monotonic() < state.deadline:
            await wake_while_down(state, trials)  # alone: it kills the environment
        with contextlib.suppress(Exception):
            await client.close()
            await client2.close()
        await _audit(state)
    finally:
        if db is not None:
            await db.close()
        await environment.close()
    report.duration_s = time.monotonic() - started
    return report


async def _audit(state: Races) -> None:
    environment, report = state.environment, state.report
    ids = [t.instance_id for t in state.trials]
    facts = await environment.facts(ids)
    report.audit = audit(facts, {t.instance_id: t.expectation for t in state.trials})
    by_id = {t.instance_id: t for t in state.trials}
    for fact in facts:
        report.audit.violations.extend(history_problems(fact))
        for check in by_id[fact.row.instance_id].checks:
            report.audit.violations.extend(check(fact))
    for iid in sorted(environment.live_instance_ids() & set(ids)):  # a final launch may still be exiting
        if not await state.no_process(iid, limit_s=5.0):
            report.audit.violations.append(f"{iid}: a process still runs it after the scenario")
    report.audit.violations.extend(state.problems)
    for iid in ids:
        for point, n in count_failpoint_kills(environment.runs_dir / iid).items():
            report.fault(f"failpoint:{point}", n)
    report.measurements["launched_recorded_late"] = sum(launched_late(f) for f in facts)
    report.measurements["orders"] = {race: dict(sorted(c.items())) for race, c in sorted(state.orders.items())}
    report.measurements["trials_run"] = dict(Counter(t.race for t in state.trials))
