"""The values that cross the persistence boundary: enums, rows read back, inputs to write, and
the checks every input passes (``value_check``) before either backend sees it.

Every row is a frozen, slotted dataclass so callers get attribute access and type checking
instead of driver records or dicts. Times are Unix epoch milliseconds.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Collection as AbcCollection
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, StrEnum
from functools import partial, wraps
from types import UnionType
from typing import (
    Any,
    Final,
    Generic,
    Literal,
    TypeAlias,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

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
    FINISHED_ASC = "finished_asc"
    FINISHED_DESC = "finished_desc"
    """By finish time; unfinished instances come last either way."""


class Unset(Enum):
    """Marks a field of an update as "leave the stored value alone" (None means store NULL)."""

    TOKEN = "unset"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.TOKEN
Maybe: TypeAlias = V | Literal[Unset.TOKEN]
"""``Maybe[int]``: an int, None if the type allows it, or UNSET."""


MAX_PAGE: Final = 10_000
MAX_ID_BYTES: Final = 255
"""Ids and names (instance, checkpoint, image, signal, tenant) are 1..255 bytes of UTF-8."""
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

# --------------------------------------------------------------------------- boundary checks
#
# Every value that crosses the boundary is checked against its annotation, in one place for both
# backends: fields of the input dataclasses below in ``__post_init__``, arguments of every
# ``Persistence`` method by ``check_call`` (applied in base.py). Without this a bad value reaches
# the driver, which refuses it differently per backend (PostgreSQL text cannot hold NUL, SQLite
# stores it) or not at all (SQLite takes a 10 kB id that PostgreSQL cannot index).

Check = Callable[[str, Any], None]
"""Raises BadRequest naming the field (the str) when the value (the Any) is not acceptable."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BadRequest(message)


def _wrong_type(field: str, wanted: str, value: object) -> BadRequest:
    return BadRequest(f"{field} must be {wanted}, got {type(value).__name__}")


def _utf8(field: str, value: object) -> bytes:
    """``value`` as the UTF-8 both databases store: a str without lone surrogates or NUL."""
    if not isinstance(value, str):
        raise _wrong_type(field, "a string", value)
    try:
        encoded = value.encode()
    except UnicodeEncodeError:
        raise BadRequest(f"{field} must be valid Unicode (it has a lone surrogate)") from None
    _require(b"\x00" not in encoded, f"{field} must not contain NUL")
    return encoded


def check_text(field: str, value: object) -> None:
    """Free text (errors, descriptions): any length."""
    _utf8(field, value)


def check_id(field: str, value: object) -> None:
    """An id or name: 1..MAX_ID_BYTES bytes, small enough for any index entry."""
    size = len(_utf8(field, value))
    _require(0 < size <= MAX_ID_BYTES, f"{field} must be 1..{MAX_ID_BYTES} bytes, got {size}")


def check_short_text(field: str, value: object) -> None:
    """Short free text (a file name): 0..MAX_ID_BYTES bytes, empty allowed."""
    size = len(_utf8(field, value))
    _require(size <= MAX_ID_BYTES, f"{field} must be at most {MAX_ID_BYTES} bytes, got {size}")


def check_int(
    field: str, value: object, minimum: int = INT64_MIN, maximum: int = INT64_MAX
) -> None:
    """An int within int64 (and the bounds). Not a bool or a float: drivers would store or
    round those differently."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong_type(field, "an integer", value)
    _require(minimum <= value <= maximum, f"{field} must be {minimum}..{maximum}, got {value}")


def _check_float(field: str, value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _wrong_type(field, "a number", value)
    _require(math.isfinite(value), f"{field} must be finite, got {value}")


def _check_bytes(field: str, value: object) -> None:
    if not isinstance(value, bytes):
        raise _wrong_type(field, "bytes", value)


def _check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _wrong_type(field, "a bool", value)


def _check_json_object(field: str, value: object) -> None:
    if not isinstance(value, Mapping):
        raise _wrong_type(field, "a mapping", value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"{field} must be JSON: {exc}") from None


def _check_env(field: str, value: object) -> None:
    if not isinstance(value, Mapping):
        raise _wrong_type(field, "a mapping", value)
    for key, item in value.items():
        check_text(f"{field} key", key)
        check_text(f"{field}[{key!r}]", item)


_BY_TYPE: dict[Any, Check] = {
    str: check_id,
    int: check_int,
    float: _check_float,
    bytes: _check_bytes,
    bool: _check_bool,
    Mapping[str, str]: _check_env,
    Mapping[str, Any]: _check_json_object,
}
_BY_NAME: dict[str, Check] = {
    # Free text rather than ids: any length.
    "description": check_text,
    "error": check_text,
    "stderr_tail": check_text,
    "subtype": check_text,
    "filename": check_short_text,
    "limit": partial(check_int, minimum=1, maximum=MAX_PAGE),
    "offset": partial(check_int, minimum=0),
    # Launches count from 1; a fence or an update naming attempt 0 is a caller's bug.
    "attempt": partial(check_int, minimum=1),
}


def value_check(name: str, hint: Any) -> Check:
    """The check of a value named ``name`` annotated ``hint``; TypeError if there is none.

    A type this does not know fails when the class is defined, so no input goes unchecked.
    """
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        # X | None, and Maybe[X] (X | UNSET): the constants pass, anything else must be an X.
        constants = [None] if type(None) in args else []
        for arg in args:
            if get_origin(arg) is Literal:
                constants.extend(get_args(arg))
        rest = [a for a in args if a is not type(None) and get_origin(a) is not Literal]
        if len(rest) != 1:
            raise TypeError(f"no boundary check for {name}: {hint}")
        inner = value_check(name, rest[0])

        def check_union(field: str, value: object) -> None:
            if not any(value is constant for constant in constants):
                inner(field, value)

        return check_union
    if name in _BY_NAME:
        return _BY_NAME[name]
    if hint in _BY_TYPE:
        return _BY_TYPE[hint]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return partial(_check_member, hint)
    if isinstance(hint, type) and is_dataclass(hint):
        return partial(_check_instance, hint)
    if origin in (AbcCollection, frozenset) and len(args) == 1:
        return partial(_check_items, origin, value_check(name, args[0]))
    raise TypeError(f"no boundary check for {name}: {hint}")


def _check_member(enum: type[Enum], field: str, value: object) -> None:
    """A member of ``enum``, or (all of them being StrEnums) the string of one."""
    try:
        enum(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum)
        raise BadRequest(f"{field} must be one of {choices}, got {value!r}") from None


def _check_instance(cls: type, field: str, value: object) -> None:
    # Its own __post_init__ checked its fields.
    if not isinstance(value, cls):
        raise _wrong_type(field, f"a {cls.__name__}", value)


def _check_items(kind: type, item: Check, field: str, value: object) -> None:
    if not isinstance(value, kind) or isinstance(value, str | bytes):
        raise _wrong_type(field, f"a {kind.__name__}", value)
    for element in value:  # type: ignore[attr-defined]  # kind is a collection type
        item(field, element)


def check_call(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``method`` (of a class) checking every argument it is given against its annotation first.

    Arguments left at their defaults are not checked: the defaults are ours.
    """
    parameters = list(inspect.signature(method).parameters.values())[1:]  # after self
    hints = get_type_hints(method)
    plan = [
        (
            position if p.kind is not inspect.Parameter.KEYWORD_ONLY else None,
            p.name,
            value_check(p.name, hints[p.name]),
        )
        for position, p in enumerate(parameters)
    ]
    if not plan:
        return method

    @wraps(method)
    async def checked(self: object, *args: Any, **kwargs: Any) -> T:
        for position, name, check in plan:
            if position is not None and position < len(args):
                check(name, args[position])
            elif name in kwargs:
                check(name, kwargs[name])
        return await method(self, *args, **kwargs)

    return checked


