import asyncio

import pytest

from runtara_core.errors import BadRequest
from runtara_core.wire.management_messages import (
    MANAGEMENT_REQUESTS,
    MANAGEMENT_RESPONSES,
    EventRow,
    HealthResponse,
    InstanceDetail,
    InstancePage,
    InstanceSummary,
    RegisterImageRequest,
    WatchFrame,
)
from runtara_core.wire.dispatch import Route, dispatch, routes
from runtara_core.wire.messages import INSTANCE_REQUESTS, validate_message

SHA = "ab" * 32

VALID = {
    "hello": {"token": "secret-token"},
    "health": {},
    "register_image": {
        "tenant": "acme",
        "name": "billing",
        "description": "monthly billing",
        "entrypoint": "billing.main:run",
        "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
        "metadata": {"team": "finance"},
        "size_bytes": 3,
        "sha256": SHA,
        "filename": "billing.py",
        "data": b"abc",
    },
    "list_images": {"tenant": "acme", "name": "billing", "limit": 10, "offset": 20},
    "get_image": {"image": "billing", "tenant": None},
    "delete_image": {"image": "img-1", "tenant": "acme"},
    "start_instance": {
        "image": "billing",
        "tenant": None,
        "input": {"n": 3, "items": [1, 2.5, None, True, "x"]},
        "instance_id": "inst-1",
        "timeout_s": 30.0,
        "max_attempts": 5,
        "env": {"LOG_LEVEL": "debug", "_X1": ""},
        "priority": -7,
    },
    "stop_instance": {"instance_id": "inst-1", "grace_s": 2.5},
    "resume_instance": {"instance_id": "inst-1"},
    "send_signal": {"instance_id": "inst-1", "signal": "pause"},
    "send_custom_signal": {"instance_id": "inst-1", "name": "approval", "payload": {"ok": True}},
    "get_instance": {"instance_id": "inst-1"},
    "list_instances": {
        "tenant": None,
        "status": ["running", "failed"],
        "image": "billing",
        "created_after_ms": 1_700_000_000_000,
        "created_before_ms": 1_800_000_000_000,
        "finished_after_ms": None,
        "finished_before_ms": 1_800_000_000_000,
        "order": "finished_at",
        "limit": 1000,
        "offset": 0,
    },
    "list_checkpoints": {"instance_id": "inst-1", "limit": 1, "offset": 3, "with_state": True},
    "get_checkpoint": {"instance_id": "inst-1", "checkpoint_id": "step-1"},
    "list_events": {"instance_id": "inst-1", "after_id": 42, "limit": 50},
    "watch": {"instance_id": None, "tenant": None, "after_id": 0},
}


def test_every_op_has_a_valid_sample_that_round_trips():
    assert set(VALID) == set(MANAGEMENT_REQUESTS)
    for op, model in MANAGEMENT_REQUESTS.items():
        assert model.op == op
        message = validate_message(model, VALID[op], op)
        wire = message.to_wire()
        assert wire == {"op": op, **VALID[op]}
        fields = {k: v for k, v in wire.items() if k != "op"}
        assert validate_message(model, fields, op) == message


def test_every_op_has_a_response_type():
    assert set(MANAGEMENT_RESPONSES) == set(MANAGEMENT_REQUESTS)
    # get_checkpoint exists in both protocols on purpose; they are separate tables.
    assert MANAGEMENT_REQUESTS["get_checkpoint"] is not INSTANCE_REQUESTS["get_checkpoint"]


