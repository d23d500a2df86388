"""Scenario 3, database faults: the database goes away under load, and nothing is lost.

PostgreSQL (backend "postgres"): a private PostgreSQL cluster, started for the run on a free
loopback port (the shared test cluster serves other tests, so it is never touched), is
restarted mid-run while instances run steps, sleep in-process, hibernate and wait for signals,
and while starts and signals are sent (retried until acknowledged): ``pg_ctl restart -m fast``,
``-m immediate`` (PostgreSQL crashes and recovers from its WAL) or a stop, a few seconds of
outage, and a start. Both servers must reconnect on their own: the environment keeps serving
management requests, the embedded core keeps saving checkpoints, and the signal LISTEN
connection comes back. Measured per restart: database outage, first successful management
request and first checkpoint after the database is back, LISTEN restored.

SQLite (backend "sqlite"): the environment is SIGKILLed at a random moment while many
instances checkpoint as fast as they can and starts and custom signals are written (sometimes
the instance processes are killed with it). With the environment down, the database file must
pass ``PRAGMA integrity_check`` and hold everything that was acknowledged: each start that
returned, each custom signal that returned, each checkpoint whose "acked" ledger line (written
by ``chaos/images/acked_steps.py`` only after the checkpoint RPC returned) exists. Then the
environment restarts, a few kills per trial, and everything completes.

Both end with ``chaos.audit`` over every instance started.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from chaos.audit import Audit, Expectation, audit
from chaos.cluster import CHAOS_IMAGES, ChaosEnvironment, ChaosSetupError, FinalWatcher
from chaos.example_runs import HIBERNATE_AFTER_MS, RunPlan, approval_payload, example_input
from chaos.report import ScenarioReport
from chaos.scenarios.instance_kills import wait_started
from runtara_core.errors import InternalError, TransportError
from runtara_environment.client import ManagementClient
from runtara_sdk.ledger import read_ledger

log = logging.getLogger(__name__)

T = TypeVar("T")

SETTINGS = {
    "hibernate_after_ms": HIBERNATE_AFTER_MS,
    "crash_backoff_initial_ms": 100,
    "max_concurrent_instances": 64,
}
MAX_ATTEMPTS = 10
"""Room for one crash per environment kill (SQLite) plus the odd heartbeat timeout."""
RETRY_PAUSE_S = 0.05
PG_RESTART_MODES = ("fast", "immediate", "stop-start")
ACKED_IMAGE = CHAOS_IMAGES / "acked_steps.py"


async def run(
    backend: str,
    workdir: Path,
    *,
    seed: int,
    trials: int = 3,
    wave: int = 2,
    outage_s: tuple[float, float] = (2.0, 5.0),
    kills: int = 4,
    writers: int = 4,
    starts_per_writer: int = 10,
    budget_s: float = 900.0,
) -> ScenarioReport:
    """On "postgres", ``trials`` rounds of three restarts (fast, immediate, stop-start with an
    outage of ``outage_s``, in a seeded order), each hitting ``wave`` sets of instances. On
    "sqlite", ``trials`` environments, each SIGKILLed ``kills`` times while ``writers``
    concurrent writers start up to ``starts_per_writer`` instances each between two kills."""
    if backend == "postgres":
        return await run_postgres_restarts(
            workdir, seed=seed, trials=trials, wave=wave, outage_s=outage_s, budget_s=budget_s
        )
    if backend == "sqlite":
        return await run_sqlite_kills(
            workdir, seed=seed, trials=trials, kills=kills, writers=writers,
            starts_per_writer=starts_per_writer, budget_s=budget_s,
        )  # fmt: skip
    raise ChaosSetupError(f"unknown backend {backend!r}; use sqlite or postgres")


# ============================================================================ helpers


async def acknowledged(call: Callable[[], Awaitable[T]], deadline: float, refused: list[int]) -> T:
    """``call()`` again until the server acknowledges it: a refusal while the database is away
    is INTERNAL, and every management op the scenario sends is idempotent or harmless to repeat
    (a start names its instance id; a repeated custom signal is one more queued copy, and each
    waiter consumes exactly one)."""
    while True:
        try:
            return await call()
        except (InternalError, TransportError):
            refused[0] += 1
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(RETRY_PAUSE_S)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ============================================================================ private PostgreSQL


class PostgresBinariesMissing(ChaosSetupError):
    """No ``initdb``/``pg_ctl`` here: the PostgreSQL restart trial cannot run."""


def find_postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl, or the ones
    on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(p), reverse=True)
    for directory in candidates:
        if os.access(Path(directory) / "initdb", os.X_OK) and os.access(Path(directory) / "pg_ctl", os.X_OK):
            return Path(directory)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster of our own: trust auth, 127.0.0.1 only, its socket in its
    directory. Restarting it disturbs nobody else. As root, its programs run as the ``postgres``
    user (PostgreSQL refuses to run as root)."""

    bin_dir: Path
    root: Path
    port: int
    run_as: str | None
    log_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_file = self.root / "postgres.log"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    async def create(cls) -> PrivatePostgres:
        bin_dir = find_postgres_bin()
        if bin_dir is None:
            raise PostgresBinariesMissing("no initdb/pg_ctl (looked in /usr/lib/postgresql/*/bin and PATH)")
        run_as = "postgres" if os.geteuid() == 0 else None
        # Not under the caller's workdir: pytest's tmp_path is private to root, and the cluster
        # must be the postgres user's.
        root = Path(tempfile.mkdtemp(prefix="runtara-chaos-pg-"))
        cluster = cls(bin_dir, root, free_tcp_port(), run_as)
        try:
            if run_as is not None:
                shutil.chown(root, user=run_as)
            await cluster._pg("initdb", "-D", str(cluster.data_dir), "-A", "trust", "-U", "postgres",
                              "-E", "UTF8", "--no-sync")  # fmt: skip
            await cluster.start()
        except BaseException:
            await cluster.destroy()
            raise
        return cluster

    async def _pg(self, program: str, *args: str, check: bool = True) -> int:
        command = [str(self.bin_dir / program), *args]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        if check and process.returncode != 0:
            raise ChaosSetupError(f"{program} {' '.join(args)} failed ({process.returncode}): {out.decode()[-2000:]}")
        return process.returncode or 0

    async def start(self) -> None:
        # fsync off: a PostgreSQL crash (-m immediate) still recovers, since the OS keeps the
        # WAL it wrote; only an OS crash would need the fsyncs, and they load a shared machine.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=100 -c shared_buffers=32MB"
        )
        await self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "start")

    async def restart(self, mode: str) -> None:
        """``pg_ctl restart -m fast|immediate`` (the start options are the ones it was started with)."""
        await self._pg("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-m", mode, "-w", "restart")

    async def stop(self, mode: str = "fast") -> None:
        await self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    async def destroy(self) -> None:
        """Stop (immediate) and delete everything; never raises."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                await self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Outage:
    """One database restart as the scenario saw it (monotonic seconds unless *_ms wall)."""

    mode: str
    issued: float
    down_seen: float | None = None
    up: float | None = None
    up_wall_ms: int | None = None
    mgmt_ok: float | None = None
    listen_restored: float | None = None

    def ms(self, at: float | None, since: float | None) -> float | None:
        return None if at is None or since is None else round((at - since) * 1000, 1)


async def watch_database(url: str, outage: Outage, done: asyncio.Event) -> None:
    """Connect every 10 ms from the restart on: the first failure is the outage seen, the first
    success after it is the database back (``pg_ctl -w`` itself polls only every 100 ms)."""
    while outage.up is None:
        try:
            conn = await asyncpg.connect(url, timeout=1.0)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if outage.down_seen is None:
                outage.down_seen = time.monotonic()
        else:
            await conn.close()
            if outage.down_seen is not None:
                outage.up, outage.up_wall_ms = time.monotonic(), wall_ms()
                return
            if done.is_set():  # the restart finished and we never saw it down: it was that fast
                outage.down_seen = outage.up = time.monotonic()
                outage.up_wall_ms = wall_ms()
                return
        await asyncio.sleep(0.01)


async def probe_management(client: ManagementClient, outage: Outage, deadline: float) -> None:
    """The first management request the environment answers after the database came back."""
    while time.monotonic() < deadline:
        sent = time.monotonic()
        try:
            await client.list_instances(limit=1)
        except (InternalError, TransportError):
            pass
        else:
            if outage.down_seen is not None and sent >= outage.down_seen:
                outage.mgmt_ok = time.monotonic()
                return
        await asyncio.sleep(0.02)


async def watch_listen(url: str, outage: Outage, deadline: float) -> None:
    """The core's signal LISTEN connection back: a backend started after the outage whose last
    statement was a LISTEN."""
    while time.monotonic() < deadline:
        if outage.up_wall_ms is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn = await asyncpg.connect(url, timeout=1.0)
                try:
                    n = await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN %' "
                        "AND backend_start >= to_timestamp($1::double precision / 1000)",
                        float(outage.up_wall_ms - 200),
                    )
                finally:
                    await conn.close()
                if n:
                    outage.listen_restored = time.monotonic()
                    return
        await asyncio.sleep(0.05)


def plan_wave(rng: random.Random, prefix: str, ledger: str, wave: int) -> tuple[list[RunPlan], list[RunPlan]]:
    """Instances to have in flight when the database goes away, and instances to start while
    it is away. Every kind a restart can hit: steps running (batch, order), an in-process
    sleep, a hibernated sleep, hibernated signal waits (their signals sent during and after the
    outage)."""
    base = {"ledger": ledger}
    before: list[RunPlan] = []
    during: list[RunPlan] = []
    n = 0

    def plan(image: str, run_input: dict[str, Any], signal: bool = False) -> RunPlan:
        nonlocal n
        n += 1
        iid = f"{prefix}-{n}"
        payload = approval_payload(rng, iid) if signal else {}
        return RunPlan(iid, image, run_input, "database", signal_payload=payload)

    for _ in range(wave):
        before += [
            plan("batch", {**base, "items": rng.randint(10, 16), "item_delay_s": rng.uniform(0.15, 0.3)}),
            plan("batch", {**base, "items": rng.randint(10, 16), "item_delay_s": rng.uniform(0.15, 0.3)}),
            plan("order", example_input("order", rng, base, step_delay_s=0.5, short_sleep=True)),
            plan("welcome-email", {**base, "user": f"u{rng.randrange(1000)}", "follow_up_after_s": rng.uniform(1.5, 2.2)}),
            plan("welcome-email", {**base, "user": f"u{rng.randrange(1000)}", "follow_up_after_s": rng.uniform(3.0, 5.0)}),
            plan("approval", example_input("approval", rng, base, step_delay_s=0, short_sleep=True), signal=True),
            plan("approval", example_input("approval", rng, base, step_delay_s=0, short_sleep=True), signal=True),
        ]
        during += [
            plan("batch", {**base, "items": rng.randint(3, 8), "item_delay_s": 0.05}),
            plan("order", example_input("order", rng, base, step_delay_s=0.05, short_sleep=True)),
        ]
    return before, during


async def run_postgres_restarts(
    workdir: Path, *, seed: int, trials: int, wave: int, outage_s: tuple[float, float], budget_s: float
) -> ScenarioReport:
    report = ScenarioReport("database-faults", "postgres", seed, trials=trials)
    started = time.monotonic()
    deadline = started + budget_s
    rng = random.Random(seed)
    modes = [mode for _ in range(trials) for mode in rng.sample(PG_RESTART_MODES, len(PG_RESTART_MODES))]
    refused = [0]
    cluster = await PrivatePostgres.create()
    environment: ChaosEnvironment | None = None
    try:
        environment = await ChaosEnvironment.open("postgres", workdir, database_url=cluster.url, **SETTINGS)
        watcher = FinalWatcher(environment)
        stop = asyncio.Event()
        watching = asyncio.create_task(watcher.run(stop))
        plans: list[RunPlan] = []
        outages: list[Outage] = []
        background: list[asyncio.Task[Any]] = []
        started_ids: set[str] = set()
        unacknowledged: list[str] = []
        async with environment.client() as client, environment.client() as probe:
            await environment.register_examples(client)

            async def start(plan: RunPlan) -> None:
                watcher.expect(plan.instance_id)
                await acknowledged(
                    lambda: client.start_instance(plan.image, plan.input, instance_id=plan.instance_id, max_attempts=MAX_ATTEMPTS),
                    deadline, refused,
                )  # fmt: skip
                started_ids.add(plan.instance_id)

            async def signal_later(plan: RunPlan, delay_s: float) -> None:
                await asyncio.sleep(delay_s)
                await acknowledged(
                    lambda: client.send_custom_signal(plan.instance_id, "approval", plan.signal_payload), deadline, refused
                )

            for r, mode in enumerate(modes):
                if time.monotonic() >= deadline:
                    break
                before, during = plan_wave(rng, f"pg{seed}-{r}", str(environment.ledger), wave)
                plans += before + during
                await asyncio.gather(*(start(p) for p in before))
                await wait_started(client, before[0].instance_id, deadline)
                await asyncio.sleep(rng.uniform(0.6, 1.2))  # steps, sleeps and waits in flight
                # While the database is away: new starts, and half the signals (the rest after).
                background += [asyncio.create_task(start(p)) for p in during]
                for plan in (p for p in before if p.signal_payload):
                    background.append(asyncio.create_task(signal_later(plan, rng.choice([0.0, rng.uniform(0.0, 3.0)]))))
                outage = await restart_database(cluster, mode, rng.uniform(*outage_s), probe, deadline)
                outages.append(outage)
                report.fault(f"postgres:{mode}")
                await asyncio.sleep(rng.uniform(0.3, 1.0))
            for failed in await asyncio.gather(*background, return_exceptions=True):
                if isinstance(failed, Exception):  # the environment kept refusing it until the deadline
                    unacknowledged.append(f"a start or signal was never acknowledged: {failed!r}")
            for plan in plans:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.expect(plan.instance_id).wait(), max(0.0, deadline - time.monotonic()))
            plans = [p for p in plans if p.instance_id in started_ids]
        stop.set()
        await watching
        facts = await environment.facts([p.instance_id for p in plans])
        report.audit = audit(facts, {p.instance_id: p.expectation() for p in plans})
        checkpoints = sorted(t for f in facts for t in f.checkpoint_saved_at.values())
        report.measurements = outage_measurements(outages, checkpoints, refused[0])
        report.measurements["budget_exhausted"] = len(watcher.final) < len(plans) or len(outages) < len(modes)
        report.audit.violations += outage_violations(outages) + unacknowledged
    finally:
        if environment is not None:
            await environment.close()
        await cluster.destroy()
    report.duration_s = time.monotonic() - started
    return report


async def restart_database(
    cluster: PrivatePostgres, mode: str, outage_s: float, probe: ManagementClient, deadline: float
) -> Outage:
    """Take the database away (``mode``), bring it back, and time both servers' reconnects."""
    outage = Outage(mode, time.monotonic())
    done = asyncio.Event()
    watch_until = min(deadline, time.monotonic() + outage_s + 30.0)
    watchers = [
        asyncio.create_task(watch_database(cluster.url, outage, done)),
        asyncio.create_task(probe_management(probe, outage, watch_until)),
        asyncio.create_task(watch_listen(cluster.url, outage, watch_until)),
    ]
    try:
        if mode == "stop-start":
            await cluster.stop("fast")
            await asyncio.sleep(outage_s)
            await cluster.start()
        else:
            await cluster.restart(mode)
        done.set()
        await asyncio.gather(*watchers)
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    log.info("postgres %s: down %.0f ms", mode, 1000 * ((outage.up or 0) - (outage.down_seen or 0)))
    return outage


