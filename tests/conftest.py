"""Fixtures shared by the whole suite: a controllable clock and both persistence backends.

``persistence`` runs a test once per backend: SQLite on a fresh file, PostgreSQL in a fresh
schema (dropped afterwards) of the server named by RUNTARA_TEST_DATABASE_URL. Without that
variable the PostgreSQL runs are skipped, except under CI=true, where they fail: CI must not
pass by testing only one backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtara_core.persistence import Persistence, open_persistence
from runtara_core.transport.certs import DevCertificates, ensure_dev_certificates
from runtara_core.persistence.migrations import drop_schema

PG_URL_ENV = "RUNTARA_TEST_DATABASE_URL"
BACKENDS = ["sqlite", "postgres"]


class FakeClock:
    """Epoch milliseconds that only move when a test says so."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> int:
        self.now_ms += ms
        return self.now_ms


def postgres_test_url() -> str:
    """The test server's URL; skips (or under CI fails) the test when none is configured."""
    url = os.environ.get(PG_URL_ENV)
    if url:
        return url
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{PG_URL_ENV} is not set: CI must run the PostgreSQL tests")
    pytest.skip(f"set {PG_URL_ENV}=postgresql://... to run")


@dataclass
class Backend:
    """One empty database of one kind; ``open()`` may be called more than once (two processes)."""

    kind: str
    url: str
    clock: FakeClock
    schema: str | None = None
    opened: list[Persistence] = field(default_factory=list)
    reached: bool = False
    """Whether any open succeeded: only then is there a schema to drop."""

    async def open(self, **options: Any) -> Persistence:
        if self.schema is not None:
            options.setdefault("schema", self.schema)
        store = await open_persistence(self.url, clock=self.clock, **options)
        self.reached = True
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()
        self.opened.clear()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        backend = Backend("sqlite", f"sqlite:///{tmp_path / 'runtara.db'}", clock)
    else:
        schema = f"rt_test_{uuid.uuid4().hex[:16]}"
        backend = Backend("postgres", postgres_test_url(), clock, schema=schema)
    try:
        yield backend
    finally:
        await backend.close_all()
        if backend.schema is not None and backend.reached:
            await drop_schema(backend.url, backend.schema)


@pytest.fixture
async def persistence(backend: Backend) -> Persistence:
    """A migrated, empty store of each backend, closed by ``backend`` afterwards."""
    return await backend.open()


@pytest.fixture(scope="session")
def dev_certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """One development CA and server certificate for every QUIC test of the session."""
    return ensure_dev_certificates(tmp_path_factory.mktemp("certs"))
