"""Durable ``sleep`` and ``wait_signal``: stored once, replayed, hibernating when long."""

from __future__ import annotations

import asyncio

import pytest

from runtara_core.errors import BadRequest, Conflict, InvalidState
from runtara_core.persistence import InstanceStatus, TerminationReason
from runtara_core.transport.quic_client import RpcClient
from runtara_core.wire.messages import (
    CheckpointRequest,
    CheckpointResponse,
    RegisterResponse,
    SleepRequest,
    SleepResponse,
    WaitSignalRequest,
    WaitSignalResponse,
)
from tests.core.conftest import Core

HIBERNATE_AFTER_MS = 5000  # the default


async def relaunch(core: Core, instance_id: str) -> tuple[RpcClient, RegisterResponse]:
    """What the wake scheduler and the environment do for a hibernated instance: claim, relaunch."""
    claimed = await core.persistence.claim_due_wakeups(core.clock.now_ms)
    assert [r.instance_id for r in claimed] == [instance_id]
    return await core.register(instance_id)


async def test_a_short_sleep_stays_in_process(core: Core) -> None:
    client, row = await core.running_instance()
    response = await client.request(SleepRequest(checkpoint_id="nap", duration_ms=HIBERNATE_AFTER_MS), SleepResponse)
    assert (response.wake_at_ms, response.hibernate) == (core.clock.now_ms + HIBERNATE_AFTER_MS, False)
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING


async def test_a_long_sleep_hibernates_and_a_replay_sleeps_only_the_remainder(core: Core) -> None:
    client, row = await core.running_instance()
    started = core.clock.now_ms
    response = await client.request(
        SleepRequest(checkpoint_id="cool-off", duration_ms=3_600_000, state=b"ctx"), SleepResponse
    )
    assert (response.wake_at_ms, response.hibernate) == (started + 3_600_000, True)
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None
    assert (instance.status, instance.termination_reason) == (InstanceStatus.SUSPENDED, TerminationReason.SLEEPING)
    assert instance.wake_at_ms == started + 3_600_000
    with pytest.raises(InvalidState, match="hibernated"):  # this launch must exit now
        await client.call(CheckpointRequest(checkpoint_id="after", state=b""))

    core.clock.advance(3_600_000)
    new_client, registered = await relaunch(core, row.instance_id)
    assert [c.checkpoint_id for c in registered.checkpoints] == ["cool-off"]
    replay = await new_client.request(SleepRequest(checkpoint_id="cool-off", duration_ms=3_600_000), SleepResponse)
    assert (replay.wake_at_ms, replay.hibernate) == (started + 3_600_000, False)
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING


async def test_a_long_sleep_or_wait_that_may_not_hibernate_stays_in_process_with_its_wake_time_stored(
    core: Core,
) -> None:
    """A parallel workflow asks this while another branch is busy: the wake time is durable
    (a replay gets it) but the process keeps running."""
    client, row = await core.running_instance()
    started = core.clock.now_ms
    sleep = await client.request(
        SleepRequest(checkpoint_id="nap", duration_ms=3_600_000, may_hibernate=False), SleepResponse
    )
    assert (sleep.wake_at_ms, sleep.hibernate) == (started + 3_600_000, False)
    wait = await client.request(
        WaitSignalRequest(name="approval", checkpoint_id="w", timeout_ms=None, may_hibernate=False),
        WaitSignalResponse,
    )
    assert (wait.found, wait.hibernate) == (False, False)
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING
    core.clock.advance(1000)
    later = await client.request(SleepRequest(checkpoint_id="nap", duration_ms=3_600_000), SleepResponse)
    assert (later.wake_at_ms, later.hibernate) == (started + 3_600_000, True)  # now it may


async def test_a_relaunch_during_a_sleep_gets_the_original_wake_time(core: Core) -> None:
    client, row = await core.running_instance()
    started = core.clock.now_ms
    first = await client.request(SleepRequest(checkpoint_id="nap", duration_ms=8000), SleepResponse)
    assert first.hibernate
    core.clock.advance(4000)  # resumed early (an operator resume, say): 4 s are left
    await core.persistence.transition(row.instance_id, [InstanceStatus.SUSPENDED], InstanceStatus.PENDING)
    new_client, _ = await core.register(row.instance_id)
    replay = await new_client.request(SleepRequest(checkpoint_id="nap", duration_ms=8000), SleepResponse)
    assert (replay.wake_at_ms, replay.hibernate) == (started + 8000, False)  # 4 s: in-process


