"""``poll_signals``, ``ack_signal``, ``event``, ``retry_attempt`` and ``status``."""

from __future__ import annotations

import json

import pytest

from runtara_core.errors import BadRequest, InvalidState
from runtara_core.persistence import EventType, InstanceStatus, SignalType, TerminationReason
from runtara_core.wire.messages import (
    AckSignalRequest,
    CheckpointRequest,
    CheckpointResponse,
    EventRequest,
    GetCheckpointRequest,
    GetCheckpointResponse,
    PollSignalsRequest,
    PollSignalsResponse,
    RetryAttemptRequest,
    SleepRequest,
    SleepResponse,
    StatusRequest,
    StatusResponse,
)
from tests.core.conftest import Core


async def test_poll_signals_returns_the_pending_signal_without_consuming_it(core: Core) -> None:
    client, row = await core.running_instance()
    assert (await client.request(PollSignalsRequest(), PollSignalsResponse)).pending_signal is None
    await core.persistence.put_signal(row.instance_id, SignalType.PAUSE)
    for _ in range(2):
        polled = await client.request(PollSignalsRequest(), PollSignalsResponse)
        assert polled.pending_signal is not None and polled.pending_signal.signal_type == "pause"


async def test_acknowledging_cancel_cancels_and_ends_the_launch(core: Core) -> None:
    client, row = await core.running_instance()
    await core.persistence.put_signal(row.instance_id, SignalType.CANCEL, b"operator")
    await client.call(AckSignalRequest(signal_type="cancel"))
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None
    assert (instance.status, instance.termination_reason) == (InstanceStatus.CANCELLED, TerminationReason.CANCELLED)
    assert await core.persistence.pending_signal(row.instance_id) is None
    assert EventType.CANCELLED in [e.type for e in await core.persistence.list_events(row.instance_id)]
    await client.call(AckSignalRequest(signal_type="cancel"))  # a retried ack is harmless
    with pytest.raises(InvalidState, match="should exit"):
        await client.call(CheckpointRequest(checkpoint_id="after", state=b""))
    with pytest.raises(InvalidState):
        await client.call(EventRequest(type="completed", payload=b"too late"))
    assert await core.status(row.instance_id) is InstanceStatus.CANCELLED


async def test_acknowledging_pause_suspends(core: Core) -> None:
    client, row = await core.running_instance()
    await core.persistence.put_signal(row.instance_id, SignalType.PAUSE)
    await client.call(AckSignalRequest(signal_type="pause"))
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None
    assert (instance.status, instance.termination_reason) == (InstanceStatus.SUSPENDED, TerminationReason.PAUSED)
    assert await core.persistence.pending_signal(row.instance_id) is None
    with pytest.raises(InvalidState):
        await client.call(CheckpointRequest(checkpoint_id="after", state=b""))


async def test_acknowledging_resume_only_clears_the_slot(core: Core) -> None:
    client, row = await core.running_instance()
    await core.persistence.put_signal(row.instance_id, SignalType.RESUME)
    await client.call(AckSignalRequest(signal_type="resume"))
    assert await core.persistence.pending_signal(row.instance_id) is None
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING
    await client.request(CheckpointRequest(checkpoint_id="go-on", state=b""), CheckpointResponse)


async def test_acknowledging_a_signal_that_is_not_pending_is_refused(core: Core) -> None:
    client, row = await core.running_instance()
    with pytest.raises(InvalidState, match="holds nothing"):
        await client.call(AckSignalRequest(signal_type="cancel"))
    await core.persistence.put_signal(row.instance_id, SignalType.PAUSE)
    with pytest.raises(InvalidState, match="holds pause"):
        await client.call(AckSignalRequest(signal_type="cancel"))
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING
    pending = await core.persistence.pending_signal(row.instance_id)
    assert pending is not None and pending.signal_type is SignalType.PAUSE


async def test_heartbeat_refreshes_liveness_without_adding_events(core: Core) -> None:
    client, row = await core.running_instance()
    before = await core.persistence.list_events(row.instance_id)
    core.clock.advance(10_000)
    await client.call(EventRequest(type="heartbeat"))
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None and instance.heartbeat_at_ms == core.clock.now_ms
    assert await core.persistence.list_events(row.instance_id) == before


