"""What core asked of the launch (cancel, pause) and which custom signals arrived."""

from __future__ import annotations

from runtara_core.wire.messages import CustomSignalPush, PendingSignal, SignalPush
from runtara_sdk.instance_signals import InstanceSignals


def pending(kind: str) -> PendingSignal:
    return PendingSignal(signal_type=kind)  # type: ignore[arg-type]


async def test_starts_with_nothing_requested() -> None:
    signals = InstanceSignals()
    assert not signals.cancel_requested and not signals.pause_requested
    assert signals.cancel_source == ""


async def test_note_none_changes_nothing() -> None:
    signals = InstanceSignals()
    changed = signals.changed()
    signals.note(None)
    assert not signals.cancel_requested and not signals.pause_requested
    assert not changed.is_set()


async def test_pause_is_noted() -> None:
    signals = InstanceSignals()
    signals.note(pending("pause"))
    assert signals.pause_requested and not signals.cancel_requested


async def test_cancel_is_noted_with_its_source() -> None:
    signals = InstanceSignals()
    signals.note(pending("cancel"))
    assert signals.cancel_requested
    assert signals.cancel_source == "cancel signal"


async def test_cancel_outranks_an_earlier_pause() -> None:
    signals = InstanceSignals()
    signals.note(pending("pause"))
    signals.note(pending("cancel"))
    assert signals.cancel_requested and not signals.pause_requested


async def test_pause_after_cancel_is_ignored() -> None:
    signals = InstanceSignals()
    signals.request_cancel("SIGTERM")
    changed = signals.changed()
    signals.note(pending("pause"))
    assert signals.cancel_requested and not signals.pause_requested
    assert not changed.is_set()


async def test_first_cancel_source_is_kept() -> None:
    signals = InstanceSignals()
    signals.request_cancel("SIGTERM")
    changed = signals.changed()
    signals.note(pending("cancel"))
    assert signals.cancel_source == "SIGTERM"
    assert not changed.is_set()  # nothing new


async def test_resume_is_not_a_request() -> None:
    signals = InstanceSignals()
    signals.note(pending("resume"))
    assert not signals.cancel_requested and not signals.pause_requested


async def test_pushed_signal_is_noted() -> None:
    signals = InstanceSignals()
    signals.on_push(SignalPush(signal_type="pause"))
    assert signals.pause_requested
    signals.on_push(SignalPush(signal_type="cancel"))
    assert signals.cancel_requested and not signals.pause_requested


async def test_replace_clears_a_withdrawn_pause() -> None:
    signals = InstanceSignals()
    signals.note(pending("pause"))
    signals.replace(None)
    assert not signals.pause_requested


async def test_replace_with_resume_clears_the_pause() -> None:
    signals = InstanceSignals()
    signals.note(pending("pause"))
    signals.replace(pending("resume"))
    assert not signals.pause_requested


async def test_replace_with_cancel_turns_pause_into_cancel() -> None:
    signals = InstanceSignals()
    signals.note(pending("pause"))
    signals.replace(pending("cancel"))
    assert signals.cancel_requested and not signals.pause_requested


async def test_replace_keeps_pause_when_still_pending() -> None:
    signals = InstanceSignals()
    signals.note(pending("pause"))
    changed = signals.changed()
    signals.replace(pending("pause"))
    assert signals.pause_requested
    assert changed.is_set()  # waiters re-check after a replace


async def test_replace_does_not_withdraw_a_cancel() -> None:
    signals = InstanceSignals()
    signals.request_cancel("cancel signal")
    signals.replace(None)
    assert signals.cancel_requested
    signals.replace(pending("pause"))
    assert not signals.pause_requested


async def test_changed_fires_on_new_requests_and_is_renewed() -> None:
    signals = InstanceSignals()
    first = signals.changed()
    assert signals.changed() is first  # no change yet
    signals.note(pending("pause"))
    assert first.is_set()
    second = signals.changed()
    assert second is not first and not second.is_set()
    signals.note(pending("pause"))  # same request again: nothing new
    assert not second.is_set()
    signals.request_cancel("SIGTERM")
    assert second.is_set()
    assert not signals.changed().is_set()


async def test_custom_events_are_per_name() -> None:
    signals = InstanceSignals()
    approval = signals.custom_event("approval")
    other = signals.custom_event("other")
    assert signals.custom_event("approval") is approval
    signals.custom_arrived(CustomSignalPush(name="approval"))
    assert approval.is_set()
    assert not other.is_set()


async def test_custom_push_sets_its_event_only() -> None:
    signals = InstanceSignals()
    changed = signals.changed()
    signals.on_push(CustomSignalPush(name="late"))
    assert signals.custom_event("late").is_set()  # arrived before anyone waited
    assert not signals.custom_event("early").is_set()
    assert not signals.cancel_requested and not signals.pause_requested
    assert not changed.is_set()
