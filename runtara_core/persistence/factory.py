"""Open the backend a database URL names (``sqlite:///PATH`` or ``postgresql://...``)."""

from __future__ import annotations

from pathlib import Path

from runtara_core.errors import ConfigError
from runtara_core.persistence.base import Persistence
from runtara_core.persistence.rules import Clock, wall_clock_ms

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> str:
    """``sqlite:///rel/path`` -> ``rel/path``; ``sqlite:////abs/path`` -> ``/abs/path``."""
    path = url.removeprefix(SQLITE_PREFIX)
    if not path:
        raise ConfigError(f"database URL {url!r} names no file: expected sqlite:///PATH")
    return path


async def open_persistence(
    url: str,
    *,
    clock: Clock = wall_clock_ms,
    migrations_dir: Path | None = None,
    apply_migrations: bool = True,
    schema: str | None = None,
    min_pool_size: int = 1,
    max_pool_size: int = 10,
    busy_timeout_ms: int = 10_000,
) -> Persistence:
    """Open and migrate the database at ``url``.

    SQLite: the file's parent folder is created. PostgreSQL: ``schema`` isolates the tables in
    their own schema (created if missing); pool sizes bound the connections.
    """
    if url.startswith(SQLITE_PREFIX):
        if schema is not None:
            raise ConfigError("a schema can only be chosen for PostgreSQL")
        from runtara_core.persistence.sqlite import SqlitePersistence

        path = sqlite_path(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return await SqlitePersistence.open(
            path,
            clock=clock,
            migrations_dir=migrations_dir,
            apply_migrations=apply_migrations,
            busy_timeout_ms=busy_timeout_ms,
        )
    if url.startswith(POSTGRES_PREFIXES):
        from runtara_core.persistence.postgres import PostgresPersistence

        return await PostgresPersistence.open(
            url,
            clock=clock,
            migrations_dir=migrations_dir,
            apply_migrations=apply_migrations,
            schema=schema,
            min_size=min_pool_size,
            max_size=max_pool_size,
        )
    raise ConfigError(
        f"unsupported database URL {url!r}: expected sqlite:///PATH or postgresql://..."
    )
