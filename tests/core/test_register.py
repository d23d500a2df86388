"""``register`` through a real QUIC client: binding, tokens, replay history, refusals."""

from __future__ import annotations

import asyncio

import pytest

from runtara_core.errors import Forbidden, InvalidState, NotFound, Unauthenticated
from runtara_core.persistence import EventType, InstanceStatus, InstanceUpdate, SignalType, TerminationReason
from runtara_core.wire.messages import (
    AckSignalRequest,
    CheckpointRequest,
    CheckpointResponse,
    EventRequest,
    GetCheckpointRequest,
    PollSignalsRequest,
    RegisterRequest,
    RegisterResponse,
    RetryAttemptRequest,
    SleepRequest,
    StatusRequest,
    WaitSignalRequest,
)
from tests.core.conftest import Core


async def test_register_starts_a_pending_instance_and_returns_its_input(core: Core) -> None:
    row = await core.new_instance(input=b"\x81\xa5order\x01")
    _, response = await core.register(row.instance_id)
    assert response.input == b"\x81\xa5order\x01"
    assert response.attempt == 1
    assert response.checkpoints == [] and response.history_complete
    assert response.pending_signal is None
    stored = await core.persistence.get_instance(row.instance_id)
    assert stored is not None
    assert stored.status is InstanceStatus.RUNNING
    assert stored.started_at_ms == core.clock.now_ms
    assert stored.heartbeat_at_ms == core.clock.now_ms
    events = await core.persistence.list_events(row.instance_id)
    assert [e.type for e in events] == [EventType.STARTED]


async def test_register_returns_the_pending_signal(core: Core) -> None:
    row = await core.new_instance()
    await core.persistence.put_signal(row.instance_id, SignalType.PAUSE, b"why")
    _, response = await core.register(row.instance_id)
    assert response.pending_signal is not None
    assert (response.pending_signal.signal_type, response.pending_signal.payload) == ("pause", b"why")


async def test_register_after_100_checkpoints_returns_every_id_and_state_in_order(core: Core) -> None:
    client, row = await core.running_instance()
    for n in range(100):
        await client.request(
            CheckpointRequest(checkpoint_id=f"step-{n}", state=f"result {n}".encode()), CheckpointResponse
        )
    # A new launch of the same attempt (the process reconnects): the history comes back whole.
    _, response = await core.register(row.instance_id)
    assert [c.checkpoint_id for c in response.checkpoints] == [f"step-{n}" for n in range(100)]
    assert [c.state for c in response.checkpoints] == [f"result {n}".encode() for n in range(100)]
    assert response.history_complete


async def test_register_sends_states_only_within_the_history_budget(start_core) -> None:
    core: Core = await start_core(register_history_budget_bytes=250)
    client, row = await core.running_instance()
    for n in range(10):
        await client.request(CheckpointRequest(checkpoint_id=f"s{n}", state=bytes(100)), CheckpointResponse)
    _, response = await core.register(row.instance_id)
    assert len(response.checkpoints) == 10 and response.history_complete
    assert [c.state is not None for c in response.checkpoints] == [True, True] + [False] * 8


async def test_register_cuts_the_id_list_to_fit_a_frame(start_core) -> None:
    core: Core = await start_core(max_frame_bytes=80 * 1024, max_buffered_bytes_per_connection=80 * 1024)
    client, row = await core.running_instance()
    long_id = "x" * 200
    for n in range(100):  # ~22 kB of ids against ~16 kB of room after the slack
        await client.request(CheckpointRequest(checkpoint_id=f"{long_id}{n}", state=b""), CheckpointResponse)
    _, response = await core.register(row.instance_id)
    assert not response.history_complete
    assert 0 < len(response.checkpoints) < 100
    assert [c.checkpoint_id for c in response.checkpoints] == [
        f"{long_id}{n}" for n in range(len(response.checkpoints))
    ]


async def test_a_reconnecting_launch_registers_again_without_restarting(core: Core) -> None:
    client, row = await core.running_instance()
    await client.close()
    core.clock.advance(1000)
    _, response = await core.register(row.instance_id)
    assert response.attempt == 1
    stored = await core.persistence.get_instance(row.instance_id)
    assert stored is not None and stored.status is InstanceStatus.RUNNING
    assert stored.started_at_ms == core.clock.now_ms - 1000
    assert stored.heartbeat_at_ms == core.clock.now_ms
    assert [e.type for e in await core.persistence.list_events(row.instance_id)] == [EventType.STARTED]


async def register_as(core: Core, instance_id: str, launch_id: str | None) -> RegisterResponse:
    client = await core.client()
    request = RegisterRequest(
        instance_id=instance_id, token=core.token(instance_id), attempt=1, launch_id=launch_id
    )
    return await client.request(request, RegisterResponse)


async def test_only_the_launch_that_started_an_instance_may_register_again(core: Core) -> None:
    """A launch after a wake keeps the attempt: the launch id tells an old process from it."""
    row = await core.new_instance()
    await register_as(core, row.instance_id, "launch-a")
    await register_as(core, row.instance_id, "launch-a")  # the same process, reconnecting
    for stranger in ("launch-b", None):
        with pytest.raises(Forbidden, match="another launch"):
            await register_as(core, row.instance_id, stranger)
    stored = await core.persistence.get_instance(row.instance_id)
    assert stored is not None and stored.launch_id == "launch-a"

    # It hibernates and is woken; the next launch takes over, the old one is shut out.
    await core.persistence.transition(row.instance_id, {InstanceStatus.RUNNING}, InstanceStatus.SUSPENDED)
    await core.persistence.transition(row.instance_id, {InstanceStatus.SUSPENDED}, InstanceStatus.PENDING)
    await register_as(core, row.instance_id, "launch-b")
    with pytest.raises(Forbidden, match="earlier one"):
        await register_as(core, row.instance_id, "launch-a")


