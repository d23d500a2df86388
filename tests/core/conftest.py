"""A real core server on loopback over each backend, and instances to register with it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtara_core.config import Settings
from runtara_core.instance_tokens import InstanceTokens
from runtara_core.persistence import (
    ImageRow,
    InstanceRow,
    InstanceStatus,
    NewImage,
    NewInstance,
    Persistence,
)
from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.server import CoreServer
from runtara_core.transport.certs import DevCertificates
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.messages import RegisterRequest, RegisterResponse
from tests.conftest import Backend, FakeClock

SECRET = "test-secret-0123456789abcdef"


@dataclass
class Core:
    """One running core plus what a test needs around it."""

    server: CoreServer
    persistence: Persistence
    backend: Backend
    clock: FakeClock
    tokens: InstanceTokens
    ca: Path
    image: ImageRow
    port: int
    clients: list[RpcClient] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    async def new_instance(self, instance_id: str | None = None, *, input: bytes = b"") -> InstanceRow:
        row, created = await self.persistence.create_instance(
            NewInstance(instance_id=instance_id or f"inst-{next(self._ids)}", image_id=self.image.image_id, input=input)
        )
        assert created
        return row

    async def client(
        self, *, on_push: Callable[[Any], None] | None = None, options: ClientOptions | None = None
    ) -> RpcClient:
        client = RpcClient(
            "127.0.0.1",
            self.port,
            alpn=INSTANCE_ALPN,
            tls=ClientTls(self.ca),
            options=options or ClientOptions(request_timeout_s=10, connect_timeout_s=5),
            on_push=on_push,
        )
        self.clients.append(client)
        await client.connect()
        return client

    def token(self, instance_id: str, attempt: int = 1) -> str:
        return self.tokens.mint(instance_id, attempt)

    async def register(
        self,
        instance_id: str,
        *,
        attempt: int = 1,
        on_push: Callable[[Any], None] | None = None,
        client: RpcClient | None = None,
    ) -> tuple[RpcClient, RegisterResponse]:
        client = client or await self.client(on_push=on_push)
        response = await client.request(
            RegisterRequest(instance_id=instance_id, token=self.token(instance_id, attempt), attempt=attempt),
            RegisterResponse,
        )
        return client, response

    async def running_instance(
        self, instance_id: str | None = None, *, input: bytes = b"", on_push: Callable[[Any], None] | None = None
    ) -> tuple[RpcClient, InstanceRow]:
        """A new instance registered on a fresh connection (so it is running)."""
        row = await self.new_instance(instance_id, input=input)
        client, _ = await self.register(row.instance_id, on_push=on_push)
        return client, row

    async def status(self, instance_id: str) -> InstanceStatus:
        row = await self.persistence.get_instance(instance_id)
        assert row is not None
        return row.status


def core_settings(tmp_path: Path, certs: DevCertificates, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path / "data",
        certs_dir=certs.ca_cert.parent,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tls_ca=certs.ca_cert,
        core_addr="127.0.0.1:0",
        instance_secret=SECRET,
    )
    values.update(overrides)
    return Settings(**values)


CoreFactory = Callable[..., Any]


@pytest.fixture
async def start_core(
    backend: Backend, persistence: Persistence, clock: FakeClock, dev_certs: DevCertificates, tmp_path: Path
) -> AsyncIterator[CoreFactory]:
    """``await start_core(**settings)``: a core on a free port over the test's backend."""
    started: list[Core] = []
    image = await persistence.create_image(
        NewImage(image_id="img-1", tenant="acme", name="orders", entrypoint="w:main", sha256="0" * 64, size_bytes=1)
    )

    async def start(**overrides: Any) -> Core:
        settings = core_settings(tmp_path, dev_certs, **overrides)
        server = CoreServer(settings, persistence, clock=clock)
        _, port = await server.start()
        core = Core(server, persistence, backend, clock, server.tokens, dev_certs.ca_cert, image, port)
        started.append(core)
        return core

    yield start
    for core in started:
        for client in core.clients:
            await client.close()
        await core.server.stop(grace_s=0.2)


@pytest.fixture
async def core(start_core: CoreFactory) -> Core:
    return await start_core()
