"""A real environment process (``python -m runtara_environment``) on loopback, per backend.

Each test gets its own data directory, certificates, free ports and, on PostgreSQL, its own
schema. Cleanup ends only what the test started: the environment processes, and the instance
processes whose run directory lies in this test's data directory.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runtara_core.config import Settings
from runtara_core.persistence import Persistence, open_persistence
from runtara_environment.local_environment import LocalEnvironment, free_udp_port
from tests.conftest import drop_schema, postgres_test_url

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
TEST_IMAGES = Path(__file__).resolve().parent / "images"


class EnvironmentProcess(LocalEnvironment):
    """One environment (with its embedded core) run as a real process; restartable. Adds what
    tests need: the CLI against it, and the database behind its back."""

    async def ctl(self, *args: str, timeout_s: float = 60.0, extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Run ``runtara-ctl`` against this environment: (exit code, stdout, stderr)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtara_environment.ctl", *args,
            env={**self.env(), **(extra_env or {})}, cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"runtara-ctl {' '.join(args)} did not finish in {timeout_s}s") from None
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def ctl_json(self, *args: str, **kwargs: Any) -> Any:
        code, out, err = await self.ctl(*args, "--json", **kwargs)
        assert code == 0, (args, code, err)
        return json.loads(out)

    async def open_database(self) -> Persistence:
        """A second connection to the environment's database, for checks behind its back."""
        return await open_persistence(self.database_url, schema=self.schema)


MakeEnvironment = Callable[..., Awaitable[EnvironmentProcess]]


@pytest.fixture(
    params=[("sqlite", "fork"), ("postgres", "fork"), ("sqlite", "spawn")],
    ids=["sqlite", "postgres", "sqlite-spawn"],
)
def env_variant(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend, launcher): both backends with the default pre-forked launcher, and the cold
    spawn on SQLite (how a launch starts does not depend on the backend)."""
    return request.param


@pytest.fixture
def env_backend(env_variant: tuple[str, str]) -> str:
    return env_variant[0]


@pytest.fixture
def env_launcher(env_variant: tuple[str, str]) -> str:
    return env_variant[1]


@pytest.fixture
async def make_environment(env_backend: str, env_launcher: str, tmp_path: Path) -> AsyncIterator[MakeEnvironment]:
    """``await make_environment(**settings)``: a started environment; settings are RUNTARA_*
    names in lower case without the prefix (``max_concurrent_instances=5``). The keyword
    ``extra_env`` (a dict) is not a setting: those variables are added to the server's
    environment as they are. ``launcher`` defaults to this variant's."""
    made: list[EnvironmentProcess] = []
    schemas: list[str] = []
    pg_url = postgres_test_url() if env_backend == "postgres" else None

    async def make(*, extra_env: dict[str, str] | None = None, **settings: Any) -> EnvironmentProcess:
        workdir = tmp_path / f"env{len(made)}"
        if pg_url is not None:
            schema = f"rt_env_{uuid.uuid4().hex[:12]}"
            schemas.append(schema)
            url = pg_url
        else:
            schema = None
            url = f"sqlite:///{workdir / 'data' / 'runtara.db'}"
        env = EnvironmentProcess(
            workdir,
            url,
            schema,
            {f"RUNTARA_{k.upper()}": str(v) for k, v in {"launcher": env_launcher, **settings}.items()},
            extra_env=dict(extra_env or {}),
        )
        made.append(env)
        await env.start()
        return env

    try:
        yield make
    finally:
        for env in made:
            env.kill()
            env.kill_instances()
        for schema in schemas:
            assert pg_url is not None
            await drop_schema(pg_url, schema)


@pytest.fixture
async def environment(make_environment: MakeEnvironment) -> EnvironmentProcess:
    return await make_environment()


async def wait_until(predicate: Callable[[], Awaitable[bool]], *, timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` (bounded in time)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout_s}s")


__all__ = ["EnvironmentProcess", "IMAGES", "TEST_IMAGES", "Settings", "free_udp_port", "wait_until"]
