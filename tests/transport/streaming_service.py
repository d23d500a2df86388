"""A test service for the upload and server-stream RPC shapes, on top of the echo service."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from runtara_core.errors import NotFound
from runtara_core.transport.quic_server import Session
from runtara_core.wire.dispatch import RequestBody, ResponseStream, Route, routes
from runtara_core.wire.messages import Message, Request
from tests.transport.echo_service import Recorder, echo_routes


class PutBlob(Request):
    op = "put_blob"
    name: str
    hold_s: float = 0.0
    """Wait this long before reading the body (a handler that does not keep up)."""


class BlobStored(Message):
    name: str
    size: int
    sha256: str


class Count(Request):
    op = "count"
    n: int
    fail_at: int | None = None
    final: bool = False


class Tick(Message):
    seq: int


class Forever(Request):
    op = "forever"


@dataclass
class StreamRecorder:
    upload_errors: list[BaseException] = field(default_factory=list)
    upload_failed: asyncio.Event = field(default_factory=asyncio.Event)
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    stream_started: asyncio.Event = field(default_factory=asyncio.Event)
    largest_chunk: int = 0


def streaming_routes(recorder: Recorder, seen: StreamRecorder):
    async def put_blob(request: PutBlob, session: Session, body: RequestBody) -> BlobStored:
        digest = hashlib.sha256()
        size = 0
        try:
            await asyncio.sleep(request.hold_s)
            async for chunk in body:
                seen.largest_chunk = max(seen.largest_chunk, len(chunk))
                digest.update(chunk)
                size += len(chunk)
        except BaseException as exc:
            seen.upload_errors.append(exc)
            seen.upload_failed.set()
            raise
        return BlobStored(name=request.name, size=size, sha256=digest.hexdigest())

    async def count(request: Count, session: Session, out: ResponseStream) -> Tick | None:
        for i in range(request.n):
            if request.fail_at == i:
                raise NotFound(f"tick {i} is missing")
            await out.send(Tick(seq=i))
        return Tick(seq=-1) if request.final else None

    async def forever(request: Forever, session: Session, out: ResponseStream) -> None:
        seen.stream_started.set()
        try:
            i = 0
            while True:
                await out.send({"seq": i})
                i += 1
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            seen.stream_cancelled.set()
            raise

    return {
        **echo_routes(recorder),
        **routes(
            Route(PutBlob, put_blob, mode="upload"),
            Route(Count, count, mode="server_stream"),
            Route(Forever, forever, mode="server_stream"),
        ),
    }
