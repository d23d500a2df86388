"""Instances: idempotent creation, listing, compare-and-set transitions, liveness and metrics."""

from __future__ import annotations

import asyncio

import pytest

from runtara_core.errors import BadRequest, Conflict, InvalidState, NotFound
from runtara_core.persistence import (
    UNSET,
    EventType,
    ImageRow,
    InstanceFilter,
    InstanceOrder,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    NewInstance,
    Persistence,
    ProcessExit,
    TerminationReason,
)
from tests.conftest import Backend, FakeClock
from tests.persistence.conftest import (
    IN_FLIGHT_S,
    MakeInstance,
    new_image,
    other_transaction,
    run_into,
)

RUNNING = InstanceStatus.RUNNING
SUSPENDED = InstanceStatus.SUSPENDED
PENDING = InstanceStatus.PENDING


# --------------------------------------------------------------------------- creation


async def test_create_copies_image_and_starts_pending(
    persistence: Persistence, image: ImageRow, clock: FakeClock
) -> None:
    new = NewInstance(
        "i-1",
        image.image_id,
        input=b"\x81\xa1a\x01",
        max_attempts=5,
        timeout_ms=60_000,
        priority=7,
        env={"REGION": "eu", "ÜNICODE": "✓"},
        node_id="node-a",
    )
    row, created = await persistence.create_instance(new)

    assert created
    assert (row.instance_id, row.tenant, row.image_id) == ("i-1", image.tenant, image.image_id)
    assert (row.image_name, row.image_version) == (image.name, image.version)
    assert row.status is PENDING and row.termination_reason is None
    assert (row.attempt, row.max_attempts, row.timeout_ms, row.priority) == (1, 5, 60_000, 7)
    assert row.input == b"\x81\xa1a\x01" and row.output is None and row.error is None
    assert row.env == {"REGION": "eu", "ÜNICODE": "✓"} and row.node_id == "node-a"
    assert row.created_at_ms == row.updated_at_ms == clock()
    assert row.started_at_ms is row.finished_at_ms is row.wake_at_ms is row.heartbeat_at_ms is None
    assert await persistence.get_instance("i-1") == row


async def test_create_is_idempotent_on_instance_id(
    persistence: Persistence, image: ImageRow, clock: FakeClock
) -> None:
    first, created = await persistence.create_instance(NewInstance("i-1", image.image_id, b"one"))
    clock.advance(1000)
    again, created_again = await persistence.create_instance(
        NewInstance("i-1", image.image_id, b"two", priority=9)
    )

    assert created and not created_again
    assert again == first
    page = await persistence.list_instances(InstanceFilter())
    assert page.total == 1


async def test_concurrent_creates_of_one_id_make_one_instance(
    persistence: Persistence, image: ImageRow
) -> None:
    results = await asyncio.gather(
        *(
            persistence.create_instance(NewInstance("dup", image.image_id, bytes([n])))
            for n in range(20)
        )
    )

    assert sum(created for _, created in results) == 1
    stored = await persistence.get_instance("dup")
    assert all(row == stored for row, _ in results)
    assert (await persistence.list_instances(InstanceFilter())).total == 1


async def test_create_with_unknown_image_is_not_found(persistence: Persistence) -> None:
    with pytest.raises(NotFound, match="image"):
        await persistence.create_instance(NewInstance("i-1", "no-such-image"))
    assert await persistence.get_instance("i-1") is None


async def test_start_racing_the_deletion_of_its_image_is_not_found(
    backend: Backend, persistence: Persistence
) -> None:
    """The start reads the image before the delete commits and checks its foreign key after."""
    doomed = await persistence.create_image(new_image("img-doomed"))

    async with other_transaction(backend) as deletion:
        await deletion.execute(f"DELETE FROM images WHERE image_id = '{doomed.image_id}'")
        (outcome,) = await run_into(
            deletion,
            asyncio.gather(
                persistence.create_instance(NewInstance("i-1", doomed.image_id)),
                return_exceptions=True,
            ),
        )

    assert isinstance(outcome[0], NotFound) and doomed.image_id in outcome[0].message
    with pytest.raises(NotFound, match=doomed.image_id):
        await persistence.create_instance(NewInstance("i-2", doomed.image_id))
    assert await persistence.get_instance("i-1") is None