def test_defaults():
    start = validate_message(MANAGEMENT_REQUESTS["start_instance"], {"image": "billing"}, "s")
    assert start.to_wire() == {
        "op": "start_instance",
        "image": "billing",
        "tenant": None,
        "input": None,
        "instance_id": None,
        "timeout_s": None,
        "max_attempts": None,
        "env": {},
        "priority": 0,
    }
    stop = validate_message(MANAGEMENT_REQUESTS["stop_instance"], {"instance_id": "i"}, "s")
    assert stop.grace_s == 10
    images = validate_message(MANAGEMENT_REQUESTS["list_images"], {}, "l")
    assert (images.limit, images.offset, images.tenant, images.name) == (100, 0, None, None)
    instances = validate_message(MANAGEMENT_REQUESTS["list_instances"], {}, "l")
    assert (instances.order, instances.status, instances.limit) == ("-created_at", None, 100)
    signal = validate_message(
        MANAGEMENT_REQUESTS["send_custom_signal"], {"instance_id": "i", "name": "n"}, "s"
    )
    assert signal.payload is None
    watch = validate_message(MANAGEMENT_REQUESTS["watch"], {}, "w")
    assert (watch.instance_id, watch.after_id) == (None, 0)


def test_register_image_without_data_means_the_bytes_follow():
    fields = {**VALID["register_image"], "data": None, "size_bytes": 50 * 1024 * 1024}
    message = validate_message(RegisterImageRequest, fields, "register_image")
    assert message.data is None and message.size_bytes == 50 * 1024 * 1024
    minimal = {"name": "n", "size_bytes": 1, "sha256": SHA, "filename": "w.tar.gz"}
    message = validate_message(RegisterImageRequest, minimal, "register_image")
    assert (message.tenant, message.entrypoint, message.input_schema) == (None, None, None)
    assert message.metadata == {} and message.description == ""


def test_sha256_is_normalised_to_lowercase():
    fields = {**VALID["register_image"], "sha256": SHA.upper()}
    assert validate_message(RegisterImageRequest, fields, "register_image").sha256 == SHA


@pytest.mark.parametrize(
    "op,changes,field",
    [
        ("register_image", {"sha256": "ab" * 31}, "sha256"),
        ("register_image", {"sha256": "zz" * 32}, "sha256"),
        ("register_image", {"entrypoint": "billing.run"}, "entrypoint"),
        ("register_image", {"entrypoint": "billing:"}, "entrypoint"),
        ("register_image", {"entrypoint": "bad-module:run"}, "entrypoint"),
        ("register_image", {"data": b"abcd"}, "data"),
        ("register_image", {"size_bytes": 0}, "size_bytes"),
        ("register_image", {"filename": "../x.py"}, "filename"),
        ("register_image", {"filename": ""}, "filename"),
        ("register_image", {"input_schema": [1, 2]}, "input_schema"),
        ("register_image", {"metadata": {"k": 1}}, "metadata.k"),
        ("register_image", {"name": ""}, "name"),
        ("start_instance", {"env": {"RUNTARA_TOKEN": "x"}}, "env.RUNTARA_TOKEN"),
        ("start_instance", {"env": {"runtara_token": "x"}}, "env.runtara_token"),
        ("start_instance", {"env": {"1BAD": "x"}}, "env.1BAD"),
        ("start_instance", {"env": {"A-B": "x"}}, "env.A-B"),
        ("start_instance", {"env": {"A": "x\x00y"}}, "env.A"),
        ("start_instance", {"max_attempts": 0}, "max_attempts"),
        ("start_instance", {"max_attempts": 101}, "max_attempts"),
        ("start_instance", {"timeout_s": 0}, "timeout_s"),
        ("start_instance", {"timeout_s": -1.5}, "timeout_s"),
        ("start_instance", {"timeout_s": float("inf")}, "timeout_s"),
        ("start_instance", {"priority": 1001}, "priority"),
        ("start_instance", {"input": b"bytes are not JSON"}, "input"),
        ("start_instance", {"instance_id": ""}, "instance_id"),
        ("stop_instance", {"grace_s": -1}, "grace_s"),
        ("stop_instance", {"grace_s": 3601}, "grace_s"),
        ("send_signal", {"signal": "kill"}, "signal"),
        ("send_custom_signal", {"name": ""}, "name"),
        ("list_images", {"limit": 0}, "limit"),
        ("list_images", {"limit": 1001}, "limit"),
        ("list_images", {"offset": -1}, "offset"),
        ("list_instances", {"order": "created"}, "order"),
        ("list_instances", {"order": "+created_at"}, "order"),
        ("list_instances", {"status": ["running", "sleeping"]}, "status.1"),
        ("list_instances", {"status": []}, "status"),
        ("list_instances", {"status": "running"}, "status"),
        ("list_instances", {"limit": 0}, "limit"),
        ("list_instances", {"created_after_ms": -1}, "created_after_ms"),
        ("list_instances", {"created_before_ms": 1_600_000_000_000}, "created_before_ms"),
        ("list_instances", {"finished_after_ms": 5, "finished_before_ms": 5}, "finished_before_ms"),
        ("list_checkpoints", {"limit": 0}, "limit"),
        ("list_events", {"after_id": -1}, "after_id"),
        ("list_events", {"limit": 0}, "limit"),
        ("watch", {"after_id": -1}, "after_id"),
    ],
)
def test_invalid_field_is_bad_request_naming_it(op, changes, field):
    fields = {**VALID[op], **changes}
    with pytest.raises(BadRequest) as caught:
        validate_message(MANAGEMENT_REQUESTS[op], fields, op)
    assert caught.value.message.startswith(f"{op}: field '{field}")
    assert f"field '{field}" in caught.value.message


