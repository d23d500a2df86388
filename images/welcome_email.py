"""Welcome drip: send a welcome email, sleep durably, send a follow-up.

Shows a durable sleep: a short one stays in-process, a long one (past the core's hibernate
threshold, 5 s by default) saves its wake time and exits the process; the wake scheduler
relaunches it on time and replay skips the already-sent welcome.

Input keys:
    user (str), email (str, optional; default "<user>@example.com"),
    follow_up_after_s (float, default 2): the sleep between the two emails,
    ledger (str, optional): side-effect ledger path for tests,
    step_delay_s (float, default 0): asyncio.sleep inside each step body.
Output: {"user", "messages": [welcome message id, follow-up message id]}.
"""

from __future__ import annotations

import asyncio
import hashlib

from runtara_sdk import Context, current_step, step, workflow
from runtara_sdk.ledger import append_ledger


async def _send(kind: str, to: str, subject: str, ledger: str | None, delay_s: float) -> str:
    """Simulated mail provider call; the message id comes from the step's idempotency key,
    which a real provider would also use to drop a duplicate send."""
    if delay_s:
        await asyncio.sleep(delay_s)
    key = current_step().idempotency_key
    message_id = f"msg_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    append_ledger(ledger, kind, message_id=message_id, to=to, subject=subject)
    return message_id


@step
async def send_welcome(user: str, to: str, ledger: str | None, delay_s: float) -> str:
    return await _send("welcome", to, f"Welcome aboard, {user}!", ledger, delay_s)


@step
async def send_follow_up(user: str, to: str, ledger: str | None, delay_s: float) -> str:
    return await _send("follow_up", to, f"{user}, how is it going so far?", ledger, delay_s)


@workflow
async def main(ctx: Context, input: dict) -> dict:
    user: str = input["user"]
    to: str = input.get("email") or f"{user}@example.com"
    ledger: str | None = input.get("ledger")
    delay = float(input.get("step_delay_s", 0))

    welcome_id = await send_welcome(user, to, ledger, delay)
    wait_s = float(input.get("follow_up_after_s", 2))
    ctx.log.info("welcome sent to %s; follow-up in %.1f s", to, wait_s)
    await ctx.sleep("follow-up-delay", seconds=wait_s)
    follow_up_id = await send_follow_up(user, to, ledger, delay)
    return {"user": user, "messages": [welcome_id, follow_up_id]}
