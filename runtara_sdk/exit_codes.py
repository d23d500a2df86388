"""The launcher's exit codes: the environment reads them beside the database status."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    COMPLETED = 0
    """The workflow returned; its output is stored."""
    FAILED = 1
    """The workflow raised (or its image could not be loaded); the error is stored."""
    CONFIG_ERROR = 2
    """The launch environment is wrong (missing RUNTARA_* variables): nothing was reported."""
    SUSPENDED = 3
    """The instance hibernated (long sleep or wait) or paused; it is relaunched later."""
    CANCELLED = 4
    """A cancel (signal or SIGTERM) ended the workflow; its cleanup ran."""
    LOST = 5
    """The core was unreachable, or the launch was refused or superseded: nothing more was
    reported, so the environment decides from the database (crash recovery if still running)."""
