"""Returns the environment variables its process sees, and its process group and session."""

import os

from runtara_sdk import workflow


@workflow
async def main(ctx, input):
    return {
        "env": dict(os.environ),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "cwd": os.getcwd(),
    }
