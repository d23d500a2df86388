"""``Persistence`` on PostgreSQL through an asyncpg pool (production, several nodes).

Round trips are the cost here, so hot paths are single statements (a checkpoint save is one
statement that also refreshes liveness and reads the pending signal), and multi-statement
transactions are kept to paths that need a decision between statements.

Concurrency rules, all under READ COMMITTED:
- Per-instance writes that must not interleave (checkpoint saves, events, custom signals, the
  signal slot) first lock the instance row ``FOR NO KEY UPDATE``, as a status change's UPDATE
  does. Always that row first, so they cannot deadlock with each other, and that lock mode does
  not conflict with the KEY SHARE locks of foreign-key checks.
- Status changes are conditional UPDATEs; claims pick rows ``FOR NO KEY UPDATE SKIP LOCKED``.
- The launch fence (``attempt=``) is decided on the status and attempt read by that locking
  read, which in READ COMMITTED returns the row as its last writer committed it even when the
  rest of the statement reads an older snapshot; decisions that read other tables (hibernate,
  ack with an outcome) read them in a later statement, once the lock is held.
- Image versions of one (tenant, name) are numbered under a transaction advisory lock.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import asyncpg

from runtara_core.signal_notifier import SignalStored, Subscriber
from runtara_core.errors import BadRequest, Conflict
from runtara_core.persistence import rules
from runtara_core.persistence.base import Persistence
from runtara_core.persistence.migrations import apply_postgres, load_migrations
from runtara_core.persistence.signal_channel import (
    PostgresSignalListener,
    channel_name,
    encode_notification,
)
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

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# Class id of the two-key advisory locks that number image versions (any constant of our own).
_IMAGE_VERSION_LOCK = 0x52544931

# The launch fence in SQL (``rules.launch_admitted``) over the ``inst`` CTE of the statements
# below, which reads status and attempt under the instance row lock: a locking read in READ
# COMMITTED waits for a writer in flight and then returns the row as that writer committed it
# (not as of the statement's snapshot), so the fence sees the latest status and attempt.
# $n is the fenced attempt, NULL for an unfenced write.
def _admitted(n: int) -> str:
    return f"(${n}::bigint IS NULL OR (status = 'running' AND attempt = ${n}))"


# One round trip: lock the instance row and read its status and attempt (absent: no row, so
# nothing is inserted), insert unless the id exists or the fence ($5) refuses (ON CONFLICT waits
# for a concurrent inserter, then yields to it), refresh liveness and the latest-checkpoint
# pointer (only if admitted), and read the pending signal.
_SAVE_CHECKPOINT = f"""
WITH inst AS (
    SELECT instance_id, status, attempt FROM instances WHERE instance_id = $1 FOR NO KEY UPDATE
), admitted AS (
    SELECT instance_id FROM inst WHERE {_admitted(5)}
), saved AS (
    INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at_ms)
    SELECT instance_id, $2, $3, $4 FROM admitted
    ON CONFLICT (instance_id, checkpoint_id) DO NOTHING
    RETURNING checkpoint_id
), touched AS (
    UPDATE instances
    SET heartbeat_at_ms = $4,
        checkpoint_id = COALESCE((SELECT checkpoint_id FROM saved), instances.checkpoint_id)
    WHERE instance_id IN (SELECT instance_id FROM admitted)
)
SELECT i.status AS instance_status, i.attempt AS instance_attempt,
       EXISTS (SELECT 1 FROM saved) AS saved,
       s.instance_id, s.signal_type, s.payload, s.created_at_ms
