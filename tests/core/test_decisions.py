"""The pure rules of the instance protocol."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from runtara_core.instance_protocol.decisions import (
    ENTRY_OVERHEAD_BYTES,
    RESPONSE_SLACK_BYTES,
    SleepRecord,
    history_state_budget,
    register_history,
    should_hibernate,
)
from runtara_core.persistence.rows import ReplayEntry
from runtara_core.persistence.signal_channel import decode_notification, encode_notification
from runtara_core.signal_notifier import SignalStored


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=200))
def test_sleep_records_round_trip(wake_at: int, state: bytes) -> None:
    record = SleepRecord(wake_at, state)
    assert SleepRecord.decode(record.encode()) == record


@given(st.binary(max_size=300))
def test_decoding_any_state_never_raises(data: bytes) -> None:
    assert SleepRecord.decode(data) is None or isinstance(SleepRecord.decode(data), SleepRecord)


def test_lookalikes_are_not_sleep_records() -> None:
    assert SleepRecord.decode(msgpack.packb({"wake_at_ms": 5})) is None
    assert SleepRecord.decode(msgpack.packb({"runtara_sleep": 1, "wake_at_ms": "soon"})) is None
    assert SleepRecord.decode(msgpack.packb({"runtara_sleep": 1, "wake_at_ms": True})) is None
    assert SleepRecord.decode(b"") is None


def test_hibernation_is_for_waits_longer_than_the_threshold() -> None:
    assert not should_hibernate(5000, 5000)
    assert should_hibernate(5001, 5000)
    assert not should_hibernate(-10, 5000)  # already due
    assert should_hibernate(None, 5000)  # waits with no end always hibernate
    assert should_hibernate(1, 0)


def test_history_budget_leaves_room_for_ids_and_input() -> None:
    frame = 16 * 1024 * 1024
    assert history_state_budget(frame, 0, 4096) == 4096
    assert history_state_budget(frame, 0, 10**9) == (frame - RESPONSE_SLACK_BYTES) // 2
    assert history_state_budget(frame, frame, 4096) == 0


def test_register_history_keeps_a_prefix_that_fits() -> None:
    entries = [ReplayEntry(f"step-{n}", b"x" * 100 if n < 3 else None) for n in range(10)]
    history, complete = register_history(entries, 10**6, 0)
    assert complete and [h.checkpoint_id for h in history] == [e.checkpoint_id for e in entries]
    assert [h.state for h in history] == [e.state for e in entries]
    room = RESPONSE_SLACK_BYTES + 3 * (len("step-0") + ENTRY_OVERHEAD_BYTES + 100) + 2 * (len("step-3") + ENTRY_OVERHEAD_BYTES)
    history, complete = register_history(entries, room, 0)
    assert not complete and len(history) == 5
    history, complete = register_history(entries, room + 1000, 1000)  # the input takes its share
    assert not complete and len(history) == 5


@given(st.text(min_size=1, max_size=50), st.sampled_from(["signal", "custom"]), st.none() | st.text(max_size=50))
def test_notifications_round_trip(instance_id: str, kind: str, name: str | None) -> None:
    event = SignalStored(instance_id, kind, name)  # type: ignore[arg-type]
    assert decode_notification(encode_notification(event)) == event


def test_foreign_notifications_are_ignored() -> None:
    for payload in ("", "hello", "[]", '{"i": 1, "k": "signal"}', '{"i": "x", "k": "other"}', '{"i": "x", "k": "custom", "n": 5}'):
        assert decode_notification(payload) is None


def test_long_schema_names_get_distinct_channels() -> None:
    from runtara_core.persistence.signal_channel import channel_name

    a, b = "tenant_" + "x" * 60 + "_a", "tenant_" + "x" * 60 + "_b"
    assert channel_name(a) != channel_name(b)
    assert len(channel_name(a)) <= 63 and channel_name(None) == "runtara_signals"
    assert channel_name("short") == "runtara_signals_short"


@given(st.lists(st.tuples(st.text(min_size=1, max_size=80), st.none() | st.binary(max_size=300)), max_size=60))
def test_a_history_that_fits_the_budget_really_fits(entries: list[tuple[str, bytes | None]]) -> None:
    """The size estimate is an upper bound on the real msgpack encoding."""
    import msgpack

    replay = [ReplayEntry(cid, state) for cid, state in entries]
    frame = RESPONSE_SLACK_BYTES + 4000
    history, _ = register_history(replay, frame, 0)
    encoded = msgpack.packb([h.to_wire() for h in history])
    assert len(encoded) <= 4000 + 5
