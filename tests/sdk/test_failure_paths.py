"""What a launch does when core or the workflow misbehaves: transient INTERNAL answers, a pause
landing mid-request, oversized outputs, exits from workflow code. Found by review."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from runtara_core.persistence import InstanceStatus, TerminationReason
from tests.sdk.conftest import ExitCode, Instances, read_ledger

IMAGES = Path(__file__).parent / "images"


def fail_once(target: Any, name: str, when: Any = lambda *a, **k: True) -> None:
    """Make ``target.name`` raise once (core answers INTERNAL), then behave."""
    original = getattr(target, name)
    failures = [1]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures and when(*args, **kwargs):
            failures.pop()
            raise RuntimeError("database blip")
        return await original(*args, **kwargs)

    setattr(target, name, flaky)


async def test_a_transient_internal_error_on_a_checkpoint_is_retried(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"items": 3, "ledger": str(ledger)})
    fail_once(instances.core.persistence, "save_checkpoint_if_absent", lambda i, cid, *a, **k: cid == "2:step:item-1")
    assert await instances.run(iid, "batch.py") == ExitCode.COMPLETED
    assert Counter(line["step_id"] for line in read_ledger(ledger)) == {
        "1:step:item-0": 1, "2:step:item-1": 1, "3:step:item-2": 1,
    }


async def test_a_transient_internal_error_on_the_pause_ack_does_not_strand_the_instance(instances: Instances) -> None:
    iid = await instances.create({"items": 4, "item_delay_s": 0.5})
    fail_once(instances.core.persistence, "ack_signal")
    launch = await instances.launch(iid, "batch.py")
    await instances.wait_for_checkpoint(iid, "1:step:item-0")
    await instances.send_signal(iid, "pause")
    assert await launch.wait(15) == ExitCode.SUSPENDED
    assert (await instances.row(iid)).termination_reason is TerminationReason.PAUSED


async def test_the_heartbeat_survives_an_internal_error(instances: Instances) -> None:
    iid = await instances.create({"items": 1, "item_delay_s": 4})  # one long step body
    launch = await instances.launch(iid, "batch.py", env={"RUNTARA_HEARTBEAT_INTERVAL_S": "0.3"})
    deadline = time.monotonic() + 30
    while (await instances.row(iid)).status is not InstanceStatus.RUNNING and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    # Registered (however long start-up took on a busy machine): the next heartbeat poll fails.
    fail_once(instances.core.persistence, "pending_signal")
    await asyncio.sleep(1.0)
    before = (await instances.row(iid)).heartbeat_at_ms
    await asyncio.sleep(1.5)
    after = (await instances.row(iid)).heartbeat_at_ms
    assert await launch.wait(20) == ExitCode.COMPLETED
    assert before is not None and after is not None and after > before


async def test_a_pause_arriving_during_a_long_sleep_request_is_acknowledged_promptly(make_instances: Any) -> None:
    """The pause lands while core handles a 20 s sleep: core declines to hibernate and returns
    it as pending; the launch must pause now, not after the sleep."""
    instances: Instances = await make_instances()
    iid = await instances.create({"user": "ann", "follow_up_after_s": 20})
    db = instances.core.persistence
    original = db.save_checkpoint_if_absent

    async def save(instance_id: str, checkpoint_id: str, *args: Any, **kwargs: Any) -> Any:
        if ":sleep:" in checkpoint_id:
            await instances.send_signal(iid, "pause")
        return await original(instance_id, checkpoint_id, *args, **kwargs)

    db.save_checkpoint_if_absent = save  # type: ignore[method-assign]
    launch = await instances.launch(iid, "welcome_email.py")
    assert await launch.wait(15) == ExitCode.SUSPENDED  # not after the 20 s sleep
    assert (await instances.row(iid)).termination_reason is TerminationReason.PAUSED


async def test_an_output_over_the_size_limit_fails_the_instance_with_the_reason(make_instances: Any) -> None:
    instances: Instances = await make_instances(max_checkpoint_bytes=1000)
    iid = await instances.create({"n": 5000})
    assert await instances.run(iid, IMAGES / "big_output.py") == ExitCode.FAILED
    row = await instances.row(iid)
    assert row.status is InstanceStatus.FAILED
    assert "output cannot be stored" in json.loads(row.error or "{}")["message"]


async def test_an_asyncio_cancelled_error_escaping_the_workflow_is_reported_as_a_failure(make_instances: Any) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=120_000)
    iid = await instances.create({})
    assert await instances.run(iid, IMAGES / "cancelled_error.py") == ExitCode.FAILED
    assert (await instances.row(iid)).status is InstanceStatus.FAILED


async def test_sys_exit_in_workflow_code_is_reported_as_a_failure(instances: Instances) -> None:
    iid = await instances.create({})
    assert await instances.run(iid, IMAGES / "sys_exit.py") == ExitCode.FAILED
    row = await instances.row(iid)
    assert row.status is InstanceStatus.FAILED and "SystemExit" in (row.error or "")


async def test_a_late_hibernation_answer_then_a_wake_runs_the_next_step_once(instances: Instances, tmp_path: Path) -> None:
    """The stale launch times out, reconnects and tries to register again: the launch id shuts
    it out (the woken launch owns the instance), so the next step runs once."""
    db = instances.core.persistence
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"ledger": str(ledger)})
    original = db.hibernate
    hibernated = asyncio.Event()

    async def slow_hibernate(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        if result.hibernated and not hibernated.is_set():
            hibernated.set()
            await asyncio.sleep(6)  # committed, but the answer comes late
        return result

    db.hibernate = slow_hibernate  # type: ignore[method-assign]
    env = {"RUNTARA_REQUEST_TIMEOUT_S": "2"}
    first = await instances.launch(iid, IMAGES / "wait_then_effect.py", env=env)
    await asyncio.wait_for(hibernated.wait(), 20)
    assert await instances.send_custom(iid, "go", {"n": 1})  # wakes it: suspended -> pending
    second = await instances.launch(iid, IMAGES / "wait_then_effect.py", env=env)
    await second.wait(30)
    await first.wait(30)
    assert Counter(line["step_id"] for line in read_ledger(ledger)) == {"2:step:effect": 1}


async def test_a_transient_internal_error_on_register_is_retried(instances: Instances) -> None:
    iid = await instances.create({"items": 2})
    fail_once(instances.core.persistence, "replay_history")  # inside register, after it started
    assert await instances.run(iid, "batch.py") == ExitCode.COMPLETED
    assert (await instances.row(iid)).attempt == 1