def outage_measurements(outages: list[Outage], checkpoints: list[int], refused: int) -> dict[str, Any]:
    per: list[dict[str, Any]] = []
    for o in outages:
        first_cp = next((t for t in checkpoints if o.up_wall_ms is not None and t >= o.up_wall_ms), None)
        per.append({
            "mode": o.mode,
            "outage_ms": o.ms(o.up, o.down_seen),
            "management_ok_after_restart_ms": o.ms(o.mgmt_ok, o.issued),
            "management_ok_after_up_ms": o.ms(o.mgmt_ok, o.up),
            "checkpoint_after_up_ms": None if first_cp is None or o.up_wall_ms is None else first_cp - o.up_wall_ms,
            "listen_restored_after_up_ms": o.ms(o.listen_restored, o.up),
        })  # fmt: skip

    def worst(key: str) -> float | None:
        values = [p[key] for p in per if p[key] is not None]
        return max(values) if values else None

    return {
        "restarts": per,
        "management_ok_after_up_ms_max": worst("management_ok_after_up_ms"),
        "checkpoint_after_up_ms_max": worst("checkpoint_after_up_ms"),
        "listen_restored_after_up_ms_max": worst("listen_restored_after_up_ms"),
        "requests_refused_during_outages": refused,
    }


def outage_violations(outages: list[Outage]) -> list[str]:
    problems = []
    for i, o in enumerate(outages):
        if o.up is None:
            problems.append(f"restart {i} ({o.mode}): the database never came back")
        if o.mgmt_ok is None:
            problems.append(f"restart {i} ({o.mode}): the environment answered no management request after it")
        if o.listen_restored is None:
            problems.append(f"restart {i} ({o.mode}): the core's signal LISTEN connection was not restored")
    return problems