async def test_start_of_a_finished_instance_whose_image_was_deleted_returns_it(
    persistence: Persistence, make_instance: MakeInstance, image: ImageRow
) -> None:
    row = await make_instance("done", status=InstanceStatus.COMPLETED)
    await persistence.delete_image(image.image_id)

    again, created = await persistence.create_instance(NewInstance("done", image.image_id))

    assert not created
    assert again == await persistence.get_instance("done")
    assert again.image_id is None and again.status is row.status


async def test_create_with_an_id_of_another_tenant_conflicts(
    persistence: Persistence, image: ImageRow
) -> None:
    other = await persistence.create_image(new_image("img-other", tenant="globex"))
    await persistence.create_instance(NewInstance("shared-id", image.image_id))

    with pytest.raises(Conflict):
        await persistence.create_instance(NewInstance("shared-id", other.image_id))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"instance_id": "", "image_id": "img"},
        {"instance_id": "i", "image_id": ""},
        {"instance_id": "i", "image_id": "img", "max_attempts": 0},
        {"instance_id": "i", "image_id": "img", "timeout_ms": 0},
    ],
)
def test_new_instance_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(BadRequest):
        NewInstance(**kwargs)  # type: ignore[arg-type]


async def test_get_unknown_instance_is_none(persistence: Persistence) -> None:
    assert await persistence.get_instance("missing") is None


async def test_get_instance_statuses_of_many_ids(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    """The run-directory retention asks for many ids at once: known ones come back (once each,
    finish time and node included), unknown ones are left out, more ids than one SQL statement
    takes still work."""
    running = await make_instance("s-running", status=RUNNING, node_id="node-a")
    clock.advance(5)
    done = await make_instance("s-done", status=InstanceStatus.COMPLETED, reason=TerminationReason.COMPLETED)
    assert done.finished_at_ms is not None
    many = [f"nope-{i}" for i in range(1200)]
    found = await persistence.get_instance_statuses(["s-running", "s-done", "s-done", "missing", *many])
    by_id = {row.instance_id: row for row in found}
    assert len(found) == 2 and set(by_id) == {"s-running", "s-done"}
    assert (by_id["s-running"].status, by_id["s-running"].finished_at_ms) == (RUNNING, None)
    assert by_id["s-running"].node_id == running.node_id == "node-a" and not by_id["s-running"].is_terminal
    assert by_id["s-done"].status is InstanceStatus.COMPLETED and by_id["s-done"].is_terminal
    assert by_id["s-done"].finished_at_ms == done.finished_at_ms
    assert await persistence.get_instance_statuses([]) == []
    with pytest.raises(BadRequest):
        await persistence.get_instance_statuses(["ok", "bad\x00id"])
    with pytest.raises(BadRequest):
        await persistence.get_instance_statuses("s-done")  # type: ignore[arg-type]  # a str is not a list of ids


# --------------------------------------------------------------------------- listing


async def test_list_filters_orders_and_paginates(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    other_tenant = await persistence.create_image(new_image("img-g", tenant="globex"))
    second_name = await persistence.create_image(new_image("img-b", name="billing"))
    a = await make_instance("a", priority=1, node_id="node-1")
    clock.advance(10)
    b = await make_instance("b", status=RUNNING, priority=5, node_id="node-2")
    clock.advance(10)
    c = await make_instance("c", image_id=second_name.image_id, priority=5)
    clock.advance(10)
    d = await make_instance("d", image_id=other_tenant.image_id)
    clock.advance(10)
    done = await persistence.transition("b", [RUNNING], InstanceStatus.COMPLETED)

    async def ids(**kwargs: object) -> list[str]:
        page = await persistence.list_instances(InstanceFilter(**kwargs))  # type: ignore[arg-type]
        return [row.instance_id for row in page.items]

    assert await ids() == ["d", "c", "b", "a"]
    assert await ids(order=InstanceOrder.CREATED_ASC) == ["a", "b", "c", "d"]
    assert await ids(order=InstanceOrder.PRIORITY) == ["b", "c", "a", "d"]
    assert await ids(tenant="acme", order=InstanceOrder.CREATED_ASC) == ["a", "b", "c"]
    assert await ids(statuses=frozenset({PENDING})) == ["d", "c", "a"]
    assert await ids(statuses=frozenset({InstanceStatus.COMPLETED, RUNNING})) == ["b"]
    assert await ids(image_id=second_name.image_id) == ["c"]
    assert await ids(image_name="orders", tenant="acme") == ["b", "a"]
    assert await ids(node_id="node-1") == ["d", "c", "a"]  # its own, and nobody's
    assert await ids(created_from_ms=b.created_at_ms, created_to_ms=d.created_at_ms) == ["c", "b"]
    assert done.finished_at_ms is not None
    assert await ids(finished_from_ms=done.finished_at_ms) == ["b"]
    assert await ids(finished_to_ms=done.finished_at_ms) == []
    clock.advance(10)
    await persistence.transition("a", [PENDING], InstanceStatus.CANCELLED)
    # By finish time, unfinished last in both directions (ties by id).
    assert await ids(order=InstanceOrder.FINISHED_ASC) == ["b", "a", "c", "d"]
    assert await ids(order=InstanceOrder.FINISHED_DESC) == ["a", "b", "d", "c"]

    page = await persistence.list_instances(
        InstanceFilter(order=InstanceOrder.CREATED_ASC, limit=2, offset=1)
    )
    assert [r.instance_id for r in page.items] == ["b", "c"] and page.total == 4
    beyond = await persistence.list_instances(InstanceFilter(limit=2, offset=10))
    assert beyond.items == () and beyond.total == 4
    assert a.instance_id == "a" and c.tenant == "acme" and d.tenant == "globex"


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 10_001}, {"offset": -1}])
def test_instance_filter_rejects_bad_pages(kwargs: dict[str, int]) -> None:
    with pytest.raises(BadRequest):
        InstanceFilter(**kwargs)


