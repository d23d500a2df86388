import sys
from runtara_sdk import workflow


def helper():
    sys.exit(0)   # e.g. a CLI-ish library helper called from workflow code


@workflow
async def main(ctx, input: dict) -> dict:
    helper()
    return {}
