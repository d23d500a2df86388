"""Checkpoints: atomic save-if-absent, liveness, listing, and the replay history budget."""

from __future__ import annotations

import asyncio

import pytest

from runtara_core.errors import BadRequest, NotFound
from runtara_core.persistence import InstanceStatus, Persistence, ReplayEntry, SignalType
from tests.conftest import Backend, FakeClock
from tests.persistence.conftest import MakeInstance

RUNNING = InstanceStatus.RUNNING


async def test_save_if_absent_keeps_the_first_state(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)

    first = await persistence.save_checkpoint_if_absent(row.instance_id, "step-1", b"first")
    clock.advance(100)
    second = await persistence.save_checkpoint_if_absent(row.instance_id, "step-1", b"second")

    assert (first.saved, first.state) == (True, b"first")
    assert (second.saved, second.state) == (False, b"first")
    stored = await persistence.get_checkpoint(row.instance_id, "step-1")
    assert stored is not None
    assert (stored.state, stored.size_bytes, stored.created_at_ms) == (b"first", 5, clock() - 100)


async def test_save_counts_as_liveness_and_moves_the_latest_pointer_only_when_saved(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    await persistence.save_checkpoint_if_absent(row.instance_id, "a", b"1")
    await persistence.save_checkpoint_if_absent(row.instance_id, "b", b"2")
    clock.advance(7_000)

    await persistence.save_checkpoint_if_absent(row.instance_id, "a", b"replayed")

    after = await persistence.get_instance(row.instance_id)
    assert after is not None
    assert after.heartbeat_at_ms == clock()
    assert after.checkpoint_id == "b"
    assert after.updated_at_ms == row.updated_at_ms


async def test_save_returns_the_pending_signal(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    quiet = await persistence.save_checkpoint_if_absent(row.instance_id, "a", b"1")
    await persistence.put_signal(row.instance_id, SignalType.PAUSE, b"maintenance")

    signalled = await persistence.save_checkpoint_if_absent(row.instance_id, "b", b"2")

    assert quiet.pending_signal is None
    assert signalled.pending_signal is not None
    assert signalled.pending_signal.signal_type is SignalType.PAUSE
    assert signalled.pending_signal.payload == b"maintenance"


async def test_save_for_unknown_instance_is_not_found(persistence: Persistence) -> None:
    with pytest.raises(NotFound):
        await persistence.save_checkpoint_if_absent("missing", "a", b"1")
    assert await persistence.get_checkpoint("missing", "a") is None


async def test_save_rejects_an_empty_checkpoint_id(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance()
    with pytest.raises(BadRequest):
        await persistence.save_checkpoint_if_absent(row.instance_id, "", b"1")


async def test_concurrent_writers_agree_on_one_state(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)

    results = await asyncio.gather(
        *(
            persistence.save_checkpoint_if_absent(row.instance_id, "race", f"writer-{n}".encode())
            for n in range(20)
        )
    )

    assert sum(r.saved for r in results) == 1
    winner = next(r.state for r in results if r.saved)
    assert {r.state for r in results} == {winner}
    stored = await persistence.get_checkpoint(row.instance_id, "race")
    assert stored is not None and stored.state == winner


async def test_writers_on_two_connections_agree_on_one_state(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    other = await backend.open()
    await other.get_checkpoint(row.instance_id, "warm-up")  # connected before the race starts

    for step in range(5):
        results = await asyncio.gather(
            *(
                store.save_checkpoint_if_absent(row.instance_id, f"race-{step}", bytes([n]))
                for n, store in enumerate([persistence, other] * 5)
            )
        )

        assert sum(r.saved for r in results) == 1
        assert len({r.state for r in results}) == 1


async def test_checkpoint_ids_are_per_instance(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    a = await make_instance(status=RUNNING)
    b = await make_instance(status=RUNNING)

    saved_a = await persistence.save_checkpoint_if_absent(a.instance_id, "step", b"a")
    saved_b = await persistence.save_checkpoint_if_absent(b.instance_id, "step", b"b")

    assert saved_a.saved and saved_b.saved
    got = await persistence.get_checkpoint(b.instance_id, "step")
    assert got is not None and got.state == b"b"


async def test_list_checkpoints_in_save_order_with_pages(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    names = ["z-first", "a-second", "m-third", "b-fourth"]
    for n, name in enumerate(names):
        await persistence.save_checkpoint_if_absent(row.instance_id, name, bytes(n + 1))

    everything = await persistence.list_checkpoints(row.instance_id)
    assert [c.checkpoint_id for c in everything.items] == names and everything.total == 4
    assert [c.size_bytes for c in everything.items] == [1, 2, 3, 4]
    assert all(c.state is None for c in everything.items)
    assert [c.seq for c in everything.items] == sorted(c.seq for c in everything.items)

    page = await persistence.list_checkpoints(row.instance_id, limit=2, offset=1, with_state=True)
    assert [(c.checkpoint_id, c.state) for c in page.items] == [
        ("a-second", bytes(2)),
        ("m-third", bytes(3)),
    ]
    assert page.total == 4
    empty = await persistence.list_checkpoints("missing")
    assert empty.items == () and empty.total == 0
    with pytest.raises(BadRequest):
        await persistence.list_checkpoints(row.instance_id, offset=-1)


async def test_replay_history_includes_states_within_the_budget(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    for n, size in enumerate([10, 20, 30, 5]):
        await persistence.save_checkpoint_if_absent(row.instance_id, f"s{n}", b"x" * size)

    def shape(entries: list[ReplayEntry]) -> list[tuple[str, int | None]]:
        return [(e.checkpoint_id, None if e.state is None else len(e.state)) for e in entries]

    assert shape(await persistence.replay_history(row.instance_id, 1_000)) == [
        ("s0", 10),
        ("s1", 20),
        ("s2", 30),
        ("s3", 5),
    ]
    # 10 + 20 fit in 35; 30 does not, and nothing after the first miss is sent.
    assert shape(await persistence.replay_history(row.instance_id, 35)) == [
        ("s0", 10),
        ("s1", 20),
        ("s2", None),
        ("s3", None),
    ]
    assert shape(await persistence.replay_history(row.instance_id, 0)) == [
        ("s0", None),
        ("s1", None),
        ("s2", None),
        ("s3", None),
    ]
    assert await persistence.replay_history("missing", 1_000) == []
