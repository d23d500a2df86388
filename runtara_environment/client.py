"""Async client of the management protocol (DESIGN section 4): what ``runtara-ctl`` and scripts use.

One QUIC connection (an ``RpcClient`` on ``MANAGEMENT_ALPN``). The bearer token is presented with
``hello`` on every (re)connect through the ``on_connected`` hook, so a reconnect is invisible to
callers. Every method sends one typed request and returns the typed response model of
``runtara_core.wire.management_messages``; server errors arrive as the typed ``RuntaraError`` of
their wire code, connection problems as ``TransportError``.

Requests are built with ``validate_message`` so a bad argument is a ``BadRequest`` naming the
field before anything is sent. ``build_image_upload`` is pure (no I/O besides reading the
source), so the inline-or-streamed decision is testable without a server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import JsonValue

from runtara_core.config import Settings, load_settings
from runtara_core.errors import BadRequest, RequestTimeout, TransportError
from runtara_core.protocol import MANAGEMENT_ALPN
from runtara_core.transport.quic_client import ClientOptions, RpcClient
from runtara_core.transport.tls import ClientTls, resolve_client_tls
from runtara_core.wire.frame_codec import HEADER_SIZE, pack_payload
from runtara_core.wire.management_messages import (
    CheckpointPage,
    CheckpointRow,
    DeleteImageRequest,
    DeleteImageResponse,
    EventPage,
    EventRow,
    GetCheckpointRequest,
    GetImageRequest,
    GetInstanceRequest,
    HealthRequest,
    HealthResponse,
    HelloRequest,
    HelloResponse,
    ImageDetail,
    ImagePage,
    InstanceDetail,
    InstancePage,
    InstanceStatusResponse,
    ListCheckpointsRequest,
    ListEventsRequest,
    ListImagesRequest,
    ListInstancesRequest,
    RegisterImageRequest,
    ResumeInstanceRequest,
    SendCustomSignalRequest,
    SendSignalRequest,
    StartInstanceRequest,
    StartInstanceResponse,
    StopInstanceRequest,
    WatchFrame,
    WatchRequest,
)
from runtara_core.wire.messages import Message, Request, validate_message
from runtara_environment.image_archive import archive_directory
from runtara_environment.management_tokens import find_client_token

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Request)

FRAME_MARGIN_BYTES = 64 * 1024
"""Room left under the frame limit so an inline image never ends up refused as too large."""
BIN_HEADER_BYTES = 5
"""msgpack ``bin 32`` header: what the inline ``data`` field adds besides its bytes."""
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
POLL_INITIAL_S = 0.2
POLL_MAX_S = 5.0
DEFAULT_OPTIONS = ClientOptions()


def build_request(request_type: type[R], what: str, **fields: Any) -> R:
    """A request validated like the server will, so a bad argument fails here, naming the field."""
    return validate_message(request_type, fields, what)


def upload_timeout_s(size_bytes: int) -> float:
    """Generous for slow links: 30 s plus one second per 4 MiB."""
    return 30.0 + size_bytes / (4 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class ImageUpload:
    """A ``register_image`` request and, when the image is too big to inline, the bytes that
    follow its frame on the stream (``body``; then ``request.data`` is None)."""

    request: RegisterImageRequest
    body: bytes | None

    @property
    def streamed(self) -> bool:
        return self.body is not None


def read_image_source(source: Path | bytes, filename: str | None = None) -> tuple[bytes, str]:
    """The image bytes and the file name to send for them.

    A ``.py`` file or an archive is sent as is; a directory is archived deterministically (so
    the same tree always has the same sha256) and named ``<dirname>.tar.gz``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not filename:
            raise BadRequest("image bytes need a filename (e.g. 'flow.py' or 'flow.tar.gz')")
        return bytes(source), filename
    path = Path(source)
    if path.is_dir():
        return archive_directory(path), filename or f"{path.resolve().name}.tar.gz"
    if not path.is_file():
        raise BadRequest(f"no image at {path}: give a .py file, a .zip/.tar.gz/.tgz or a directory")
    if not (path.name.endswith(".py") or path.name.endswith(ARCHIVE_SUFFIXES)):
        raise BadRequest(f"{path} is neither a .py file nor a .zip/.tar.gz/.tgz archive")
    return path.read_bytes(), filename or path.name


