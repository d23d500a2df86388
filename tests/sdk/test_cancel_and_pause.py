"""Cancel, pause and SIGTERM end to end: real instance processes (``python -m runtara_sdk``)
against a real core, on both backends.

``images/batch.py`` (one step per item, ``item_delay_s`` inside each) widens the windows in
which a signal lands mid-step; ``images/welcome_email.py`` sleeps; ``images/approval.py``
cleans up (``withdraw``) on ``Cancelled``; ``tests/sdk/images/cancel_cleanup.py`` has a
``try/finally`` cleanup step and a cancellable step. Every wait is bounded; no test asserts a
duration.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtara_core.instance_protocol.decisions import SleepRecord
from runtara_core.persistence import EventType, InstanceStatus, TerminationReason, wall_clock_ms
from tests.sdk.conftest import ExitCode, Instances, Launch, read_ledger

TEST_IMAGES = Path(__file__).resolve().parent / "images"
CANCEL_CLEANUP = TEST_IMAGES / "cancel_cleanup.py"


def whats(ledger: Path) -> list[str]:
    return [line["what"] for line in read_ledger(ledger)]


def item_indexes(ledger: Path) -> list[int]:
    return [line["index"] for line in read_ledger(ledger) if line["what"] == "process_item"]


def batch_checksum(n: int) -> str:
    """What ``images/batch.py`` returns for items 0..n-1, worked out independently."""
    digests = [hashlib.sha256(json.dumps(i, sort_keys=True).encode()).hexdigest()[:16] for i in range(n)]
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


async def exited(launch: Launch, expected: ExitCode, timeout_s: float = 20.0) -> None:
    code = await launch.wait(timeout_s)
    assert code == expected, f"exit code {code}, expected {expected!r}; stderr:\n{launch.stderr}"


async def checkpoint_ids(instances: Instances, instance_id: str) -> list[str]:
    page = await instances.core.persistence.list_checkpoints(instance_id, limit=1000)
    return [c.checkpoint_id for c in page.items]


async def until(check: Callable[[], bool], what: str, launch: Launch, timeout_s: float = 15.0) -> None:
    """Until ``check()`` holds (bounded); fails early if the launch exited."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if launch.process.returncode is not None:
            raise AssertionError(f"the launch exited ({launch.process.returncode}) before {what}; stderr:\n{launch.stderr}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {what} within {timeout_s}s; stderr:\n{launch.stderr}")
        await asyncio.sleep(0.01)


async def assert_cancelled(instances: Instances, instance_id: str) -> None:
    row = await instances.row(instance_id)
    assert (row.status, row.termination_reason) == (InstanceStatus.CANCELLED, TerminationReason.CANCELLED)
    assert row.finished_at_ms is not None and row.output is None
    assert await instances.core.persistence.pending_signal(instance_id) is None  # acknowledged
    events = await instances.events(instance_id)
    assert [(e.type, e.subtype) for e in events if e.type is EventType.CANCELLED] == [
        (EventType.CANCELLED, "acknowledged")
    ]


# ----------------------------------------------------------------------------- cancel


async def test_cancel_during_a_step_lets_it_finish_then_stops(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"items": 6, "item_delay_s": 0.4, "ledger": str(ledger)})
    launch = await instances.launch(iid, "batch.py")
    await instances.wait_for_checkpoint(iid, "2:step:item-1")  # item-2 is now in its body
    await instances.send_signal(iid, "cancel")
    await exited(launch, ExitCode.CANCELLED)

    # item-2 was running: it finished (non-cancellable) and saved; nothing ran after it.
    assert item_indexes(ledger) == [0, 1, 2]
    assert await checkpoint_ids(instances, iid) == [
        "1:step:item-0",
        "2:step:item-1",
        "3:step:item-2",
        "4.cancelled:step:item-3",  # Cancelled was raised at the next SDK call
    ]
    await assert_cancelled(instances, iid)


