"""Regressions of races the review found: a launch's exit seen after its instance moved on,
restarts in the middle of timeouts and heartbeats, launches that never register."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from runtara_core.persistence import Persistence
from tests.environment.conftest import TEST_IMAGES, MakeEnvironment

TERMINAL = ("completed", "failed", "cancelled")


async def wait_db(db: Persistence, instance_id: str, predicate: Callable[[Any], bool], timeout_s: float = 60) -> Any:
    """Polls the database directly, tightly, to act inside the window between a hibernation
    and the exit of the process that hibernated."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = await db.get_instance(instance_id)
        if row is not None and predicate(row):
            return row
        await asyncio.sleep(0.002)
    raise AssertionError(f"{instance_id}: condition not reached within {timeout_s}s")


async def test_a_signal_right_after_hibernation_is_not_a_crash(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(hibernate_after_ms=500)
    db = await environment.open_database()
    try:
        async with environment.client() as client:
            await client.register_image(TEST_IMAGES / "waiter.py", name="waiter")
            for k in range(3):
                started = await client.start_instance("waiter", {"timeout_s": 3600}, max_attempts=1)
                await wait_db(db, started.instance_id, lambda r: r.status.value == "suspended")
                await client.send_custom_signal(started.instance_id, "go", {"k": k})
                done = await client.wait(started.instance_id, timeout_s=60)
                assert (done.status, done.output) == ("completed", {"got": {"k": k}}), done
                types = [e.type for e in (await client.list_events(started.instance_id)).items]
                assert "crashed" not in types, types
    finally:
        await db.close()


async def test_resume_right_after_pause_is_not_a_crash(make_environment: MakeEnvironment) -> None:
    environment = await make_environment()
    db = await environment.open_database()
    try:
        async with environment.client() as client:
            await client.register_image(TEST_IMAGES / "steps.py", name="steps")
            for _ in range(2):
                started = await client.start_instance("steps", {"n": 12, "step_s": 0.1}, max_attempts=1)
                await wait_db(db, started.instance_id, lambda r: r.status.value == "running")
                await asyncio.sleep(0.4)
                await client.send_signal(started.instance_id, "pause")
                await wait_db(db, started.instance_id, lambda r: r.status.value == "suspended")
                await client.resume_instance(started.instance_id)
                done = await client.wait(started.instance_id, timeout_s=60)
                assert done.status == "completed", done
    finally:
        await db.close()


async def test_execution_timeout_counts_running_time_across_a_restart(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(supervisor_sweep_interval_s=0.2, stop_grace_s=1)
    db = await environment.open_database()
    try:
        async with environment.client() as client:
            await client.register_image(TEST_IMAGES / "steps.py", name="steps")
            started = await client.start_instance("steps", {"n": 1000, "step_s": 0.1}, timeout_s=6)
        await wait_db(db, started.instance_id, lambda r: r.status.value == "running")
        running_since = time.monotonic()
        await asyncio.sleep(3)
        await environment.crash()
        await asyncio.sleep(1)
        await environment.start()
        row = await wait_db(db, started.instance_id, lambda r: r.status.value in TERMINAL, timeout_s=60)
        assert (row.status.value, row.termination_reason.value) == ("failed", "timeout")
        assert time.monotonic() - running_since < 10  # 6 s of running time, not 6 s after adoption
    finally:
        await db.close()


async def test_adopted_launch_gets_time_to_reconnect(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(heartbeat_timeout_ms=3000)
    db = await environment.open_database()
    try:
        async with environment.client() as client:
            await client.register_image(TEST_IMAGES / "steps.py", name="steps")
            started = await client.start_instance("steps", {"n": 40, "step_s": 0.2})
        await wait_db(db, started.instance_id, lambda r: r.status.value == "running")
        await asyncio.sleep(1)
        await environment.crash()
        await asyncio.sleep(4)  # longer than the heartbeat timeout
        await environment.start()
        row = await wait_db(db, started.instance_id, lambda r: r.status.value in TERMINAL, timeout_s=90)
        assert row.status.value == "completed" and row.attempt == 1, row
        types = [e.type.value for e in await db.list_events(started.instance_id, limit=1000)]
        assert "crashed" not in types, types
    finally:
        await db.close()


async def test_a_launch_that_never_registers_frees_its_slot(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(heartbeat_timeout_ms=1500, max_concurrent_instances=1, crash_backoff_initial_ms=100)
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "hang_import.py", name="hang")
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        hang = await client.start_instance("hang", {}, max_attempts=2)
        await asyncio.sleep(0.3)
        other = await client.start_instance("steps", {"n": 1})
        assert (await client.wait(other.instance_id, timeout_s=60)).status == "completed"
        hung = await client.wait(hang.instance_id, timeout_s=60)
        assert (hung.status, hung.termination_reason, hung.attempt) == ("failed", "heartbeat_timeout", 2)
