"""Changing the order of durable calls between launches fails the instance loudly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runtara_core.persistence import InstanceStatus
from runtara_sdk.exit_codes import ExitCode
from tests.sdk.conftest import Instances

IMAGE = """
import asyncio
from runtara_sdk import step, workflow

@step
async def reserve(): return "r"

@step
async def charge(): return "c"

@workflow
async def main(ctx, input):
    first = await {first}()
    await asyncio.sleep(30)  # killed here in the test
    second = await {second}()
    return [first, second]
"""


def deploy(image: Path, source: str) -> None:
    """Replace the image's code (dropping bytecode cached for the old one: same size, same second)."""
    image.write_text(source)
    shutil.rmtree(image.parent / "__pycache__", ignore_errors=True)


async def test_swapping_two_steps_between_attempts_fails_with_non_determinism_naming_both_ids(
    instances: Instances, tmp_path: Path
) -> None:
    image = tmp_path / "swapped.py"
    image.write_text(IMAGE.format(first="reserve", second="charge"))
    iid = await instances.create({})
    launch = await instances.launch(iid, image)
    await instances.wait_for_checkpoint(iid, "1:step:reserve")
    launch.kill()
    await launch.wait()

    deploy(image, IMAGE.format(first="charge", second="reserve"))  # a deploy changed the order
    await instances.after_crash(iid)
    again = await instances.launch(iid, image)
    assert await again.wait() == ExitCode.FAILED, again.stderr
    row = await instances.row(iid)
    assert row.status is InstanceStatus.FAILED
    error = json.loads(row.error or "{}")
    assert error["type"] == "runtara_sdk.errors.NonDeterminismError"
    assert "'1:step:charge'" in error["message"] and "'1:step:reserve'" in error["message"]
    saved = [c.checkpoint_id for c in (await instances.core.persistence.list_checkpoints(iid)).items]
    assert saved == ["1:step:reserve"]  # nothing was mixed in


async def test_a_workflow_that_swallows_the_non_determinism_error_still_fails(instances: Instances, tmp_path: Path) -> None:
    image = tmp_path / "swallowing.py"
    body = (
        "from runtara_sdk import workflow\n"
        "@workflow\n"
        "async def main(ctx, input):\n"
        "    try:\n"
        "        await ctx.step({name!r}, lambda: 1)\n"
        "    except Exception:\n"
        "        pass\n"
        "    if ctx.attempt == 1:\n"
        "        import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return 'fine'\n"
    )
    image.write_text(body.format(name="a"))
    iid = await instances.create({})
    assert await instances.run(iid, image) == -9
    deploy(image, body.format(name="b"))
    await instances.after_crash(iid)
    assert await instances.run(iid, image) == ExitCode.FAILED
    assert "NonDeterminismError" in ((await instances.row(iid)).error or "")
