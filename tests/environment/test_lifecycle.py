"""Instance lifecycle through the management client, against a real environment process with
real instance processes, on both backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from runtara_core.errors import BadRequest, InvalidState, NotFound
from runtara_environment.client import ManagementClient
from tests.environment.conftest import IMAGES, TEST_IMAGES, EnvironmentProcess, MakeEnvironment, wait_until
from tests.sdk.conftest import read_ledger

WAIT_S = 90.0


async def status_of(client: ManagementClient, instance_id: str) -> tuple[str, str | None]:
    row = await client.get_instance(instance_id)
    return row.status, row.termination_reason


async def wait_status(client: ManagementClient, instance_id: str, *statuses: str, timeout_s: float = WAIT_S) -> Any:
    async def reached() -> bool:
        return (await client.get_instance(instance_id)).status in statuses

    await wait_until(reached, timeout_s=timeout_s, what=f"{instance_id} in {statuses}")
    return await client.get_instance(instance_id)


async def event_types(client: ManagementClient, instance_id: str) -> list[str]:
    page = await client.list_events(instance_id, limit=1000)
    return [e.type for e in page.items]


def ledger_counts(path: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for line in read_ledger(path):
        counts[line["i"]] = counts.get(line["i"], 0) + 1
    return counts


async def test_register_start_watch_complete(environment: EnvironmentProcess) -> None:
    async with environment.client() as client:
        image = await client.register_image(IMAGES / "order.py", name="order")
        assert (image.name, image.version, image.filename) == ("order", 1, "order.py")
        order = {"order_id": "o-1", "customer": "ada", "amount": 12.5, "items": ["book"]}
        started = await client.start_instance("order", order)
        assert started.created
        seen = [frame async for frame in client.watch(started.instance_id)]
        assert seen[-1].frame == "end" and seen[-1].status == "completed"
        kinds = [f.event.type for f in seen if f.event is not None]
        assert kinds[0] == "launched" and "started" in kinds and kinds[-1] == "completed"
        row = await client.get_instance(started.instance_id)
        assert row.status == "completed" and row.termination_reason == "completed"
        assert row.output["order_id"] == "o-1" and row.output["charge_id"].startswith("ch_")
        assert row.input == order and row.image == image.image_id and row.attempt == 1

        async def measured() -> bool:  # recorded once the process is gone, just after completion
            return (await client.get_instance(started.instance_id)).peak_rss_bytes is not None

        await wait_until(measured, timeout_s=30, what="exit metrics")
        row = await client.get_instance(started.instance_id)
        assert row.peak_rss_bytes and row.peak_rss_bytes > 5_000_000
        assert row.cpu_time_ms is not None and row.cpu_time_ms > 0
        every = await client.list_events(started.instance_id, limit=1000)
        page = await client.list_events(started.instance_id, limit=2)
        assert len(page.items) == 2 and page.total == every.total == len(every.items)
        checkpoints = await client.list_checkpoints(started.instance_id)
        assert checkpoints.total >= 3
        assert any("charge_card" in c.checkpoint_id for c in checkpoints.items)
        first = await client.get_checkpoint(started.instance_id, checkpoints.items[0].checkpoint_id)
        assert first.state
        # Re-registering makes version 2; the finished instance stays pinned to version 1.
        again = await client.register_image(IMAGES / "order.py", name="order")
        assert again.version == 2 and again.image_id != image.image_id
        assert (await client.get_instance(started.instance_id)).image == image.image_id


async def test_start_is_idempotent_and_validates_input(environment: EnvironmentProcess) -> None:
    async with environment.client() as client:
        schema = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}
        await client.register_image(TEST_IMAGES / "empty.py", name="empty", input_schema=schema)
        with pytest.raises(BadRequest, match="schema"):
            await client.start_instance("empty", {"n": "three"})
        first = await client.start_instance("empty", {"n": 1}, instance_id="same-id")
        second = await client.start_instance("empty", {"n": 2}, instance_id="same-id")
        assert first.created and not second.created
        done = await client.wait("same-id", timeout_s=WAIT_S)
        assert done.status == "completed" and done.output == {"n": 1}
        page = await client.list_instances(image="empty")
        assert page.total == 1
        with pytest.raises(NotFound):
            await client.start_instance("no-such-image", {})


async def test_crash_is_relaunched_from_the_last_checkpoint(environment: EnvironmentProcess, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        started = await client.start_instance("steps", {"n": 6, "crash_at": 3, "ledger": str(ledger)})
        done = await client.wait(started.instance_id, timeout_s=WAIT_S)
        assert done.status == "completed", done
        assert done.output["results"] == [i * i for i in range(6)]
        assert done.attempt == 2
        assert ledger_counts(ledger) == {i: 1 for i in range(6)}
        events = (await client.list_events(started.instance_id, limit=1000)).items
        crashes = [e for e in events if e.type == "crashed"]
        assert len(crashes) == 1
        assert json.loads(crashes[0].payload)["exit_signal"] == 9
        # The relaunch waited out the crash backoff (500 ms by default); the wake lead that
        # starts sleepers early must not cut it short.
        relaunch = next(e for e in events if e.type == "launched" and e.event_id > crashes[0].event_id)
        assert relaunch.created_at_ms - crashes[0].created_at_ms >= 500


async def test_crashing_every_attempt_fails_as_crashed_and_resume_continues(
    environment: EnvironmentProcess, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    marker = tmp_path / "crash"
    marker.touch()
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        started = await client.start_instance(
            "steps", {"n": 4, "crash_at": 2, "crash_marker": str(marker), "ledger": str(ledger)}, max_attempts=2
        )
        failed = await client.wait(started.instance_id, timeout_s=WAIT_S)
        assert (failed.status, failed.termination_reason, failed.attempt) == ("failed", "crashed", 2)
        assert "no attempts left" in (failed.error or "")
        types = await event_types(client, started.instance_id)
        assert types.count("crashed") == 2
        marker.unlink()
        resumed = await client.resume_instance(started.instance_id)
        assert resumed.status == "pending"
        done = await client.wait(started.instance_id, timeout_s=WAIT_S)
        assert done.status == "completed" and done.attempt == 3
        assert ledger_counts(ledger) == {i: 1 for i in range(4)}
        with pytest.raises(InvalidState):
            await client.resume_instance(started.instance_id)


async def test_pause_then_resume_runs_every_step_once(environment: EnvironmentProcess, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        started = await client.start_instance("steps", {"n": 12, "step_s": 0.15, "ledger": str(ledger)})
        await wait_status(client, started.instance_id, "running")
        await wait_until(lambda: _has_lines(ledger, 2), what="two steps done")
        await client.send_signal(started.instance_id, "pause")
        paused = await wait_status(client, started.instance_id, "suspended")
        assert paused.termination_reason == "paused"
        done_before = len(read_ledger(ledger))
        await asyncio.sleep(0.5)
        assert len(read_ledger(ledger)) == done_before  # nothing runs while paused
        await client.resume_instance(started.instance_id)
        done = await client.wait(started.instance_id, timeout_s=WAIT_S)
        assert done.status == "completed"
        assert ledger_counts(ledger) == {i: 1 for i in range(12)}


async def _has_lines(path: Path, n: int) -> bool:
    return len(read_ledger(path)) >= n


async def test_cancel_running_and_sleeping_and_stop_with_grace(make_environment: MakeEnvironment, tmp_path: Path) -> None:
    environment = await make_environment(hibernate_after_ms=1000)
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        running = await client.start_instance("steps", {"n": 50, "step_s": 0.2})
        sleeping = await client.start_instance("steps", {"n": 1, "sleep_s": 3600})
        stopped = await client.start_instance("steps", {"n": 50, "step_s": 0.2})
        await wait_status(client, running.instance_id, "running")
        await wait_status(client, stopped.instance_id, "running")
        asleep = await wait_status(client, sleeping.instance_id, "suspended")
        assert asleep.termination_reason == "sleeping" and asleep.wake_at_ms

        cancelled = await client.send_signal(sleeping.instance_id, "cancel")
        assert (cancelled.status, cancelled.termination_reason) == ("cancelled", "cancelled")

        await client.send_signal(running.instance_id, "cancel")
        row = await wait_status(client, running.instance_id, "cancelled", "failed", "completed")
        assert (row.status, row.termination_reason) == ("cancelled", "cancelled")

        await client.stop_instance(stopped.instance_id, grace_s=5)
        row = await wait_status(client, stopped.instance_id, "cancelled", "failed", "completed")
        assert (row.status, row.termination_reason) == ("cancelled", "stopped")
        await wait_until(lambda: _no_processes(environment), what="no instance process left")


async def _no_processes(environment: EnvironmentProcess) -> bool:
    return not environment.instance_processes()


async def test_custom_signal_wakes_a_hibernating_waiter(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(hibernate_after_ms=500)
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "waiter.py", name="waiter")
        started = await client.start_instance("waiter", {})
        row = await wait_status(client, started.instance_id, "suspended")
        assert row.termination_reason == "waiting"
        woken = await client.send_custom_signal(started.instance_id, "go", {"answer": 42})
        assert woken.status in ("pending", "running", "completed")
        done = await client.wait(started.instance_id, timeout_s=WAIT_S)
        assert done.status == "completed" and done.output == {"got": {"answer": 42}}


async def test_heartbeat_and_execution_timeouts(make_environment: MakeEnvironment) -> None:
    environment = await make_environment(heartbeat_timeout_ms=2000, crash_backoff_initial_ms=100)
    async with environment.client() as client:
        await client.register_image(TEST_IMAGES / "silent.py", name="silent")
        await client.register_image(TEST_IMAGES / "steps.py", name="steps")
        silent = await client.start_instance("silent", {"block_s": 120}, max_attempts=2)
        slow = await client.start_instance("steps", {"n": 100, "step_s": 0.2}, timeout_s=2)
        row = await client.wait(silent.instance_id, timeout_s=WAIT_S)
        assert (row.status, row.termination_reason, row.attempt) == ("failed", "heartbeat_timeout", 2)
        row = await client.wait(slow.instance_id, timeout_s=WAIT_S)
        assert (row.status, row.termination_reason) == ("failed", "timeout")
        assert "timeout" in (row.error or "")
