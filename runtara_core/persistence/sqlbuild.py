"""Statements built at run time (transitions, claims, listings), written once for both dialects.

SQLite binds ``?`` and PostgreSQL ``$1, $2, ...``, only PostgreSQL needs row locks to keep
concurrent claimers apart (SQLite writers are serialized by BEGIN IMMEDIATE), and only SQLite's
planner (which has no statistics) needs telling which index not to use; ``Params`` hides these
differences so each statement is written once. Only column names from fixed whitelists
(dataclass fields, this module's literals) are ever put into SQL text; every value is a bind
parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from runtara_core.persistence.records import INSTANCE_COLUMNS
from runtara_core.persistence.rows import (
    ACTIVE_STATUSES,
    InstanceFilter,
    InstanceOrder,
    InstanceStatus,
    ProcessExit,
    TerminationReason,
)
from runtara_core.persistence.rules import WAKEABLE_REASONS

_WAKEABLE = "termination_reason IN ({})".format(
    ", ".join(f"'{reason.value}'" for reason in sorted(WAKEABLE_REASONS))
)
"""``rules.WAKEABLE_REASONS`` as SQL: enum literals, not bind values, so the text (and the plan
of every claim) stays the same."""

_ORDER_BY: dict[InstanceOrder, str] = {
    InstanceOrder.CREATED_ASC: "created_at_ms ASC, instance_id ASC",
    InstanceOrder.CREATED_DESC: "created_at_ms DESC, instance_id DESC",
    InstanceOrder.PRIORITY: "priority DESC, created_at_ms ASC, instance_id ASC",
    # "IS NULL" sorts false before true on both backends: unfinished last in either direction.
    InstanceOrder.FINISHED_ASC: "finished_at_ms IS NULL, finished_at_ms ASC, instance_id ASC",
    InstanceOrder.FINISHED_DESC: "finished_at_ms IS NULL, finished_at_ms DESC, instance_id DESC",
}


class Params:
    """The bind values of one statement; calling it with a value returns that value's placeholder.

    Ask for placeholders in the order they appear in the SQL text: SQLite binds by position.
    """

    def __init__(self, *, postgres: bool) -> None:
        self.postgres = postgres
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}" if self.postgres else "?"

    def any_of(self, column: str, values: Iterable[Any]) -> str:
        """``column`` equals one of ``values`` (one array parameter on PostgreSQL)."""
        items = list(values)
        if self.postgres:
            return f"{column} = ANY({self(items)})"
        return f"{column} IN ({', '.join(self(v) for v in items)})"

    def skip_locked(self, table: str | None = None) -> str:
        """Row-lock clause for a claim's SELECT: rows another claimer holds are skipped.

        NO KEY UPDATE, not UPDATE: inserting a checkpoint, event or signal takes KEY SHARE on its
        instance row (the foreign-key check), which FOR UPDATE conflicts with, so a claim would
        skip an instance merely because something was being written about it.
        """
        if not self.postgres:
            return ""
        of = f" OF {table}" if table else ""
        return f" FOR NO KEY UPDATE{of} SKIP LOCKED"

    def unindexed(self, column: str) -> str:
        """``column`` as a term that SQLite will not drive an index search with (unary plus).

        For a condition that only rechecks rows found another way: without statistics SQLite
        would otherwise pick a low-selectivity index on it (status) and visit every row in it.
        """
        return column if self.postgres else f"+{column}"


def set_clause(columns: Mapping[str, Any], params: Params) -> str:
    return ", ".join(f"{column} = {params(value)}" for column, value in columns.items())


def instance_filter_clause(f: InstanceFilter, params: Params) -> str:
    """The WHERE condition (``TRUE`` when nothing is filtered) of a listing."""
    conditions: list[str] = []
    if f.tenant is not None:
        conditions.append(f"tenant = {params(f.tenant)}")
    if f.statuses:
        conditions.append(params.any_of("status", sorted(f.statuses)))
    if f.image_id is not None:
        conditions.append(f"image_id = {params(f.image_id)}")
    if f.image_name is not None:
        conditions.append(f"image_name = {params(f.image_name)}")
    if f.node_id is not None:
        conditions.append(f"(node_id = {params(f.node_id)} OR node_id IS NULL)")
    if f.created_from_ms is not None:
        conditions.append(f"created_at_ms >= {params(f.created_from_ms)}")
    if f.created_to_ms is not None:
        conditions.append(f"created_at_ms < {params(f.created_to_ms)}")
    if f.finished_from_ms is not None:
        conditions.append(f"finished_at_ms >= {params(f.finished_from_ms)}")
    if f.finished_to_ms is not None:
        conditions.append(f"finished_at_ms < {params(f.finished_to_ms)}")
    return " AND ".join(conditions) or "TRUE"


def instance_order_clause(order: InstanceOrder) -> str:
    return _ORDER_BY[order]


# --------------------------------------------------------------------------- statements


def transition_statement(
    params: Params,
    instance_id: str,
    expected: Iterable[InstanceStatus],
    columns: Mapping[str, Any],
    attempt: int | None = None,
) -> str:
    """Compare and set: the UPDATE matches no row unless the status is one of ``expected``
    (and, if ``attempt`` is given, the instance is on that launch attempt)."""
    sql = (
        f"UPDATE instances SET {set_clause(columns, params)} "
        f"WHERE instance_id = {params(instance_id)} "
        f"AND {params.any_of('status', sorted(expected))} "
    )
    if attempt is not None:
        sql += f"AND attempt = {params(attempt)} "
    return sql + f"RETURNING {INSTANCE_COLUMNS}"


def claim_due_statement(
    params: Params, columns: Mapping[str, Any], now_ms: int, limit: int, lead_ms: int = 0
) -> str:
    """Claim wakeable instances (``rules.WAKEABLE_REASONS``) whose wake time has come (oldest
    due first): hibernated ones ``lead_ms`` early, crashed ones not before their backoff ends.

    A range scan of the instances_wake index (status, wake_at_ms) that stops at now + lead: its
    cost follows the number due, not the number hibernating.
    """
    return _claim(
        params,
        columns,
        "SELECT instance_id FROM instances "
        f"WHERE status = 'suspended' AND wake_at_ms <= {params(now_ms + lead_ms)} "
        f"AND {_WAKEABLE} "
        f"AND (termination_reason <> '{TerminationReason.CRASHED.value}' OR wake_at_ms <= {params(now_ms)}) "
        f"ORDER BY wake_at_ms LIMIT {params(limit)}{params.skip_locked()}",
    )


def claim_signal_waiters_statement(
    params: Params, columns: Mapping[str, Any], instance_id: str | None, limit: int
) -> str:
    """Claim instances hibernating on a signal name that has an unconsumed signal queued.

    The sweep is driven from the queue of unconsumed signals (few: enqueue wakes its waiter at
    once), not from the waiting instances (up to every hibernating one): each queued instance is
    one primary-key lookup, which ``unindexed`` keeps SQLite from trading for a status scan.
    """
    if instance_id is None:
        queued = "IN (SELECT instance_id FROM custom_signals WHERE consumed_at_ms IS NULL)"
    else:
        queued = f"= {params(instance_id)}"
    return _claim(
        params,
        columns,
        f"SELECT w.instance_id FROM instances w WHERE w.instance_id {queued} "
        f"AND {params.unindexed('w.status')} = 'suspended' AND w.termination_reason = 'waiting' "
        "AND EXISTS (SELECT 1 FROM custom_signals c WHERE c.instance_id = w.instance_id "
        "AND c.name = w.waiting_signal_name AND c.consumed_at_ms IS NULL) "
        f"LIMIT {params(limit)}{params.skip_locked('w')}",
    )


def count_events_statement(params: Params, instance_id: str, after_id: int) -> str:
    return f"SELECT COUNT(*) FROM events WHERE instance_id = {params(instance_id)} AND id > {params(after_id)}"


NEXT_WAKE_AT = (
    "SELECT MIN(wake_at_ms) FROM instances WHERE status = 'suspended' "
    f"AND wake_at_ms IS NOT NULL AND {_WAKEABLE}"
)
"""The earliest wake time: the first entry of the instances_wake index under 'suspended'."""


def record_exit_statement(
    params: Params, instance_id: str, exit: ProcessExit, now_ms: int
) -> str:
    """Fold one launch's exit into the instance's metrics (``Persistence.record_exit_metrics``).

    In the UPDATE itself, so two exits recorded at once both count. What the launch did not
    measure (None) leaves its column alone; the cumulative columns combine with what is stored
    (a NULL stored value counts as nothing): peak RSS is the larger, CPU and run time add up.
    """
    columns = [
        f"exit_code = {params(exit.exit_code)}",
        f"exit_signal = {params(exit.exit_signal)}",
        f"stderr_tail = {params(exit.stderr_tail)}",
    ]
    if exit.peak_rss_bytes is not None:
        columns.append(
            "peak_rss_bytes = CASE WHEN peak_rss_bytes IS NULL OR peak_rss_bytes < "
            f"{params(exit.peak_rss_bytes)} THEN {params(exit.peak_rss_bytes)} "
            "ELSE peak_rss_bytes END"
        )
    if exit.cpu_time_ms is not None:
        columns.append(f"cpu_time_ms = COALESCE(cpu_time_ms, 0) + {params(exit.cpu_time_ms)}")
    if exit.run_time_ms is not None:
        columns.append(f"run_time_ms = run_time_ms + {params(exit.run_time_ms)}")
    columns.append(f"updated_at_ms = {params(now_ms)}")
    return f"UPDATE instances SET {', '.join(columns)} WHERE instance_id = {params(instance_id)}"


def _claim(params: Params, columns: Mapping[str, Any], pick: str) -> str:
    """Move the suspended instances ``pick`` selects to the state ``columns`` describe.

    ``pick`` is bound first, so it comes first in the text: a MATERIALIZED CTE, which also makes
    PostgreSQL run it (and its LIMIT and row locks) exactly once, rather than once per row
    of a semi-join. The status recheck is ``unindexed`` so the UPDATE finds the picked rows
    by primary key.
    """
    return (
        f"WITH picked AS MATERIALIZED ({pick}) "
        f"UPDATE instances SET {set_clause(columns, params)} "
        f"WHERE {params.unindexed('status')} = 'suspended' "
        "AND instance_id IN (SELECT instance_id FROM picked) "
        f"RETURNING {INSTANCE_COLUMNS}"
    )


def count_active_statement(params: Params, image_id: str) -> str:
    """Unfinished instances of an image: while any exist the image may not be deleted."""
    return (
        f"SELECT COUNT(*) FROM instances WHERE image_id = {params(image_id)} "
        f"AND {params.any_of('status', sorted(ACTIVE_STATUSES))}"
    )


Query = tuple[str, list[Any]]
"""SQL text and its bind values."""


def list_instances_queries(f: InstanceFilter, *, postgres: bool) -> tuple[Query, Query]:
    """The page query and the total-count query of a listing."""
    params = Params(postgres=postgres)
    where = instance_filter_clause(f, params)
    count: Query = (f"SELECT COUNT(*) FROM instances WHERE {where}", list(params.values))
    page_sql = (
        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE {where} "
        f"ORDER BY {instance_order_clause(f.order)} "
        f"LIMIT {params(f.limit)} OFFSET {params(f.offset)}"
    )
    return (page_sql, params.values), count
