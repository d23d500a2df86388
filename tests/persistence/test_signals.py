"""Instance-wide signals (one slot, cancel first) and custom signals (exactly-once FIFO queues)."""

from __future__ import annotations

import asyncio

import pytest

from runtara_core.errors import BadRequest, InvalidState, NotFound
from runtara_core.persistence import (
    EventType,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    Persistence,
    SignalOutcome,
    SignalType,
    TerminationReason,
)
from tests.conftest import Backend, FakeClock
from tests.persistence.conftest import (
    IN_FLIGHT_S,
    MakeInstance,
    other_transaction,
    run_into,
)

RUNNING = InstanceStatus.RUNNING
SUSPENDED = InstanceStatus.SUSPENDED
CANCEL, PAUSE, RESUME = SignalType.CANCEL, SignalType.PAUSE, SignalType.RESUME


# --------------------------------------------------------------------------- instance-wide


async def test_put_pending_and_ack(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    assert await persistence.pending_signal(row.instance_id) is None

    put = await persistence.put_signal(row.instance_id, PAUSE, b"why")

    assert (put.signal_type, put.payload, put.created_at_ms) == (PAUSE, b"why", clock())
    assert await persistence.pending_signal(row.instance_id) == put
    assert not await persistence.ack_signal(row.instance_id, CANCEL)
    assert await persistence.pending_signal(row.instance_id) == put
    assert await persistence.ack_signal(row.instance_id, PAUSE)
    assert await persistence.pending_signal(row.instance_id) is None
    assert not await persistence.ack_signal(row.instance_id, PAUSE)


@pytest.mark.parametrize(
    ("first", "second", "pending"),
    [
        (PAUSE, CANCEL, CANCEL),
        (RESUME, CANCEL, CANCEL),
        (CANCEL, PAUSE, CANCEL),
        (CANCEL, RESUME, CANCEL),
        (PAUSE, RESUME, RESUME),
        (RESUME, PAUSE, PAUSE),
    ],
)
async def test_signal_precedence(
    persistence: Persistence,
    make_instance: MakeInstance,
    first: SignalType,
    second: SignalType,
    pending: SignalType,
) -> None:
    row = await make_instance(status=RUNNING)
    await persistence.put_signal(row.instance_id, first, first.value.encode())

    returned = await persistence.put_signal(row.instance_id, second, second.value.encode())

    assert returned.signal_type is pending and returned.payload == pending.value.encode()
    assert await persistence.pending_signal(row.instance_id) == returned


async def test_repeating_a_signal_keeps_the_first_request(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    first = await persistence.put_signal(row.instance_id, CANCEL, b"first reason")
    clock.advance(1000)

    again = await persistence.put_signal(row.instance_id, CANCEL, b"second reason")

    assert again == first


async def test_concurrent_signals_end_with_cancel(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    kinds = [PAUSE, RESUME, CANCEL, PAUSE, RESUME] * 4

    await asyncio.gather(*(persistence.put_signal(row.instance_id, k) for k in kinds))

    pending = await persistence.pending_signal(row.instance_id)
    assert pending is not None and pending.signal_type is CANCEL


async def test_signal_to_unknown_instance_is_not_found(persistence: Persistence) -> None:
    with pytest.raises(NotFound):
        await persistence.put_signal("missing", CANCEL)
    assert await persistence.pending_signal("missing") is None
    assert not await persistence.ack_signal("missing", CANCEL)


# --------------------------------------------------------------------------- acknowledging

PAUSED = SignalOutcome(
    SUSPENDED, TerminationReason.PAUSED, NewEvent(EventType.SUSPENDED, subtype="paused")
)


async def test_ack_with_an_outcome_moves_the_instance_and_clears_the_slot(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING, update=InstanceUpdate(attempt=2))
    await persistence.put_signal(row.instance_id, PAUSE)
    clock.advance(100)

    acked = await persistence.ack_signal(row.instance_id, PAUSE, outcome=PAUSED, attempt=2)

    assert acked
    after = await persistence.get_instance(row.instance_id)
    assert after is not None
    assert (after.status, after.termination_reason) == (SUSPENDED, TerminationReason.PAUSED)
    assert after.updated_at_ms == clock() and after.attempt == 2
    assert await persistence.pending_signal(row.instance_id) is None
    events = await persistence.list_events(row.instance_id)
    assert [(e.type, e.subtype, e.created_at_ms) for e in events] == [
        (EventType.SUSPENDED, "paused", clock())
    ]


async def test_ack_with_an_outcome_of_another_signal_changes_nothing(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    cancel = await persistence.put_signal(row.instance_id, CANCEL)
    empty = await make_instance(status=RUNNING)

    assert not await persistence.ack_signal(row.instance_id, PAUSE, outcome=PAUSED, attempt=1)
    assert not await persistence.ack_signal(empty.instance_id, PAUSE, outcome=PAUSED)
    assert not await persistence.ack_signal("missing", PAUSE, outcome=PAUSED, attempt=1)

    assert await persistence.get_instance(row.instance_id) == row
    assert await persistence.get_instance(empty.instance_id) == empty
    assert await persistence.pending_signal(row.instance_id) == cancel
    assert await persistence.list_events(row.instance_id) == []


@pytest.mark.parametrize(
    ("status", "attempt", "shown"),
    [
        pytest.param(RUNNING, 2, "is running (attempt 2)", id="other-attempt"),
        pytest.param(SUSPENDED, 1, "is suspended (attempt 1)", id="not-running"),
    ],
)
async def test_ack_whose_outcome_is_refused_keeps_the_signal(
    persistence: Persistence,
    make_instance: MakeInstance,
    status: InstanceStatus,
    attempt: int,
    shown: str,
) -> None:
    row = await make_instance(status=status, update=InstanceUpdate(attempt=attempt))
    pause = await persistence.put_signal(row.instance_id, PAUSE)

    with pytest.raises(InvalidState) as caught:
        await persistence.ack_signal(row.instance_id, PAUSE, outcome=PAUSED, attempt=1)

    assert caught.value.message == (
        f"instance {row.instance_id!r} {shown}, expected running on attempt 1 to move it to "
        "suspended"
    )
    assert await persistence.get_instance(row.instance_id) == row
    assert await persistence.pending_signal(row.instance_id) == pause
    assert await persistence.list_events(row.instance_id) == []


async def test_ack_with_an_outcome_but_no_attempt_needs_running(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING, update=InstanceUpdate(attempt=4))
    paused = await make_instance(status=SUSPENDED, reason=TerminationReason.PAUSED)
    await persistence.put_signal(row.instance_id, CANCEL)
    await persistence.put_signal(paused.instance_id, CANCEL)
    cancelled = SignalOutcome(InstanceStatus.CANCELLED, TerminationReason.CANCELLED)

    assert await persistence.ack_signal(row.instance_id, CANCEL, outcome=cancelled)
    with pytest.raises(InvalidState, match="is suspended, expected running"):
        await persistence.ack_signal(paused.instance_id, CANCEL, outcome=cancelled)

    after = await persistence.get_instance(row.instance_id)
    assert after is not None and after.status is InstanceStatus.CANCELLED
    assert after.finished_at_ms is not None
    assert await persistence.list_events(row.instance_id) == []  # no event asked for
    assert await persistence.pending_signal(paused.instance_id) is not None


async def test_ack_with_only_an_attempt_is_fenced(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING, update=InstanceUpdate(attempt=2))
    await persistence.put_signal(row.instance_id, RESUME)

    with pytest.raises(InvalidState, match="this write comes from attempt 1"):
        await persistence.ack_signal(row.instance_id, RESUME, attempt=1)
    assert await persistence.pending_signal(row.instance_id) is not None

    assert await persistence.ack_signal(row.instance_id, RESUME, attempt=2)
    assert await persistence.pending_signal(row.instance_id) is None
    assert await persistence.get_instance(row.instance_id) == row


@pytest.mark.parametrize("cancel_first", [True, False], ids=["cancel-first", "ack-first"])
async def test_a_cancel_racing_the_ack_of_a_pause_is_never_lost(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance, cancel_first: bool
) -> None:
    """The ack of a pause and a cancel both wait on a third writer, then run in arrival order.

    The ack checks and clears the slot atomically with its transition, so:
    - cancel first: it replaced the pause, the ack finds no pause, returns False and changes
      nothing (the launch goes on to see the cancel);
    - ack first: the instance is paused and the slot empty when the cancel lands, so the cancel
      waits in the slot of the suspended instance (the environment cancels those directly).
    Never paused with the slot cleared of a cancel that came first.
    """
    row = await make_instance(status=RUNNING)
    await persistence.put_signal(row.instance_id, PAUSE)
    canceller = await backend.open()
    await canceller.pending_signal(row.instance_id)  # connected before the race starts

    async with other_transaction(backend) as writer:
        await writer.lock_instance(row.instance_id)
        ack = persistence.ack_signal(row.instance_id, PAUSE, outcome=PAUSED, attempt=1)
        cancel = canceller.put_signal(row.instance_id, CANCEL, b"stop")
        first, second = (cancel, ack) if cancel_first else (ack, cancel)
        started = asyncio.ensure_future(first)
        await asyncio.sleep(IN_FLIGHT_S / 2)
        results = await run_into(writer, started, second)

    acked = results[1] if cancel_first else results[0]
    after = await persistence.get_instance(row.instance_id)
    pending = await persistence.pending_signal(row.instance_id)
    assert after is not None and pending is not None
    assert (pending.signal_type, pending.payload) == (CANCEL, b"stop")
    if backend.kind == "postgres":  # row-lock waiters go in arrival order
        assert acked is (not cancel_first)
    # SQLite's busy handler lets waiting writers retry in no set order: check whichever won.
    if not acked:
        assert after == row
        assert await persistence.list_events(row.instance_id) == []
    else:
        assert acked is True
        assert (after.status, after.termination_reason) == (SUSPENDED, TerminationReason.PAUSED)


async def test_a_cancel_racing_the_ack_of_a_pause_is_seen_or_left_pending(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance
) -> None:
    canceller = await backend.open()
    for _ in range(30):
        row = await make_instance(status=RUNNING)
        await persistence.put_signal(row.instance_id, PAUSE)

        acked, _put = await asyncio.gather(
            persistence.ack_signal(row.instance_id, PAUSE, outcome=PAUSED, attempt=1),
            canceller.put_signal(row.instance_id, CANCEL),
        )

        after = await persistence.get_instance(row.instance_id)
        pending = await persistence.pending_signal(row.instance_id)
        assert after is not None and pending is not None and pending.signal_type is CANCEL
        assert after.status is (SUSPENDED if acked else RUNNING)


# --------------------------------------------------------------------------- custom signals


async def test_custom_signals_are_consumed_in_fifo_order(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    for n in range(3):
        await persistence.enqueue_custom_signal(row.instance_id, "approval", f"a{n}".encode())
    await persistence.enqueue_custom_signal(row.instance_id, "other", b"o")

    taken = [
        await persistence.consume_custom_signal(row.instance_id, "approval", f"wait-{n}")
        for n in range(4)
    ]

    assert [(t.found, t.payload, t.replayed) for t in taken] == [
        (True, b"a0", False),
        (True, b"a1", False),
        (True, b"a2", False),
        (False, None, False),
    ]
    left = await persistence.list_custom_signals(row.instance_id)
    assert [(s.name, s.payload) for s in left] == [("other", b"o")]
    history = await persistence.list_custom_signals(row.instance_id, include_consumed=True)
    assert [(s.payload, s.consumed_by_checkpoint_id) for s in history] == [
        (b"a0", "wait-0"),
        (b"a1", "wait-1"),
        (b"a2", "wait-2"),
        (b"o", None),
    ]


async def test_consume_saves_the_payload_as_the_checkpoint(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"yes")
    clock.advance(300)

    await persistence.consume_custom_signal(row.instance_id, "approval", "wait-approval")

    checkpoint = await persistence.get_checkpoint(row.instance_id, "wait-approval")
    assert checkpoint is not None and checkpoint.state == b"yes"
    after = await persistence.get_instance(row.instance_id)
    assert after is not None
    assert (after.checkpoint_id, after.heartbeat_at_ms) == ("wait-approval", clock())
    consumed = await persistence.list_custom_signals(row.instance_id, include_consumed=True)
    assert consumed[0].consumed_at_ms == clock()


async def test_consume_replay_returns_the_checkpoint_and_consumes_nothing(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"first")
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"second")
    first = await persistence.consume_custom_signal(row.instance_id, "approval", "wait-1")

    replay = await persistence.consume_custom_signal(row.instance_id, "approval", "wait-1")

    assert (first.payload, first.replayed) == (b"first", False)
    assert (replay.found, replay.payload, replay.replayed) == (True, b"first", True)
    queued = await persistence.list_custom_signals(row.instance_id)
    assert [s.payload for s in queued] == [b"second"]


async def test_a_wait_past_its_deadline_takes_only_a_signal_queued_by_then(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    """A launch relaunched after its wait's deadline must see what an uninterrupted one saw
    (chaos: a crash turned an approval sent in time into a timeout)."""
    row = await make_instance(status=RUNNING)
    deadline = clock()
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"in time")
    clock.advance(10)
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"too late")
    clock.advance(5_000)

    first = await persistence.consume_custom_signal(row.instance_id, "approval", "wait-1", queued_by_ms=deadline)
    second = await persistence.consume_custom_signal(row.instance_id, "approval", "wait-2", queued_by_ms=deadline)

    assert (first.found, first.payload) == (True, b"in time")
    assert (second.found, second.payload) == (False, None)
    assert await persistence.get_checkpoint(row.instance_id, "wait-2") is None
    assert [s.payload for s in await persistence.list_custom_signals(row.instance_id)] == [b"too late"]


async def test_consume_with_nothing_queued_changes_nothing(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)

    result = await persistence.consume_custom_signal(row.instance_id, "approval", "wait-1")

    assert (result.found, result.payload, result.replayed) == (False, None, False)
    assert await persistence.get_checkpoint(row.instance_id, "wait-1") is None


async def test_concurrent_consumers_take_each_signal_exactly_once(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    for n in range(50):
        await persistence.enqueue_custom_signal(row.instance_id, "job", n.to_bytes(2, "big"))

    async def consumer(worker: int) -> list[int]:
        got: list[int] = []
        for step in range(60):  # bounded: more steps than signals
            result = await persistence.consume_custom_signal(
                row.instance_id, "job", f"worker-{worker}-step-{step}"
            )
            if not result.found:
                return got
            assert not result.replayed and result.payload is not None
            got.append(int.from_bytes(result.payload, "big"))
        raise AssertionError("consumer did not drain the queue")

    per_worker = await asyncio.gather(*(consumer(w) for w in range(10)))

    everything = sorted(n for got in per_worker for n in got)
    assert everything == list(range(50))
    assert all(got == sorted(got) for got in per_worker)
    assert await persistence.list_custom_signals(row.instance_id) == []
    history = await persistence.list_checkpoints(row.instance_id, limit=100)
    assert history.total == 50


async def test_concurrent_consumers_of_one_checkpoint_take_one_signal(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    for n in range(5):
        await persistence.enqueue_custom_signal(row.instance_id, "approval", bytes([n]))

    results = await asyncio.gather(
        *(persistence.consume_custom_signal(row.instance_id, "approval", "wait") for _ in range(10))
    )

    assert sum(not r.replayed for r in results) == 1
    assert {r.payload for r in results} == {bytes([0])}
    assert len(await persistence.list_custom_signals(row.instance_id)) == 4


async def test_consumers_on_two_connections_take_each_signal_exactly_once(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    for n in range(60):
        await persistence.enqueue_custom_signal(row.instance_id, "job", bytes([n]))
    other = await backend.open()
    await other.pending_signal(row.instance_id)  # connected before the race starts

    async def consumer(store: Persistence, worker: int) -> list[int]:
        got: list[int] = []
        for step in range(70):  # bounded: more steps than signals
            result = await store.consume_custom_signal(row.instance_id, "job", f"w{worker}-{step}")
            if not result.found:
                return got
            assert not result.replayed and result.payload is not None
            got.append(result.payload[0])
        raise AssertionError("consumer did not drain the queue")

    per_worker = await asyncio.gather(
        *(consumer(store, w) for w, store in enumerate([persistence, other] * 4))
    )

    assert sorted(n for got in per_worker for n in got) == list(range(60))
    assert (await persistence.list_checkpoints(row.instance_id)).total == 60


async def test_custom_signal_errors(persistence: Persistence, make_instance: MakeInstance) -> None:
    row = await make_instance(status=RUNNING)
    with pytest.raises(NotFound):
        await persistence.enqueue_custom_signal("missing", "approval", b"x")
    with pytest.raises(NotFound):
        await persistence.consume_custom_signal("missing", "approval", "wait")
    with pytest.raises(BadRequest):
        await persistence.enqueue_custom_signal(row.instance_id, "", b"x")
    with pytest.raises(BadRequest, match="must not be empty"):
        await persistence.enqueue_custom_signal(row.instance_id, "approval", b"")
    assert await persistence.list_custom_signals(row.instance_id) == []
    with pytest.raises(BadRequest):
        await persistence.consume_custom_signal(row.instance_id, "approval", "")
    assert await persistence.list_custom_signals("missing", include_consumed=True) == []


# --------------------------------------------------------------------------- waking waiters


async def _hibernate_waiting(
    persistence: Persistence, instance_id: str, name: str, wake_at_ms: int | None = None
) -> None:
    await persistence.transition(
        instance_id,
        [RUNNING],
        SUSPENDED,
        reason=TerminationReason.WAITING,
        update=InstanceUpdate(waiting_signal_name=name, wake_at_ms=wake_at_ms),
    )


async def test_enqueue_wakes_the_instance_waiting_on_that_name(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    await _hibernate_waiting(persistence, row.instance_id, "approval", clock() + 86_400_000)

    unrelated = await persistence.enqueue_custom_signal(row.instance_id, "other", b"x")
    matching = await persistence.enqueue_custom_signal(row.instance_id, "approval", b"ok")
    again = await persistence.enqueue_custom_signal(row.instance_id, "approval", b"ok2")

    assert unrelated.woken is None and again.woken is None
    assert matching.woken is not None
    assert matching.woken.status is InstanceStatus.PENDING
    assert matching.woken.termination_reason is None
    assert matching.woken.wake_at_ms is None and matching.woken.waiting_signal_name is None
    assert matching.signal.payload == b"ok" and matching.signal.consumed_at_ms is None


async def test_enqueue_does_not_wake_a_paused_or_sleeping_instance(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    paused = await make_instance(status=SUSPENDED, reason=TerminationReason.PAUSED)
    running = await make_instance(status=RUNNING)

    assert (await persistence.enqueue_custom_signal(paused.instance_id, "x", b"p")).woken is None
    assert (await persistence.enqueue_custom_signal(running.instance_id, "x", b"p")).woken is None
    after = await persistence.get_instance(paused.instance_id)
    assert after is not None and after.status is SUSPENDED


async def test_sweep_wakes_waiters_whose_signal_arrived_before_they_hibernated(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    early = await make_instance(status=RUNNING)
    late = await make_instance(status=RUNNING)
    nothing = await make_instance(status=RUNNING)
    # The signals arrive while the instances still run; then they hibernate on that name.
    await persistence.enqueue_custom_signal(early.instance_id, "approval", b"1")
    await persistence.enqueue_custom_signal(late.instance_id, "approval", b"2")
    for row in (early, late, nothing):
        await _hibernate_waiting(persistence, row.instance_id, "approval")

    targeted = await persistence.claim_signal_waiters(early.instance_id)
    swept = await persistence.claim_signal_waiters()

    assert [r.instance_id for r in targeted] == [early.instance_id]
    assert [r.instance_id for r in swept] == [late.instance_id]
    assert await persistence.claim_signal_waiters() == []
    still = await persistence.get_instance(nothing.instance_id)
    assert still is not None and still.status is SUSPENDED


async def test_enqueue_wakes_an_instance_whose_hibernation_is_in_flight(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance
) -> None:
    """The core hibernates an instance (running -> suspended, waiting) while a signal arrives.

    Had the enqueue not waited for that UPDATE, it would have read the instance as running and
    woken nobody, and a sweep run right after the hibernation (before the enqueue committed)
    would have missed the signal: the instance would wait forever.
    """
    row = await make_instance(status=RUNNING)

    async with other_transaction(backend) as hibernation:
        await hibernation.execute(
            "UPDATE instances SET status = 'suspended', termination_reason = 'waiting', "
            f"waiting_signal_name = 'approval' WHERE instance_id = '{row.instance_id}'"
        )
        (enqueued,) = await run_into(
            hibernation, persistence.enqueue_custom_signal(row.instance_id, "approval", b"ok")
        )

    assert enqueued.woken is not None and enqueued.woken.instance_id == row.instance_id
    after = await persistence.get_instance(row.instance_id)
    assert after is not None and after.status is InstanceStatus.PENDING
