"""Typed messages of the management protocol (ALPN ``runtara-mgmt/1``, DESIGN section 4).

Same rules as the instance protocol (``runtara_core.wire.messages``): pydantic strict mode (no
coercion), unknown extra fields ignored, and ``validate_message`` turns every failure into a
``BadRequest`` naming the field. Times are Unix epoch milliseconds (int), durations given by a
person (timeouts, grace periods) are seconds, binary fields are bytes, and JSON documents
(inputs, outputs, payloads, schemas) are plain JSON values.

Tenancy: a tenant token is scoped to its own tenant, so the ``tenant`` fields below are only
meaningful for an admin token (None = every tenant, or the token's own tenant). The server
decides what a mismatch means (``FORBIDDEN`` / ``NOT_FOUND``); this module only checks shape.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)

from runtara_core.wire.messages import INT64_MAX, EpochMs, Identifier, Message, Request, SignalName

# --- shared field types --------------------------------------------------------------------


StatusName = Literal["pending", "running", "suspended", "completed", "failed", "cancelled"]
"""The six instance statuses (DESIGN section 5); the last three are terminal."""

InstanceOrderName = Literal["created_at", "-created_at", "finished_at", "-finished_at"]
"""A leading ``-`` means descending."""

Limit = Annotated[int, Field(ge=1, le=1000)]
Offset = Annotated[int, Field(ge=0, le=INT64_MAX)]
EventId = Annotated[int, Field(ge=0, le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]

DEFAULT_LIMIT = 100
MAX_TIMEOUT_S = 100 * 365 * 24 * 3600
"""A century, as for instance-protocol durations."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
INSTANCE_ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:@+=-]*")
"""What a new instance id may look like: it names the instance's run directory, so it must be one
safe path component. Ids made before this rule still address their instances."""
RESERVED_ENV_PREFIX = "RUNTARA_"
START_ENV_OPTIONS = frozenset({"RUNTARA_LOG_LEVEL", "RUNTARA_FAILPOINTS"})
"""The RUNTARA_ names a start's env may set: they tune only that instance's own SDK (its log
level; where a chaos test makes it SIGKILL itself), never what the runtime tells it."""


def _sha256(value: str) -> str:
    lowered = value.lower()
    if not _SHA256.fullmatch(lowered):
        raise ValueError("must be 64 hex digits (the SHA-256 of the image bytes)")
    return lowered


def _entrypoint(value: str) -> str:
    module, sep, function = value.partition(":")
    if not sep:
        raise ValueError(f"must be 'module:function' (no ':' in {value[:64]!r})")
    if not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"module {module[:64]!r} is not a dotted Python module name")
    if not function.isidentifier():
        raise ValueError(f"function {function[:64]!r} is not a Python identifier")
    return value


def _instance_id(value: str) -> str:
    if not INSTANCE_ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"instance id {value[:64]!r} must start with a letter, digit or '_' and hold only "
            "letters, digits and . _ : @ + = -"
        )
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise ValueError(f"env name {value[:64]!r} must match [A-Za-z_][A-Za-z0-9_]*")
    if value.upper().startswith(RESERVED_ENV_PREFIX) and value not in START_ENV_OPTIONS:
        raise ValueError(
            f"env name {value[:64]!r} is reserved: names starting with RUNTARA_ are set by "
            f"the runtime (a start may set only {', '.join(sorted(START_ENV_OPTIONS))})"
        )
    return value


def _env_value(value: str) -> str:
    if "\x00" in value:
        raise ValueError("env values cannot contain NUL characters")
    return value


def _filename(value: str) -> str:
    if value in (".", "..") or any(c in value for c in "/\\\x00"):
        raise ValueError(f"{value[:64]!r} must be a bare file name, without a directory")
    return value


Sha256Hex = Annotated[str, AfterValidator(_sha256)]
NewInstanceId = Annotated[Identifier, AfterValidator(_instance_id)]
Entrypoint = Annotated[str, Field(min_length=3, max_length=512), AfterValidator(_entrypoint)]
EnvName = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_env_name)]
EnvValue = Annotated[str, Field(max_length=32 * 1024), AfterValidator(_env_value)]
Filename = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_filename)]
Description = Annotated[str, Field(max_length=4096)]
MetadataKey = Annotated[str, Field(min_length=1, max_length=255)]
MetadataValue = Annotated[str, Field(max_length=4096)]
ImageRef = Identifier
"""An image id or an image name (a name means its latest version)."""


# --- requests ------------------------------------------------------------------------------


class HelloRequest(Request):
    """First RPC of every management connection: authenticates it with a bearer token."""

    op = "hello"
    token: Annotated[str, Field(min_length=1, max_length=1024)]


class HealthRequest(Request):
    op = "health"


