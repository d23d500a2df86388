"""Durable call ids and the replay history: pure, no I/O.

Every durable call of a workflow (step, sleep, signal wait) gets a position and a checkpoint
id ``"<position>:<kind>:<name>"`` (``"3:step:charge_card"``). A position counts the calls of
one branch of the workflow: the workflow's own task counts 1, 2, 3...; a task it starts
(``asyncio.gather``, ``create_task``) is a branch of its own, numbered by the order its parent
started it, whose calls are ``"2/1"``, ``"2/2"``... (see ``branches``). So positions do not
depend on timing, only on the code. A call may own extra checkpoints,
``"<position>.<part>:<kind>:<name>"`` (a wait's deadline, a delivered cancellation). A replay
that asks at some position for another call than the history has there fails loudly.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from runtara_core.wire.messages import SavedCheckpoint
from runtara_sdk.errors import NonDeterminismError

MAX_NAME_BYTES = 200
"""Checkpoint ids are at most 255 bytes; this leaves room for the position and the kind."""


class CallKind(enum.StrEnum):
    STEP = "step"
    SLEEP = "sleep"
    SIGNAL = "signal"


def is_position(text: str) -> bool:
    """``"3"`` or ``"2/1/3"``: ASCII digits ("²" and "٣" are digits to ``str.isdigit``)."""
    return all(part.isascii() and part.isdigit() for part in text.split("/"))


@dataclass(frozen=True, slots=True)
class CallId:
    position: str
    kind: CallKind
    name: str

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        if len(self.name.encode()) > MAX_NAME_BYTES or "\0" in self.name:
            raise ValueError(
                f"{self.kind} name {self.name[:40]!r}... is too long or contains NUL: "
                f"names are at most {MAX_NAME_BYTES} UTF-8 bytes"
            )

    @property
    def checkpoint_id(self) -> str:
        return f"{self.position}:{self.kind}:{self.name}"

    def part(self, part: str) -> str:
        """The id of an extra checkpoint this call owns."""
        return f"{self.position}.{part}:{self.kind}:{self.name}"

    @property
    def signature(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class ParsedId:
    position: str
    part: str | None
    signature: str


def parse_checkpoint_id(checkpoint_id: str) -> ParsedId | None:
    """The position and call a checkpoint id names; None for ids the SDK did not write."""
    head, sep, signature = checkpoint_id.partition(":")
    if not sep or ":" not in signature:
        return None
    position, _, part = head.partition(".")
    if not is_position(position):
        return None
    return ParsedId(position, part or None, signature)


class Lookup(enum.Enum):
    ABSENT = "absent"
    """Not saved: the call runs live."""
    ASK_CORE = "ask_core"
    """Saved but its state did not fit the register response, or the history was cut: fetch it."""


class ReplayHistory:
    """What register returned: saved checkpoints in save order, states while they fit."""

    def __init__(self, saved: Iterable[SavedCheckpoint], complete: bool = True) -> None:
        self._states: dict[str, bytes | None] = {}
        self._positions: dict[str, tuple[str, str]] = {}  # position -> (signature, a checkpoint id)
        self._complete = complete
        for entry in saved:
            self._states[entry.checkpoint_id] = entry.state
            parsed = parse_checkpoint_id(entry.checkpoint_id)
            if parsed is not None:
                self._positions.setdefault(parsed.position, (parsed.signature, entry.checkpoint_id))

    def __len__(self) -> int:
        return len(self._states)

    @property
    def calls(self) -> int:
        """How many durable calls the history records (while a launch has made fewer, it is
        replaying)."""
        return len(self._positions)

    def check(self, call: CallId) -> None:
        """Raise ``NonDeterminismError`` if the history has another call at this position."""
        recorded = self._positions.get(call.position)
        if recorded is not None and recorded[0] != call.signature:
            raise NonDeterminismError(
                f"non-deterministic replay at position {call.position}: the workflow asked for "
                f"{call.checkpoint_id!r} but this instance's history has {recorded[1]!r} there. "
                "The code's order of durable calls changed since the instance started (or depends "
                "on something other than its input and step results); deploy the old code for "
                "this instance or start a new one"
            )

    def lookup(self, checkpoint_id: str) -> bytes | Lookup:
        """The saved state, or what to do when it is not at hand."""
        if checkpoint_id in self._states:
            state = self._states[checkpoint_id]
            return Lookup.ASK_CORE if state is None else state
        return Lookup.ABSENT if self._complete else Lookup.ASK_CORE

    def remember(self, checkpoint_id: str, state: bytes) -> None:
        """A state learnt from the core during this launch."""
        self._states[checkpoint_id] = state
