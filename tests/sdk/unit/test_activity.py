"""Which in-process wait may ask core to hibernate, and when the launch is idle."""

from __future__ import annotations

import asyncio

from runtara_sdk.activity import Activity, Wait
from runtara_sdk.history import CallKind


async def settle() -> None:
    """Let every ready task run (a few loop turns, no wall-clock waiting)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_single_wait_is_offered_when_not_busy() -> None:
    activity = Activity()
    with activity.waiting(Wait(CallKind.SLEEP, deadline_ms=1_000)) as wait:
        assert activity.claim_offer(wait)
        assert wait.offered == activity.generation
        assert not wait.may_hibernate.is_set()


async def test_single_signal_wait_is_offered() -> None:
    activity = Activity()
    with activity.waiting(Wait(CallKind.SIGNAL)) as wait:
        assert activity.claim_offer(wait)


async def test_wait_is_not_offered_twice_in_one_generation() -> None:
    activity = Activity()
    with activity.waiting(Wait(CallKind.SLEEP, deadline_ms=1_000)) as wait:
        assert activity.claim_offer(wait)
        assert not activity.claim_offer(wait)


async def test_wait_that_is_not_registered_is_not_offered() -> None:
    activity = Activity()
    assert not activity.claim_offer(Wait(CallKind.SLEEP, deadline_ms=1))


async def test_no_offer_while_a_step_runs() -> None:
    activity = Activity()
    with activity.waiting(Wait(CallKind.SLEEP, deadline_ms=1_000)) as wait:
        async with activity.running():
            assert activity.busy == 1
            assert not activity.claim_offer(wait)
            assert not wait.may_hibernate.is_set()
        assert activity.busy == 0


async def test_when_busy_drops_to_zero_the_only_wait_may_hibernate() -> None:
    activity = Activity()
    with activity.waiting(Wait(CallKind.SLEEP, deadline_ms=1_000)) as wait:
        async with activity.running():
            async with activity.running():
                pass
            assert not wait.may_hibernate.is_set()  # one step still runs
        assert wait.may_hibernate.is_set()
        assert activity.claim_offer(wait)
        assert not wait.may_hibernate.is_set()  # claimed: cleared until the next chance


async def test_an_offered_wait_is_offered_again_after_a_step_ran() -> None:
    """A refused hibernation is retried once new work has come and gone."""
    activity = Activity()
    with activity.waiting(Wait(CallKind.SLEEP, deadline_ms=1_000)) as wait:
        assert activity.claim_offer(wait)
        async with activity.running():
            pass
        assert wait.may_hibernate.is_set()
        assert activity.claim_offer(wait)


async def test_busy_counter_drops_even_when_the_step_fails() -> None:
    activity = Activity()
    try:
        async with activity.running():
            raise RuntimeError("step failed")
    except RuntimeError:
        pass
    assert activity.busy == 0
    await asyncio.wait_for(activity.idle(), 5)


async def test_two_sleeps_offer_only_the_earliest() -> None:
    activity = Activity()
    late = Wait(CallKind.SLEEP, deadline_ms=5_000)
    early = Wait(CallKind.SLEEP, deadline_ms=1_000)
    with activity.waiting(late), activity.waiting(early):
        assert not activity.claim_offer(late)
        assert activity.claim_offer(early)


async def test_two_sleeps_after_busy_only_the_earliest_is_woken() -> None:
    activity = Activity()
    late = Wait(CallKind.SLEEP, deadline_ms=5_000)
    early = Wait(CallKind.SLEEP, deadline_ms=1_000)
    with activity.waiting(early), activity.waiting(late):
        async with activity.running():
            pass
        assert early.may_hibernate.is_set()
        assert not late.may_hibernate.is_set()


async def test_when_the_earliest_sleep_ends_the_other_is_offered() -> None:
    activity = Activity()
    late = Wait(CallKind.SLEEP, deadline_ms=5_000)
    with activity.waiting(late):
        with activity.waiting(Wait(CallKind.SLEEP, deadline_ms=1_000)):
            assert not activity.claim_offer(late)
        assert late.may_hibernate.is_set()
        assert activity.claim_offer(late)


async def test_deadline_change_moves_the_offer() -> None:
    activity = Activity()
    first = Wait(CallKind.SLEEP, deadline_ms=1_000)
    second = Wait(CallKind.SLEEP, deadline_ms=2_000)
    with activity.waiting(first), activity.waiting(second):
        second.deadline_ms = 500
        activity.deadline_changed()
        assert second.may_hibernate.is_set()
        assert not first.may_hibernate.is_set()
        assert activity.claim_offer(second)
        assert not activity.claim_offer(first)


async def test_sleep_plus_signal_wait_offers_none() -> None:
    activity = Activity()
    sleep = Wait(CallKind.SLEEP, deadline_ms=1_000)
    signal = Wait(CallKind.SIGNAL)
    with activity.waiting(sleep), activity.waiting(signal):
        assert not activity.claim_offer(sleep)
        assert not activity.claim_offer(signal)
        async with activity.running():
            pass
        assert not sleep.may_hibernate.is_set()
        assert not signal.may_hibernate.is_set()


async def test_two_signal_waits_offer_none() -> None:
    activity = Activity()
    a, b = Wait(CallKind.SIGNAL, deadline_ms=1_000), Wait(CallKind.SIGNAL, deadline_ms=2_000)
    with activity.waiting(a), activity.waiting(b):
        assert not activity.claim_offer(a)
        assert not activity.claim_offer(b)


async def test_sleep_without_deadline_next_to_another_offers_none() -> None:
    activity = Activity()
    a, b = Wait(CallKind.SLEEP, deadline_ms=None), Wait(CallKind.SLEEP, deadline_ms=1_000)
    with activity.waiting(a), activity.waiting(b):
        assert not activity.claim_offer(a)
        assert not activity.claim_offer(b)


async def test_waiting_unregisters_on_exit() -> None:
    activity = Activity()
    wait = Wait(CallKind.SLEEP, deadline_ms=1)
    with activity.waiting(wait):
        assert activity.waits == [wait]
    assert activity.waits == []
    assert not activity.claim_offer(wait)


async def test_idle_returns_at_once_when_nothing_runs() -> None:
    await asyncio.wait_for(Activity().idle(), 5)


async def test_idle_returns_only_when_no_step_runs() -> None:
    activity = Activity()
    first_done, second_done = asyncio.Event(), asyncio.Event()

    async def run_step(done: asyncio.Event) -> None:
        async with activity.running():
            await done.wait()

    steps = [asyncio.create_task(run_step(first_done)), asyncio.create_task(run_step(second_done))]
    await settle()
    assert activity.busy == 2
    idle = asyncio.create_task(activity.idle())
    await settle()
    assert not idle.done()
    first_done.set()
    await settle()
    assert activity.busy == 1
    assert not idle.done()
    second_done.set()
    await asyncio.wait_for(idle, 5)
    assert activity.busy == 0
    await asyncio.gather(*steps)


async def test_no_step_starts_during_a_hibernation_attempt() -> None:
    activity = Activity()
    started = asyncio.Event()

    async def run_step() -> None:
        async with activity.running():
            started.set()

    async with activity.hibernation_attempt():
        task = asyncio.create_task(run_step())
        await settle()
        assert not started.is_set()
        assert activity.busy == 0
    await asyncio.wait_for(task, 5)
    assert started.is_set()


async def test_idle_rechecks_when_a_step_starts_right_after_the_last_one_ended() -> None:
    """The idle event fired, but a new step began before the waiter ran: not idle yet."""
    activity = Activity()
    first = activity.running()
    await first.__aenter__()
    idle = asyncio.create_task(activity.idle())
    await settle()
    await first.__aexit__(None, None, None)  # no loop turn between these two
    second = activity.running()
    await second.__aenter__()
    await settle()
    assert not idle.done()
    await second.__aexit__(None, None, None)
    await asyncio.wait_for(idle, 5)
