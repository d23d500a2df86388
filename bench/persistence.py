"""Latency of save_checkpoint_if_absent on both backends, next to the raw driver's plain insert.

    .venv/bin/python bench/persistence.py [--ops 3000] [--state-bytes 1024]

SQLite runs on a temporary file; PostgreSQL on RUNTARA_TEST_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/test) in a throwaway schema that is dropped at the end.
"1 writer" is one task saving checkpoints back to back; "32 writers" are 32 tasks, each its own
instance (as 32 instance processes would be), sharing one store. The raw rows do the same
INSERT ... ON CONFLICT DO NOTHING and nothing else (no liveness update, no signal read): the
gap is the price of the contract. Raw sqlite3 runs on the calling thread, so it has no
concurrent variant.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtara_core.persistence import NewImage, NewInstance, Persistence
from runtara_core.persistence.migrations import quote_ident
from runtara_core.persistence.postgres import PostgresPersistence
from runtara_core.persistence.sqlite import SqlitePersistence

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
WRITERS = 32
RAW_INSERT = (
    "INSERT INTO checkpoints (instance_id, checkpoint_id, state, created_at_ms) "
    "VALUES ({}, {}, {}, {}) ON CONFLICT (instance_id, checkpoint_id) DO NOTHING"
)


@dataclass(frozen=True)
class Result:
    backend: str
    writers: int
    driver: str
    latencies_s: list[float]
    wall_s: float

    def row(self) -> str:
        ordered = sorted(self.latencies_s)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        rate = len(ordered) / self.wall_s
        return (
            f"{self.backend:<10} {self.writers:>7} {self.driver:<34} {len(ordered):>6} "
            f"{rate:>9.0f} {p50:>8.3f} {p99:>8.3f}"
        )


Save = Callable[[str, str], Awaitable[object]]


async def run_writers(save: Save, instance_ids: list[str], ops: int) -> tuple[list[float], float]:
    """Each writer saves ops/len(instance_ids) new checkpoints on its own instance."""
    per_writer = ops // len(instance_ids)
    latencies: list[float] = []

    async def writer(instance_id: str) -> None:
        for n in range(per_writer):
            started = time.perf_counter()
            await save(instance_id, f"step-{n}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(writer(i) for i in instance_ids))
    return latencies, time.perf_counter() - started


async def prepare(store: Persistence, prefix: str, count: int) -> list[str]:
    image = await store.create_image(
        NewImage(f"{prefix}-img", "bench", f"{prefix}-wf", "wf:main", "0" * 64, 0)
    )
    ids = [f"{prefix}-{n}" for n in range(count)]
    for instance_id in ids:
        await store.create_instance(NewInstance(instance_id, image.image_id))
    return ids


async def bench_persistence(
    backend: str, store: Persistence, state: bytes, ops: int, tag: str
) -> list[Result]:
    async def save(instance_id: str, checkpoint_id: str) -> object:
        return await store.save_checkpoint_if_absent(instance_id, checkpoint_id, state)

    results = []
    for writers in (1, WRITERS):
        ids = await prepare(store, f"{tag}-p{writers}", writers)
        await run_writers(save, ids, min(ops, 200))  # warm-up on instances of its own
        ids = await prepare(store, f"{tag}-q{writers}", writers)
        latencies, wall = await run_writers(save, ids, ops)
        results.append(Result(backend, writers, "save_checkpoint_if_absent", latencies, wall))
    return results


def bench_raw_sqlite(path: Path, instance_id: str, state: bytes, ops: int) -> Result:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")  # as the store runs it: like for like
    conn.execute("PRAGMA foreign_keys = ON")
    sql = RAW_INSERT.format("?", "?", "?", "?")
    latencies = []
    started = time.perf_counter()
    for n in range(ops):
        t = time.perf_counter()
        conn.execute(sql, (instance_id, f"raw-{n}", state, 0))
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    conn.close()
    return Result("sqlite", 1, "raw sqlite3, same thread", latencies, wall)


async def bench_raw_postgres(
    url: str,
    schema: str,
    instance_ids: list[str],
    state: bytes,
    ops: int,
    writer_counts: Sequence[int] = (1, WRITERS),
) -> list[Result]:
    sql = RAW_INSERT.format("$1", "$2", "$3", "$4")
    size = max(writer_counts)
    pool = await asyncpg.create_pool(
        url, min_size=size, max_size=size, server_settings={"search_path": schema}
    )
    results = []
    try:
        for writers in writer_counts:
            prefix = f"raw{writers}"

            async def save(instance_id: str, checkpoint_id: str, prefix: str = prefix) -> object:
                return await pool.execute(sql, instance_id, f"{prefix}-{checkpoint_id}", state, 0)

            latencies, wall = await run_writers(save, instance_ids[:writers], ops)
            results.append(Result("postgres", writers, "raw asyncpg pool", latencies, wall))
    finally:
        await pool.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=3200, help="operations per run")
    parser.add_argument("--state-bytes", type=int, default=1024)
    args = parser.parse_args()
    state = os.urandom(args.state_bytes)
    results: list[Result] = []

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        store = await SqlitePersistence.open(path)
        try:
            results += await bench_persistence("sqlite", store, state, args.ops, "s")
            raw_ids = await prepare(store, "sraw", 1)
        finally:
            await store.close()
        results.append(bench_raw_sqlite(path, raw_ids[0], state, args.ops))

    url = os.environ.get("RUNTARA_TEST_DATABASE_URL", DEFAULT_PG_URL)
    schema = f"rt_bench_{uuid.uuid4().hex[:12]}"
    try:
        pg = await PostgresPersistence.open(url, schema=schema, max_size=WRITERS)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"PostgreSQL at {url} unavailable ({exc}); SQLite only.\n")
    else:
        try:
            results += await bench_persistence("postgres", pg, state, args.ops, "p")
            raw_ids = await prepare(pg, "praw", WRITERS)
        finally:
            await pg.close()
        try:
            results += await bench_raw_postgres(url, schema, raw_ids, state, args.ops)
        finally:
            conn = await asyncpg.connect(url)
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
            await conn.close()

    print(f"{args.state_bytes}-byte states, new checkpoint per op\n")
    print(
        f"{'backend':<10} {'writers':>7} {'driver':<34} {'ops':>6} {'ops/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8}"
    )
    order = {"sqlite": 0, "postgres": 1}
    for result in sorted(results, key=lambda r: (order[r.backend], r.writers)):
        print(result.row())


if __name__ == "__main__":
    asyncio.run(main())
