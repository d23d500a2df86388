"""The smallest workflow: returns its input (start-up and lifecycle cost, nothing else)."""

from runtara_sdk import workflow


@workflow
async def main(ctx, input):
    return input
