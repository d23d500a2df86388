"""What the SDK adds to a step, with process effects taken out: one warm process, one core.

    .venv/bin/python bench/sdk_inprocess.py                 # SQLite on a temp file
    .venv/bin/python bench/sdk_inprocess.py postgresql://postgres@127.0.0.1:5432/test

An in-process ``CoreServer`` (QUIC on loopback) and, alternately, a bare ``RpcClient`` saving
``checkpoint``s and a ``Context`` running empty ``@step``s, ``--steps`` each, ``--rounds``
times. The difference of the p50s is the SDK's own cost per step; ``bench/sdk.py`` measures
the same step in real instance processes (cold interpreters) next to DBOS. On PostgreSQL the
tables go to a throwaway schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from runtara_core.config import Settings
from runtara_core.persistence import NewImage, NewInstance, Persistence, open_persistence
from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.server import CoreServer
from runtara_core.transport.certs import ensure_dev_certificates
from runtara_core.transport.quic_client import RpcClient
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.messages import CheckpointRequest, CheckpointResponse, RegisterRequest, RegisterResponse
from runtara_sdk import step
from runtara_sdk.client import InstanceClient
from runtara_sdk.context import Context
from runtara_sdk.instance_signals import InstanceSignals
from runtara_sdk.settings import InstanceSettings


@step
async def empty() -> int:
    return 1


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


async def bare_round(core: CoreServer, port: int, ca: Path, db: Persistence, instance_id: str, steps: int) -> float:
    await db.create_instance(NewInstance(instance_id=instance_id, image_id="img", input=b""))
    client = RpcClient("127.0.0.1", port, alpn=INSTANCE_ALPN, tls=ClientTls(ca))
    await client.connect()
    try:
        token = core.tokens.mint(instance_id, 1)
        await client.request(RegisterRequest(instance_id=instance_id, token=token, attempt=1), RegisterResponse)
        samples = []
        for i in range(steps):
            started = time.perf_counter()
            request = CheckpointRequest(checkpoint_id=f"{i + 1}:step:empty", state=b"\x92\xa2ok\x01")
            await client.request(request, CheckpointResponse)
            samples.append(time.perf_counter() - started)
        return p50_ms(samples)
    finally:
        await client.close()


async def sdk_round(core: CoreServer, port: int, ca: Path, db: Persistence, instance_id: str, steps: int) -> float:
    await db.create_instance(NewInstance(instance_id=instance_id, image_id="img", input=b""))
    settings = InstanceSettings(
        instance_id=instance_id, instance_token=core.tokens.mint(instance_id, 1), server_addr=f"127.0.0.1:{port}", tls_ca=ca
    )
    signals = InstanceSignals()
    client = InstanceClient(settings, on_push=signals.on_push)
    await client.connect()
    try:
        context = Context(client, signals)

        async def workflow() -> list[float]:
            samples = []
            for _ in range(steps):
                started = time.perf_counter()
                await empty()
                samples.append(time.perf_counter() - started)
            return samples

        with context.bound():
            task = asyncio.create_task(workflow())
        return p50_ms(await task)
    finally:
        await client.close()


async def main(url: str | None, steps: int, rounds: int) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="rt-sdk-inproc-"))
    certs = ensure_dev_certificates(scratch / "certs")
    schema = f"rt_bench_{uuid.uuid4().hex[:12]}" if url else None
    db = await open_persistence(url or f"sqlite:///{scratch / 'runtara.db'}", **({"schema": schema} if schema else {}))
    try:
        await db.create_image(NewImage(image_id="img", tenant="t", name="n", entrypoint="w:main", sha256="0" * 64, size_bytes=1))
        settings = Settings(
            data_dir=scratch / "data", certs_dir=certs.ca_cert.parent, tls_cert=certs.server_cert,
            tls_key=certs.server_key, tls_ca=certs.ca_cert, core_addr="127.0.0.1:0", instance_secret="b" * 32,
        )  # fmt: skip
        core = CoreServer(settings, db)
        _, port = await core.start()
        try:
            print(f"{'round':>5}  {'bare RPC p50':>12}  {'SDK step p50':>12}  {'SDK adds':>9}   ({steps} each, ms)")
            for n in range(rounds):
                bare = await bare_round(core, port, certs.ca_cert, db, f"bare-{n}", steps)
                sdk = await sdk_round(core, port, certs.ca_cert, db, f"sdk-{n}", steps)
                print(f"{n + 1:>5}  {bare:>12.3f}  {sdk:>12.3f}  {sdk - bare:>+9.3f}")
        finally:
            await core.stop()
    finally:
        await db.close()
        if url and schema:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", help="postgresql://... (default: SQLite on a temp file)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.url, arguments.steps, arguments.rounds))
