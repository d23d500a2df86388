"""What the environment and its pre-forked launcher say to each other over their private
socket pair: pure message types, checked on the way in, framed by ``runtara_core.wire.frame_codec``.

Environment to launcher: one ``ForkRequest`` per launch. Launcher to environment: ``Ready`` once
its imports are done, then exactly one ``Forked`` or ``ForkFailed`` per request, in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtara_core.errors import BadRequest

MAX_FORK_MESSAGE_BYTES = 16 * 1024 * 1024
"""A request carries a whole process environment (a start may pass up to ~8 MiB), so it can
be big, but not unbounded."""


@dataclass(frozen=True, slots=True)
class ForkRequest:
    """Everything the forked child applies to itself before it runs the instance: the same
    clean process a cold spawn gets (DESIGN section 8)."""

    env: Mapping[str, str]
    cwd: str
    stdout_path: str
    stderr_path: str
    memory_limit_bytes: int | None = None
    cpu_limit_s: int | None = None

    def to_message(self) -> dict[str, Any]:
        return {
            "kind": "fork",
            "env": dict(self.env),
            "cwd": self.cwd,
            "stdout": self.stdout_path,
            "stderr": self.stderr_path,
            "memory_limit_bytes": self.memory_limit_bytes,
            "cpu_limit_s": self.cpu_limit_s,
        }

    @classmethod
    def from_message(cls, message: Any) -> ForkRequest:
        fields = _fields(message, "fork")
        env = fields.get("env")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
            for k, v in env.items()
        ):
            raise BadRequest("fork request: env must map variable names to strings")
        return cls(
            env=env,
            cwd=_path(fields, "cwd"),
            stdout_path=_path(fields, "stdout"),
            stderr_path=_path(fields, "stderr"),
            memory_limit_bytes=_limit(fields, "memory_limit_bytes"),
            cpu_limit_s=_limit(fields, "cpu_limit_s"),
        )


@dataclass(frozen=True, slots=True)
class Ready:
    """The launcher has imported the SDK and waits for requests."""

    pid: int
    ready_ms: int
    """From its start to ready: imports and warm-up."""

    def to_message(self) -> dict[str, Any]:
        return {"kind": "ready", "pid": self.pid, "ready_ms": self.ready_ms}


@dataclass(frozen=True, slots=True)
class Forked:
    """The instance process runs, as a child of the environment (which is its subreaper)."""

    pid: int

    def to_message(self) -> dict[str, Any]:
        return {"kind": "forked", "pid": self.pid}


@dataclass(frozen=True, slots=True)
class ForkFailed:
    error: str = ""

    def to_message(self) -> dict[str, Any]:
        return {"kind": "failed", "error": self.error}


LauncherMessage = Ready | Forked | ForkFailed


def parse_launcher_message(message: Any) -> LauncherMessage:
    """A launcher's message, or ``BadRequest`` (the environment then restarts the launcher)."""
    kind = message.get("kind") if isinstance(message, dict) else None
    if kind == "ready":
        return Ready(pid=_positive(message, "pid"), ready_ms=_count(message, "ready_ms"))
    if kind == "forked":
        return Forked(pid=_positive(message, "pid"))
    if kind == "failed":
        error = message.get("error")
        if not isinstance(error, str):
            raise BadRequest("launcher message 'failed' needs an error string")
        return ForkFailed(error)
    raise BadRequest(f"unknown launcher message kind {kind!r}")


def _fields(message: Any, kind: str) -> dict[str, Any]:
    if not isinstance(message, dict) or message.get("kind") != kind:
        raise BadRequest(f"expected a {kind!r} message")
    return message


def _path(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise BadRequest(f"fork request: {name} must be an absolute path")
    return value


def _limit(fields: Mapping[str, Any], name: str) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadRequest(f"fork request: {name} must be a positive integer or absent")
    return value


def _positive(fields: Mapping[str, Any], name: str) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadRequest(f"launcher message: {name} must be a positive integer")
    return value


def _count(fields: Mapping[str, Any], name: str) -> int:
    value = fields.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"launcher message: {name} must be a non-negative integer")
    return value