FROM (SELECT 1) AS one LEFT JOIN inst i ON TRUE LEFT JOIN signals s ON s.instance_id = $1
"""

# The instance row lock, held to commit, makes the events of one instance commit in id order:
# a writer draws its id only once the previous writer (an append or a transition, whose UPDATE
# holds the same lock) has committed. Otherwise a watcher polling "id > cursor" could see a
# later id first, move its cursor past an earlier one still in flight, and never see it.
# The fence ($6) is decided on the locked row, in the same statement.
_INSERT_EVENT = f"""
WITH inst AS (
    SELECT instance_id, status, attempt FROM instances WHERE instance_id = $1 FOR NO KEY UPDATE
), logged AS (
    INSERT INTO events (instance_id, type, subtype, payload, created_at_ms)
    SELECT instance_id, $2, $3, $4, $5 FROM inst WHERE {_admitted(6)}
    RETURNING {EVENT_COLUMNS}
)
SELECT i.status AS instance_status, i.attempt AS instance_attempt, l.*
FROM inst i LEFT JOIN logged l ON TRUE
"""

# A fenced liveness refresh, one round trip: lock the row, read status and attempt, and write
# heartbeat_at_ms ($2) only if the launch ($3) is admitted. Returns the status and attempt the
# decision was made on (no row: no instance).
_FENCED_HEARTBEAT = f"""
WITH inst AS (
    SELECT instance_id, status, attempt FROM instances WHERE instance_id = $1 FOR NO KEY UPDATE
), touched AS (
    UPDATE instances SET heartbeat_at_ms = $2
    WHERE instance_id IN (SELECT instance_id FROM inst WHERE {_admitted(3)})
)
SELECT status, attempt FROM inst
"""


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pool connection released without asyncpg's reset query.

    asyncpg sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release: a full round trip per operation, for state this store never leaves behind. Pooled
    connections hold no session state between uses: settings come only from the connect-time
    ``server_settings``; LISTEN runs on a dedicated connection (``signal_channel``); the one
    session advisory lock (migrations) is unlocked in a ``finally``, and a lost connection drops
    it. An open transaction is still rolled back on release (asyncpg always does that).
    """

    def get_reset_query(self) -> str:
        return ""


