"""Pure text rendering for ``runtara-ctl``: every function returns a string, none prints.

Human output is aligned plain-text tables for lists and ``key: value`` blocks for single objects;
``--json`` output is ``to_json`` of the response model, with bytes made readable (JSON payloads
decoded, other binary as base64) so one document always parses.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from runtara_core.wire.management_messages import (
    CheckpointPage,
    EventPage,
    EventRow,
    HealthResponse,
    ImageDetail,
    ImagePage,
    InstanceDetail,
    InstancePage,
    InstanceStatusResponse,
    StartInstanceResponse,
)

MISSING = "-"
SHORT_PAYLOAD_CHARS = 60
STDERR_TAIL_LINES = 20


# --- scalars ---------------------------------------------------------------------------------


def format_time(epoch_ms: int | None) -> str:
    """Local wall-clock time, to the second: what a person compares with their clock."""
    if epoch_ms is None:
        return MISSING
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_bytes(size: int | None) -> str:
    if size is None:
        return MISSING
    if size < 1024:
        return f"{size} B"
    if size < 1024**2:
        return f"{size / 1024:.1f} KiB"
    if size < 1024**3:
        return f"{size / 1024**2:.1f} MiB"
    return f"{size / 1024**3:.1f} GiB"


def elapsed_s(start_ms: int | None, end_ms: int | None) -> float | None:
    if start_ms is None or end_ms is None:
        return None
    return (end_ms - start_ms) / 1000


def short(text: str, width: int = SHORT_PAYLOAD_CHARS) -> str:
    """One line, at most ``width`` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def decode_payload(payload: bytes | None) -> Any:
    """An event payload as a value: the JSON it holds, else text, else ``base64:...``."""
    if payload is None:
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode("ascii")
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- JSON output -------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Models and bytes turned into plain JSON values (bytes via ``decode_payload``)."""
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return decode_payload(bytes(value))
    return value


def to_json(value: Any) -> str:
    return json.dumps(jsonable(value), ensure_ascii=False, indent=2)


# --- layouts -----------------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (list(headers), *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render_fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``key: value`` lines with the values aligned; multi-line values are indented."""
    if not pairs:
        return ""
    width = max(len(key) for key, _ in pairs) + 1
    lines = []
    for key, value in pairs:
        first, *rest = value.split("\n") if value else [""]
        lines.append(f"{(key + ':').ljust(width)} {first}".rstrip())
        lines.extend(f"{'':{width}} {line}".rstrip() for line in rest)
    return "\n".join(lines)