class RegisterImageRequest(Request):
    """Register a new image (or a new version of ``name``).

    ``data`` None: the ``size_bytes`` bytes of the image follow the request frame as raw
    stream data (for images over the frame limit). Otherwise ``len(data) == size_bytes``.
    """

    op = "register_image"
    tenant: Identifier | None = None
    name: Identifier
    description: Description = ""
    entrypoint: Entrypoint | None = None
    input_schema: dict[str, JsonValue] | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=256)] = {}
    size_bytes: Annotated[int, Field(ge=1, le=INT64_MAX)]
    sha256: Sha256Hex
    filename: Filename
    data: bytes | None = None

    @field_validator("data")
    @classmethod
    def _data_matches_size(cls, value: bytes | None, info: ValidationInfo) -> bytes | None:
        size = info.data.get("size_bytes")
        if value is not None and size is not None and len(value) != size:
            raise ValueError(f"holds {len(value)} bytes but size_bytes says {size}")
        return value


class ListImagesRequest(Request):
    op = "list_images"
    tenant: Identifier | None = None
    name: Identifier | None = None
    """Only the versions of this image name."""
    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0


class GetImageRequest(Request):
    op = "get_image"
    image: ImageRef
    tenant: Identifier | None = None


class DeleteImageRequest(Request):
    op = "delete_image"
    image: ImageRef
    tenant: Identifier | None = None


class StartInstanceRequest(Request):
    op = "start_instance"
    image: ImageRef
    tenant: Identifier | None = None
    input: JsonValue = None
    instance_id: NewInstanceId | None = None
    """Idempotency key: starting an existing id returns that instance, never a duplicate."""
    timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)] | None = None
    """Running-time limit; None = the configured default."""
    max_attempts: Annotated[int, Field(ge=1, le=100)] | None = None
    """None = the configured default (3)."""
    env: Annotated[dict[EnvName, EnvValue], Field(max_length=256)] = {}
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0


class StopInstanceRequest(Request):
    op = "stop_instance"
    instance_id: Identifier
    grace_s: Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)] = 10.0
    """Seconds between SIGTERM and SIGKILL."""


class ResumeInstanceRequest(Request):
    op = "resume_instance"
    instance_id: Identifier


class SendSignalRequest(Request):
    op = "send_signal"
    instance_id: Identifier
    signal: SignalName


class SendCustomSignalRequest(Request):
    op = "send_custom_signal"
    instance_id: Identifier
    name: Identifier
    payload: JsonValue = None


class GetInstanceRequest(Request):
    op = "get_instance"
    instance_id: Identifier


class ListInstancesRequest(Request):
    """Filters combine with AND. Ranges are ``after <= t < before`` in epoch ms; an instance
    that has not finished never matches a finished range."""

    op = "list_instances"
    tenant: Identifier | None = None
    status: Annotated[list[StatusName], Field(min_length=1, max_length=6)] | None = None
    """None = every status."""
    image: ImageRef | None = None
    created_after_ms: EpochMs | None = None
    created_before_ms: EpochMs | None = None
    finished_after_ms: EpochMs | None = None
    finished_before_ms: EpochMs | None = None
    order: InstanceOrderName = "-created_at"
    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0

    @field_validator("created_before_ms", "finished_before_ms")
    @classmethod
    def _range_not_empty(cls, value: int | None, info: ValidationInfo) -> int | None:
        start_field = info.field_name.replace("_before_", "_after_")  # type: ignore[union-attr]
        start = info.data.get(start_field)
        if value is not None and start is not None and value <= start:
            raise ValueError(f"must be greater than {start_field} ({start})")
        return value


class ListCheckpointsRequest(Request):
    op = "list_checkpoints"
    instance_id: Identifier
    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0
    with_state: bool = False


class GetCheckpointRequest(Request):
    op = "get_checkpoint"
    instance_id: Identifier
    checkpoint_id: Identifier


class ListEventsRequest(Request):
    op = "list_events"
    instance_id: Identifier
    after_id: EventId = 0
    """Only events with a larger id (a cursor: pass the last id seen)."""
    limit: Limit = DEFAULT_LIMIT


class WatchRequest(Request):
    """Server-streamed: the response is a sequence of ``WatchFrame``s."""

    op = "watch"
    instance_id: Identifier | None = None
    """None = every event of the tenant (of every tenant, or ``tenant``, for an admin)."""
    tenant: Identifier | None = None
    after_id: EventId = 0
    """Replay stored events with a larger id first, then follow live."""


MANAGEMENT_REQUESTS: dict[str, type[Request]] = {
    cls.op: cls
    for cls in (
        HelloRequest,
        HealthRequest,
        RegisterImageRequest,
        ListImagesRequest,
        GetImageRequest,
        DeleteImageRequest,
        StartInstanceRequest,
        StopInstanceRequest,
        ResumeInstanceRequest,
        SendSignalRequest,
        SendCustomSignalRequest,
        GetInstanceRequest,
        ListInstancesRequest,
        ListCheckpointsRequest,
        GetCheckpointRequest,
        ListEventsRequest,
        WatchRequest,
    )
}