class PostgresPersistence(Persistence):
    """Use ``open()``; the constructor only wraps an existing pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        clock: Clock = wall_clock_ms,
        schema: str | None = None,
        migrations_dir: Path | None = None,
        dsn: str | None = None,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._channel = channel_name(schema)
        self._clock = clock
        self._schema = schema
        self._migrations_dir = migrations_dir

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        clock: Clock = wall_clock_ms,
        schema: str | None = None,
        migrations_dir: Path | None = None,
        apply_migrations: bool = True,
        min_size: int = 1,
        max_size: int = 10,
    ) -> PostgresPersistence:
        """Connect a pool to ``dsn`` and migrate.

        ``schema`` puts every table in that schema (created if missing) through each
        connection's search_path: tests and tenants of one server stay apart.
        """
        server_settings: dict[str, str] = {}
        if schema is not None:
            if not _SCHEMA_NAME.match(schema):
                raise BadRequest(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
            server_settings["search_path"] = schema
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings=server_settings,
            connection_class=PooledConnection,
        )
        store = cls(pool, clock=clock, schema=schema, migrations_dir=migrations_dir, dsn=dsn)
        try:
            if apply_migrations:
                await store.migrate()
        except BaseException:
            await pool.close()
            raise
        log.debug("opened PostgreSQL pool (schema %s)", schema or "default")
        return store

    # ------------------------------------------------------------------ lifecycle

    async def migrate(self) -> list[str]:
        migrations = load_migrations("postgres", self._migrations_dir)
        async with self._pool.acquire() as conn:
            return await apply_postgres(conn, migrations, self._clock, self._schema)

    async def close(self) -> None:
        await self._pool.close()

    async def listen_signals(self, subscriber: Subscriber) -> PostgresSignalListener | None:
        if self._dsn is None:
            return None  # wraps a pool it did not open: no DSN for a dedicated connection
        listener = PostgresSignalListener(lambda: asyncpg.connect(self._dsn), self._channel, subscriber)
        await listener.start()
        return listener

    async def _notify(self, conn: asyncpg.Connection, event: SignalStored) -> None:
        """Queue a notification; PostgreSQL delivers it when (and only if) the transaction commits."""
        await conn.execute("SELECT pg_notify($1, $2)", self._channel, encode_notification(event))

    # ------------------------------------------------------------------ instances

    async def create_instance(self, new: NewInstance) -> tuple[InstanceRow, bool]:
        now = self._clock()
        async with self._pool.acquire() as conn:
            try:
                row = await conn.fetchrow(
                    "INSERT INTO instances (instance_id, tenant, image_id, image_name, "
                    "image_version, status, max_attempts, input, created_at_ms, updated_at_ms, "
                    "node_id, priority, timeout_ms, env) "
                    "SELECT $1, tenant, image_id, name, version, 'pending', $3, $4, $5, $5, $6, "
                    "$7, $8, $9 FROM images WHERE image_id = $2 "
                    f"ON CONFLICT (instance_id) DO NOTHING RETURNING {INSTANCE_COLUMNS}",
                    new.instance_id,
                    new.image_id,
                    new.max_attempts,
                    new.input,
                    now,
                    new.node_id,
                    new.priority,
                    new.timeout_ms,
                    encode_json(new.env),
                )
            except asyncpg.ForeignKeyViolationError:
                # The image was read, then deleted by a transaction that committed before the
                # foreign-key check: as good as never there.
                row = None
            if row is not None:
                return instance_from_record(row), True
            # Not inserted: the id exists (possibly just committed by a concurrent start) or
            # the image does not. A new statement sees what has committed since.
            existing = await conn.fetchrow(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1",
                new.instance_id,
            )
            image_tenant = await conn.fetchval(
                "SELECT tenant FROM images WHERE image_id = $1", new.image_id
            )
        stored = rules.check_start(
            new, image_tenant, None if existing is None else instance_from_record(existing)
        )
        return stored, False

    async def get_instance(self, instance_id: str) -> InstanceRow | None:
        row = await self._pool.fetchrow(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1", instance_id
        )
        return None if row is None else instance_from_record(row)

    async def get_instance_statuses(self, instance_ids: Collection[str]) -> list[InstanceStatusRow]:
        ids = sorted(set(instance_ids))
        if not ids:
            return []
        rows = await self._pool.fetch(
            f"SELECT {INSTANCE_STATUS_COLUMNS} FROM instances WHERE instance_id = ANY($1::text[])", ids
        )
        return [instance_status_from_record(r) for r in rows]

    async def list_instances(self, filter: InstanceFilter) -> Page[InstanceRow]:
        (page_sql, page_args), (count_sql, count_args) = list_instances_queries(
            filter, postgres=True
        )
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            total = await conn.fetchval(count_sql, *count_args)
            rows = await conn.fetch(page_sql, *page_args)
        return Page(tuple(instance_from_record(r) for r in rows), total)

    async def count_by_status(self, tenant: str | None = None) -> dict[InstanceStatus, int]:
        where, args = ("WHERE tenant = $1", (tenant,)) if tenant is not None else ("", ())
        rows = await self._pool.fetch(
            f"SELECT status, COUNT(*) FROM instances {where} GROUP BY status", *args
        )
        counts = dict.fromkeys(InstanceStatus, 0)
        for status, count in rows:
            counts[InstanceStatus(status)] = count
        return counts

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
        columns = rules.plan_transition(new, reason, update, now)
        sql, values = _transition_query(instance_id, allowed, columns, attempt, event, now)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(sql, *values)
            if row is None:
                actual = await conn.fetchrow(
                    "SELECT status, attempt FROM instances WHERE instance_id = $1", instance_id
                )
                raise rules.transition_refused(
                    instance_id,
                    None if actual is None else actual["status"],
                    allowed,
                    new,
                    actual_attempt=None if actual is None else actual["attempt"],
                    attempt=attempt,
                )
        return instance_from_record(row)

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
        columns = rules.plan_transition(InstanceStatus.SUSPENDED, reason, update, now)
        sql, values = _transition_query(
            instance_id, [InstanceStatus.RUNNING], columns, attempt, event, now
        )
        async with self._pool.acquire() as conn, conn.transaction():
            # The row lock first, as put_signal and enqueue_custom_signal take it before they
            # write: one in flight has committed before the reads below (each statement takes a
            # fresh snapshot), and one that comes later waits until this hibernation commits.
            current = await conn.fetchrow(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = $1 "
                "FOR NO KEY UPDATE",
                instance_id,
            )
            if current is None:
                raise rules.instance_not_found(instance_id)
            rules.check_launch(instance_id, current["status"], current["attempt"], attempt)
            found = await conn.fetchrow(
                "SELECT s.instance_id, s.signal_type, s.payload, s.created_at_ms, "
                "EXISTS (SELECT 1 FROM custom_signals c WHERE c.instance_id = $1 "
                "AND c.name = $2 AND c.consumed_at_ms IS NULL) AS queued "
                "FROM (SELECT 1) AS one LEFT JOIN signals s ON s.instance_id = $1",
                instance_id,
                waiting_signal_name,
            )
            slot = None if found["signal_type"] is None else signal_from_record(found)
            if rules.hibernation_blocked(
                None if slot is None else slot.signal_type, found["queued"]
            ):
                return HibernateResult(False, slot, instance_from_record(current))
            row = await conn.fetchrow(sql, *values)
            if row is None:  # cannot happen under the lock; never suspend on a stale decision
                raise rules.launch_refused(
                    instance_id, current["status"], current["attempt"], attempt
                )
        return HibernateResult(True, slot, instance_from_record(row))

    # ------------------------------------------------------------------ liveness and metrics

    async def _update_instance(self, instance_id: str, sql_set: str, *args: object) -> None:
        """``UPDATE instances SET <sql_set>`` for one instance ($1 is the id); NotFound if none."""
        status = await self._pool.execute(
            f"UPDATE instances SET {sql_set} WHERE instance_id = $1", instance_id, *args
        )
        if status == "UPDATE 0":
            raise rules.instance_not_found(instance_id)

    async def touch_heartbeat(self, instance_id: str, *, attempt: int | None = None) -> None:
        if attempt is None:
            await self._update_instance(instance_id, "heartbeat_at_ms = $2", self._clock())
            return
        await _fenced_heartbeat(self._pool, instance_id, self._clock(), attempt)

    async def record_process(self, instance_id: str, pid: int, pid_create_time: float) -> None:
        await self._update_instance(
            instance_id,
            "pid = $2, pid_create_time = $3, updated_at_ms = $4",
            pid,
            pid_create_time,
            self._clock(),
        )

    async def record_exit_metrics(self, instance_id: str, exit: ProcessExit) -> None:
        params = Params(postgres=True)
        sql = record_exit_statement(params, instance_id, exit, self._clock())
        if await self._pool.execute(sql, *params.values) == "UPDATE 0":
            raise rules.instance_not_found(instance_id)

    async def find_stale_running(
        self, heartbeat_before_ms: int, limit: int = 1000
    ) -> list[InstanceRow]:
        rows = await self._pool.fetch(
            f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE status = 'running' "
            "AND COALESCE(heartbeat_at_ms, started_at_ms, created_at_ms) < $1 "
            "ORDER BY instance_id LIMIT $2",
            heartbeat_before_ms,
            limit,
        )
        return [instance_from_record(r) for r in rows]

    # ------------------------------------------------------------------ checkpoints

    async def save_checkpoint_if_absent(
        self, instance_id: str, checkpoint_id: str, state: bytes, *, attempt: int | None = None
    ) -> CheckpointSaveResult:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                _SAVE_CHECKPOINT, instance_id, checkpoint_id, state, self._clock(), attempt
            )
            assert row is not None
            rules.check_launch(
                instance_id, row["instance_status"], row["instance_attempt"], attempt
            )
            stored = state
            if not row["saved"]:
                # The winner may have committed after this statement's snapshot: read anew.
                stored = await conn.fetchval(
                    "SELECT state FROM checkpoints WHERE instance_id = $1 AND checkpoint_id = $2",
                    instance_id,
                    checkpoint_id,
                )
        signal = None if row["signal_type"] is None else signal_from_record(row)
        return CheckpointSaveResult(row["saved"], stored, signal)

    async def get_checkpoint(self, instance_id: str, checkpoint_id: str) -> CheckpointRow | None:
        row = await self._pool.fetchrow(
            "SELECT seq, instance_id, checkpoint_id, state, length(state) AS size_bytes, "
            "created_at_ms FROM checkpoints WHERE instance_id = $1 AND checkpoint_id = $2",
            instance_id,
            checkpoint_id,
        )
        return None if row is None else checkpoint_from_record(row)

    async def list_checkpoints(
        self, instance_id: str, *, limit: int = 100, offset: int = 0, with_state: bool = False
    ) -> Page[CheckpointRow]:
        state = "state" if with_state else "NULL::bytea AS state"
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            total = await conn.fetchval(
                "SELECT COUNT(*) FROM checkpoints WHERE instance_id = $1", instance_id
            )
            rows = await conn.fetch(
                f"SELECT seq, instance_id, checkpoint_id, {state}, "
                "length(state) AS size_bytes, created_at_ms FROM checkpoints "
                "WHERE instance_id = $1 ORDER BY seq LIMIT $2 OFFSET $3",
                instance_id,
                limit,
                offset,
            )
        return Page(tuple(checkpoint_from_record(r) for r in rows), total)

    async def replay_history(self, instance_id: str, state_budget_bytes: int) -> list[ReplayEntry]:
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            sized = await conn.fetch(
                "SELECT checkpoint_id, length(state) AS size FROM checkpoints "
                "WHERE instance_id = $1 ORDER BY seq",
                instance_id,
            )
            fits = rules.replay_prefix((r["size"] for r in sized), state_budget_bytes)
            states = [
                r["state"]
                for r in await conn.fetch(
                    "SELECT state FROM checkpoints WHERE instance_id = $1 ORDER BY seq LIMIT $2",
                    instance_id,
                    fits,
                )
            ]
        return [
            ReplayEntry(r["checkpoint_id"], states[i] if i < fits else None)
            for i, r in enumerate(sized)
        ]

    # ------------------------------------------------------------------ events

    async def append_event(
        self, instance_id: str, event: NewEvent, *, attempt: int | None = None
    ) -> EventRow:
        row = await self._pool.fetchrow(
            _INSERT_EVENT,
            instance_id,
            event.type,
            event.subtype,
            event.payload,
            self._clock(),
            attempt,
        )
        if row is None:
            raise rules.instance_not_found(instance_id)
        rules.check_launch(instance_id, row["instance_status"], row["instance_attempt"], attempt)
        return event_from_record(row)

    async def list_events(
        self, instance_id: str, *, after_id: int = 0, limit: int = 100
    ) -> list[EventRow]:
        rows = await self._pool.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE instance_id = $1 AND id > $2 "
            "ORDER BY id LIMIT $3",
            instance_id,
            after_id,
            limit,
        )
        return [event_from_record(r) for r in rows]

    async def count_events(self, instance_id: str, *, after_id: int = 0) -> int:
        params = Params(postgres=True)
        sql = count_events_statement(params, instance_id, after_id)
        return int(await self._pool.fetchval(sql, *params.values))

    # ------------------------------------------------------------------ instance-wide signals

    async def put_signal(
        self, instance_id: str, signal_type: SignalType, payload: bytes = b""
    ) -> SignalRow:
        incoming = SignalType(signal_type)
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            await self._lock_instance(conn, instance_id)
            current = await conn.fetchrow(
                f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE instance_id = $1", instance_id
            )
            pending = None if current is None else SignalType(current["signal_type"])
            if not rules.signal_takes_slot(pending, incoming):
                assert current is not None
                return signal_from_record(current)
            row = await conn.fetchrow(
                "INSERT INTO signals (instance_id, signal_type, payload, created_at_ms) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (instance_id) DO UPDATE SET "
                "signal_type = excluded.signal_type, payload = excluded.payload, "
                f"created_at_ms = excluded.created_at_ms RETURNING {SIGNAL_COLUMNS}",
                instance_id,
                incoming,
                payload,
                now,
            )
            await self._notify(conn, SignalStored(instance_id, "signal"))
        return signal_from_record(row)

    async def pending_signal(self, instance_id: str) -> SignalRow | None:
        row = await self._pool.fetchrow(
            f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE instance_id = $1", instance_id
        )
        return None if row is None else signal_from_record(row)

    async def ack_signal(
        self,
        instance_id: str,
        signal_type: SignalType,
        *,
        outcome: SignalOutcome | None = None,
        attempt: int | None = None,
    ) -> bool:
        acked = SignalType(signal_type)
        if outcome is None and attempt is None:
            status: str = await self._pool.execute(
                "DELETE FROM signals WHERE instance_id = $1 AND signal_type = $2",
                instance_id,
                acked,
            )
            return status == "DELETE 1"
        now = self._clock()
        running = [InstanceStatus.RUNNING]
        async with self._pool.acquire() as conn, conn.transaction():
            # The instance row lock first, as put_signal takes it before it reads the slot: a
            # signal that replaced this one has committed before the DELETE below (a fresh
            # snapshot), and one offered later waits until this acknowledgement commits.
            current = await conn.fetchrow(
                "SELECT status, attempt FROM instances WHERE instance_id = $1 FOR NO KEY UPDATE",
                instance_id,
            )
            if current is None:
                return False  # no instance, so nothing in its slot
            deleted = await conn.fetchval(
                "DELETE FROM signals WHERE instance_id = $1 AND signal_type = $2 RETURNING 1",
                instance_id,
                acked,
            )
            if deleted is None:
                return False
            # Raising rolls the DELETE back with everything else: the slot stays.
            if outcome is None:
                rules.check_launch(instance_id, current["status"], current["attempt"], attempt)
                return True
            new = InstanceStatus(outcome.status)
            columns = rules.plan_transition(new, outcome.reason, NO_UPDATE, now)
            sql, values = _transition_query(
                instance_id, running, columns, attempt, outcome.event, now
            )
            if await conn.fetchrow(sql, *values) is None:
                raise rules.transition_refused(
                    instance_id,
                    current["status"],
                    running,
                    new,
                    actual_attempt=current["attempt"],
                    attempt=attempt,
                )
        return True

    # ------------------------------------------------------------------ custom signals

    async def enqueue_custom_signal(
        self, instance_id: str, name: str, payload: bytes
    ) -> CustomSignalEnqueued:
        rules.check_custom_signal_payload(payload)
        now = self._clock()
        params = Params(postgres=True)
        wake_sql = claim_signal_waiters_statement(params, rules.plan_wake(now), instance_id, 1)
        async with self._pool.acquire() as conn, conn.transaction():
            # The row lock orders this against a hibernation (its UPDATE holds the same lock):
            # one in flight commits before the claim below reads the status, and one that comes
            # later commits after this signal, so its own claim_signal_waiters sees it.
            await self._lock_instance(conn, instance_id)
            row = await conn.fetchrow(
                "INSERT INTO custom_signals (instance_id, name, payload, created_at_ms) "
                f"VALUES ($1, $2, $3, $4) RETURNING {CUSTOM_SIGNAL_COLUMNS}",
                instance_id,
                name,
                payload,
                now,
            )
            woken = await conn.fetchrow(wake_sql, *params.values)
            await self._notify(conn, SignalStored(instance_id, "custom", name, row["id"]))
        return CustomSignalEnqueued(
            custom_signal_from_record(row), None if woken is None else instance_from_record(woken)
        )

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
        async with self._pool.acquire() as conn, conn.transaction():
            # The row lock serializes consumers of this instance; each statement after it
            # takes a fresh snapshot and so sees what earlier holders committed.
            if attempt is None:
                await self._lock_instance(conn, instance_id, heartbeat_at_ms=now)
            else:
                await _fenced_heartbeat(conn, instance_id, now, attempt)
            stored = await conn.fetchval(
                "SELECT state FROM checkpoints WHERE instance_id = $1 AND checkpoint_id = $2",
                instance_id,
                checkpoint_id,
            )
            if stored is not None:
                return CustomSignalConsumed(found=True, payload=stored, replayed=True)
            payload = await conn.fetchval(
                """
                WITH oldest AS (
                    SELECT id FROM custom_signals
                    WHERE instance_id = $1 AND name = $2 AND consumed_at_ms IS NULL
                    AND ($5::bigint IS NULL OR created_at_ms <= $5::bigint)
                    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
                ), taken AS (
                    UPDATE custom_signals c
                    SET consumed_at_ms = $4, consumed_by_checkpoint_id = $3
                    FROM oldest WHERE c.id = oldest.id
                    RETURNING c.payload
                ), saved AS (
                    INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at_ms)
                    SELECT $1, $3, payload, $4 FROM taken
                    RETURNING checkpoint_id
                ), pointed AS (
                    UPDATE instances SET checkpoint_id = saved.checkpoint_id
                    FROM saved WHERE instances.instance_id = $1
                )
                SELECT payload FROM taken
                """,
                instance_id,
                name,
                checkpoint_id,
                now,
                queued_by_ms,
            )
        if payload is None:
            return CustomSignalConsumed(found=False, payload=None, replayed=False)
        return CustomSignalConsumed(found=True, payload=payload, replayed=False)

    async def list_custom_signals(
        self, instance_id: str, *, include_consumed: bool = False, limit: int = 100
    ) -> list[CustomSignalRow]:
        unconsumed = "" if include_consumed else "AND consumed_at_ms IS NULL "
        rows = await self._pool.fetch(
            f"SELECT {CUSTOM_SIGNAL_COLUMNS} FROM custom_signals WHERE instance_id = $1 "
            f"{unconsumed}ORDER BY id LIMIT $2",
            instance_id,
            limit,
        )
        return [custom_signal_from_record(r) for r in rows]

    @staticmethod
    async def _lock_instance(
        conn: asyncpg.Connection, instance_id: str, *, heartbeat_at_ms: int | None = None
    ) -> None:
        """Take the instance row's write lock (refreshing liveness if given); NotFound if absent."""
        if heartbeat_at_ms is None:
            found = await conn.fetchval(
                "SELECT 1 FROM instances WHERE instance_id = $1 FOR NO KEY UPDATE", instance_id
            )
        else:
            found = await conn.fetchval(
                "UPDATE instances SET heartbeat_at_ms = $2 WHERE instance_id = $1 RETURNING 1",
                instance_id,
                heartbeat_at_ms,
            )
        if found is None:
            raise rules.instance_not_found(instance_id)

    # ------------------------------------------------------------------ wake-ups

    async def claim_due_wakeups(self, now_ms: int, limit: int = 100, *, lead_ms: int = 0) -> list[InstanceRow]:
        params = Params(postgres=True)
        sql = claim_due_statement(params, rules.plan_wake(self._clock()), now_ms, limit, lead_ms)
        rows = await self._pool.fetch(sql, *params.values)
        return [instance_from_record(r) for r in rows]

    async def claim_signal_waiters(
        self, instance_id: str | None = None, limit: int = 100
    ) -> list[InstanceRow]:
        params = Params(postgres=True)
        sql = claim_signal_waiters_statement(
            params, rules.plan_wake(self._clock()), instance_id, limit
        )
        rows = await self._pool.fetch(sql, *params.values)
        return [instance_from_record(r) for r in rows]

    async def next_wake_at(self) -> int | None:
        wake_at: int | None = await self._pool.fetchval(NEXT_WAKE_AT)
        return wake_at

    # ------------------------------------------------------------------ images

    async def create_image(self, new: NewImage) -> ImageRow:
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            # Two registrations of one name would both read the same MAX(version): serialize
            # them. The INSERT is a later statement, so it sees the previous holder's row.
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2 || chr(31) || $3))",
                _IMAGE_VERSION_LOCK,
                new.tenant,
                new.name,
            )
            try:
                row = await conn.fetchrow(
                    "INSERT INTO images (image_id, tenant, name, version, description, "
                    "entrypoint, input_schema, metadata, sha256, size_bytes, created_at_ms, "
                    "filename) "
                    "SELECT $1, $2, $3, COALESCE(MAX(version), 0) + 1, $4, $5, $6, $7, $8, $9, $10, "
                    "$11 "
                    f"FROM images WHERE tenant = $2 AND name = $3 RETURNING {IMAGE_COLUMNS}",
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
                )
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"image id {new.image_id!r} is already in use") from exc
        return image_from_record(row)

    async def get_image(self, image_id: str, tenant: str | None = None) -> ImageRow | None:
        row = await self._pool.fetchrow(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE image_id = $1", image_id
        )
        if row is None or (tenant is not None and row["tenant"] != tenant):
            return None
        return image_from_record(row)

    async def latest_image(self, tenant: str, name: str) -> ImageRow | None:
        row = await self._pool.fetchrow(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE tenant = $1 AND name = $2 "
            "ORDER BY version DESC LIMIT 1",
            tenant,
            name,
        )
        return None if row is None else image_from_record(row)

    async def list_images(
        self, tenant: str | None = None, *, name: str | None = None
    ) -> list[ImageRow]:
        params = Params(postgres=True)
        conditions = [
            f"{column} = {params(value)}"
            for column, value in (("tenant", tenant), ("name", name))
            if value is not None
        ]
        where = " AND ".join(conditions) or "TRUE"
        rows = await self._pool.fetch(
            f"SELECT {IMAGE_COLUMNS} FROM images WHERE {where} ORDER BY tenant, name, version",
            *params.values,
        )
        return [image_from_record(r) for r in rows]

    async def delete_image(self, image_id: str, tenant: str | None = None) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # FOR UPDATE waits for starts in flight (their foreign-key check holds KEY SHARE on
            # this row) and blocks new ones until the delete commits, so the count is final.
            image_tenant = await conn.fetchval(
                "SELECT tenant FROM images WHERE image_id = $1 FOR UPDATE", image_id
            )
            rules.check_image_deletable(
                image_id, image_tenant, tenant, await _count_active(conn, image_id)
            )
            await conn.execute("DELETE FROM images WHERE image_id = $1", image_id)

    async def count_active_instances_for_image(self, image_id: str) -> int:
        async with self._pool.acquire() as conn:
            return await _count_active(conn, image_id)


