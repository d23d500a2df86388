"""A core restart mid-run: the instance reconnects, registers again and finishes; no step twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runtara_core.server import CoreServer
from runtara_sdk.exit_codes import ExitCode
from tests.sdk.conftest import Instances, read_ledger


async def test_an_instance_rides_through_a_core_restart(instances: Instances, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"items": 6, "item_delay_s": 0.3, "ledger": str(ledger)})
    launch = await instances.launch(iid, "batch.py")
    await instances.wait_for_checkpoint(iid, "2:step:item-1")

    core = instances.core
    settings = core.server.settings.model_copy(update={"core_addr": f"127.0.0.1:{core.port}"})
    await core.server.stop(grace_s=0.5)
    await asyncio.sleep(0.5)  # the instance's calls fail meanwhile and are sent again
    restarted = CoreServer(settings, core.persistence, clock=core.clock)
    await restarted.start()
    core.server = restarted  # the fixture stops this one

    assert await launch.wait() == ExitCode.COMPLETED, launch.stderr
    assert (await instances.output(iid))["processed"] == 6
    step_ids = [line["step_id"] for line in read_ledger(ledger)]
    assert len(step_ids) == len(set(step_ids)) == 6


async def test_a_launch_whose_core_is_down_at_start_waits_for_it(instances: Instances, tmp_path: Path) -> None:
    """Found by the database-faults chaos scenario (SQLite, seed 3): an environment SIGKILLed
    while a launch it had just forked was connecting. The launch gave up after one connect
    timeout (10 s), though the restarted core was back long before, and so lost an attempt;
    every later op keeps trying for RUNTARA_CORE_UNREACHABLE_EXIT_S, and so must the first."""
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({"items": 3, "ledger": str(ledger)})
    core = instances.core
    settings = core.server.settings.model_copy(update={"core_addr": f"127.0.0.1:{core.port}"})
    await core.server.stop(grace_s=0.5)
    launch = await instances.launch(
        iid, "batch.py", env={"RUNTARA_CONNECT_TIMEOUT_S": "0.5", "RUNTARA_CORE_UNREACHABLE_EXIT_S": "30"}
    )
    await asyncio.sleep(2.0)  # several connect timeouts pass while the core is down
    restarted = CoreServer(settings, core.persistence, clock=core.clock)
    await restarted.start()
    core.server = restarted  # the fixture stops this one

    assert await launch.wait() == ExitCode.COMPLETED, launch.stderr
    assert (await instances.output(iid))["processed"] == 3