# --- responses -----------------------------------------------------------------------------


class HelloResponse(Message):
    tenant: str | None
    """The token's tenant; None for an admin token."""
    admin: bool


class HealthResponse(Message):
    version: str
    uptime_s: float
    node_id: str
    instances: dict[StatusName, Count]
    """Number of instances in each status (every status present, zeros included)."""


class ImageSummary(Message):
    image_id: str
    tenant: str
    name: str
    version: int
    """1 for the first registration of ``name``, +1 for each re-registration."""
    description: str = ""
    entrypoint: str | None = None
    filename: str
    size_bytes: int
    sha256: str
    metadata: dict[str, str] = {}
    has_input_schema: bool = False
    created_at_ms: int


class ImageDetail(ImageSummary):
    """Response of ``get_image`` and ``register_image``."""

    input_schema: dict[str, JsonValue] | None = None


class ImagePage(Message):
    items: list[ImageSummary]
    total: int


class DeleteImageResponse(Message):
    image_id: str


class StartInstanceResponse(Message):
    instance_id: str
    status: StatusName
    created: bool
    """False when ``instance_id`` already existed (the idempotent answer)."""


class InstanceStatusResponse(Message):
    """Response of stop_instance, resume_instance, send_signal and send_custom_signal: the
    instance's status once the request was applied (a stop or pause may still be in flight)."""

    instance_id: str
    status: StatusName
    termination_reason: str | None = None


class InstanceSummary(Message):
    """One row of ``list_instances``; also the fields ``runtara-ctl instance get --json``
    guarantees (DESIGN section 11)."""

    instance_id: str
    tenant: str
    image: str
    """The id of the image version the instance is pinned to."""
    image_name: str
    status: StatusName
    termination_reason: str | None = None
    attempt: int
    input: JsonValue = None
    output: JsonValue = None
    error: str | None = None
    priority: int = 0
    created_at_ms: int
    started_at_ms: int | None = None
    finished_at_ms: int | None = None


class InstanceDetail(InstanceSummary):
    """Response of ``get_instance``: everything about one instance."""

    max_attempts: int
    timeout_s: float | None = None
    checkpoint_id: str | None = None
    """The last saved checkpoint."""
    wake_at_ms: int | None = None
    heartbeat_at_ms: int | None = None
    stderr_tail: str | None = None
    peak_rss_bytes: int | None = None
    cpu_time_ms: int | None = None
    run_dir_removed: bool = False
    """The finished instance's run directory (full stdout/stderr logs, workspace) was deleted by
    retention (RUNTARA_RUN_RETENTION_S): ``stderr_tail`` is what is left of its output."""


class InstancePage(Message):
    items: list[InstanceSummary]
    total: int


class CheckpointRow(Message):
    checkpoint_id: str
    created_at_ms: int
    size_bytes: int
    state: bytes | None = None
    """Only with ``with_state`` (always in ``get_checkpoint``)."""


class CheckpointPage(Message):
    items: list[CheckpointRow]
    total: int


class EventRow(Message):
    event_id: int
    """Increasing; the cursor of ``list_events`` / ``watch`` (``after_id``)."""
    instance_id: str
    type: str
    """An ``EventType`` value; an open set, so a newer server's kinds still parse."""
    subtype: str | None = None
    payload: bytes | None = None
    created_at_ms: int


class EventPage(Message):
    items: list[EventRow]
    total: int
    """Events of the instance with an id above ``after_id``, this page included."""


class WatchFrame(Message):
    """One frame of a ``watch`` stream: ``event`` (with ``event``), or a last ``end`` frame
    (with the instance's final ``status`` when one instance was watched)."""

    frame: Literal["event", "end"]
    event: EventRow | None = None
    status: StatusName | None = None
    termination_reason: str | None = None

    @model_validator(mode="after")
    def _fields_match_frame(self) -> WatchFrame:
        if self.frame == "event" and self.event is None:
            raise ValueError("an 'event' frame needs the field 'event'")
        if self.frame == "end" and self.event is not None:
            raise ValueError("an 'end' frame carries no 'event'")
        return self


MANAGEMENT_RESPONSES: dict[str, type[Message]] = {
    "hello": HelloResponse,
    "health": HealthResponse,
    "register_image": ImageDetail,
    "list_images": ImagePage,
    "get_image": ImageDetail,
    "delete_image": DeleteImageResponse,
    "start_instance": StartInstanceResponse,
    "stop_instance": InstanceStatusResponse,
    "resume_instance": InstanceStatusResponse,
    "send_signal": InstanceStatusResponse,
    "send_custom_signal": InstanceStatusResponse,
    "get_instance": InstanceDetail,
    "list_instances": InstancePage,
    "list_checkpoints": CheckpointPage,
    "get_checkpoint": CheckpointRow,
    "list_events": EventPage,
    "watch": WatchFrame,
}
"""The response type of each op (``watch``: the type of every streamed frame)."""

