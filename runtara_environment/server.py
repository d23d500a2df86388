"""The environment: management protocol, image registry, supervisor and wake scheduler, and by
default an embedded core, all over one database (DESIGN section 1).

``start()`` opens the database (migrating it), starts the core, recovers the instances an
earlier process left behind, then serves; ``stop()`` stops serving and supervising and leaves
instance processes running, so that the next start adopts them.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from runtara_core.config import Settings
from runtara_core.instance_tokens import InstanceTokens, load_instance_tokens
from runtara_core.persistence import Persistence
from runtara_core.persistence.rules import Clock, wall_clock_ms
from runtara_core.secret_file import read_or_create_secret
from runtara_core.protocol import MANAGEMENT_ALPN
from runtara_core.server import CoreServer
from runtara_core.signal_notifier import SignalNotifier
from runtara_core.transport.certs import DevCertificates
from runtara_core.transport.quic_server import RpcServer, ServerLimits
from runtara_core.transport.tls import resolve_server_tls
from runtara_environment.fork_launcher import ForkLauncher
from runtara_environment.image_registry import ImageRegistry
from runtara_environment.management_service import ManagementService
from runtara_environment.management_tokens import load_tokens
from runtara_environment.process_runner import ProcessLauncher, launcher_environment
from runtara_environment.run_retention import RunRetention
from runtara_environment.supervisor import CoreEndpoint, Supervisor
from runtara_environment.wake_scheduler import WakeScheduler

log = logging.getLogger(__name__)

LAUNCHER_READY_WAIT_S = 20.0
"""How long a start waits for the fork launcher's imports before launching cold meanwhile."""


def default_node_id(data_dir: Path) -> str:
    """Stable across restarts (a restarted environment must recognise its own instances):
    the host name plus a suffix generated once into the data directory."""
    suffix = read_or_create_secret(data_dir / "node-id")[:8]
    return f"{socket.gethostname()}-{suffix}"


class EnvironmentServer:
    def __init__(self, settings: Settings, *, clock: Clock = wall_clock_ms) -> None:
        self.settings = settings
        self._clock = clock
        self.persistence: Persistence | None = None
        self.core: CoreServer | None = None
        self.supervisor: Supervisor | None = None
        self.scheduler: WakeScheduler | None = None
        self.retention: RunRetention | None = None
        self._rpc: RpcServer | None = None
        self.launcher: ProcessLauncher | None = None
        self.node_id = settings.node_id

    async def start(self) -> tuple[str, int]:
        """Returns the management address bound."""
        settings = self.settings
        tls = resolve_server_tls(settings)
        management_tokens = load_tokens(tokens_file=settings.tokens_file, data_dir=settings.data_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.node_id = settings.node_id or default_node_id(settings.data_dir)
        launcher = self._start_launcher()  # its imports overlap with the rest of the start
        self.persistence = await settings.open_database()
        try:
            notifier = SignalNotifier()
            instance_tokens = load_instance_tokens(settings)
            core_addr = await self._start_core(notifier, instance_tokens)
            if launcher.fork_launcher is not None and not await launcher.fork_launcher.wait_ready(LAUNCHER_READY_WAIT_S):
                log.warning("the fork launcher is not ready yet: launches are cold spawns until it is")
            registry = ImageRegistry(
                self.persistence,
                settings.data_dir.resolve() / "images",
                max_bytes=settings.max_image_bytes,
                max_files=settings.max_image_files,
            )
            scheduler = self.scheduler = WakeScheduler(
                self.persistence,
                clock=self._clock,
                lead_ms=settings.wake_lead_ms,
                sweep_interval_s=settings.wake_sweep_interval_s,
                on_claimed=lambda _n: supervisor.poke(),
            )
            supervisor = self.supervisor = Supervisor(
                self.persistence,
                settings,
                tokens=instance_tokens,
                registry=registry,
                core=CoreEndpoint(core_addr, self._client_ca(), settings.tls_insecure),
                node_id=self.node_id,
                clock=self._clock,
                launcher=launcher,
                on_relaunch_scheduled=scheduler.note_wake,
            )
            await supervisor.start()
            scheduler.start()
            self.retention = RunRetention(
                self.persistence,
                supervisor,
                runs_dir=supervisor.runs_dir,
                retention_s=settings.run_retention_s,
                interval_s=settings.run_retention_interval_s,
                clock=self._clock,
            )
            self.retention.start()
            service = ManagementService(
                self.persistence,
                settings,
                tokens=management_tokens,
                registry=registry,
                supervisor=supervisor,
                notifier=notifier,
                clock=self._clock,
            )
            self._rpc = RpcServer(
                alpn=MANAGEMENT_ALPN,
                routes=service.routes(),
                tls=tls,
                limits=ServerLimits.from_settings(settings),
            )
            address = settings.env_address
            bound = await self._rpc.start(address.host, address.port)
            supervisor.poke()
            return bound
        except BaseException:
            await self.stop()
            raise

    def _start_launcher(self) -> ProcessLauncher:
        settings = self.settings
        fork_launcher = None
        if settings.launcher == "fork":
            fork_launcher = ForkLauncher(launcher_environment(os.environ))
            try:
                fork_launcher.start()
            except OSError as error:
                log.warning("cannot fork launches here (%s): launches are cold spawns", error)
                fork_launcher = None
        self.launcher = ProcessLauncher(stderr_tail_bytes=settings.stderr_tail_bytes, fork_launcher=fork_launcher)
        return self.launcher

    async def _start_core(self, notifier: SignalNotifier, tokens: InstanceTokens) -> str:
        """The address launches dial: the embedded core's, or the configured external one."""
        if not self.settings.embed_core:
            return self.settings.core_addr
        assert self.persistence is not None
        self.core = CoreServer(
            self.settings, self.persistence, tokens=tokens, notifier=notifier, clock=self._clock
        )
        host, port = await self.core.start()
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _client_ca(self) -> Path | None:
        settings = self.settings
        if settings.tls_insecure:
            return None
        ca = settings.tls_ca or DevCertificates.in_dir(settings.certs_dir).ca_cert
        return ca.resolve()

    @property
    def address(self) -> tuple[str, int] | None:
        return self._rpc.address if self._rpc else None

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._rpc is not None:
            await self._rpc.stop(grace_s)
            self._rpc = None
        if self.retention is not None:
            await self.retention.stop()
            self.retention = None
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        if self.launcher is not None:
            await self.launcher.stop()
            self.launcher = None
        if self.core is not None:
            await self.core.stop(grace_s)
            self.core = None
        if self.persistence is not None:
            await self.persistence.close()
            self.persistence = None
