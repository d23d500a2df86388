"""Waits for the signal "go" (hibernating while it waits long), then returns its payload."""

from runtara_sdk import workflow


@workflow
async def main(ctx, input):
    payload = await ctx.wait_signal("go", timeout_s=input.get("timeout_s") if input else None)
    return {"got": payload}
