"""Scenario 3 of the chaos harness, bounded for CI (about 30 s per backend): the database goes
away under load. PostgreSQL: a private cluster restarted mid-run (fast, immediate, stop and
start). SQLite: the environment SIGKILLed during heavy writes, the file checked while it is
down. Nothing acknowledged may be lost, every instance completes right, and both servers
reconnect on their own. ``python -m chaos`` runs the full sizes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.scenarios import database_faults
from chaos.scenarios.database_faults import PostgresBinariesMissing
from runtara_core.persistence import Persistence
from runtara_core.persistence.rows import EventType, NewImage, NewInstance
from runtara_environment.process_runner import InstanceProcess, LaunchSpec, ProcessLauncher
from tests.chaos.test_races import idle_supervisor
from tests.conftest import FakeClock, postgres_test_url

pytestmark = pytest.mark.chaos

SEED = 3


@pytest.fixture(params=["sqlite", "postgres"])
def db_backend(request: pytest.FixtureRequest) -> str:
    """Named apart from the shared ``backend`` fixture, which ``persistence`` needs below."""
    if request.param == "postgres":
        postgres_test_url()  # skips on a laptop without PostgreSQL, fails under CI=true
    return request.param


async def test_database_faults_lose_nothing_and_both_servers_reconnect(db_backend: str, tmp_path: Path) -> None:
    backend = db_backend
    if backend == "postgres":
        try:
            report = await database_faults.run(
                backend, tmp_path, seed=SEED, trials=1, wave=1, outage_s=(2.0, 3.0), budget_s=35
            )
        except PostgresBinariesMissing as missing:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI must run the PostgreSQL restart trial: {missing}")
            pytest.skip(f"PostgreSQL restart trial: {missing}")
    else:
        report = await database_faults.run(
            backend, tmp_path, seed=SEED, trials=1, kills=3, writers=3, starts_per_writer=4, budget_s=35
        )
    assert report.audit.violations == []
    assert report.audit.runs == report.audit.completed > 0
    assert not report.measurements["budget_exhausted"]
    if backend == "postgres":
        # One restart of each kind; after each, the environment answered, the core saved a
        # checkpoint and listened for signals again.
        assert sorted(report.faults) == ["postgres:fast", "postgres:immediate", "postgres:stop-start"]
        assert report.audit.signals_sent > 0
        for restart in report.measurements["restarts"]:
            assert restart["management_ok_after_up_ms"] is not None, restart
            assert restart["checkpoint_after_up_ms"] is not None, restart
            assert restart["listen_restored_after_up_ms"] is not None, restart
    else:
        assert report.faults["environment:sigkill"] == 3
        assert report.faults["instances:sigkill"] >= 1
        assert report.measurements["acked_checkpoints_checked"] > 0
        # A launch cut off from its core by the kill waits for the restarted one (regression:
        # it used to give up after one connect timeout, losing an attempt; seed 3).
        assert report.measurements["launches_gave_up"] == 0
        assert report.audit.signals_sent > 0


# ---------------------------------------------------------------------------- regressions found by the scenario


class RecordProcessFailsOnce:
    """The store as the supervisor sees it when the database drops just after a fork."""

    def __init__(self, inner: Persistence) -> None:
        self._inner = inner
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def record_process(self, instance_id: str, pid: int, pid_create_time: float) -> None:
        if self.failures == 0:
            self.failures += 1
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        await self._inner.record_process(instance_id, pid, pid_create_time)


class ForkedAlready(ProcessLauncher):
    """A launch that 'forks' at once: this test process stands in for the instance."""

    async def launch(self, spec: LaunchSpec) -> InstanceProcess:  # type: ignore[override]
        return InstanceProcess(
            spec.instance_id, spec.attempt, spec.launch_id, os.getpid(), time.time(),
            child=False, run_dir=spec.run_dir, stderr_tail_bytes=1024,
        )  # fmt: skip


async def test_a_launch_recorded_during_a_database_outage_keeps_its_pid(
    persistence: Persistence, tmp_path: Path, clock: FakeClock
) -> None:
    """Found by ``database_faults.run("postgres", ..., seed=3)`` (every restart, in the
    environment log): a launch forked while PostgreSQL was restarting could not record its pid;
    the error escaped the launch loop, so the pid was never recorded (and the launches queued
    behind it waited for the next pass). An environment restart then cannot adopt that live
    process: it is judged crashed and launched a second time while it still runs."""
    image = await persistence.create_image(NewImage("img-1", "acme", "steps", "workflow:main", sha256="0" * 64, size_bytes=1))
    await persistence.create_instance(NewInstance("launched-in-outage", image.image_id))
    store = RecordProcessFailsOnce(persistence)
    supervisor = idle_supervisor(store, tmp_path, clock, ForkedAlready(stderr_tail_bytes=1024))  # type: ignore[arg-type]
    try:
        await supervisor.launch_pending()
        row = await persistence.get_instance("launched-in-outage")
        assert store.failures == 1
        assert row is not None and row.pid == os.getpid(), row
        events = await persistence.list_events("launched-in-outage", limit=10)
        assert [e.type for e in events] == [EventType.LAUNCHED]
    finally:
        await supervisor.stop()