async def test_register_twice_on_one_connection_is_fine_for_the_same_instance_only(core: Core) -> None:
    client, row = await core.running_instance()
    await core.register(row.instance_id, client=client)
    other = await core.new_instance()
    with pytest.raises(Forbidden, match="registered as instance"):
        await core.register(other.instance_id, client=client)
    assert await core.status(other.instance_id) is InstanceStatus.PENDING


async def test_a_wrong_token_is_refused_and_changes_nothing(core: Core) -> None:
    row = await core.new_instance()
    client = await core.client()
    with pytest.raises(Unauthenticated, match="token is not valid"):
        await client.request(
            RegisterRequest(instance_id=row.instance_id, token="forged", attempt=1), RegisterResponse
        )
    assert await core.status(row.instance_id) is InstanceStatus.PENDING
    assert await core.persistence.list_events(row.instance_id) == []
    with pytest.raises(Unauthenticated, match="not registered"):  # still unbound
        await client.call(StatusRequest())


async def test_the_token_of_another_instance_is_refused(core: Core) -> None:
    victim = await core.new_instance()
    attacker = await core.new_instance()
    client = await core.client()
    with pytest.raises(Unauthenticated):
        await client.request(
            RegisterRequest(instance_id=victim.instance_id, token=core.token(attacker.instance_id), attempt=1),
            RegisterResponse,
        )
    assert await core.status(victim.instance_id) is InstanceStatus.PENDING


async def test_the_token_of_an_earlier_attempt_is_refused(core: Core) -> None:
    row = await core.new_instance()
    await core.persistence.transition(
        row.instance_id, [InstanceStatus.PENDING], InstanceStatus.PENDING, update=InstanceUpdate(attempt=2)
    )
    with pytest.raises(Forbidden, match="earlier launch"):
        await core.register(row.instance_id, attempt=1)
    _, response = await core.register(row.instance_id, attempt=2)
    assert response.attempt == 2


async def test_register_of_an_unknown_instance_is_not_found(core: Core) -> None:
    with pytest.raises(NotFound):
        await core.register("never-created")


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (InstanceStatus.COMPLETED, TerminationReason.COMPLETED),
        (InstanceStatus.FAILED, TerminationReason.CRASHED),
        (InstanceStatus.CANCELLED, TerminationReason.CANCELLED),
        (InstanceStatus.SUSPENDED, TerminationReason.SLEEPING),
    ],
)
async def test_register_is_refused_for_finished_and_suspended_instances(
    core: Core, status: InstanceStatus, reason: TerminationReason
) -> None:
    row = await core.new_instance()
    await core.persistence.transition(row.instance_id, [InstanceStatus.PENDING], status, reason=reason)
    with pytest.raises(InvalidState, match=str(status)):
        await core.register(row.instance_id)
    assert await core.status(row.instance_id) is status


OPS_BEFORE_REGISTER = [
    CheckpointRequest(checkpoint_id="a", state=b"x"),
    GetCheckpointRequest(checkpoint_id="a"),
    SleepRequest(checkpoint_id="a", duration_ms=1),
    WaitSignalRequest(name="n", checkpoint_id="a"),
    PollSignalsRequest(),
    AckSignalRequest(signal_type="cancel"),
    EventRequest(type="heartbeat"),
    EventRequest(type="completed", payload=b"done"),
    RetryAttemptRequest(checkpoint_id="a", attempt=1, error="boom"),
    StatusRequest(),
]


@pytest.mark.parametrize("request_", OPS_BEFORE_REGISTER, ids=lambda r: f"{r.op}")
async def test_every_op_before_register_is_unauthenticated(core: Core, request_) -> None:
    row = await core.new_instance()
    client = await core.client()
    with pytest.raises(Unauthenticated, match="first request"):
        await client.call(request_)
    assert await core.status(row.instance_id) is InstanceStatus.PENDING
    assert (await core.persistence.list_checkpoints(row.instance_id)).total == 0


async def test_a_long_history_of_short_ids_is_cut_to_fit_a_frame(start_core) -> None:
    frame = 128 * 1024
    core: Core = await start_core(max_frame_bytes=frame, max_buffered_bytes_per_connection=frame)
    client, row = await core.running_instance()
    # ~64 kB of room after the slack; each entry is a short id plus ~25 bytes of framing.
    for start in range(0, 4_000, 500):
        await asyncio.gather(
            *(
                client.request(CheckpointRequest(checkpoint_id=f"s{n}", state=b""), CheckpointResponse)
                for n in range(start, start + 500)
            )
        )
    _, response = await core.register(row.instance_id)
    assert not response.history_complete
    assert 1_000 < len(response.checkpoints) < 4_000


async def test_a_token_with_non_ascii_characters_is_unauthenticated_not_internal(core: Core) -> None:
    row = await core.new_instance()
    client = await core.client()
    with pytest.raises(Unauthenticated):
        await client.request(
            RegisterRequest(instance_id=row.instance_id, token="é" * 43, attempt=1), RegisterResponse
        )


async def test_concurrent_registers_cannot_bind_one_connection_to_two_instances(core: Core) -> None:
    first, second = await core.new_instance(), await core.new_instance()
    client = await core.client()
    results = await asyncio.gather(
        *(
            client.request(
                RegisterRequest(instance_id=row.instance_id, token=core.token(row.instance_id), attempt=1),
                RegisterResponse,
            )
            for row in (first, second)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, RegisterResponse) for r in results) == 1
    assert sum(isinstance(r, Forbidden) for r in results) == 1
    statuses = {await core.status(first.instance_id), await core.status(second.instance_id)}
    assert statuses == {InstanceStatus.RUNNING, InstanceStatus.PENDING}