async def test_cancel_during_an_in_process_sleep(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=120_000)  # the sleep stays in-process
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"user": "ann", "follow_up_after_s": 60, "ledger": str(ledger)})
    launch = await instances.launch(iid, "welcome_email.py")
    await instances.wait_for_checkpoint(iid, "2:sleep:follow-up-delay")
    await instances.send_signal(iid, "cancel")
    # Well within the 60 s sleep: the cancel interrupts it.
    await exited(launch, ExitCode.CANCELLED, timeout_s=20)

    assert whats(ledger) == ["welcome"]  # the follow-up was never sent
    assert await checkpoint_ids(instances, iid) == [
        "1:step:send_welcome",
        "2:sleep:follow-up-delay",
        "2.cancelled:sleep:follow-up-delay",
    ]
    await assert_cancelled(instances, iid)


async def test_cancel_during_a_signal_wait_runs_the_cleanup_step(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=120_000)  # the wait stays in-process
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"timeout_s": 60, "ledger": str(ledger)})
    launch = await instances.launch(iid, "approval.py")
    await instances.wait_for_checkpoint(iid, "2.deadline:signal:approval")  # waiting now
    await instances.send_signal(iid, "cancel")
    await exited(launch, ExitCode.CANCELLED, timeout_s=20)

    lines = read_ledger(ledger)
    assert [line["what"] for line in lines] == ["submit", "withdraw"]
    assert lines[1]["request_id"] == lines[0]["request_id"]
    ids = await checkpoint_ids(instances, iid)
    assert "2.cancelled:signal:approval" in ids and "3:step:withdraw" in ids
    assert "2:signal:approval" not in ids  # nothing was delivered to the wait
    await assert_cancelled(instances, iid)


# ----------------------------------------------------------------------------- pause


async def test_pause_at_a_step_boundary_then_resume(instances: Instances, tmp_path: Path) -> None:
    n = 6
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"items": n, "item_delay_s": 0.15, "ledger": str(ledger)})
    first = await instances.launch(iid, "batch.py")
    await instances.wait_for_checkpoint(iid, "2:step:item-1")
    await instances.send_signal(iid, "pause")
    await exited(first, ExitCode.SUSPENDED)

    row = await instances.row(iid)
    assert (row.status, row.termination_reason) == (InstanceStatus.SUSPENDED, TerminationReason.PAUSED)
    assert await instances.core.persistence.pending_signal(iid) is None  # acknowledged
    done = item_indexes(ledger)
    assert 2 <= len(done) < n, done  # paused mid-batch, after the step that was running
    assert done == list(range(len(done)))
    assert await checkpoint_ids(instances, iid) == [f"{i + 1}:step:item-{i}" for i in range(len(done))]  # every item that ran saved
    events = await instances.events(iid)
    assert (EventType.SUSPENDED, "paused") in [(e.type, e.subtype) for e in events]

    await instances.wake(iid)  # what resume does: suspended -> pending, then relaunch
    second = await instances.launch(iid, "batch.py")
    assert second.attempt == first.attempt
    await exited(second, ExitCode.COMPLETED)

    assert await instances.output(iid) == {"processed": n, "checksum": batch_checksum(n)}
    lines = read_ledger(ledger)
    assert [line["index"] for line in lines] == list(range(n))  # each item exactly once, in order
    assert Counter(line["step_id"] for line in lines) == {f"{i + 1}:step:item-{i}": 1 for i in range(n)}


# ----------------------------------------------------------------------------- SIGTERM


@pytest.mark.parametrize("where", ["step", "sleep"])
async def test_sigterm_cancels_and_runs_finally(make_instances: Any, tmp_path: Path, where: str) -> None:
    """SIGTERM alone (no cancel signal stored): the workflow is cancelled, its finally runs;
    the row stays running because the environment that sent SIGTERM records the stop."""
    instances: Instances = await make_instances(hibernate_after_ms=120_000)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"work_s": 0.8, "nap_s": 60, "ledger": str(ledger)})
    launch = await instances.launch(iid, CANCEL_CLEANUP)
    if where == "step":
        await until(lambda: "work-start" in whats(ledger), "work step start", launch)
    else:
        await instances.wait_for_checkpoint(iid, "2:sleep:nap")
    launch.terminate()
    await exited(launch, ExitCode.CANCELLED)

    # The running step finished (not cancellable), the sleep never ended, cleanup ran once.
    assert whats(ledger) == ["work-start", "work-done", "cleanup-start", "cleanup-done"]
    ids = await checkpoint_ids(instances, iid)
    assert "1:step:work" in ids and "2.cancelled:sleep:nap" in ids and "3:step:cleanup" in ids
    assert not any(":step:work" in i for i in ids if not i.startswith("1:"))  # no second work
    row = await instances.row(iid)
    assert row.status is InstanceStatus.RUNNING  # no cancel in the database: not the SDK's to record
    assert row.output is None and row.error is None


