"""Races image: a step, a durable sleep, a wait for the "approval" signal, a step that records it.

Lets a chaos race land a custom signal around the moment the sleep's wake relaunches the
instance (the sleep hibernates when it is longer than the hibernate threshold, and so does the
wait when nothing is queued yet).

Input: {"ledger": str | None, "sleep_s": float, "timeout_s": float}
Output: {"got": the signal's payload}.
"""

from runtara_sdk import step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def before(ledger: str | None) -> None:
    append_ledger(ledger, "before")


@step
async def record(payload: object, ledger: str | None) -> None:
    append_ledger(ledger, "record", payload=payload)


@workflow
async def main(ctx, input: dict) -> dict:
    ledger = input.get("ledger")
    await before(ledger)
    await ctx.sleep("nap", seconds=float(input.get("sleep_s", 1.5)))
    payload = await ctx.wait_signal("approval", timeout_s=float(input.get("timeout_s", 120)))
    await record(payload, ledger)
    return {"got": payload}