def test_reserved_env_message_says_why():
    fields = {**VALID["start_instance"], "env": {"RUNTARA_CORE_ADDR": "x"}}
    with pytest.raises(BadRequest, match="reserved"):
        validate_message(MANAGEMENT_REQUESTS["start_instance"], fields, "start_instance")


def test_a_start_may_set_only_the_instance_own_sdk_options():
    fields = {**VALID["start_instance"], "env": {"RUNTARA_FAILPOINTS": "step.after_body#1@1", "RUNTARA_LOG_LEVEL": "DEBUG"}}
    request = validate_message(MANAGEMENT_REQUESTS["start_instance"], fields, "start_instance")
    assert dict(request.env) == fields["env"]
    for name in ("RUNTARA_INSTANCE_ID", "RUNTARA_TLS_INSECURE", "runtara_failpoints"):
        with pytest.raises(BadRequest, match="may set only RUNTARA_FAILPOINTS, RUNTARA_LOG_LEVEL"):
            validate_message(MANAGEMENT_REQUESTS["start_instance"], {**fields, "env": {name: "x"}}, "start_instance")


@pytest.mark.parametrize("instance_id", ["../../etc", "a/b", "/abs", ".hidden", "..", "a b", "x\\y", "-flag"])
def test_an_instance_id_that_cannot_name_a_run_directory_is_refused(instance_id: str) -> None:
    """It becomes ``runs/<id>/``: found by the chaos work's run-directory retention, "../x"
    made a launch write its logs outside the data directory. Ids made before the rule still
    address their instances (``process_runner.run_dir_of`` gives them a hash-named directory)."""
    fields = {**VALID["start_instance"], "instance_id": instance_id}
    with pytest.raises(BadRequest, match="must start with a letter, digit or '_'"):
        validate_message(MANAGEMENT_REQUESTS["start_instance"], fields, "start_instance")
    for op in ("get_instance", "stop_instance", "send_signal"):
        request = validate_message(MANAGEMENT_REQUESTS[op], {**VALID[op], "instance_id": instance_id}, op)
        assert request.instance_id == instance_id


@pytest.mark.parametrize("instance_id", ["order-1", "user:42", "k101-24", "a.b_c@d+e=f", "_x", "9"])
def test_ordinary_instance_ids_pass(instance_id: str) -> None:
    request = validate_message(MANAGEMENT_REQUESTS["start_instance"], {**VALID["start_instance"], "instance_id": instance_id}, "start_instance")
    assert request.instance_id == instance_id


