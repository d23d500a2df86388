"""A real environment process (``python -m runtara_environment``) on loopback, per backend.

Each test gets its own data directory, certificates, free ports and, on PostgreSQL, its own
schema. Cleanup ends only what the test started: the environment processes, and the instance
processes whose run directory lies in this test's data directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from runtara_core.config import Settings
from runtara_core.persistence import Persistence, open_persistence
from runtara_core.transport.certs import DevCertificates
from runtara_core.transport.tls import ClientTls
from runtara_environment.client import ManagementClient
from runtara_environment.management_tokens import admin_token_path
from tests.conftest import drop_schema, postgres_test_url

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
TEST_IMAGES = Path(__file__).resolve().parent / "images"
START_TIMEOUT_S = 30.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EnvironmentProcess:
    """One environment (with its embedded core) run as a real process; restartable."""

    workdir: Path
    database_url: str
    schema: str | None
    settings: dict[str, str]
    mgmt_port: int = field(default_factory=free_udp_port)
    core_port: int = field(default_factory=free_udp_port)
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    """Variables outside the RUNTARA_* settings the server process also gets (e.g. a canary
    secret a test checks never reaches an instance)."""

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def certs_dir(self) -> Path:
        return self.workdir / "certs"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"environment-{self.starts}.log"

    @property
    def ca(self) -> Path:
        return DevCertificates.in_dir(self.certs_dir).ca_cert

    @property
    def admin_token(self) -> str:
        return admin_token_path(self.data_dir).read_text().strip()

    def env(self) -> dict[str, str]:
        """The variables a server or a CLI of this environment runs with."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RUNTARA_DATA_DIR": str(self.data_dir),
            "RUNTARA_CERTS_DIR": str(self.certs_dir),
            "RUNTARA_DATABASE_URL": self.database_url,
            "RUNTARA_ENV_ADDR": f"127.0.0.1:{self.mgmt_port}",
            "RUNTARA_CORE_ADDR": f"127.0.0.1:{self.core_port}",
            "RUNTARA_LOG_LEVEL": "INFO",
            **({"RUNTARA_DATABASE_SCHEMA": self.schema} if self.schema else {}),
            **self.settings,
            **self.extra_env,
        }
        return env

    async def start(self) -> None:
        assert self.process is None or self.process.returncode is not None
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtara_environment",
                env=self.env(), cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while asyncio.get_running_loop().time() < deadline:
            if "environment ready" in self.log():
                return
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        self.kill()
        raise AssertionError(f"environment did not start; its log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        """Graceful: SIGTERM and wait (bounded)."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.kill()
            await self.process.wait()

    async def crash(self) -> None:
        """SIGKILL the environment (its instance processes live on, in their own sessions)."""
        self.kill()
        if self.process is not None:
            await self.process.wait()

    def client(self, token: str | None = None) -> ManagementClient:
        return ManagementClient(
            "127.0.0.1", self.mgmt_port, token=token or self.admin_token, tls=ClientTls(self.ca)
        )

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

    def instance_processes(self) -> list[psutil.Process]:
        """Live instance processes launched by this environment (their run dir is in ours)."""
        runs = str(self.data_dir.resolve() / "runs")
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("RUNTARA_RUN_DIR", "").startswith(runs) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def kill_instances(self) -> None:
        for proc in self.instance_processes():
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


MakeEnvironment = Callable[..., Awaitable[EnvironmentProcess]]


@pytest.fixture(params=["sqlite", "postgres"])
def env_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def make_environment(env_backend: str, tmp_path: Path) -> AsyncIterator[MakeEnvironment]:
    """``await make_environment(**settings)``: a started environment; settings are RUNTARA_*
    names in lower case without the prefix (``max_concurrent_instances=5``). The keyword
    ``extra_env`` (a dict) is not a setting: those variables are added to the server's
    environment as they are."""
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
            {f"RUNTARA_{k.upper()}": str(v) for k, v in settings.items()},
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
            if env.process is not None:
                await env.process.wait()
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


__all__ = ["EnvironmentProcess", "IMAGES", "TEST_IMAGES", "Settings", "wait_until"]