async def test_cancel_signal_then_sigterm_ends_cancelled(make_instances: Any, tmp_path: Path) -> None:
    """What stop_instance does after a cancel: both sources, one cancellation, acknowledged."""
    instances: Instances = await make_instances(hibernate_after_ms=120_000)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"nap_s": 60, "ledger": str(ledger)})
    launch = await instances.launch(iid, CANCEL_CLEANUP)
    await instances.wait_for_checkpoint(iid, "2:sleep:nap")
    await instances.send_signal(iid, "cancel")
    launch.terminate()
    await exited(launch, ExitCode.CANCELLED)

    assert whats(ledger) == ["work-start", "work-done", "cleanup-start", "cleanup-done"]
    await assert_cancelled(instances, iid)


# ----------------------------------------------------------------------------- cancellable step


async def test_cancel_interrupts_a_cancellable_step(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"long_s": 60, "ledger": str(ledger)})
    launch = await instances.launch(iid, CANCEL_CLEANUP, entrypoint="interruptible")
    await until(lambda: "long-start" in whats(ledger), "cancellable step start", launch)
    await instances.send_signal(iid, "cancel")
    await exited(launch, ExitCode.CANCELLED, timeout_s=20)  # well within the step's 60 s

    # The body was interrupted (its finally ran), the step saved nothing, cleanup ran.
    assert whats(ledger) == ["long-start", "long-finally", "cleanup-start", "cleanup-done"]
    assert await checkpoint_ids(instances, iid) == ["1.cancelled:step:long_call", "2:step:cleanup"]
    await assert_cancelled(instances, iid)


# ----------------------------------------------------------------------------- crash in cleanup


async def test_crash_during_cleanup_replays_the_cancel(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"nap_s": 0.8, "cleanup_s": 0.3, "ledger": str(ledger)})
    first = await instances.launch(iid, CANCEL_CLEANUP)
    await instances.wait_for_checkpoint(iid, "2:sleep:nap")
    await instances.send_signal(iid, "cancel")
    await until(lambda: "cleanup-start" in whats(ledger), "cleanup start", first)
    first.kill()  # SIGKILL in the middle of the cleanup step
    assert await first.wait(10) < 0

    assert "3:step:cleanup" not in await checkpoint_ids(instances, iid)
    row = await instances.row(iid)
    assert row.status is InstanceStatus.RUNNING  # the cancel was never acknowledged
    # Let the nap's wake time pass: a replay that did not raise at the marker would now sleep
    # through and run the second `work` step (position 3) instead of the cleanup.
    nap = await instances.core.persistence.get_checkpoint(iid, "2:sleep:nap")
    assert nap is not None and nap.state is not None
    record = SleepRecord.decode(nap.state)
    assert record is not None
    await asyncio.sleep(max(0.0, (record.wake_at_ms - wall_clock_ms()) / 1000) + 0.05)
    attempt = await instances.after_crash(iid)
    assert attempt == first.attempt + 1

    second = await instances.launch(iid, CANCEL_CLEANUP)
    await exited(second, ExitCode.CANCELLED)

    lines = read_ledger(ledger)
    assert [(line["what"], line["launch_attempt"]) for line in lines] == [
        ("work-start", 1),
        ("work-done", 1),
        ("cleanup-start", 1),
        ("cleanup-start", 2),  # Cancelled raised again at the nap, then the cleanup ran whole
        ("cleanup-done", 2),
    ]
    ids = await checkpoint_ids(instances, iid)
    assert ids == ["1:step:work", "2:sleep:nap", "2.cancelled:sleep:nap", "3:step:cleanup"]
    await assert_cancelled(instances, iid)
