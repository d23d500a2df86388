"""N checkpointed steps, each appending to a side-effect ledger and optionally slow.

Input: {"n": int, "ledger": str | None, "step_s": float, "crash_at": int | None,
        "crash_marker": str | None, "sleep_s": float | None}
- crash_at: SIGKILL the process inside step crash_at (before its ledger line) while the file
  crash_marker exists (no marker given: on launch attempt 1 only).
- sleep_s: a durable sleep before the steps (hibernates when long).
- sleep_until_ms: a durable sleep until that epoch time, before the steps.
Output: {"results": [...], "woke_at_ms": epoch ms after the sleep}.
"""

import asyncio
import os
import signal
import time

from runtara_sdk import step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def work(i: int, ledger: str | None, step_s: float, crash: bool) -> int:
    if step_s:
        await asyncio.sleep(step_s)
    if crash:
        os.kill(os.getpid(), signal.SIGKILL)
    append_ledger(ledger, "work", i=i)
    return i * i


@workflow
async def main(ctx, input: dict) -> dict:
    n = int(input.get("n", 10))
    ledger = input.get("ledger")
    step_s = float(input.get("step_s", 0))
    crash_at = input.get("crash_at")
    marker = input.get("crash_marker")
    woke_at_ms = None
    if input.get("sleep_s"):
        await ctx.sleep("nap", seconds=float(input["sleep_s"]))
        woke_at_ms = time.time_ns() // 1_000_000
    if input.get("sleep_until_ms"):
        await ctx.sleep_until("nap-until", input["sleep_until_ms"] / 1000)
        woke_at_ms = time.time_ns() // 1_000_000
    results = []
    for i in range(n):
        crash = crash_at == i and (os.path.exists(marker) if marker else ctx.attempt == 1)
        results.append(await work(i, ledger, step_s, crash))
    return {"results": results, "woke_at_ms": woke_at_ms}
