"""Allocates (and touches) input["mib"] MiB in a step: for the memory limit."""

from runtara_sdk import NonRetryableError, step, workflow


@step
async def allocate(mib: int) -> int:
    try:
        block = bytearray(mib * 1024 * 1024)
    except MemoryError:
        raise NonRetryableError(f"could not allocate {mib} MiB") from None
    return len(block)


@workflow
async def main(ctx, input):
    return await allocate(int(input["mib"]))