def _value(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    return compact_json(jsonable(value))


def page_footer(shown: int, total: int, offset: int) -> str:
    if shown == 0:
        return f"(none of {total})" if total else "(none)"
    return f"({offset + 1}-{offset + shown} of {total})"


# --- responses -----------------------------------------------------------------------------------


def render_health(health: HealthResponse) -> str:
    counts = "  ".join(f"{status}={count}" for status, count in health.instances.items())
    return render_fields(
        [
            ("status", "ok"),
            ("version", health.version),
            ("node", health.node_id),
            ("uptime", format_duration(health.uptime_s)),
            ("instances", counts or MISSING),
        ]
    )


def render_image_page(page: ImagePage, offset: int = 0) -> str:
    rows = [
        [
            image.image_id,
            image.name,
            str(image.version),
            image.tenant,
            image.entrypoint or MISSING,
            format_bytes(image.size_bytes),
            format_time(image.created_at_ms),
        ]
        for image in page.items
    ]
    table = render_table(["IMAGE", "NAME", "VERSION", "TENANT", "ENTRYPOINT", "SIZE", "CREATED"], rows)
    return f"{table}\n{page_footer(len(page.items), page.total, offset)}"


def render_image(image: ImageDetail) -> str:
    metadata = "\n".join(f"{k}={v}" for k, v in sorted(image.metadata.items()))
    return render_fields(
        [
            ("image", image.image_id),
            ("name", image.name),
            ("version", str(image.version)),
            ("tenant", image.tenant),
            ("description", image.description or MISSING),
            ("entrypoint", image.entrypoint or MISSING),
            ("file", image.filename),
            ("size", format_bytes(image.size_bytes)),
            ("sha256", image.sha256),
            ("created", format_time(image.created_at_ms)),
            ("metadata", metadata or MISSING),
            ("input schema", _value(image.input_schema)),
        ]
    )


def render_status_text(status: str, reason: str | None) -> str:
    return f"{status} ({reason})" if reason and reason != status else status


def render_instance_page(page: InstancePage, offset: int = 0) -> str:
    rows = [
        [
            item.instance_id,
            render_status_text(item.status, item.termination_reason),
            item.image_name,
            str(item.attempt),
            format_time(item.created_at_ms),
            format_duration(elapsed_s(item.started_at_ms, item.finished_at_ms)),
        ]
        for item in page.items
    ]
    table = render_table(["INSTANCE", "STATUS", "IMAGE", "ATTEMPT", "CREATED", "RAN"], rows)
    return f"{table}\n{page_footer(len(page.items), page.total, offset)}"


def stderr_tail(text: str | None, lines: int = STDERR_TAIL_LINES) -> str:
    if not text:
        return ""
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


RUN_DIR_REMOVED_NOTE = (
    "(the run directory was removed by retention, RUNTARA_RUN_RETENTION_S: "
    "this is the stderr tail kept on the instance)"
)


def render_logs(tail: str | None, *, run_dir_removed: bool = False) -> str:
    """``instance logs``: the stored stderr tail, and why there is no more once the run
    directory is gone."""
    text = tail.rstrip("\n") if tail else "(no stderr output)"
    return f"{text}\n{RUN_DIR_REMOVED_NOTE}" if run_dir_removed else text


def render_instance(detail: InstanceDetail) -> str:
    cpu = None if detail.cpu_time_ms is None else detail.cpu_time_ms / 1000
    pairs = [
        ("instance", detail.instance_id),
        ("status", detail.status),
        ("reason", detail.termination_reason or MISSING),
        ("attempt", f"{detail.attempt} of {detail.max_attempts}"),
        ("image", f"{detail.image_name} ({detail.image})"),
        ("tenant", detail.tenant),
        ("priority", str(detail.priority)),
        ("input", _value(detail.input)),
        ("output", _value(detail.output)),
        ("error", detail.error or MISSING),
        ("created", format_time(detail.created_at_ms)),
        ("started", format_time(detail.started_at_ms)),
        ("finished", format_time(detail.finished_at_ms)),
        ("ran", format_duration(elapsed_s(detail.started_at_ms, detail.finished_at_ms))),
        ("timeout", format_duration(detail.timeout_s)),
        ("checkpoint", detail.checkpoint_id or MISSING),
        ("wakes at", format_time(detail.wake_at_ms)),
        ("heartbeat", format_time(detail.heartbeat_at_ms)),
        ("peak rss", format_bytes(detail.peak_rss_bytes)),
        ("cpu time", format_duration(cpu)),
    ]
    tail = stderr_tail(detail.stderr_tail)
    if tail:
        pairs.append(("stderr", tail))
    return render_fields(pairs)


def render_start(started: StartInstanceResponse) -> str:
    verb = "started" if started.created else "already exists"
    return f"{started.instance_id} {verb} ({started.status})"


def render_status_change(response: InstanceStatusResponse) -> str:
    return f"{response.instance_id}: {render_status_text(response.status, response.termination_reason)}"


def render_event_line(event: EventRow) -> str:
    """One live progress line: time, type, subtype, short payload."""
    payload = decode_payload(event.payload)
    shown = "" if payload is None else short(payload if isinstance(payload, str) else compact_json(payload))
    parts = [format_time(event.created_at_ms), event.type, event.subtype or "", shown]
    return "  ".join(part for part in parts if part)


def render_event_page(page: EventPage) -> str:
    rows = []
    for event in page.items:
        payload = decode_payload(event.payload)
        shown = "" if payload is None else short(payload if isinstance(payload, str) else compact_json(payload))
        rows.append(
            [str(event.event_id), format_time(event.created_at_ms), event.type, event.subtype or MISSING, shown]
        )
    table = render_table(["ID", "TIME", "TYPE", "SUBTYPE", "PAYLOAD"], rows)
    return f"{table}\n({len(page.items)} shown, {page.total} after the cursor)"


def render_checkpoint_page(page: CheckpointPage, offset: int = 0) -> str:
    rows = [
        [row.checkpoint_id, format_time(row.created_at_ms), format_bytes(row.size_bytes)]
        for row in page.items
    ]
    table = render_table(["CHECKPOINT", "CREATED", "SIZE"], rows)
    return f"{table}\n{page_footer(len(page.items), page.total, offset)}"


def render_outcome(detail: InstanceDetail) -> str:
    """What ``wait`` prints: the output when completed, else the status and error."""
    if detail.status == "completed":
        return _value(detail.output) if detail.output is not None else "null"
    line = f"{detail.instance_id} {render_status_text(detail.status, detail.termination_reason)}"
    return f"{line}: {detail.error}" if detail.error else line