async def test_count_by_status(persistence: Persistence, make_instance: MakeInstance) -> None:
    other = await persistence.create_image(new_image("img-g", tenant="globex"))
    await make_instance()
    await make_instance()
    await make_instance(status=RUNNING)
    await make_instance(image_id=other.image_id, status=InstanceStatus.FAILED)

    counts = await persistence.count_by_status()
    assert counts == {
        PENDING: 2,
        RUNNING: 1,
        SUSPENDED: 0,
        InstanceStatus.COMPLETED: 0,
        InstanceStatus.FAILED: 1,
        InstanceStatus.CANCELLED: 0,
    }
    acme = await persistence.count_by_status("acme")
    assert acme[InstanceStatus.FAILED] == 0 and acme[PENDING] == 2
    assert sum((await persistence.count_by_status("nobody")).values()) == 0


# --------------------------------------------------------------------------- transitions


async def test_transition_sets_status_reason_fields_and_event(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING, update=InstanceUpdate(started_at_ms=clock()))
    clock.advance(500)

    done = await persistence.transition(
        row.instance_id,
        [RUNNING],
        InstanceStatus.COMPLETED,
        reason=TerminationReason.COMPLETED,
        update=InstanceUpdate(output=b"result"),
        event=NewEvent(EventType.COMPLETED, payload=b"result"),
    )

    assert done.status is InstanceStatus.COMPLETED
    assert done.termination_reason is TerminationReason.COMPLETED
    assert done.output == b"result" and done.started_at_ms == row.started_at_ms
    assert done.finished_at_ms == done.updated_at_ms == clock()
    assert await persistence.get_instance(row.instance_id) == done
    events = await persistence.list_events(row.instance_id)
    assert [(e.type, e.payload, e.created_at_ms) for e in events] == [
        (EventType.COMPLETED, b"result", clock())
    ]


