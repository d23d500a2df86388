"""Graceful shutdown of an embedded core: stop accepting, finish in flight, close the pool."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtara_core.errors import TransportError
from runtara_core.persistence import NewImage, NewInstance
from runtara_core.server import CoreServer
from runtara_core.transport.certs import DevCertificates
from runtara_core.wire.messages import CheckpointRequest, CheckpointResponse
from tests.conftest import Backend
from tests.core.conftest import Core, core_settings
from tests.persistence.conftest import other_transaction


async def test_stop_finishes_a_checkpoint_in_flight_and_then_refuses(core: Core, backend: Backend) -> None:
    client, row = await core.running_instance()
    async with other_transaction(backend) as blocker:
        # Another writer holds the instance (PostgreSQL) or the database (SQLite) for a moment.
        await blocker.execute(
            f"UPDATE instances SET updated_at_ms = updated_at_ms WHERE instance_id = '{row.instance_id}'"
        )
        in_flight = asyncio.ensure_future(
            client.request(CheckpointRequest(checkpoint_id="last", state=b"saved"), CheckpointResponse)
        )
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(core.server.stop(grace_s=10))
        await asyncio.sleep(0.1)
        assert not stopping.done()
        await blocker.commit()
    assert not (await in_flight).found
    await stopping
    stored = await core.persistence.get_checkpoint(row.instance_id, "last")
    assert stored is not None and stored.state == b"saved"
    with pytest.raises(TransportError):
        await core.client()


async def test_a_standalone_core_closes_the_database_it_opened(tmp_path: Path, dev_certs: DevCertificates) -> None:
    settings = core_settings(tmp_path, dev_certs)
    server = CoreServer(settings)
    await server.start()
    persistence = server.persistence
    assert persistence is not None
    image = await persistence.create_image(
        NewImage(image_id="i", tenant="t", name="n", entrypoint="w:main", sha256="0" * 64, size_bytes=1)
    )
    await persistence.create_instance(NewInstance(instance_id="x", image_id=image.image_id))
    await server.stop()
    assert server.persistence is None and server.address is None
    with pytest.raises(ValueError, match="no active connection"):
        await persistence.get_instance("x")  # closed
