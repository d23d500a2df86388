"""A side-effect ledger: one JSON line per step body that ran, for audits and crash tests.

Each line names the instance, the step id, the try and the launch, so "no saved step ran
twice" is checkable from outside the process after any number of SIGKILLs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from runtara_sdk.steps import current_step


def append_ledger(path: str | os.PathLike[str] | None, what: str, **fields: Any) -> None:
    """Append ``{instance_id, step_id, attempt, launch_attempt, what, at_ms, **fields}`` to
    ``path`` (one write with O_APPEND, then fsync); no-op when ``path`` is None. ``at_ms`` (wall
    clock, like the core's checkpoint times) lets an audit tell a body that ran again after its
    checkpoint was saved from one re-run because the launch died before saving it."""
    if path is None:
        return
    info = current_step()
    record: dict[str, Any] = {
        "instance_id": info.instance_id if info else None,
        "step_id": info.step_id if info else None,
        "attempt": info.attempt if info else None,
        "launch_attempt": info.launch_attempt if info else None,
        "what": what,
        "at_ms": time.time_ns() // 1_000_000,
        **fields,
    }
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_ledger(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a ledger file, in append order (none if it does not exist yet)."""
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
