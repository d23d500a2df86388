"""What a registered instance connection is bound to, and the checks every op makes on it."""

from __future__ import annotations

from dataclasses import dataclass

from runtara_core.errors import InvalidState, Unauthenticated
from runtara_core.transport.quic_server import Session


@dataclass(slots=True)
class InstanceBinding:
    """Set by ``register``; every later op on the connection acts on this instance only."""

    instance_id: str
    attempt: int
    ended: str | None = None
    """Why this launch may write no more (it completed, failed, hibernated, paused, was
    cancelled); the process should exit. Reads stay allowed."""
    exit_recorded: bool = False
    """A hibernated launch logs its exit once."""
    suspending: bool = False
    """A hibernation of this launch is being decided: no other write may slip in meanwhile
    (if it succeeds, the instance may already be woken and relaunched when the answer leaves)."""

    def end(self, why: str) -> None:
        self.ended = why


def bound(session: Session) -> InstanceBinding:
    binding = session.state
    if not isinstance(binding, InstanceBinding):
        raise Unauthenticated(
            "this connection is not registered: the first request on an instance connection "
            "must be 'register' with the instance id, attempt and token"
        )
    return binding


def active(session: Session) -> InstanceBinding:
    """The binding, if this launch may still change the instance."""
    binding = bound(session)
    if binding.ended is not None:
        raise InvalidState(
            f"instance {binding.instance_id!r} {binding.ended} on this connection; "
            "this process should exit"
        )
    if binding.suspending:
        raise InvalidState(
            f"instance {binding.instance_id!r} is being suspended on this connection; "
            "wait for the answer to the sleep or wait_signal that asked for it"
        )
    return binding
