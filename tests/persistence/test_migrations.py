"""Migrations: applied in order, each once, each atomically, also with concurrent starters."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from runtara_core.errors import ConfigError
from runtara_core.persistence import Persistence
from runtara_core.persistence.factory import sqlite_path
from runtara_core.persistence.migrations import (
    MIGRATIONS_ROOT,
    load_migrations,
    split_sqlite_script,
)
from tests.conftest import Backend
from tests.persistence.conftest import other_transaction

ALL_MIGRATIONS = [m.name for m in load_migrations("sqlite")]


async def recorded(backend: Backend) -> list[tuple[int, str]]:
    """The schema_migrations rows, read around the persistence API."""
    sql = "SELECT version, name FROM schema_migrations ORDER BY version"
    if backend.kind == "sqlite":
        with sqlite3.connect(sqlite_path(backend.url)) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    assert backend.schema is not None
    conn = await asyncpg.connect(backend.url, server_settings={"search_path": backend.schema})
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def table_exists(backend: Backend, table: str) -> bool:
    if backend.kind == "sqlite":
        with sqlite3.connect(sqlite_path(backend.url)) as conn:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            return found is not None
    conn = await asyncpg.connect(backend.url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = $1 "
                "AND table_name = $2",
                backend.schema,
                table,
            )
        )
    finally:
        await conn.close()


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


async def test_both_dialects_ship_the_same_migrations() -> None:
    assert [m.name for m in load_migrations("postgres")] == ALL_MIGRATIONS
    assert ALL_MIGRATIONS and ALL_MIGRATIONS[0] == "0001_initial"


async def test_second_start_applies_nothing(backend: Backend) -> None:
    first = await backend.open()
    assert await first.migrate() == []
    await first.close()
    backend.opened.clear()

    second = await backend.open()

    assert await second.migrate() == []
    rows = await recorded(backend)
    assert [name for _, name in rows] == ALL_MIGRATIONS
    assert len({version for version, _ in rows}) == len(rows)


async def test_fresh_database_reports_what_it_applied(backend: Backend) -> None:
    store = await backend.open(apply_migrations=False)

    assert await store.migrate() == ALL_MIGRATIONS
    assert await store.migrate() == []


async def test_concurrent_starters_apply_each_migration_once(backend: Backend) -> None:
    stores = await asyncio.gather(*(backend.open(apply_migrations=False) for _ in range(2)))

    applied = await asyncio.gather(*(store.migrate() for store in stores))

    assert sorted(name for names in applied for name in names) == ALL_MIGRATIONS
    assert [name for _, name in await recorded(backend)] == ALL_MIGRATIONS


async def test_new_files_apply_in_order_and_a_failure_rolls_back(
    backend: Backend, tmp_path: Path
) -> None:
    folder = write_migrations(
        tmp_path / "migrations",
        {
            "0002_second.sql": "CREATE TABLE second_table (x INTEGER);\n",
            "0001_first.sql": "-- the first\nCREATE TABLE first_table (x INTEGER);\n"
            "INSERT INTO first_table (x) VALUES (1);\n",
            "README.txt": "not a migration",
        },
    )
    store: Persistence = await backend.open(migrations_dir=folder)
    assert [name for _, name in await recorded(backend)] == ["0001_first", "0002_second"]

    write_migrations(
        folder,
        {
            "0003_broken.sql": "CREATE TABLE third_table (x INTEGER);\nSELECT * FROM nowhere;\n",
        },
    )
    with pytest.raises(Exception, match="nowhere"):
        await store.migrate()
    assert [name for _, name in await recorded(backend)] == ["0001_first", "0002_second"]
    assert not await table_exists(backend, "third_table")

    (folder / "0003_broken.sql").write_text("CREATE TABLE third_table (x INTEGER);\n")
    assert await store.migrate() == ["0003_broken"]
    assert await table_exists(backend, "third_table")


async def test_0003_gives_existing_rows_the_defaults(backend: Backend, tmp_path: Path) -> None:
    """Images and instances stored before 0003 read back with filename "" and run_time_ms 0."""
    dialect = "postgres" if backend.kind == "postgres" else "sqlite"
    shipped = {m.name: m for m in load_migrations(dialect)}
    folder = write_migrations(
        tmp_path / "migrations",
        {f"{name}.sql": shipped[name].sql for name in ("0001_initial", "0002_launch_id")},
    )
    old = await backend.open(migrations_dir=folder)
    async with other_transaction(backend) as other:
        await other.execute(
            "INSERT INTO images (image_id, tenant, name, version, entrypoint, sha256, size_bytes, "
            "created_at_ms) VALUES ('img-old', 'acme', 'orders', 1, 'w:main', '0', 1, 5)"
        )
        await other.execute(
            "INSERT INTO instances (instance_id, tenant, image_id, image_name, image_version, "
            "status, termination_reason, input, created_at_ms, updated_at_ms, wake_at_ms, "
            "cpu_time_ms) VALUES ('inst-old', 'acme', 'img-old', 'orders', 1, 'suspended', "
            f"'crashed', {other.blob(b'')}, 5, 5, 7, 40)"
        )
        await other.commit()

    write_migrations(folder, {"0003_environment.sql": shipped["0003_environment"].sql})
    assert await old.migrate() == ["0003_environment"]
    store = await backend.open()  # the shipped folder: everything already applied

    image = await store.get_image("img-old")
    assert image is not None and image.filename == ""
    instance = await store.get_instance("inst-old")
    assert instance is not None and (instance.run_time_ms, instance.cpu_time_ms) == (0, 40)
    assert await store.next_wake_at() == 7
    assert [r.instance_id for r in await store.claim_due_wakeups(7)] == ["inst-old"]


def test_misnamed_and_duplicate_files_are_refused(tmp_path: Path) -> None:
    bad_name = write_migrations(tmp_path / "a", {"1_first.sql": "SELECT 1;"})
    with pytest.raises(ConfigError, match="NNNN"):
        load_migrations("sqlite", bad_name)
    duplicate = write_migrations(
        tmp_path / "b", {"0001_one.sql": "SELECT 1;", "0001_two.sql": "SELECT 2;"}
    )
    with pytest.raises(ConfigError, match="share a version"):
        load_migrations("sqlite", duplicate)
    with pytest.raises(ConfigError, match="does not exist"):
        load_migrations("sqlite", tmp_path / "missing")


def test_default_folder_is_the_repository_migrations() -> None:
    assert (MIGRATIONS_ROOT / "sqlite" / "0001_initial.sql").is_file()
    assert (MIGRATIONS_ROOT / "postgres" / "0001_initial.sql").is_file()


def test_split_sqlite_script() -> None:
    script = """
-- leading comment
CREATE TABLE t (x INTEGER); -- trailing comment
CREATE TRIGGER t_guard BEFORE INSERT ON t BEGIN
    SELECT RAISE(ABORT, 'no; really');
END;
INSERT INTO t VALUES (';');
-- final comment
"""
    statements = split_sqlite_script(script)

    assert len(statements) == 3
    assert statements[1].endswith("END;") and "RAISE" in statements[1]
    with pytest.raises(ConfigError, match="incomplete"):
        split_sqlite_script("CREATE TABLE t (x INTEGER)\n")


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_pooled_connections_keep_no_session_state_between_uses(backend) -> None:
    """The pool skips asyncpg's per-release reset query, so nothing may rely on it."""
    from runtara_core.persistence.postgres import PooledConnection

    store = await backend.open()
    pool = store._pool
    async with pool.acquire() as conn:
        assert isinstance(conn._con, PooledConnection) and conn._con.get_reset_query() == ""
        assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()") == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
