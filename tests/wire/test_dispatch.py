import pytest

from runtara_core.errors import Conflict
from runtara_core.wire.dispatch import Route, dispatch, routes
from runtara_core.wire.envelope import parse_response
from runtara_core.wire.messages import (
    CheckpointRequest,
    CheckpointResponse,
    GetCheckpointRequest,
    StatusRequest,
)


async def save(request: CheckpointRequest, session: list) -> CheckpointResponse:
    session.append(request.checkpoint_id)
    return CheckpointResponse(found=False, state=request.state)


async def conflict(request: GetCheckpointRequest, session: list) -> None:
    raise Conflict("someone else won")


async def crash(request: StatusRequest, session: list) -> None:
    raise ZeroDivisionError("secret internal detail")


TABLE = routes(Route(CheckpointRequest, save), Route(GetCheckpointRequest, conflict), Route(StatusRequest, crash))


async def test_ok_response_carries_the_handler_result():
    seen: list = []
    response = await dispatch(TABLE, {"op": "checkpoint", "checkpoint_id": "a", "state": b"s"}, seen)
    assert response == {"ok": True, "found": False, "state": b"s", "pending_signal": None}
    assert seen == ["a"]


@pytest.mark.parametrize(
    "message,code,text",
    [
        ([1, 2], "BAD_REQUEST", "must be a msgpack map"),
        ({"no": "op"}, "BAD_REQUEST", "missing field 'op'"),
        ({"op": 7}, "BAD_REQUEST", "field 'op' must be a string"),
        ({"op": "teleport"}, "UNKNOWN_OP", "unknown op 'teleport'"),
        ({"op": "checkpoint", "checkpoint_id": "a"}, "BAD_REQUEST", "missing field 'state'"),
        ({"op": "get_checkpoint", "checkpoint_id": "a"}, "CONFLICT", "someone else won"),
        ({"op": "status"}, "INTERNAL", "details are in its log"),
    ],
)
async def test_failures_become_error_envelopes(message, code, text):
    seen: list = []
    response = await dispatch(TABLE, message, seen)
    assert response["ok"] is False
    assert response["error"]["code"] == code
    assert text in response["error"]["message"]
    assert "secret internal detail" not in response["error"]["message"]
    assert seen == []


async def test_error_envelope_round_trips_to_the_typed_error():
    response = await dispatch(TABLE, {"op": "get_checkpoint", "checkpoint_id": "a"}, [])
    with pytest.raises(Conflict, match="someone else won"):
        parse_response(response)
