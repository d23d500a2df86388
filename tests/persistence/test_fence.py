"""The launch fence: writes made for launch ``attempt`` happen only while the instance is running
on that attempt, decided atomically with the write, and a refused write changes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from runtara_core.errors import InvalidState, NotFound
from runtara_core.persistence import (
    EventType,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    Persistence,
    TerminationReason,
)
from tests.conftest import Backend, FakeClock
from tests.persistence.conftest import MakeInstance, other_transaction, run_into

RUNNING = InstanceStatus.RUNNING
COMPLETED = InstanceStatus.COMPLETED
SUSPENDED = InstanceStatus.SUSPENDED

FencedWrite = Callable[[Persistence, str, int], Awaitable[object]]
"""Given the store, an instance id and the caller's attempt, makes one fenced write."""

FENCED_WRITES: list[tuple[str, FencedWrite]] = [
    ("save", lambda p, i, a: p.save_checkpoint_if_absent(i, "step-9", b"state", attempt=a)),
    ("consume", lambda p, i, a: p.consume_custom_signal(i, "approval", "wait-9", attempt=a)),
    ("event", lambda p, i, a: p.append_event(i, NewEvent(EventType.CUSTOM, "x"), attempt=a)),
    ("heartbeat", lambda p, i, a: p.touch_heartbeat(i, attempt=a)),
]
WRITES = [pytest.param(write, id=name) for name, write in FENCED_WRITES]


async def _state(persistence: Persistence, instance_id: str) -> tuple[object, ...]:
    """Everything a fenced write could change."""
    return (
        await persistence.get_instance(instance_id),
        await persistence.list_events(instance_id),
        await persistence.list_checkpoints(instance_id, with_state=True),
        await persistence.list_custom_signals(instance_id, include_consumed=True),
    )


async def _prepared(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock, **kwargs: object
) -> InstanceRow:
    """An instance with a signal queued for ``consume`` and time moved on, so that a heartbeat
    written by mistake would show."""
    row = await make_instance(**kwargs)
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"yes")
    clock.advance(1_000)
    return row


