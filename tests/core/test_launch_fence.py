"""A launch that ended, or was replaced, can no longer change its instance."""

from __future__ import annotations

import asyncio

import pytest

from runtara_core.errors import InvalidState
from runtara_core.persistence import EventType, InstanceStatus, InstanceUpdate, SignalType, TerminationReason
from runtara_core.wire.messages import (
    AckSignalRequest,
    CheckpointRequest,
    CheckpointResponse,
    EventRequest,
    RetryAttemptRequest,
    SleepRequest,
    SleepResponse,
    WaitSignalRequest,
    WaitSignalResponse,
)
from tests.core.conftest import Core

WRITES = [
    CheckpointRequest(checkpoint_id="late", state=b"x"),
    SleepRequest(checkpoint_id="late-sleep", duration_ms=10),
    WaitSignalRequest(name="n", checkpoint_id="late-wait"),
    EventRequest(type="custom", subtype="progress", payload=b"1"),
    EventRequest(type="completed", payload=b"out"),
    RetryAttemptRequest(checkpoint_id="late", attempt=2, error="e"),
]


@pytest.mark.parametrize("request_", WRITES, ids=lambda r: getattr(r, "type", r.op))
async def test_a_replaced_launch_cannot_write(core: Core, request_) -> None:
    old, row = await core.running_instance()
    # The environment gave up on attempt 1 (say its heartbeat stopped) and relaunched.
    await core.persistence.transition(
        row.instance_id, [InstanceStatus.RUNNING], InstanceStatus.PENDING, update=InstanceUpdate(attempt=2)
    )
    new, _ = await core.register(row.instance_id, attempt=2)
    with pytest.raises(InvalidState, match="attempt"):
        await old.call(request_)
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None and (instance.status, instance.attempt) == (InstanceStatus.RUNNING, 2)
    assert (await core.persistence.list_checkpoints(row.instance_id)).total == 0
    saved = await new.request(CheckpointRequest(checkpoint_id="late", state=b"new"), CheckpointResponse)
    assert not saved.found


@pytest.mark.parametrize("request_", WRITES, ids=lambda r: getattr(r, "type", r.op))
async def test_a_hibernated_launch_cannot_write(core: Core, request_) -> None:
    client, row = await core.running_instance()
    assert (await client.request(SleepRequest(checkpoint_id="nap", duration_ms=60_000), SleepResponse)).hibernate
    with pytest.raises(InvalidState, match="hibernated"):
        await client.call(request_)
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None
    assert (instance.status, instance.termination_reason) == (InstanceStatus.SUSPENDED, TerminationReason.SLEEPING)


async def test_the_second_connection_of_a_launch_loses_to_the_first_completion(core: Core) -> None:
    first, row = await core.running_instance()
    second, _ = await core.register(row.instance_id)
    await first.call(EventRequest(type="completed", payload=b"first"))
    with pytest.raises(InvalidState, match="completed"):
        await second.call(EventRequest(type="completed", payload=b"second"))
    with pytest.raises(InvalidState):
        await second.call(CheckpointRequest(checkpoint_id="after", state=b""))
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None and instance.output == b"first"
    await first.call(EventRequest(type="completed", payload=b"first"))  # its own retry: fine


async def test_a_failed_report_may_be_repeated_on_its_connection(core: Core) -> None:
    client, row = await core.running_instance()
    for _ in range(2):
        await client.call(EventRequest(type="failed", payload=b"boom"))
    assert await core.status(row.instance_id) is InstanceStatus.FAILED


@pytest.mark.parametrize("signal", [SignalType.CANCEL, SignalType.PAUSE])
async def test_a_long_wait_does_not_hibernate_over_a_pending_cancel_or_pause(core: Core, signal: SignalType) -> None:
    client, row = await core.running_instance()
    await core.persistence.put_signal(row.instance_id, signal)
    waited = await client.request(WaitSignalRequest(name="approval", checkpoint_id="w"), WaitSignalResponse)
    assert (waited.found, waited.hibernate) == (False, False)
    assert waited.pending_signal is not None and waited.pending_signal.signal_type == signal
    slept = await client.request(SleepRequest(checkpoint_id="nap", duration_ms=60_000), SleepResponse)
    assert not slept.hibernate
    assert slept.pending_signal is not None and slept.pending_signal.signal_type == signal
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING
    await client.call(AckSignalRequest(signal_type=signal.value))  # the instance acts on it
    assert await core.status(row.instance_id) is not InstanceStatus.RUNNING


async def test_a_pending_resume_does_not_keep_an_instance_awake(core: Core) -> None:
    client, row = await core.running_instance()
    await core.persistence.put_signal(row.instance_id, SignalType.RESUME)
    slept = await client.request(SleepRequest(checkpoint_id="nap", duration_ms=60_000), SleepResponse)
    assert slept.hibernate


async def test_a_hibernated_launch_logs_its_exit_once(core: Core) -> None:
    client, row = await core.running_instance()
    assert (await client.request(SleepRequest(checkpoint_id="nap", duration_ms=60_000), SleepResponse)).hibernate
    for _ in range(5):
        await client.call(EventRequest(type="suspended", payload=b"bye"))
    events = await core.persistence.list_events(row.instance_id)
    assert [e.subtype for e in events].count("exiting") == 1


async def test_acknowledging_pause_after_a_cancel_replaced_it_is_refused(core: Core) -> None:
    client, row = await core.running_instance()
    await core.persistence.put_signal(row.instance_id, SignalType.PAUSE)
    await core.persistence.put_signal(row.instance_id, SignalType.CANCEL)  # outranks the pause
    with pytest.raises(InvalidState, match="holds cancel"):
        await client.call(AckSignalRequest(signal_type="pause"))
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING
    await client.call(AckSignalRequest(signal_type="cancel"))
    assert await core.status(row.instance_id) is InstanceStatus.CANCELLED


async def test_a_report_that_committed_after_its_caller_gave_up_may_be_repeated(core: Core, backend) -> None:
    from runtara_core.errors import RequestTimeout
    from tests.persistence.conftest import other_transaction

    client, row = await core.running_instance()
    async with other_transaction(backend) as blocker:
        await blocker.lock_instance(row.instance_id)
        with pytest.raises(RequestTimeout):  # the client gives up; the server's write is queued
            await client.call(EventRequest(type="completed", payload=b"out"), timeout_s=0.3)
        await blocker.commit()
    for _ in range(200):  # bounded: until the abandoned write has landed (or was rolled back)
        if await core.status(row.instance_id) is not InstanceStatus.RUNNING:
            break
        await asyncio.sleep(0.02)
    await client.call(EventRequest(type="completed", payload=b"out"))  # the retry succeeds either way
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None and (instance.status, instance.output) == (InstanceStatus.COMPLETED, b"out")
    with pytest.raises(InvalidState):
        await client.call(EventRequest(type="failed", payload=b"other"))


async def test_a_paused_launch_records_its_exit(core: Core) -> None:
    client, row = await core.running_instance()
    await core.persistence.put_signal(row.instance_id, SignalType.PAUSE)
    await client.call(AckSignalRequest(signal_type="pause"))
    await client.call(EventRequest(type="suspended", payload=b"bye"))
    events = await core.persistence.list_events(row.instance_id)
    assert [(e.type, e.subtype) for e in events][-1] == (EventType.SUSPENDED, "exiting")
