import asyncio
import time
from runtara_sdk import step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def fetch(ledger: str) -> float:
    append_ledger(ledger, "fetch", at=time.time())
    return time.time()


@workflow
async def main(ctx, input: dict) -> dict:
    if input["mode"] == "sleep_first":
        await asyncio.gather(ctx.sleep("cool-off", seconds=input["s"]), fetch(input["ledger"]))
    else:
        await asyncio.gather(ctx.sleep("a", seconds=input["s"]), ctx.sleep("b", seconds=2 * input["s"]))
    return {}