def build_image_upload(
    data: bytes,
    *,
    filename: str,
    name: str,
    max_frame_bytes: int,
    entrypoint: str | None = None,
    description: str = "",
    input_schema: dict[str, JsonValue] | None = None,
    metadata: dict[str, str] | None = None,
    tenant: str | None = None,
) -> ImageUpload:
    """The register request for ``data``: inline when it fits well inside one frame, else
    streamed after the frame. Size and sha256 are computed here, never trusted from a caller."""
    if not data:
        raise BadRequest("the image is empty")
    fields: dict[str, Any] = {
        "tenant": tenant,
        "name": name,
        "description": description,
        "entrypoint": entrypoint,
        "input_schema": input_schema,
        "metadata": metadata or {},
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "filename": filename,
        "data": None,
    }
    bare = build_request(RegisterImageRequest, "register_image request", **fields)
    inline_size = HEADER_SIZE + len(pack_payload(bare.to_wire())) + BIN_HEADER_BYTES + len(data)
    if inline_size <= max_frame_bytes - FRAME_MARGIN_BYTES:
        fields["data"] = data
        return ImageUpload(build_request(RegisterImageRequest, "register_image request", **fields), None)
    return ImageUpload(bare, data)


def client_options(settings: Settings, *, connect_timeout_s: float | None = None) -> ClientOptions:
    """Transport options from the settings the server shares with us (frame limit, timeouts)."""
    options = ClientOptions(
        request_timeout_s=settings.request_timeout_s,
        idle_timeout_s=settings.idle_timeout_s,
        max_frame_bytes=settings.max_frame_bytes,
    )
    if connect_timeout_s is not None:
        options = replace(options, connect_timeout_s=connect_timeout_s)
    return options


