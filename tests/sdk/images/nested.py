"""ctx.step called inside another step's body."""
import asyncio
from runtara_sdk import workflow


def inner() -> str:
    return "inner"


def after() -> str:
    return "after"


@workflow
async def main(ctx, input: dict) -> dict:
    async def outer() -> str:
        await asyncio.sleep(input.get("outer_delay_s", 0))
        return "outer+" + await ctx.step("inner", inner)

    a = await ctx.step("outer", outer)
    await ctx.sleep("rest", seconds=input["rest_s"])
    b = await ctx.step("after", after)
    return {"a": a, "b": b}