async def test_a_replayed_sleep_past_its_wake_time_returns_at_once(core: Core) -> None:
    client, row = await core.running_instance()
    first = await client.request(SleepRequest(checkpoint_id="z", duration_ms=10), SleepResponse)
    core.clock.advance(60_000)
    again = await client.request(SleepRequest(checkpoint_id="z", duration_ms=10), SleepResponse)
    assert again.wake_at_ms == first.wake_at_ms < core.clock.now_ms
    assert not again.hibernate


async def test_sleep_on_a_checkpoint_that_is_not_a_sleep_is_a_conflict(core: Core) -> None:
    client, row = await core.running_instance()
    await client.request(CheckpointRequest(checkpoint_id="step", state=b"result"), CheckpointResponse)
    with pytest.raises(Conflict, match="other than a sleep"):
        await client.call(SleepRequest(checkpoint_id="step", duration_ms=10))
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING


async def test_wait_signal_consumes_a_signal_sent_before_the_wait(core: Core) -> None:
    client, row = await core.running_instance()
    await core.persistence.enqueue_custom_signal(row.instance_id, "approval", b"yes")
    response = await client.request(
        WaitSignalRequest(name="approval", checkpoint_id="wait-approval", timeout_ms=1000), WaitSignalResponse
    )
    assert (response.found, response.payload, response.hibernate) == (True, b"yes", False)
    stored = await core.persistence.get_checkpoint(row.instance_id, "wait-approval")
    assert stored is not None and stored.state == b"yes"


async def test_a_replayed_wait_returns_the_same_payload_and_consumes_nothing_more(core: Core) -> None:
    client, row = await core.running_instance()
    for payload in (b"first", b"second"):
        await core.persistence.enqueue_custom_signal(row.instance_id, "job", payload)
    first = await client.request(WaitSignalRequest(name="job", checkpoint_id="w1"), WaitSignalResponse)
    replay = await client.request(WaitSignalRequest(name="job", checkpoint_id="w1"), WaitSignalResponse)
    assert first.payload == replay.payload == b"first"
    queued = await core.persistence.list_custom_signals(row.instance_id)
    assert [s.payload for s in queued] == [b"second"]


async def test_a_short_wait_with_nothing_queued_answers_at_once(core: Core) -> None:
    client, row = await core.running_instance()
    response = await client.request(
        WaitSignalRequest(name="approval", checkpoint_id="w", timeout_ms=HIBERNATE_AFTER_MS), WaitSignalResponse
    )
    assert (response.found, response.hibernate, response.timed_out) == (False, False, False)
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING
    assert await core.persistence.get_checkpoint(row.instance_id, "w") is None


@pytest.mark.parametrize("timeout_ms", [None, 86_400_000])
async def test_a_long_wait_hibernates_and_the_signal_wakes_it(core: Core, timeout_ms: int | None) -> None:
    client, row = await core.running_instance()
    response = await client.request(
        WaitSignalRequest(name="approval", checkpoint_id="w", timeout_ms=timeout_ms), WaitSignalResponse
    )
    assert (response.found, response.hibernate) == (False, True)
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None
    assert (instance.status, instance.termination_reason) == (InstanceStatus.SUSPENDED, TerminationReason.WAITING)
    assert instance.waiting_signal_name == "approval"
    assert instance.wake_at_ms == (None if timeout_ms is None else core.clock.now_ms + timeout_ms)

    enqueued = await core.persistence.enqueue_custom_signal(row.instance_id, "approval", b"granted")
    assert enqueued.woken is not None and enqueued.woken.status is InstanceStatus.PENDING
    new_client, _ = await core.register(row.instance_id)
    replay = await new_client.request(WaitSignalRequest(name="approval", checkpoint_id="w"), WaitSignalResponse)
    assert (replay.found, replay.payload) == (True, b"granted")


