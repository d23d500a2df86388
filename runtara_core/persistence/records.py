"""Driver records to row dataclasses, and the column lists both backends select.

sqlite3.Row and asyncpg.Record both index by column name and both drivers return BLOB/BYTEA as
bytes, so one decoder per row type serves both backends. JSON columns are TEXT in both schemas
and are encoded and decoded only here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from runtara_core.persistence.rows import (
    CheckpointRow,
    CustomSignalRow,
    EventRow,
    EventType,
    ImageRow,
    InstanceRow,
    InstanceStatus,
    InstanceStatusRow,
    SignalRow,
    SignalType,
    TerminationReason,
)


class Record(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


INSTANCE_COLUMNS = (
    "instance_id, tenant, image_id, image_name, image_version, status, termination_reason, "
    "attempt, max_attempts, input, output, error, created_at_ms, started_at_ms, finished_at_ms, "
    "updated_at_ms, wake_at_ms, heartbeat_at_ms, waiting_signal_name, checkpoint_id, node_id, "
    "priority, timeout_ms, env, pid, pid_create_time, peak_rss_bytes, cpu_time_ms, exit_code, "
    "exit_signal, stderr_tail, launch_id, run_time_ms"
)
IMAGE_COLUMNS = (
    "image_id, tenant, name, version, description, entrypoint, input_schema, metadata, sha256, "
    "size_bytes, created_at_ms, filename"
)
EVENT_COLUMNS = "id, instance_id, type, subtype, payload, created_at_ms"
SIGNAL_COLUMNS = "instance_id, signal_type, payload, created_at_ms"
CUSTOM_SIGNAL_COLUMNS = (
    "id, instance_id, name, payload, created_at_ms, consumed_at_ms, consumed_by_checkpoint_id"
)


def encode_json(value: Mapping[str, Any] | None) -> str | None:
    """Stable, compact JSON text (sorted keys) so equal mappings store equal text."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


INSTANCE_STATUS_COLUMNS = "instance_id, status, finished_at_ms, node_id"


def instance_status_from_record(r: Record) -> InstanceStatusRow:
    return InstanceStatusRow(
        instance_id=r["instance_id"],
        status=InstanceStatus(r["status"]),
        finished_at_ms=r["finished_at_ms"],
        node_id=r["node_id"],
    )


def instance_from_record(r: Record) -> InstanceRow:
    reason = r["termination_reason"]
    return InstanceRow(
        instance_id=r["instance_id"],
        tenant=r["tenant"],
        image_id=r["image_id"],
        image_name=r["image_name"],
        image_version=r["image_version"],
        status=InstanceStatus(r["status"]),
        termination_reason=None if reason is None else TerminationReason(reason),
        attempt=r["attempt"],
        max_attempts=r["max_attempts"],
        input=r["input"],
        output=r["output"],
        error=r["error"],
        created_at_ms=r["created_at_ms"],
        started_at_ms=r["started_at_ms"],
        finished_at_ms=r["finished_at_ms"],
        updated_at_ms=r["updated_at_ms"],
        wake_at_ms=r["wake_at_ms"],
        heartbeat_at_ms=r["heartbeat_at_ms"],
        waiting_signal_name=r["waiting_signal_name"],
        checkpoint_id=r["checkpoint_id"],
        node_id=r["node_id"],
        priority=r["priority"],
        timeout_ms=r["timeout_ms"],
        env=decode_json(r["env"]),
        pid=r["pid"],
        pid_create_time=r["pid_create_time"],
        peak_rss_bytes=r["peak_rss_bytes"],
        cpu_time_ms=r["cpu_time_ms"],
        exit_code=r["exit_code"],
        exit_signal=r["exit_signal"],
        stderr_tail=r["stderr_tail"],
        launch_id=r["launch_id"],
        run_time_ms=r["run_time_ms"],
    )


def image_from_record(r: Record) -> ImageRow:
    return ImageRow(
        image_id=r["image_id"],
        tenant=r["tenant"],
        name=r["name"],
        version=r["version"],
        description=r["description"],
        entrypoint=r["entrypoint"],
        input_schema=decode_json(r["input_schema"]),
        metadata=decode_json(r["metadata"]),
        sha256=r["sha256"],
        size_bytes=r["size_bytes"],
        created_at_ms=r["created_at_ms"],
        filename=r["filename"],
    )


def checkpoint_from_record(r: Record) -> CheckpointRow:
    """Expects ``seq, instance_id, checkpoint_id, state, size_bytes, created_at_ms``."""
    return CheckpointRow(
        seq=r["seq"],
        instance_id=r["instance_id"],
        checkpoint_id=r["checkpoint_id"],
        state=r["state"],
        size_bytes=r["size_bytes"],
        created_at_ms=r["created_at_ms"],
    )


def event_from_record(r: Record) -> EventRow:
    return EventRow(
        id=r["id"],
        instance_id=r["instance_id"],
        type=EventType(r["type"]),
        subtype=r["subtype"],
        payload=r["payload"],
        created_at_ms=r["created_at_ms"],
    )


def signal_from_record(r: Record) -> SignalRow:
    return SignalRow(
        instance_id=r["instance_id"],
        signal_type=SignalType(r["signal_type"]),
        payload=r["payload"],
        created_at_ms=r["created_at_ms"],
    )


def custom_signal_from_record(r: Record) -> CustomSignalRow:
    return CustomSignalRow(
        id=r["id"],
        instance_id=r["instance_id"],
        name=r["name"],
        payload=r["payload"],
        created_at_ms=r["created_at_ms"],
        consumed_at_ms=r["consumed_at_ms"],
        consumed_by_checkpoint_id=r["consumed_by_checkpoint_id"],
    )
