"""Bad input is a BadRequest naming the field, the same on both backends, and stores nothing.

Without the boundary checks each of these reached the driver: PostgreSQL refused NUL and long
ids with its own errors where SQLite stored them, floats were rounded by one backend and refused
by the other, and an unknown event type was committed and then broke every listing.
"""

# mypy: disable-error-code="arg-type, list-item, dict-item"

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from runtara_core.errors import BadRequest
from runtara_core.persistence import (
    EventType,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    NewImage,
    NewInstance,
    Persistence,
    ProcessExit,
    SignalOutcome,
    SignalType,
    TerminationReason,
)
from runtara_core.persistence.rows import check_call
from tests.persistence.conftest import MakeInstance

RUNNING = InstanceStatus.RUNNING
IMAGE = "img-orders-1"  # the ``image`` fixture's

BadCall = Callable[[Persistence, str], Awaitable[object]]
"""Given the store and a running instance's id, makes one call with one bad value."""

BAD_CALLS: list[tuple[str, str, BadCall]] = [
    # ids and names: 1..255 bytes of UTF-8, no NUL
    ("nul-in-instance-id", "instance_id", lambda p, i: p.get_instance("a\x00b")),
    ("nul-in-checkpoint-id", "checkpoint_id", lambda p, i: p.get_checkpoint(i, "c\x00")),
    (
        "nul-in-saved-checkpoint-id",
        "checkpoint_id",
        lambda p, i: p.save_checkpoint_if_absent(i, "step\x001", b""),
    ),
    (
        "10k-checkpoint-id",
        "checkpoint_id",
        lambda p, i: p.save_checkpoint_if_absent(i, "c" * 10_000, b""),
    ),
    (
        "10k-instance-id",
        "instance_id",
        lambda p, i: p.create_instance(NewInstance("i" * 10_000, IMAGE)),
    ),
    (
        "10k-signal-name",
        "name",
        lambda p, i: p.enqueue_custom_signal(i, "n" * 10_000, b""),
    ),
    ("empty-signal-name", "name", lambda p, i: p.consume_custom_signal(i, "", "c")),
    ("lone-surrogate-id", "instance_id", lambda p, i: p.put_signal("\ud800", SignalType.CANCEL)),
    ("nul-in-tenant", "tenant", lambda p, i: p.list_images("ac\x00me")),
    (
        "empty-image-name",
        "name",
        lambda p, i: p.create_image(NewImage("img-2", "acme", "", "wf:main", "0", 1)),
    ),
    ("non-str-id", "instance_id", lambda p, i: p.touch_heartbeat(42)),
    # integers: int (not bool, not float) within int64
    (
        "float-priority",
        "priority",
        lambda p, i: p.create_instance(NewInstance("p", IMAGE, priority=1.5)),
    ),
    (
        "bool-priority",
        "priority",
        lambda p, i: p.create_instance(NewInstance("p", IMAGE, priority=True)),
    ),
    (
        "2**63-priority",
        "priority",
        lambda p, i: p.create_instance(NewInstance("p", IMAGE, priority=2**63)),
    ),
    (
        "2**63-max-attempts",
        "max_attempts",
        lambda p, i: p.create_instance(NewInstance("p", IMAGE, max_attempts=2**63)),
    ),
    (
        "float-timeout",
        "timeout_ms",
        lambda p, i: p.create_instance(NewInstance("p", IMAGE, timeout_ms=1.5)),
    ),
    ("2**63-after-id", "after_id", lambda p, i: p.list_events(i, after_id=2**63)),
    ("bool-limit", "limit", lambda p, i: p.list_events(i, limit=True)),
    ("float-now", "now_ms", lambda p, i: p.claim_due_wakeups(1.0)),
    (
        "float-wake-time",
        "wake_at_ms",
        lambda p, i: p.transition(
            i, [RUNNING], InstanceStatus.SUSPENDED, update=InstanceUpdate(wake_at_ms=1.5)
        ),
    ),
    (
        "2**64-peak-rss",
        "peak_rss_bytes",
        lambda p, i: p.record_exit_metrics(i, ProcessExit(0, peak_rss_bytes=2**64)),
    ),
    ("str-pid", "pid", lambda p, i: p.record_process(i, "42", 1.0)),
    # the launch fence: an attempt is an int >= 1
    (
        "float-attempt",
        "attempt",
        lambda p, i: p.save_checkpoint_if_absent(i, "c", b"", attempt=1.0),
    ),
    ("zero-attempt", "attempt", lambda p, i: p.touch_heartbeat(i, attempt=0)),
    (
        "bool-attempt",
        "attempt",
        lambda p, i: p.append_event(i, NewEvent(EventType.CUSTOM), attempt=True),
    ),
    ("str-attempt", "attempt", lambda p, i: p.consume_custom_signal(i, "n", "c", attempt="1")),
    (
        "zero-transition-attempt",
        "attempt",
        lambda p, i: p.transition(i, [RUNNING], RUNNING, attempt=0),
    ),
    (
        "none-hibernate-attempt",
        "attempt",
        lambda p, i: p.hibernate(
            i, attempt=None, reason=TerminationReason.SLEEPING, wake_at_ms=None
        ),
    ),
    # hibernation: sleeping, or waiting on a name
    (
        "hibernate-paused",
        "reason",
        lambda p, i: p.hibernate(i, attempt=1, reason=TerminationReason.PAUSED, wake_at_ms=None),
    ),
    (
        "hibernate-bogus-reason",
        "reason",
        lambda p, i: p.hibernate(i, attempt=1, reason="dozing", wake_at_ms=None),
    ),
    (
        "float-hibernate-wake",
        "wake_at_ms",
        lambda p, i: p.hibernate(
            i, attempt=1, reason=TerminationReason.SLEEPING, wake_at_ms=1.5
        ),
    ),
    (
        "waiting-without-name",
        "waiting_signal_name",
        lambda p, i: p.hibernate(i, attempt=1, reason=TerminationReason.WAITING, wake_at_ms=None),
    ),
    (
        "sleeping-with-name",
        "waiting_signal_name",
        lambda p, i: p.hibernate(
            i,
            attempt=1,
            reason=TerminationReason.SLEEPING,
            wake_at_ms=None,
            waiting_signal_name="x",
        ),
    ),
    (
        "empty-waiting-name",
        "waiting_signal_name",
        lambda p, i: p.hibernate(
            i, attempt=1, reason=TerminationReason.WAITING, wake_at_ms=None, waiting_signal_name=""
        ),
    ),
    # signal outcomes
    (
        "outcome-not-an-outcome",
        "outcome",
        lambda p, i: p.ack_signal(i, SignalType.PAUSE, outcome="paused"),
    ),
    (
        "outcome-unknown-status",
        "status",
        lambda p, i: p.ack_signal(
            i, SignalType.PAUSE, outcome=SignalOutcome("asleep", TerminationReason.PAUSED)
        ),
    ),
    # payloads, states and inputs: bytes
    ("none-payload", "payload", lambda p, i: p.enqueue_custom_signal(i, "n", None)),
    ("none-signal-payload", "payload", lambda p, i: p.put_signal(i, SignalType.PAUSE, None)),
    ("str-state", "state", lambda p, i: p.save_checkpoint_if_absent(i, "c", "text")),
    ("none-state", "state", lambda p, i: p.save_checkpoint_if_absent(i, "c", None)),
    (
        "str-input",
        "input",
        lambda p, i: p.create_instance(NewInstance("p", IMAGE, input="text")),
    ),
    # enums and free text
    ("unknown-event-type", "type", lambda p, i: p.append_event(i, NewEvent("bogus"))),
    ("unknown-signal-type", "signal_type", lambda p, i: p.put_signal(i, "bogus")),
    ("unknown-status", "new", lambda p, i: p.transition(i, [RUNNING], "nope")),
    ("unknown-expected", "expected", lambda p, i: p.transition(i, ["nope"], RUNNING)),
    (
        "nul-in-error",
        "error",
        lambda p, i: p.transition(i, [RUNNING], RUNNING, update=InstanceUpdate(error="a\x00")),
    ),
    (
        "non-str-env",
        "env",
        lambda p, i: p.create_instance(NewInstance("p", IMAGE, env={"A": 1})),
    ),
    (
        "event-payload-str",
        "payload",
        lambda p, i: p.append_event(i, NewEvent(EventType.CUSTOM, payload="x")),
    ),
]


