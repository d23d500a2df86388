"""Call ids, checkpoint-id parsing and the replay history's non-determinism check."""

from __future__ import annotations

import pytest

from runtara_core.wire.messages import SavedCheckpoint
from runtara_sdk.errors import NonDeterminismError
from runtara_sdk.history import MAX_NAME_BYTES, CallId, CallKind, Lookup, ParsedId, ReplayHistory, parse_checkpoint_id


def saved(*ids: str, state: bytes | None = b"s") -> list[SavedCheckpoint]:
    return [SavedCheckpoint(checkpoint_id=i, state=state) for i in ids]


# ---------------------------------------------------------------- CallId


def test_call_id_checkpoint_id_and_signature() -> None:
    call = CallId("3", CallKind.STEP, "charge")
    assert call.checkpoint_id == "3:step:charge"
    assert call.signature == "step:charge"


def test_call_id_part() -> None:
    call = CallId("3", CallKind.SIGNAL, "approval")
    assert call.part("deadline") == "3.deadline:signal:approval"


@pytest.mark.parametrize("kind", list(CallKind))
def test_call_id_kinds_render_their_value(kind: CallKind) -> None:
    assert CallId("1", kind, "x").checkpoint_id == f"1:{kind.value}:x"


def test_empty_name_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        CallId("1", CallKind.STEP, "")


def test_name_of_max_bytes_is_accepted() -> None:
    CallId("1", CallKind.STEP, "a" * MAX_NAME_BYTES)


def test_name_over_max_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        CallId("1", CallKind.STEP, "a" * (MAX_NAME_BYTES + 1))


def test_name_length_is_counted_in_utf8_bytes() -> None:
    """101 two-byte characters are 202 bytes: over the limit though only 101 characters."""
    with pytest.raises(ValueError):
        CallId("1", CallKind.STEP, "é" * 101)
    CallId("1", CallKind.STEP, "é" * 100)


def test_name_with_nul_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        CallId("1", CallKind.SLEEP, "a\0b")


# ---------------------------------------------------------------- parse_checkpoint_id


def test_parse_plain_id() -> None:
    assert parse_checkpoint_id("3:step:charge") == ParsedId("3", None, "step:charge")


def test_parse_part_id() -> None:
    assert parse_checkpoint_id("3.deadline:signal:approval") == ParsedId("3", "deadline", "signal:approval")


def test_parse_name_containing_colons() -> None:
    assert parse_checkpoint_id("12:step:a:b:c") == ParsedId("12", None, "step:a:b:c")


def test_parse_round_trips_call_ids() -> None:
    call = CallId("7", CallKind.SLEEP, "cool:off")
    parsed = parse_checkpoint_id(call.checkpoint_id)
    assert parsed == ParsedId("7", None, call.signature)
    part = parse_checkpoint_id(call.part("cancel"))
    assert part == ParsedId("7", "cancel", call.signature)


@pytest.mark.parametrize(
    "foreign",
    ["", "charge", "3", "3:step", "step:charge:x", ":step:x", "-1:step:x", "3a:step:x", "x.3:step:x", "²:step:x", "٣:step:x"],
)
def test_foreign_ids_parse_to_none(foreign: str) -> None:
    assert parse_checkpoint_id(foreign) is None


# ---------------------------------------------------------------- ReplayHistory.check


def test_check_passes_for_the_same_call() -> None:
    history = ReplayHistory(saved("1:step:a", "2:sleep:nap"))
    history.check(CallId("1", CallKind.STEP, "a"))
    history.check(CallId("2", CallKind.SLEEP, "nap"))


def test_check_names_both_ids_on_a_different_call() -> None:
    history = ReplayHistory(saved("1:step:a", "2:step:charge"))
    with pytest.raises(NonDeterminismError) as caught:
        history.check(CallId("2", CallKind.STEP, "refund"))
    message = str(caught.value)
    assert "'2:step:refund'" in message
    assert "'2:step:charge'" in message


