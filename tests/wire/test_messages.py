import pytest

from runtara_core.errors import BadRequest
from runtara_core.wire.messages import INSTANCE_REQUESTS, validate_message

VALID = {
    "register": {"instance_id": "inst-1", "token": "tok", "attempt": 1, "launch_id": "3f9a"},
    "checkpoint": {"checkpoint_id": "step-1", "state": b"\x01"},
    "get_checkpoint": {"checkpoint_id": "step-1"},
    "sleep": {"checkpoint_id": "nap", "duration_ms": 1000, "state": b"", "may_hibernate": True},
    "wait_signal": {
        "name": "approval", "checkpoint_id": "wait-1", "timeout_ms": 5000, "may_hibernate": False,
        "deadline_ms": 1_800_000_000_000,
    },
    "poll_signals": {},
    "ack_signal": {"signal_type": "cancel"},
    "event": {"type": "custom", "payload": b"{}", "subtype": "progress"},
    "retry_attempt": {"checkpoint_id": "step-1", "attempt": 2, "error": "boom"},
    "status": {},
}

# A value of the wrong type for each kind of field (strict: no coercion).
WRONG_TYPE = {str: 123, bytes: "not-bytes", int: "1", bool: 1}


def _fields():
    for op, model in INSTANCE_REQUESTS.items():
        for name, info in model.model_fields.items():
            yield op, model, name, info


def test_every_op_has_a_valid_sample():
    assert set(VALID) == set(INSTANCE_REQUESTS)
    for op, model in INSTANCE_REQUESTS.items():
        assert validate_message(model, VALID[op], op).to_wire() == {"op": op, **VALID[op]}


@pytest.mark.parametrize(
    "op,name", [(op, name) for op, _m, name, info in _fields() if info.is_required()]
)
def test_missing_field_is_bad_request_naming_it(op, name):
    fields = {k: v for k, v in VALID[op].items() if k != name}
    with pytest.raises(BadRequest, match=f"missing field '{name}'"):
        validate_message(INSTANCE_REQUESTS[op], fields, op)


@pytest.mark.parametrize("op,name", [(op, name) for op, _m, name, _i in _fields()])
def test_wrong_typed_field_is_bad_request_naming_it(op, name):
    valid_value = VALID[op][name]
    wrong = WRONG_TYPE[type(valid_value)] if type(valid_value) in WRONG_TYPE else 3.5
    fields = {**VALID[op], name: wrong}
    with pytest.raises(BadRequest, match=f"field '{name}' is invalid") as caught:
        validate_message(INSTANCE_REQUESTS[op], fields, op)
    assert caught.value.message.startswith(f"{op}: ")


@pytest.mark.parametrize(
    "op,fields,field",
    [
        ("register", {"instance_id": "", "token": "t", "attempt": 1}, "instance_id"),
        ("register", {"instance_id": "i", "token": "t", "attempt": 0}, "attempt"),
        ("register", {"instance_id": "i", "token": "t", "attempt": 1, "launch_id": ""}, "launch_id"),
        ("register", {"instance_id": "i" * 257, "token": "t", "attempt": 1}, "instance_id"),
        ("sleep", {"checkpoint_id": "c", "duration_ms": -1}, "duration_ms"),
        ("ack_signal", {"signal_type": "explode"}, "signal_type"),
        ("event", {"type": "bogus"}, "type"),
        ("register", {"instance_id": "i", "token": "t", "attempt": True}, "attempt"),
    ],
)
def test_out_of_range_values_name_the_field(op, fields, field):
    with pytest.raises(BadRequest, match=f"field '{field}'"):
        validate_message(INSTANCE_REQUESTS[op], fields, op)


def test_unknown_extra_fields_are_ignored():
    fields = {**VALID["checkpoint"], "from_the_future": 1}
    assert validate_message(INSTANCE_REQUESTS["checkpoint"], fields, "checkpoint").checkpoint_id == "step-1"
