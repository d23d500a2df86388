"""The values that cross the persistence boundary: enums, rows read back, and inputs to write.

Every row is a frozen, slotted dataclass so callers get attribute access and type checking
instead of driver records or dicts. Times are Unix epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

from runtara_core.errors import BadRequest

T = TypeVar("T")
V = TypeVar("V")


class InstanceStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: Final = frozenset(
    {InstanceStatus.COMPLETED, InstanceStatus.FAILED, InstanceStatus.CANCELLED}
)
ACTIVE_STATUSES: Final = frozenset(InstanceStatus) - TERMINAL_STATUSES


class TerminationReason(StrEnum):
    """Why an instance stopped or suspended; it always describes the current status."""

    COMPLETED = "completed"
    APPLICATION_ERROR = "application_error"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    CANCELLED = "cancelled"
    STOPPED = "stopped"
    PAUSED = "paused"
    SLEEPING = "sleeping"
    WAITING = "waiting"


class SignalType(StrEnum):
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"


class EventType(StrEnum):
    """Audit trail of an instance. Not constrained in the schema, so new kinds need no migration."""

    CREATED = "created"
    LAUNCHED = "launched"
    STARTED = "started"
    HEARTBEAT = "heartbeat"
    COMPLETED = "completed"
    FAILED = "failed"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    WOKEN = "woken"
    CANCELLED = "cancelled"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    RETRY_ATTEMPT = "retry_attempt"
    SIGNAL = "signal"
    CUSTOM = "custom"


class InstanceOrder(StrEnum):
    CREATED_ASC = "created_asc"
    CREATED_DESC = "created_desc"
    PRIORITY = "priority"
    """Launch order: highest priority first, then oldest first."""


class Unset(Enum):
    """Marks a field of an update as "leave the stored value alone" (None means store NULL)."""

    TOKEN = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.TOKEN
Maybe: TypeAlias = V | Literal[Unset.TOKEN]
"""``Maybe[int]``: an int, None if the type allows it, or UNSET."""


MAX_PAGE: Final = 10_000


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BadRequest(message)


def check_id(kind: str, value: str) -> None:
    _require(bool(value), f"{kind} must not be empty")


def check_page(limit: int, offset: int = 0) -> None:
    """Pagination bounds shared by every listing."""
    _require(1 <= limit <= MAX_PAGE, f"limit must be 1..{MAX_PAGE}, got {limit}")
    _require(offset >= 0, f"offset must be >= 0, got {offset}")


# --------------------------------------------------------------------------- instances


@dataclass(frozen=True, slots=True)
class NewInstance:
    """A start request. The tenant, image name and version are copied from the image row."""

    instance_id: str
    image_id: str
    input: bytes = b""
    max_attempts: int = 3
    timeout_ms: int | None = None
    priority: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    node_id: str | None = None

    def __post_init__(self) -> None:
        _require(bool(self.instance_id), "instance_id must not be empty")
        _require(bool(self.image_id), "image_id must not be empty")
        _require(self.max_attempts >= 1, f"max_attempts must be >= 1, got {self.max_attempts}")
        _require(
            self.timeout_ms is None or self.timeout_ms > 0,
            f"timeout_ms must be positive, got {self.timeout_ms}",
        )


@dataclass(frozen=True, slots=True)
class InstanceRow:
    instance_id: str
    tenant: str
    image_id: str | None
    """None once the image was deleted; image_name and image_version keep the history."""
    image_name: str
    image_version: int
    status: InstanceStatus
    termination_reason: TerminationReason | None
    attempt: int
    max_attempts: int
    input: bytes
    output: bytes | None
    error: str | None
    created_at_ms: int
    started_at_ms: int | None
    finished_at_ms: int | None
    updated_at_ms: int
    wake_at_ms: int | None
    heartbeat_at_ms: int | None
    waiting_signal_name: str | None
    checkpoint_id: str | None
    node_id: str | None
    priority: int
    timeout_ms: int | None
    env: Mapping[str, str]
    pid: int | None
    pid_create_time: float | None
    peak_rss_bytes: int | None
    cpu_time_ms: int | None
    exit_code: int | None
    exit_signal: int | None
    stderr_tail: str | None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclass(frozen=True, slots=True)
class InstanceUpdate:
    """Columns a status transition may set besides status and reason; UNSET leaves a column alone.

    Leaving ``suspended`` clears ``wake_at_ms`` and ``waiting_signal_name`` and entering a terminal
    status stamps ``finished_at_ms``, unless the update sets them (see ``rules.plan_transition``).
    """

    attempt: Maybe[int] = UNSET
    output: Maybe[bytes | None] = UNSET
    error: Maybe[str | None] = UNSET
    started_at_ms: Maybe[int | None] = UNSET
    finished_at_ms: Maybe[int | None] = UNSET
    wake_at_ms: Maybe[int | None] = UNSET
    waiting_signal_name: Maybe[str | None] = UNSET
    heartbeat_at_ms: Maybe[int | None] = UNSET
    node_id: Maybe[str | None] = UNSET
    pid: Maybe[int | None] = UNSET
    pid_create_time: Maybe[float | None] = UNSET

    def assignments(self) -> dict[str, Any]:
        """Column -> value for every field that is set; field names are the column names."""
        return {
            f.name: value for f in fields(self) if (value := getattr(self, f.name)) is not UNSET
        }


NO_UPDATE: Final = InstanceUpdate()


@dataclass(frozen=True, slots=True)
class ProcessExit:
    """What the supervisor measured about one launch once its process ended."""

    exit_code: int | None
    exit_signal: int | None = None
    peak_rss_bytes: int | None = None
    cpu_time_ms: int | None = None
    stderr_tail: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceFilter:
    """Ranges are half-open: ``*_from_ms`` inclusive, ``*_to_ms`` exclusive."""

    tenant: str | None = None
    statuses: frozenset[InstanceStatus] = frozenset()
    image_id: str | None = None
    image_name: str | None = None
    created_from_ms: int | None = None
    created_to_ms: int | None = None
    finished_from_ms: int | None = None
    finished_to_ms: int | None = None
    order: InstanceOrder = InstanceOrder.CREATED_DESC
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        check_page(self.limit, self.offset)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    total: int
    """Rows matching the filter, ignoring limit and offset."""


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    seq: int
    """Save order: increases with every checkpoint saved (globally, hence also per instance)."""
    instance_id: str
    checkpoint_id: str
    state: bytes | None
    """None when a listing was asked without states."""
    size_bytes: int
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class CheckpointSaveResult:
    saved: bool
    """True only for the one writer whose state was stored."""
    state: bytes
    """The stored state: the caller's on a save, the earlier writer's otherwise."""
    pending_signal: SignalRow | None
    """Read in the same transaction so the checkpoint RPC needs no second query."""


@dataclass(frozen=True, slots=True)
class ReplayEntry:
    checkpoint_id: str
    state: bytes | None
    """None past the replay budget: the instance fetches it when it gets there."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class NewEvent:
    type: EventType
    subtype: str | None = None
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    instance_id: str
    type: EventType
    subtype: str | None
    payload: bytes | None
    created_at_ms: int


