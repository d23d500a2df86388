"""What the environment tells a launch, read from RUNTARA_* variables (DESIGN section 8)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtara_core.config import parse_host_port
from runtara_sdk.failpoints import parse_failpoints


class InstanceSettings(BaseSettings):
    """One launch of one instance. Only the environment's variables: no database, no secrets
    but this launch's own token."""

    model_config = SettingsConfigDict(env_prefix="RUNTARA_", extra="ignore")

    instance_id: str = Field(min_length=1)
    instance_token: str = Field(min_length=1)
    attempt: int = Field(default=1, ge=1)
    server_addr: str = "127.0.0.1:8001"
    tls_ca: Path | None = None
    tls_insecure: bool = False
    run_dir: Path | None = None
    launch_id: str | None = Field(default=None, min_length=8, max_length=64)
    """Names this process to the core and the environment; random when not given."""

    image_path: Path | None = None
    """A workflow ``.py`` file, or a directory with ``image_entrypoint`` naming module:function."""
    image_entrypoint: str | None = None

    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    """How often an otherwise silent instance proves it is alive (and polls for signals)."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    core_unreachable_exit_s: float = Field(default=60.0, gt=0)
    """How long an operation keeps retrying through lost connections before the launch gives up."""
    signal_wait_poll_s: float = Field(default=1.0, gt=0)
    """While a signal wait runs in-process, how often it asks the core in case a push was lost."""
    failpoints: str = ""
    """Chaos testing only: where this process SIGKILLs itself (``runtara_sdk.failpoints``)."""

    @field_validator("failpoints")
    @classmethod
    def _valid_failpoints(cls, value: str) -> str:
        parse_failpoints(value)  # a typo in a chaos plan fails the launch loudly, not silently
        return value

    @field_validator("server_addr")
    @classmethod
    def _valid_addr(cls, value: str) -> str:
        parse_host_port(value)  # refused at start-up, with the reason, not at connect time
        return value

    def server_host_port(self) -> tuple[str, int]:
        address = parse_host_port(self.server_addr)
        return address.host, address.port
