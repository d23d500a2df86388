"""The body of an instance process, the same whichever way it was started: a cold
``python -m runtara_sdk`` or a fork of the environment's pre-forked launcher.

Configured only by the environment's RUNTARA_* variables (see ``InstanceSettings``); ends with
an ``ExitCode``. It exits without unwinding parked workflow code, so hibernation and pause end
the process as a crash would: only cancellation and completion run ``finally``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from pydantic import ValidationError

from runtara_sdk.exit_codes import ExitCode
from runtara_sdk.runner import run_launch
from runtara_sdk.settings import InstanceSettings


class EarlyStop:
    """A SIGTERM that arrives before the event loop exists becomes a cancel, not a kill."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.requested = True


def run_instance_process(stop_requested: Callable[[], bool]) -> int:
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
        return loop.run_until_complete(run_launch(settings, stop_requested=stop_requested))
    except BaseException:  # a bug or an escape: report nothing false, let the database decide
        logging.getLogger("runtara_sdk").exception("the launch ended unexpectedly")
        return ExitCode.LOST


def exit_process(code: int) -> NoReturn:
    """Flush what was said, then leave at once: no interpreter teardown, no parked finally."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
