"""ManagementClient and runtara-ctl against a small fake management server on loopback.

The real environment server is written elsewhere; this fake serves a few ops from a dict so
the client's hello-on-connect, typed results, error mapping and wait/watch logic are exercised
over real QUIC. Streamed ops (watch, big uploads) run only once the transport offers them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtara_core.errors import ConnectionLost, NotFound, RequestTimeout, Unauthenticated
from runtara_core.protocol import MANAGEMENT_ALPN
from runtara_core.transport.certs import DevCertificates
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.quic_server import RpcServer, Session
from runtara_core.transport.tls import ClientTls, ServerTls
from runtara_core.wire.dispatch import Route, routes
from runtara_core.wire.management_messages import (
    GetInstanceRequest,
    HealthRequest,
    HealthResponse,
    HelloRequest,
    HelloResponse,
    ImageDetail,
    InstanceDetail,
    RegisterImageRequest,
    StartInstanceRequest,
    StartInstanceResponse,
    WatchFrame,
    WatchRequest,
    EventPage,
    EventRow,
)
from runtara_environment import ctl
from runtara_environment.client import ManagementClient

TOKEN = "fake-admin-token-0123456789"
HAS_STREAM = hasattr(RpcClient, "stream")


class FakeEnvironment:
    def __init__(self) -> None:
        self.hellos = 0
        self.instances: dict[str, dict[str, Any]] = {}
        self.images: list[RegisterImageRequest] = []
        self.uploaded: list[bytes] = []
        self.upload_mode = False

    def routes(self) -> dict[str, Route[Any, Session]]:
        async def hello(request: HelloRequest, session: Session) -> HelloResponse:
            if request.token != TOKEN:
                raise Unauthenticated("no such token")
            self.hellos += 1
            return HelloResponse(tenant=None, admin=True)

        async def health(request: HealthRequest, session: Session) -> HealthResponse:
            counts = {s: 0 for s in ("pending", "running", "suspended", "completed", "failed", "cancelled")}
            return HealthResponse(version="test", uptime_s=1.0, node_id="fake", instances=counts)

        async def start_instance(request: StartInstanceRequest, session: Session) -> StartInstanceResponse:
            instance_id = request.instance_id or f"i-{len(self.instances) + 1}"
            status = "completed" if request.input != "fail" else "failed"
            self.instances[instance_id] = {
                "instance_id": instance_id, "tenant": "t", "image": "img-1", "image_name": request.image,
                "status": status, "attempt": 1, "input": request.input,
                "output": {"echo": request.input} if status == "completed" else None,
                "error": "ValueError: fail" if status == "failed" else None,
                "termination_reason": "completed" if status == "completed" else "application_error",
                "created_at_ms": 1, "max_attempts": 3,
            }
            return StartInstanceResponse(instance_id=instance_id, status="pending", created=True)

        async def get_instance(request: GetInstanceRequest, session: Session) -> InstanceDetail:
            if request.instance_id not in self.instances:
                raise NotFound(f"instance {request.instance_id} not found")
            return InstanceDetail.model_validate(self.instances[request.instance_id])

        async def register_image(request: RegisterImageRequest, session: Session) -> ImageDetail:
            self.images.append(request)
            return ImageDetail(
                image_id="img-1", tenant="t", name=request.name, version=1, filename=request.filename,
                size_bytes=request.size_bytes, sha256=request.sha256, created_at_ms=1,
            )

        async def upload_image(request: RegisterImageRequest, session: Session, body: Any) -> ImageDetail:
            received = b"".join([chunk async for chunk in body])
            self.uploaded.append(received)
            return await register_image(request, session)

        async def watch(request: WatchRequest, session: Session, out: Any) -> None:
            instance = self.instances[request.instance_id or ""]
            event = EventRow(event_id=1, instance_id=instance["instance_id"], type="custom",
                             subtype="progress", payload=b'{"step": 1}', created_at_ms=1_700_000_000_000)
            await out.send(WatchFrame(frame="event", event=event))
            await out.send(WatchFrame(frame="end", status=instance["status"]))

        return routes(
            Route(HelloRequest, hello),
            Route(HealthRequest, health),
            Route(StartInstanceRequest, start_instance),
            Route(GetInstanceRequest, get_instance),
            Route(RegisterImageRequest, upload_image if self.upload_mode else register_image,
                  mode="upload" if self.upload_mode else "unary"),
            Route(WatchRequest, watch, mode="server_stream"),
        )


@pytest.fixture
def upload_mode() -> bool:
    return False


@pytest.fixture
async def fake(dev_certs: DevCertificates, upload_mode: bool) -> AsyncIterator[tuple[FakeEnvironment, int]]:
    environment = FakeEnvironment()
    environment.upload_mode = upload_mode
    server = RpcServer(
        alpn=MANAGEMENT_ALPN,
        routes=environment.routes(),
        tls=ServerTls(dev_certs.server_cert, dev_certs.server_key),
    )
    _, port = await server.start("127.0.0.1", 0)
    yield environment, port
    await server.stop(grace_s=0.1)


def make_client(dev_certs: DevCertificates, port: int, token: str = TOKEN) -> ManagementClient:
    return ManagementClient(
        "127.0.0.1", port, token=token, tls=ClientTls(dev_certs.ca_cert),
        options=ClientOptions(request_timeout_s=10, connect_timeout_s=5),
    )


async def test_hello_on_connect_and_typed_results(fake, dev_certs: DevCertificates) -> None:
    environment, port = fake
    async with make_client(dev_certs, port) as client:
        assert environment.hellos == 1
        assert client.identity == HelloResponse(tenant=None, admin=True)
        health = await client.health()
        assert isinstance(health, HealthResponse) and health.node_id == "fake"
        started = await client.start_instance("flow", {"n": 1}, instance_id="o-1")
        assert started.instance_id == "o-1"
        detail = await client.get_instance("o-1")
        assert isinstance(detail, InstanceDetail) and detail.output == {"echo": {"n": 1}}
        with pytest.raises(NotFound):
            await client.get_instance("nope")


async def test_wrong_token_is_refused_at_connect(fake, dev_certs: DevCertificates) -> None:
    _, port = fake
    client = make_client(dev_certs, port, token="wrong-token-0123456789")
    with pytest.raises(Unauthenticated):
        await client.connect()
    await client.close()


async def test_register_small_image_inline(fake, dev_certs: DevCertificates, tmp_path: Path) -> None:
    environment, port = fake
    flow = tmp_path / "flow.py"
    flow.write_text("async def main(ctx, x):\n    return x\n")
    async with make_client(dev_certs, port) as client:
        image = await client.register_image(flow, name="flow", entrypoint="flow:main")
    assert image.filename == "flow.py" and image.size_bytes == flow.stat().st_size
    assert environment.images[0].data == flow.read_bytes()


async def test_wait_falls_back_to_polling_and_times_out_naming_the_instance(
    fake, dev_certs: DevCertificates
) -> None:
    environment, port = fake
    async with make_client(dev_certs, port) as client:
        await client.start_instance("flow", 1, instance_id="done")
        detail = await client.wait("done", timeout_s=10)  # via watch, or polling without it
        assert detail.status == "completed"
        environment.instances["done"]["status"] = "running"
        if not HAS_STREAM:
            with pytest.raises(RequestTimeout, match="done"):
                await client.wait("done", timeout_s=0.5)


def _run_main_in_thread(argv: list[str]) -> int:
    return ctl.main(argv)


@pytest.mark.parametrize(("instance_input", "code"), [("ok", 0), ("fail", 1)])
async def test_ctl_start_wait_exit_code_and_output(
    fake, dev_certs: DevCertificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], instance_input: str, code: int,
) -> None:
    _, port = fake
    monkeypatch.setenv("RUNTARA_CERTS_DIR", str(Path(dev_certs.ca_cert).parent))
    monkeypatch.setenv("RUNTARA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RUNTARA_TOKEN", TOKEN)
    argv = ["instance", "start", "flow", "--input", json.dumps(instance_input), "--wait",
            "--addr", f"127.0.0.1:{port}", "--wait-timeout", "10"]
    assert await asyncio.to_thread(_run_main_in_thread, argv) == code
    captured = capsys.readouterr()
    if code == 0:
        assert captured.out.splitlines()[-1] == '{"echo":"ok"}'
    else:
        assert captured.err.splitlines() == ["runtara-ctl: i-1 failed (application_error): ValueError: fail"]


async def test_ctl_get_json_and_server_error_line(
    fake, dev_certs: DevCertificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environment, port = fake
    monkeypatch.setenv("RUNTARA_CERTS_DIR", str(Path(dev_certs.ca_cert).parent))
    monkeypatch.setenv("RUNTARA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RUNTARA_ENV_ADDR", f"127.0.0.1:{port}")
    async with make_client(dev_certs, port) as client:
        await client.start_instance("flow", {"a": 1}, instance_id="o-9")
    argv = ["instance", "get", "o-9", "--json", "--token", TOKEN]
    assert await asyncio.to_thread(_run_main_in_thread, argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["instance_id"] == "o-9" and document["input"] == {"a": 1}
    argv = ["instance", "get", "missing", "--token", TOKEN]
    assert await asyncio.to_thread(_run_main_in_thread, argv) == ctl.EXIT_SERVER_ERROR
    assert capsys.readouterr().err.splitlines() == ["runtara-ctl: NOT_FOUND: instance missing not found"]


@pytest.mark.skipif(not hasattr(RpcClient, "upload"), reason="transport has no upload yet")
@pytest.mark.parametrize("upload_mode", [True])
async def test_register_big_image_streams_the_bytes_after_the_frame(
    fake, dev_certs: DevCertificates
) -> None:
    environment, port = fake
    data = b"# padding\n" * 20_000  # 200 kB: over a 192 KiB frame limit minus the margin
    client = ManagementClient(
        "127.0.0.1", port, token=TOKEN, tls=ClientTls(dev_certs.ca_cert),
        options=ClientOptions(request_timeout_s=10, connect_timeout_s=5, max_frame_bytes=192 * 1024),
    )
    async with client:
        image = await client.register_image(data, name="big", filename="big.py")
    assert environment.images[0].data is None
    assert environment.uploaded == [data] and image.size_bytes == len(data)


@pytest.mark.skipif(not HAS_STREAM, reason="transport has no stream yet")
async def test_watch_yields_events_then_end_and_wait_reports_them(fake, dev_certs: DevCertificates) -> None:
    _, port = fake
    async with make_client(dev_certs, port) as client:
        await client.start_instance("flow", 1, instance_id="w-1")
        frames = [frame async for frame in client.watch("w-1")]
        assert [f.frame for f in frames] == ["event", "end"] and frames[1].status == "completed"
        seen: list[EventRow] = []
        detail = await client.wait("w-1", timeout_s=10, on_event=seen.append)
        assert detail.status == "completed" and [e.subtype for e in seen] == ["progress"]


async def test_wait_polls_when_the_watch_breaks(
    fake, dev_certs: DevCertificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment, port = fake

    async def broken_watch(*_a: Any, **_k: Any) -> AsyncIterator[WatchFrame]:
        raise ConnectionLost("connection lost mid-request")
        yield  # pragma: no cover - makes this an async generator

    async with make_client(dev_certs, port) as client:
        await client.start_instance("flow", 1, instance_id="p-1")
        environment.instances["p-1"]["status"] = "running"
        monkeypatch.setattr(client, "watch", broken_watch)
        monkeypatch.setattr(client, "list_events", _no_events)
        asyncio.get_running_loop().call_later(0.5, environment.instances["p-1"].update, {"status": "cancelled"})
        detail = await client.wait("p-1", timeout_s=10)
        assert detail.status == "cancelled"
        with pytest.raises(RequestTimeout, match="p-1"):
            environment.instances["p-1"]["status"] = "running"
            await client.wait("p-1", timeout_s=0.5)


async def _no_events(*_a: Any, **_k: Any) -> EventPage:
    return EventPage(items=[], total=0)
