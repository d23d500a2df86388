"""A real QUIC RPC server on loopback with a small test handler table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from runtara_core.transport.certs import DevCertificates
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.quic_server import RpcServer, ServerLimits
from runtara_core.transport.tls import ClientTls, ServerTls
from tests.transport.echo_service import ALPN, Recorder, echo_routes



@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


ServerFactory = Callable[..., Awaitable[RpcServer]]


@pytest.fixture
async def start_server(dev_certs: DevCertificates, recorder: Recorder) -> AsyncIterator[ServerFactory]:
    servers: list[RpcServer] = []

    async def start(port: int = 0, limits: ServerLimits = ServerLimits(), alpn: str = ALPN) -> RpcServer:
        server = RpcServer(
            alpn=alpn,
            routes=echo_routes(recorder),
            tls=ServerTls(dev_certs.server_cert, dev_certs.server_key),
            limits=limits,
        )
        await server.start("127.0.0.1", port)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop(grace_s=0.1)


@pytest.fixture
async def server(start_server: ServerFactory) -> RpcServer:
    return await start_server()


ClientFactory = Callable[..., Awaitable[RpcClient]]


@pytest.fixture
async def make_client(dev_certs: DevCertificates) -> AsyncIterator[ClientFactory]:
    clients: list[RpcClient] = []

    async def make(
        port: int,
        *,
        alpn: str = ALPN,
        tls: ClientTls | None = None,
        options: ClientOptions = ClientOptions(request_timeout_s=10, connect_timeout_s=5),
        connect: bool = True,
        **kwargs,
    ) -> RpcClient:
        client = RpcClient(
            "127.0.0.1", port, alpn=alpn, tls=tls or ClientTls(dev_certs.ca_cert), options=options, **kwargs
        )
        clients.append(client)
        if connect:
            await client.connect()
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(server: RpcServer, make_client: ClientFactory) -> RpcClient:
    assert server.address is not None
    return await make_client(server.address[1])
