"""Test-only image: cleanup that must run on cancellation (a signal or SIGTERM).

Entrypoint ``main``: ``work`` (a plain, non-cancellable step), then a durable sleep ``nap``,
then ``work`` again, all inside ``try/finally`` whose ``finally`` runs the ``cleanup`` step.
Entrypoint ``interruptible``: one ``@step(cancellable=True)`` body that sleeps long, inside
the same ``try/finally``.

Every body writes a ledger line when it starts and when it is done, so a test can act while
a step runs and then check what ran.

Input keys:
    ledger (str): side-effect ledger path,
    work_s (float, default 0): asyncio.sleep inside ``work``,
    nap_s (float, default 0): the durable sleep between the two ``work`` steps,
    cleanup_s (float, default 0): asyncio.sleep inside ``cleanup``,
    long_s (float, default 60): asyncio.sleep inside the cancellable step.
Output: "done".
"""

from __future__ import annotations

import asyncio

from runtara_sdk import Context, step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def work(ledger: str | None, delay_s: float) -> str:
    append_ledger(ledger, "work-start")
    await asyncio.sleep(delay_s)
    append_ledger(ledger, "work-done")
    return "worked"


@step
async def cleanup(ledger: str | None, delay_s: float) -> None:
    append_ledger(ledger, "cleanup-start")
    await asyncio.sleep(delay_s)
    append_ledger(ledger, "cleanup-done")


@step(cancellable=True)
async def long_call(ledger: str | None, delay_s: float) -> str:
    append_ledger(ledger, "long-start")
    try:
        await asyncio.sleep(delay_s)
        append_ledger(ledger, "long-done")
    finally:
        append_ledger(ledger, "long-finally")
    return "long"


@workflow
async def main(ctx: Context, input: dict) -> str:
    ledger = input.get("ledger")
    try:
        await work(ledger, float(input.get("work_s", 0)))
        await ctx.sleep("nap", seconds=float(input.get("nap_s", 0)))
        await work(ledger, float(input.get("work_s", 0)))
        return "done"
    finally:
        await cleanup(ledger, float(input.get("cleanup_s", 0)))


@workflow
async def interruptible(ctx: Context, input: dict) -> str:
    ledger = input.get("ledger")
    try:
        await long_call(ledger, float(input.get("long_s", 60)))
        return "done"
    finally:
        await cleanup(ledger, float(input.get("cleanup_s", 0)))
