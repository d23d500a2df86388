"""What one scenario on one backend found: the numbers RELIABILITY.md reports, as JSON and as
a table row, plus the command that reproduces it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from chaos.audit import Audit, percentile


@dataclass
class ScenarioReport:
    scenario: str
    backend: str
    seed: int
    trials: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    """Faults injected, by kind (``sigkill:step.after_body``, ``environment:sigkill``, ...)."""
    audit: Audit = field(default_factory=Audit)
    duration_s: float = 0.0
    command: str = ""
    measurements: dict[str, Any] = field(default_factory=dict)
    """Scenario-specific numbers (RSS slope, restart latency, ...)."""

    @property
    def ok(self) -> bool:
        return self.audit.ok

    def fault(self, kind: str, n: int = 1) -> None:
        self.faults[kind] += n

    def summary(self) -> dict[str, Any]:
        recovery = self.audit.recovery_ms
        return {
            "scenario": self.scenario,
            "backend": self.backend,
            "seed": self.seed,
            "trials": self.trials,
            "faults_injected": sum(self.faults.values()),
            "faults": dict(sorted(self.faults.items())),
            "runs": self.audit.runs,
            "runs_completed": self.audit.completed,
            "runs_final": self.audit.final,
            "steps_reexecuted_after_checkpoint": self.audit.reexecuted_after_checkpoint,
            "steps_run_twice_in_one_launch": self.audit.ran_twice_in_one_launch,
            "steps_rerun_before_save": self.audit.reran_before_save,
            "signals_sent": self.audit.signals_sent,
            "signals_lost": self.audit.signals_lost,
            "signals_duplicated": self.audit.signals_duplicated,
            "stranded": self.audit.stranded,
            "wrong_outcome": self.audit.wrong_outcome,
            "crashes_seen": self.audit.crashes_seen,
            "recovery_ms_p50": percentile(recovery, 0.5),
            "recovery_ms_p99": percentile(recovery, 0.99),
            "recoveries": len(recovery),
            "duration_s": round(self.duration_s, 1),
            "measurements": self.measurements,
            "violations": self.audit.violations[:50],
            "command": self.command,
        }

    def to_json(self) -> str:
        return json.dumps(self.summary(), sort_keys=True, default=_plain)

    def line(self) -> str:
        s = self.summary()
        recovery = (
            f"{s['recovery_ms_p50']:.0f}/{s['recovery_ms_p99']:.0f} ms" if s["recoveries"] else "-"
        )
        return (
            f"{self.scenario:<18} {self.backend:<8} trials={s['trials']:<3} faults={s['faults_injected']:<4} "
            f"runs={s['runs']:<4} completed={s['runs_completed']:<4} reexec={s['steps_reexecuted_after_checkpoint']}"
            f"/{s['steps_run_twice_in_one_launch']} "
            f"sig_lost={s['signals_lost']} sig_dup={s['signals_duplicated']} stranded={s['stranded']} "
            f"wrong={s['wrong_outcome']} recovery p50/p99={recovery} {s['duration_s']}s "
            f"{'OK' if self.ok else 'VIOLATIONS: ' + str(len(self.audit.violations))}"
        )


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


TABLE_HEADER = (
    "| scenario | backend | trials | faults injected | runs completed | steps re-executed after checkpoint / twice in one launch "
    "| signals lost / duplicated | stranded | recovery p50 / p99 | reproduce |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(summary: dict[str, Any]) -> str:
    """One RELIABILITY.md table row from ``ScenarioReport.summary()`` (or its JSON line)."""
    recovery = (
        f"{summary['recovery_ms_p50']:.0f} / {summary['recovery_ms_p99']:.0f} ms ({summary['recoveries']})"
        if summary["recoveries"]
        else "-"
    )
    return (
        f"| {summary['scenario']} | {summary['backend']} | {summary['trials']} | {summary['faults_injected']} "
        f"| {summary['runs_completed']} / {summary['runs']} | {summary['steps_reexecuted_after_checkpoint']} / "
        f"{summary['steps_run_twice_in_one_launch']} "
        f"| {summary['signals_lost']} / {summary['signals_duplicated']} (of {summary['signals_sent']}) "
        f"| {summary['stranded']} | {recovery} | `{summary['command']}` |"
    )
