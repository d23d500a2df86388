"""The wake scheduler's queries: atomic claims of due hibernating instances, and the next wake."""

from __future__ import annotations

import asyncio

import pytest

from runtara_core.errors import BadRequest
from runtara_core.persistence import (
    InstanceStatus,
    InstanceUpdate,
    Persistence,
    TerminationReason,
)
from tests.conftest import Backend, FakeClock
from tests.persistence.conftest import MakeInstance, other_transaction, run_into

SUSPENDED = InstanceStatus.SUSPENDED
RUNNING = InstanceStatus.RUNNING


async def _sleeping(make_instance: MakeInstance, wake_at_ms: int, **kwargs: object) -> str:
    row = await make_instance(
        status=SUSPENDED,
        reason=kwargs.pop("reason", TerminationReason.SLEEPING),
        update=InstanceUpdate(wake_at_ms=wake_at_ms),
        **kwargs,
    )
    return row.instance_id


async def test_claim_moves_due_sleepers_to_pending(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    now = clock()
    due = await _sleeping(make_instance, now - 1)
    exactly_due = await _sleeping(make_instance, now)
    waiting_timeout = await _sleeping(make_instance, now - 5, reason=TerminationReason.WAITING)
    backoff_over = await _sleeping(make_instance, now - 3, reason=TerminationReason.CRASHED)
    later = await _sleeping(make_instance, now + 1)
    backoff_later = await _sleeping(make_instance, now + 1, reason=TerminationReason.CRASHED)
    paused = await make_instance(status=SUSPENDED, reason=TerminationReason.PAUSED)

    claimed = await persistence.claim_due_wakeups(now)

    assert {r.instance_id for r in claimed} == {due, exactly_due, waiting_timeout, backoff_over}
    for row in claimed:
        assert row.status is InstanceStatus.PENDING
        assert row.termination_reason is None and row.wake_at_ms is None
    assert await persistence.claim_due_wakeups(now) == []
    for instance_id in (later, backoff_later, paused.instance_id):
        untouched = await persistence.get_instance(instance_id)
        assert untouched is not None and untouched.status is SUSPENDED


async def test_claim_respects_the_limit_oldest_first(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    now = clock()
    ids = [await _sleeping(make_instance, now - 100 + n) for n in range(5)]

    first = await persistence.claim_due_wakeups(now, limit=2)
    rest = await persistence.claim_due_wakeups(now, limit=10)

    assert {r.instance_id for r in first} == set(ids[:2])
    assert {r.instance_id for r in rest} == set(ids[2:])
    with pytest.raises(BadRequest):
        await persistence.claim_due_wakeups(now, limit=0)


async def test_crashed_instance_is_claimed_when_its_backoff_ends(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    """How the environment parks a crash for its relaunch backoff: suspended, crashed, wake_at."""
    now = clock()
    running = await make_instance(status=RUNNING)
    crashed = await persistence.transition(
        running.instance_id,
        [RUNNING],
        SUSPENDED,
        reason=TerminationReason.CRASHED,
        update=InstanceUpdate(wake_at_ms=now + 1_000),
    )
    assert await persistence.next_wake_at() == now + 1_000
    assert await persistence.claim_due_wakeups(now) == []

    claimed = await persistence.claim_due_wakeups(now + 1_000)

    assert [r.instance_id for r in claimed] == [crashed.instance_id]
    assert claimed[0].status is InstanceStatus.PENDING
    assert claimed[0].termination_reason is None and claimed[0].wake_at_ms is None
    assert claimed[0].attempt == crashed.attempt
    assert await persistence.claim_due_wakeups(now + 1_000) == []
    assert await persistence.next_wake_at() is None


async def test_the_lead_wakes_sleepers_early_but_never_shortens_a_crash_backoff(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    """A fresh process needs time to start, so sleepers are claimed ``lead_ms`` early (the SDK
    sleeps the rest); a crashed instance's backoff is claimed when it ends (chaos found the
    default 1 s lead eating the whole 500 ms first backoff)."""
    now = clock()
    sleeper = await _sleeping(make_instance, now + 800)
    waiter = await _sleeping(make_instance, now + 800, reason=TerminationReason.WAITING)
    crashed = await _sleeping(make_instance, now + 500, reason=TerminationReason.CRASHED)

    early = await persistence.claim_due_wakeups(now, lead_ms=1_000)

    assert {r.instance_id for r in early} == {sleeper, waiter}
    assert await persistence.claim_due_wakeups(now + 499, lead_ms=1_000) == []
    assert [r.instance_id for r in await persistence.claim_due_wakeups(now + 500, lead_ms=1_000)] == [crashed]


async def test_paused_and_crashed_without_wake_time_are_never_claimed(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    paused = await make_instance(status=SUSPENDED, reason=TerminationReason.PAUSED)
    parked = await make_instance(status=SUSPENDED, reason=TerminationReason.CRASHED)

    assert await persistence.claim_due_wakeups(clock() + 10**12) == []
    assert await persistence.next_wake_at() is None
    for row in (paused, parked):
        after = await persistence.get_instance(row.instance_id)
        assert after is not None and after.status is SUSPENDED


async def test_concurrent_claimers_never_share_an_instance(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    now = clock()
    ids = {await _sleeping(make_instance, now - n) for n in range(20)}
    ids |= {
        await _sleeping(make_instance, now - n, reason=TerminationReason.CRASHED)
        for n in range(10)
    }

    async def claimer() -> list[str]:
        got: list[str] = []
        for _ in range(30):  # bounded: enough rounds to drain alone
            batch = await persistence.claim_due_wakeups(now, limit=4)
            if not batch:
                return got
            got.extend(r.instance_id for r in batch)
        return got

    results = await asyncio.gather(*(claimer() for _ in range(6)))

    claimed = [instance_id for got in results for instance_id in got]
    assert len(claimed) == len(set(claimed)) == 30
    assert set(claimed) == ids


async def test_claimers_on_two_connections_never_share_an_instance(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    now = clock()
    ids = {await _sleeping(make_instance, now - n) for n in range(20)}
    ids |= {
        await _sleeping(make_instance, now - n, reason=TerminationReason.CRASHED)
        for n in range(10)
    }
    other = await backend.open()
    await other.next_wake_at()  # connected before the race starts

    async def claimer(store: Persistence) -> list[str]:
        got: list[str] = []
        for _ in range(30):
            batch = await store.claim_due_wakeups(now, limit=3)
            if not batch:
                return got
            got.extend(r.instance_id for r in batch)
        return got

    results = await asyncio.gather(*(claimer(s) for s in [persistence, other] * 3))

    claimed = [instance_id for got in results for instance_id in got]
    assert sorted(claimed) == sorted(ids)


async def test_claims_take_instances_that_another_transaction_is_writing_about(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    """An event or checkpoint of the instance being inserted elsewhere must not hide it.

    On PostgreSQL such an insert holds KEY SHARE on the instance row until it commits (the
    foreign-key check); claims that locked FOR UPDATE SKIP LOCKED skipped the row: the due
    sleeper stayed asleep and the enqueue woke nobody.
    """
    sleeper = await _sleeping(make_instance, clock() - 1)
    waiter = (await make_instance(status=RUNNING)).instance_id
    queued = (await make_instance(status=RUNNING)).instance_id
    await persistence.enqueue_custom_signal(queued, "go", b"go")
    for instance_id, name in ((waiter, "approval"), (queued, "go")):
        await persistence.transition(
            instance_id,
            [RUNNING],
            SUSPENDED,
            reason=TerminationReason.WAITING,
            update=InstanceUpdate(waiting_signal_name=name),
        )

    async with other_transaction(backend) as other:
        for instance_id in (sleeper, waiter, queued):
            await other.execute(
                "INSERT INTO events (instance_id, type, created_at_ms) "
                f"VALUES ('{instance_id}', 'custom', 0)"
            )
        blob = "'\\x00'::bytea" if other.postgres else "X'00'"
        await other.execute(
            "INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at_ms) "
            f"VALUES ('{sleeper}', 'step', {blob}, 0)"
        )
        due, enqueued, swept = await run_into(
            other,
            persistence.claim_due_wakeups(clock()),
            persistence.enqueue_custom_signal(waiter, "approval", b"ok"),
            persistence.claim_signal_waiters(),
        )

    assert [r.instance_id for r in due] == [sleeper]
    assert enqueued.woken is not None and enqueued.woken.instance_id == waiter
    assert [r.instance_id for r in swept] == [queued]


async def test_next_wake_at(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    assert await persistence.next_wake_at() is None
    await make_instance(status=SUSPENDED, reason=TerminationReason.PAUSED)
    assert await persistence.next_wake_at() is None

    await _sleeping(make_instance, clock() + 5_000)
    soonest = await _sleeping(make_instance, clock() + 2_000, reason=TerminationReason.WAITING)
    assert await persistence.next_wake_at() == clock() + 2_000

    backoff = await _sleeping(make_instance, clock() + 1_000, reason=TerminationReason.CRASHED)
    assert await persistence.next_wake_at() == clock() + 1_000

    for instance_id in (backoff, soonest):
        await persistence.transition(instance_id, [SUSPENDED], InstanceStatus.CANCELLED)
    assert await persistence.next_wake_at() == clock() + 5_000
