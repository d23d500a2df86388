"""Returns the environment variables its process sees, its process group and session, and
what the C library and tempfile made of TZ and TMPDIR."""

import os
import tempfile
import time

from runtara_sdk import workflow


@workflow
async def main(ctx, input):
    return {
        "env": dict(os.environ),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "cwd": os.getcwd(),
        "tzname": list(time.tzname),
        "tempdir": tempfile.gettempdir(),
    }
