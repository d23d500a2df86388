"""``checkpoint`` and ``get_checkpoint``: save-if-absent, liveness, limits and isolation."""

from __future__ import annotations

import asyncio

import pytest

from runtara_core.errors import BadRequest
from runtara_core.persistence import SignalType
from runtara_core.wire.messages import (
    CheckpointRequest,
    CheckpointResponse,
    GetCheckpointRequest,
    GetCheckpointResponse,
)
from tests.core.conftest import Core


async def test_checkpoint_saves_once_and_then_returns_the_stored_state(core: Core) -> None:
    client, row = await core.running_instance()
    first = await client.request(CheckpointRequest(checkpoint_id="charge", state=b"receipt-1"), CheckpointResponse)
    assert (first.found, first.state) == (False, b"")
    again = await client.request(CheckpointRequest(checkpoint_id="charge", state=b"receipt-2"), CheckpointResponse)
    assert (again.found, again.state) == (True, b"receipt-1")
    stored = await core.persistence.get_checkpoint(row.instance_id, "charge")
    assert stored is not None and stored.state == b"receipt-1"
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None and instance.checkpoint_id == "charge"


async def test_concurrent_saves_of_one_checkpoint_agree_on_one_state(core: Core) -> None:
    client, row = await core.running_instance()
    second, _ = await core.register(row.instance_id)
    responses = await asyncio.gather(
        *(
            (client if n % 2 else second).request(
                CheckpointRequest(checkpoint_id="race", state=f"writer {n}".encode()), CheckpointResponse
            )
            for n in range(20)
        )
    )
    assert sum(not r.found for r in responses) == 1
    stored = await core.persistence.get_checkpoint(row.instance_id, "race")
    assert stored is not None
    assert {r.state for r in responses if r.found} == {stored.state}


async def test_checkpoint_carries_the_pending_signal_until_it_is_acknowledged(core: Core) -> None:
    client, row = await core.running_instance()
    await core.persistence.put_signal(row.instance_id, SignalType.CANCEL, b"operator")
    for step in ("a", "b"):
        response = await client.request(CheckpointRequest(checkpoint_id=step, state=b"s"), CheckpointResponse)
        assert response.pending_signal is not None
        assert (response.pending_signal.signal_type, response.pending_signal.payload) == ("cancel", b"operator")


async def test_checkpoint_counts_as_liveness(core: Core) -> None:
    client, row = await core.running_instance()
    core.clock.advance(30_000)
    await client.request(CheckpointRequest(checkpoint_id="a", state=b""), CheckpointResponse)
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None and instance.heartbeat_at_ms == core.clock.now_ms


async def test_a_state_over_the_limit_is_refused_and_nothing_is_saved(start_core) -> None:
    core: Core = await start_core(max_checkpoint_bytes=1000)
    client, row = await core.running_instance()
    with pytest.raises(BadRequest, match="RUNTARA_MAX_CHECKPOINT_BYTES"):
        await client.call(CheckpointRequest(checkpoint_id="big", state=bytes(1001)))
    assert await core.persistence.get_checkpoint(row.instance_id, "big") is None
    ok = await client.request(CheckpointRequest(checkpoint_id="big", state=bytes(1000)), CheckpointResponse)
    assert not ok.found


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"state": b"x"}, "missing field 'checkpoint_id'"),
        ({"checkpoint_id": 7, "state": b"x"}, "'checkpoint_id'"),
        ({"checkpoint_id": "a", "state": "text, not bytes"}, "'state'"),
        ({"checkpoint_id": "", "state": b"x"}, "'checkpoint_id'"),
        ({"checkpoint_id": "a" * 257, "state": b"x"}, "'checkpoint_id'"),
    ],
)
async def test_ill_typed_checkpoint_fields_are_refused_by_name(core: Core, fields, message) -> None:
    client, row = await core.running_instance()
    with pytest.raises(BadRequest, match=message):
        await client.call({"op": "checkpoint", **fields})
    assert (await core.persistence.list_checkpoints(row.instance_id)).total == 0


async def test_get_checkpoint_reads_only_the_bound_instance(core: Core) -> None:
    a_client, a = await core.running_instance()
    b_client, b = await core.running_instance()
    await b_client.request(CheckpointRequest(checkpoint_id="secret", state=b"b's data"), CheckpointResponse)
    seen_by_a = await a_client.request(GetCheckpointRequest(checkpoint_id="secret"), GetCheckpointResponse)
    assert (seen_by_a.found, seen_by_a.state) == (False, None)
    # A saving under the same id writes its own checkpoint and never sees or touches B's.
    saved = await a_client.request(CheckpointRequest(checkpoint_id="secret", state=b"a's"), CheckpointResponse)
    assert not saved.found
    b_row = await core.persistence.get_checkpoint(b.instance_id, "secret")
    assert b_row is not None and b_row.state == b"b's data"
    own = await b_client.request(GetCheckpointRequest(checkpoint_id="secret"), GetCheckpointResponse)
    assert (own.found, own.state) == (True, b"b's data")
