"""A real core on loopback (wall clock, each backend) and real instance processes launched
with ``python -m runtara_sdk``, the way the environment will launch them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtara_core.persistence import InstanceRow, InstanceStatus, InstanceUpdate, SignalType
from runtara_core.persistence.rules import wall_clock_ms
from runtara_sdk.exit_codes import ExitCode
from runtara_sdk.ledger import read_ledger
from tests.core.conftest import Core, CoreFactory, start_core  # noqa: F401  (fixture re-export)

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
LAUNCH_TIMEOUT_S = 60.0


class WallClock:
    """The real clock, where the core tests use a fake one: these tests run real processes."""

    def __call__(self) -> int:
        return wall_clock_ms()

    @property
    def now_ms(self) -> int:
        return wall_clock_ms()


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@dataclass
class Launch:
    """One running instance process."""

    process: asyncio.subprocess.Process
    instance_id: str
    attempt: int
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    async def wait(self, timeout_s: float = LAUNCH_TIMEOUT_S) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), timeout_s)
        except TimeoutError:
            self.kill()
            await self.process.wait()
            raise AssertionError(f"launch did not exit within {timeout_s}s; stderr:\n{self.stderr}") from None

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)


@dataclass
class Instances:
    """Creates instances on a real core and launches, kills and relaunches their processes."""

    core: Core
    workdir: Path
    launches: list[Launch] = field(default_factory=list)
    counter: int = 0

    async def create(self, input: Any = None, instance_id: str | None = None) -> str:
        self.counter += 1
        body = b"" if input is None else json.dumps(input).encode()
        row = await self.core.new_instance(instance_id or f"wf-{self.counter}", input=body)
        return row.instance_id

    async def launch(
        self, instance_id: str, image: str | Path, *, entrypoint: str | None = None, env: dict[str, str] | None = None
    ) -> Launch:
        row = await self.row(instance_id)
        run_dir = self.workdir / "runs" / instance_id
        run_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = run_dir / f"stderr-{row.attempt}.log"
        path = Path(image) if Path(image).is_absolute() else IMAGES / image
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RUNTARA_INSTANCE_ID": instance_id,
            "RUNTARA_INSTANCE_TOKEN": self.core.token(instance_id, row.attempt),
            "RUNTARA_ATTEMPT": str(row.attempt),
            "RUNTARA_SERVER_ADDR": f"127.0.0.1:{self.core.port}",
            "RUNTARA_TLS_CA": str(self.core.ca),
            "RUNTARA_RUN_DIR": str(run_dir),
            "RUNTARA_IMAGE_PATH": str(path),
            **({"RUNTARA_IMAGE_ENTRYPOINT": entrypoint} if entrypoint else {}),
            **(env or {}),
        }
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtara_sdk", env=child_env, cwd=run_dir,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,
            )
        launch = Launch(process, instance_id, row.attempt, stderr_path)
        self.launches.append(launch)
        return launch

    async def run(self, instance_id: str, image: str | Path, **options: Any) -> int:
        launch = await self.launch(instance_id, image, **options)
        return await launch.wait()

    async def row(self, instance_id: str) -> InstanceRow:
        row = await self.core.persistence.get_instance(instance_id)
        assert row is not None
        return row

    async def after_crash(self, instance_id: str) -> int:
        """What crash recovery does: the next attempt, pending again. Returns the attempt."""
        row = await self.row(instance_id)
        moved = await self.core.persistence.transition(
            instance_id,
            {InstanceStatus.RUNNING, InstanceStatus.PENDING},
            InstanceStatus.PENDING,
            update=InstanceUpdate(attempt=row.attempt + 1),
        )
        return moved.attempt

    async def wake(self, instance_id: str) -> None:
        """What the wake scheduler or a resume does for a suspended instance."""
        await self.core.persistence.transition(instance_id, {InstanceStatus.SUSPENDED}, InstanceStatus.PENDING)

    async def wait_for_checkpoint(self, instance_id: str, prefix: str, timeout_s: float = 30.0) -> None:
        """Until a checkpoint whose id contains ``prefix`` is saved (bounded)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            page = await self.core.persistence.list_checkpoints(instance_id)
            if any(prefix in c.checkpoint_id for c in page.items):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no checkpoint like {prefix!r} for {instance_id} within {timeout_s}s")

    async def output(self, instance_id: str) -> Any:
        row = await self.row(instance_id)
        assert row.status is InstanceStatus.COMPLETED, (row.status, row.termination_reason, row.error)
        return json.loads(row.output or b"null")

    async def send_signal(self, instance_id: str, signal_type: str) -> None:
        """What the environment's send_signal does: fill the slot, tell core (push)."""
        await self.core.persistence.put_signal(instance_id, SignalType(signal_type))
        self.core.server.notifier.signal_stored(instance_id)

    async def send_custom(self, instance_id: str, name: str, payload: Any = None) -> bool:
        """What send_custom_signal does: queue a JSON payload, tell core. Returns whether it
        woke the instance from hibernation (to pending)."""
        enqueued = await self.core.persistence.enqueue_custom_signal(instance_id, name, json.dumps(payload).encode())
        self.core.server.notifier.custom_signal_stored(instance_id, name, enqueued.signal.id)
        return enqueued.woken is not None

    async def events(self, instance_id: str) -> list[Any]:
        return await self.core.persistence.list_events(instance_id, limit=1000)

    def kill_all(self) -> None:
        for launch in self.launches:
            launch.kill()


@pytest.fixture
async def make_instances(start_core: CoreFactory, tmp_path: Path) -> AsyncIterator[Any]:  # noqa: F811
    """``await make_instances(**core_settings)``: a harness over a core with those settings
    (e.g. ``hibernate_after_ms=500`` to hibernate sooner)."""
    made: list[Instances] = []

    async def make(**core_settings: Any) -> Instances:
        harness = Instances(await start_core(**core_settings), tmp_path / f"h{len(made)}")
        made.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in made:
            harness.kill_all()
            for launch in harness.launches:
                if launch.process.returncode is None:
                    await launch.process.wait()


@pytest.fixture
async def instances(make_instances: Any) -> Instances:
    return await make_instances()


__all__ = ["ExitCode", "Instances", "Launch", "read_ledger"]
