"""Hibernation: a running launch suspends to sleep or wait in one transaction that also checks,
under the instance row lock, that no signal is in the way."""

from __future__ import annotations

import asyncio
import random

import pytest

from runtara_core.errors import BadRequest, InvalidState, NotFound
from runtara_core.persistence import (
    EventType,
    HibernateResult,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    Persistence,
    SignalType,
    TerminationReason,
)
from tests.conftest import Backend, FakeClock
from tests.persistence.conftest import IN_FLIGHT_S, MakeInstance, other_transaction, run_into

RUNNING = InstanceStatus.RUNNING
SUSPENDED = InstanceStatus.SUSPENDED
PENDING = InstanceStatus.PENDING
SLEEPING = TerminationReason.SLEEPING
WAITING = TerminationReason.WAITING
CANCEL, PAUSE, RESUME = SignalType.CANCEL, SignalType.PAUSE, SignalType.RESUME
RACES = 30


async def _wait(
    persistence: Persistence, instance_id: str, name: str = "approval", attempt: int = 1
) -> HibernateResult:
    return await persistence.hibernate(
        instance_id,
        attempt=attempt,
        reason=WAITING,
        wake_at_ms=None,
        waiting_signal_name=name,
        event=NewEvent(EventType.SUSPENDED, subtype="waiting"),
    )


async def _sleep(persistence: Persistence, instance_id: str, wake_at_ms: int) -> HibernateResult:
    return await persistence.hibernate(
        instance_id, attempt=1, reason=SLEEPING, wake_at_ms=wake_at_ms
    )


