"""Blocks forever while being imported (e.g. a module-level network call that hangs)."""
import time
time.sleep(3600)
from runtara_sdk import workflow

@workflow
async def main(ctx, input):
    return 1