class ManagementClient:
    """A management connection, authenticated with ``token`` on every (re)connect."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        token: str,
        tls: ClientTls,
        options: ClientOptions = DEFAULT_OPTIONS,
    ) -> None:
        self.host = host
        self.port = port
        self.options = options
        self._token = token
        self.identity: HelloResponse | None = None
        """Who the server says we are (set by the ``hello`` of the latest connect)."""
        self._rpc = RpcClient(
            host,
            port,
            alpn=MANAGEMENT_ALPN,
            tls=tls,
            options=options,
            on_connected=self._authenticate,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        *,
        token: str | None = None,
        connect_timeout_s: float | None = None,
    ) -> ManagementClient:
        """A client configured by ``RUNTARA_*`` settings (address, CA, token, frame limit)."""
        settings = settings or load_settings()
        address = settings.env_address
        resolved_token = token if token is not None else find_client_token(
            explicit=settings.token, data_dir=settings.data_dir
        )
        return cls(
            address.host,
            address.port,
            token=resolved_token,
            tls=resolve_client_tls(settings),
            options=client_options(settings, connect_timeout_s=connect_timeout_s),
        )

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # -- connection --------------------------------------------------------------------------

    async def connect(self) -> HelloResponse:
        """Connect and authenticate; raises ``TransportError`` or the server's refusal."""
        await self._rpc.connect()
        assert self.identity is not None
        return self.identity

    async def close(self) -> None:
        await self._rpc.close()

    async def __aenter__(self) -> ManagementClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _authenticate(self, rpc: RpcClient) -> None:
        """Runs on every (re)connect: each new connection must say ``hello`` first."""
        fields = await rpc.call_on_connection(HelloRequest(token=self._token))
        self.identity = self._response(HelloResponse, fields, "hello")

    @staticmethod
    def _response(response_type: type[M], fields: dict[str, Any], op: str) -> M:
        fields = dict(fields)
        fields.pop("ok", None)
        return validate_message(response_type, fields, f"response to {op}")

    async def _request(self, request: Request, response_type: type[M]) -> M:
        return await self._rpc.request(request, response_type)

    # -- ops -----------------------------------------------------------------------------------

    async def hello(self) -> HelloResponse:
        """Authenticate again on the current connection; returns who the token stands for."""
        self.identity = await self._request(HelloRequest(token=self._token), HelloResponse)
        return self.identity

    async def health(self) -> HealthResponse:
        return await self._request(HealthRequest(), HealthResponse)

    async def register_image(
        self,
        source: Path | bytes,
        *,
        name: str,
        entrypoint: str | None = None,
        description: str = "",
        input_schema: dict[str, JsonValue] | None = None,
        metadata: dict[str, str] | None = None,
        tenant: str | None = None,
        filename: str | None = None,
    ) -> ImageDetail:
        data, sent_name = read_image_source(source, filename)
        upload = build_image_upload(
            data,
            filename=sent_name,
            name=name,
            max_frame_bytes=self.options.max_frame_bytes,
            entrypoint=entrypoint,
            description=description,
            input_schema=input_schema,
            metadata=metadata,
            tenant=tenant,
        )
        timeout = max(self.options.request_timeout_s, upload_timeout_s(len(data)))
        if upload.body is None:
            return await self._rpc.request(upload.request, ImageDetail, timeout_s=timeout)
        log.debug("streaming image %s (%d bytes) after the request frame", name, len(data))
        fields = await self._rpc.upload(upload.request, upload.body, timeout_s=timeout)
        return self._response(ImageDetail, fields, "register_image")

    async def list_images(
        self, *, name: str | None = None, tenant: str | None = None, limit: int = 100, offset: int = 0
    ) -> ImagePage:
        request = build_request(
            ListImagesRequest, "list_images request", name=name, tenant=tenant, limit=limit, offset=offset
        )
        return await self._request(request, ImagePage)

    async def get_image(self, image: str, tenant: str | None = None) -> ImageDetail:
        request = build_request(GetImageRequest, "get_image request", image=image, tenant=tenant)
        return await self._request(request, ImageDetail)

    async def delete_image(self, image: str, tenant: str | None = None) -> DeleteImageResponse:
        request = build_request(DeleteImageRequest, "delete_image request", image=image, tenant=tenant)
        return await self._request(request, DeleteImageResponse)

    async def start_instance(
        self,
        image: str,
        input: JsonValue = None,
        *,
        instance_id: str | None = None,
        timeout_s: float | None = None,
        max_attempts: int | None = None,
        env: dict[str, str] | None = None,
        priority: int = 0,
        tenant: str | None = None,
    ) -> StartInstanceResponse:
        request = build_request(
            StartInstanceRequest,
            "start_instance request",
            image=image,
            input=input,
            instance_id=instance_id,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            env=env or {},
            priority=priority,
            tenant=tenant,
        )
        return await self._request(request, StartInstanceResponse)

    async def stop_instance(self, instance_id: str, grace_s: float = 10.0) -> InstanceStatusResponse:
        request = build_request(
            StopInstanceRequest, "stop_instance request", instance_id=instance_id, grace_s=grace_s
        )
        return await self._request(request, InstanceStatusResponse)

    async def resume_instance(self, instance_id: str) -> InstanceStatusResponse:
        request = build_request(ResumeInstanceRequest, "resume_instance request", instance_id=instance_id)
        return await self._request(request, InstanceStatusResponse)

    async def send_signal(self, instance_id: str, signal: str) -> InstanceStatusResponse:
        """``signal`` is cancel, pause or resume."""
        request = build_request(
            SendSignalRequest, "send_signal request", instance_id=instance_id, signal=signal
        )
        return await self._request(request, InstanceStatusResponse)

    async def send_custom_signal(
        self, instance_id: str, name: str, payload: JsonValue = None
    ) -> InstanceStatusResponse:
        request = build_request(
            SendCustomSignalRequest,
            "send_custom_signal request",
            instance_id=instance_id,
            name=name,
            payload=payload,
        )
        return await self._request(request, InstanceStatusResponse)

    async def get_instance(self, instance_id: str) -> InstanceDetail:
        request = build_request(GetInstanceRequest, "get_instance request", instance_id=instance_id)
        return await self._request(request, InstanceDetail)

    async def list_instances(
        self,
        *,
        status: list[str] | str | None = None,
        image: str | None = None,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
        finished_after_ms: int | None = None,
        finished_before_ms: int | None = None,
        order: str = "-created_at",
        limit: int = 100,
        offset: int = 0,
        tenant: str | None = None,
    ) -> InstancePage:
        statuses = [status] if isinstance(status, str) else status
        request = build_request(
            ListInstancesRequest,
            "list_instances request",
            status=statuses,
            image=image,
            created_after_ms=created_after_ms,
            created_before_ms=created_before_ms,
            finished_after_ms=finished_after_ms,
            finished_before_ms=finished_before_ms,
            order=order,
            limit=limit,
            offset=offset,
            tenant=tenant,
        )
        return await self._request(request, InstancePage)

    async def list_checkpoints(
        self, instance_id: str, *, limit: int = 100, offset: int = 0, with_state: bool = False
    ) -> CheckpointPage:
        request = build_request(
            ListCheckpointsRequest,
            "list_checkpoints request",
            instance_id=instance_id,
            limit=limit,
            offset=offset,
            with_state=with_state,
        )
        return await self._request(request, CheckpointPage)

    async def get_checkpoint(self, instance_id: str, checkpoint_id: str) -> CheckpointRow:
        request = build_request(
            GetCheckpointRequest,
            "get_checkpoint request",
            instance_id=instance_id,
            checkpoint_id=checkpoint_id,
        )
        return await self._request(request, CheckpointRow)

    async def list_events(self, instance_id: str, *, after_id: int = 0, limit: int = 100) -> EventPage:
        request = build_request(
            ListEventsRequest, "list_events request", instance_id=instance_id, after_id=after_id, limit=limit
        )
        return await self._request(request, EventPage)

    async def watch(
        self, instance_id: str | None = None, *, after_id: int = 0, tenant: str | None = None
    ) -> AsyncIterator[WatchFrame]:
        """Every event (of one instance, or of the tenant) as it happens, then an ``end`` frame.

        Stored events after ``after_id`` are replayed first. Stop iterating to cancel the watch.
        """
        request = build_request(
            WatchRequest, "watch request", instance_id=instance_id, after_id=after_id, tenant=tenant
        )
        frames = self._rpc.stream(request)
        try:
            async for fields in frames:
                frame = self._response(WatchFrame, fields, "watch")
                yield frame
                if frame.frame == "end":
                    return
        finally:
            closer = getattr(frames, "aclose", None)
            if closer is not None:
                await closer()

    async def wait(
        self,
        instance_id: str,
        timeout_s: float | None = None,
        *,
        on_event: Callable[[EventRow], None] | None = None,
    ) -> InstanceDetail:
        """The instance once it is terminal (completed, failed or cancelled).

        Follows ``watch`` (``on_event`` sees each event as it arrives); if the watch breaks,
        falls back to polling with bounded backoff. ``RequestTimeout`` after ``timeout_s``.
        """
        try:
            async with asyncio.timeout(timeout_s):
                last_event_id = 0
                try:
                    async for frame in self.watch(instance_id):
                        if frame.event is not None:
                            last_event_id = max(last_event_id, frame.event.event_id)
                            if on_event is not None:
                                on_event(frame.event)
                    detail = await self.get_instance(instance_id)
                    if detail.status in TERMINAL_STATUSES:
                        return detail
                    log.info("watch of %s ended while it is %s; polling", instance_id, detail.status)
                except TransportError as error:
                    log.info("watch of %s broke (%s); polling instead", instance_id, error)
                return await self._poll_until_terminal(instance_id, last_event_id, on_event)
        except TimeoutError:
            raise RequestTimeout(
                f"instance {instance_id} did not finish within {timeout_s:g}s"
            ) from None

    async def _poll_until_terminal(
        self, instance_id: str, after_id: int, on_event: Callable[[EventRow], None] | None
    ) -> InstanceDetail:
        delay = POLL_INITIAL_S
        while True:
            started = time.monotonic()
            try:
                if on_event is not None:
                    page = await self.list_events(instance_id, after_id=after_id, limit=1000)
                    for event in page.items:
                        after_id = max(after_id, event.event_id)
                        on_event(event)
                detail = await self.get_instance(instance_id)
                if detail.status in TERMINAL_STATUSES:
                    return detail
            except TransportError as error:  # the client reconnects by itself; keep asking
                log.info("polling %s failed (%s); trying again", instance_id, error)
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))
            delay = min(delay * 2, POLL_MAX_S)
