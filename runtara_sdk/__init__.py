"""Runtara SDK: write durable workflows; each instance runs in its own process.

    from runtara_sdk import workflow, step

    @step(retries=3, backoff_s=1.0)
    async def charge(customer: str, amount: float) -> dict: ...

    @workflow
    async def main(ctx, order: dict) -> dict:
        receipt = await charge(order["customer"], order["amount"])
        await ctx.sleep("cool-off", seconds=3600)
        return {"receipt": receipt}
"""

from runtara_sdk.client import InstanceClient
from runtara_sdk.context import Context
from runtara_sdk.errors import (
    Cancelled,
    NonDeterminismError,
    NonRetryableError,
    SerializationError,
    SignalTimeout,
    StepError,
    StepTimeout,
)
from runtara_sdk.exit_codes import ExitCode
from runtara_sdk.steps import StepInfo, current_step, step
from runtara_sdk.workflow import workflow

__all__ = [
    "Cancelled",
    "Context",
    "ExitCode",
    "InstanceClient",
    "NonDeterminismError",
    "NonRetryableError",
    "SerializationError",
    "SignalTimeout",
    "StepError",
    "StepInfo",
    "StepTimeout",
    "current_step",
    "step",
    "workflow",
]