# ============================================================================ SQLite kills


@dataclass
class WriteBook:
    """What the harness wrote and what the server acknowledged, across environment kills."""

    expectations: dict[str, Expectation] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    """Starts acknowledged."""
    unsure_starts: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """Starts in flight when the environment died: sent again after the restart (same id)."""
    approvals: dict[str, RunPlan] = field(default_factory=dict)
    signalled: set[str] = field(default_factory=set)
    """Approvals whose signal was acknowledged."""
    unsure_signals: set[str] = field(default_factory=set)
    """Signals in flight when the environment died: looked up in the file, sent again if absent."""


async def writer(
    client: ManagementClient, rng: random.Random, book: WriteBook, prefix: str, ledger: str, max_starts: int
) -> None:
    """Starts and custom signals as fast as acknowledged, until the kill (then signals only,
    once it started ``max_starts``: the checkpoints of what runs keep the file busy)."""
    n = 0
    while True:
        n += 1
        waiting = [i for i, p in book.approvals.items() if i in book.started and i not in book.signalled | book.unsure_signals]
        if waiting and rng.random() < 0.4:
            iid = rng.choice(waiting)
            book.unsure_signals.add(iid)
            await client.send_custom_signal(iid, "approval", book.approvals[iid].signal_payload)
            book.unsure_signals.discard(iid)
            book.signalled.add(iid)
            continue
        if n > max_starts:
            await asyncio.sleep(0.05)
            continue
        iid = f"{prefix}-{n}"
        if rng.random() < 0.25:
            plan = RunPlan(iid, "approval", example_input("approval", rng, {"ledger": ledger}, step_delay_s=0, short_sleep=True),
                           "environment-kill", signal_payload=approval_payload(rng, iid))  # fmt: skip
            book.approvals[iid] = plan
            image, run_input, expectation = plan.image, plan.input, plan.expectation()
        else:
            steps = rng.randint(30, 60)
            image, run_input = "acked-steps", {"n": steps, "ledger": ledger, "step_s": 0}
            expectation = Expectation(output={"results": [i * i for i in range(steps)]})
        book.expectations[iid] = expectation
        book.unsure_starts[iid] = (image, run_input)
        await client.start_instance(image, run_input, instance_id=iid, max_attempts=MAX_ATTEMPTS)
        del book.unsure_starts[iid]
        book.started.add(iid)


