"""Failpoint specs (pure): what a chaos plan can ask for, and what it is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runtara_sdk.failpoints import Failpoint, Failpoints, FailpointSpecError, parse_failpoints
from runtara_sdk.settings import InstanceSettings


def test_a_spec_names_point_hit_and_launch() -> None:
    assert parse_failpoints("step.after_body#2@1, hibernate.recorded#1@3") == (
        Failpoint("step.after_body", 2, 1),
        Failpoint("hibernate.recorded", 1, 3),
    )
    assert parse_failpoints("") == ()


@pytest.mark.parametrize(
    "spec",
    ["nowhere#1@1", "step.after_body", "step.after_body#1", "step.after_body#0@1", "step.after_body#1@0", "step.after_body#x@1"],
)
def test_a_bad_spec_is_refused_with_the_reason(spec: str) -> None:
    with pytest.raises(FailpointSpecError, match="failpoint"):
        parse_failpoints(spec)


def test_only_the_armed_arrival_of_the_armed_launch_dies() -> None:
    spec = "step.after_body#2@1,step.after_body#4@1,signal.consumed#1@2"
    first = Failpoints.for_launch(spec, 1)
    assert [first.should_die("step.after_body") for _ in range(5)] == [False, True, False, True, False]
    assert not first.should_die("signal.consumed")
    second = Failpoints.for_launch(spec, 2)
    assert not second.should_die("step.after_body")
    assert second.should_die("signal.consumed")


def test_a_typo_in_the_environment_fails_the_launch_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTARA_INSTANCE_ID", "i-1")
    monkeypatch.setenv("RUNTARA_INSTANCE_TOKEN", "t")
    monkeypatch.setenv("RUNTARA_FAILPOINTS", "step.afterbody#1@1")
    with pytest.raises(ValidationError, match="unknown failpoint"):
        InstanceSettings()  # type: ignore[call-arg]
