"""The pure decisions both backends share, and the SQL they build at run time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtara_core.errors import BadRequest, Conflict, InvalidState, NotFound
from runtara_core.persistence import (
    UNSET,
    InstanceFilter,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewInstance,
    SignalType,
    TerminationReason,
    rules,
)
from runtara_core.persistence.sqlbuild import Params, instance_filter_clause, transition_statement

signals = st.sampled_from(SignalType)


@given(st.lists(signals, min_size=1, max_size=20))
def test_a_cancel_once_offered_is_never_displaced(offers: list[SignalType]) -> None:
    pending: SignalType | None = None
    for incoming in offers:
        if rules.signal_takes_slot(pending, incoming):
            pending = incoming
    if SignalType.CANCEL in offers:
        assert pending is SignalType.CANCEL
    else:
        assert pending is offers[-1]


def test_repeated_signal_does_not_take_the_slot() -> None:
    for kind in SignalType:
        assert not rules.signal_takes_slot(kind, kind)
    assert rules.signal_takes_slot(None, SignalType.RESUME)


@given(st.lists(st.integers(min_value=0, max_value=100), max_size=30), st.integers(0, 1000))
def test_replay_prefix_is_the_longest_prefix_within_budget(sizes: list[int], budget: int) -> None:
    count = rules.replay_prefix(sizes, budget)

    assert sum(sizes[:count]) <= budget
    assert count == len(sizes) or sum(sizes[: count + 1]) > budget


def test_plan_transition_defaults() -> None:
    terminal = rules.plan_transition(
        InstanceStatus.FAILED, TerminationReason.CRASHED, InstanceUpdate(error="boom"), 42
    )
    assert terminal == {
        "status": InstanceStatus.FAILED,
        "termination_reason": TerminationReason.CRASHED,
        "updated_at_ms": 42,
        "wake_at_ms": None,
        "waiting_signal_name": None,
        "finished_at_ms": 42,
        "error": "boom",
    }
    suspended = rules.plan_transition(
        InstanceStatus.SUSPENDED, TerminationReason.SLEEPING, InstanceUpdate(wake_at_ms=99), 42
    )
    assert suspended == {
        "status": InstanceStatus.SUSPENDED,
        "termination_reason": TerminationReason.SLEEPING,
        "updated_at_ms": 42,
        "wake_at_ms": 99,
    }
    explicit = rules.plan_transition(
        InstanceStatus.COMPLETED, None, InstanceUpdate(finished_at_ms=7), 42
    )
    assert explicit["finished_at_ms"] == 7


def test_instance_update_sets_only_what_was_given() -> None:
    assert InstanceUpdate().assignments() == {}
    assert InstanceUpdate(output=None, attempt=2, error=UNSET).assignments() == {
        "attempt": 2,
        "output": None,
    }


def test_transition_refusals() -> None:
    assert isinstance(
        rules.transition_refused("i", None, [InstanceStatus.RUNNING], InstanceStatus.COMPLETED),
        NotFound,
    )
    refused = rules.transition_refused(
        "i",
        "completed",
        [InstanceStatus.SUSPENDED, InstanceStatus.RUNNING],
        InstanceStatus.CANCELLED,
    )
    assert isinstance(refused, InvalidState)
    assert refused.message == (
        "instance 'i' is completed, expected running or suspended to move it to cancelled"
    )
    with pytest.raises(BadRequest):
        rules.check_expected([])


def test_transition_refusals_with_an_attempt() -> None:
    refused = rules.transition_refused(
        "i",
        "running",
        [InstanceStatus.RUNNING],
        InstanceStatus.SUSPENDED,
        actual_attempt=3,
        attempt=2,
    )
    assert isinstance(refused, InvalidState)
    assert refused.message == (
        "instance 'i' is running (attempt 3), expected running on attempt 2 to move it to suspended"
    )


@given(
    st.sampled_from(InstanceStatus),
    st.integers(min_value=1, max_value=4),
    st.none() | st.integers(min_value=1, max_value=4),
)
def test_the_launch_fence_admits_only_the_running_attempt(
    status: InstanceStatus, actual: int, attempt: int | None
) -> None:
    admitted = attempt is None or (status is InstanceStatus.RUNNING and actual == attempt)
    assert rules.launch_admitted(status, actual, attempt) is admitted
    assert rules.launch_admitted(status.value, actual, attempt) is admitted  # as read from SQL
    if admitted:
        rules.check_launch("i", status, actual, attempt)
    else:
        with pytest.raises(InvalidState) as caught:
            rules.check_launch("i", status, actual, attempt)
        assert caught.value.message == (
            f"instance 'i' is {status} (attempt {actual}); this write comes from attempt "
            f"{attempt}, a launch that is no longer running"
        )


def test_the_launch_fence_of_a_missing_instance_is_not_found() -> None:
    with pytest.raises(NotFound):
        rules.check_launch("i", None, None, 1)
    with pytest.raises(NotFound):
        rules.check_launch("i", None, None, None)


def test_hibernation_rules() -> None:
    assert rules.check_hibernation(TerminationReason.SLEEPING, None) is TerminationReason.SLEEPING
    waiting = rules.check_hibernation("waiting", "approval")  # type: ignore[arg-type]
    assert waiting is TerminationReason.WAITING
    for reason in set(TerminationReason) - {TerminationReason.SLEEPING, TerminationReason.WAITING}:
        with pytest.raises(BadRequest, match="^BAD_REQUEST: reason"):
            rules.check_hibernation(reason, None)
    with pytest.raises(BadRequest, match="required"):
        rules.check_hibernation(TerminationReason.WAITING, None)
    with pytest.raises(BadRequest, match="must be None"):
        rules.check_hibernation(TerminationReason.SLEEPING, "approval")

    assert not rules.hibernation_blocked(None, False)
    assert not rules.hibernation_blocked(SignalType.RESUME, False)
    assert rules.hibernation_blocked(SignalType.CANCEL, False)
    assert rules.hibernation_blocked(SignalType.PAUSE, False)
    assert rules.hibernation_blocked(None, True)
    assert rules.hibernation_blocked("pause", False)  # type: ignore[arg-type]


def _stored(tenant: str, image_id: str | None) -> InstanceRow:
    return InstanceRow(
        instance_id="i",
        tenant=tenant,
        image_id=image_id,
        image_name="orders",
        image_version=1,
        status=InstanceStatus.COMPLETED,
        termination_reason=None,
        attempt=1,
        max_attempts=3,
        input=b"",
        output=None,
        error=None,
        created_at_ms=0,
        started_at_ms=None,
        finished_at_ms=None,
        updated_at_ms=0,
        wake_at_ms=None,
        heartbeat_at_ms=None,
        waiting_signal_name=None,
        checkpoint_id=None,
        node_id=None,
        priority=0,
        timeout_ms=None,
        env={},
        pid=None,
        pid_create_time=None,
        peak_rss_bytes=None,
        cpu_time_ms=None,
        exit_code=None,
        exit_signal=None,
        stderr_tail=None,
    )


def test_wakeable_reasons() -> None:
    """The wake scheduler relaunches hibernations and crash backoffs; never a pause."""
    assert rules.WAKEABLE_REASONS == {
        TerminationReason.SLEEPING,
        TerminationReason.WAITING,
        TerminationReason.CRASHED,
    }
    assert rules.HIBERNATION_REASONS <= rules.WAKEABLE_REASONS
    assert TerminationReason.PAUSED not in rules.WAKEABLE_REASONS


def test_check_start() -> None:
    start = NewInstance("i", "img")
    mine, orphaned = _stored("acme", "img"), _stored("acme", None)

    assert rules.check_start(start, "acme", mine) is mine
    assert rules.check_start(start, None, orphaned) is orphaned
    with pytest.raises(NotFound, match="img"):
        rules.check_start(start, None, None)
    with pytest.raises(NotFound, match="img"):
        rules.check_start(start, None, _stored("acme", "other-img"))
    with pytest.raises(Conflict):
        rules.check_start(start, "acme", _stored("globex", "img"))


def test_params_placeholders_per_dialect() -> None:
    sqlite, postgres = Params(postgres=False), Params(postgres=True)

    assert [sqlite(1), sqlite.any_of("status", ["a", "b"])] == ["?", "status IN (?, ?)"]
    assert [postgres(1), postgres.any_of("status", ["a", "b"])] == ["$1", "status = ANY($2)"]
    assert sqlite.values == [1, "a", "b"] and postgres.values == [1, ["a", "b"]]
    assert sqlite.skip_locked() == ""
    assert postgres.skip_locked("w") == " FOR NO KEY UPDATE OF w SKIP LOCKED"
    assert (sqlite.unindexed("status"), postgres.unindexed("status")) == ("+status", "status")


def test_transition_statement_requires_the_attempt_when_given() -> None:
    plain, fenced = Params(postgres=True), Params(postgres=True)
    columns = {"status": InstanceStatus.COMPLETED}

    unfenced_sql = transition_statement(plain, "i", [InstanceStatus.RUNNING], columns)
    fenced_sql = transition_statement(fenced, "i", [InstanceStatus.RUNNING], columns, 2)

    assert "attempt" not in unfenced_sql.split("RETURNING")[0]
    assert "AND attempt = $4 RETURNING" in fenced_sql
    assert fenced.values == [InstanceStatus.COMPLETED, "i", [InstanceStatus.RUNNING], 2]


def test_instance_filter_clause() -> None:
    params = Params(postgres=True)
    clause = instance_filter_clause(
        InstanceFilter(
            tenant="acme",
            statuses=frozenset({InstanceStatus.RUNNING, InstanceStatus.PENDING}),
            created_from_ms=1,
            finished_to_ms=9,
        ),
        params,
    )

    assert clause == (
        "tenant = $1 AND status = ANY($2) AND created_at_ms >= $3 AND finished_at_ms < $4"
    )
    assert params.values == ["acme", [InstanceStatus.PENDING, InstanceStatus.RUNNING], 1, 9]
    assert instance_filter_clause(InstanceFilter(), Params(postgres=False)) == "TRUE"
