"""The core server: the instance protocol on QUIC over one persistence backend.

Embeddable (the environment starts one in-process and shares its database, token minting and
signal notifier) or standalone through ``runtara-core``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from runtara_core.config import Settings
from runtara_core.instance_protocol.handlers import InstanceService
from runtara_core.instance_protocol.signal_push import ConnectedInstances
from runtara_core.instance_tokens import InstanceTokens, load_instance_tokens
from runtara_core.persistence import Persistence
from runtara_core.persistence.base import SignalListener
from runtara_core.persistence.rules import Clock, wall_clock_ms
from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.signal_notifier import SignalNotifier
from runtara_core.transport.quic_server import RpcServer, ServerLimits
from runtara_core.transport.tls import resolve_server_tls

log = logging.getLogger(__name__)


class CoreServer:
    """``start()`` opens what was not given, then listens; ``stop()`` drains and closes it."""

    def __init__(
        self,
        settings: Settings,
        persistence: Persistence | None = None,
        *,
        tokens: InstanceTokens | None = None,
        notifier: SignalNotifier | None = None,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.settings = settings
        self._given_persistence = persistence
        self.persistence: Persistence | None = persistence
        self.tokens = tokens or load_instance_tokens(settings)
        """Mints the token of each launch; the environment uses the same object."""
        self.notifier = notifier or SignalNotifier()
        """Tell it when a signal was stored, and a connected instance gets a push."""
        self._clock = clock
        self._rpc: RpcServer | None = None
        self._connected: ConnectedInstances | None = None
        self._listener: SignalListener | None = None
        self._unsubscribe: Callable[[], None] | None = None

    async def start(self) -> tuple[str, int]:
        """Open the database, then listen; returns the bound (host, port)."""
        settings = self.settings
        tls = resolve_server_tls(settings)
        if self.persistence is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            self.persistence = await settings.open_database()
        try:
            connected = self._connected = ConnectedInstances(self.persistence)
            self._unsubscribe = self.notifier.subscribe(connected.signal_stored)
            self._listener = await self.persistence.listen_signals(connected.signal_stored)
            service = InstanceService(
                self.persistence,
                self.tokens,
                connected,
                max_frame_bytes=settings.max_frame_bytes,
                max_state_bytes=settings.max_checkpoint_bytes,
                history_budget_bytes=settings.register_history_budget_bytes,
                hibernate_after_ms=settings.hibernate_after_ms,
                clock=self._clock,
            )
            self._rpc = RpcServer(
                alpn=INSTANCE_ALPN,
                routes=service.routes(),
                tls=tls,
                limits=ServerLimits.from_settings(settings),
            )
            address = settings.core_address
            return await self._rpc.start(address.host, address.port)
        except BaseException:
            self._rpc = None
            await self._release()
            raise

    @property
    def address(self) -> tuple[str, int] | None:
        return self._rpc.address if self._rpc else None

    @property
    def connected_instances(self) -> int:
        return self._connected.connected_count if self._connected else 0

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, finish in-flight RPCs, close what this server opened.

        RPCs still running after ``grace_s`` are cancelled; a database call they started
        cannot be interrupted and is waited for (on SQLite at most the busy timeout), so a
        write is either committed or not, never half done.
        """
        try:
            if self._rpc is not None:
                await self._rpc.stop(grace_s)
        finally:
            self._rpc = None
            await self._release()

    async def _release(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._connected is not None:
            await self._connected.close()
            self._connected = None
        if self.persistence is not None and self._given_persistence is None:
            await self.persistence.close()
            self.persistence = None
