"""Bench image for ``bench/lifecycle.py``: the empty workflow.

It does nothing but say when its module ran (interpreter start-up and the SDK's imports done,
just before the launch connects to core) and when its body started (registered), both as
epoch milliseconds, so the parent can split a cold start without instrumenting the SDK.
"""

import time

from runtara_sdk import workflow

LOADED_AT_MS = time.time_ns() // 1_000_000


@workflow
async def main(ctx, input):
    return {"loaded_at_ms": LOADED_AT_MS, "body_at_ms": time.time_ns() // 1_000_000}
