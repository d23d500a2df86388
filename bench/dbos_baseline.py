"""DBOS baseline: the per-step overhead of DBOS Transact running the same N-step workflow.

    .venv/bin/pip install dbos                           # 3.x; not a project dependency
    .venv/bin/python bench/dbos_baseline.py              # both backends, 100 steps x 20 workflows
    .venv/bin/python bench/dbos_baseline.py --only sqlite            # or --only postgres
    .venv/bin/python bench/dbos_baseline.py --steps 100 --workflows 20 --replay-steps 1000

From code (``bench/sdk.py``)::

    from bench.dbos_baseline import DbosUnavailable, run_dbos
    try:
        result = run_dbos("sqlite", workdir=tmp, postgres_url=None)
    except DbosUnavailable as e:   # dbos not installed, PostgreSQL unreachable
        print(f"DBOS baseline skipped: {e}")

``run_dbos`` blocks (it waits for a child process); from asyncio code call it through
``asyncio.to_thread``. It never imports ``dbos`` into the calling process: DBOS is a global
singleton that starts threads of its own (queue poller, notification listener, scheduler,
background jobs, a background event loop), so each call runs it in a child process
(``sys.executable bench/dbos_baseline.py --child ...``) that prints one JSON line, bounded by a
timeout (300 s by default) after which it is killed.

What the child runs (written against DBOS 3.4.0, its async API):

- an ``async`` ``@DBOS.workflow()`` that awaits an empty ``async`` ``@DBOS.step()`` (it returns
  the int 1) N times in a loop. The workflow is started by awaiting it directly inside
  ``SetWorkflowID(...)``, sequentially, one workflow at a time; ``warmup`` workflows run first
  and are not measured.
- per step: ``time.perf_counter()`` around each ``await step()`` inside the workflow body. That
  is the overhead a workflow author sees: DBOS looks the step up in ``operation_outputs``
  (one transaction, on a worker thread), runs the body, serializes the output (pickle + base64)
  and inserts it into ``operation_outputs`` (a second transaction, on a worker thread).
  ``step_p50_ms`` / ``step_p99_ms`` are over all ``steps * workflows`` measured steps.
- per workflow: ``perf_counter()`` around the ``await workflow(N)`` in the caller: the status
  row insert, the N steps, the output and the status update.
- replay (``replay_ms``, see ``DbosResult``): a workflow with ``replay_steps`` (1,000) steps is
  run to completion, then ``DBOS.fork_workflow_async(id, start_step=last step + 1)`` creates a
  new workflow that carries every one of its step checkpoints; DBOS runs its body again and
  every ``await step()`` is answered from the checkpoint (the step body is not run: checked).
  ``replay_ms`` is the body's loop, first await to last, the median of 3 forks. This is DBOS's
  nearest equivalent of our replay of 1,000 steps from the history returned at register; DBOS
  reads each checkpoint with its own query (one ``SELECT`` per step), where we read them once.

Backends:

- sqlite: DBOS's system database is a fresh file ``workdir/dbos_bench_<random>.sqlite`` (removed
  afterwards). DBOS 3.4 opens it as SQLAlchemy's pysqlite with ``BEGIN IMMEDIATE`` transactions,
  ``busy_timeout``, ``foreign_keys=ON`` and sets no ``journal_mode`` nor ``synchronous``: it runs
  SQLite's defaults, a rollback journal (``journal_mode=delete``) with ``synchronous=FULL`` (2).
  That is durable (an fsync per commit, several for a rollback journal) but not WAL: the runtime
  here uses WAL with ``synchronous=FULL``. We report what DBOS uses and do not change it; the
  child reads both pragmas back through DBOS's own engine into ``note``.
- postgres: DBOS's system database is a throwaway database ``dbos_bench_<random>`` created on the
  server of ``postgres_url`` (default ``RUNTARA_TEST_DATABASE_URL``, else
  ``postgresql://postgres@127.0.0.1:5432/test``) and dropped (``WITH (FORCE)``) in a ``finally``;
  if the child is killed on timeout, the parent drops it from another short child. DBOS talks to
  it through psycopg 3 (SQLAlchemy pool, 20 connections). ``synchronous_commit`` and ``fsync`` of
  the server are reported in ``note``. An unreachable server raises ``DbosUnavailable``.

DBOS settings: ``enable_otlp=False``, no ``conductor_key`` (no Conductor websocket), log level
WARNING; DBOS 3.4 has no admin HTTP server at all (no ``run_admin_server`` option any more), so
nothing listens and nothing leaves the machine: the only sockets are to ``postgres_url``. Every
``DBOS_*`` / ``DBOS__*`` environment variable is removed from the child's environment (they
could turn on DBOS Cloud mode, Conductor or OTLP exporters).

Caveats: DBOS's background threads (queue poller, SQLite notification polling every second,
scheduler, background jobs) run during the measurement and share the machine's 2 cores, as they
would in production. The async step path hops to a worker thread twice per step
(``asyncio.to_thread``), which is part of what is measured. The machine is shared and noisy:
runs minutes apart differ by +-30%; compare with runs interleaved.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CHILD_TIMEOUT_S = 300.0
CLEANUP_TIMEOUT_S = 60.0
PG_CONNECT_TIMEOUT_S = 5
REPLAY_STEPS = 1000
REPLAY_REPEATS = 3
APP_NAME = "runtara-dbos-bench"
BACKENDS = ("sqlite", "postgres")

_RESULT_KEY = "dbos_baseline_result"
_ERROR_KEY = "dbos_baseline_error"
_SCRIPT = Path(__file__).resolve()


class DbosUnavailable(RuntimeError):
    """DBOS cannot be measured on this backend (dbos not installed, PostgreSQL unreachable).

    ``str(exc)`` is a one-line reason the caller can print as a skip note.
    """


class DbosBenchError(RuntimeError):
    """The DBOS child failed or timed out; the message carries the tail of its stderr."""


@dataclass
class DbosResult:
    """DBOS's numbers for one backend.

    ``replay_ms``: time for DBOS to run again the body of a workflow whose ``replay_steps``
    (default 1,000) steps all completed, every ``await step()`` answered from its checkpoint.
    Measured as: run the workflow to completion; ``DBOS.fork_workflow_async(id, start_step=
    last_step + 1)`` copies all its step checkpoints to a new workflow and enqueues it on DBOS's
    internal queue; the forked body's loop (first ``await step()`` to last, perf_counter inside
    the body) is the replay time. Median of 3 forks. It excludes the fork call itself (copying
    the checkpoint rows) and the queue dispatch (DBOS's queue poller, about 1 s); both are in
    ``details`` (``fork_call_ms``, ``fork_dispatch_ms``, ``fork_end_to_end_ms``). Re-invoking
    the completed workflow with its own id (``SetWorkflowID``) replays nothing: DBOS returns the
    recorded output without running the body, in constant time (``details["rerun_same_id_ms"]``),
    so it is not a replay. None only when the fork could not be measured (``note`` says why).
    """

    backend: str
    steps: int
    workflows: int
    step_p50_ms: float
    step_p99_ms: float
    workflow_p50_ms: float
    replay_ms: float | None
    note: str
    details: dict[str, Any] = field(default_factory=dict)
    """Extra numbers: dbos_version, step_mean_ms, cpu_per_step_ms (the DBOS process's CPU time,
    all its threads, over the measured workflows, divided by their steps; PostgreSQL's own CPU
    is not in it), workflow_p99_ms, workflow_overhead_p50_ms (wall
    minus its steps), replay_steps, replay_per_step_ms, fork_*_ms, rerun_same_id_ms, sqlite
    pragmas or PostgreSQL settings."""


def default_postgres_url() -> str:
    return os.environ.get("RUNTARA_TEST_DATABASE_URL", DEFAULT_PG_URL)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, as in ``bench/push.py``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def run_dbos(
    backend: str,
    *,
    workdir: Path,
    postgres_url: str | None,
    steps: int = 100,
    workflows: int = 20,
    warmup: int = 2,
    replay_steps: int = REPLAY_STEPS,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> DbosResult:
    """Measure DBOS on ``backend`` ("sqlite" or "postgres") in a child process.

    ``workdir`` holds the SQLite file (and is the child's working directory); ``postgres_url`` is
    required for "postgres" (the server on which a throwaway database is created and dropped).
    ``replay_steps=0`` skips the replay measurement (``replay_ms`` is then None).
    Raises ``DbosUnavailable`` (skip) or ``DbosBenchError`` (failure, timeout).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if steps < 1 or workflows < 1 or warmup < 0 or replay_steps < 0:
        raise ValueError("steps and workflows must be >= 1, warmup and replay_steps >= 0")
    if importlib.util.find_spec("dbos") is None:
        raise DbosUnavailable(f"dbos is not installed: {sys.executable} -m pip install dbos")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    command = [
        sys.executable,
        str(_SCRIPT),
        "--child",
        "--backend", backend,
        "--steps", str(steps),
        "--workflows", str(workflows),
        "--warmup", str(warmup),
        "--replay-steps", str(replay_steps),
    ]
    pg_database: str | None = None
    if backend == "sqlite":
        command += ["--sqlite-path", str(workdir / f"dbos_bench_{token}.sqlite")]
    else:
        if not postgres_url:
            raise DbosUnavailable("postgres: no postgres_url given")
        pg_database = f"dbos_bench_{token}"
        command += ["--postgres-url", postgres_url, "--pg-database", pg_database]
    try:
        completed = subprocess.run(
            command,
            cwd=workdir,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as e:  # subprocess.run has killed the child
        if pg_database is not None and postgres_url:
            _drop_database_in_child(postgres_url, pg_database, workdir)
        raise DbosBenchError(
            f"DBOS child ({backend}) killed after {timeout_s:.0f} s; stderr tail:\n"
            f"{_tail(_text(e.stderr))}"
        ) from None
    payload = _parse_child_output(completed.stdout)
    if payload is not None and _ERROR_KEY in payload:
        error = payload[_ERROR_KEY]
        if error.get("kind") == "unavailable":
            raise DbosUnavailable(f"{backend}: {error.get('message')}")
        raise DbosBenchError(
            f"DBOS child ({backend}) failed: {error.get('message')}\n{_tail(completed.stderr)}"
        )
    if payload is None or _RESULT_KEY not in payload or completed.returncode != 0:
        raise DbosBenchError(
            f"DBOS child ({backend}) exited {completed.returncode} without a result; "
            f"stderr tail:\n{_tail(completed.stderr)}"
        )
    fields = {f.name for f in dataclasses.fields(DbosResult)}
    return DbosResult(**{k: v for k, v in payload[_RESULT_KEY].items() if k in fields})


def _child_env() -> dict[str, str]:
    """The caller's environment without DBOS's own variables (Cloud mode, Conductor, OTLP)."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("DBOS")}


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _parse_child_output(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            payload = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(payload, dict) and (_RESULT_KEY in payload or _ERROR_KEY in payload):
            return payload
    return None


def _drop_database_in_child(postgres_url: str, database: str, workdir: Path) -> None:
    """Best effort: drop the throwaway database from a short child (no driver in this process)."""
    try:
        subprocess.run(
            [sys.executable, str(_SCRIPT), "--drop-pg-database", database,
             "--postgres-url", postgres_url],
            cwd=workdir,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CLEANUP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pass


# --- the child: everything below imports dbos / psycopg / sqlalchemy lazily -------------------


def _pg_urls(postgres_url: str, database: str | None) -> tuple[str, str]:
    """(libpq URL of the given database, SQLAlchemy URL of ``database`` on the same server)."""
    import sqlalchemy as sa

    url = sa.make_url(postgres_url).set(drivername="postgresql")
    admin = url.render_as_string(hide_password=False)
    target = url.set(database=database).render_as_string(hide_password=False) if database else ""
    return admin, target


def _drop_pg_database(postgres_url: str, database: str) -> None:
    import psycopg
    from psycopg import sql

    admin, _ = _pg_urls(postgres_url, None)
    with psycopg.connect(admin, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )


def _create_pg_database(postgres_url: str, database: str) -> dict[str, str]:
    """Create the throwaway database; return the server's durability settings.

    Raises ``DbosUnavailable`` when the server cannot be reached.
    """
    import psycopg
    from psycopg import sql

    admin, _ = _pg_urls(postgres_url, None)
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as e:
        reason = " ".join(str(e).split())
        raise DbosUnavailable(f"PostgreSQL unreachable at {postgres_url}: {reason}") from None
    with conn:
        settings: dict[str, str] = {}
        for name in ("server_version", "synchronous_commit", "fsync"):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            settings[name] = str(row[0]) if row else "?"
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return settings


def _sqlite_pragmas() -> dict[str, str]:
    """journal_mode and synchronous as DBOS's own engine sees them (internal API, best effort)."""
    import sqlalchemy as sa
    from dbos._dbos import _get_dbos_instance

    engine = _get_dbos_instance()._sys_db.engine
    with engine.connect() as conn:
        return {
            "journal_mode": str(conn.execute(sa.text("PRAGMA journal_mode")).scalar()),
            "synchronous": str(conn.execute(sa.text("PRAGMA synchronous")).scalar()),
        }


async def _measure(args: argparse.Namespace, system_database_url: str) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig, SetWorkflowID

    step_durations: dict[str, list[float]] = {}
    loop_spans: dict[str, tuple[float, float]] = {}
    step_body_runs = [0]

    @DBOS.step()
    async def empty_step() -> int:
        step_body_runs[0] += 1
        return 1

    @DBOS.workflow()
    async def steps_workflow(n: int) -> int:
        durations: list[float] = []
        total = 0
        start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            total += await empty_step()
            durations.append(time.perf_counter() - t0)
        end = time.perf_counter()
        workflow_id = DBOS.workflow_id
        assert workflow_id is not None
        step_durations[workflow_id] = durations
        loop_spans[workflow_id] = (start, end)
        return total

    config: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": system_database_url,
        "log_level": "WARNING",
        "enable_otlp": False,
    }
    DBOS(config=config)
    try:
        DBOS.launch()
        details: dict[str, Any] = {}
        if args.backend == "sqlite":
            try:
                details.update({f"sqlite_{k}": v for k, v in _sqlite_pragmas().items()})
            except Exception as e:  # internal API: report, don't fail
                details["sqlite_pragmas_error"] = repr(e)

        run = secrets.token_hex(4)
        for i in range(args.warmup):
            with SetWorkflowID(f"warmup-{run}-{i}"):
                await steps_workflow(args.steps)

        walls: list[float] = []
        all_steps: list[float] = []
        overheads: list[float] = []
        cpu_start = time.process_time()
        for i in range(args.workflows):
            workflow_id = f"measured-{run}-{i}"
            t0 = time.perf_counter()
            with SetWorkflowID(workflow_id):
                result = await steps_workflow(args.steps)
            wall = time.perf_counter() - t0
            if result != args.steps:
                raise RuntimeError(f"workflow returned {result}, expected {args.steps}")
            walls.append(wall)
            durations = step_durations[workflow_id]
            all_steps.extend(durations)
            overheads.append(wall - sum(durations))
        cpu_s = time.process_time() - cpu_start

        # Re-invoking a completed workflow by id returns its recorded output, body not run.
        reruns: list[float] = []
        for i in range(min(args.workflows, 5)):
            t0 = time.perf_counter()
            with SetWorkflowID(f"measured-{run}-{i}"):
                await steps_workflow(args.steps)
            reruns.append(time.perf_counter() - t0)

        replay_ms: float | None = None
        replay_note = "replay not measured (--replay-steps 0)"
        if args.replay_steps > 0:
            replay_ms, replay_details, replay_note = await _measure_replay(
                args.replay_steps, steps_workflow, step_durations, loop_spans, step_body_runs
            )
            details.update(replay_details)

        details.update(
            {
                "step_mean_ms": 1e3 * sum(all_steps) / len(all_steps),
                "cpu_per_step_ms": 1e3 * cpu_s / len(all_steps),
                "step_p90_ms": 1e3 * percentile(all_steps, 0.90),
                "step_max_ms": 1e3 * max(all_steps),
                "workflow_p99_ms": 1e3 * percentile(walls, 0.99),
                "workflow_overhead_p50_ms": 1e3 * percentile(overheads, 0.50),
                "rerun_same_id_ms": 1e3 * percentile(reruns, 0.50),
            }
        )
        return {
            "step_p50_ms": 1e3 * percentile(all_steps, 0.50),
            "step_p99_ms": 1e3 * percentile(all_steps, 0.99),
            "workflow_p50_ms": 1e3 * percentile(walls, 0.50),
            "replay_ms": replay_ms,
            "replay_note": replay_note,
            "details": details,
        }
    finally:
        DBOS.destroy(destroy_registry=True)


async def _measure_replay(
    replay_steps: int,
    steps_workflow: Any,
    step_durations: dict[str, list[float]],
    loop_spans: dict[str, tuple[float, float]],
    step_body_runs: list[int],
) -> tuple[float | None, dict[str, Any], str]:
    """Fork a completed ``replay_steps``-step workflow past its last step, REPLAY_REPEATS times."""
    from dbos import DBOS, SetWorkflowID

    source_id = f"replay-source-{secrets.token_hex(4)}"
    with SetWorkflowID(source_id):
        await steps_workflow(replay_steps)
    recorded = await DBOS.list_workflow_steps_async(source_id)
    last_step = max(int(s["function_id"]) for s in recorded)
    if len(recorded) != replay_steps:
        return None, {}, (
            f"replay not measured: {len(recorded)} checkpoints for {replay_steps} steps"
        )

    loops: list[float] = []
    fork_calls: list[float] = []
    dispatches: list[float] = []
    end_to_ends: list[float] = []
    per_step: list[float] = []
    for _ in range(REPLAY_REPEATS):
        runs_before = step_body_runs[0]
        t0 = time.perf_counter()
        handle = await DBOS.fork_workflow_async(source_id, last_step + 1)
        t1 = time.perf_counter()
        result = await handle.get_result()
        t2 = time.perf_counter()
        fork_id = handle.get_workflow_id()
        if result != replay_steps or fork_id not in loop_spans:
            return None, {}, f"replay not measured: fork returned {result!r}"
        if step_body_runs[0] != runs_before:
            return None, {}, (
                f"replay not measured: the fork ran {step_body_runs[0] - runs_before} step "
                "bodies instead of answering from checkpoints"
            )
        start, end = loop_spans[fork_id]
        loops.append(end - start)
        fork_calls.append(t1 - t0)
        dispatches.append(start - t1)
        end_to_ends.append(t2 - t0)
        per_step.extend(step_durations[fork_id])

    median = REPLAY_REPEATS // 2
    details = {
        "replay_steps": replay_steps,
        "replay_source_step_p50_ms": 1e3 * percentile(step_durations[source_id], 0.50),
        "replay_per_step_p50_ms": 1e3 * percentile(per_step, 0.50),
        "replay_all_ms": [round(1e3 * x, 3) for x in loops],
        "fork_call_ms": 1e3 * sorted(fork_calls)[median],
        "fork_dispatch_ms": 1e3 * sorted(dispatches)[median],
        "fork_end_to_end_ms": 1e3 * sorted(end_to_ends)[median],
    }
    note = (
        f"replay = forked body's loop over {replay_steps} checkpointed steps "
        f"(fork_workflow_async past the last step; median of {REPLAY_REPEATS}; step bodies "
        f"not re-run), excluding the fork call ({details['fork_call_ms']:.0f} ms) and queue "
        f"dispatch ({details['fork_dispatch_ms']:.0f} ms)"
    )
    return 1e3 * sorted(loops)[median], details, note


def _child_main(args: argparse.Namespace) -> int:
    import asyncio
    import importlib.metadata

    version = importlib.metadata.version("dbos")
    pg_settings: dict[str, str] = {}
    try:
        if args.backend == "sqlite":
            system_database_url = f"sqlite:///{Path(args.sqlite_path).resolve()}"
        else:
            pg_settings = _create_pg_database(args.postgres_url, args.pg_database)
            _, system_database_url = _pg_urls(args.postgres_url, args.pg_database)
        try:
            measured = asyncio.run(_measure(args, system_database_url))
        finally:
            if args.backend == "sqlite":
                for suffix in ("", "-journal", "-wal", "-shm"):
                    Path(args.sqlite_path + suffix).unlink(missing_ok=True)
            else:
                _drop_pg_database(args.postgres_url, args.pg_database)
    except DbosUnavailable as e:
        print(json.dumps({_ERROR_KEY: {"kind": "unavailable", "message": str(e)}}), flush=True)
        return 3
    except Exception as e:
        print(json.dumps({_ERROR_KEY: {"kind": "failed", "message": repr(e)}}), flush=True)
        raise

    details = measured["details"]
    details["dbos_version"] = version
    if args.backend == "sqlite":
        storage = (
            f"SQLite file, DBOS defaults: journal_mode={details.get('sqlite_journal_mode', '?')}, "
            f"synchronous={details.get('sqlite_synchronous', '?')} (2 is FULL), BEGIN IMMEDIATE; "
            "not WAL"
        )
    else:
        details.update({f"pg_{k}": v for k, v in pg_settings.items()})
        storage = (
            f"PostgreSQL {pg_settings.get('server_version', '?')} throwaway database, psycopg 3, "
            f"synchronous_commit={pg_settings.get('synchronous_commit', '?')}, "
            f"fsync={pg_settings.get('fsync', '?')}"
        )
    note = (
        f"dbos {version}, async API (async @DBOS.workflow awaiting an async @DBOS.step returning "
        f"1), sequential workflows, {args.warmup} warm-up; {storage}; no OTLP, no Conductor, no "
        f"admin server; {measured['replay_note']}"
    )
    result = {
        "backend": args.backend,
        "steps": args.steps,
        "workflows": args.workflows,
        "step_p50_ms": measured["step_p50_ms"],
        "step_p99_ms": measured["step_p99_ms"],
        "workflow_p50_ms": measured["workflow_p50_ms"],
        "replay_ms": measured["replay_ms"],
        "note": note,
        "details": details,
    }
    print(json.dumps({_RESULT_KEY: result}), flush=True)
    return 0


# --- CLI ---------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per workflow (100)")
    parser.add_argument("--workflows", type=int, default=20, help="measured workflows (20)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured workflows first (2)")
    parser.add_argument(
        "--replay-steps", type=int, default=REPLAY_STEPS,
        help=f"steps of the workflow replayed by fork ({REPLAY_STEPS}; 0 skips)",
    )
    parser.add_argument("--only", choices=BACKENDS, help="one backend only")
    parser.add_argument(
        "--postgres-url", default=None,
        help=f"PostgreSQL server (RUNTARA_TEST_DATABASE_URL, else {DEFAULT_PG_URL})",
    )
    parser.add_argument("--timeout", type=float, default=CHILD_TIMEOUT_S, help="per backend, s")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--sqlite-path", help=argparse.SUPPRESS)
    parser.add_argument("--pg-database", help=argparse.SUPPRESS)
    parser.add_argument("--drop-pg-database", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child:
        return _child_main(args)
    if args.drop_pg_database:
        _drop_pg_database(args.postgres_url or default_postgres_url(), args.drop_pg_database)
        return 0

    postgres_url = args.postgres_url or default_postgres_url()
    backends = (args.only,) if args.only else BACKENDS
    results: list[DbosResult] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dbos-baseline-") as scratch:
        for backend in backends:
            try:
                results.append(
                    run_dbos(
                        backend,
                        workdir=Path(scratch),
                        postgres_url=postgres_url,
                        steps=args.steps,
                        workflows=args.workflows,
                        warmup=args.warmup,
                        replay_steps=args.replay_steps,
                        timeout_s=args.timeout,
                    )
                )
            except DbosUnavailable as e:
                skipped.append(f"skipped {e}")

    header = (
        f"{'backend':<9} {'steps':>5} {'wfs':>4} {'step p50 ms':>11} {'step p99 ms':>11} "
        f"{'wf p50 ms':>9} {'wf p99 ms':>9} {'replay ms':>9} {'replay/step':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        d = r.details
        print(
            f"{r.backend:<9} {r.steps:>5} {r.workflows:>4} {_fmt(r.step_p50_ms):>11} "
            f"{_fmt(r.step_p99_ms):>11} {_fmt(r.workflow_p50_ms):>9} "
            f"{_fmt(d.get('workflow_p99_ms')):>9} {_fmt(r.replay_ms):>9} "
            f"{_fmt(d.get('replay_per_step_p50_ms')):>11}"
        )
    for line in skipped:
        print(line)
    for r in results:
        d = r.details
        print(f"\n{r.backend}: {r.note}")
        print(
            f"  step mean {d['step_mean_ms']:.3f} ms, p90 {d['step_p90_ms']:.3f}, max "
            f"{d['step_max_ms']:.1f}; DBOS process CPU {d['cpu_per_step_ms']:.3f} ms/step"
        )
        print(
            f"  workflow overhead beyond its steps p50 {d['workflow_overhead_p50_ms']:.2f} ms; "
            f"re-invoke of a completed id {d['rerun_same_id_ms']:.2f} ms (recorded output, body "
            "not run)"
        )
        if r.replay_ms is not None:
            print(
                f"  replay of {d['replay_steps']} steps: loop {r.replay_ms:.1f} ms (all: "
                f"{d['replay_all_ms']}), fork call {d['fork_call_ms']:.1f} ms, dispatch "
                f"{d['fork_dispatch_ms']:.1f} ms, fork to result {d['fork_end_to_end_ms']:.1f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