@pytest.mark.parametrize(
    ("field", "call"), [pytest.param(field, call, id=name) for name, field, call in BAD_CALLS]
)
async def test_bad_input_is_a_bad_request_naming_the_field(
    persistence: Persistence, make_instance: MakeInstance, field: str, call: BadCall
) -> None:
    row = await make_instance(status=RUNNING)

    with pytest.raises(BadRequest, match=rf"^BAD_REQUEST: {field}\b"):
        await call(persistence, row.instance_id)

    assert await persistence.get_instance(row.instance_id) == row
    assert await persistence.list_events(row.instance_id) == []
    assert (await persistence.list_checkpoints(row.instance_id)).total == 0
    assert await persistence.list_custom_signals(row.instance_id) == []
    assert await persistence.get_instance("p") is None


async def test_ids_up_to_255_bytes_of_any_script_are_accepted(
    persistence: Persistence, make_instance: MakeInstance
) -> None:
    row = await make_instance("инстанс-😀")
    longest = "é" * 127 + "x"  # 255 bytes

    saved = await persistence.save_checkpoint_if_absent(row.instance_id, longest, b"")

    assert saved.saved
    assert await persistence.get_checkpoint(row.instance_id, longest) is not None
    with pytest.raises(BadRequest, match="256"):
        await persistence.get_checkpoint(row.instance_id, longest + "x")


class Unchecked:
    """A type the boundary has no check for."""


def test_a_parameter_without_a_check_is_refused_when_the_class_is_defined() -> None:
    async def method(self: object, thing: Unchecked) -> None: ...

    with pytest.raises(TypeError, match="thing"):
        check_call(method)
