"""The pure rendering of runtara-ctl: tables, scalars, single objects, JSON output."""

from __future__ import annotations

import json
import re

from runtara_core.wire.management_messages import (
    EventPage,
    EventRow,
    HealthResponse,
    ImageDetail,
    ImagePage,
    InstanceDetail,
    InstancePage,
    InstanceSummary,
)
from runtara_environment import ctl_render as render

INSTANCE = {
    "instance_id": "order-1",
    "tenant": "acme",
    "image": "img-1",
    "image_name": "orders",
    "status": "failed",
    "termination_reason": "application_error",
    "attempt": 2,
    "input": {"n": 3},
    "output": None,
    "error": "ValueError: boom",
    "created_at_ms": 1_700_000_000_000,
    "started_at_ms": 1_700_000_001_000,
    "finished_at_ms": 1_700_000_066_500,
    "max_attempts": 3,
    "stderr_tail": "line 1\nTraceback\nValueError: boom\n",
    "peak_rss_bytes": 30 * 1024 * 1024,
    "cpu_time_ms": 1500,
}

IMAGE = {
    "image_id": "img-1",
    "tenant": "acme",
    "name": "orders",
    "version": 2,
    "filename": "orders.py",
    "size_bytes": 2048,
    "sha256": "ab" * 32,
    "created_at_ms": 1_700_000_000_000,
    "entrypoint": "orders:main",
    "metadata": {"team": "billing"},
}


def test_table_columns_are_aligned_and_trailing_space_is_trimmed() -> None:
    text = render.render_table(["ID", "STATUS"], [["a", "running"], ["longer-id", "x"]])
    lines = text.split("\n")
    assert lines[0] == "ID         STATUS"
    assert lines[1] == "a          running"
    assert lines[2] == "longer-id  x"
    assert all(line == line.rstrip() for line in lines)


def test_table_without_rows_is_just_the_header() -> None:
    assert render.render_table(["A", "B"], []) == "A  B"


def test_bytes_durations_and_times() -> None:
    assert render.format_bytes(None) == "-"
    assert render.format_bytes(512) == "512 B"
    assert render.format_bytes(1536) == "1.5 KiB"
    assert render.format_bytes(5 * 1024 * 1024) == "5.0 MiB"
    assert render.format_bytes(3 * 1024**3) == "3.0 GiB"
    assert render.format_duration(None) == "-"
    assert render.format_duration(0.25) == "250ms"
    assert render.format_duration(12.34) == "12.3s"
    assert render.format_duration(65.5) == "1m05s"
    assert render.format_duration(7260) == "2h01m"
    assert render.format_duration(2 * 86400 + 3600) == "2d01h"
    assert render.format_time(None) == "-"
    stamp = render.format_time(1_700_000_000_000)
    assert len(stamp) == 19 and stamp[4] == "-" and stamp[10] == " "


def test_short_flattens_and_cuts() -> None:
    assert render.short("a\n  b") == "a b"
    cut = render.short("x" * 100, 10)
    assert len(cut) == 10 and cut.endswith("…")


def test_payloads_decode_to_json_then_text_then_base64() -> None:
    assert render.decode_payload(None) is None
    assert render.decode_payload(b'{"a": 1}') == {"a": 1}
    assert render.decode_payload(b"plain text") == "plain text"
    assert render.decode_payload(b"\xff\x00") == "base64:/wA="


def test_fields_block_aligns_values_and_indents_continuations() -> None:
    text = render.render_fields([("a", "1"), ("long key", "x\ny")])
    assert text.split("\n") == ["a:        1", "long key: x", "          y"]


def test_instance_block_shows_status_reason_error_metrics_and_stderr_tail() -> None:
    text = render.render_instance(InstanceDetail.model_validate(INSTANCE))
    for expected in (
        "status:",
        "failed",
        "application_error",
        "2 of 3",
        '{"n":3}',
        "ValueError: boom",
        "orders (img-1)",
        "1m05s",
        "30.0 MiB",
        "1.5s",
        "Traceback",
    ):
        assert expected in text, expected


def test_instance_json_is_the_model_dump_with_the_guaranteed_fields() -> None:
    document = json.loads(render.to_json(InstanceDetail.model_validate(INSTANCE)))
    for key in (
        "instance_id",
        "status",
        "termination_reason",
        "attempt",
        "input",
        "output",
        "error",
        "image",
        "created_at_ms",
        "started_at_ms",
        "finished_at_ms",
    ):
        assert key in document
    assert document["input"] == {"n": 3}


def test_instance_page_table() -> None:
    row = {k: v for k, v in INSTANCE.items() if k in InstanceSummary.model_fields}
    page = InstancePage.model_validate({"items": [row], "total": 7})
    text = render.render_instance_page(page)
    header, line, footer = text.split("\n")
    assert header.split() == ["INSTANCE", "STATUS", "IMAGE", "ATTEMPT", "CREATED", "RAN"]
    assert re.split(r"\s{2,}", line)[:4] == ["order-1", "failed (application_error)", "orders", "2"]
    assert footer == "(1-1 of 7)"
    assert render.render_instance_page(InstancePage(items=[], total=0)).endswith("(none)")


def test_image_page_and_block() -> None:
    page = ImagePage.model_validate({"items": [IMAGE], "total": 1})
    text = render.render_image_page(page)
    assert "orders:main" in text and "2.0 KiB" in text
    block = render.render_image(ImageDetail.model_validate(IMAGE))
    assert "team=billing" in block and "ab" * 32 in block


def test_event_line_has_time_type_subtype_and_short_payload() -> None:
    event = EventRow(
        event_id=4,
        instance_id="order-1",
        type="custom",
        subtype="progress",
        payload=json.dumps({"done": 3, "of": 10}).encode(),
        created_at_ms=1_700_000_000_000,
    )
    line = render.render_event_line(event)
    assert line.endswith('custom  progress  {"done":3,"of":10}')
    page = EventPage(items=[event], total=1)
    assert "progress" in render.render_event_page(page)
    document = json.loads(render.to_json(page))
    assert document["items"][0]["payload"] == {"done": 3, "of": 10}


def test_health_block() -> None:
    health = HealthResponse(
        version="0.1.0",
        uptime_s=3700,
        node_id="node-a",
        instances={"pending": 0, "running": 2, "suspended": 0, "completed": 5, "failed": 1, "cancelled": 0},
    )
    text = render.render_health(health)
    assert "running=2" in text and "1h01m" in text and "node-a" in text


def test_outcome_prints_output_when_completed_and_error_otherwise() -> None:
    completed = InstanceDetail.model_validate({**INSTANCE, "status": "completed", "output": {"ok": True}, "error": None})
    assert render.render_outcome(completed) == '{"ok":true}'
    failed = InstanceDetail.model_validate(INSTANCE)
    assert render.render_outcome(failed) == "order-1 failed (application_error): ValueError: boom"
