"""The chaos audit (pure): each invariant it checks is caught when broken, and the legal
re-run (a launch died between a step's body and its save) is not a violation."""

from __future__ import annotations

import dataclasses
import json
import random

from chaos.audit import Expectation, InstanceFacts, LedgerEntry, audit, percentile
from chaos.example_runs import FAULTS, check_output, derived_id, plan_run
from runtara_core.persistence.rows import CustomSignalRow, EventRow, EventType, InstanceRow, InstanceStatus

T0 = 1_800_000_000_000


def row(instance_id: str = "i-1", status: InstanceStatus = InstanceStatus.COMPLETED, output: object = None) -> InstanceRow:
    return InstanceRow(
        instance_id=instance_id, tenant="default", image_id="img", image_name="img", image_version=1,
        status=status, termination_reason=None, attempt=1, max_attempts=3, input=b"{}",
        output=None if output is None else json.dumps(output).encode(), error=None, created_at_ms=T0,
        started_at_ms=T0, finished_at_ms=None, updated_at_ms=T0, wake_at_ms=None, heartbeat_at_ms=None,
        waiting_signal_name=None, checkpoint_id=None, node_id=None, priority=0, timeout_ms=None, env={},
        pid=None, pid_create_time=None, peak_rss_bytes=None, cpu_time_ms=None, exit_code=None,
        exit_signal=None, stderr_tail=None,
    )  # fmt: skip


def ran(step_id: str, at_ms: int, launch: int = 1, what: str = "work", **fields: object) -> LedgerEntry:
    return LedgerEntry("i-1", step_id, launch, what, at_ms, dict(fields))


def facts(*ledger: LedgerEntry, saved: dict[str, int] | None = None, **changes: object) -> InstanceFacts:
    base = InstanceFacts(row(), saved or {}, [], [], list(ledger))
    return dataclasses.replace(base, **changes)


def test_a_body_that_ran_after_its_checkpoint_was_saved_is_a_violation() -> None:
    result = audit([facts(ran("s1", T0 + 5), ran("s1", T0 + 20, launch=2), saved={"s1": T0 + 10})], {"i-1": Expectation()})
    assert result.reexecuted_after_checkpoint == 1
    assert "after its checkpoint was saved" in result.violations[0]


def test_a_body_rerun_because_the_launch_died_before_saving_is_legal() -> None:
    result = audit([facts(ran("s1", T0 + 5), ran("s1", T0 + 8, launch=2), saved={"s1": T0 + 10})], {"i-1": Expectation()})
    assert result.ok and result.reran_before_save == 1


def test_two_runs_in_one_launch_attempt_are_a_violation_even_before_the_save() -> None:
    """Only a crash (the next attempt) excuses a second run; two processes of one attempt, or a
    replay bug, do not (review finding: the audit used to call this a legal re-run)."""
    result = audit([facts(ran("s1", T0 + 5), ran("s1", T0 + 8), saved={"s1": T0 + 10})], {"i-1": Expectation()})
    assert result.ran_twice_in_one_launch == 1 and not result.ok
    assert "ran twice in launch attempt 1" in result.violations[0]


def test_stranded_wrong_and_missing_instances_are_told_apart() -> None:
    expectations = {"i-1": Expectation(), "i-2": Expectation(), "i-3": Expectation()}
    stuck = facts(row=row("i-1", InstanceStatus.RUNNING))
    failed = facts(row=row("i-2", InstanceStatus.FAILED))
    result = audit([stuck, failed], expectations)
    assert (result.stranded, result.wrong_outcome, result.runs) == (1, 2, 3)
    assert any("stranded in running" in v for v in result.violations)
    assert any("database does not know it" in v for v in result.violations)


def test_a_race_may_end_in_any_of_its_legal_states() -> None:
    either = Expectation(allowed=frozenset({InstanceStatus.COMPLETED, InstanceStatus.CANCELLED}))
    assert audit([facts(row=row(status=InstanceStatus.CANCELLED))], {"i-1": either}).ok
    assert not audit([facts(row=row(status=InstanceStatus.FAILED))], {"i-1": either}).ok


def signal(payload: object, consumed: bool, n: int = 1) -> CustomSignalRow:
    return CustomSignalRow(n, "i-1", "approval", json.dumps(payload).encode(), T0, T0 + 1 if consumed else None, None)


def test_signals_lost_and_duplicated() -> None:
    wanted = Expectation(signals=({"by": "x"},))
    assert audit([facts(custom_signals=[signal({"by": "x"}, True)])], {"i-1": wanted}).ok
    assert audit([facts(custom_signals=[])], {"i-1": wanted}).signals_lost == 1
    assert audit([facts(custom_signals=[signal({"by": "x"}, False)])], {"i-1": wanted}).signals_lost == 1
    twice = [signal({"by": "x"}, True, 1), signal({"by": "x"}, True, 2)]
    assert audit([facts(custom_signals=twice)], {"i-1": wanted}).signals_duplicated == 1
    # A retried send that queued a second copy which nobody consumed delivered once: fine.
    assert audit([facts(custom_signals=[signal({"by": "x"}, True, 1), signal({"by": "x"}, False, 2)])], {"i-1": wanted}).ok


def test_recovery_latency_is_crash_to_next_registration() -> None:
    events = [
        EventRow(1, "i-1", EventType.STARTED, None, None, T0),
        EventRow(2, "i-1", EventType.CRASHED, None, None, T0 + 100),
        EventRow(3, "i-1", EventType.LAUNCHED, None, None, T0 + 150),
        EventRow(4, "i-1", EventType.STARTED, None, None, T0 + 180),
    ]
    result = audit([facts(events=events)], {"i-1": Expectation()})
    assert (result.crashes_seen, result.recovery_ms) == (1, [80])


def test_percentile_by_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert percentile([5, 1, 3], 0.5) == 3


def test_plans_are_a_function_of_the_seed_and_cover_every_fault() -> None:
    first = [plan_run(random.Random(3), f"i-{n}", "/l") for n in range(5)]
    again = [plan_run(random.Random(3), f"i-{n}", "/l") for n in range(5)]
    assert first == again
    rng = random.Random(1)
    assert {plan_run(rng, "i", "/l").fault for _ in range(300)} == set(FAULTS)


def test_the_output_oracle_wants_the_ids_the_ledger_saw() -> None:
    plan = plan_run(random.Random(0), "i-1", "/l", fault="step.after_body")
    plan = dataclasses.replace(plan, image="welcome-email", input={"user": "ann"})
    welcome, follow = derived_id("msg", "i-1", "1:step:send_welcome"), derived_id("msg", "i-1", "3:step:send_follow_up")
    ledger = [
        ran("1:step:send_welcome", T0, what="welcome", message_id=welcome),
        ran("3:step:send_follow_up", T0, what="follow_up", message_id=follow),
    ]
    fact = facts(*ledger)
    assert check_output(plan, {"user": "ann", "messages": [welcome, follow]}, fact) is None
    assert check_output(plan, {"user": "ann", "messages": [follow, welcome]}, fact) is not None
    assert check_output(plan, {"user": "bob", "messages": [welcome, follow]}, fact) is not None
    # An output naming nothing is wrong when no step ran (the oracle used to expect None then).
    assert check_output(plan, {"user": "ann", "messages": [None, None]}, facts()) is not None
