"""Test-only image: two waits for signals of the same name, each delivery recorded by a step.

Input keys:
    timeout_s (float, optional): each wait's timeout (default: no timeout),
    ledger (str, optional): side-effect ledger path.
Output: [first payload, second payload].
"""

from __future__ import annotations

from typing import Any

from runtara_sdk import Context, step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def record(which: int, payload: Any, ledger: str | None) -> None:
    append_ledger(ledger, "record", which=which, payload=payload)


@workflow
async def main(ctx: Context, input: dict) -> list:
    ledger: str | None = input.get("ledger")
    timeout_s = input.get("timeout_s")
    first = await ctx.wait_signal("vote", timeout_s=timeout_s)
    await record(1, first, ledger)
    second = await ctx.wait_signal("vote", timeout_s=timeout_s)
    await record(2, second, ledger)
    return [first, second]
