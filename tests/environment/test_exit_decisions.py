"""The supervisor's pure rules: what an ended launch means for its instance."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from runtara_core.persistence.rows import InstanceRow, InstanceStatus, ProcessExit, TerminationReason
from runtara_environment.exit_decisions import (
    KillReason,
    Verdict,
    crash_backoff_ms,
    crash_payload,
    decide_exit,
)
from runtara_environment.process_runner import LaunchSpec, child_environment, read_tail

NOW = 1_700_000_000_000
KILLED = ProcessExit(exit_code=None, exit_signal=9)
SUSPENDED_EXIT = ProcessExit(exit_code=3)


def row(status: InstanceStatus, *, attempt: int = 1, max_attempts: int = 3, launch_id: str | None = "L1") -> InstanceRow:
    return InstanceRow(
        instance_id="i", tenant="t", image_id="img", image_name="n", image_version=1, status=status,
        termination_reason=None, attempt=attempt, max_attempts=max_attempts, input=b"", output=None,
        error=None, created_at_ms=NOW, started_at_ms=None, finished_at_ms=None, updated_at_ms=NOW,
        wake_at_ms=None, heartbeat_at_ms=None, waiting_signal_name=None, checkpoint_id=None, node_id=None,
        priority=0, timeout_ms=None, env={}, pid=None, pid_create_time=None, peak_rss_bytes=None,
        cpu_time_ms=None, exit_code=None, exit_signal=None, stderr_tail=None, launch_id=launch_id,
    )


def decide(r: InstanceRow | None, exit: ProcessExit = KILLED, kill: KillReason | None = None, *, attempt: int = 1, launch_id: str | None = "L1"):
    return decide_exit(r, attempt, launch_id, exit, kill, now_ms=NOW, backoff_initial_ms=500, backoff_max_ms=30_000)


@pytest.mark.parametrize("status", [InstanceStatus.COMPLETED, InstanceStatus.FAILED, InstanceStatus.CANCELLED, InstanceStatus.SUSPENDED])
def test_a_launch_that_reported_its_end_needs_nothing(status: InstanceStatus) -> None:
    assert decide(row(status)).verdict is Verdict.NOTHING


def test_a_crash_with_attempts_left_is_relaunched_after_a_backoff() -> None:
    decision = decide(row(InstanceStatus.RUNNING, attempt=2), attempt=2)
    assert decision.verdict is Verdict.RELAUNCH and decision.reason is TerminationReason.CRASHED
    assert decision.relaunch_at_ms == NOW + 1000
    # A launch that died before registering (still pending) is a crash too.
    assert decide(row(InstanceStatus.PENDING, launch_id=None)).verdict is Verdict.RELAUNCH


def test_the_last_attempt_fails_with_the_reason() -> None:
    crashed = decide(row(InstanceStatus.RUNNING, attempt=3), attempt=3)
    assert (crashed.verdict, crashed.reason) == (Verdict.FAIL, TerminationReason.CRASHED)
    assert "launch 3 of 3 killed by signal 9" in (crashed.error or "")
    silent = decide(row(InstanceStatus.RUNNING, attempt=3), kill=KillReason.HEARTBEAT_TIMEOUT, attempt=3)
    assert (silent.verdict, silent.reason) == (Verdict.FAIL, TerminationReason.HEARTBEAT_TIMEOUT)
    relaunched = decide(row(InstanceStatus.RUNNING), kill=KillReason.HEARTBEAT_TIMEOUT)
    assert (relaunched.verdict, relaunched.reason) == (Verdict.RELAUNCH, TerminationReason.CRASHED)


def test_launches_the_environment_ended_are_recorded_as_such() -> None:
    stopped = decide(row(InstanceStatus.RUNNING), ProcessExit(exit_code=4), KillReason.STOPPED)
    assert (stopped.verdict, stopped.reason) == (Verdict.CANCEL, TerminationReason.STOPPED)
    timed_out = decide(row(InstanceStatus.RUNNING), ProcessExit(exit_code=4), KillReason.TIMEOUT)
    assert (timed_out.verdict, timed_out.reason) == (Verdict.FAIL, TerminationReason.TIMEOUT)


def test_an_exit_seen_after_the_instance_moved_on_changes_nothing() -> None:
    # Woken (or resumed) right after a clean hibernation or pause, before this exit was seen.
    assert decide(row(InstanceStatus.PENDING), SUSPENDED_EXIT).verdict is Verdict.NOTHING
    # Relaunched as a later attempt, or running in another launch.
    assert decide(row(InstanceStatus.RUNNING, attempt=2), attempt=1).verdict is Verdict.NOTHING
    assert decide(row(InstanceStatus.RUNNING, launch_id="L2")).verdict is Verdict.NOTHING
    assert decide(None).verdict is Verdict.NOTHING


def test_backoff_doubles_and_is_capped() -> None:
    assert [crash_backoff_ms(a, 500, 3000) for a in (1, 2, 3, 4, 50)] == [500, 1000, 2000, 3000, 3000]


def test_crash_payload_says_why() -> None:
    payload = json.loads(crash_payload(2, ProcessExit(exit_code=None, exit_signal=9, stderr_tail="x" * 5000), None))
    assert payload["attempt"] == 2 and payload["exit_signal"] == 9 and len(payload["stderr_tail"]) == 2000


def test_child_environment_is_clean(tmp_path: Path) -> None:
    spec = LaunchSpec(
        instance_id="i", attempt=2, launch_id="L", token="tok", server_addr="127.0.0.1:1", tls_ca=tmp_path / "ca.pem",
        tls_insecure=False, image_path=tmp_path / "x.py", image_entrypoint=None, run_dir=tmp_path,
        env={"GREETING": "hi", "PATH": "/custom"},
    )
    host = {"PATH": "/usr/bin", "RUNTARA_DATABASE_URL": "postgresql://secret", "HOME": "/root", "SECRET": "s"}
    env = child_environment(spec, host)
    assert env["PATH"] == "/custom" and env["GREETING"] == "hi"
    assert "RUNTARA_DATABASE_URL" not in env and "SECRET" not in env and "HOME" not in env
    assert env["RUNTARA_INSTANCE_TOKEN"] == "tok" and env["RUNTARA_ATTEMPT"] == "2" and env["RUNTARA_LAUNCH_ID"] == "L"
    insecure = child_environment(dataclasses.replace(spec, tls_insecure=True), host)
    assert insecure["RUNTARA_TLS_INSECURE"] == "true" and "RUNTARA_TLS_CA" not in insecure


def test_read_tail_starts_at_a_line(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_bytes(b"first line\nsecond line\nthird\n")
    assert read_tail(log, 1000) == "first line\nsecond line\nthird\n"
    assert read_tail(log, 12) == "third\n"
    assert read_tail(tmp_path / "missing.log", 100) is None
