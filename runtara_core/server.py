"""The core server: the instance protocol on QUIC over one persistence backend.

Embeddable (the environment starts one in-process) or standalone through ``runtara-core``.
The instance-protocol handlers arrive with the "Core instance server" issue; until then the
server opens the database (applying migrations), presents its certificate and answers every
op with ``UNKNOWN_OP``.
"""

from __future__ import annotations

import logging
from typing import Any

from runtara_core.config import Settings
from runtara_core.persistence import Persistence, open_persistence
from runtara_core.protocol import INSTANCE_ALPN
from runtara_core.transport.quic_server import RpcServer, ServerLimits, Session
from runtara_core.transport.tls import resolve_server_tls
from runtara_core.wire.dispatch import Route

log = logging.getLogger(__name__)


def instance_routes(persistence: Persistence, settings: Settings) -> dict[str, Route[Any, Session]]:
    """The instance protocol's handler table (DESIGN section 3)."""
    return {}


class CoreServer:
    def __init__(self, settings: Settings, persistence: Persistence | None = None) -> None:
        self.settings = settings
        self._given_persistence = persistence
        self.persistence: Persistence | None = persistence
        self._rpc: RpcServer | None = None

    async def start(self) -> tuple[str, int]:
        """Open the database, then listen; returns the bound (host, port)."""
        settings = self.settings
        tls = resolve_server_tls(settings)
        if self.persistence is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            self.persistence = await open_persistence(settings.effective_database_url)
        self._rpc = RpcServer(
            alpn=INSTANCE_ALPN,
            routes=instance_routes(self.persistence, settings),
            tls=tls,
            limits=ServerLimits(
                max_frame_bytes=settings.max_frame_bytes,
                max_streams_per_connection=settings.max_streams_per_connection,
                idle_timeout_s=settings.idle_timeout_s,
                max_buffered_bytes_per_connection=settings.max_buffered_bytes_per_connection,
            ),
        )
        address = settings.core_address
        try:
            return await self._rpc.start(address.host, address.port)
        except BaseException:
            self._rpc = None
            await self._close_own_persistence()
            raise

    @property
    def address(self) -> tuple[str, int] | None:
        return self._rpc.address if self._rpc else None

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, finish in-flight RPCs (bounded), close the database we opened."""
        if self._rpc is not None:
            await self._rpc.stop(grace_s)
            self._rpc = None
        await self._close_own_persistence()

    async def _close_own_persistence(self) -> None:
        if self.persistence is not None and self._given_persistence is None:
            await self.persistence.close()
            self.persistence = None
