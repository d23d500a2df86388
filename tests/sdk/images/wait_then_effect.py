from runtara_sdk import step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def effect(payload, ledger: str) -> None:
    import asyncio
    await asyncio.sleep(3)  # e.g. a payment API call
    append_ledger(ledger, "effect", payload=payload)


@workflow
async def main(ctx, input: dict) -> dict:
    got = await ctx.wait_signal("go")          # no timeout: hibernates at once
    await effect(got, input["ledger"])
    return {"got": got}
