"""``Persistence`` on one SQLite file through aiosqlite (the embedded default).

Each aiosqlite call hops to the connection's thread and back (~80 us), so every method runs its
whole transaction as one synchronous function on that thread: one hop per call, and no other
task's statements can interleave with it. Writes use BEGIN IMMEDIATE, which takes the write lock
up front: several processes sharing the file queue on ``busy_timeout`` instead of failing on a
lock upgrade. WAL lets readers in other processes proceed during a write. Writes that queue up
while one commits are committed together (``_GroupCommit``): one fsync for the group.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from runtara_core.errors import Conflict
from runtara_core.persistence import rules
from runtara_core.persistence.base import Persistence
from runtara_core.persistence.migrations import apply_sqlite, load_migrations
from runtara_core.persistence.records import (
    CUSTOM_SIGNAL_COLUMNS,
    EVENT_COLUMNS,
    IMAGE_COLUMNS,
    INSTANCE_COLUMNS,
    INSTANCE_STATUS_COLUMNS,
    SIGNAL_COLUMNS,
    checkpoint_from_record,
    custom_signal_from_record,
    encode_json,
    event_from_record,
    image_from_record,
    instance_from_record,
    instance_status_from_record,
    signal_from_record,
)
from runtara_core.persistence.rows import (
    NO_UPDATE,
    CheckpointRow,
    CheckpointSaveResult,
    CustomSignalConsumed,
    CustomSignalEnqueued,
    CustomSignalRow,
    EventRow,
    HibernateResult,
    ImageRow,
    InstanceFilter,
    InstanceRow,
    InstanceStatus,
    InstanceStatusRow,
    InstanceUpdate,
    NewEvent,
    NewImage,
    NewInstance,
    Page,
    ProcessExit,
    ReplayEntry,
    SignalOutcome,
    SignalRow,
    SignalType,
    TerminationReason,
)
from runtara_core.persistence.rules import Clock, wall_clock_ms
from runtara_core.persistence.sqlbuild import (
    NEXT_WAKE_AT,
    count_events_statement,
    Params,
    claim_due_statement,
    claim_signal_waiters_statement,
    count_active_statement,
    list_instances_queries,
    record_exit_statement,
    transition_statement,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
STATUS_BATCH = 500
"""Ids per statement in ``get_instance_statuses``."""
Tx = Callable[[sqlite3.Connection], T]


class _Connection(aiosqlite.Connection):
    """An aiosqlite connection that can run a whole transaction in one hop to its thread.

    aiosqlite has no public hook for "run this callable on your thread"; its own cursors use
    ``_execute``, and this subclass exposes exactly that, typed.
    """

    async def run(self, fn: Tx[T]) -> T:
        result: T = await self._execute(fn, self._conn)  # type: ignore[no-untyped-call]
        return result


def _connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    # isolation_level=None: autocommit, so BEGIN/COMMIT are ours and explicit.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    _enable_wal(conn, busy_timeout_ms)
    # FULL: in WAL mode NORMAL may lose the last commits on power failure, and an acknowledged
    # checkpoint must never be lost (its step would run twice).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Switch the file to WAL (a no-op once it is).

    The switch needs an exclusive lock and SQLite reports BUSY at once instead of waiting on
    busy_timeout, which happens when two processes open a new file together: retry until the
    timeout.
    """
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
            continue
        if mode != "wal":
            log.warning("SQLite journal mode is %s, not wal (an in-memory database?)", mode)
        return


