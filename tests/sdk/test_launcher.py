"""The launcher (`python -m runtara_sdk`): images, inputs, outputs, exit codes, refusals."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from runtara_core.persistence import EventType, InstanceStatus
from runtara_sdk.exit_codes import ExitCode
from tests.sdk.conftest import Instances

TYPED = '''
from dataclasses import dataclass
from pydantic import BaseModel
from runtara_sdk import step, workflow, current_step

@dataclass
class Order:
    sku: str
    quantity: int

class Receipt(BaseModel):
    sku: str
    total: float

@dataclass
class Parcel:
    receipt: Receipt
    weight_kg: float

@step
async def pack(order: Order) -> Parcel:
    return Parcel(Receipt(sku=order.sku, total=order.quantity * 2.5), 1.5)

@workflow
async def main(ctx, order: Order):
    parcel = await pack(order)
    if ctx.attempt == 1:
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    assert isinstance(parcel, Parcel) and isinstance(parcel.receipt, Receipt), type(parcel)
    await ctx.custom_event("packed", {"sku": parcel.receipt.sku})
    ctx.log.info("packed %s", parcel.receipt.sku)
    return parcel
'''


async def test_typed_input_and_dataclass_and_pydantic_results_round_trip_through_a_replay(
    instances: Instances, tmp_path: Path
) -> None:
    image = tmp_path / "typed_order.py"
    image.write_text(TYPED)
    iid = await instances.create({"sku": "x-1", "quantity": 4})
    assert await instances.run(iid, image) == -9
    await instances.after_crash(iid)
    launch = await instances.launch(iid, image)
    assert await launch.wait() == ExitCode.COMPLETED, launch.stderr
    assert await instances.output(iid) == {"receipt": {"sku": "x-1", "total": 10.0}, "weight_kg": 1.5}
    custom = [e for e in await instances.events(iid) if e.type is EventType.CUSTOM]
    assert [(e.subtype, json.loads(e.payload or b"")) for e in custom] == [("packed", {"sku": "x-1"})]
    assert f"[{iid}#2]" in launch.stderr and "packed x-1" in launch.stderr  # log lines carry the instance


async def test_an_input_that_does_not_fit_the_declared_type_fails_with_a_clear_error(
    instances: Instances, tmp_path: Path
) -> None:
    image = tmp_path / "typed_input.py"
    image.write_text(TYPED)
    iid = await instances.create({"sku": "x-1"})
    assert await instances.run(iid, image) == ExitCode.FAILED
    error = json.loads((await instances.row(iid)).error or "{}")
    assert "input does not fit" in error["message"] and "quantity" in error["message"]


async def test_an_unserializable_step_result_fails_naming_the_step(instances: Instances, tmp_path: Path) -> None:
    image = tmp_path / "unserializable.py"
    image.write_text(
        "from runtara_sdk import step, workflow\n"
        "@step\n"
        "async def open_socket():\n"
        "    return object()\n"
        "@workflow\n"
        "async def main(ctx, input):\n"
        "    return await open_socket()\n"
    )
    iid = await instances.create(None)
    assert await instances.run(iid, image) == ExitCode.FAILED
    error = json.loads((await instances.row(iid)).error or "{}")
    assert error["type"] == "runtara_sdk.errors.SerializationError"
    assert "step 'open_socket'" in error["message"] and "object" in error["message"]


async def test_an_image_that_does_not_import_fails_the_instance_with_its_traceback(
    instances: Instances, tmp_path: Path
) -> None:
    image = tmp_path / "broken.py"
    image.write_text("def main(:\n")
    iid = await instances.create(None)
    assert await instances.run(iid, image) == ExitCode.FAILED
    row = await instances.row(iid)
    assert row.status is InstanceStatus.FAILED
    error = json.loads(row.error or "{}")
    assert error["type"] == "runtara_sdk.errors.ImageLoadError" and "SyntaxError" in error["message"]


async def test_a_directory_image_runs_its_module_function_entrypoint(instances: Instances) -> None:
    iid = await instances.create({"suppliers": ["acme", "globex"]})
    assert await instances.run(iid, "parallel", entrypoint="fanout:main") == ExitCode.COMPLETED
    output = await instances.output(iid)
    assert [q["supplier"] for q in output["quotes"]] == ["acme", "globex"]
    assert output["best"] in output["quotes"]


async def test_a_launch_with_a_wrong_token_changes_nothing_and_exits_lost(instances: Instances) -> None:
    iid = await instances.create({"user": "ada"})
    launch = await instances.launch(iid, "welcome_email.py", env={"RUNTARA_INSTANCE_TOKEN": "forged"})
    assert await launch.wait() == ExitCode.LOST
    assert "token is not valid" in launch.stderr
    assert (await instances.row(iid)).status is InstanceStatus.PENDING


async def test_a_stale_launch_is_refused_after_a_newer_attempt_exists(instances: Instances) -> None:
    iid = await instances.create({"user": "ada"})
    await instances.after_crash(iid)  # attempt 2 now; mint a token for attempt 1 by hand
    launch = await instances.launch(
        iid, "welcome_email.py", env={"RUNTARA_ATTEMPT": "1", "RUNTARA_INSTANCE_TOKEN": instances.core.token(iid, 1)}
    )
    assert await launch.wait() == ExitCode.LOST
    assert "earlier launch" in launch.stderr
    assert (await instances.row(iid)).status is InstanceStatus.PENDING


async def test_the_launcher_outside_an_environment_says_what_is_missing() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runtara_sdk", env={"PATH": os.environ.get("PATH", "")},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == ExitCode.CONFIG_ERROR
    assert b"RUNTARA_INSTANCE_ID" in stderr and b"launched by the environment" in stderr


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_launch_whose_core_stays_down_exits_lost_once_core_counts_as_unreachable(instances: Instances) -> None:
    """Connecting is retried like any op (test_core_restart), until RUNTARA_CORE_UNREACHABLE_EXIT_S."""
    iid = await instances.create(None)
    launch = await instances.launch(
        iid,
        "batch.py",
        env={"RUNTARA_SERVER_ADDR": "127.0.0.1:9", "RUNTARA_CONNECT_TIMEOUT_S": "1", "RUNTARA_CORE_UNREACHABLE_EXIT_S": "2"},
    )
    assert await launch.wait() == ExitCode.LOST
    assert "cannot run" in launch.stderr


async def test_a_heartbeat_keeps_a_quiet_instance_alive(instances: Instances, tmp_path: Path) -> None:
    image = tmp_path / "quiet.py"
    image.write_text(
        "import asyncio\n"
        "from runtara_sdk import workflow\n"
        "@workflow\n"
        "async def main(ctx, input):\n"
        "    await asyncio.sleep(1.5)  # no SDK call: only the background heartbeat speaks\n"
        "    return 'done'\n"
    )
    iid = await instances.create(None)
    launch = await instances.launch(iid, image, env={"RUNTARA_HEARTBEAT_INTERVAL_S": "0.2"})
    deadline = time.monotonic() + 30  # a cold start takes seconds on a loaded machine
    while (await instances.row(iid)).status is not InstanceStatus.RUNNING and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.4)
    first = (await instances.row(iid)).heartbeat_at_ms
    await asyncio.sleep(0.5)
    second = (await instances.row(iid)).heartbeat_at_ms
    assert await launch.wait() == ExitCode.COMPLETED
    assert first is not None and second is not None and second > first


async def test_sigterm_during_start_up_is_a_cancel_at_the_first_live_call(instances: Instances, tmp_path: Path) -> None:
    image = tmp_path / "slow_import.py"
    image.write_text(
        "import time\n"
        "from runtara_sdk import workflow\n"
        "time.sleep(1.0)  # a heavy import: the stop arrives meanwhile\n"
        "@workflow\n"
        "async def main(ctx, input):\n"
        "    await ctx.step('work', lambda: 'done')\n"
        "    return 'finished'\n"
    )
    iid = await instances.create(None)
    launch = await instances.launch(iid, image)
    await asyncio.sleep(0.6)
    launch.terminate()
    assert await launch.wait() == ExitCode.CANCELLED, launch.stderr
    saved = [c.checkpoint_id for c in (await instances.core.persistence.list_checkpoints(iid)).items]
    assert saved == ["1.cancelled:step:work"]  # the step never ran


async def test_log_lines_are_not_written_again_while_replaying(instances: Instances, tmp_path: Path) -> None:
    iid = await instances.create({"items": 3, "item_delay_s": 0.3})
    first = await instances.launch(iid, "batch.py")
    await instances.wait_for_checkpoint(iid, "2:step:item-1")
    first.kill()
    await first.wait()
    await instances.after_crash(iid)
    second = await instances.launch(iid, "batch.py")
    assert await second.wait() == ExitCode.COMPLETED
    assert "processing 3 items" in first.stderr
    assert "processing 3 items" not in second.stderr
