"""Order fulfilment: charge card -> reserve stock -> ship, each a checkpointed step.

Shows memoized steps, transient-failure retries with backoff, a non-retryable failure, and ids
derived from each step's idempotency key, so a crashed-and-relaunched run returns the very same
ids (and a real payment provider would deduplicate the charge on the same key).

Input keys:
    order_id (str), customer (str), amount (float; negative = card declined, fails at once),
    items (list[str]),
    ledger (str, optional): side-effect ledger path for tests (one JSON line per step body run),
    reserve_failures (int, default 1): reserve_stock fails transiently on its first N tries in
        each launch; it has 3 retries, so 4 or more fails the instance,
    step_delay_s (float, default 0): asyncio.sleep inside each step body, so a test can kill
        the process mid-step,
    crash_in (str, optional): "charge_card" | "reserve_stock" | "ship_order": SIGKILL the
        process inside that step body (before its side effect) on launch attempt 1 only.
Output: {"order_id", "charge_id", "reservation_id", "shipment_id"}.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

from runtara_sdk import Context, NonRetryableError, current_step, step, workflow
from runtara_sdk.ledger import append_ledger


def _derive_id(prefix: str) -> str:
    """An id that is a pure function of the step's idempotency key (stable across relaunches)."""
    key = current_step().idempotency_key
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


async def _before_side_effect(delay_s: float, crash: bool) -> None:
    """Test knobs: widen the kill window, or die deterministically mid-step."""
    if delay_s:
        await asyncio.sleep(delay_s)
    if crash:
        os.kill(os.getpid(), signal.SIGKILL)


@step
async def charge_card(
    customer: str, amount: float, ledger: str | None, delay_s: float, crash: bool
) -> str:
    """Charge once; a declined card is final, retrying would not help."""
    await _before_side_effect(delay_s, crash)
    if amount < 0:
        raise NonRetryableError(f"card declined for {customer}: invalid amount {amount}")
    charge_id = _derive_id("ch")
    append_ledger(ledger, "charge", charge_id=charge_id, customer=customer, amount=amount)
    return charge_id


@step(retries=3, backoff_s=0.05)
async def reserve_stock(
    items: list[str], failures: int, ledger: str | None, delay_s: float, crash: bool
) -> str:
    """Inventory is flaky: the first `failures` tries fail, the retry policy absorbs them."""
    await _before_side_effect(delay_s, crash)
    if current_step().attempt <= failures:
        raise ConnectionError("inventory service unavailable (simulated)")
    reservation_id = _derive_id("rsv")
    append_ledger(ledger, "reserve", reservation_id=reservation_id, items=items)
    return reservation_id


@step
async def ship_order(
    order_id: str, reservation_id: str, ledger: str | None, delay_s: float, crash: bool
) -> str:
    """Hand the reserved items to the carrier."""
    await _before_side_effect(delay_s, crash)
    shipment_id = _derive_id("shp")
    append_ledger(ledger, "ship", shipment_id=shipment_id, order_id=order_id,
                  reservation_id=reservation_id)
    return shipment_id


@workflow
async def main(ctx: Context, input: dict) -> dict:
    ledger: str | None = input.get("ledger")
    delay = float(input.get("step_delay_s", 0))

    def crash(step_name: str) -> bool:
        return input.get("crash_in") == step_name and ctx.attempt == 1

    ctx.log.info("processing order %s (launch attempt %d)", input["order_id"], ctx.attempt)
    charge_id = await charge_card(
        input["customer"], float(input["amount"]), ledger, delay, crash("charge_card"))
    reservation_id = await reserve_stock(
        list(input.get("items", [])), int(input.get("reserve_failures", 1)), ledger, delay,
        crash("reserve_stock"))
    shipment_id = await ship_order(
        input["order_id"], reservation_id, ledger, delay, crash("ship_order"))
    return {
        "order_id": input["order_id"],
        "charge_id": charge_id,
        "reservation_id": reservation_id,
        "shipment_id": shipment_id,
    }
