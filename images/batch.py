"""Batch processing: one checkpointed step per item, named explicitly with `ctx.step`.

Shows steps in a loop under explicit names (`item-0`, `item-1`, ...): after a crash, pause or
resume, replay skips every item already done and continues with the next one.

Input keys:
    items (int | list, default 10): a count (the items are 0..n-1) or a list of JSON values,
    item_delay_s (float, default 0.0): asyncio.sleep inside each item's step body, so a test
        can pause or kill the process mid-batch,
    crash_at (int, optional): SIGKILL the process inside item `crash_at` (before its side
        effect) on launch attempt 1 only,
    ledger (str, optional): side-effect ledger path for tests.
Output: {"processed": n, "checksum": str}: the checksum is a sha256 prefix over the items'
    digests in order, a pure function of the items.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
from typing import Any

from runtara_sdk import Context, workflow
from runtara_sdk.ledger import append_ledger


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


async def process_item(
    index: int, item: Any, ledger: str | None, delay_s: float, crash: bool
) -> str:
    """Simulated per-item work; returns the item's digest (its "result")."""
    if delay_s:
        await asyncio.sleep(delay_s)
    if crash:
        os.kill(os.getpid(), signal.SIGKILL)
    digest = _digest(item)
    append_ledger(ledger, "process_item", index=index, digest=digest)
    return digest


@workflow
async def main(ctx: Context, input: dict) -> dict:
    raw = input.get("items", 10)
    items: list[Any] = list(range(raw)) if isinstance(raw, int) else list(raw)
    ledger: str | None = input.get("ledger")
    delay = float(input.get("item_delay_s", 0.0))
    crash_at = input.get("crash_at")

    ctx.log.info("processing %d items (launch attempt %d)", len(items), ctx.attempt)
    digests: list[str] = []
    for i, item in enumerate(items):
        crash = crash_at == i and ctx.attempt == 1
        digests.append(await ctx.step(f"item-{i}", process_item, i, item, ledger, delay, crash))

    checksum = hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    return {"processed": len(items), "checksum": checksum}
