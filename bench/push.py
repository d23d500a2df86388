"""How fast a stored signal reaches a connected instance as a push, against the poll it replaces.

    .venv/bin/python bench/push.py [--signals 200]

A core (``CoreServer``) and one registered instance connection run in this process on loopback.
Each round stores a cancel or pause in the instance's slot and times from the start of that
write (its commit included) until the push frame arrives at the instance:

- ``in-process notifier``: the writer tells the core's ``SignalNotifier`` (what an embedding
  environment does), on SQLite and PostgreSQL;
- ``PostgreSQL NOTIFY``: the writer is a second store (its own pool, as another process would
  be) that only writes; the core hears of it through LISTEN/NOTIFY.

Without push an instance learns of a signal at its next checkpoint or poll: with a poll every
second that takes 500 ms on average, the baseline in the last column. PostgreSQL on RUNTARA_TEST_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/test), in a throwaway schema dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtara_core.config import Settings
from runtara_core.persistence import NewImage, NewInstance, Persistence, SignalType, open_persistence
from runtara_core.persistence.migrations import quote_ident
from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.server import CoreServer
from runtara_core.transport.certs import ensure_dev_certificates
from runtara_core.transport.quic_client import RpcClient
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.messages import RegisterRequest, RegisterResponse

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
POLL_INTERVAL_MS = 1000.0
PUSH_TIMEOUT_S = 5.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def measure(
    label: str, server: CoreServer, writer: Persistence, notify: bool, signals: int, scratch: Path
) -> None:
    store = server.persistence
    assert store is not None and server.address is not None
    instance_id = f"push-{uuid.uuid4().hex[:8]}"
    await store.create_instance(NewInstance(instance_id=instance_id, image_id="img"))
    arrivals: asyncio.Queue[float] = asyncio.Queue()
    client = RpcClient(
        "127.0.0.1", server.address[1], alpn=INSTANCE_ALPN,
        tls=ClientTls(ensure_dev_certificates(scratch / "certs").ca_cert),
        on_push=lambda _m: arrivals.put_nowait(time.perf_counter()),
    )
    await client.connect()
    token = server.tokens.mint(instance_id, 1)
    await client.request(RegisterRequest(instance_id=instance_id, token=token, attempt=1), RegisterResponse)
    latencies: list[float] = []
    lost = 0
    try:
        for n in range(signals):
            kind = SignalType.PAUSE if n % 2 else SignalType.CANCEL
            await writer.ack_signal(instance_id, SignalType.CANCEL)  # empty the slot: a cancel
            await writer.ack_signal(instance_id, SignalType.PAUSE)  # would outrank the next pause
            started = time.perf_counter()
            await writer.put_signal(instance_id, kind)
            if notify:
                server.notifier.signal_stored(instance_id)
            try:
                arrived = await asyncio.wait_for(arrivals.get(), PUSH_TIMEOUT_S)
            except TimeoutError:
                lost += 1
                continue
            latencies.append((arrived - started) * 1000)
    finally:
        await client.close()
    print(
        f"{label:<40} {len(latencies):>5} {percentile(latencies, 0.5):>8.3f} "
        f"{percentile(latencies, 0.99):>8.3f} {POLL_INTERVAL_MS / 2 / percentile(latencies, 0.5):>10.0f}x"
        + (f"  ({lost} not pushed within {PUSH_TIMEOUT_S:g}s)" if lost else "")
    )


async def run_backend(kind: str, url: str, signals: int, scratch: Path) -> None:
    schema = f"rt_push_bench_{uuid.uuid4().hex[:8]}" if kind == "postgres" else None
    store = await open_persistence(url, schema=schema) if schema else await open_persistence(url)
    try:
        await store.create_image(
            NewImage(image_id="img", tenant="bench", name="bench", entrypoint="w:main", sha256="0" * 64, size_bytes=1)
        )
        certs = ensure_dev_certificates(scratch / "certs")
        settings = Settings(
            data_dir=scratch / "data", core_addr="127.0.0.1:0", certs_dir=scratch / "certs",
            tls_cert=certs.server_cert, tls_key=certs.server_key, tls_ca=certs.ca_cert,
            instance_secret=secrets.token_hex(16),
        )
        server = CoreServer(settings, store)
        await server.start()
        try:
            await measure(f"{kind}: in-process notifier", server, store, True, signals, scratch)
            if kind == "postgres":
                other = await open_persistence(url, schema=schema)
                try:
                    await measure("postgres: another writer, NOTIFY", server, other, False, signals, scratch)
                finally:
                    await other.close()
        finally:
            await server.stop(grace_s=1)
    finally:
        await store.close()
        if schema is not None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
            finally:
                await conn.close()


async def main_async(signals: int) -> None:
    print(
        f"signal write started -> push frame at the instance, {signals} signals; "
        f"baseline: a poll every {POLL_INTERVAL_MS:g} ms ({POLL_INTERVAL_MS / 2:g} ms on average)"
    )
    print(f"{'path':<40} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'vs poll':>11}")
    with tempfile.TemporaryDirectory() as scratch:
        await run_backend("sqlite", f"sqlite:///{scratch}/push.db", signals, Path(scratch))
        url = os.environ.get("RUNTARA_TEST_DATABASE_URL", DEFAULT_PG_URL)
        try:
            await run_backend("postgres", url, signals, Path(scratch))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"postgres: skipped ({exc})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=200)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.signals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
