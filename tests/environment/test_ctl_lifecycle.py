"""The full lifecycle through ``runtara-ctl`` (real CLI processes) against a real environment."""

from __future__ import annotations

import json
from pathlib import Path

from tests.environment.conftest import IMAGES, TEST_IMAGES, EnvironmentProcess, MakeEnvironment


async def test_register_start_wait_inspect(environment: EnvironmentProcess, tmp_path: Path) -> None:
    image = await environment.ctl_json("image", "register", str(IMAGES / "order.py"), "--name", "order")
    assert image["name"] == "order" and image["version"] == 1

    code, out, err = await environment.ctl("image", "list")
    assert code == 0 and "order" in out, err

    order = {"order_id": "o-9", "customer": "grace", "amount": 3.5, "items": ["tea"]}
    code, out, err = await environment.ctl(
        "instance", "start", "order", "--input", json.dumps(order), "--id", "ctl-1", "--wait"
    )
    assert code == 0, (out, err)
    assert "completed" in out and "charge_id" in out  # live progress, then the output

    row = await environment.ctl_json("instance", "get", "ctl-1")
    for key in ("instance_id", "status", "termination_reason", "attempt", "input", "output", "error",
                "image", "created_at_ms", "started_at_ms", "finished_at_ms"):
        assert key in row, key
    assert row["status"] == "completed" and row["output"]["order_id"] == "o-9" and row["input"] == order

    events = await environment.ctl_json("instance", "events", "ctl-1")
    types = [e["type"] for e in (events["items"] if isinstance(events, dict) else events)]
    assert "started" in types and "completed" in types
    checkpoints = await environment.ctl_json("instance", "checkpoints", "ctl-1")
    items = checkpoints["items"] if isinstance(checkpoints, dict) else checkpoints
    assert any("charge_card" in c["checkpoint_id"] for c in items)

    listed = await environment.ctl_json("instance", "list", "--status", "completed")
    assert [i["instance_id"] for i in listed["items"]] == ["ctl-1"]

    code, out, _ = await environment.ctl("instance", "logs", "ctl-1")
    assert code == 0 and "attempt 1 launched" in out

    health = await environment.ctl_json("health")
    assert health["instances"]["completed"] == 1

    # Deleting an image used only by finished instances works; an unknown one is one clear line.
    await environment.ctl_json("image", "delete", image["image_id"])
    code, out, err = await environment.ctl("image", "get", image["image_id"])
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1 and "NOT_FOUND" in err


async def test_signals_and_failures_through_the_cli(make_environment: MakeEnvironment, tmp_path: Path) -> None:
    environment = await make_environment(hibernate_after_ms=500)
    await environment.ctl_json("image", "register", str(TEST_IMAGES / "waiter.py"), "--name", "waiter")
    await environment.ctl_json("image", "register", str(TEST_IMAGES / "steps.py"), "--name", "steps")

    await environment.ctl_json("instance", "start", "waiter", "--id", "w-1")
    code, out, err = await environment.ctl("signal", "send", "w-1", "go", "--payload", '{"ok": true}')
    assert code == 0, err
    code, out, err = await environment.ctl("instance", "wait", "w-1")
    assert code == 0 and "true" in out.lower(), (out, err)

    await environment.ctl_json("instance", "start", "steps", "--id", "s-1", "--input", '{"n": 40, "step_s": 0.2}')
    code, _, err = await environment.ctl("signal", "pause", "s-1")
    assert code == 0, err
    code, _, err = await environment.ctl("signal", "cancel", "s-1")
    assert code == 0, err
    code, out, err = await environment.ctl("instance", "wait", "s-1")
    assert code == 3, (code, out, err)  # cancelled

    await environment.ctl_json("instance", "start", "steps", "--id", "s-2", "--input", '{"n": 40, "step_s": 0.2}')
    code, _, err = await environment.ctl("instance", "stop", "s-2", "--grace", "5")
    assert code == 0, err
    code, out, err = await environment.ctl("instance", "wait", "s-2", "--json")
    assert code == 3, (out, err)
    row = json.loads(out)
    assert (row["status"], row["termination_reason"]) == ("cancelled", "stopped")

    code, out, err = await environment.ctl(
        "instance", "start", "steps", "--input", '{"n": 2, "crash_at": 0, "crash_marker": "/"}',
        "--max-attempts", "1", "--wait",
    )
    assert code == 1 and "crashed" in (out + err), (code, out, err)

    code, out, err = await environment.ctl("instance", "resume", "s-1")
    assert code != 0 and "INVALID_STATE" in err and len(err.strip().splitlines()) == 1
