from runtara_sdk import workflow


@workflow
async def main(ctx, input: dict) -> dict:
    return {"blob": "x" * input["n"]}
