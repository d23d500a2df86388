"""Registers, then blocks the event loop: no heartbeat, no RPC (for the heartbeat timeout)."""

import time

from runtara_sdk import step, workflow


@step
async def block(seconds: float) -> None:
    time.sleep(seconds)  # deliberately blocking: the SDK's heartbeat cannot run


@workflow
async def main(ctx, input):
    await block(float(input.get("block_s", 60)))
    return "unreachable in the test"