def check_file_while_down(db_path: Path, ledger: Path, book: WriteBook) -> tuple[list[str], dict[str, int]]:
    """With the environment dead: the file is intact and holds every acknowledged write."""
    problems: list[str] = []
    acked_checkpoints = {
        (str(r["instance_id"]), str(r["checkpoint"])) for r in read_ledger(ledger) if r.get("what") == "acked"
    }
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if integrity != ["ok"]:
            problems.append(f"integrity_check: {integrity[:5]}")
        orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
        if orphans:
            problems.append(f"foreign_key_check: {len(orphans)} rows point nowhere, e.g. {orphans[:3]}")
        instances = {row[0] for row in conn.execute("SELECT instance_id FROM instances")}
        checkpoints = set(conn.execute("SELECT instance_id, checkpoint_id FROM checkpoints"))
        signals: dict[str, list[Any]] = {}
        for iid, payload in conn.execute("SELECT instance_id, payload FROM custom_signals"):
            signals.setdefault(iid, []).append(_json(payload))
    finally:
        conn.close()
    problems += [f"acknowledged start {i} is missing" for i in sorted(book.started - instances)]
    for iid in sorted(book.signalled):
        if book.approvals[iid].signal_payload not in signals.get(iid, []):
            problems.append(f"acknowledged signal to {iid} is missing")
    problems += [f"acknowledged checkpoint {i}/{c} is missing" for i, c in sorted(acked_checkpoints - checkpoints)]
    # In-flight writes the kill cut off: whatever the file says happened, happened.
    for iid in list(book.unsure_starts):
        if iid in instances:
            del book.unsure_starts[iid]
            book.started.add(iid)
    for iid in list(book.unsure_signals):
        if book.approvals[iid].signal_payload in signals.get(iid, []):
            book.unsure_signals.discard(iid)
            book.signalled.add(iid)
    counts = {"acked_checkpoints": len(acked_checkpoints), "checkpoints": len(checkpoints), "instances": len(instances)}
    return problems, counts


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload


