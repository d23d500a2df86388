"""Durable call ids and the replay history: pure, no I/O.

Every durable call of a workflow (step, sleep, signal wait) gets the next sequence number, in
call order, and a checkpoint id ``"<seq>:<kind>:<name>"`` (``"3:step:charge_card"``). A call
may own extra checkpoints, ``"<seq>.<part>:<kind>:<name>"`` (a wait's deadline, a delivered
cancellation). The sequence number is the position the non-determinism check compares: a
replay that asks for position 3 a different call than the history has there fails loudly.
Parallel branches (``asyncio.gather``) are numbered in the order they start, which is the
order they are passed; their completion order does not matter.
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


@dataclass(frozen=True, slots=True)
class CallId:
    seq: int
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
        return f"{self.seq}:{self.kind}:{self.name}"

    def part(self, part: str) -> str:
        """The id of an extra checkpoint this call owns."""
        return f"{self.seq}.{part}:{self.kind}:{self.name}"

    @property
    def signature(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class ParsedId:
    seq: int
    part: str | None
    signature: str


def parse_checkpoint_id(checkpoint_id: str) -> ParsedId | None:
    """The position and call a checkpoint id names; None for ids the SDK did not write."""
    head, sep, signature = checkpoint_id.partition(":")
    if not sep or ":" not in signature:
        return None
    seq_text, _, part = head.partition(".")
    if not (seq_text.isascii() and seq_text.isdigit()):  # not '²' or '٣': int() fails or misreads them
        return None
    return ParsedId(int(seq_text), part or None, signature)


class Lookup(enum.Enum):
    ABSENT = "absent"
    """Not saved: the call runs live."""
    ASK_CORE = "ask_core"
    """Saved but its state did not fit the register response, or the history was cut: fetch it."""


class ReplayHistory:
    """What register returned: saved checkpoints in save order, states while they fit."""

    def __init__(self, saved: Iterable[SavedCheckpoint], complete: bool = True) -> None:
        self._states: dict[str, bytes | None] = {}
        self._positions: dict[int, tuple[str, str]] = {}  # seq -> (signature, a checkpoint id)
        self._complete = complete
        for entry in saved:
            self._states[entry.checkpoint_id] = entry.state
            parsed = parse_checkpoint_id(entry.checkpoint_id)
            if parsed is not None:
                self._positions.setdefault(parsed.seq, (parsed.signature, entry.checkpoint_id))

    def __len__(self) -> int:
        return len(self._states)

    @property
    def last_position(self) -> int:
        """The highest position saved (0 for none): calls up to it are replays."""
        return max(self._positions, default=0)

    def check(self, call: CallId) -> None:
        """Raise ``NonDeterminismError`` if the history has another call at this position."""
        recorded = self._positions.get(call.seq)
        if recorded is not None and recorded[0] != call.signature:
            raise NonDeterminismError(
                f"non-deterministic replay at position {call.seq}: the workflow asked for "
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