# --------------------------------------------------------------------------- signals


@dataclass(frozen=True, slots=True)
class SignalRow:
    instance_id: str
    signal_type: SignalType
    payload: bytes
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class CustomSignalRow:
    id: int
    instance_id: str
    name: str
    payload: bytes
    created_at_ms: int
    consumed_at_ms: int | None
    consumed_by_checkpoint_id: str | None


@dataclass(frozen=True, slots=True)
class CustomSignalEnqueued:
    signal: CustomSignalRow
    woken: InstanceRow | None
    """The instance moved from suspended (waiting on this name) to pending, if it was."""


@dataclass(frozen=True, slots=True)
class CustomSignalConsumed:
    found: bool
    payload: bytes | None
    replayed: bool
    """The checkpoint already existed: its state was returned and nothing was consumed."""


# --------------------------------------------------------------------------- images


@dataclass(frozen=True, slots=True)
class NewImage:
    image_id: str
    tenant: str
    name: str
    entrypoint: str
    sha256: str
    size_bytes: int
    description: str = ""
    input_schema: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.image_id), "image_id must not be empty")
        _require(bool(self.name), "image name must not be empty")
        _require(bool(self.entrypoint), "entrypoint must not be empty")
        _require(self.size_bytes >= 0, f"size_bytes must be >= 0, got {self.size_bytes}")


@dataclass(frozen=True, slots=True)
class ImageRow:
    image_id: str
    tenant: str
    name: str
    version: int
    description: str
    entrypoint: str
    input_schema: Mapping[str, Any] | None
    metadata: Mapping[str, Any]
    sha256: str
    size_bytes: int
    created_at_ms: int
