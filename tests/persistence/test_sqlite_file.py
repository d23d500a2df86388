"""SQLite specifics: the factory's URL handling, the file's settings, two processes on one file,
and the plans SQLite (which has no statistics to go by) picks for the wake scheduler's queries."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from runtara_core.errors import ConfigError, NotFound
from runtara_core.persistence import InstanceStatus, NewInstance, open_persistence, rules
from runtara_core.persistence.factory import sqlite_path
from runtara_core.persistence.sqlbuild import (
    NEXT_WAKE_AT,
    Params,
    claim_due_statement,
    claim_signal_waiters_statement,
)
from runtara_core.persistence.sqlite import SqlitePersistence, _connect
from tests.conftest import FakeClock
from tests.persistence.conftest import new_image


def test_sqlite_url_paths() -> None:
    assert sqlite_path("sqlite:///relative/runtara.db") == "relative/runtara.db"
    assert sqlite_path("sqlite:////abs/runtara.db") == "/abs/runtara.db"
    with pytest.raises(ConfigError):
        sqlite_path("sqlite:///")


async def test_factory_rejects_unknown_urls_and_misplaced_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported"):
        await open_persistence("mysql://localhost/db")
    with pytest.raises(ConfigError, match="schema"):
        await open_persistence(f"sqlite:///{tmp_path / 'x.db'}", schema="nope")


async def test_factory_creates_the_parent_folder_relative_to_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    store = await open_persistence("sqlite:///data/nested/runtara.db")
    await store.close()

    assert (tmp_path / "data" / "nested" / "runtara.db").is_file()


async def test_file_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "runtara.db"
    store = await open_persistence(f"sqlite:///{path}")
    await store.close()

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_connections_sync_every_commit(tmp_path: Path) -> None:
    """synchronous=FULL: with NORMAL a WAL commit can be lost on power failure after it was
    acknowledged, and a lost checkpoint means its step runs twice."""
    with closing(_connect(str(tmp_path / "sync.db"), 1_000)) as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_wake_queries_search_indexes_instead_of_visiting_suspended_rows(
    tmp_path: Path,
) -> None:
    """With 100,000 hibernating instances a plan that visits every suspended row took 30-70 ms,
    under the write lock; these plans stay index lookups however many there are."""
    path = tmp_path / "plans.db"
    await (await SqlitePersistence.open(path)).close()

    def plan(build: Any, *args: Any) -> list[str]:
        params = Params(postgres=False)
        sql = build(params, *args) if callable(build) else build
        with closing(sqlite3.connect(path)) as conn:
            return [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params.values)]

    wake = rules.plan_wake(0)
    due = plan(claim_due_statement, wake, 0, 100)
    swept = plan(claim_signal_waiters_statement, wake, None, 100)
    one = plan(claim_signal_waiters_statement, wake, "i-1", 1)
    earliest = plan(NEXT_WAKE_AT)

    by_key = "SEARCH instances USING INDEX sqlite_autoindex_instances_1 (instance_id=?)"
    assert "SEARCH instances USING INDEX instances_wake (status=? AND wake_at_ms<?)" in due
    assert earliest == ["SEARCH instances USING INDEX instances_wake (status=? AND wake_at_ms>?)"]
    assert "SCAN custom_signals USING INDEX custom_signals_queue" in swept
    for steps in (due, swept, one):
        assert steps[0] == by_key  # the UPDATE finds the picked rows by primary key
    for steps in (due, swept, one, earliest):
        assert not [s for s in steps if "status_created" in s or "TEMP B-TREE" in s], steps
        assert not [s for s in steps if s.startswith(("SCAN instances", "SCAN w"))], steps


async def test_two_stores_on_one_file_share_state_and_serialize_writes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    clock = FakeClock()
    a, b = await asyncio.gather(
        SqlitePersistence.open(path, clock=clock), SqlitePersistence.open(path, clock=clock)
    )
    try:
        image = await a.create_image(new_image("img"))
        await b.create_instance(NewInstance("i-1", image.image_id))
        await a.transition("i-1", [InstanceStatus.PENDING], InstanceStatus.RUNNING)

        seen = await b.get_instance("i-1")
        assert seen is not None and seen.status is InstanceStatus.RUNNING

        saves = await asyncio.gather(
            *(
                store.save_checkpoint_if_absent("i-1", "race", f"{n}".encode())
                for n, store in enumerate([a, b] * 10)
            )
        )
        assert sum(s.saved for s in saves) == 1
        assert len({s.state for s in saves}) == 1

        versions = await asyncio.gather(
            *(store.create_image(new_image(f"v{n}")) for n, store in enumerate([a, b] * 4))
        )
        assert sorted(v.version for v in versions) == list(range(2, 10))
    finally:
        await a.close()
        await b.close()
    assert os.path.getsize(path) > 0


def test_a_group_commit_rolls_back_only_the_write_that_failed() -> None:
    from runtara_core.persistence.sqlite import _group_tx

    with closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t (v INTEGER)")

        def insert(value: int, fail: bool = False) -> Any:
            def tx(c: sqlite3.Connection) -> int:
                c.execute("INSERT INTO t VALUES (?)", (value,))
                if fail:
                    raise ValueError(f"write {value} failed after writing")
                return value

            return tx

        outcomes = _group_tx([insert(1), insert(2, fail=True), insert(3)], conn)
        assert outcomes[0] == 1 and outcomes[2] == 3
        assert isinstance(outcomes[1], ValueError)
        assert [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 3]
        assert not conn.in_transaction
        # A group of one, without a savepoint: it fails alone and leaves nothing either.
        (alone,) = _group_tx([insert(4, fail=True)], conn)
        assert isinstance(alone, ValueError)
        assert _group_tx([insert(5)], conn) == [5]
        assert [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 3, 5]
        assert not conn.in_transaction


async def test_concurrent_writes_are_committed_together_and_fail_alone(tmp_path: Path) -> None:
    store = await SqlitePersistence.open(tmp_path / "g.db", clock=FakeClock())
    try:
        await store.create_image(new_image("img"))
        for n in range(50):
            await store.create_instance(NewInstance(instance_id=f"i{n}", image_id="img"))
        hops = 0
        run = store._db.run

        async def counting_run(fn: Any) -> Any:
            nonlocal hops
            hops += 1
            return await run(fn)

        store._db.run = counting_run  # type: ignore[method-assign]
        calls = [store.save_checkpoint_if_absent(f"i{n}", "step", f"s{n}".encode()) for n in range(50)]
        calls.append(store.save_checkpoint_if_absent("missing", "step", b"x"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert hops < 10  # 51 writes, a handful of transactions
        assert all(r.saved for r in results[:50])  # type: ignore[union-attr]
        assert isinstance(results[50], NotFound)
        for n in range(50):
            row = await store.get_checkpoint(f"i{n}", "step")
            assert row is not None and row.state == f"s{n}".encode()
    finally:
        await store.close()
