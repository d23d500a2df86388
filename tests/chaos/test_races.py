"""Issue 7, scenario 4 (races), bounded for CI: four trials of each of the six races
(``chaos.scenarios.races``) on each backend, one environment per backend, about 20 s each.

The CLI runs the same scenario with more trials (``trials=20``); a failing seed replays with
``races.run(backend, workdir, seed=SEED, trials=N)``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chaos.scenarios import races
from runtara_core.config import Settings
from runtara_core.errors import InvalidState
from runtara_core.instance_tokens import InstanceTokens
from runtara_core.persistence import Persistence
from runtara_core.persistence.rows import (
    EventType,
    InstanceRow,
    InstanceStatus,
    NewImage,
    NewInstance,
    ProcessExit,
    SignalType,
    TerminationReason,
)
from runtara_core.signal_notifier import SignalNotifier
from runtara_core.wire import management_messages as m
from runtara_environment.exit_decisions import KillReason
from runtara_environment.image_registry import ImageRegistry
from runtara_environment.management_service import ManagementService
from runtara_environment.management_tokens import Principal, load_tokens
from runtara_environment.process_runner import ProcessLauncher
from runtara_environment.supervisor import CoreEndpoint, Supervisor
from runtara_sdk.exit_codes import ExitCode
from tests.conftest import FakeClock, postgres_test_url

pytestmark = pytest.mark.chaos

TRIALS = 4
SEED = 4


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_races_end_in_one_legal_state_and_lose_nothing(backend: str, tmp_path: Path) -> None:
    if backend == "postgres":
        postgres_test_url()
    report = await races.run(backend, tmp_path, seed=SEED, trials=TRIALS, concurrency=12, budget_s=120)
    assert report.audit.violations == [], report.to_json()
    assert report.measurements["trials_run"] == dict.fromkeys(races.RACES, TRIALS), report.to_json()
    assert report.audit.runs == report.audit.final == TRIALS * len(races.RACES), report.to_json()
    orders = report.measurements["orders"]
    # Every trial of every race was classified (its final state, or where its action landed).
    assert {race: sum(c.values()) for race, c in orders.items()} == dict.fromkeys(races.RACES, TRIALS), orders
    # Race 4's signals: one per trial, each consumed exactly once (the audit counts them).
    assert report.audit.signals_sent == TRIALS
    assert report.audit.signals_lost == report.audit.signals_duplicated == 0
    assert report.faults["environment:sigkill"] == 1, report.faults


# ---------------------------------------------------------------------------- regressions found by the races


@pytest.mark.parametrize(
    "hibernated", [TerminationReason.WAITING, TerminationReason.SLEEPING, TerminationReason.PAUSED]
)
async def test_a_stop_whose_sigterm_meets_a_hibernated_launch_cancels_it(
    persistence: Persistence, tmp_path: Path, clock: FakeClock, hibernated: TerminationReason
) -> None:
    """Found by ``races.run("sqlite", ..., seed=7, trials=20)``, race ``stop-vs-hibernation``:
    ``stop_instance`` saw the instance running (its cancel-at-once compare-and-set failed) and
    SIGTERMed the launch, which had just hibernated; the launch exited as suspended, and its exit
    was judged "nothing to do", dropping the stop. The waiter (r5-7-1) then waited forever, and
    the sleeper (r5-7-4) woke and completed. The exit of a stopped launch that hibernated or
    paused must cancel the instance (stopped)."""
    image = await persistence.create_image(IMAGE)
    row = await hibernated_instance(persistence, image.image_id, "stopped", hibernated)
    other = await hibernated_instance(persistence, image.image_id, "left-alone", hibernated)
    supervisor = idle_supervisor(persistence, tmp_path, clock)
    exit = ProcessExit(exit_code=ExitCode.SUSPENDED)
    await supervisor._handle_exit(row.instance_id, row.attempt, None, exit, KillReason.STOPPED)
    await supervisor._handle_exit(other.instance_id, other.attempt, None, exit, None)

    stopped = await persistence.get_instance(row.instance_id)
    assert stopped is not None and (stopped.status, stopped.termination_reason) == (
        InstanceStatus.CANCELLED, TerminationReason.STOPPED
    )  # fmt: skip
    events = await persistence.list_events(row.instance_id, after_id=0, limit=100)
    assert [e.subtype for e in events if e.type is EventType.CANCELLED] == ["stopped"]
    untouched = await persistence.get_instance(other.instance_id)  # a hibernation without a stop sleeps on
    assert untouched is not None and (untouched.status, untouched.termination_reason) == (
        InstanceStatus.SUSPENDED, hibernated
    )  # fmt: skip


class HibernatesFirst:
    """The store, except that the instance's launch hibernates (and its exit is handled) just
    before a signal is stored: the window between the management service's cancel-at-once
    compare-and-set (refused: running) and its ``put_signal``."""

    def __init__(self, db: Persistence) -> None:
        self._db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    async def put_signal(self, instance_id: str, signal_type: SignalType, payload: bytes = b"") -> Any:
        with contextlib.suppress(InvalidState):
            await self._db.transition(
                instance_id, [InstanceStatus.RUNNING], InstanceStatus.SUSPENDED, reason=TerminationReason.WAITING
            )
        return await self._db.put_signal(instance_id, signal_type, payload)


@pytest.mark.parametrize("how", ["cancel", "stop"])
async def test_a_cancel_stored_just_after_the_launch_hibernated_cancels_at_once(
    persistence: Persistence, tmp_path: Path, clock: FakeClock, how: str
) -> None:
    """The management half of the same race: cancel (or a stop with no live process here) saw
    the instance running, then the launch hibernated and its exit was handled before the cancel
    signal was stored. Nobody acted on the signal: a waiter stayed suspended with a pending
    cancel (for ever, with no timeout), a sleeper was relaunched at its wake just to cancel. A
    suspended instance is cancelled at once (DESIGN section 4), so it is here too."""
    image = await persistence.create_image(IMAGE)
    row, _ = await persistence.create_instance(NewInstance("waiter", image.image_id))
    await persistence.transition(row.instance_id, [InstanceStatus.PENDING], InstanceStatus.RUNNING)
    store = HibernatesFirst(persistence)
    settings = Settings(data_dir=tmp_path)
    service = ManagementService(
        store,  # type: ignore[arg-type]
        settings,
        tokens=load_tokens(tokens_file=None, data_dir=tmp_path),
        registry=ImageRegistry(persistence, tmp_path / "images", max_bytes=1 << 20, max_files=10),
        supervisor=idle_supervisor(persistence, tmp_path, clock),
        notifier=SignalNotifier(),
        clock=clock,
    )
    session = SimpleNamespace(state=Principal(None))
    if how == "cancel":
        await service.send_signal(m.SendSignalRequest(instance_id="waiter", signal="cancel"), session)  # type: ignore[arg-type]
    else:
        await service.stop_instance(m.StopInstanceRequest(instance_id="waiter", grace_s=1), session)  # type: ignore[arg-type]
    after = await persistence.get_instance("waiter")
    reason = TerminationReason.CANCELLED if how == "cancel" else TerminationReason.STOPPED
    assert after is not None and (after.status, after.termination_reason) == (InstanceStatus.CANCELLED, reason)
    assert await persistence.pending_signal("waiter") is None


IMAGE = NewImage("img-1", "acme", "steps", "workflow:main", sha256="0" * 64, size_bytes=1)


async def hibernated_instance(
    persistence: Persistence, image_id: str, instance_id: str, reason: TerminationReason
) -> InstanceRow:
    row, _ = await persistence.create_instance(NewInstance(instance_id, image_id))
    await persistence.transition(instance_id, [InstanceStatus.PENDING], InstanceStatus.RUNNING)
    return await persistence.transition(instance_id, [InstanceStatus.RUNNING], InstanceStatus.SUSPENDED, reason=reason)


def idle_supervisor(
    persistence: Persistence, tmp_path: Path, clock: FakeClock, launcher: ProcessLauncher | None = None
) -> Supervisor:
    """Built, never started: it launches only when a test calls it, and judges the exits a test
    hands it."""
    return Supervisor(
        persistence,
        Settings(data_dir=tmp_path),
        tokens=InstanceTokens("s" * 32),
        registry=ImageRegistry(persistence, tmp_path / "images", max_bytes=1 << 20, max_files=10),
        core=CoreEndpoint("127.0.0.1:1", None, False),
        node_id="node",
        clock=clock,
        launcher=launcher or ProcessLauncher(stderr_tail_bytes=1024),
    )