async def test_transition_unset_leaves_columns_and_none_clears_them(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(
        status=RUNNING, update=InstanceUpdate(error="boom", output=b"x", attempt=2, pid=42)
    )
    assert (row.error, row.output, row.attempt, row.pid) == ("boom", b"x", 2, 42)

    row = await persistence.transition(
        row.instance_id, [RUNNING], RUNNING, update=InstanceUpdate(error=None, output=UNSET)
    )
    assert (row.error, row.output, row.attempt, row.pid) == (None, b"x", 2, 42)


async def test_hibernation_fields_live_only_while_suspended(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    asleep = await persistence.transition(
        row.instance_id,
        [RUNNING],
        SUSPENDED,
        reason=TerminationReason.WAITING,
        update=InstanceUpdate(wake_at_ms=clock() + 60_000, waiting_signal_name="approval"),
    )
    assert (asleep.wake_at_ms, asleep.waiting_signal_name) == (clock() + 60_000, "approval")
    assert asleep.finished_at_ms is None

    awake = await persistence.transition(row.instance_id, [SUSPENDED], PENDING)
    assert awake.termination_reason is None
    assert awake.wake_at_ms is None and awake.waiting_signal_name is None


async def test_transition_of_unknown_instance_is_not_found(persistence: Persistence) -> None:
    with pytest.raises(NotFound):
        await persistence.transition("missing", [PENDING], RUNNING)


async def test_transition_from_unexpected_status_names_both(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=InstanceStatus.CANCELLED)

    with pytest.raises(InvalidState) as caught:
        await persistence.transition(
            row.instance_id,
            [RUNNING, SUSPENDED],
            InstanceStatus.COMPLETED,
            event=NewEvent(EventType.COMPLETED),
        )
    assert "cancelled" in caught.value.message
    assert "running or suspended" in caught.value.message
    assert (await persistence.get_instance(row.instance_id)) == row
    assert await persistence.list_events(row.instance_id) == []


async def test_transition_needs_an_expected_status(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance()
    with pytest.raises(BadRequest):
        await persistence.transition(row.instance_id, [], RUNNING)


async def test_concurrent_transitions_have_exactly_one_winner(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)

    async def attempt(n: int) -> InstanceStatus | InvalidState:
        new = InstanceStatus.COMPLETED if n % 2 else InstanceStatus.CANCELLED
        try:
            won = await persistence.transition(
                row.instance_id, [RUNNING], new, event=NewEvent(EventType.CUSTOM, subtype=str(n))
            )
        except InvalidState as exc:
            return exc
        return won.status

    outcomes = await asyncio.gather(*(attempt(n) for n in range(20)))

    winners = [o for o in outcomes if isinstance(o, InstanceStatus)]
    assert len(winners) == 1
    assert sum(isinstance(o, InvalidState) for o in outcomes) == 19
    final = await persistence.get_instance(row.instance_id)
    assert final is not None and final.status is winners[0]
    assert len(await persistence.list_events(row.instance_id)) == 1


# --------------------------------------------------------------------------- liveness, metrics


async def test_touch_heartbeat_updates_only_liveness(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance(status=RUNNING)
    clock.advance(2500)

    await persistence.touch_heartbeat(row.instance_id)

    after = await persistence.get_instance(row.instance_id)
    assert after is not None and after.heartbeat_at_ms == clock()
    assert after.updated_at_ms == row.updated_at_ms
    assert await persistence.list_events(row.instance_id) == []
    with pytest.raises(NotFound):
        await persistence.touch_heartbeat("missing")


async def test_record_process_and_exit_metrics(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)

    await persistence.record_process(row.instance_id, 4242, 1_700_000_000.37)
    await persistence.record_exit_metrics(
        row.instance_id,
        ProcessExit(
            exit_code=None,
            exit_signal=9,
            peak_rss_bytes=50 << 20,
            cpu_time_ms=1234,
            stderr_tail="Traceback ...\nKeyError: 'x'",
        ),
    )

    after = await persistence.get_instance(row.instance_id)
    assert after is not None
    assert (after.pid, after.pid_create_time) == (4242, 1_700_000_000.37)
    assert (after.exit_code, after.exit_signal) == (None, 9)
    assert (after.peak_rss_bytes, after.cpu_time_ms) == (50 << 20, 1234)
    assert after.stderr_tail == "Traceback ...\nKeyError: 'x'"
    with pytest.raises(NotFound):
        await persistence.record_process("missing", 1, 1.0)
    with pytest.raises(NotFound):
        await persistence.record_exit_metrics("missing", ProcessExit(exit_code=0))


async def test_exit_metrics_accumulate_over_launches(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    """Peak RSS is the largest launch's, CPU and run time add up, the exit is the latest's."""
    row = await make_instance(status=RUNNING)
    assert (row.run_time_ms, row.cpu_time_ms, row.peak_rss_bytes) == (0, None, None)

    await persistence.record_exit_metrics(
        row.instance_id,
        ProcessExit(
            exit_code=None,
            exit_signal=9,
            peak_rss_bytes=80 << 20,
            cpu_time_ms=1_000,
            stderr_tail="killed",
            run_time_ms=5_000,
        ),
    )
    await persistence.record_exit_metrics(
        row.instance_id,
        ProcessExit(
            exit_code=0, peak_rss_bytes=30 << 20, cpu_time_ms=250, run_time_ms=1_500
        ),
    )

    after = await persistence.get_instance(row.instance_id)
    assert after is not None
    assert after.peak_rss_bytes == 80 << 20
    assert (after.cpu_time_ms, after.run_time_ms) == (1_250, 6_500)
    assert (after.exit_code, after.exit_signal, after.stderr_tail) == (0, None, None)

    await persistence.record_exit_metrics(
        row.instance_id, ProcessExit(exit_code=1, peak_rss_bytes=100 << 20)
    )
    bigger = await persistence.get_instance(row.instance_id)
    assert bigger is not None and bigger.peak_rss_bytes == 100 << 20


async def test_unmeasured_exit_metrics_leave_the_stored_values_alone(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)

    await persistence.record_exit_metrics(row.instance_id, ProcessExit(exit_code=3))
    nothing = await persistence.get_instance(row.instance_id)
    assert nothing is not None
    assert (nothing.peak_rss_bytes, nothing.cpu_time_ms, nothing.run_time_ms) == (None, None, 0)
    assert nothing.exit_code == 3

    await persistence.record_exit_metrics(
        row.instance_id,
        ProcessExit(exit_code=0, peak_rss_bytes=1 << 20, cpu_time_ms=40, run_time_ms=700),
    )
    await persistence.record_exit_metrics(
        row.instance_id, ProcessExit(exit_code=None, exit_signal=15, stderr_tail="bye")
    )

    after = await persistence.get_instance(row.instance_id)
    assert after is not None
    assert (after.peak_rss_bytes, after.cpu_time_ms, after.run_time_ms) == (1 << 20, 40, 700)
    assert (after.exit_code, after.exit_signal, after.stderr_tail) == (None, 15, "bye")


async def test_concurrent_exit_metrics_all_count(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)

    await asyncio.gather(
        *(
            persistence.record_exit_metrics(
                row.instance_id,
                ProcessExit(exit_code=0, peak_rss_bytes=n, cpu_time_ms=n, run_time_ms=n),
            )
            for n in range(1, 21)
        )
    )

    after = await persistence.get_instance(row.instance_id)
    assert after is not None
    assert (after.peak_rss_bytes, after.cpu_time_ms, after.run_time_ms) == (20, 210, 210)


def test_process_exit_refuses_negative_measurements() -> None:
    for name in ("peak_rss_bytes", "cpu_time_ms", "run_time_ms"):
        with pytest.raises(BadRequest, match=name):
            ProcessExit(exit_code=0, **{name: -1})  # type: ignore[arg-type]


async def test_find_stale_running(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    start = clock()
    silent = await make_instance("silent", status=RUNNING)
    beating = await make_instance("beating", status=RUNNING)
    started = await make_instance(
        "started-late", status=RUNNING, update=InstanceUpdate(started_at_ms=start + 5_000)
    )
    await make_instance("pending-old")
    clock.advance(10_000)
    await persistence.touch_heartbeat(beating.instance_id)

    stale = await persistence.find_stale_running(heartbeat_before_ms=start + 1)
    assert [r.instance_id for r in stale] == [silent.instance_id]
    stale = await persistence.find_stale_running(heartbeat_before_ms=start + 6_000)
    assert [r.instance_id for r in stale] == [silent.instance_id, started.instance_id]
    assert len(await persistence.find_stale_running(clock() + 1, limit=2)) == 2


# --------------------------------------------------------------------------- events


async def test_events_append_and_page_by_cursor(
    persistence: Persistence, make_instance: MakeInstance, clock: FakeClock
) -> None:
    row = await make_instance()
    other = await make_instance()
    appended = []
    for n in range(5):
        clock.advance(1)
        appended.append(
            await persistence.append_event(
                row.instance_id, NewEvent(EventType.CUSTOM, subtype=f"step-{n}", payload=bytes([n]))
            )
        )
    await persistence.append_event(other.instance_id, NewEvent(EventType.HEARTBEAT))

    assert [e.subtype for e in appended] == [f"step-{n}" for n in range(5)]
    assert appended[0].created_at_ms + 4 == appended[4].created_at_ms
    first = await persistence.list_events(row.instance_id, limit=2)
    rest = await persistence.list_events(row.instance_id, after_id=first[-1].id)
    assert first + rest == appended
    assert await persistence.list_events(row.instance_id, after_id=appended[-1].id) == []
    assert await persistence.count_events(row.instance_id) == 5
    assert await persistence.count_events(row.instance_id, after_id=first[-1].id) == 3
    assert await persistence.count_events("missing") == 0
    with pytest.raises(NotFound):
        await persistence.append_event("missing", NewEvent(EventType.CUSTOM))
    with pytest.raises(BadRequest):
        await persistence.list_events(row.instance_id, limit=0)


async def test_event_cursor_misses_no_event_of_a_writer_in_flight(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance
) -> None:
    """A watcher polls while an earlier event is still uncommitted and a later one is appended.

    If the later one could commit first, the watcher would move its cursor past the earlier one
    and never see it. The other transaction holds the instance row as a writer of events does
    (append_event, transition); SQLite holds its one write lock anyway. The watcher has a
    connection of its own, as it would in another process.
    """
    row = await make_instance()
    watcher = await backend.open()

    async with other_transaction(backend) as earlier:
        if earlier.postgres:
            await earlier.execute(
                f"SELECT 1 FROM instances WHERE instance_id = '{row.instance_id}' FOR NO KEY UPDATE"
            )
        await earlier.execute(
            "INSERT INTO events (instance_id, type, subtype, created_at_ms) "
            f"VALUES ('{row.instance_id}', 'custom', 'earlier', 0)"
        )
        later = asyncio.ensure_future(
            persistence.append_event(row.instance_id, NewEvent(EventType.CUSTOM, subtype="later"))
        )
        await asyncio.sleep(IN_FLIGHT_S)
        seen = await watcher.list_events(row.instance_id)
        await earlier.commit()
    await later
    seen += await watcher.list_events(row.instance_id, after_id=seen[-1].id if seen else 0)

    assert [e.subtype for e in seen] == ["earlier", "later"]


async def test_a_watcher_polling_by_cursor_sees_every_event_once(
    backend: Backend, persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance(status=RUNNING)
    writer_store = await backend.open()
    writing = True
    seen: list[int] = []

    async def watch() -> None:
        cursor = 0
        while writing:
            for event in await persistence.list_events(row.instance_id, after_id=cursor):
                seen.append(event.id)
                cursor = event.id
            await asyncio.sleep(0)
        seen.extend(e.id for e in await persistence.list_events(row.instance_id, after_id=cursor))

    async def write(writer: int) -> None:
        for n in range(25):
            await writer_store.append_event(
                row.instance_id, NewEvent(EventType.CUSTOM, subtype=f"{writer}-{n}")
            )

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(write(w) for w in range(12)))
    writing = False
    await watcher

    stored = [e.id for e in await persistence.list_events(row.instance_id, limit=1000)]
    assert len(stored) == 300
    assert seen == stored
