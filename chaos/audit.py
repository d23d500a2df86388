"""The invariant check every chaos scenario ends with (pure: facts in, verdict out).

Facts come from the database (instance rows, checkpoints with their save times, events, custom
signals) and from the side-effect ledger (one line per step body that ran, with its wall-clock
time). The verdict counts what the issue asks to be zero:

- **re-executed after checkpoint**: a step body that ran after its checkpoint was saved. A body
  may legitimately run again when a launch died between the body and the save, in a later
  launch attempt; that is counted separately (``reran_before_save``) and is not a violation.
  Two runs in one launch attempt are (``ran_twice_in_one_launch``): nothing but a double
  execution explains them.
- **signals lost / duplicated**: a custom signal the harness sent (and the server acknowledged)
  that no wait consumed, or that more than one consumed.
- **stranded**: an instance that should have reached a final state and did not (pending or
  running with nothing driving it, suspended with nothing to wake it).
- **wrong outcome**: a final state or output other than the expected one.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtara_core.persistence.rows import CustomSignalRow, EventRow, EventType, InstanceRow, InstanceStatus

TERMINAL = frozenset({InstanceStatus.COMPLETED, InstanceStatus.FAILED, InstanceStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One step body that ran (``runtara_sdk.ledger``)."""

    instance_id: str
    step_id: str | None
    launch_attempt: int | None
    what: str
    at_ms: int
    fields: dict[str, Any]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LedgerEntry:
        known = {"instance_id", "step_id", "launch_attempt", "what", "at_ms", "attempt"}
        return cls(
            instance_id=str(record["instance_id"]),
            step_id=record.get("step_id"),
            launch_attempt=record.get("launch_attempt"),
            what=str(record.get("what", "")),
            at_ms=int(record["at_ms"]),
            fields={k: v for k, v in record.items() if k not in known},
        )


@dataclass(frozen=True, slots=True)
class Expectation:
    """How one instance must end. ``output`` None: any output; ``allowed`` lists every legal
    final status when a race may legally end either way (then ``status`` is ignored)."""

    status: InstanceStatus = InstanceStatus.COMPLETED
    output: Any = None
    check_output: Callable[[Any, InstanceFacts], str | None] | None = None
    """Returns a problem description, or None when the output is right (it may compare the
    output with the side effects the ledger saw)."""
    allowed: frozenset[InstanceStatus] = frozenset()
    signals: tuple[Any, ...] = ()
    """Payloads (JSON values, each unique) of the custom signals sent to it that a wait must
    consume exactly once."""

    def legal(self, status: InstanceStatus) -> bool:
        return status in self.allowed if self.allowed else status == self.status


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    row: InstanceRow
    checkpoint_saved_at: dict[str, int]
    """checkpoint_id -> created_at_ms."""
    events: Sequence[EventRow]
    custom_signals: Sequence[CustomSignalRow]
    ledger: Sequence[LedgerEntry]


