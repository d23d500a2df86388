"""The low-level instance client: one QUIC connection to core, registered as one launch.

Plain scripts may use it directly; the workflow API (``Context``) is built on it. Every op
of the instance protocol is idempotent on the core's side for a given launch (save-if-absent,
stored sleep records, first-writer-wins reports, repeatable acks), so an op that loses its
connection is sent again once the client has reconnected and re-registered, until
``core_unreachable_exit_s`` runs out. A refusal that means this launch is over (hibernated,
paused, finished, superseded) becomes ``LaunchEnded``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from runtara_core.errors import (
    ConfigError,
    Forbidden,
    HandshakeError,
    InternalError,
    InvalidState,
    NotFound,
    RuntaraError,
    TransportError,
    Unauthenticated,
)
from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.transport.quic_client import ClientOptions, RpcClient, background
from runtara_core.transport.tls import ClientTls
from runtara_core.wire.messages import (
    AckSignalRequest,
    CheckpointRequest,
    CheckpointResponse,
    CustomSignalPush,
    Empty,
    EventRequest,
    GetCheckpointRequest,
    GetCheckpointResponse,
    Message,
    PendingSignal,
    PollSignalsRequest,
    PollSignalsResponse,
    RegisterRequest,
    RegisterResponse,
    Request,
    RetryAttemptRequest,
    SignalPush,
    SleepRequest,
    SleepResponse,
    StatusRequest,
    StatusResponse,
    WaitSignalRequest,
    WaitSignalResponse,
    validate_message,
)
from runtara_sdk.errors import LaunchEnded
from runtara_sdk.settings import InstanceSettings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Push = SignalPush | CustomSignalPush
ENDING_REFUSALS = (InvalidState, Forbidden, NotFound, Unauthenticated)
"""Refusals of register that no retry can fix: this launch must exit."""
RETRY_PAUSE_S = 0.05
CONNECT_RETRY_PAUSE_S = 0.2
"""Between connect attempts while core is unreachable (each attempt is a fresh handshake)."""


def parse_push(message: Any) -> Push | None:
    """A server push frame as a typed message; None (and a log line) for anything else."""
    if isinstance(message, dict):
        kind = message.get("push")
        try:
            if kind == "signal":
                return validate_message(SignalPush, message, "signal push")
            if kind == "custom_signal":
                return validate_message(CustomSignalPush, message, "custom signal push")
        except RuntaraError as error:
            log.warning("ignored a malformed push from core: %s", error.message)
            return None
    log.debug("ignored an unknown push from core: %r", message)
    return None


class InstanceClient:
    """One launch's connection to core. ``await connect()`` registers and returns the history."""

    def __init__(self, settings: InstanceSettings, *, on_push: Callable[[Push], None] | None = None) -> None:
        if settings.tls_ca is None and not settings.tls_insecure:
            raise ConfigError("RUNTARA_TLS_CA is not set: the environment passes the CA that core's certificate is signed by")
        host, port = settings.server_host_port()
        self.settings = settings
        self.instance_id = settings.instance_id
        self.attempt = settings.attempt
        self._on_push = on_push
        self.launch_id = settings.launch_id or secrets.token_hex(12)
        """This process, to core: only the launch that started the instance may re-register."""
        self.registration: RegisterResponse | None = None
        self.ended: str | None = None
        self.last_liveness = time.monotonic()
        """When core last counted this launch as alive (checkpoints, sleeps, waits, beats)."""
        self._rpc = RpcClient(
            host,
            port,
            alpn=INSTANCE_ALPN,
            tls=ClientTls(settings.tls_ca, settings.tls_insecure),
            options=ClientOptions(
                request_timeout_s=settings.request_timeout_s,
                connect_timeout_s=settings.connect_timeout_s,
            ),
            on_push=self._push_received,
            on_connected=self._register,
        )

    @classmethod
    def from_env(cls, *, on_push: Callable[[Push], None] | None = None) -> InstanceClient:
        return cls(InstanceSettings(), on_push=on_push)  # type: ignore[call-arg]

    async def connect(self) -> RegisterResponse:
        """Connect and register. Raises ``LaunchEnded`` if core refuses this launch, or a
        ``TransportError`` naming why core cannot be reached.

        Core unreachable (down, restarting, or gone while the register was in flight: the
        environment that launched us was killed) is retried like every later op, for
        ``core_unreachable_exit_s``: a launch that gave up after one connect timeout would lose
        an attempt to an environment restart. A refused handshake (TLS, ALPN) is final."""
        deadline = time.monotonic() + self.settings.core_unreachable_exit_s
        while True:
            try:
                await self._rpc.connect()
                break
            except InternalError as error:  # core failed, it did not refuse: register again
                if time.monotonic() >= deadline:
                    raise LaunchEnded(f"core kept failing to register this launch: {error.message}") from None
                log.info("register failed (%s); sending it again", error.message)
                await asyncio.sleep(RETRY_PAUSE_S)
            except HandshakeError:
                raise
            except TransportError as error:
                if time.monotonic() >= deadline:
                    raise
                log.info("core unreachable (%s); connecting again", error)
                await asyncio.sleep(CONNECT_RETRY_PAUSE_S)
            except RuntaraError as error:
                raise LaunchEnded(f"core refused to register this launch: {error.message}") from None
        assert self.registration is not None
        return self.registration

    async def close(self) -> None:
        await self._rpc.close()

    async def __aenter__(self) -> InstanceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _register(self, rpc: RpcClient) -> None:
        """Runs on every (re)connect: a new connection must be bound to this launch again."""
        request = RegisterRequest(
            instance_id=self.instance_id,
            token=self.settings.instance_token,
            attempt=self.attempt,
            launch_id=self.launch_id,
        )
        try:
            fields = await rpc.call_on_connection(request)
        except ENDING_REFUSALS as refusal:
            if self.registration is not None:  # a reconnect: stop trying, the launch is over
                self.ended = f"core refused to re-register this launch: {refusal.message}"
                background(self._rpc.close())  # not awaited here: we are inside its connect
            raise
        fields.pop("ok", None)
        response = validate_message(RegisterResponse, fields, "response to register")
        if self.registration is None:
            self.registration = response
        elif response.pending_signal is not None and self._on_push is not None:
            # A signal may have been pushed while we were away: hear it now.
            self._on_push(SignalPush(signal_type=response.pending_signal.signal_type))

    def _push_received(self, message: Any) -> None:
        push = parse_push(message)
        if push is not None and self._on_push is not None:
            self._on_push(push)

    # ------------------------------------------------------------------ the retry loop

    async def _request(self, request: Request, response_type: type[M], *, liveness: bool = False) -> M:
        deadline = time.monotonic() + self.settings.core_unreachable_exit_s
        while True:
            if self.ended is not None:
                raise LaunchEnded(self.ended)
            try:
                response = await self._rpc.request(request, response_type)
                if liveness:
                    self.last_liveness = time.monotonic()
                return response
            except (TransportError, InternalError) as error:  # every op may be sent again
                if self.ended is not None:
                    raise LaunchEnded(self.ended) from None
                if time.monotonic() >= deadline:
                    self.ended = (
                        f"core unreachable for {self.settings.core_unreachable_exit_s:g}s "
                        f"(RUNTARA_CORE_UNREACHABLE_EXIT_S): {error}"
                    )
                    raise LaunchEnded(self.ended) from None
                log.info("%s failed (%s); sending it again", request.op, error)
                await asyncio.sleep(RETRY_PAUSE_S)

    # ------------------------------------------------------------------ the instance protocol

    async def checkpoint(self, checkpoint_id: str, state: bytes) -> CheckpointResponse:
        return await self._request(
            CheckpointRequest(checkpoint_id=checkpoint_id, state=state), CheckpointResponse, liveness=True
        )

    async def get_checkpoint(self, checkpoint_id: str) -> GetCheckpointResponse:
        return await self._request(GetCheckpointRequest(checkpoint_id=checkpoint_id), GetCheckpointResponse)

    async def sleep(
        self, checkpoint_id: str, duration_ms: int, *, state: bytes = b"", may_hibernate: bool = True
    ) -> SleepResponse:
        return await self._request(
            SleepRequest(checkpoint_id=checkpoint_id, duration_ms=duration_ms, state=state, may_hibernate=may_hibernate),
            SleepResponse,
            liveness=True,
        )

    async def wait_signal(
        self,
        name: str,
        checkpoint_id: str,
        timeout_ms: int | None,
        *,
        may_hibernate: bool = True,
        deadline_ms: int | None = None,
    ) -> WaitSignalResponse:
        return await self._request(
            WaitSignalRequest(
                name=name,
                checkpoint_id=checkpoint_id,
                timeout_ms=timeout_ms,
                may_hibernate=may_hibernate,
                deadline_ms=deadline_ms,
            ),
            WaitSignalResponse,
            liveness=True,
        )

    async def poll_signals(self) -> PendingSignal | None:
        return (await self._request(PollSignalsRequest(), PollSignalsResponse)).pending_signal

    async def ack_signal(self, signal_type: str) -> None:
        await self._request(AckSignalRequest(signal_type=signal_type), Empty)  # type: ignore[arg-type]

    async def event(self, type: str, payload: bytes | None = None, subtype: str | None = None) -> None:
        request = EventRequest(type=type, payload=payload, subtype=subtype)  # type: ignore[arg-type]
        await self._request(request, Empty, liveness=type == "heartbeat")

    async def heartbeat(self) -> None:
        await self.event("heartbeat")

    async def completed(self, output: bytes) -> None:
        await self.event("completed", output)

    async def failed(self, error: bytes) -> None:
        await self.event("failed", error)

    async def custom_event(self, subtype: str, payload: bytes | None = None) -> None:
        await self.event("custom", payload, subtype)

    async def retry_attempt(self, checkpoint_id: str, attempt: int, error: str) -> None:
        await self._request(
            RetryAttemptRequest(checkpoint_id=checkpoint_id, attempt=attempt, error=error[: 64 * 1024]), Empty
        )

    async def status(self) -> StatusResponse:
        return await self._request(StatusRequest(), StatusResponse)