def _transition_query(
    instance_id: str,
    expected: Collection[InstanceStatus],
    columns: dict[str, Any],
    attempt: int | None,
    event: NewEvent | None,
    now: int,
) -> tuple[str, list[Any]]:
    """A compare-and-set (``transition_statement``) that also appends ``event`` if it matched.

    One statement: the event row exists only if the compare-and-set matched. Returns the SQL and
    its values; the statement returns the new row, or no row if it did not match.
    """
    params = Params(postgres=True)
    sql = transition_statement(params, instance_id, expected, columns, attempt)
    if event is not None:
        sql = (
            f"WITH moved AS ({sql}), logged AS ("
            "INSERT INTO events (instance_id, type, subtype, payload, created_at_ms) "
            f"SELECT instance_id, {params(event.type)}, {params(event.subtype)}, "
            f"{params(event.payload)}, {params(now)} FROM moved) "
            "SELECT * FROM moved"
        )
    return sql, params.values


async def _fenced_heartbeat(
    conn: asyncpg.Connection | asyncpg.Pool, instance_id: str, now: int, attempt: int
) -> None:
    """Refresh liveness for launch ``attempt`` under the row lock; raise (writing nothing) if
    the instance is absent or not running on that attempt."""
    row = await conn.fetchrow(_FENCED_HEARTBEAT, instance_id, now, attempt)
    rules.check_launch(
        instance_id,
        None if row is None else row["status"],
        None if row is None else row["attempt"],
        attempt,
    )


async def _count_active(conn: asyncpg.Connection, image_id: str) -> int:
    params = Params(postgres=True)
    return int(await conn.fetchval(count_active_statement(params, image_id), *params.values))