def test_entrypoint_message_says_the_expected_form():
    fields = {**VALID["register_image"], "entrypoint": "billing"}
    with pytest.raises(BadRequest, match="module:function"):
        validate_message(RegisterImageRequest, fields, "register_image")


@pytest.mark.parametrize(
    "op,name",
    [
        (op, name)
        for op, model in MANAGEMENT_REQUESTS.items()
        for name, info in model.model_fields.items()
        if info.is_required()
    ],
)
def test_missing_field_is_bad_request_naming_it(op, name):
    fields = {k: v for k, v in VALID[op].items() if k != name}
    with pytest.raises(BadRequest, match=f"{op}: missing field '{name}'"):
        validate_message(MANAGEMENT_REQUESTS[op], fields, op)


@pytest.mark.parametrize(
    "op,field,value",
    [
        ("list_images", "limit", "10"),
        ("list_images", "offset", 1.0),
        ("start_instance", "priority", "1"),
        ("start_instance", "max_attempts", True),
        ("start_instance", "timeout_s", "30"),
        ("stop_instance", "grace_s", "10"),
        ("list_events", "after_id", "0"),
        ("list_checkpoints", "with_state", 1),
        ("register_image", "size_bytes", "3"),
        ("register_image", "data", "abc"),
        ("register_image", "name", 5),
        ("hello", "token", b"secret"),
        ("get_instance", "instance_id", 12),
    ],
)
def test_strict_mode_does_not_coerce(op, field, value):
    fields = {**VALID[op], field: value}
    with pytest.raises(BadRequest, match=f"{op}: field '{field}' is invalid"):
        validate_message(MANAGEMENT_REQUESTS[op], fields, op)


def test_unknown_extra_fields_are_ignored():
    for op, model in MANAGEMENT_REQUESTS.items():
        fields = {**VALID[op], "from_the_future": 1, "op": op}
        message = validate_message(model, fields, op)
        assert "from_the_future" not in message.to_wire()
        assert message.to_wire() == {"op": op, **VALID[op]}


# --- responses -----------------------------------------------------------------------------

EVENT = {
    "event_id": 7,
    "instance_id": "inst-1",
    "type": "custom",
    "subtype": "progress",
    "payload": b"{}",
    "created_at_ms": 1_700_000_000_123,
}

SUMMARY = {
    "instance_id": "inst-1",
    "tenant": "acme",
    "image": "img-1",
    "image_name": "billing",
    "status": "completed",
    "termination_reason": "completed",
    "attempt": 1,
    "input": {"n": 3},
    "output": [1, 2, 3],
    "error": None,
    "priority": 0,
    "created_at_ms": 1,
    "started_at_ms": 2,
    "finished_at_ms": 3,
}

IMAGE = {
    "image_id": "img-1",
    "tenant": "acme",
    "name": "billing",
    "version": 2,
    "description": "",
    "entrypoint": "billing:run",
    "filename": "billing.py",
    "size_bytes": 3,
    "sha256": SHA,
    "metadata": {},
    "has_input_schema": True,
    "created_at_ms": 1,
}

