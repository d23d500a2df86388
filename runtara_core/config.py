"""Settings for every Runtara process, read from ``RUNTARA_*`` environment variables (or ``.env``).

``load_settings()`` is the one entry point: it turns pydantic's validation report into a
``ConfigError`` whose message is one line naming the offending variable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtara_core.errors import ConfigError

if TYPE_CHECKING:
    from runtara_core.persistence import Persistence

MIB = 1024 * 1024
ENV_PREFIX = "RUNTARA_"


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(value: str) -> HostPort:
    """Parse ``host:port`` or ``[v6]:port``; raises ValueError with a readable reason."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("expected HOST:PORT (for IPv6 [ADDR]:PORT)")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    return HostPort(host, port)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    data_dir: Path = Path(".data")
    database_url: str = ""
    database_schema: str | None = None
    """PostgreSQL only: keep the tables in this schema (created if missing), e.g. to share one
    database between several deployments."""
    core_addr: str = "127.0.0.1:8001"
    env_addr: str = "127.0.0.1:8002"
    certs_dir: Path = Path("certs")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_insecure: bool = False
    token: str | None = None
    tokens_file: Path | None = None
    max_frame_bytes: int = Field(16 * MIB, ge=64, le=2**32 - 1)
    max_checkpoint_bytes: int = Field(4 * MIB, ge=1)
    register_history_budget_bytes: int = Field(8 * MIB, ge=0)
    """Checkpoint states sent back with ``register`` (replay without a round trip per step)."""
    instance_secret: SecretStr | None = Field(None, min_length=16)
    """Signs instance tokens; generated into the data dir when unset."""
    max_concurrent_instances: int = Field(32, ge=1)
    hibernate_after_ms: int = Field(5000, ge=0)
    heartbeat_timeout_ms: int = Field(60000, ge=100)
    default_max_attempts: int = Field(3, ge=1)
    launcher: Literal["fork", "spawn"] = "fork"
    # -- the environment (DESIGN sections 5, 6, 8) --
    node_id: str = ""
    """Names this environment in health and on the instances it launches; default host:pid."""
    embed_core: bool = True
    """Run the core in the environment process, sharing its database (the default)."""
    default_timeout_s: float | None = Field(None, gt=0)
    """Execution timeout (running time) of instances started without one; None = no limit."""
    stop_grace_s: float = Field(10.0, ge=0)
    """Between SIGTERM and SIGKILL when an instance must stop (timeouts, shutdown)."""
    crash_backoff_initial_ms: int = Field(500, ge=0)
    crash_backoff_max_ms: int = Field(30_000, ge=0)
    """Relaunch after a crash waits initial * 2^(attempt-1), capped here."""
    wake_lead_ms: int = Field(1000, ge=0)
    """Hibernating instances are launched this early and sleep the rest in process, so process
    start-up does not make them late."""
    wake_sweep_interval_s: float = Field(2.0, gt=0)
    """How often the wake scheduler and the launcher re-read the database for other writers."""
    supervisor_sweep_interval_s: float = Field(1.0, gt=0)
    """How often silent (heartbeat timeout) and overdue (execution timeout) instances are sought."""
    max_image_bytes: int = Field(256 * MIB, ge=1)
    """An image as sent, and unpacked."""
    max_image_files: int = Field(10_000, ge=1)
    instance_memory_limit_bytes: int | None = Field(None, ge=16 * MIB)
    """Address-space limit (RLIMIT_AS) of every instance process; None = none."""
    instance_cpu_limit_s: int | None = Field(None, ge=1)
    """CPU-time limit (RLIMIT_CPU) per launch; None = none."""
    instance_heartbeat_interval_s: float | None = Field(None, gt=0)
    """Passed to instances (RUNTARA_HEARTBEAT_INTERVAL_S); None = a third of the heartbeat timeout."""
    stderr_tail_bytes: int = Field(4096, ge=0)
    """How much of a launch's stderr.log is kept on the instance row."""
    run_retention_s: int = Field(7 * 24 * 3600, ge=0)
    """A finished instance's run directory (DATA_DIR/runs/<id>: logs, workspace) is deleted this
    long after it finished; 0 = as soon as its process is gone. Its stderr tail stays on the row."""
    run_retention_interval_s: float = Field(60.0, gt=0)
    """How often run directories past their retention are sought and deleted."""
    request_timeout_s: float = Field(30.0, gt=0)
    idle_timeout_s: float = Field(60.0, gt=0)
    max_streams_per_connection: int = Field(128, ge=1, le=100_000)
    max_buffered_bytes_per_connection: int = Field(64 * MIB, ge=64)
    max_connections: int = Field(10_000, ge=1)
    request_arrival_timeout_s: float = Field(30.0, gt=0)
    """A request stream must deliver its whole frame within this long after its first byte."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("core_addr", "env_addr")
    @classmethod
    def _valid_addr(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("max_buffered_bytes_per_connection")
    @classmethod
    def _budget_fits_a_frame(cls, value: int, info: ValidationInfo) -> int:
        frame = info.data.get("max_frame_bytes")
        if frame is not None and value < frame:
            raise ValueError(
                f"must be at least RUNTARA_MAX_FRAME_BYTES ({frame}): no frame that large could arrive"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _valid_database_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
        return value

    @property
    def core_address(self) -> HostPort:
        return parse_host_port(self.core_addr)

    @property
    def env_address(self) -> HostPort:
        return parse_host_port(self.env_addr)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'runtara.db'}"

    async def open_database(self, **options: Any) -> Persistence:
        """The database these settings name, opened and migrated."""
        from runtara_core.persistence import open_persistence

        if self.database_schema is not None:
            options.setdefault("schema", self.database_schema)
        return await open_persistence(self.effective_database_url, **options)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; overrides (keyword = field name) win."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        reason = first["msg"].removeprefix("Value error, ")
        raw = first.get("input")
        shown = f" (got {raw!r})" if isinstance(raw, (str, int, float)) else ""
        raise ConfigError(f"invalid setting {ENV_PREFIX}{field.upper()}: {reason}{shown}") from None