_FIELD_CHECKS: dict[type, tuple[tuple[str, Check], ...]] = {}


def _check_fields(obj: Any) -> None:
    """Check every field of an input dataclass against its annotation (worked out once a class)."""
    cls = type(obj)
    if cls not in _FIELD_CHECKS:
        hints = get_type_hints(cls)
        _FIELD_CHECKS[cls] = tuple(
            (f.name, value_check(f.name, hints[f.name])) for f in fields(obj)
        )
    for name, check in _FIELD_CHECKS[cls]:
        check(name, getattr(obj, name))


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
        _check_fields(self)
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
    launch_id: str | None = None
    """The launch running it (see ``RegisterRequest.launch_id``); None before any."""
    run_time_ms: int = 0
    """Wall-clock time its processes have run, summed over launches (``record_exit_metrics``):
    the execution timeout counts running time only, across crashes, sleeps and pauses."""

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclass(frozen=True, slots=True)
class InstanceStatusRow:
    """Just enough of an instance to judge whether what it left behind may go (``get_instance_statuses``):
    the full row carries input and output, which can be large."""

    instance_id: str
    status: InstanceStatus
    finished_at_ms: int | None
    node_id: str | None

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
    launch_id: Maybe[str | None] = UNSET

    def __post_init__(self) -> None:
        _check_fields(self)  # attempt: 1.. (see _BY_NAME)

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
    run_time_ms: int | None = None
    """Wall-clock duration of this launch; added to the instance's ``run_time_ms``."""

    def __post_init__(self) -> None:
        _check_fields(self)
        for name in ("peak_rss_bytes", "cpu_time_ms", "run_time_ms"):
            value = getattr(self, name)
            _require(value is None or value >= 0, f"{name} must be >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class InstanceFilter:
    """Ranges are half-open: ``*_from_ms`` inclusive, ``*_to_ms`` exclusive."""

    tenant: str | None = None
    statuses: frozenset[InstanceStatus] = frozenset()
    image_id: str | None = None
    image_name: str | None = None
    node_id: str | None = None
    """Only the instances this environment node owns (launches and supervises), and those no
    node owns (started by other tools): a node takes care of those too."""
    created_from_ms: int | None = None
    created_to_ms: int | None = None
    finished_from_ms: int | None = None
    finished_to_ms: int | None = None
    order: InstanceOrder = InstanceOrder.CREATED_DESC
    limit: int = 100
    offset: int = 0

    def __post_init__(self) -> None:
        _check_fields(self)


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

    def __post_init__(self) -> None:
        # An unknown type would be stored, and then fail every listing of the instance's events.
        _check_fields(self)


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
class SignalOutcome:
    """What acknowledging an instance-wide signal does to the instance (``ack_signal``): move
    it from running to ``status`` with ``reason``, logging ``event``, as the slot is cleared."""

    status: InstanceStatus
    reason: TerminationReason
    event: NewEvent | None = None

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True, slots=True)
class HibernateResult:
    hibernated: bool
    """True if the instance moved from running to suspended; False if something blocked it
    (a pending cancel or pause, or a queued signal of the awaited name) and nothing changed."""
    pending_signal: SignalRow | None
    """The instance-wide slot as read in the same transaction (a resume does not block)."""
    row: InstanceRow
    """The instance as this call left it: suspended if hibernated, else unchanged."""


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
    filename: str = ""
    """The file the image was registered from (``order.py``, ``app.tar.gz``); "" if unknown."""

    def __post_init__(self) -> None:
        _check_fields(self)
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
    filename: str
    """The file the image was registered from; "" for images registered before it was kept."""
