"""Step retries: recorded, bounded, and skipped for non-retryable errors."""

from __future__ import annotations

import json
from pathlib import Path

from runtara_core.persistence import EventType, InstanceStatus
from runtara_sdk.exit_codes import ExitCode
from tests.sdk.conftest import Instances, read_ledger

ORDER = {"order_id": "o-1", "customer": "ada", "amount": 10.0, "items": ["book"]}


async def retry_events(instances: Instances, iid: str) -> list[dict]:
    return [
        json.loads(e.payload or b"{}") for e in await instances.events(iid) if e.type is EventType.RETRY_ATTEMPT
    ]


async def test_a_step_failing_twice_then_succeeding_records_two_retry_attempts(
    instances: Instances, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({**ORDER, "reserve_failures": 2, "ledger": str(ledger)})
    assert await instances.run(iid, "order.py") == ExitCode.COMPLETED
    retries = await retry_events(instances, iid)
    assert [(r["checkpoint_id"], r["attempt"]) for r in retries] == [
        ("2:step:reserve_stock", 1),
        ("2:step:reserve_stock", 2),
    ]
    assert all("inventory service unavailable" in r["error"] for r in retries)
    reserve = [line for line in read_ledger(ledger) if line["what"] == "reserve"]
    assert [line["attempt"] for line in reserve] == [3]  # the third try succeeded, once


async def test_a_non_retryable_error_fails_the_instance_at_once(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({**ORDER, "amount": -1, "ledger": str(ledger)})
    assert await instances.run(iid, "order.py") == ExitCode.FAILED
    row = await instances.row(iid)
    assert row.status is InstanceStatus.FAILED
    error = json.loads(row.error or "{}")
    assert error["type"] == "runtara_sdk.errors.NonRetryableError"
    assert "card declined" in error["message"] and "Traceback" in error["traceback"]
    assert await retry_events(instances, iid) == []
    assert read_ledger(ledger) == []  # nothing after the charge ran


async def test_exhausting_retries_fails_the_instance_with_the_last_error(instances: Instances, tmp_path: Path) -> None:
    iid = await instances.create({**ORDER, "reserve_failures": 10})
    assert await instances.run(iid, "order.py") == ExitCode.FAILED
    assert [r["attempt"] for r in await retry_events(instances, iid)] == [1, 2, 3]  # retries=3
    error = json.loads((await instances.row(iid)).error or "{}")
    assert error["type"] == "builtins.ConnectionError"
    assert error["message"] == "inventory service unavailable (simulated)"


async def test_a_failed_step_is_not_run_again_on_replay(instances: Instances, tmp_path: Path) -> None:
    """A step whose retries ran out is recorded as failed: a relaunch raises the recorded error
    (same type) without running its body again."""
    image = tmp_path / "recorded_failure.py"
    image.write_text(
        "from runtara_sdk import step, workflow\n"
        "from runtara_sdk.ledger import append_ledger\n"
        "import os, signal\n"
        "@step\n"
        "async def flaky(ledger):\n"
        "    append_ledger(ledger, 'flaky')\n"
        "    raise KeyError('gone')\n"
        "@workflow\n"
        "async def main(ctx, input):\n"
        "    try:\n"
        "        await flaky(input['ledger'])\n"
        "    except KeyError as error:\n"
        "        caught = repr(error)\n"
        "    await ctx.step('after', lambda: None)\n"
        "    if ctx.attempt == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return caught\n"
    )
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"ledger": str(ledger)})
    assert await instances.run(iid, image) == -9
    await instances.after_crash(iid)
    assert await instances.run(iid, image) == ExitCode.COMPLETED
    assert await instances.output(iid) == "KeyError('gone')"
    assert len(read_ledger(ledger)) == 1
