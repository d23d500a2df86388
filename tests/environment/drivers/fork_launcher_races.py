"""Drives a real ForkLauncher from its own process (it makes that process a child subreaper,
which a pytest worker must not become) through the races a review found; prints one JSON
object of findings for ``test_fork_launcher_races``.

    python tests/environment/drivers/fork_launcher_races.py WORKDIR
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil

from runtara_environment.fork_launcher import ForkLauncher
from runtara_environment.fork_messages import ForkRequest
from runtara_environment.process_runner import LaunchSpec, ProcessLauncher, launcher_environment, reap_orphans

TRIES = 20


def lingering_request(run_dir: Path) -> ForkRequest:
    """Valid launch settings, but the core address has nobody listening: the SDK keeps retrying."""
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "RUNTARA_INSTANCE_ID": "i1",
        "RUNTARA_INSTANCE_TOKEN": "t",
        "RUNTARA_SERVER_ADDR": "127.0.0.1:9",
        "RUNTARA_IMAGE_PATH": "/nonexistent.py",
        "RUNTARA_TLS_INSECURE": "true",
        "RUNTARA_CORE_UNREACHABLE_EXIT_S": "30",
    }
    return ForkRequest(env=env, cwd=str(run_dir), stdout_path=str(run_dir / "out"), stderr_path=str(run_dir / "err"))


def kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def live_children(exclude: set[int]) -> list[int]:
    return [
        p.pid for p in psutil.Process().children() if p.pid not in exclude and p.status() != psutil.STATUS_ZOMBIE
    ]


async def stop_right_after_fork(launcher: ForkLauncher, workdir: Path) -> int:
    """How often the new process group did not exist yet when the pid was answered."""
    missing = 0
    for i in range(TRIES):
        pid = await launcher.fork(lingering_request(workdir / f"r2-{i}"))
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            missing += 1
        kill_and_reap(pid)
    return missing


async def cancelled_fork_leaves_nothing(launcher: ForkLauncher, workdir: Path) -> list[int]:
    """Live children left unsupervised after their fork's caller went away."""
    before = {p.pid for p in psutil.Process().children()}
    task = asyncio.create_task(launcher.fork(lingering_request(workdir / "r1")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.0)  # the answer arrives and its process is killed
    left = live_children(before | {launcher.pid or 0})
    for pid in left:
        kill_and_reap(pid)
    reap_orphans(keep={launcher.pid or 0})
    return left


async def big_env_launches(launcher: ForkLauncher, workdir: Path) -> dict[str, Any]:
    """A start env the API accepts, over a megabyte: the launch must start (forked or cold)."""
    spec = LaunchSpec(
        instance_id="big", attempt=1, launch_id="l" * 16, token="t", server_addr="127.0.0.1:9",
        tls_ca=None, tls_insecure=True, image_path=Path("/nonexistent.py"), image_entrypoint=None,
        run_dir=workdir / "big",
        # No core listens at :9: the launch gives up after RUNTARA_CORE_UNREACHABLE_EXIT_S.
        env={"RUNTARA_CORE_UNREACHABLE_EXIT_S": "2", **{f"BIG_{i}": "x" * 32 * 1024 for i in range(40)}},
    )  # fmt: skip
    runner = ProcessLauncher(stderr_tail_bytes=1000, fork_launcher=launcher)
    try:
        process = await runner.launch(spec)
    except Exception as error:  # noqa: BLE001 - reported to the test
        return {"started": False, "error": f"{type(error).__name__}: {error}"}
    exit = await asyncio.wait_for(process.exited, 60)
    return {"started": True, "exit_code": exit.exit_code}


async def main(workdir: Path) -> dict[str, Any]:
    launcher = ForkLauncher(launcher_environment(os.environ))
    launcher.start()
    if not await launcher.wait_ready(60):
        return {"error": "the launcher never became ready"}
    try:
        return {
            "groups_missing": await stop_right_after_fork(launcher, workdir),
            "tries": TRIES,
            "left_by_cancelled_fork": await cancelled_fork_leaves_nothing(launcher, workdir),
            "big_env": await big_env_launches(launcher, workdir),
        }
    finally:
        await launcher.stop()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(Path(sys.argv[1])))))