async def test_sleeping(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(
        status=RUNNING, update=InstanceUpdate(attempt=3, started_at_ms=clock())
    )
    clock.advance(250)

    result = await persistence.hibernate(
        row.instance_id,
        attempt=3,
        reason=SLEEPING,
        wake_at_ms=clock() + 60_000,
        event=NewEvent(EventType.SUSPENDED, subtype="sleeping", payload=b"sleep 60s"),
    )

    assert result.hibernated and result.pending_signal is None
    after = result.row
    assert (after.status, after.termination_reason) == (SUSPENDED, SLEEPING)
    assert (after.wake_at_ms, after.waiting_signal_name) == (clock() + 60_000, None)
    assert (after.attempt, after.started_at_ms) == (3, row.started_at_ms)
    assert after.updated_at_ms == clock() and after.finished_at_ms is None
    assert await persistence.get_instance(row.instance_id) == after
    events = await persistence.list_events(row.instance_id)
    assert [(e.type, e.subtype, e.payload) for e in events] == [
        (EventType.SUSPENDED, "sleeping", b"sleep 60s")
    ]
    assert await persistence.next_wake_at() == clock() + 60_000


async def test_waiting_without_an_event(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)

    result = await persistence.hibernate(
        row.instance_id,
        attempt=1,
        reason=WAITING,
        wake_at_ms=clock() + 5_000,
        waiting_signal_name="approval",
    )

    assert result.hibernated
    assert (result.row.status, result.row.termination_reason) == (SUSPENDED, WAITING)
    assert (result.row.wake_at_ms, result.row.waiting_signal_name) == (clock() + 5_000, "approval")
    assert await persistence.list_events(row.instance_id) == []
    woken = await persistence.enqueue_custom_signal(row.instance_id, "approval", b"ok")
    assert woken.woken is not None and woken.woken.status is PENDING


@pytest.mark.parametrize("pending", [CANCEL, PAUSE])
@pytest.mark.parametrize("reason", [SLEEPING, WAITING])
async def test_a_pending_cancel_or_pause_keeps_the_instance_running(
    persistence: Persistence,
    make_instance: MakeInstance,
    clock: FakeClock,
    pending: SignalType,
    reason: TerminationReason,
) -> None:
    row = await make_instance(status=RUNNING)
    signal = await persistence.put_signal(row.instance_id, pending, b"why")

    result = await persistence.hibernate(
        row.instance_id,
        attempt=1,
        reason=reason,
        wake_at_ms=clock() + 1_000,
        waiting_signal_name="approval" if reason is WAITING else None,
        event=NewEvent(EventType.SUSPENDED),
    )

    assert not result.hibernated
    assert result.pending_signal == signal
    assert result.row == row == await persistence.get_instance(row.instance_id)
    assert await persistence.list_events(row.instance_id) == []
    assert await persistence.pending_signal(row.instance_id) == signal


async def test_a_pending_resume_is_reported_but_does_not_block(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    resume = await persistence.put_signal(row.instance_id, RESUME)

    result = await _sleep(persistence, row.instance_id, clock() + 1_000)

    assert result.hibernated and result.pending_signal == resume
    assert await persistence.pending_signal(row.instance_id) == resume


async def test_a_queued_signal_of_the_awaited_name_ends_the_wait_before_it_starts(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"ok")
    before = await persistence.list_custom_signals(row.instance_id)

    result = await _wait(persistence, row.instance_id)

    assert not result.hibernated and result.pending_signal is None
    assert result.row == row == await persistence.get_instance(row.instance_id)
    assert await persistence.list_custom_signals(row.instance_id) == before
    assert await persistence.list_events(row.instance_id) == []


async def test_only_an_unconsumed_signal_of_the_awaited_name_blocks(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"ok")
    await persistence.consume_custom_signal(row.instance_id, "approval", "wait-1")
    await persistence.enqueue_custom_signal(row.instance_id, "other", b"x")
    sleeper = await make_instance(status=RUNNING)
    await persistence.enqueue_custom_signal(sleeper.instance_id, "approval", b"ok")

    waited = await _wait(persistence, row.instance_id)
    slept = await _sleep(persistence, sleeper.instance_id, clock() + 1_000)

    assert waited.hibernated and waited.row.waiting_signal_name == "approval"
    assert slept.hibernated  # a sleep awaits no signal


@pytest.mark.parametrize(
    ("status", "attempt", "shown"),
    [
        pytest.param(RUNNING, 2, "is running (attempt 2)", id="relaunched"),
        pytest.param(SUSPENDED, 1, "is suspended (attempt 1)", id="already-suspended"),
        pytest.param(InstanceStatus.CANCELLED, 1, "is cancelled (attempt 1)", id="finished"),
    ],
)
async def test_only_the_running_launch_hibernates(
    persistence: Persistence,
    make_instance: MakeInstance,
    status: InstanceStatus,
    attempt: int,
    shown: str,
) -> None:
    row = await make_instance(status=status, update=InstanceUpdate(attempt=attempt))

    with pytest.raises(InvalidState) as caught:
        await _wait(persistence, row.instance_id)

    assert caught.value.message == (
        f"instance {row.instance_id!r} {shown}; this write comes from attempt 1, "
        "a launch that is no longer running"
    )
    assert await persistence.get_instance(row.instance_id) == row
    assert await persistence.list_events(row.instance_id) == []
    with pytest.raises(NotFound):
        await _wait(persistence, "missing")


@pytest.mark.parametrize(
    ("reason", "name", "message"),
    [
        (TerminationReason.PAUSED, None, "reason must be sleeping or waiting"),
        (TerminationReason.COMPLETED, None, "reason must be sleeping or waiting"),
        (WAITING, None, "waiting_signal_name is required"),
        (SLEEPING, "approval", "waiting_signal_name must be None"),
    ],
)
async def test_a_hibernation_needs_a_sleep_or_a_named_wait(
    persistence: Persistence,
    make_instance: MakeInstance,
    reason: TerminationReason,
    name: str | None,
    message: str,
) -> None:
    row = await make_instance(status=RUNNING)

    with pytest.raises(BadRequest, match=message):
        await persistence.hibernate(
            row.instance_id, attempt=1, reason=reason, wake_at_ms=None, waiting_signal_name=name
        )

    assert await persistence.get_instance(row.instance_id) == row


# --------------------------------------------------------------------------- races


async def test_a_signal_offered_while_the_hibernation_waits_is_seen(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance
) -> None:
    """put_signal and enqueue_custom_signal, in flight in another process, hold the instance row
    while the hibernation starts: it must wait for them and read what they committed (on
    PostgreSQL a read in the locking statement would still see the slot and queue empty)."""
    cancelled = await make_instance(status=RUNNING)
    signalled = await make_instance(status=RUNNING)

    async with other_transaction(backend) as offer:
        for row in (cancelled, signalled):
            await offer.lock_instance(row.instance_id)
        await offer.execute(
            "INSERT INTO signals (instance_id, signal_type, payload, created_at_ms) "
            f"VALUES ('{cancelled.instance_id}', 'cancel', {offer.blob(b'')}, 0)"
        )
        await offer.execute(
            "INSERT INTO custom_signals (instance_id, name, payload, created_at_ms) "
            f"VALUES ('{signalled.instance_id}', 'approval', {offer.blob(b'ok')}, 0)"
        )
        blocked, waited = await run_into(
            offer,
            _wait(persistence, cancelled.instance_id),
            _wait(persistence, signalled.instance_id),
        )

    assert not blocked.hibernated and blocked.pending_signal is not None
    assert blocked.pending_signal.signal_type is CANCEL
    assert not waited.hibernated
    for row in (cancelled, signalled):
        assert await persistence.get_instance(row.instance_id) == row


@pytest.mark.parametrize("hibernate_first", [True, False], ids=["hibernate-first", "enqueue-first"])
async def test_enqueue_and_hibernate_queued_behind_one_writer_in_either_order(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance, hibernate_first: bool
) -> None:
    """Both calls wait on a third writer and then run in the order they arrived."""
    row = await make_instance(status=RUNNING)

    async with other_transaction(backend) as writer:
        await writer.lock_instance(row.instance_id)
        first, second = (
            (_wait(persistence, row.instance_id), _enqueue(persistence, row.instance_id))
            if hibernate_first
            else (_enqueue(persistence, row.instance_id), _wait(persistence, row.instance_id))
        )
        started = asyncio.ensure_future(first)
        await asyncio.sleep(IN_FLIGHT_S / 2)
        results = await run_into(writer, started, second)

    hibernated = results[0 if hibernate_first else 1]
    enqueued = results[1 if hibernate_first else 0]
    after = await persistence.get_instance(row.instance_id)
    assert after is not None
    if hibernate_first:
        assert hibernated.hibernated and enqueued.woken is not None
        assert after.status is PENDING
    else:
        assert not hibernated.hibernated and enqueued.woken is None
        assert after.status is RUNNING


async def _enqueue(persistence: Persistence, instance_id: str) -> object:
    return await persistence.enqueue_custom_signal(instance_id, "approval", b"ok")


async def _jittered(call: object) -> object:
    await asyncio.sleep(random.random() * 0.002)
    return await call  # type: ignore[misc]


async def test_enqueue_racing_hibernate_never_leaves_a_waiter_with_its_signal_queued(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance
) -> None:
    """Two processes: one hibernates the instance, the other sends the awaited signal."""
    sender = await backend.open()
    outcomes: set[str] = set()
    for _ in range(RACES):
        row = await make_instance(status=RUNNING)

        result, enqueued = await asyncio.gather(
            _jittered(_wait(persistence, row.instance_id)),
            _jittered(sender.enqueue_custom_signal(row.instance_id, "approval", b"ok")),
        )

        after = await persistence.get_instance(row.instance_id)
        assert after is not None
        assert isinstance(result, HibernateResult)
        if result.hibernated:
            # The enqueue came after and woke the instance.
            assert enqueued.woken is not None  # type: ignore[attr-defined]
            assert after.status is PENDING
            outcomes.add("woken")
        else:
            # The hibernation saw the signal: the launch goes on to consume it.
            assert after == result.row and after.status is RUNNING
            outcomes.add("seen")
        assert len(await persistence.list_custom_signals(row.instance_id)) == 1
        assert await persistence.claim_signal_waiters(row.instance_id) == []
    assert outcomes  # which ones occur depends on timing


async def test_cancel_racing_hibernate_is_reported_or_left_in_the_slot(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    """Two processes: one hibernates the instance, the other cancels it."""
    canceller = await backend.open()
    for n in range(RACES):
        row = await make_instance(status=RUNNING)

        result, put = await asyncio.gather(
            _jittered(_sleep(persistence, row.instance_id, clock() + 60_000)),
            _jittered(canceller.put_signal(row.instance_id, CANCEL, f"{n}".encode())),
        )

        after = await persistence.get_instance(row.instance_id)
        assert after is not None and isinstance(result, HibernateResult)
        assert await persistence.pending_signal(row.instance_id) == put
        if result.hibernated:
            # The cancel came after: it waits in the slot of the suspended instance.
            assert result.pending_signal is None
            assert (after.status, after.termination_reason) == (SUSPENDED, SLEEPING)
        else:
            assert result.pending_signal == put
            assert after == result.row and after.status is RUNNING
