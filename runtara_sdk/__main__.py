"""The launcher: ``python -m runtara_sdk`` runs one launch of one instance and exits.

Configured only by the environment's RUNTARA_* variables (see ``InstanceSettings``); exits
with an ``ExitCode``. It exits without unwinding parked workflow code, so hibernation and
pause end the process as a crash would: only cancellation and completion run ``finally``.
"""

from __future__ import annotations

import signal
import sys

_stop_requested = False


def _stop_during_start_up(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


# Before the heavy imports (~0.3 s): a stop that arrives meanwhile becomes a cancel, not a kill.
signal.signal(signal.SIGTERM, _stop_during_start_up)

import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from runtara_sdk.exit_codes import ExitCode  # noqa: E402
from runtara_sdk.runner import run_launch  # noqa: E402
from runtara_sdk.settings import InstanceSettings  # noqa: E402


def main() -> int:
    try:
        settings = InstanceSettings()  # type: ignore[call-arg]
    except ValidationError as error:
        problems = "; ".join(
            f"RUNTARA_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in error.errors()
        )
        sys.stderr.write(f"runtara_sdk: this process must be launched by the environment ({problems})\n")
        return ExitCode.CONFIG_ERROR
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("RUNTARA_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s [{settings.instance_id}#{settings.attempt}] %(name)s: %(message)s",
    )
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic narrates every handshake at INFO
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Not asyncio.run: that would cancel the parked workflow and run its finally blocks.
    try:
        return loop.run_until_complete(run_launch(settings, stop_requested=lambda: _stop_requested))
    except BaseException:  # a bug or an escape: report nothing false, let the database decide
        logging.getLogger("runtara_sdk").exception("the launch ended unexpectedly")
        return ExitCode.LOST


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