async def test_the_running_launch_writes(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await _prepared(
        persistence, make_instance, clock, status=RUNNING, update=InstanceUpdate(attempt=2)
    )

    saved = await persistence.save_checkpoint_if_absent(row.instance_id, "s", b"1", attempt=2)
    consumed = await persistence.consume_custom_signal(row.instance_id, "approval", "w", attempt=2)
    event = await persistence.append_event(row.instance_id, NewEvent(EventType.CUSTOM), attempt=2)
    clock.advance(500)
    await persistence.touch_heartbeat(row.instance_id, attempt=2)

    assert saved.saved and (consumed.found, consumed.payload) == (True, b"yes")
    assert await persistence.list_events(row.instance_id) == [event]
    assert (await persistence.list_checkpoints(row.instance_id)).total == 2
    after = await persistence.get_instance(row.instance_id)
    assert after is not None and (after.heartbeat_at_ms, after.checkpoint_id) == (clock(), "w")


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize(
    ("status", "attempt", "shown"),
    [
        pytest.param(COMPLETED, 1, "is completed (attempt 1)", id="finished"),
        pytest.param(SUSPENDED, 1, "is suspended (attempt 1)", id="suspended"),
        pytest.param(RUNNING, 2, "is running (attempt 2)", id="relaunched"),
        pytest.param(InstanceStatus.PENDING, 2, "is pending (attempt 2)", id="relaunching"),
    ],
)
async def test_a_stale_launch_is_refused_and_changes_nothing(
    persistence: Persistence,
    make_instance: MakeInstance,
    clock: FakeClock,
    write: FencedWrite,
    status: InstanceStatus,
    attempt: int,
    shown: str,
) -> None:
    row = await _prepared(
        persistence, make_instance, clock, status=status, update=InstanceUpdate(attempt=attempt)
    )
    before = await _state(persistence, row.instance_id)

    with pytest.raises(InvalidState) as caught:
        await write(persistence, row.instance_id, 1)

    assert caught.value.message == (
        f"instance {row.instance_id!r} {shown}; this write comes from attempt 1, "
        "a launch that is no longer running"
    )
    assert await _state(persistence, row.instance_id) == before


@pytest.mark.parametrize("write", WRITES[:2])
async def test_a_stale_launch_gets_no_replay_of_an_existing_checkpoint(
    persistence: Persistence, make_instance: MakeInstance, write: FencedWrite
) -> None:
    """The checkpoint exists (saved by this very launch before it was cut off): a retried save
    or consume from it is still refused, not answered from the stored state."""
    row = await make_instance(status=RUNNING)
    await persistence.save_checkpoint_if_absent(row.instance_id, "step-9", b"kept", attempt=1)
    await persistence.consume_custom_signal(row.instance_id, "approval", "wait-9")  # none queued
    await persistence.save_checkpoint_if_absent(row.instance_id, "wait-9", b"kept", attempt=1)
    await persistence.transition(row.instance_id, [RUNNING], COMPLETED)
    before = await _state(persistence, row.instance_id)

    with pytest.raises(InvalidState, match="is completed"):
        await write(persistence, row.instance_id, 1)

    assert await _state(persistence, row.instance_id) == before


@pytest.mark.parametrize("write", WRITES)
async def test_a_fenced_write_for_an_unknown_instance_is_not_found(
    persistence: Persistence, write: FencedWrite
) -> None:
    with pytest.raises(NotFound):
        await write(persistence, "missing", 1)


@pytest.mark.parametrize("write", WRITES)
async def test_without_an_attempt_writes_are_not_fenced(
    persistence: Persistence, make_instance: MakeInstance, write: FencedWrite
) -> None:
    """Existing callers keep today's behaviour: the environment writes for any status."""
    row = await make_instance(status=COMPLETED)

    await write(persistence, row.instance_id, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("write", WRITES)
@pytest.mark.parametrize(
    ("change", "admitted_attempt"),
    [
        pytest.param("status = 'completed'", None, id="finished"),
        pytest.param("attempt = 2", 2, id="relaunched"),
    ],
)
async def test_the_fence_sees_a_change_committed_while_the_write_waited(
    backend: Backend,
    persistence: Persistence,
    make_instance: MakeInstance,
    clock: FakeClock,
    write: FencedWrite,
    change: str,
    admitted_attempt: int | None,
) -> None:
    """Another actor moves the instance on while a write from attempt 1 waits for its row.

    The write must decide on the committed change, not on what was there when it started: on
    PostgreSQL the checkpoint save and the event append are single statements whose snapshot
    predates the change, so their fence has to read the row they lock. A write from the new
    launch, waiting alongside, is admitted.
    """
    row = await _prepared(persistence, make_instance, clock, status=RUNNING)
    await persistence.enqueue_custom_signal(row.instance_id, "approval", b"second")
    before = await _state(persistence, row.instance_id)

    async with other_transaction(backend) as mover:
        await mover.execute(
            f"UPDATE instances SET {change} WHERE instance_id = '{row.instance_id}'"
        )
        calls = [write(persistence, row.instance_id, 1)]
        if admitted_attempt is not None:
            calls.append(write(persistence, row.instance_id, admitted_attempt))
        outcomes = await run_into(mover, *(_outcome(c) for c in calls))

    assert isinstance(outcomes[0], InvalidState)
    assert "this write comes from attempt 1" in outcomes[0].message
    if admitted_attempt is None:
        after = await _state(persistence, row.instance_id)
        assert after[1:] == before[1:]
        assert after[0].heartbeat_at_ms == before[0].heartbeat_at_ms  # type: ignore[union-attr]
    else:
        assert not isinstance(outcomes[1], Exception)


async def _outcome(call: Awaitable[object]) -> object:
    try:
        return await call
    except InvalidState as exc:
        return exc


# --------------------------------------------------------------------------- transition


async def test_transition_on_the_expected_attempt(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING, update=InstanceUpdate(attempt=2))

    done = await persistence.transition(
        row.instance_id,
        [RUNNING],
        COMPLETED,
        reason=TerminationReason.COMPLETED,
        event=NewEvent(EventType.COMPLETED),
        attempt=2,
    )

    assert (done.status, done.attempt) == (COMPLETED, 2)
    assert len(await persistence.list_events(row.instance_id)) == 1


async def test_transition_may_move_the_attempt_it_requires(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    """``attempt`` is checked before, ``update.attempt`` written: a relaunch from attempt 1."""
    row = await make_instance(status=RUNNING)

    relaunched = await persistence.transition(
        row.instance_id,
        [RUNNING],
        InstanceStatus.PENDING,
        update=InstanceUpdate(attempt=2),
        attempt=1,
    )

    assert (relaunched.status, relaunched.attempt) == (InstanceStatus.PENDING, 2)


@pytest.mark.parametrize(
    ("status", "attempt", "shown"),
    [
        pytest.param(RUNNING, 2, "is running (attempt 2)", id="other-attempt"),
        pytest.param(COMPLETED, 1, "is completed (attempt 1)", id="other-status"),
    ],
)
async def test_transition_from_another_attempt_is_refused_naming_both(
    persistence: Persistence,
    make_instance: MakeInstance,
    status: InstanceStatus,
    attempt: int,
    shown: str,
) -> None:
    row = await make_instance(status=status, update=InstanceUpdate(attempt=attempt))

    with pytest.raises(InvalidState) as caught:
        await persistence.transition(
            row.instance_id,
            [RUNNING],
            InstanceStatus.FAILED,
            event=NewEvent(EventType.FAILED),
            attempt=1,
        )

    assert caught.value.message == (
        f"instance {row.instance_id!r} {shown}, expected running on attempt 1 to move it to failed"
    )
    assert await persistence.get_instance(row.instance_id) == row
    assert await persistence.list_events(row.instance_id) == []
    with pytest.raises(NotFound):
        await persistence.transition("missing", [RUNNING], COMPLETED, attempt=1)