def test_check_compares_the_kind_too() -> None:
    history = ReplayHistory(saved("1:step:approval"))
    with pytest.raises(NonDeterminismError):
        history.check(CallId("1", CallKind.SIGNAL, "approval"))


def test_check_uses_part_checkpoints_for_the_position() -> None:
    """A call whose only saved checkpoint is a part (a wait's deadline) still owns its position."""
    history = ReplayHistory(saved("4.deadline:signal:approval"))
    history.check(CallId("4", CallKind.SIGNAL, "approval"))
    with pytest.raises(NonDeterminismError):
        history.check(CallId("4", CallKind.STEP, "approval"))


def test_check_passes_for_an_absent_position_before_later_ones() -> None:
    """Parallel branches save out of order: position 2 may be missing while 3 is saved."""
    history = ReplayHistory(saved("1:step:a", "3:step:c"))
    history.check(CallId("2", CallKind.STEP, "anything"))
    history.check(CallId("5", CallKind.STEP, "beyond"))


def test_check_ignores_foreign_ids() -> None:
    history = ReplayHistory(saved("my-own-checkpoint", "1:step:a"))
    history.check(CallId("1", CallKind.STEP, "a"))
    assert history.calls == 1
    assert len(history) == 2


# ---------------------------------------------------------------- lookup, remember, calls


def test_lookup_returns_the_saved_state() -> None:
    history = ReplayHistory([SavedCheckpoint(checkpoint_id="1:step:a", state=b"\x01\x02")])
    assert history.lookup("1:step:a") == b"\x01\x02"


def test_lookup_of_an_empty_state_returns_it() -> None:
    """b"" is a saved state, not a missing one."""
    history = ReplayHistory([SavedCheckpoint(checkpoint_id="1:step:a", state=b"")])
    assert history.lookup("1:step:a") == b""


def test_lookup_unsaved_in_a_complete_history_is_absent() -> None:
    history = ReplayHistory(saved("1:step:a"))
    assert history.lookup("2:step:b") is Lookup.ABSENT


def test_lookup_of_a_state_that_did_not_fit_asks_core() -> None:
    history = ReplayHistory(saved("1:step:a", state=None))
    assert history.lookup("1:step:a") is Lookup.ASK_CORE


def test_lookup_unsaved_in_an_incomplete_history_asks_core() -> None:
    history = ReplayHistory(saved("1:step:a"), complete=False)
    assert history.lookup("2:step:b") is Lookup.ASK_CORE
    assert history.lookup("1:step:a") == b"s"


def test_remember_fills_a_missing_state() -> None:
    history = ReplayHistory(saved("1:step:a", state=None), complete=False)
    history.remember("1:step:a", b"fetched")
    history.remember("2:step:b", b"new")
    assert history.lookup("1:step:a") == b"fetched"
    assert history.lookup("2:step:b") == b"new"


def test_calls_counts_positions_not_checkpoints() -> None:
    assert ReplayHistory([]).calls == 0
    assert ReplayHistory(saved("foreign")).calls == 0
    history = ReplayHistory(saved("2:step:b", "5.deadline:signal:s", "5:signal:s", "1:step:a", "1/1:step:c"))
    assert history.calls == 4
    assert len(history) == 5


def test_branch_positions_parse_and_are_checked_on_their_own() -> None:
    assert parse_checkpoint_id("2/1.cancelled:step:x") == ParsedId("2/1", "cancelled", "step:x")
    assert parse_checkpoint_id("2/:step:x") is None and parse_checkpoint_id("/1:step:x") is None
    history = ReplayHistory(saved("1/1:step:x", "2/1:step:y"))
    history.check(CallId("1/1", CallKind.STEP, "x"))
    with pytest.raises(NonDeterminismError, match="'1/1:step:y'"):
        history.check(CallId("1/1", CallKind.STEP, "y"))
