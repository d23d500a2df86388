"""Long sleeps hibernate: the process exits suspended; a relaunch sleeps only the remainder."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from runtara_core.persistence import InstanceStatus, TerminationReason
from runtara_core.persistence.rules import wall_clock_ms
from runtara_sdk.exit_codes import ExitCode
from tests.sdk.conftest import Instances, read_ledger

THRESHOLD_MS = 1000
SLEEP_S = 8.0
"""Long enough that a cold relaunch on a loaded machine (seconds, while the other test worker
runs environment tests) still starts well before the wake time."""


async def sleeping(make_instances: Any, ledger: Path) -> tuple[Instances, str, int]:
    """A welcome_email instance that has hibernated in its follow-up sleep; returns wake_at."""
    instances: Instances = await make_instances(hibernate_after_ms=THRESHOLD_MS)
    iid = await instances.create({"user": "ada", "follow_up_after_s": SLEEP_S, "ledger": str(ledger)})
    launch = await instances.launch(iid, "welcome_email.py")
    assert await launch.wait() == ExitCode.SUSPENDED, launch.stderr
    row = await instances.row(iid)
    assert (row.status, row.termination_reason) == (InstanceStatus.SUSPENDED, TerminationReason.SLEEPING)
    assert row.wake_at_ms is not None
    return instances, iid, row.wake_at_ms


async def test_a_long_sleep_exits_suspended_and_an_early_relaunch_keeps_the_wake_time(
    make_instances: Any, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    instances, iid, wake_at = await sleeping(make_instances, ledger)
    assert [line["what"] for line in read_ledger(ledger)] == ["welcome"]

    # Relaunched early (a resume, say) with more than the threshold left: it hibernates again
    # on the same wake time, it does not start the sleep over.
    assert wake_at - wall_clock_ms() > THRESHOLD_MS + 300
    await instances.wake(iid)
    again = await instances.launch(iid, "welcome_email.py")
    assert await again.wait() == ExitCode.SUSPENDED, again.stderr
    assert (await instances.row(iid)).wake_at_ms == wake_at

    # Relaunched with less than the threshold left: it sleeps the remainder in-process and
    # finishes no earlier than the wake time.
    await asyncio.sleep(max(0.0, (wake_at - wall_clock_ms() - THRESHOLD_MS / 2) / 1000))
    await instances.wake(iid)
    assert await instances.run(iid, "welcome_email.py") == ExitCode.COMPLETED
    row = await instances.row(iid)
    assert row.finished_at_ms is not None and row.finished_at_ms >= wake_at
    assert [line["what"] for line in read_ledger(ledger)] == ["welcome", "follow_up"]
    assert len((await instances.output(iid))["messages"]) == 2


async def test_a_relaunch_after_the_wake_time_continues_at_once(make_instances: Any, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    instances, iid, wake_at = await sleeping(make_instances, ledger)
    await asyncio.sleep(max(0.0, (wake_at - wall_clock_ms()) / 1000) + 0.1)
    claimed = await instances.core.persistence.claim_due_wakeups(wall_clock_ms())
    assert [r.instance_id for r in claimed] == [iid]  # what the wake scheduler does
    started = time.monotonic()
    assert await instances.run(iid, "welcome_email.py") == ExitCode.COMPLETED
    # The sleep is over: the launch does not sleep again (it would take SLEEP_S more).
    assert time.monotonic() - started < SLEEP_S
    assert [line["what"] for line in read_ledger(ledger)] == ["welcome", "follow_up"]
    events = [(e.type.value, e.subtype) for e in await instances.events(iid)]
    assert ("suspended", "exiting") in events  # the hibernated launch said it was leaving
