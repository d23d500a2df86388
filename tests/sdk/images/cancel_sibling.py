import asyncio
from runtara_sdk import Cancelled, step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def slow(ledger: str) -> None:
    await asyncio.sleep(1.0)
    append_ledger(ledger, "slow")


@step
async def charge(ledger: str) -> None:
    append_ledger(ledger, "charge")   # must not happen after a cancel


@step
async def cleanup(ledger: str) -> None:
    await asyncio.sleep(1.5)
    append_ledger(ledger, "cleanup")


async def payer(ledger: str) -> None:
    await slow(ledger)
    await charge(ledger)


@workflow
async def main(ctx, input: dict) -> dict:
    ledger = input["ledger"]
    try:
        await asyncio.gather(payer(ledger), ctx.sleep("nap", seconds=60))
    except Cancelled:
        await cleanup(ledger)
        raise
    return {}