@dataclass
class Audit:
    """The verdict over a set of instances; ``violations`` says what broke and where."""

    runs: int = 0
    completed: int = 0
    final: int = 0
    reexecuted_after_checkpoint: int = 0
    ran_twice_in_one_launch: int = 0
    reran_before_save: int = 0
    signals_sent: int = 0
    signals_lost: int = 0
    signals_duplicated: int = 0
    stranded: int = 0
    wrong_outcome: int = 0
    crashes_seen: int = 0
    recovery_ms: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def merge(self, other: Audit) -> None:
        for name in (
            "runs", "completed", "final", "reexecuted_after_checkpoint", "ran_twice_in_one_launch", "reran_before_save", "signals_sent",
            "signals_lost", "signals_duplicated", "stranded", "wrong_outcome", "crashes_seen",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.recovery_ms.extend(other.recovery_ms)
        self.violations.extend(other.violations)


def audit(facts: Sequence[InstanceFacts], expectations: dict[str, Expectation]) -> Audit:
    """Check every expected instance; one the database does not know is a lost start."""
    by_id = {fact.row.instance_id: fact for fact in facts}
    result = Audit()
    for instance_id, expected in expectations.items():
        fact = by_id.get(instance_id)
        if fact is None:
            result.runs += 1
            result.wrong_outcome += 1
            result.violations.append(f"{instance_id}: its start was acknowledged, but the database does not know it")
        else:
            result.merge(audit_one(fact, expected))
    return result


def audit_one(fact: InstanceFacts, expected: Expectation) -> Audit:
    result = Audit(runs=1)
    row = fact.row
    where = row.instance_id
    if row.status == InstanceStatus.COMPLETED:
        result.completed = 1
    if row.status in TERMINAL:
        result.final = 1
    if not expected.legal(row.status):
        legal = sorted(s.value for s in expected.allowed) or [expected.status.value]
        if row.status in TERMINAL:
            result.wrong_outcome = 1
            result.violations.append(
                f"{where}: ended {row.status.value} ({row.termination_reason}), expected {'/'.join(legal)}; "
                f"error: {row.error}"
            )
        else:
            result.stranded = 1
            result.violations.append(
                f"{where}: stranded in {row.status.value} ({row.termination_reason}), attempt {row.attempt}, "
                f"expected {'/'.join(legal)}"
            )
    elif row.status == InstanceStatus.COMPLETED:
        problem = _output_problem(fact, expected)
        if problem is not None:
            result.wrong_outcome = 1
            result.violations.append(f"{where}: wrong output: {problem}")
    _audit_ledger(fact, result)
    _audit_signals(fact, expected, result)
    _recovery(fact.events, result)
    return result


def _output_problem(fact: InstanceFacts, expected: Expectation) -> str | None:
    output = json.loads(fact.row.output) if fact.row.output else None
    if expected.output is not None and output != expected.output:
        return f"got {output!r}, expected {expected.output!r}"
    if expected.check_output is not None:
        return expected.check_output(output, fact)
    return None


def _audit_ledger(fact: InstanceFacts, result: Audit) -> None:
    runs_per_step: dict[str, int] = {}
    launches: dict[tuple[str, int | None], int] = {}
    for entry in fact.ledger:
        if entry.step_id is None:
            continue
        saved_at = fact.checkpoint_saved_at.get(entry.step_id)
        if saved_at is not None and entry.at_ms > saved_at:
            result.reexecuted_after_checkpoint += 1
            result.violations.append(
                f"{fact.row.instance_id}: step {entry.step_id} ran at {entry.at_ms} (attempt "
                f"{entry.launch_attempt}), after its checkpoint was saved at {saved_at}"
            )
        else:
            runs_per_step[entry.step_id] = runs_per_step.get(entry.step_id, 0) + 1
        key = (entry.step_id, entry.launch_attempt)
        launches[key] = launches.get(key, 0) + 1
        if launches[key] == 2:  # a relaunch after a crash has the next attempt number
            result.ran_twice_in_one_launch += 1
            result.violations.append(
                f"{fact.row.instance_id}: step {entry.step_id} ran twice in launch attempt {entry.launch_attempt}"
            )
    result.reran_before_save += sum(n - 1 for n in runs_per_step.values())


def _audit_signals(fact: InstanceFacts, expected: Expectation, result: Audit) -> None:
    for payload in expected.signals:
        result.signals_sent += 1
        rows = [s for s in fact.custom_signals if _json(s.payload) == payload]
        consumed = [s for s in rows if s.consumed_at_ms is not None]
        if not rows:
            result.signals_lost += 1
            result.violations.append(f"{fact.row.instance_id}: acknowledged signal {payload!r} is not in the queue")
        elif len(consumed) > 1:
            result.signals_duplicated += 1
            result.violations.append(f"{fact.row.instance_id}: signal {payload!r} consumed {len(consumed)} times")
        elif not consumed and fact.row.status == InstanceStatus.COMPLETED:
            result.signals_lost += 1
            result.violations.append(f"{fact.row.instance_id}: completed without consuming signal {payload!r}")


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload


def _recovery(events: Sequence[EventRow], result: Audit) -> None:
    """Crash to the next registration (the relaunched process running again), per crash."""
    crashed_at: int | None = None
    for event in events:
        if event.type == EventType.CRASHED:
            result.crashes_seen += 1
            crashed_at = event.created_at_ms
        elif event.type == EventType.STARTED and crashed_at is not None:
            result.recovery_ms.append(event.created_at_ms - crashed_at)
            crashed_at = None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None
