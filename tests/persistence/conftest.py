"""Helpers for the persistence conformance suite: an image, instances in a chosen status, and
a transaction held open on a connection of its own."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from runtara_core.persistence import (
    NO_UPDATE,
    ImageRow,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewImage,
    NewInstance,
    Persistence,
    TerminationReason,
)
from runtara_core.persistence.factory import sqlite_path
from tests.conftest import Backend

TENANT = "acme"
IN_FLIGHT_S = 0.2
"""How long a test lets calls run into another transaction's locks before that one commits."""

MakeInstance = Callable[..., Awaitable[InstanceRow]]


def new_image(image_id: str, *, tenant: str = TENANT, name: str = "orders") -> NewImage:
    return NewImage(
        image_id=image_id,
        tenant=tenant,
        name=name,
        entrypoint="workflow:main",
        sha256="0" * 64,
        size_bytes=123,
    )


@pytest.fixture
async def image(persistence: Persistence) -> ImageRow:
    return await persistence.create_image(new_image("img-orders-1"))


@pytest.fixture
def make_instance(persistence: Persistence, image: ImageRow) -> MakeInstance:
    """``await make_instance(status=..., reason=..., update=...)``: a new instance in that status.

    The persistence layer enforces compare-and-set, not a state graph, so one transition from
    pending reaches any status.
    """
    counter = itertools.count(1)

    async def make(
        instance_id: str | None = None,
        *,
        status: InstanceStatus = InstanceStatus.PENDING,
        reason: TerminationReason | None = None,
        update: InstanceUpdate = NO_UPDATE,
        image_id: str | None = None,
        **fields: object,
    ) -> InstanceRow:
        new = NewInstance(
            instance_id=instance_id or f"inst-{next(counter)}",
            image_id=image_id or image.image_id,
            **fields,  # type: ignore[arg-type]
        )
        row, created = await persistence.create_instance(new)
        assert created
        if status is InstanceStatus.PENDING and reason is None and update == NO_UPDATE:
            return row
        return await persistence.transition(
            row.instance_id, [InstanceStatus.PENDING], status, reason=reason, update=update
        )

    return make


class OtherTransaction:
    """A transaction on a connection of its own, outside the store, open until ``commit``.

    It stands for another process's writer caught mid-transaction: its row locks (PostgreSQL)
    or its write lock (SQLite, where it makes every store write wait) last until it commits.
    Statements take literal values, so one text serves both dialects.
    """

    def __init__(self, backend: Backend) -> None:
        self.postgres = backend.kind == "postgres"
        self._backend = backend
        self._pg: asyncpg.Connection | None = None
        self._sqlite: sqlite3.Connection | None = None

    async def begin(self) -> None:
        if self.postgres:
            self._pg = await asyncpg.connect(
                self._backend.url, server_settings={"search_path": self._backend.schema or ""}
            )
            await self._pg.execute("BEGIN")
        else:
            self._sqlite = sqlite3.connect(
                sqlite_path(self._backend.url), isolation_level=None, check_same_thread=False
            )
            await self.execute("BEGIN IMMEDIATE")

    async def execute(self, sql: str) -> None:
        if self._pg is not None:
            await self._pg.execute(sql)
        else:
            assert self._sqlite is not None
            await asyncio.to_thread(self._sqlite.execute, sql)

    def blob(self, data: bytes) -> str:
        """``data`` as a literal of the dialect (SQLite X'..', PostgreSQL bytea)."""
        return f"'\\x{data.hex()}'::bytea" if self.postgres else f"X'{data.hex()}'"

    async def lock_instance(self, instance_id: str) -> None:
        """Hold the instance row as the store's per-instance writers do (put_signal, enqueue,
        hibernate, ...) before they write: on PostgreSQL its row lock; SQLite's BEGIN IMMEDIATE
        already holds the one write lock."""
        if self.postgres:
            await self.execute(
                f"SELECT 1 FROM instances WHERE instance_id = '{instance_id}' FOR NO KEY UPDATE"
            )

    async def commit(self) -> None:
        await self.execute("COMMIT")

    async def close(self) -> None:
        """Close the connection (rolling back whatever was not committed)."""
        if self._pg is not None:
            await self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()


@asynccontextmanager
async def other_transaction(backend: Backend) -> AsyncIterator[OtherTransaction]:
    other = OtherTransaction(backend)
    await other.begin()
    try:
        yield other
    finally:
        await other.close()


async def run_into(other: OtherTransaction, *calls: Awaitable[Any]) -> list[Any]:
    """Start ``calls`` while ``other`` is open, commit it once they had time to reach its locks,
    and return their results."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    await asyncio.sleep(IN_FLIGHT_S)
    await other.commit()
    return list(await asyncio.gather(*tasks))
