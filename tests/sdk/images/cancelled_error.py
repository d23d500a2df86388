import asyncio
from runtara_sdk import workflow


@workflow
async def main(ctx, input: dict) -> dict:
    waiter = asyncio.ensure_future(ctx.wait_signal("go", timeout_s=60))
    await asyncio.sleep(0.2)
    waiter.cancel()          # e.g. a race between two waits, the loser cancelled
    await waiter             # CancelledError escapes the workflow
    return {}