async def test_a_recorded_timeout_replays_as_a_timeout_and_leaves_later_signals_queued(core: Core) -> None:
    client, row = await core.running_instance()
    # The instance gave up waiting: it records the timeout as the wait's checkpoint (empty state).
    saved = await client.request(CheckpointRequest(checkpoint_id="w", state=b""), CheckpointResponse)
    assert not saved.found
    await core.persistence.enqueue_custom_signal(row.instance_id, "approval", b"too late")
    response = await client.request(WaitSignalRequest(name="approval", checkpoint_id="w"), WaitSignalResponse)
    assert (response.found, response.timed_out, response.payload) == (False, True, None)
    assert [s.payload for s in await core.persistence.list_custom_signals(row.instance_id)] == [b"too late"]


async def test_twenty_instances_waiting_at_once_each_consume_their_own_signal(core: Core) -> None:
    launched = [await core.running_instance() for _ in range(20)]
    for _, row in launched:
        await core.persistence.enqueue_custom_signal(row.instance_id, "go", row.instance_id.encode())
    responses = await asyncio.gather(
        *(client.request(WaitSignalRequest(name="go", checkpoint_id="w"), WaitSignalResponse) for client, _ in launched)
    )
    assert [r.payload for r in responses] == [row.instance_id.encode() for _, row in launched]
    for _, row in launched:
        assert await core.persistence.list_custom_signals(row.instance_id) == []


async def test_twenty_concurrent_waits_of_one_instance_consume_distinct_signals(core: Core) -> None:
    client, row = await core.running_instance()
    for n in range(20):
        await core.persistence.enqueue_custom_signal(row.instance_id, "job", f"job {n}".encode())
    responses = await asyncio.gather(
        *(client.request(WaitSignalRequest(name="job", checkpoint_id=f"w{n}"), WaitSignalResponse) for n in range(20))
    )
    assert sorted(r.payload for r in responses) == sorted(f"job {n}".encode() for n in range(20))
    assert await core.persistence.list_custom_signals(row.instance_id) == []


async def test_a_client_killed_between_consume_and_response_loses_nothing(core: Core) -> None:
    for trial in range(5):
        client, row = await core.running_instance()
        await core.persistence.enqueue_custom_signal(row.instance_id, "go", f"payload {trial}".encode())
        request = asyncio.ensure_future(client.call(WaitSignalRequest(name="go", checkpoint_id="w")))
        await asyncio.sleep(0.001 * trial)
        await client.close()  # the process dies; whatever the server did, it did atomically
        await asyncio.gather(request, return_exceptions=True)
        for _ in range(500):  # bounded: until the server finished the request it received
            consumed = await core.persistence.list_custom_signals(row.instance_id, include_consumed=True)
            checkpoint = await core.persistence.get_checkpoint(row.instance_id, "w")
            if consumed[0].consumed_at_ms is None or checkpoint is not None:
                break
            await asyncio.sleep(0.01)
        _, registered = await core.register(row.instance_id)
        after = await core.persistence.list_custom_signals(row.instance_id, include_consumed=True)
        if after[0].consumed_at_ms is None:  # never consumed: still queued for the next launch
            assert registered.checkpoints == []
        else:  # consumed: the next launch finds it as the wait's checkpoint
            assert [(c.checkpoint_id, c.state) for c in registered.checkpoints] == [
                ("w", f"payload {trial}".encode())
            ]


@pytest.mark.parametrize(
    "request_",
    [
        SleepRequest(checkpoint_id="s", duration_ms=0).model_copy(update={"duration_ms": 2**62}),
        WaitSignalRequest(name="n", checkpoint_id="w").model_copy(update={"timeout_ms": 2**62}),
    ],
    ids=["sleep", "wait_signal"],
)
async def test_an_absurd_duration_is_refused_and_changes_nothing(core: Core, request_) -> None:
    client, row = await core.running_instance()
    with pytest.raises(BadRequest, match="duration_ms|timeout_ms"):
        await client.call(request_.to_wire())
    assert (await core.persistence.list_checkpoints(row.instance_id)).total == 0
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING
