"""Approval request: submit, wait durably for an "approval" signal, then grant/reject/escalate.

Shows `ctx.wait_signal` with a timeout (a long wait hibernates the process; the signal, or the
timeout, relaunches it), branching on the signal's payload, and cleanup on cancellation: a
cancel while the request is open runs the `withdraw` step, then lets `Cancelled` propagate.

Input keys:
    requester (str, default "alice"), resource (str, default "prod-db"),
    reason (str, optional),
    timeout_s (float, default 30): how long to wait for the signal before escalating,
    ledger (str, optional): side-effect ledger path for tests.
Signal "approval" payload: {"approved": true, "by": "bob"} or {"approved": false, "by"?: ...}.
Output: {"request_id", "decision": "approved" | "rejected" | "timed_out", "by"?: str}.
"""

from __future__ import annotations

import hashlib

from runtara_sdk import Cancelled, Context, SignalTimeout, current_step, step, workflow
from runtara_sdk.ledger import append_ledger


@step
async def submit_request(requester: str, resource: str, reason: str, ledger: str | None) -> str:
    """Open the request in the (simulated) ticketing system; the id is stable across relaunches."""
    key = current_step().idempotency_key
    request_id = f"req_{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    append_ledger(ledger, "submit", request_id=request_id, requester=requester,
                  resource=resource, reason=reason)
    return request_id


@step
async def grant(request_id: str, resource: str, by: str | None, ledger: str | None) -> None:
    """Grant access to the resource."""
    append_ledger(ledger, "grant", request_id=request_id, resource=resource, by=by)


@step
async def reject(request_id: str, by: str | None, ledger: str | None) -> None:
    """Tell the requester no."""
    append_ledger(ledger, "reject", request_id=request_id, by=by)


@step
async def escalate(request_id: str, waited_s: float, ledger: str | None) -> None:
    """Nobody answered in time: page the approvers' manager."""
    append_ledger(ledger, "escalate", request_id=request_id, waited_s=waited_s)


@step
async def withdraw(request_id: str, ledger: str | None) -> None:
    """Cleanup on cancel: close the open request so no approver acts on a dead workflow."""
    append_ledger(ledger, "withdraw", request_id=request_id)


@workflow
async def main(ctx: Context, input: dict) -> dict:
    ledger: str | None = input.get("ledger")
    resource: str = input.get("resource", "prod-db")
    timeout_s = float(input.get("timeout_s", 30))

    request_id = await submit_request(
        input.get("requester", "alice"), resource, input.get("reason", ""), ledger)
    ctx.log.info("request %s submitted; waiting up to %.0f s for approval", request_id, timeout_s)
    try:
        try:
            payload = await ctx.wait_signal("approval", timeout_s=timeout_s)
        except SignalTimeout:
            await escalate(request_id, timeout_s, ledger)
            return {"request_id": request_id, "decision": "timed_out"}

        if not isinstance(payload, dict):
            payload = {"approved": bool(payload)}
        by = payload.get("by")
        if payload.get("approved"):
            await grant(request_id, resource, by, ledger)
            decision = "approved"
        else:
            await reject(request_id, by, ledger)
            decision = "rejected"
    except Cancelled:
        ctx.log.info("cancelled while request %s was open; withdrawing it", request_id)
        await withdraw(request_id, ledger)
        raise

    result: dict = {"request_id": request_id, "decision": decision}
    if by is not None:
        result["by"] = str(by)
    return result
