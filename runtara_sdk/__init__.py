"""Runtara SDK: write durable workflows; each instance runs in its own process.

    from runtara_sdk import workflow, step

    @step(retries=3, backoff_s=1.0)
    async def charge(customer: str, amount: float) -> dict: ...

    @workflow
    async def main(ctx, order: dict) -> dict:
        receipt = await charge(order["customer"], order["amount"])
        await ctx.sleep("cool-off", seconds=3600)
        return {"receipt": receipt}

Names load on first use, so ``python -m runtara_sdk`` can take a stop request before the heavy
imports (QUIC, TLS) run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Cancelled": "runtara_sdk.errors",
    "NonDeterminismError": "runtara_sdk.errors",
    "NonRetryableError": "runtara_sdk.errors",
    "SerializationError": "runtara_sdk.errors",
    "SignalTimeout": "runtara_sdk.errors",
    "StepError": "runtara_sdk.errors",
    "StepTimeout": "runtara_sdk.errors",
    "Context": "runtara_sdk.context",
    "InstanceClient": "runtara_sdk.client",
    "ExitCode": "runtara_sdk.exit_codes",
    "StepInfo": "runtara_sdk.steps",
    "current_step": "runtara_sdk.steps",
    "step": "runtara_sdk.steps",
    "workflow": "runtara_sdk.workflow_entry",
}
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

if TYPE_CHECKING:
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
    from runtara_sdk.workflow_entry import workflow


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtara_sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
