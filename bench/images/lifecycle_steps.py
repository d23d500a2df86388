"""Bench image for ``bench/lifecycle.py``: N empty checkpointed steps, after an optional sleep.

Input: ``{"n": int, "sleep_s": float | None, "sleep_until_ms": int | None}``
- ``sleep_s``: a durable sleep first (in process when shorter than RUNTARA_HIBERNATE_AFTER_MS).
- ``sleep_until_ms``: a durable sleep until that epoch time first (the wake-lateness phase).
Output: ``{"steps": n, "woke_at_ms": epoch ms right after the sleep, or None}``.

(``bench/images/steps.py`` belongs to ``bench/sdk.py``: it instruments the SDK's client and
writes a measurement file per launch, which this bench does not want in its numbers.)
"""

import time

from runtara_sdk import step, workflow


@step
async def empty() -> int:
    return 1


@workflow
async def main(ctx, input: dict) -> dict:
    woke_at_ms = None
    if input.get("sleep_s"):
        await ctx.sleep("nap", seconds=float(input["sleep_s"]))
        woke_at_ms = time.time_ns() // 1_000_000
    if input.get("sleep_until_ms"):
        await ctx.sleep_until("nap-until", input["sleep_until_ms"] / 1000)
        woke_at_ms = time.time_ns() // 1_000_000
    total = 0
    for _ in range(int(input.get("n", 10))):
        total += await empty()
    return {"steps": total, "woke_at_ms": woke_at_ms}
