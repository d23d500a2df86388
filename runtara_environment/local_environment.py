"""An environment run as a real process on free loopback ports: for integration tests and
benchmarks (yours and ours), like a test server of any other service.

``LocalEnvironment(workdir, database_url)`` keeps everything (data, certificates, logs) under
``workdir``; ``start()`` waits until it serves, ``crash()`` SIGKILLs it (its instance processes
live on, as after a real crash), ``start()`` again restarts it on the same ports. It runs in its
own session, so a Ctrl-C meant for the caller does not reach it: the caller ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from runtara_core.transport.certs import DevCertificates
from runtara_core.transport.tls import ClientTls
from runtara_environment.client import ManagementClient
from runtara_environment.management_tokens import admin_token_path

READY_LINE = "environment ready"
"""What the environment logs once it serves (see ``runtara_environment.cli``)."""
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def instance_processes(data_dir: Path) -> list[psutil.Process]:
    """Live instance processes launched from ``data_dir``: those working in one of its run
    directories, or (cold spawns) started with RUNTARA_RUN_DIR in it. A forked instance's
    /proc environ is its launcher's, so the working directory is what finds it."""
    runs = str(data_dir.resolve() / "runs") + os.sep
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.cwd().startswith(runs) or proc.environ().get("RUNTARA_RUN_DIR", "").startswith(runs):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_instances(data_dir: Path) -> int:
    """SIGKILL the process groups of those instance processes; returns how many there were."""
    procs = instance_processes(data_dir)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return len(procs)


@dataclass
class LocalEnvironment:
    workdir: Path
    database_url: str
    schema: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    """More RUNTARA_* variables (full names)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """Other variables of the environment's own process (not settings)."""
    mgmt_port: int = field(default_factory=free_udp_port)
    core_port: int = field(default_factory=free_udp_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

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

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def env(self) -> dict[str, str]:
        """The variables the server (and a CLI pointed at it) runs with."""
        return {
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

    async def start(self) -> float:
        """Start and wait until it serves; returns the seconds that took."""
        assert not self.alive
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runtara_environment"], env=self.env(), cwd=self.workdir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        while time.perf_counter() < started + START_TIMEOUT_S:
            if READY_LINE in self.log():
                return time.perf_counter() - started
            if not self.alive:
                break
            await asyncio.sleep(0.02)
        self.kill()
        raise RuntimeError(f"the environment did not start; the end of its log:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL and reap (bounded)."""
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)

    async def crash(self) -> None:
        """SIGKILL the environment; its instance processes live on in their own sessions."""
        self.kill()

    async def stop(self) -> None:
        """Graceful: SIGTERM and wait (bounded), then SIGKILL."""
        if not self.alive:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        deadline = time.perf_counter() + STOP_TIMEOUT_S
        while self.alive and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        self.kill()

    def client(self, token: str | None = None) -> ManagementClient:
        return ManagementClient("127.0.0.1", self.mgmt_port, token=token or self.admin_token, tls=ClientTls(self.ca))

    def rss_bytes(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def instance_processes(self) -> list[psutil.Process]:
        return instance_processes(self.data_dir)

    def kill_instances(self) -> int:
        return kill_instances(self.data_dir)
