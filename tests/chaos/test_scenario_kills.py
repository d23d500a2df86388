"""Scenarios 1 and 2 of the chaos harness, bounded for CI: SIGKILLed instances and a SIGKILLed
environment, on both backends. ``python -m chaos`` runs the full sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos.example_runs import FAULTS
from chaos.scenarios import environment_kills, instance_kills
from tests.conftest import postgres_test_url

pytestmark = pytest.mark.chaos


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        postgres_test_url()  # skips on a laptop without PostgreSQL, fails under CI=true
    return request.param


async def test_instance_kills_lose_and_double_nothing(backend: str, tmp_path: Path) -> None:
    report = await instance_kills.run(backend, tmp_path, seed=7, runs=30, concurrency=12, budget_s=120)
    assert report.audit.violations == []
    assert report.audit.completed == 30
    assert report.audit.reexecuted_after_checkpoint == 0
    assert report.audit.signals_sent > 0 and report.audit.signals_lost == report.audit.signals_duplicated == 0
    # The plan's faults really happened: the windows a failpoint targets, and kills from outside.
    kinds = {kind.split(":")[1] for kind in report.faults}
    assert set(FAULTS) - {"signal.waiting", "random-time"} <= kinds, report.faults  # those may find nothing to kill
    assert report.audit.crashes_seen > 10 and len(report.audit.recovery_ms) == report.audit.crashes_seen


async def test_environment_kills_lose_and_double_nothing(backend: str, tmp_path: Path) -> None:
    report = await environment_kills.run(
        backend, tmp_path, seed=11, trials=1, kills_per_trial=5, running=10, sleeping=10, waiting=5, budget_s=150
    )
    assert report.audit.violations == []
    assert report.audit.completed == 25
    assert report.audit.signals_sent == 5
    assert report.faults["environment:sigkill"] == 5
    assert report.measurements["restarts"] == 5
