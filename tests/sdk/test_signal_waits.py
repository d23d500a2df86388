"""Signal waits end to end: real instance processes (``python -m runtara_sdk``) against a real
core, on both backends.

``images/approval.py`` waits for ``approval`` (its ``timeout_s`` from the input);
``tests/sdk/images/two_waits.py`` waits twice for ``vote``. Each test bounds every wait; none
asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any


from runtara_core.instance_protocol.decisions import TIMEOUT_STATE
from runtara_core.persistence import InstanceStatus, TerminationReason, wall_clock_ms
from tests.sdk.conftest import ExitCode, Instances, Launch, read_ledger

TEST_IMAGES = Path(__file__).resolve().parent / "images"
TWO_WAITS = TEST_IMAGES / "two_waits.py"

SUBMIT = "1:step:submit_request"
WAIT = "2:signal:approval"
WAIT_DEADLINE = "2.deadline:signal:approval"
APPROVE = {"approved": True, "by": "bob"}

PUSH_ONLY = {"RUNTARA_SIGNAL_WAIT_POLL_S": "60", "RUNTARA_HEARTBEAT_INTERVAL_S": "60"}
"""Launch env that leaves only the core's push to bring a signal into a running wait quickly
(the wait's own poll and the heartbeat's poll come after a minute)."""


def whats(ledger: Path) -> list[str]:
    return [line["what"] for line in read_ledger(ledger)]


async def exited(launch: Launch, expected: ExitCode, timeout_s: float = 20.0) -> None:
    code = await launch.wait(timeout_s)
    assert code == expected, f"exit code {code}, expected {expected!r}; stderr:\n{launch.stderr}"


async def checkpoints(instances: Instances, instance_id: str) -> dict[str, bytes | None]:
    page = await instances.core.persistence.list_checkpoints(instance_id, limit=1000, with_state=True)
    return {c.checkpoint_id: c.state for c in page.items}


async def custom_signals(instances: Instances, instance_id: str, *, include_consumed: bool = True) -> list[Any]:
    return await instances.core.persistence.list_custom_signals(instance_id, include_consumed=include_consumed)


async def until_past(wake_at_ms: int, timeout_s: float = 10.0) -> None:
    """Until the wall clock is past ``wake_at_ms`` (bounded)."""
    left_s = (wake_at_ms - wall_clock_ms()) / 1000
    assert left_s < timeout_s, f"wake_at is {left_s:.1f}s away"
    await asyncio.sleep(max(0.0, left_s) + 0.05)
    assert wall_clock_ms() > wake_at_ms


def approval_input(ledger: Path, timeout_s: float) -> dict[str, Any]:
    return {"requester": "alice", "resource": "prod-db", "timeout_s": timeout_s, "ledger": str(ledger)}


# ----------------------------------------------------------------------------- approval


async def assert_timed_out_and_a_later_signal_stays_queued(instances: Instances, iid: str, ledger: Path) -> None:
    """The timeout is recorded as the wait's checkpoint; a signal after it is not delivered to
    the finished wait: it stays queued."""
    assert whats(ledger) == ["submit", "escalate"]
    assert (await checkpoints(instances, iid))[WAIT] == TIMEOUT_STATE
    assert await instances.send_custom(iid, "approval", APPROVE) is False
    [late] = await custom_signals(instances, iid)
    assert late.consumed_at_ms is None and late.consumed_by_checkpoint_id is None


async def test_signal_queued_before_the_launch_is_consumed(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create(approval_input(ledger, 30))
    assert await instances.send_custom(iid, "approval", APPROVE) is False  # pending: nothing to wake

    launch = await instances.launch(iid, "approval.py")
    await exited(launch, ExitCode.COMPLETED)

    output = await instances.output(iid)
    assert output["decision"] == "approved" and output["by"] == "bob"
    assert output["request_id"].startswith("req_")
    assert whats(ledger) == ["submit", "grant"]
    [signal] = await custom_signals(instances, iid)
    assert signal.consumed_at_ms is not None and signal.consumed_by_checkpoint_id == WAIT
    assert json.loads((await checkpoints(instances, iid))[WAIT] or b"") == APPROVE


async def test_signal_during_an_in_process_wait_is_pushed(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=120_000)  # the wait stays in-process
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create(approval_input(ledger, 60))
    launch = await instances.launch(iid, "approval.py", env=PUSH_ONLY)
    await instances.wait_for_checkpoint(iid, SUBMIT)
    await instances.wait_for_checkpoint(iid, WAIT_DEADLINE)  # the wait itself has started
    assert (await instances.row(iid)).status is InstanceStatus.RUNNING

    assert await instances.send_custom(iid, "approval", APPROVE) is False  # running: no wake
    # Only the push can end the wait well within this bound (the polls come after 60 s).
    await exited(launch, ExitCode.COMPLETED, timeout_s=20)

    assert (await instances.output(iid))["decision"] == "approved"
    assert whats(ledger) == ["submit", "grant"]
    [signal] = await custom_signals(instances, iid)
    assert signal.consumed_by_checkpoint_id == WAIT


async def test_signal_while_hibernating_wakes_and_is_consumed_once(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=300)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create(approval_input(ledger, 30))

    first = await instances.launch(iid, "approval.py")
    await exited(first, ExitCode.SUSPENDED)
    row = await instances.row(iid)
    assert row.status is InstanceStatus.SUSPENDED
    assert row.termination_reason is TerminationReason.WAITING
    assert row.waiting_signal_name == "approval"
    assert row.wake_at_ms is not None  # the timeout relaunches it otherwise
    assert WAIT not in await checkpoints(instances, iid)

    assert await instances.send_custom(iid, "approval", APPROVE) is True
    assert (await instances.row(iid)).status is InstanceStatus.PENDING

    second = await instances.launch(iid, "approval.py")  # the same attempt: a wake is no crash
    assert second.attempt == first.attempt
    await exited(second, ExitCode.COMPLETED)

    output = await instances.output(iid)
    assert output["decision"] == "approved" and output["by"] == "bob"
    assert whats(ledger) == ["submit", "grant"]  # the submit was replayed, not run again
    signals = await custom_signals(instances, iid)
    assert len(signals) == 1
    assert signals[0].consumed_at_ms is not None and signals[0].consumed_by_checkpoint_id == WAIT
    assert await custom_signals(instances, iid, include_consumed=False) == []


async def test_short_timeout_times_out_in_process(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create(approval_input(ledger, 0.5))  # under the 5 s threshold

    launch = await instances.launch(iid, "approval.py")
    await exited(launch, ExitCode.COMPLETED)

    output = await instances.output(iid)
    assert output["decision"] == "timed_out" and "by" not in output
    await assert_timed_out_and_a_later_signal_stays_queued(instances, iid, ledger)


async def test_timeout_while_hibernated_replays_as_timed_out(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=300)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create(approval_input(ledger, 1.0))

    first = await instances.launch(iid, "approval.py")
    await exited(first, ExitCode.SUSPENDED)
    row = await instances.row(iid)
    assert (row.status, row.termination_reason) == (InstanceStatus.SUSPENDED, TerminationReason.WAITING)
    assert row.wake_at_ms is not None
    stored_deadline = await checkpoints(instances, iid)
    assert WAIT_DEADLINE in stored_deadline and WAIT not in stored_deadline

    await until_past(row.wake_at_ms)
    await instances.wake(iid)  # what the wake scheduler does once wake_at is due
    second = await instances.launch(iid, "approval.py")
    await exited(second, ExitCode.COMPLETED)

    output = await instances.output(iid)
    assert output["decision"] == "timed_out"
    await assert_timed_out_and_a_later_signal_stays_queued(instances, iid, ledger)


async def test_signal_after_the_deadline_while_hibernated_stays_queued(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=300)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create(approval_input(ledger, 1.0))
    first = await instances.launch(iid, "approval.py")
    await exited(first, ExitCode.SUSPENDED)
    row = await instances.row(iid)
    assert row.wake_at_ms is not None

    await until_past(row.wake_at_ms)  # the deadline has passed; the wake has not come yet
    await instances.send_custom(iid, "approval", {"approved": True, "by": "late"})
    if (await instances.row(iid)).status is InstanceStatus.SUSPENDED:
        await instances.wake(iid)
    second = await instances.launch(iid, "approval.py")
    await exited(second, ExitCode.COMPLETED)

    assert (await instances.output(iid))["decision"] == "timed_out"
    [late] = await custom_signals(instances, iid)
    assert late.consumed_at_ms is None


# ----------------------------------------------------------------------------- two waits


async def test_two_queued_signals_feed_two_waits_in_order(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"ledger": str(ledger)})
    await instances.send_custom(iid, "vote", {"n": 1})
    await instances.send_custom(iid, "vote", {"n": 2})

    launch = await instances.launch(iid, TWO_WAITS)
    await exited(launch, ExitCode.COMPLETED)

    assert await instances.output(iid) == [{"n": 1}, {"n": 2}]
    assert [(line["which"], line["payload"]) for line in read_ledger(ledger)] == [(1, {"n": 1}), (2, {"n": 2})]
    signals = await custom_signals(instances, iid)
    assert [json.loads(s.payload) for s in signals] == [{"n": 1}, {"n": 2}]  # oldest first
    assert [s.consumed_by_checkpoint_id for s in signals] == ["1:signal:vote", "3:signal:vote"]


async def test_two_waits_across_hibernations_consume_each_signal_once(make_instances: Any, tmp_path: Path) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=300)
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"ledger": str(ledger)})  # no timeout: each wait hibernates

    first = await instances.launch(iid, TWO_WAITS)
    await exited(first, ExitCode.SUSPENDED)
    assert (await instances.row(iid)).waiting_signal_name == "vote"
    assert await instances.send_custom(iid, "vote", {"n": 1}) is True

    second = await instances.launch(iid, TWO_WAITS)
    await exited(second, ExitCode.SUSPENDED)  # took the first, hibernated on the second wait
    row = await instances.row(iid)
    assert (row.status, row.termination_reason) == (InstanceStatus.SUSPENDED, TerminationReason.WAITING)
    assert row.wake_at_ms is None  # no timeout: only a signal wakes it
    assert await instances.send_custom(iid, "vote", {"n": 2}) is True
    assert await instances.send_custom(iid, "vote", {"n": 3}) is False  # already woken

    third = await instances.launch(iid, TWO_WAITS)
    await exited(third, ExitCode.COMPLETED)

    assert await instances.output(iid) == [{"n": 1}, {"n": 2}]
    assert [(line["which"], line["payload"]) for line in read_ledger(ledger)] == [(1, {"n": 1}), (2, {"n": 2})]
    signals = await custom_signals(instances, iid)
    assert [json.loads(s.payload)["n"] for s in signals] == [1, 2, 3]
    assert [s.consumed_by_checkpoint_id for s in signals] == ["1:signal:vote", "3:signal:vote", None]
    assert [json.loads(s.payload)["n"] for s in await custom_signals(instances, iid, include_consumed=False)] == [3]
