"""Fan-out / fan-in: ask every supplier for a quote in parallel, then pick the best one.

A directory image (entrypoint `fanout:main`): the pricing logic lives in the sibling module
`pricing.py`. The quote steps run concurrently under `asyncio.gather`, each under an explicit
step name, so replay matches them by name whatever order they finished in. `choose_best` is a
plain `def` step (the SDK runs it in a thread).

Input keys:
    suppliers (list[str], default five names), sku (str, default "widget-42"),
    quantity (int, default 100),
    step_delay_s (float, default 0): asyncio.sleep inside quote step i's body is
        step_delay_s * (i + 1), so suppliers answer one after another (slowest last),
    ledger (str, optional): side-effect ledger path for tests.
Output: {"quotes": [quote per supplier, in input order], "best": quote}; a quote is
    {"quote_id", "supplier", "sku", "quantity", "unit_price", "lead_days", "total"}.
"""

from __future__ import annotations

import asyncio
import hashlib

from pricing import DEFAULT_SUPPLIERS, best, quote
from runtara_sdk import Context, current_step, step, workflow
from runtara_sdk.ledger import append_ledger


async def request_quote(
    supplier: str, sku: str, quantity: int, ledger: str | None, delay_s: float
) -> dict:
    """One supplier's (simulated) quoting API call."""
    if delay_s:
        await asyncio.sleep(delay_s)
    key = current_step().idempotency_key
    q = {"quote_id": f"q_{hashlib.sha256(key.encode()).hexdigest()[:12]}",
         **quote(supplier, sku, quantity).to_dict()}
    append_ledger(ledger, "quote", supplier=supplier, quote_id=q["quote_id"], total=q["total"])
    return q


@step
def choose_best(quotes: list[dict], ledger: str | None) -> dict:
    """Fan-in: a step too, so the decision is recorded once and replayed, not recomputed."""
    winner = best(quotes)
    append_ledger(ledger, "choose_best", supplier=winner["supplier"], quote_id=winner["quote_id"])
    return winner


@workflow
async def main(ctx: Context, input: dict) -> dict:
    suppliers: list[str] = list(input.get("suppliers") or DEFAULT_SUPPLIERS)
    sku: str = input.get("sku", "widget-42")
    quantity = int(input.get("quantity", 100))
    ledger: str | None = input.get("ledger")
    delay = float(input.get("step_delay_s", 0))

    ctx.log.info("requesting %d quotes for %d x %s", len(suppliers), quantity, sku)
    quotes = await asyncio.gather(*(
        ctx.step(f"quote-{i}-{name}", request_quote, name, sku, quantity, ledger, delay * (i + 1))
        for i, name in enumerate(suppliers)
    ))
    winner = await choose_best(list(quotes), ledger)
    return {"quotes": list(quotes), "best": winner}
