"""Typed messages of the instance protocol (DESIGN section 3), validated strictly.

Untrusted fields are checked with pydantic in strict mode (no coercion: a string is not an
int, a str is not bytes), and every failure becomes ``BadRequest`` naming the field, so a peer
learns exactly what to fix. Unknown extra fields are ignored for forward compatibility.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from runtara_core.errors import BadRequest
from runtara_core.persistence.rows import check_id


def _storable_id(value: str) -> str:
    """The rule persistence applies to ids, checked here so the error names the wire field."""
    try:
        check_id("id", value)
    except BadRequest as error:
        raise ValueError(error.message.removeprefix("id ")) from None
    return value


MAX_DURATION_MS = 100 * 365 * 24 * 3600 * 1000
"""A century: long enough for any real wait, small enough that now + duration fits int64."""

Identifier = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_storable_id)]
DurationMs = Annotated[int, Field(ge=0, le=MAX_DURATION_MS)]
INT64_MAX = 2**63 - 1
EpochMs = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""A point in time, Unix epoch milliseconds."""
SignalName = Literal["cancel", "pause", "resume"]
EventKind = Literal["heartbeat", "completed", "failed", "suspended", "custom"]


class Message(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump()


class Request(Message):
    op: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        return {"op": self.op, **self.model_dump()}


M = TypeVar("M", bound=Message)


def describe_validation_error(error: ValidationError, what: str) -> str:
    """One readable sentence for the first problem pydantic found."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(message)"
    if first["type"] == "missing":
        return f"{what}: missing field '{field}'"
    return f"{what}: field '{field}' is invalid: {first['msg'].removeprefix('Value error, ')}"


def validate_message(model: type[M], fields: dict[str, Any], what: str) -> M:
    """Build ``model`` from untrusted ``fields`` or raise ``BadRequest`` naming the field."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, what)) from None


# --- shared parts -------------------------------------------------------------------------


class PendingSignal(Message):
    signal_type: SignalName
    payload: bytes | None = None


class SavedCheckpoint(Message):
    checkpoint_id: str
    state: bytes | None = None  # None when the register size budget was used up


# --- requests ------------------------------------------------------------------------------


class RegisterRequest(Request):
    op = "register"
    instance_id: Identifier
    token: Annotated[str, Field(min_length=1, max_length=1024)]
    attempt: Annotated[int, Field(ge=1, le=1_000_000)]
    launch_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """A random id of this process, the same on every (re)connect. The launch that moves the
    instance to running owns it; a re-register of a running instance must bring the same id,
    so a stale process (whose hibernation answer was lost, say) cannot rejoin after a wake."""


class CheckpointRequest(Request):
    op = "checkpoint"
    checkpoint_id: Identifier
    state: bytes


class GetCheckpointRequest(Request):
    op = "get_checkpoint"
    checkpoint_id: Identifier


class SleepRequest(Request):
    op = "sleep"
    checkpoint_id: Identifier
    duration_ms: DurationMs
    state: bytes = b""
    may_hibernate: bool = True
    """False: store the wake time but never hibernate (another branch of the workflow is busy)."""


class WaitSignalRequest(Request):
    op = "wait_signal"
    name: Identifier
    checkpoint_id: Identifier
    timeout_ms: DurationMs | None = None
    may_hibernate: bool = True
    """False: never hibernate on this call (another branch of the workflow is busy)."""
    deadline_ms: EpochMs | None = None
    """The wait's stored deadline: only a signal queued by then is taken, so a launch that
    asks late (relaunched after a crash) gets what it would have got in time."""


class PollSignalsRequest(Request):
    op = "poll_signals"


class AckSignalRequest(Request):
    op = "ack_signal"
    signal_type: SignalName


class EventRequest(Request):
    op = "event"
    type: EventKind
    payload: bytes | None = None
    subtype: Annotated[str, Field(max_length=256)] | None = None


class RetryAttemptRequest(Request):
    op = "retry_attempt"
    checkpoint_id: Identifier
    attempt: Annotated[int, Field(ge=1, le=1_000_000)]
    error: Annotated[str, Field(max_length=64 * 1024)]


class StatusRequest(Request):
    op = "status"


INSTANCE_REQUESTS: dict[str, type[Request]] = {
    cls.op: cls
    for cls in (
        RegisterRequest,
        CheckpointRequest,
        GetCheckpointRequest,
        SleepRequest,
        WaitSignalRequest,
        PollSignalsRequest,
        AckSignalRequest,
        EventRequest,
        RetryAttemptRequest,
        StatusRequest,
    )
}


# --- responses -----------------------------------------------------------------------------


class Empty(Message):
    """Response of acknowledged operations that return nothing else."""


class RegisterResponse(Message):
    input: bytes
    attempt: int
    checkpoints: list[SavedCheckpoint]
    """Saved checkpoints in save order; states only while they fit the history budget."""
    history_complete: bool = True
    """False when the id list itself had to be cut to fit a frame: later ids exist."""
    pending_signal: PendingSignal | None = None


class CheckpointResponse(Message):
    found: bool
    state: bytes
    pending_signal: PendingSignal | None = None


class GetCheckpointResponse(Message):
    found: bool
    state: bytes | None = None


class SleepResponse(Message):
    wake_at_ms: int
    hibernate: bool
    pending_signal: PendingSignal | None = None
    """A pending cancel or pause keeps a long sleep from hibernating: act on it first."""


class WaitSignalResponse(Message):
    found: bool
    payload: bytes | None = None
    hibernate: bool = False
    timed_out: bool = False
    """The wait's checkpoint records a timeout (an empty state, saved by the instance)."""
    pending_signal: PendingSignal | None = None
    """A pending cancel or pause keeps a long wait from hibernating: act on it first."""


class PollSignalsResponse(Message):
    pending_signal: PendingSignal | None = None


class StatusResponse(Message):
    status: str
    termination_reason: str | None = None
    checkpoint_id: str | None = None
    attempt: int
    wake_at_ms: int | None = None


# --- server pushes (one frame on a server-initiated unidirectional stream) -----------------


class SignalPush(Message):
    """An instance-wide signal became pending; it is also returned by checkpoint / poll_signals."""

    push: Literal["signal"] = "signal"
    signal_type: SignalName
    payload: bytes = b""


class CustomSignalPush(Message):
    """A custom signal called ``name`` was queued: a waiting instance should call wait_signal."""

    push: Literal["custom_signal"] = "custom_signal"
    name: str