RESPONSES = {
    "hello": {"tenant": None, "admin": True},
    "health": {
        "version": "0.1.0",
        "uptime_s": 12.5,
        "node_id": "node-a",
        "instances": {"pending": 1, "running": 2, "completed": 0},
    },
    "register_image": {**IMAGE, "input_schema": {"type": "object"}},
    "list_images": {"items": [IMAGE], "total": 1},
    "get_image": {**IMAGE, "input_schema": None},
    "delete_image": {"image_id": "img-1"},
    "start_instance": {"instance_id": "inst-1", "status": "pending", "created": True},
    "stop_instance": {"instance_id": "i", "status": "running", "termination_reason": None},
    "resume_instance": {"instance_id": "i", "status": "pending", "termination_reason": None},
    "send_signal": {"instance_id": "i", "status": "cancelled", "termination_reason": "cancelled"},
    "send_custom_signal": {"instance_id": "i", "status": "pending", "termination_reason": None},
    "get_instance": {
        **SUMMARY,
        "max_attempts": 3,
        "timeout_s": None,
        "checkpoint_id": "step-3",
        "wake_at_ms": None,
        "heartbeat_at_ms": 3,
        "stderr_tail": "",
        "peak_rss_bytes": 10_000_000,
        "cpu_time_ms": 120,
        "run_dir_removed": False,
    },
    "list_instances": {"items": [SUMMARY], "total": 41},
    "list_checkpoints": {
        "items": [{"checkpoint_id": "s", "created_at_ms": 1, "size_bytes": 0, "state": None}],
        "total": 1,
    },
    "get_checkpoint": {"checkpoint_id": "s", "created_at_ms": 1, "size_bytes": 1, "state": b"x"},
    "list_events": {"items": [EVENT], "total": 1},
    "watch": {"frame": "event", "event": EVENT, "status": None, "termination_reason": None},
}


@pytest.mark.parametrize("op", sorted(MANAGEMENT_RESPONSES))
def test_every_response_round_trips(op):
    model = MANAGEMENT_RESPONSES[op]
    message = validate_message(model, RESPONSES[op], op)
    assert message.to_wire() == RESPONSES[op]
    assert validate_message(model, message.to_wire(), op) == message


def test_instance_get_json_fields_of_design_section_11():
    required = {
        "instance_id", "status", "termination_reason", "attempt", "input", "output",
        "error", "image", "created_at_ms", "started_at_ms", "finished_at_ms",
    }  # fmt: skip
    assert required <= set(InstanceSummary.model_fields)
    assert required <= set(InstanceDetail.model_fields)


def test_pages_and_health_are_typed():
    page = validate_message(InstancePage, RESPONSES["list_instances"], "list_instances")
    assert isinstance(page.items[0], InstanceSummary) and page.total == 41
    with pytest.raises(BadRequest, match="field 'instances.sleeping"):
        validate_message(HealthResponse, {**RESPONSES["health"], "instances": {"sleeping": 1}}, "h")
    with pytest.raises(BadRequest, match="field 'items.0.status'"):
        bad = {"items": [{**SUMMARY, "status": "done"}], "total": 1}
        validate_message(InstancePage, bad, "list_instances")


def test_watch_frames():
    end = validate_message(WatchFrame, {"frame": "end", "status": "failed"}, "watch")
    assert end.event is None and end.status == "failed"
    event = validate_message(WatchFrame, {"frame": "event", "event": EVENT}, "watch")
    assert event.event == EventRow(**EVENT)
    with pytest.raises(BadRequest, match="'event' frame needs"):
        validate_message(WatchFrame, {"frame": "event"}, "watch")
    with pytest.raises(BadRequest, match="'end' frame carries no 'event'"):
        validate_message(WatchFrame, {"frame": "end", "event": EVENT}, "watch")
    with pytest.raises(BadRequest, match="field 'frame'"):
        validate_message(WatchFrame, {"frame": "tick"}, "watch")


def test_requests_plug_into_a_dispatch_table():
    seen = []

    async def handle(request, session):
        seen.append((request, session))
        response = MANAGEMENT_RESPONSES["stop_instance"]
        return response(instance_id=request.instance_id, status="running")

    table = routes(Route(MANAGEMENT_REQUESTS["stop_instance"], handle))
    ok = asyncio.run(dispatch(table, {"op": "stop_instance", "instance_id": "i"}, "sess"))
    assert ok["ok"] is True and ok["status"] == "running"
    assert seen[0][0].grace_s == 10 and seen[0][1] == "sess"
    negative = {"op": "stop_instance", "instance_id": "i", "grace_s": -1}
    bad = asyncio.run(dispatch(table, negative, "s"))
    assert bad["ok"] is False and bad["error"]["code"] == "BAD_REQUEST"
    assert "grace_s" in bad["error"]["message"]
