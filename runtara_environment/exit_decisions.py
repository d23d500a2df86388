"""What an ended launch means for its instance: the supervisor's rules, free of I/O.

The database decides (DESIGN section 5): the instance's row, read after the process is gone,
says whether the launch finished its business (completed, failed, cancelled, hibernated or
paused: nothing to do) or ended without a terminal event (a crash: relaunch after a backoff, or
fail once ``max_attempts`` launches have crashed). A launch the environment itself ended (stop,
execution timeout, heartbeat timeout) is recorded as that instead.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from runtara_sdk.exit_codes import ExitCode
from runtara_core.persistence.rows import (
    InstanceRow,
    InstanceStatus,
    ProcessExit,
    TerminationReason,
)


class KillReason(enum.Enum):
    """Why the environment ended a launch itself."""

    STOPPED = "stopped"
    TIMEOUT = "timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"


class Verdict(enum.Enum):
    NOTHING = "nothing"
    """The launch finished its business, or is no longer the instance's current launch."""
    RELAUNCH = "relaunch"
    """Crashed with attempts left: suspend until the backoff ends, then launch attempt + 1."""
    FAIL = "fail"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class ExitDecision:
    verdict: Verdict
    reason: TerminationReason | None = None
    relaunch_at_ms: int | None = None
    error: str | None = None


def crash_backoff_ms(attempt: int, initial_ms: int, max_ms: int) -> int:
    """Before relaunching after crashed launch ``attempt``: initial * 2^(attempt-1), capped."""
    return min(max_ms, initial_ms * 2 ** min(max(attempt - 1, 0), 30))


def describe_exit(exit: ProcessExit) -> str:
    if exit.exit_signal is not None:
        return f"killed by signal {exit.exit_signal}"
    if exit.exit_code is not None:
        return f"exited with code {exit.exit_code} without a terminal event"
    return "ended (exit status unknown: the process was adopted or already gone)"


def crash_payload(attempt: int, exit: ProcessExit, kill: KillReason | None) -> bytes:
    """The ``crashed`` event's payload: enough to see why without opening the logs."""
    return json.dumps(
        {
            "attempt": attempt,
            "exit_code": exit.exit_code,
            "exit_signal": exit.exit_signal,
            "reason": kill.value if kill else "crashed",
            "stderr_tail": (exit.stderr_tail or "")[-2000:],
        }
    ).encode()


def is_current_launch(row: InstanceRow, launch_attempt: int, launch_id: str | None, exit: ProcessExit) -> bool:
    """Whether the ended launch is still the one the row is waiting on.

    Not if the instance moved to another attempt, finished, or is hibernating or paused (the
    launch said so itself). Pending is ambiguous: the launch may have died before registering
    (a crash), or registered, hibernated cleanly and been woken before its exit was seen (a
    wake, a resume or a signal can be that quick); its exit code tells them apart. Running on
    another launch id is a launch that is not this one.
    """
    if row.attempt != launch_attempt:
        return False
    if row.status is InstanceStatus.PENDING:
        return exit.exit_code != ExitCode.SUSPENDED
    if row.status is InstanceStatus.RUNNING:
        return launch_id is None or row.launch_id is None or row.launch_id == launch_id
    return False


def decide_exit(
    row: InstanceRow | None,
    launch_attempt: int,
    launch_id: str | None,
    exit: ProcessExit,
    kill: KillReason | None,
    *,
    now_ms: int,
    backoff_initial_ms: int,
    backoff_max_ms: int,
) -> ExitDecision:
    if row is None or not is_current_launch(row, launch_attempt, launch_id, exit):
        return ExitDecision(Verdict.NOTHING)
    if kill is KillReason.STOPPED:
        return ExitDecision(Verdict.CANCEL, TerminationReason.STOPPED)
    if kill is KillReason.TIMEOUT:
        return ExitDecision(
            Verdict.FAIL, TerminationReason.TIMEOUT, error="execution timeout: the instance ran longer than its timeout"
        )
    reason = (
        TerminationReason.HEARTBEAT_TIMEOUT if kill is KillReason.HEARTBEAT_TIMEOUT else TerminationReason.CRASHED
    )
    if row.attempt < row.max_attempts:
        wait = crash_backoff_ms(row.attempt, backoff_initial_ms, backoff_max_ms)
        # Suspended as crashed whatever the cause: that is what the wake scheduler relaunches.
        return ExitDecision(Verdict.RELAUNCH, TerminationReason.CRASHED, relaunch_at_ms=now_ms + wait)
    what = "went silent (heartbeat timeout)" if kill is KillReason.HEARTBEAT_TIMEOUT else describe_exit(exit)
    return ExitDecision(
        Verdict.FAIL,
        reason,
        error=f"launch {row.attempt} of {row.max_attempts} {what}; no attempts left",
    )
