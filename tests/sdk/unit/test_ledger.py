"""The side-effect ledger: one JSON line per call, naming the running step."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from runtara_sdk.ledger import append_ledger
from runtara_sdk.steps import StepInfo, enter_step, leave_step


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stamped(record: dict[str, Any], before_ms: int) -> dict[str, Any]:
    """The record without its wall-clock stamp, after checking the stamp is now-ish."""
    at_ms = record.pop("at_ms")
    assert before_ms <= at_ms <= time.time_ns() // 1_000_000
    return record


def test_no_path_writes_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    append_ledger(None, "charged", amount=5)
    assert list(tmp_path.iterdir()) == []


def test_outside_a_step_ids_are_none(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    before_ms = time.time_ns() // 1_000_000
    append_ledger(path, "charged", amount=5, customer="ada")
    assert [stamped(r, before_ms) for r in lines(path)] == [
        {
            "instance_id": None,
            "step_id": None,
            "attempt": None,
            "launch_attempt": None,
            "what": "charged",
            "amount": 5,
            "customer": "ada",
        }
    ]


def test_one_line_per_call_appended(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"earlier": true}\n')
    append_ledger(str(path), "a")
    append_ledger(path, "b", n=2)
    records = lines(path)
    assert len(records) == 3
    assert records[0] == {"earlier": True}
    assert [r["what"] for r in records[1:]] == ["a", "b"]
    assert records[2]["n"] == 2
    assert path.read_text().endswith("\n")


def test_inside_a_step_the_step_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    before_ms = time.time_ns() // 1_000_000
    token = enter_step(StepInfo("3:step:charge", "charge", "wf-9", attempt=2, launch_attempt=4))
    try:
        append_ledger(path, "charged", amount=1)
    finally:
        leave_step(token)
    append_ledger(path, "after")
    inside, after = lines(path)
    assert stamped(inside, before_ms) == {
        "instance_id": "wf-9",
        "step_id": "3:step:charge",
        "attempt": 2,
        "launch_attempt": 4,
        "what": "charged",
        "amount": 1,
    }
    assert after["step_id"] is None and after["what"] == "after"
