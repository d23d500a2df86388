"""A tiny test service: echo, a failing handler, a slow handler, and pushes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from runtara_core.transport.certs import DevCertificates, ensure_dev_certificates
from runtara_core.transport.quic_server import Session
from runtara_core.wire.dispatch import Route, routes
from runtara_core.wire.messages import Message, Request

ALPN = "runtara-test/1"


class Echo(Request):
    op = "echo"
    text: str


class EchoReply(Message):
    text: str


class Boom(Request):
    op = "boom"


class Slow(Request):
    op = "slow"
    seconds: float


class HangUp(Request):
    op = "hang_up"


class PushMe(Request):
    op = "push_me"
    count: int


@dataclass
class Recorder:
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    finished: int = 0


def echo_routes(recorder: Recorder):
    async def echo(request: Echo, session: Session) -> EchoReply:
        return EchoReply(text=request.text)

    async def boom(request: Boom, session: Session) -> None:
        raise RuntimeError("kaboom")

    async def slow(request: Slow, session: Session) -> EchoReply:
        try:
            await asyncio.sleep(request.seconds)
        except asyncio.CancelledError:
            recorder.cancelled.set()
            raise
        recorder.finished += 1
        return EchoReply(text="done")

    async def push_me(request: PushMe, session: Session) -> None:
        for i in range(request.count):
            session.push({"signal": "pause", "seq": i})

    async def hang_up(request: HangUp, session: Session) -> None:
        session.close("hanging up on purpose")

    return routes(
        Route(Echo, echo), Route(Boom, boom), Route(Slow, slow), Route(PushMe, push_me), Route(HangUp, hang_up)
    )


def other_ca(tmp: Path) -> DevCertificates:
    """A second, unrelated development CA."""
    return ensure_dev_certificates(tmp)


class Big(Request):
    op = "big"
    size: int
    delay_s: float = 0.0


class BigReply(Message):
    data: bytes


def big_routes(recorder: Recorder):
    async def big(request: Big, session: Session) -> BigReply:
        await asyncio.sleep(request.delay_s)
        return BigReply(data=b"z" * request.size)

    return {**echo_routes(recorder), **routes(Route(Big, big))}