def _group_tx(fns: list[Tx[Any]], conn: sqlite3.Connection) -> list[Any]:
    """Run several write transactions as one: one BEGIN, one COMMIT, one fsync.

    Each function runs inside its own savepoint, so one that raises is rolled back alone and
    gets its exception, exactly as if it had run in a transaction of its own; the others commit.
    The result list holds each function's return value or exception. If the COMMIT itself
    fails, the whole group fails with it (nothing was committed). A group of one (the idle
    store's usual case, on the checkpoint path) needs no savepoint: its ROLLBACK undoes it.
    """
    if len(fns) == 1:
        return [_lone_tx(fns[0], conn)]
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[Any] = []
    try:
        for fn in fns:
            conn.execute("SAVEPOINT one")
            try:
                outcomes.append(fn(conn))
            except Exception as exc:
                conn.execute("ROLLBACK TO one")
                outcomes.append(exc)
            conn.execute("RELEASE one")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _lone_tx(fn: Tx[Any], conn: sqlite3.Connection) -> Any:
    """One write transaction; its exception is returned, as ``_group_tx`` returns them."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return exc
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


class _GroupCommit:
    """Write transactions that arrive while one is being committed go together in the next.

    SQLite has one writer, and with synchronous=FULL every commit waits for an fsync: under
    load, committing what queued up meanwhile as one transaction turns N fsyncs and N thread
    hops into one of each. A write that finds the store idle commits at once, on its own
    caller's task (no extra task or future), so latency is unchanged when there is no queue.
    """

    MAX_GROUP = 256

    def __init__(self, db: _Connection) -> None:
        self._db = db
        self._queue: list[tuple[Tx[Any], asyncio.Future[Any]]] = []
        self._busy = False

    async def run(self, fn: Tx[T]) -> T:
        if self._busy:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._queue.append((fn, future))
            return await future
        self._busy = True
        try:
            (outcome,) = await self._db.run(partial(_group_tx, [fn]))
        finally:
            if self._queue:
                asyncio.ensure_future(self._drain())  # stays busy until the queue is empty
            else:
                self._busy = False
        if isinstance(outcome, Exception):
            raise outcome
        result: T = outcome
        return result

    async def _drain(self) -> None:
        try:
            while self._queue:
                group = self._queue[: self.MAX_GROUP]
                del self._queue[: self.MAX_GROUP]
                try:
                    outcomes = await self._db.run(partial(_group_tx, [fn for fn, _ in group]))
                except BaseException as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if future.done():  # the caller was cancelled; its write stands
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._busy = False
            for _, future in self._queue:  # only if cancelled mid-drain (the store is closing)
                if not future.done():
                    future.set_exception(ConnectionError("the SQLite store is closing"))
            self._queue.clear()


def _read_tx(fn: Tx[T], conn: sqlite3.Connection) -> T:
    """A deferred transaction: several SELECTs see one snapshot."""
    conn.execute("BEGIN")
    try:
        return fn(conn)
    finally:
        conn.execute("COMMIT")


def _one(conn: sqlite3.Connection, sql: str, *args: Any) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
    return row


def _all(conn: sqlite3.Connection, sql: str, *args: Any) -> list[sqlite3.Row]:
    return conn.execute(sql, args).fetchall()


def _require_instance(conn: sqlite3.Connection, instance_id: str) -> None:
    if _one(conn, "SELECT 1 FROM instances WHERE instance_id = ?", instance_id) is None:
        raise rules.instance_not_found(instance_id)


def _admit(conn: sqlite3.Connection, instance_id: str, attempt: int | None) -> None:
    """The launch fence, inside the write's transaction: NotFound if there is no instance,
    InvalidState unless it admits a write from launch ``attempt`` (None: any)."""
    row = _one(conn, "SELECT status, attempt FROM instances WHERE instance_id = ?", instance_id)
    if row is None:
        raise rules.instance_not_found(instance_id)
    rules.check_launch(instance_id, row["status"], row["attempt"], attempt)


def _transition(
    conn: sqlite3.Connection,
    sql: str,
    values: list[Any],
    refusal: Callable[[str | None, int | None], Exception],
    instance_id: str,
    event: NewEvent | None,
    now: int,
) -> InstanceRow:
    """Run a compare-and-set ``transition_statement``; on a miss raise ``refusal(status,
    attempt)`` of the instance as it is; else append ``event`` and return the new row."""
    row = conn.execute(sql, values).fetchone()
    if row is None:
        actual = _one(
            conn, "SELECT status, attempt FROM instances WHERE instance_id = ?", instance_id
        )
        if actual is None:
            raise rules.instance_not_found(instance_id)
        raise refusal(actual["status"], actual["attempt"])
    if event is not None:
        _insert_event(conn, instance_id, event, now)
    return instance_from_record(row)


def _update_instance(conn: sqlite3.Connection, instance_id: str, sql_set: str, *args: Any) -> None:
    """``UPDATE instances SET <sql_set>`` for one instance; NotFound if there is none."""
    cursor = conn.execute(
        f"UPDATE instances SET {sql_set} WHERE instance_id = ?", (*args, instance_id)
    )
    if cursor.rowcount == 0:
        raise rules.instance_not_found(instance_id)


def _insert_checkpoint(
    conn: sqlite3.Connection, instance_id: str, checkpoint_id: str, state: bytes, now: int
) -> bool:
    """Save-if-absent plus the instance's latest-checkpoint pointer; True if this call saved."""
    cursor = conn.execute(
        "INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at_ms) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (instance_id, checkpoint_id) DO NOTHING",
        (instance_id, checkpoint_id, state, now),
    )
    if cursor.rowcount == 0:
        return False
    conn.execute(
        "UPDATE instances SET checkpoint_id = ? WHERE instance_id = ?", (checkpoint_id, instance_id)
    )
    return True


