"""One environment process (with its embedded core) under chaos, on one backend.

Wraps ``LocalEnvironment`` (a real ``python -m runtara_environment`` on free loopback ports) and
adds what a chaos trial needs: its own database (a SQLite file, or a fresh PostgreSQL schema
dropped afterwards), the example images registered, a side-effect ledger, SIGKILL of one
instance's process group, and the facts the audit reads straight from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from chaos.audit import InstanceFacts, LedgerEntry
from runtara_core.persistence import Persistence, open_persistence
from runtara_core.persistence.migrations import drop_schema
from runtara_environment.client import ManagementClient
from runtara_environment.local_environment import LocalEnvironment
from runtara_environment.process_runner import run_dir_of
from runtara_sdk.ledger import read_ledger

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGES = REPO / "images"
CHAOS_IMAGES = Path(__file__).resolve().parent / "images"
BACKENDS = ("sqlite", "postgres")
PG_URL_ENV = "RUNTARA_TEST_DATABASE_URL"


class ChaosSetupError(RuntimeError):
    """The trial cannot run here (no PostgreSQL configured, ...); the message says what to set."""


def postgres_url() -> str:
    url = os.environ.get(PG_URL_ENV)
    if not url:
        raise ChaosSetupError(f"set {PG_URL_ENV}=postgresql://... to run the PostgreSQL half")
    return url


class ChaosEnvironment:
    """``await ChaosEnvironment.open(backend, workdir, **settings)``; ``close()`` ends everything
    it started (the environment, instance processes under its data directory, its schema)."""

    def __init__(self, backend: str, workdir: Path, settings: dict[str, Any], database_url: str | None = None) -> None:
        if backend not in BACKENDS:
            raise ChaosSetupError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.workdir = workdir
        self.schema: str | None = None
        if database_url is not None:
            url = database_url
        elif backend == "postgres":
            url = postgres_url()
            self.schema = f"rt_chaos_{uuid.uuid4().hex[:12]}"
        else:
            url = f"sqlite:///{workdir / 'data' / 'runtara.db'}"
        self.env = LocalEnvironment(
            workdir, url, self.schema, {f"RUNTARA_{k.upper()}": str(v) for k, v in settings.items()}
        )
        self.ledger = workdir / "ledger.jsonl"

    @classmethod
    async def open(cls, backend: str, workdir: Path, database_url: str | None = None, **settings: Any) -> ChaosEnvironment:
        environment = cls(backend, workdir, settings, database_url)
        await environment.env.start()
        return environment

    @property
    def database_url(self) -> str:
        return self.env.database_url

    @property
    def runs_dir(self) -> Path:
        return self.env.data_dir / "runs"

    def client(self) -> ManagementClient:
        return self.env.client()

    async def close(self) -> None:
        self.env.kill()
        self.env.kill_instances()
        if self.schema is not None:
            with contextlib.suppress(Exception):
                await drop_schema(self.database_url, self.schema)

    async def register_examples(self, client: ManagementClient) -> None:
        """The example images under the names the README gives them."""
        await client.register_image(EXAMPLE_IMAGES / "order.py", name="order")
        await client.register_image(EXAMPLE_IMAGES / "welcome_email.py", name="welcome-email")
        await client.register_image(EXAMPLE_IMAGES / "approval.py", name="approval")
        await client.register_image(EXAMPLE_IMAGES / "batch.py", name="batch")

    # ------------------------------------------------------------------ instance processes

    def instance_process(self, instance_id: str) -> psutil.Process | None:
        """The live process running ``instance_id`` (it works in that instance's run directory)."""
        run_dir = str(run_dir_of(self.runs_dir, instance_id).resolve())
        for proc in self.env.instance_processes():
            with contextlib.suppress(psutil.Error):
                if proc.cwd() == run_dir:
                    return proc
        return None

    def kill_instance(self, instance_id: str) -> bool:
        """SIGKILL the process group of the process running ``instance_id``, if one runs."""
        proc = self.instance_process(instance_id)
        if proc is None:
            return False
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def live_instance_ids(self) -> set[str]:
        found = set()
        for proc in self.env.instance_processes():
            with contextlib.suppress(psutil.Error):
                found.add(Path(proc.cwd()).name)
        return found

    # ------------------------------------------------------------------ facts for the audit

    async def open_database(self) -> Persistence:
        return await open_persistence(self.database_url, schema=self.schema)

    async def facts(self, instance_ids: Sequence[str], ledger: Path | None = None) -> list[InstanceFacts]:
        """Everything the audit needs about these instances, read behind the servers' back."""
        entries: dict[str, list[LedgerEntry]] = {}
        for record in read_ledger(ledger or self.ledger):
            entry = LedgerEntry.from_record(record)
            entries.setdefault(entry.instance_id, []).append(entry)
        db = await self.open_database()
        try:
            return [fact for i in instance_ids if (fact := await read_facts(db, i, entries.get(i, []))) is not None]
        finally:
            await db.close()


async def read_facts(db: Persistence, instance_id: str, ledger: list[LedgerEntry]) -> InstanceFacts | None:
    row = await db.get_instance(instance_id)
    if row is None:
        return None
    saved_at: dict[str, int] = {}
    offset = 0
    while True:
        page = await db.list_checkpoints(instance_id, limit=500, offset=offset)
        saved_at.update({c.checkpoint_id: c.created_at_ms for c in page.items})
        offset += len(page.items)
        if not page.items or offset >= page.total:
            break
    events = []
    after = 0
    while batch := await db.list_events(instance_id, after_id=after, limit=500):
        events.extend(batch)
        after = batch[-1].id
    signals = await db.list_custom_signals(instance_id, include_consumed=True, limit=10_000)
    return InstanceFacts(row, saved_at, events, signals, ledger)


FINAL_STATUSES = ("completed", "failed", "cancelled")
FINISHED_SLACK_MS = 30_000
"""Each poll lists instances finished since the previous one began, minus this (a commit may
land after the clock read that stamped it)."""


class FinalWatcher:
    """Learns which instances reached a final status by polling one listing for all of them
    (a poll per instance would load the server it is measuring), and after the first poll only
    those finished lately (a soak's listing of every final instance would grow with the run).
    Survives environment restarts: a failed poll drops the connection and the next round opens
    a new one."""

    def __init__(self, environment: ChaosEnvironment, poll_s: float = 0.25) -> None:
        self._environment = environment
        self._poll_s = poll_s
        self._waiting: dict[str, asyncio.Event] = {}
        self._client: ManagementClient | None = None
        self._since_ms: int | None = None
        self.final: set[str] = set()

    def expect(self, instance_id: str) -> asyncio.Event:
        return self._waiting.setdefault(instance_id, asyncio.Event())

    async def poll_once(self) -> None:
        pending = set(self._waiting) - self.final
        if not pending:
            return
        if self._client is None:
            self._client = self._environment.client()
            await self._client.connect()
        began_ms = time.time_ns() // 1_000_000
        after = None if self._since_ms is None else self._since_ms - FINISHED_SLACK_MS
        offset = 0
        while pending:
            page = await self._client.list_instances(
                status=list(FINAL_STATUSES), finished_after_ms=after, limit=500, offset=offset
            )
            for item in page.items:
                if item.instance_id in pending:
                    self.final.add(item.instance_id)
                    pending.discard(item.instance_id)
                    self._waiting[item.instance_id].set()
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break
        self._since_ms = began_ms

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``."""
        try:
            while not stop.is_set():
                try:
                    await self.poll_once()
                except Exception:  # the environment is down or restarting: reconnect next round
                    await self._drop_client()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll_s)
        finally:
            await self._drop_client()

    async def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None


_FAILPOINT_LINE = re.compile(r"failpoint ([a-z_.]+)#\d+: SIGKILL")


def count_failpoint_kills(run_dir: Path) -> Counter[str]:
    """Failpoints that fired in this run directory's launches (each says so on stderr first)."""
    try:
        text = (run_dir / "stderr.log").read_text(errors="replace")
    except FileNotFoundError:
        return Counter()
    return Counter(_FAILPOINT_LINE.findall(text))
