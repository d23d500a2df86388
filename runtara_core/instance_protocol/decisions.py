"""Pure decisions of the instance protocol: no I/O, so each is unit-tested on its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from runtara_core.persistence.rows import ReplayEntry
from runtara_core.wire.messages import SavedCheckpoint

_SLEEP_TAG = "runtara_sleep"
TIMEOUT_STATE = b""
"""The checkpoint state that records a signal wait's timeout (custom signal payloads are never
empty, so no delivered signal can look like it)."""

ENTRY_OVERHEAD_BYTES = 32
"""An upper bound on the msgpack framing of one history entry beside its id and state bytes:
map header 1, keys "checkpoint_id" 14 and "state" 6, a str header up to 3, a bin header up to 5
(or nil)."""
RESPONSE_SLACK_BYTES = 64 * 1024
"""Room left in a register response for everything except input and history."""


@dataclass(frozen=True, slots=True)
class SleepRecord:
    """What a durable sleep stores as its checkpoint: when it ends, and the caller's state."""

    wake_at_ms: int
    state: bytes = b""

    def encode(self) -> bytes:
        return msgpack.packb({_SLEEP_TAG: 1, "wake_at_ms": self.wake_at_ms, "state": self.state})

    @classmethod
    def decode(cls, data: bytes) -> SleepRecord | None:
        """The record, or None if ``data`` is some other checkpoint's state."""
        try:
            body = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException):
            return None
        if not isinstance(body, dict) or type(body.get(_SLEEP_TAG)) is not int or body[_SLEEP_TAG] != 1:
            return None
        wake_at, state = body.get("wake_at_ms"), body.get("state", b"")
        if not isinstance(wake_at, int) or isinstance(wake_at, bool) or not isinstance(state, bytes):
            return None
        return cls(wake_at, state)


def should_hibernate(remaining_ms: int | None, threshold_ms: int) -> bool:
    """Whether a wait of ``remaining_ms`` (None: no end) is long enough to leave the process.

    A hibernating instance holds no process, only rows; a short wait is cheaper in-process than
    an exit and a relaunch.
    """
    return remaining_ms is None or remaining_ms > threshold_ms


def history_state_budget(frame_bytes: int, input_bytes: int, configured_bytes: int) -> int:
    """How many bytes of checkpoint states a register response may carry.

    At most the configured budget, and at most half of what the frame has left after the input,
    so the id list (which must fit too) always keeps the other half.
    """
    room = frame_bytes - input_bytes - RESPONSE_SLACK_BYTES
    return max(0, min(configured_bytes, room // 2))


def register_history(
    entries: Sequence[ReplayEntry], frame_bytes: int, input_bytes: int
) -> tuple[list[SavedCheckpoint], bool]:
    """The history entries that fit one response frame, and whether that is all of them.

    States were already cut to the state budget by persistence; here the ids are cut too, so
    that even a history of millions of steps never makes a register response too large to send.
    """
    room = frame_bytes - input_bytes - RESPONSE_SLACK_BYTES
    used = 0
    history: list[SavedCheckpoint] = []
    for entry in entries:
        size = len(entry.checkpoint_id.encode()) + ENTRY_OVERHEAD_BYTES
        size += len(entry.state) if entry.state is not None else 0
        if used + size > room:
            return history, False
        used += size
        history.append(SavedCheckpoint(checkpoint_id=entry.checkpoint_id, state=entry.state))
    return history, True
