"""Schema migrations: plain SQL files applied in name order, each once, each in a transaction.

Files live in ``migrations/<dialect>/NNNN_name.sql`` at the top of the repository. What has been
applied is recorded in ``schema_migrations``. Concurrent starters are serialized (SQLite: the
write lock of BEGIN IMMEDIATE; PostgreSQL: an advisory lock), and each re-reads what is applied
inside that lock, so no migration runs twice.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from runtara_core.errors import ConfigError
from runtara_core.persistence.rules import Clock

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

Dialect = Literal["sqlite", "postgres"]

MIGRATIONS_ROOT = Path(__file__).resolve().parents[2] / "migrations"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version       {int} PRIMARY KEY,
    name          TEXT NOT NULL,
    checksum      TEXT NOT NULL,
    applied_at_ms {int} NOT NULL
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    """The file name without ``.sql``, e.g. ``0001_initial``."""
    sql: str
    checksum: str


def load_migrations(dialect: Dialect, directory: Path | None = None) -> list[Migration]:
    """The dialect's migration files in version order; refuses misnamed or duplicate versions."""
    folder = directory if directory is not None else MIGRATIONS_ROOT / dialect
    if not folder.is_dir():
        raise ConfigError(f"migrations folder {folder} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ConfigError(f"migration file {path} is not named NNNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise ConfigError(f"migrations {found[version].name} and {path.stem} share a version")
        sql = path.read_text(encoding="utf-8")
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        found[version] = Migration(version, path.stem, sql, checksum)
    return [found[v] for v in sorted(found)]


def split_sqlite_script(script: str) -> list[str]:
    """Split a script into single statements, so a migration can run inside our own transaction.

    (``sqlite3.executescript`` would commit first.) ``sqlite3.complete_statement`` knows where a
    statement ends, including CREATE TRIGGER bodies; statements must end their line.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if any(_is_code(line) for line in pending.splitlines()):
        raise ConfigError(f"migration ends with an incomplete statement: {pending.strip()[:80]!r}")
    return statements


def _is_code(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("--")


def _warn_if_edited(applied: dict[int, str], migrations: list[Migration]) -> None:
    for m in migrations:
        stored = applied.get(m.version)
        if stored is not None and stored != m.checksum:
            log.warning("migration %s was edited after it was applied; it is not re-run", m.name)


# --------------------------------------------------------------------------- SQLite


def apply_sqlite(conn: sqlite3.Connection, migrations: list[Migration], clock: Clock) -> list[str]:
    """Runs on the connection's own thread; the connection is in autocommit mode."""
    conn.execute(_CREATE_TABLE.format(int="INTEGER"))
    applied_names: list[str] = []
    for migration in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            applied = dict(conn.execute("SELECT version, checksum FROM schema_migrations"))
            if migration.version in applied:
                conn.execute("COMMIT")
                continue
            for statement in split_sqlite_script(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at_ms) "
                "VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, clock()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("applied migration %s", migration.name)
        applied_names.append(migration.name)
    _warn_if_edited(
        dict(conn.execute("SELECT version, checksum FROM schema_migrations")), migrations
    )
    return applied_names


# --------------------------------------------------------------------------- PostgreSQL


def advisory_lock_key(schema: str) -> int:
    """A stable signed 64-bit key per schema, so migrators of different schemas do not wait."""
    digest = hashlib.blake2b(f"runtara-migrations:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def drop_schema(url: str, schema: str) -> None:
    """Drop a PostgreSQL schema and everything in it: the undo of a run that used its own schema
    (tests, benchmarks, chaos trials sharing one server)."""
    import asyncpg  # only PostgreSQL users need it loaded

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


async def apply_postgres(
    conn: asyncpg.Connection, migrations: list[Migration], clock: Clock, schema: str | None
) -> list[str]:
    """Holds a session advisory lock for the whole run; a lost connection releases it."""
    key = advisory_lock_key(schema or "")
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        await conn.execute(_CREATE_TABLE.format(int="BIGINT"))
        applied_names: list[str] = []
        for migration in migrations:
            async with conn.transaction():
                done = await conn.fetchval(
                    "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
                )
                if done:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at_ms) "
                    "VALUES ($1, $2, $3, $4)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                    clock(),
                )
            log.info("applied migration %s", migration.name)
            applied_names.append(migration.name)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        _warn_if_edited({r["version"]: r["checksum"] for r in rows}, migrations)
        return applied_names
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
