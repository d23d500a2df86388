"""Parallel branches (asyncio.gather) and steps called inside step bodies, through relaunches.

Found by review: with one counter for the whole workflow, branches making several durable calls
got other branches' results on replay; a hibernating branch held back a sibling's step; a cancel
let sibling branches go on starting steps; a ctx.step inside a step body was saved on its own.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.sdk.conftest import ExitCode, Instances, read_ledger

IMAGES = Path(__file__).parent / "images"


async def relaunch_when_due(instances: Instances, iid: str, image: Path) -> int:
    """Launch until the instance stops hibernating (waking it on time); the last exit code."""
    for _ in range(5):
        launch = await instances.launch(iid, image)
        code = await launch.wait(30)
        if code != ExitCode.SUSPENDED:
            return code
        row = await instances.row(iid)
        await asyncio.sleep(max(0.0, (row.wake_at_ms or 0) / 1000 - time.time()))
        await instances.wake(iid)
    raise AssertionError("still hibernating after 5 launches")


async def test_gather_branches_with_several_calls_each_get_their_own_results_on_replay(
    make_instances: Any, tmp_path: Path
) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=300)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"ledger": str(ledger), "rest_s": 1.0})
    first = await instances.launch(iid, IMAGES / "branches.py")
    assert await first.wait() == ExitCode.SUSPENDED, first.stderr  # hibernated in "rest"
    ids = {c.checkpoint_id for c in (await instances.core.persistence.list_checkpoints(iid)).items}
    assert {"1/1:step:fetch", "1/2:step:fetch", "2/1:step:fetch", "2/2:step:fetch", "1:sleep:rest"} <= ids
    await asyncio.sleep(1.1)
    await instances.wake(iid)
    assert await instances.run(iid, IMAGES / "branches.py") == ExitCode.COMPLETED
    assert await instances.output(iid) == {"pages": [["x-0", "x-1"], ["y-0", "y-1"]]}
    assert len(read_ledger(ledger)) == 4  # nothing ran twice


async def test_a_parallel_step_is_not_held_back_by_a_sibling_that_would_hibernate(
    make_instances: Any, tmp_path: Path
) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=500)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"mode": "sleep_first", "s": 3, "ledger": str(ledger)})
    started = time.time()
    assert await relaunch_when_due(instances, iid, IMAGES / "sleep_and_step.py") == ExitCode.COMPLETED
    [fetch] = read_ledger(ledger)
    assert fetch["at"] - started < 3  # it ran in the first launch, not after the 3 s sleep


async def test_two_parallel_sleeps_hibernate_until_the_earlier_one(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=500)
    iid = await instances.create({"mode": "two_sleeps", "s": 1.5, "ledger": str(tmp_path / "l")})
    launch = await instances.launch(iid, IMAGES / "sleep_and_step.py")
    assert await launch.wait() == ExitCode.SUSPENDED
    row = await instances.row(iid)
    records = {c.checkpoint_id for c in (await instances.core.persistence.list_checkpoints(iid)).items}
    assert {"1/1:sleep:a", "2/1:sleep:b"} <= records
    assert row.wake_at_ms is not None and row.wake_at_ms - row.updated_at_ms < 2000  # a's, not b's
    await asyncio.sleep(max(0.0, row.wake_at_ms / 1000 - time.time()))
    await instances.wake(iid)
    assert await relaunch_when_due(instances, iid, IMAGES / "sleep_and_step.py") == ExitCode.COMPLETED


async def test_a_cancel_stops_sibling_branches_from_starting_steps(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=120_000)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"ledger": str(ledger)})
    launch = await instances.launch(iid, IMAGES / "cancel_sibling.py")
    await instances.wait_for_checkpoint(iid, ":sleep:nap")
    await instances.send_signal(iid, "cancel")  # while `slow` runs in the other branch
    assert await launch.wait(20) == ExitCode.CANCELLED
    whats = [line["what"] for line in read_ledger(ledger)]
    assert "charge" not in whats and whats[-1] == "cleanup"


async def test_ctx_step_inside_a_step_body_is_part_of_that_step_and_replays(make_instances: Any) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=300)
    iid = await instances.create({"rest_s": 1.0})
    first = await instances.launch(iid, IMAGES / "nested.py")
    assert await first.wait() == ExitCode.SUSPENDED, first.stderr
    ids = [c.checkpoint_id for c in (await instances.core.persistence.list_checkpoints(iid)).items]
    assert ids == ["1:step:outer", "2:sleep:rest"]
    await asyncio.sleep(1.1)
    await instances.wake(iid)
    assert await instances.run(iid, IMAGES / "nested.py") == ExitCode.COMPLETED
    assert await instances.output(iid) == {"a": "outer+inner", "b": "after"}


async def test_a_pause_while_a_step_body_calls_ctx_step_is_acknowledged(make_instances: Any) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=60_000)
    iid = await instances.create({"rest_s": 0.1, "outer_delay_s": 1.0})
    launch = await instances.launch(iid, IMAGES / "nested.py")
    await asyncio.sleep(0.8)  # the outer body is running
    await instances.send_signal(iid, "pause")
    assert await launch.wait(15) == ExitCode.SUSPENDED