async def run_sqlite_kills(
    workdir: Path, *, seed: int, trials: int, kills: int, writers: int, starts_per_writer: int, budget_s: float
) -> ScenarioReport:
    report = ScenarioReport("database-faults", "sqlite", seed, trials=trials)
    started = time.monotonic()
    deadline = started + budget_s
    rng = random.Random(seed)
    totals: dict[str, int] = {
        "acked_checkpoints_checked": 0, "kills_with_instances": 0, "launches_gave_up": 0, "budget_exhausted": 0,
    }  # fmt: skip
    for trial in range(trials):
        if time.monotonic() >= deadline:
            break
        audit_result = await sqlite_trial(
            workdir / f"trial-{trial}", rng, f"s{seed}-{trial}", kills, writers, starts_per_writer, report, totals,
            deadline,
        )  # fmt: skip
        report.audit.merge(audit_result)
    report.measurements = totals
    report.duration_s = time.monotonic() - started
    return report


async def sqlite_trial(
    workdir: Path,
    rng: random.Random,
    prefix: str,
    kills: int,
    writers_n: int,
    starts_per_writer: int,
    report: ScenarioReport,
    totals: dict[str, int],
    deadline: float,
) -> Audit:
    environment = await ChaosEnvironment.open("sqlite", workdir, **SETTINGS)
    db_path = environment.env.data_dir / "runtara.db"
    book = WriteBook()
    problems: list[str] = []
    ledger = str(environment.ledger)
    # One kill with the instance processes at least once per trial (when it kills more than once).
    with_instances = {k for k in range(kills) if rng.random() < 0.3} or ({kills - 1} if kills > 1 else set())
    try:
        async with environment.client() as client:
            await environment.register_examples(client)
            await client.register_image(ACKED_IMAGE, name="acked-steps")
        for k in range(kills):
            if time.monotonic() >= deadline:
                break
            async with environment.client() as client:
                await resend_unsure(client, book)
                tasks = [
                    asyncio.create_task(writer(client, rng, book, f"{prefix}-k{k}w{w}", ledger, starts_per_writer))
                    for w in range(writers_n)
                ]
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # mid-writes: starts, signals, checkpoints
                await environment.env.crash()
                log.info("%s kill %d: environment SIGKILLed", prefix, k)
                report.fault("environment:sigkill")
                if k in with_instances:
                    environment.env.kill_instances()
                    report.fault("instances:sigkill")
                    totals["kills_with_instances"] += 1
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError | TransportError):
                        problems.append(f"{prefix} kill {k}: a writer failed before the kill: {result!r}")
            found, counts = check_file_while_down(db_path, environment.ledger, book)
            problems += [f"{prefix} kill {k}: {p}" for p in found]
            totals["acked_checkpoints_checked"] += counts["acked_checkpoints"]
            log.info("%s kill %d: file checked while down: %s", prefix, k, counts)
            await environment.env.start()
            log.info("%s kill %d: environment restarted", prefix, k)
        async with environment.client() as client:
            await resend_unsure(client, book)
            for iid, plan in book.approvals.items():
                if iid in book.started and iid not in book.signalled:
                    await acknowledged(lambda p=plan: client.send_custom_signal(p.instance_id, "approval", p.signal_payload),
                                       deadline, [0])  # fmt: skip
                    book.signalled.add(iid)
        log.info("%s: every approval signalled; waiting for %d instances", prefix, len(book.started))
        watcher = FinalWatcher(environment)
        stop_watching = asyncio.Event()
        watching = asyncio.create_task(watcher.run(stop_watching))
        finals = [watcher.expect(iid) for iid in book.started]  # all known before the first poll
        for final in finals:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(final.wait(), max(0.0, deadline - time.monotonic()))
        stop_watching.set()
        await watching
        log.info("%s: %d instances final", prefix, len(watcher.final))
        if len(watcher.final) < len(book.started):
            totals["budget_exhausted"] = 1  # what is not final is reported stranded
        totals["launches_gave_up"] += launches_gave_up(environment.runs_dir)
        expectations = {i: e for i, e in book.expectations.items() if i in book.started}
        facts = await environment.facts(list(expectations))
        result = audit(facts, expectations)
        result.violations = problems + result.violations
        return result
    finally:
        await environment.close()


def launches_gave_up(runs_dir: Path) -> int:
    """Launches that exited because they could not reach their core (not because it refused
    them): an environment restart well inside RUNTARA_CORE_UNREACHABLE_EXIT_S must cost none."""
    gave_up = 0
    for log_path in runs_dir.glob("*/stderr.log"):
        for line in log_path.read_text(errors="replace").splitlines():
            if " cannot run: " in line and not line.split(" cannot run: ", 1)[1].startswith("core refused"):
                gave_up += 1
    return gave_up


async def resend_unsure(client: ManagementClient, book: WriteBook) -> None:
    """Starts and signals whose fate the kill hid and the file did not show: send them again."""
    for iid, (image, run_input) in list(book.unsure_starts.items()):
        await client.start_instance(image, run_input, instance_id=iid, max_attempts=MAX_ATTEMPTS)
        del book.unsure_starts[iid]
        book.started.add(iid)
    for iid in list(book.unsure_signals):
        await client.send_custom_signal(iid, "approval", book.approvals[iid].signal_payload)
        book.unsure_signals.discard(iid)
        book.signalled.add(iid)
