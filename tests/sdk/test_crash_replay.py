"""SIGKILL each example image mid-run, relaunch with the next attempt: it completes with the
right output, and no step whose checkpoint was saved before the kill ran again."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtara_sdk.exit_codes import ExitCode
from tests.sdk.conftest import Instances, read_ledger


@dataclass(frozen=True)
class Example:
    image: str
    input: dict[str, Any]
    kill_after: str
    """Kill once a checkpoint id containing this is saved."""
    entrypoint: str | None = None
    signal: tuple[str, Any] | None = None
    """A custom signal to send after the relaunch (name, payload)."""
    steps: int = 0
    """Step bodies a complete run executes (ledger lines)."""
    expect: dict[str, Any] = field(default_factory=dict)
    """Output fields that do not depend on the instance id."""


EXAMPLES = [
    Example("order.py", {"order_id": "o-7", "customer": "ada", "amount": 42.5, "items": ["book"], "step_delay_s": 0.6},
            "1:step:charge_card", steps=3, expect={"order_id": "o-7"}),
    Example("welcome_email.py", {"user": "grace", "follow_up_after_s": 2.0},
            "2:sleep:follow-up-delay", steps=2, expect={"user": "grace"}),
    Example("approval.py", {"requester": "linus", "timeout_s": 60},
            "1:step:submit_request", signal=("approval", {"approved": True, "by": "ops"}), steps=2,
            expect={"decision": "approved", "by": "ops"}),
    Example("batch.py", {"items": 8, "item_delay_s": 0.3}, "3:step:item-2", steps=8, expect={"processed": 8}),
    Example("parallel", {"suppliers": ["acme", "globex", "initech"], "step_delay_s": 0.4}, ":step:quote-",
            entrypoint="fanout:main", steps=4),
]


def ledger_ids(path: Path) -> Counter[str]:
    return Counter(line["step_id"] for line in read_ledger(path))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.image.removesuffix(".py"))
async def test_a_killed_instance_completes_on_relaunch_without_repeating_saved_steps(
    make_instances: Any, tmp_path: Path, example: Example
) -> None:
    instances: Instances = await make_instances(hibernate_after_ms=60_000)  # waits stay in-process
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create({**example.input, "ledger": str(ledger)})
    first = await instances.launch(iid, example.image, entrypoint=example.entrypoint)
    await instances.wait_for_checkpoint(iid, example.kill_after)
    first.kill()
    assert await first.wait() == -9
    saved = {c.checkpoint_id for c in (await instances.core.persistence.list_checkpoints(iid, limit=1000)).items}
    assert saved, "the kill came before anything was saved: the test proves nothing"

    assert await instances.after_crash(iid) == 2
    second = await instances.launch(iid, example.image, entrypoint=example.entrypoint)
    if example.signal is not None:
        await instances.wait_for_checkpoint(iid, "step:submit_request")
        await instances.send_custom(iid, *example.signal)
    assert await second.wait() == ExitCode.COMPLETED, second.stderr
    output = await instances.output(iid)

    runs = ledger_ids(ledger)
    assert all(count == 1 for step_id, count in runs.items() if step_id in saved), runs
    lines = read_ledger(ledger)
    assert not [line for line in lines if line["step_id"] in saved and line["launch_attempt"] == 2]
    assert len(runs) == example.steps, runs  # every step ran (at least once)
    for key, value in example.expect.items():
        assert output[key] == value


async def test_output_after_a_crash_is_the_output_of_an_uninterrupted_run(instances: Instances, tmp_path: Path) -> None:
    """The batch checksum and the parallel quotes do not depend on the instance id: compare them."""
    for image, entrypoint, input, kill_after in (
        ("batch.py", None, {"items": ["a", "b", "c", "d", "e"], "item_delay_s": 0.3}, "2:step:item-1"),
        ("parallel", "fanout:main", {"suppliers": ["acme", "globex"], "step_delay_s": 0.3}, ":step:quote-"),
    ):
        reference = await instances.create(input)
        assert await instances.run(reference, image, entrypoint=entrypoint) == ExitCode.COMPLETED
        crashed = await instances.create(input)
        launch = await instances.launch(crashed, image, entrypoint=entrypoint)
        await instances.wait_for_checkpoint(crashed, kill_after)
        launch.kill()
        await launch.wait()
        await instances.after_crash(crashed)
        assert await instances.run(crashed, image, entrypoint=entrypoint) == ExitCode.COMPLETED
        expected, got = await instances.output(reference), await instances.output(crashed)
        if image == "batch.py":
            assert got == expected
        else:
            strip = lambda quotes: [{k: v for k, v in q.items() if k != "quote_id"} for q in quotes]  # noqa: E731
            assert strip(got["quotes"]) == strip(expected["quotes"])


async def test_a_step_result_is_returned_from_the_history_not_recomputed(instances: Instances, tmp_path: Path) -> None:
    """The ids in the output are those the first launch's step bodies produced and recorded."""
    ledger = tmp_path / "ledger.jsonl"
    iid = await instances.create(
        {"order_id": "o-9", "customer": "bob", "amount": 5, "items": [], "ledger": str(ledger), "step_delay_s": 0.5}
    )
    first = await instances.launch(iid, "order.py")
    await instances.wait_for_checkpoint(iid, "2:step:reserve_stock")
    first.kill()
    await first.wait()
    await instances.after_crash(iid)
    assert await instances.run(iid, "order.py") == ExitCode.COMPLETED
    output = await instances.output(iid)
    by_what = {line["what"]: line for line in read_ledger(ledger)}
    assert by_what["charge"]["launch_attempt"] == 1 and by_what["reserve"]["launch_attempt"] == 1
    assert output["charge_id"] == by_what["charge"]["charge_id"]
    assert output["reservation_id"] == by_what["reserve"]["reservation_id"]
    assert by_what["ship"]["launch_attempt"] == 2
