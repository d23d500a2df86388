"""Bugs the chaos scenarios found, each kept as the smallest run that shows it (both backends),
naming the scenario and seed that first found it. Regressions found by one scenario's own
machinery live beside it (tests/chaos/test_races.py, test_database_faults.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from chaos.cluster import ChaosEnvironment
from tests.conftest import postgres_test_url

pytestmark = pytest.mark.chaos


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        postgres_test_url()
    return request.param


async def _events(environment: ChaosEnvironment, instance_id: str) -> list[str]:
    db = await environment.open_database()
    try:
        return [e.type.value for e in await db.list_events(instance_id, limit=1000)]
    finally:
        await db.close()


async def test_a_signal_sent_in_time_is_delivered_to_a_launch_relaunched_after_the_deadline(
    backend: str, tmp_path: Path
) -> None:
    """Found by ``python -m chaos instance-kills --seed 101`` (16 of 200 runs on SQLite, 9 on
    PostgreSQL, all with the signal.waiting failpoint): an approval sent well before the wait's deadline came out as "timed_out"
    because the launch that would have taken it was killed and its relaunch came after the
    deadline. A crash must not change a workflow's result: the wait now takes a signal queued
    by its deadline, whenever the launch gets to ask."""
    environment = await ChaosEnvironment.open(
        backend, tmp_path, hibernate_after_ms=5000, crash_backoff_initial_ms=2500
    )
    try:
        async with environment.client() as client:
            await environment.register_examples(client)
            await client.start_instance(
                "approval", {"timeout_s": 1.5}, instance_id="late-relaunch",
                env={"RUNTARA_FAILPOINTS": "signal.waiting#1@1"},
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while "crashed" not in await _events(environment, "late-relaunch"):
                assert time.monotonic() < deadline, "the failpoint never fired"
                await asyncio.sleep(0.02)
            await client.send_custom_signal("late-relaunch", "approval", {"approved": True, "by": "bob"})
            done = await client.wait("late-relaunch", timeout_s=60)
        assert done.status == "completed", done
        assert done.output["decision"] == "approved", done.output
        assert done.output["by"] == "bob"
    finally:
        await environment.close()