async def test_completed_stores_the_output_once(core: Core) -> None:
    client, row = await core.running_instance()
    await client.call(EventRequest(type="completed", payload=b"\x81\xa2ok\xc3"))
    await client.call(EventRequest(type="completed", payload=b"\x81\xa2ok\xc3"))  # retried: harmless
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None
    assert (instance.status, instance.termination_reason) == (InstanceStatus.COMPLETED, TerminationReason.COMPLETED)
    assert instance.output == b"\x81\xa2ok\xc3" and instance.finished_at_ms == core.clock.now_ms
    assert [e.type for e in await core.persistence.list_events(row.instance_id)].count(EventType.COMPLETED) == 1
    with pytest.raises(InvalidState):
        await client.call(EventRequest(type="failed", payload=b"second opinion"))
    assert await core.status(row.instance_id) is InstanceStatus.COMPLETED
    # Reads stay allowed after the end.
    assert not (await client.request(GetCheckpointRequest(checkpoint_id="x"), GetCheckpointResponse)).found


async def test_failed_stores_the_error(core: Core) -> None:
    client, row = await core.running_instance()
    error = json.dumps({"type": "ValueError", "message": "bad order"}).encode()
    await client.call(EventRequest(type="failed", payload=error))
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None
    assert (instance.status, instance.termination_reason) == (
        InstanceStatus.FAILED,
        TerminationReason.APPLICATION_ERROR,
    )
    assert instance.error == error.decode()


async def test_completion_loses_to_a_status_change_made_elsewhere(core: Core) -> None:
    client, row = await core.running_instance()
    # The environment stopped the instance (first writer) while its last report was in flight.
    await core.persistence.transition(
        row.instance_id, [InstanceStatus.RUNNING], InstanceStatus.CANCELLED, reason=TerminationReason.STOPPED
    )
    with pytest.raises(InvalidState, match="cancelled"):
        await client.call(EventRequest(type="completed", payload=b"out"))
    instance = await core.persistence.get_instance(row.instance_id)
    assert instance is not None and instance.status is InstanceStatus.CANCELLED and instance.output is None


async def test_custom_events_are_stored_with_their_subtype(core: Core) -> None:
    client, row = await core.running_instance()
    await client.call(EventRequest(type="custom", subtype="progress", payload=b"50%"))
    custom = [e for e in await core.persistence.list_events(row.instance_id) if e.type is EventType.CUSTOM]
    assert [(e.subtype, e.payload) for e in custom] == [("progress", b"50%")]
    with pytest.raises(BadRequest, match="subtype"):
        await client.call(EventRequest(type="custom", payload=b"no subtype"))


async def test_event_payloads_over_the_limit_are_refused(start_core) -> None:
    core: Core = await start_core(max_checkpoint_bytes=100)
    client, row = await core.running_instance()
    with pytest.raises(BadRequest, match="payload"):
        await client.call(EventRequest(type="completed", payload=bytes(101)))
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING


async def test_a_suspended_event_only_records_a_suspended_launch_exiting(core: Core) -> None:
    client, row = await core.running_instance()
    with pytest.raises(InvalidState, match="suspends through"):
        await client.call(EventRequest(type="suspended"))
    assert await core.status(row.instance_id) is InstanceStatus.RUNNING
    assert (await client.request(SleepRequest(checkpoint_id="s", duration_ms=60_000), SleepResponse)).hibernate
    await client.call(EventRequest(type="suspended", payload=b"bye"))
    events = await core.persistence.list_events(row.instance_id)
    assert [(e.type, e.subtype) for e in events][-1] == (EventType.SUSPENDED, "exiting")


@pytest.mark.parametrize("kind", ["bogus", 3, None])
async def test_an_unknown_event_type_is_refused(core: Core, kind) -> None:
    client, row = await core.running_instance()
    with pytest.raises(BadRequest, match="'type'"):
        await client.call({"op": "event", "type": kind})


async def test_retry_attempts_are_recorded(core: Core) -> None:
    client, row = await core.running_instance()
    await client.call(RetryAttemptRequest(checkpoint_id="charge", attempt=2, error="timeout talking to bank"))
    retries = [e for e in await core.persistence.list_events(row.instance_id) if e.type is EventType.RETRY_ATTEMPT]
    assert len(retries) == 1 and retries[0].subtype == "charge"
    assert json.loads(retries[0].payload or b"") == {
        "checkpoint_id": "charge",
        "attempt": 2,
        "error": "timeout talking to bank",
    }


async def test_status_reports_the_bound_instance(core: Core) -> None:
    client, row = await core.running_instance()
    await client.request(CheckpointRequest(checkpoint_id="last", state=b""), CheckpointResponse)
    status = await client.request(StatusRequest(), StatusResponse)
    assert (status.status, status.checkpoint_id, status.attempt, status.wake_at_ms) == ("running", "last", 1, None)
    await client.request(SleepRequest(checkpoint_id="long", duration_ms=60_000), SleepResponse)
    status = await client.request(StatusRequest(), StatusResponse)
    assert (status.status, status.termination_reason) == ("suspended", "sleeping")
    assert status.wake_at_ms == core.clock.now_ms + 60_000