def _checkpoint_state(
    conn: sqlite3.Connection, instance_id: str, checkpoint_id: str
) -> bytes | None:
    row = _one(
        conn,
        "SELECT state FROM checkpoints WHERE instance_id = ? AND checkpoint_id = ?",
        instance_id,
        checkpoint_id,
    )
    return None if row is None else row["state"]


def _pending_signal(conn: sqlite3.Connection, instance_id: str) -> SignalRow | None:
    row = _one(conn, f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE instance_id = ?", instance_id)
    return None if row is None else signal_from_record(row)


def _signal_queued(conn: sqlite3.Connection, instance_id: str, name: str) -> bool:
    """Whether an unconsumed custom signal ``name`` is queued for the instance."""
    row = _one(
        conn,
        "SELECT 1 FROM custom_signals WHERE instance_id = ? AND name = ? "
        "AND consumed_at_ms IS NULL LIMIT 1",
        instance_id,
        name,
    )
    return row is not None


def _claim_signal_waiters(
    conn: sqlite3.Connection, now: int, instance_id: str | None, limit: int
) -> list[InstanceRow]:
    params = Params(postgres=False)
    sql = claim_signal_waiters_statement(params, rules.plan_wake(now), instance_id, limit)
    return [instance_from_record(r) for r in conn.execute(sql, params.values)]


class SqlitePersistence(Persistence):
    """Use ``open()``; the constructor only wraps an already opened connection."""

    def __init__(
        self,
        db: _Connection,
        *,
        clock: Clock = wall_clock_ms,
        migrations_dir: Path | None = None,
    ) -> None:
        self._db = db
        self._writes = _GroupCommit(db)
        self._clock = clock
        self._migrations_dir = migrations_dir

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: Clock = wall_clock_ms,
        migrations_dir: Path | None = None,
        apply_migrations: bool = True,
        busy_timeout_ms: int = 10_000,
    ) -> SqlitePersistence:
        """Open (creating if needed) the database file at ``path``, then migrate it."""
        db = _Connection(partial(_connect, str(path), busy_timeout_ms), iter_chunk_size=64)
        await db
        store = cls(db, clock=clock, migrations_dir=migrations_dir)
        try:
            if apply_migrations:
                await store.migrate()
        except BaseException:
            await db.close()
            raise
        log.debug("opened SQLite database %s", path)
        return store

    async def _write(self, fn: Tx[T]) -> T:
        return await self._writes.run(fn)

    async def _read(self, fn: Tx[T]) -> T:
        return await self._db.run(fn)

    async def _read_snapshot(self, fn: Tx[T]) -> T:
        return await self._db.run(partial(_read_tx, fn))

    # ------------------------------------------------------------------ lifecycle

    async def migrate(self) -> list[str]:
        migrations = load_migrations("sqlite", self._migrations_dir)
        return await self._db.run(partial(apply_sqlite, migrations=migrations, clock=self._clock))

    async def close(self) -> None:
        await self._db.close()

    # ------------------------------------------------------------------ instances

    async def create_instance(self, new: NewInstance) -> tuple[InstanceRow, bool]:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> tuple[InstanceRow, bool]:
            row = _one(
                conn,
                "INSERT INTO instances (instance_id, tenant, image_id, image_name, image_version, "
                "status, max_attempts, input, created_at_ms, updated_at_ms, node_id, priority, "
                "timeout_ms, env) "
                "SELECT ?, tenant, image_id, name, version, 'pending', ?, ?, ?, ?, ?, ?, ?, ? "
                "FROM images WHERE image_id = ? "
                f"ON CONFLICT (instance_id) DO NOTHING RETURNING {INSTANCE_COLUMNS}",
                new.instance_id,
                new.max_attempts,
                new.input,
                now,
                now,
                new.node_id,
                new.priority,
                new.timeout_ms,
                encode_json(new.env),
                new.image_id,
            )
            if row is not None:
                return instance_from_record(row), True
            existing = _one(
                conn,
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?",
                new.instance_id,
            )
            image = _one(conn, "SELECT tenant FROM images WHERE image_id = ?", new.image_id)
            stored = rules.check_start(
                new,
                None if image is None else image["tenant"],
                None if existing is None else instance_from_record(existing),
            )
            return stored, False

        return await self._write(tx)

    async def get_instance(self, instance_id: str) -> InstanceRow | None:
        def tx(conn: sqlite3.Connection) -> InstanceRow | None:
            row = _one(
                conn, f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?", instance_id
            )
            return None if row is None else instance_from_record(row)

        return await self._read(tx)

    async def get_instance_statuses(self, instance_ids: Collection[str]) -> list[InstanceStatusRow]:
        ids = sorted(set(instance_ids))

        def tx(conn: sqlite3.Connection) -> list[InstanceStatusRow]:
            found: list[InstanceStatusRow] = []
            for start in range(0, len(ids), STATUS_BATCH):  # well under SQLite's variable limit
                chunk = ids[start : start + STATUS_BATCH]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT {INSTANCE_STATUS_COLUMNS} FROM instances WHERE instance_id IN ({marks})"
                found.extend(instance_status_from_record(r) for r in conn.execute(sql, chunk))
            return found

        if not ids:
            return []
        return await self._read_snapshot(tx)

    async def list_instances(self, filter: InstanceFilter) -> Page[InstanceRow]:
        (page_sql, page_args), (count_sql, count_args) = list_instances_queries(
            filter, postgres=False
        )

        def tx(conn: sqlite3.Connection) -> Page[InstanceRow]:
            total = conn.execute(count_sql, count_args).fetchone()[0]
            items = tuple(instance_from_record(r) for r in conn.execute(page_sql, page_args))
            return Page(items, total)

        return await self._read_snapshot(tx)

    async def count_by_status(self, tenant: str | None = None) -> dict[InstanceStatus, int]:
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())

        def tx(conn: sqlite3.Connection) -> dict[InstanceStatus, int]:
            counts = dict.fromkeys(InstanceStatus, 0)
            for status, count in conn.execute(
                f"SELECT status, COUNT(*) FROM instances {where} GROUP BY status", args
            ):
                counts[InstanceStatus(status)] = count
            return counts

        return await self._read(tx)

    async def transition(
        self,
        instance_id: str,
        expected: Collection[InstanceStatus],
        new: InstanceStatus,
        *,
        reason: TerminationReason | None = None,
        update: InstanceUpdate = NO_UPDATE,
        event: NewEvent | None = None,
        attempt: int | None = None,
    ) -> InstanceRow:
        allowed = rules.check_expected(expected)
        now = self._clock()
        params = Params(postgres=False)
        sql = transition_statement(
            params, instance_id, allowed, rules.plan_transition(new, reason, update, now), attempt
        )

        def refusal(status: str | None, actual_attempt: int | None) -> Exception:
            return rules.transition_refused(
                instance_id, status, allowed, new, actual_attempt=actual_attempt, attempt=attempt
            )

        return await self._write(
            lambda c: _transition(c, sql, params.values, refusal, instance_id, event, now)
        )

    async def hibernate(
        self,
        instance_id: str,
        *,
        attempt: int,
        reason: TerminationReason,
        wake_at_ms: int | None,
        waiting_signal_name: str | None = None,
        event: NewEvent | None = None,
    ) -> HibernateResult:
        reason = rules.check_hibernation(reason, waiting_signal_name)
        now = self._clock()
        update = InstanceUpdate(wake_at_ms=wake_at_ms, waiting_signal_name=waiting_signal_name)
        params = Params(postgres=False)
        new = InstanceStatus.SUSPENDED
        allowed = frozenset({InstanceStatus.RUNNING})
        sql = transition_statement(
            params, instance_id, allowed, rules.plan_transition(new, reason, update, now), attempt
        )

        def refusal(status: str | None, actual_attempt: int | None) -> Exception:
            return rules.launch_refused(instance_id, status, actual_attempt, attempt)

        def tx(conn: sqlite3.Connection) -> HibernateResult:
            current = _one(
                conn, f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?", instance_id
            )
            if current is None:
                raise rules.instance_not_found(instance_id)
            rules.check_launch(instance_id, current["status"], current["attempt"], attempt)
            slot = _pending_signal(conn, instance_id)
            queued = waiting_signal_name is not None and _signal_queued(
                conn, instance_id, waiting_signal_name
            )
            if rules.hibernation_blocked(None if slot is None else slot.signal_type, queued):
                return HibernateResult(False, slot, instance_from_record(current))
            row = _transition(conn, sql, params.values, refusal, instance_id, event, now)
            return HibernateResult(True, slot, row)

        return await self._write(tx)

    # ------------------------------------------------------------------ liveness and metrics

    async def touch_heartbeat(self, instance_id: str, *, attempt: int | None = None) -> None:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> None:
            if attempt is not None:
                _admit(conn, instance_id, attempt)
            _update_instance(conn, instance_id, "heartbeat_at_ms = ?", now)

        await self._write(tx)

    async def record_process(self, instance_id: str, pid: int, pid_create_time: float) -> None:
        now = self._clock()
        await self._write(
            lambda c: _update_instance(
                c,
                instance_id,
                "pid = ?, pid_create_time = ?, updated_at_ms = ?",
                pid,
                pid_create_time,
                now,
            )
        )

    async def record_exit_metrics(self, instance_id: str, exit: ProcessExit) -> None:
        params = Params(postgres=False)
        sql = record_exit_statement(params, instance_id, exit, self._clock())

        def tx(conn: sqlite3.Connection) -> None:
            if conn.execute(sql, params.values).rowcount == 0:
                raise rules.instance_not_found(instance_id)

        await self._write(tx)

    async def find_stale_running(
        self, heartbeat_before_ms: int, limit: int = 1000
    ) -> list[InstanceRow]:
        def tx(conn: sqlite3.Connection) -> list[InstanceRow]:
            rows = _all(
                conn,
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE status = 'running' "
                "AND COALESCE(heartbeat_at_ms, started_at_ms, created_at_ms) < ? "
                "ORDER BY instance_id LIMIT ?",
                heartbeat_before_ms,
                limit,
            )
            return [instance_from_record(r) for r in rows]

        return await self._read(tx)

    # ------------------------------------------------------------------ checkpoints

    async def save_checkpoint_if_absent(
        self, instance_id: str, checkpoint_id: str, state: bytes, *, attempt: int | None = None
    ) -> CheckpointSaveResult:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> CheckpointSaveResult:
            if attempt is not None:
                _admit(conn, instance_id, attempt)
            _update_instance(conn, instance_id, "heartbeat_at_ms = ?", now)
            saved = _insert_checkpoint(conn, instance_id, checkpoint_id, state, now)
            stored = state if saved else _checkpoint_state(conn, instance_id, checkpoint_id)
            assert stored is not None
            return CheckpointSaveResult(saved, stored, _pending_signal(conn, instance_id))

        return await self._write(tx)

    async def get_checkpoint(self, instance_id: str, checkpoint_id: str) -> CheckpointRow | None:
        def tx(conn: sqlite3.Connection) -> CheckpointRow | None:
            row = _one(
                conn,
                "SELECT seq, instance_id, checkpoint_id, state, length(state) AS size_bytes, "
                "created_at_ms FROM checkpoints WHERE instance_id = ? AND checkpoint_id = ?",
                instance_id,
                checkpoint_id,
            )
            return None if row is None else checkpoint_from_record(row)

        return await self._read(tx)

    async def list_checkpoints(
        self, instance_id: str, *, limit: int = 100, offset: int = 0, with_state: bool = False
    ) -> Page[CheckpointRow]:
        state = "state" if with_state else "NULL AS state"

        def tx(conn: sqlite3.Connection) -> Page[CheckpointRow]:
            total = _one(
                conn, "SELECT COUNT(*) FROM checkpoints WHERE instance_id = ?", instance_id
            )
            rows = _all(
                conn,
                f"SELECT seq, instance_id, checkpoint_id, {state}, length(state) AS size_bytes, "
                "created_at_ms FROM checkpoints WHERE instance_id = ? "
                "ORDER BY seq LIMIT ? OFFSET ?",
                instance_id,
                limit,
                offset,
            )
            assert total is not None
            return Page(tuple(checkpoint_from_record(r) for r in rows), total[0])

        return await self._read_snapshot(tx)

    async def replay_history(self, instance_id: str, state_budget_bytes: int) -> list[ReplayEntry]:
        def tx(conn: sqlite3.Connection) -> list[ReplayEntry]:
            sized = _all(
                conn,
                "SELECT checkpoint_id, length(state) FROM checkpoints WHERE instance_id = ? "
                "ORDER BY seq",
                instance_id,
            )
            fits = rules.replay_prefix((size for _, size in sized), state_budget_bytes)
            states = [
                r[0]
                for r in _all(
                    conn,
                    "SELECT state FROM checkpoints WHERE instance_id = ? ORDER BY seq LIMIT ?",
                    instance_id,
                    fits,
                )
            ]
            return [
                ReplayEntry(cid, states[i] if i < fits else None)
                for i, (cid, _) in enumerate(sized)
            ]

        return await self._read_snapshot(tx)

    # ------------------------------------------------------------------ events

    async def append_event(
        self, instance_id: str, event: NewEvent, *, attempt: int | None = None
    ) -> EventRow:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> EventRow:
            _admit(conn, instance_id, attempt)
            return _insert_event(conn, instance_id, event, now)

        return await self._write(tx)

    async def list_events(
        self, instance_id: str, *, after_id: int = 0, limit: int = 100
    ) -> list[EventRow]:
        def tx(conn: sqlite3.Connection) -> list[EventRow]:
            rows = _all(
                conn,
                f"SELECT {EVENT_COLUMNS} FROM events WHERE instance_id = ? AND id > ? "
                "ORDER BY id LIMIT ?",
                instance_id,
                after_id,
                limit,
            )
            return [event_from_record(r) for r in rows]

        return await self._read(tx)

    async def count_events(self, instance_id: str, *, after_id: int = 0) -> int:
        params = Params(postgres=False)
        sql = count_events_statement(params, instance_id, after_id)

        def tx(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, params.values).fetchone()[0])

        return await self._read(tx)

    # ------------------------------------------------------------------ instance-wide signals

    async def put_signal(
        self, instance_id: str, signal_type: SignalType, payload: bytes = b""
    ) -> SignalRow:
        incoming = SignalType(signal_type)
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> SignalRow:
            _require_instance(conn, instance_id)
            current = _pending_signal(conn, instance_id)
            if not rules.signal_takes_slot(
                None if current is None else current.signal_type, incoming
            ):
                assert current is not None
                return current
            row = _one(
                conn,
                "INSERT INTO signals (instance_id, signal_type, payload, created_at_ms) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (instance_id) DO UPDATE SET "
                "signal_type = excluded.signal_type, payload = excluded.payload, "
                f"created_at_ms = excluded.created_at_ms RETURNING {SIGNAL_COLUMNS}",
                instance_id,
                incoming,
                payload,
                now,
            )
            assert row is not None
            return signal_from_record(row)

        return await self._write(tx)

    async def pending_signal(self, instance_id: str) -> SignalRow | None:
        return await self._read(lambda c: _pending_signal(c, instance_id))

    async def ack_signal(
        self,
        instance_id: str,
        signal_type: SignalType,
        *,
        outcome: SignalOutcome | None = None,
        attempt: int | None = None,
    ) -> bool:
        acked = SignalType(signal_type)
        now = self._clock()
        params = Params(postgres=False)
        sql = ""
        if outcome is not None:
            sql = transition_statement(
                params,
                instance_id,
                [InstanceStatus.RUNNING],
                rules.plan_transition(outcome.status, outcome.reason, NO_UPDATE, now),
                attempt,
            )

        def refusal(status: str | None, actual_attempt: int | None) -> Exception:
            assert outcome is not None
            return rules.transition_refused(
                instance_id,
                status,
                [InstanceStatus.RUNNING],
                InstanceStatus(outcome.status),
                actual_attempt=actual_attempt,
                attempt=attempt,
            )

        def tx(conn: sqlite3.Connection) -> bool:
            # The write lock is held from the first statement: the slot read here is the slot
            # this transaction clears, whatever put_signal calls are waiting.
            cursor = conn.execute(
                "DELETE FROM signals WHERE instance_id = ? AND signal_type = ?",
                (instance_id, acked),
            )
            if cursor.rowcount == 0:
                return False
            # Raising rolls the DELETE back with everything else: the slot stays.
            if outcome is not None:
                event = outcome.event
                _transition(conn, sql, params.values, refusal, instance_id, event, now)
            elif attempt is not None:
                _admit(conn, instance_id, attempt)
            return True

        return await self._write(tx)

    # ------------------------------------------------------------------ custom signals

    async def enqueue_custom_signal(
        self, instance_id: str, name: str, payload: bytes
    ) -> CustomSignalEnqueued:
        rules.check_custom_signal_payload(payload)
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> CustomSignalEnqueued:
            row = _one(
                conn,
                "INSERT INTO custom_signals (instance_id, name, payload, created_at_ms) "
                "SELECT instance_id, ?, ?, ? FROM instances WHERE instance_id = ? "
                f"RETURNING {CUSTOM_SIGNAL_COLUMNS}",
                name,
                payload,
                now,
                instance_id,
            )
            if row is None:
                raise rules.instance_not_found(instance_id)
            woken = _claim_signal_waiters(conn, now, instance_id, 1)
            return CustomSignalEnqueued(custom_signal_from_record(row), woken[0] if woken else None)

        return await self._write(tx)

    async def consume_custom_signal(
        self,
        instance_id: str,
        name: str,
        checkpoint_id: str,
        *,
        attempt: int | None = None,
        queued_by_ms: int | None = None,
    ) -> CustomSignalConsumed:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> CustomSignalConsumed:
            if attempt is not None:
                _admit(conn, instance_id, attempt)
            _update_instance(conn, instance_id, "heartbeat_at_ms = ?", now)
            stored = _checkpoint_state(conn, instance_id, checkpoint_id)
            if stored is not None:
                return CustomSignalConsumed(found=True, payload=stored, replayed=True)
            oldest = _one(
                conn,
                "SELECT id, payload FROM custom_signals WHERE instance_id = ? AND name = ? "
                "AND consumed_at_ms IS NULL AND (? IS NULL OR created_at_ms <= ?) ORDER BY id LIMIT 1",
                instance_id,
                name,
                queued_by_ms,
                queued_by_ms,
            )
            if oldest is None:
                return CustomSignalConsumed(found=False, payload=None, replayed=False)
            conn.execute(
                "UPDATE custom_signals SET consumed_at_ms = ?, consumed_by_checkpoint_id = ? "
                "WHERE id = ?",
                (now, checkpoint_id, oldest["id"]),
            )
            _insert_checkpoint(conn, instance_id, checkpoint_id, oldest["payload"], now)
            return CustomSignalConsumed(found=True, payload=oldest["payload"], replayed=False)

        return await self._write(tx)

    async def list_custom_signals(
        self, instance_id: str, *, include_consumed: bool = False, limit: int = 100
    ) -> list[CustomSignalRow]:
        unconsumed = "" if include_consumed else "AND consumed_at_ms IS NULL "

        def tx(conn: sqlite3.Connection) -> list[CustomSignalRow]:
            rows = _all(
                conn,
                f"SELECT {CUSTOM_SIGNAL_COLUMNS} FROM custom_signals WHERE instance_id = ? "
                f"{unconsumed}ORDER BY id LIMIT ?",
                instance_id,
                limit,
            )
            return [custom_signal_from_record(r) for r in rows]

        return await self._read(tx)

    # ------------------------------------------------------------------ wake-ups

    async def claim_due_wakeups(self, now_ms: int, limit: int = 100, *, lead_ms: int = 0) -> list[InstanceRow]:
        params = Params(postgres=False)
        sql = claim_due_statement(params, rules.plan_wake(self._clock()), now_ms, limit, lead_ms)

        def tx(conn: sqlite3.Connection) -> list[InstanceRow]:
            return [instance_from_record(r) for r in conn.execute(sql, params.values)]

        return await self._write(tx)

    async def claim_signal_waiters(
        self, instance_id: str | None = None, limit: int = 100
    ) -> list[InstanceRow]:
        now = self._clock()
        return await self._write(lambda c: _claim_signal_waiters(c, now, instance_id, limit))

    async def next_wake_at(self) -> int | None:
        def tx(conn: sqlite3.Connection) -> int | None:
            row = _one(conn, NEXT_WAKE_AT)
            return None if row is None else row[0]

        return await self._read(tx)

    # ------------------------------------------------------------------ images

    async def create_image(self, new: NewImage) -> ImageRow:
        now = self._clock()

        def tx(conn: sqlite3.Connection) -> ImageRow:
            try:
                row = _one(
                    conn,
                    "INSERT INTO images (image_id, tenant, name, version, description, "
                    "entrypoint, input_schema, metadata, sha256, size_bytes, created_at_ms, "
                    "filename) "
                    "SELECT ?, ?, ?, COALESCE(MAX(version), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ? "
                    f"FROM images WHERE tenant = ? AND name = ? RETURNING {IMAGE_COLUMNS}",
                    new.image_id,
                    new.tenant,
                    new.name,
                    new.description,
                    new.entrypoint,
                    encode_json(new.input_schema),
                    encode_json(new.metadata),
                    new.sha256,
                    new.size_bytes,
                    now,
                    new.filename,
                    new.tenant,
                    new.name,
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"image id {new.image_id!r} is already in use") from exc
            assert row is not None
            return image_from_record(row)

        return await self._write(tx)

    async def get_image(self, image_id: str, tenant: str | None = None) -> ImageRow | None:
        def tx(conn: sqlite3.Connection) -> ImageRow | None:
            row = _one(conn, f"SELECT {IMAGE_COLUMNS} FROM images WHERE image_id = ?", image_id)
            if row is None or (tenant is not None and row["tenant"] != tenant):
                return None
            return image_from_record(row)

        return await self._read(tx)

    async def latest_image(self, tenant: str, name: str) -> ImageRow | None:
        def tx(conn: sqlite3.Connection) -> ImageRow | None:
            row = _one(
                conn,
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE tenant = ? AND name = ? "
                "ORDER BY version DESC LIMIT 1",
                tenant,
                name,
            )
            return None if row is None else image_from_record(row)

        return await self._read(tx)

    async def list_images(
        self, tenant: str | None = None, *, name: str | None = None
    ) -> list[ImageRow]:
        conditions = [c for c, v in (("tenant = ?", tenant), ("name = ?", name)) if v is not None]
        args = [v for v in (tenant, name) if v is not None]
        where = " AND ".join(conditions) or "TRUE"

        def tx(conn: sqlite3.Connection) -> list[ImageRow]:
            rows = _all(
                conn,
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE {where} ORDER BY tenant, name, version",
                *args,
            )
            return [image_from_record(r) for r in rows]

        return await self._read(tx)

    async def delete_image(self, image_id: str, tenant: str | None = None) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            image = _one(conn, "SELECT tenant FROM images WHERE image_id = ?", image_id)
            rules.check_image_deletable(
                image_id,
                None if image is None else image["tenant"],
                tenant,
                _count_active(conn, image_id),
            )
            conn.execute("DELETE FROM images WHERE image_id = ?", (image_id,))

        await self._write(tx)

    async def count_active_instances_for_image(self, image_id: str) -> int:
        return await self._read(lambda c: _count_active(c, image_id))


def _count_active(conn: sqlite3.Connection, image_id: str) -> int:
    params = Params(postgres=False)
    return int(conn.execute(count_active_statement(params, image_id), params.values).fetchone()[0])


def _insert_event(
    conn: sqlite3.Connection, instance_id: str, event: NewEvent, now: int
) -> EventRow:
    row = _one(
        conn,
        "INSERT INTO events (instance_id, type, subtype, payload, created_at_ms) "
        f"VALUES (?, ?, ?, ?, ?) RETURNING {EVENT_COLUMNS}",
        instance_id,
        event.type,
        event.subtype,
        event.payload,
        now,
    )
    assert row is not None
    return event_from_record(row)
