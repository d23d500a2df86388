"""SQLite specifics: the factory's URL handling, the file's settings, two processes on one file."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from runtara_core.errors import ConfigError
from runtara_core.persistence import InstanceStatus, NewInstance, open_persistence
from runtara_core.persistence.factory import sqlite_path
from runtara_core.persistence.sqlite import SqlitePersistence
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
