"""Two gather branches, each two durable calls of the same step function, then a sleep."""
import asyncio
from runtara_sdk import step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def fetch(who: str, page: int, delay: float, ledger: str) -> str:
    await asyncio.sleep(delay)
    append_ledger(ledger, "fetch", who=who, page=page)
    return f"{who}-{page}"


async def worker(who: str, delay: float, ledger: str) -> list:
    a = await fetch(who, 0, delay, ledger)
    b = await fetch(who, 1, delay, ledger)
    return [a, b]


@workflow
async def main(ctx, input: dict) -> dict:
    pages = await asyncio.gather(worker("x", 0.4, input["ledger"]), worker("y", 0.1, input["ledger"]))
    await ctx.sleep("rest", seconds=input["rest_s"])
    return {"pages": pages}
