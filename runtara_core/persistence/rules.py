"""Decisions both backends make the same way, kept free of I/O so they are written once.

Each backend runs its own SQL, but what to write (the columns a transition sets, whether an
incoming signal takes the slot, how much history fits the replay budget) comes from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from runtara_core.errors import BadRequest, Conflict, InvalidState, NotFound, RuntaraError
from runtara_core.persistence.rows import (
    NO_UPDATE,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewInstance,
    SignalType,
    TerminationReason,
)

Clock = Callable[[], int]
"""Returns the current time in Unix epoch milliseconds; injectable so tests control time."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------- transitions


def plan_transition(
    new: InstanceStatus,
    reason: TerminationReason | None,
    update: InstanceUpdate,
    now_ms: int,
) -> dict[str, Any]:
    """The columns a compare-and-set transition writes, in a stable order.

    The reason always describes the new status, so it is written on every transition (None
    clears a stale one). A hibernation's wake time and awaited signal only mean something while
    suspended, so leaving suspended clears them; entering a terminal status stamps finished_at.
    Explicit values in ``update`` win over these defaults. Statuses and reasons may come as their
    strings (the boundary accepts either): they are compared as members here.
    """
    new = InstanceStatus(new)
    reason = None if reason is None else TerminationReason(reason)
    columns: dict[str, Any] = {
        "status": new,
        "termination_reason": reason,
        "updated_at_ms": now_ms,
    }
    if new is not InstanceStatus.SUSPENDED:
        columns["wake_at_ms"] = None
        columns["waiting_signal_name"] = None
    if new.is_terminal:
        columns["finished_at_ms"] = now_ms
    columns.update(update.assignments())
    return columns


def plan_wake(now_ms: int) -> dict[str, Any]:
    """Columns written when a hibernating instance is claimed for relaunch (to pending)."""
    return plan_transition(InstanceStatus.PENDING, None, NO_UPDATE, now_ms)


def check_expected(expected: Collection[InstanceStatus]) -> frozenset[InstanceStatus]:
    if not expected:
        raise BadRequest("a transition needs at least one expected status")
    return frozenset(InstanceStatus(s) for s in expected)


def transition_refused(
    instance_id: str,
    actual: str | None,
    expected: Iterable[InstanceStatus],
    new: InstanceStatus,
    *,
    actual_attempt: int | None = None,
    attempt: int | None = None,
) -> RuntaraError:
    """The error for a compare-and-set that matched no row; ``actual`` is the status read after.

    ``attempt`` is the launch the compare-and-set also required (None: any), and
    ``actual_attempt`` the instance's attempt read with ``actual``.
    """
    if actual is None:
        return NotFound(f"instance {instance_id!r} not found")
    wanted = " or ".join(sorted(s.value for s in expected))
    if attempt is None:
        return InvalidState(
            f"instance {instance_id!r} is {actual}, expected {wanted} to move it to {new}"
        )
    return InvalidState(
        f"instance {instance_id!r} is {actual} (attempt {actual_attempt}), expected {wanted} "
        f"on attempt {attempt} to move it to {new}"
    )


def instance_not_found(instance_id: str) -> NotFound:
    return NotFound(f"instance {instance_id!r} not found")


# --------------------------------------------------------------------------- the launch fence


def launch_admitted(status: str, actual_attempt: int, attempt: int | None) -> bool:
    """Whether a write from launch ``attempt`` may happen (None: unfenced, always).

    Only the launch that is running may write: once the instance has moved on (finished,
    suspended, relaunched as a later attempt) a process of an earlier launch that is still
    talking must not refresh liveness, save steps, consume signals or log events for it.
    """
    return attempt is None or (
        InstanceStatus(status) is InstanceStatus.RUNNING and actual_attempt == attempt
    )


def launch_refused(
    instance_id: str, status: str | None, actual_attempt: int | None, attempt: int | None
) -> RuntaraError:
    """The error for a fenced write that was not admitted (NotFound when there is no instance)."""
    if status is None:
        return instance_not_found(instance_id)
    return InvalidState(
        f"instance {instance_id!r} is {status} (attempt {actual_attempt}); this write comes from "
        f"attempt {attempt}, a launch that is no longer running"
    )


def check_launch(
    instance_id: str, status: str | None, actual_attempt: int | None, attempt: int | None
) -> None:
    """Raise unless the instance exists and admits a write from launch ``attempt``.

    ``status`` and ``actual_attempt`` are the instance's, read in the write's own transaction
    (under its row lock), or None if it does not exist.
    """
    if status is None or actual_attempt is None:
        raise launch_refused(instance_id, None, None, attempt)
    if not launch_admitted(status, actual_attempt, attempt):
        raise launch_refused(instance_id, status, actual_attempt, attempt)


# --------------------------------------------------------------------------- hibernation

HIBERNATION_REASONS: frozenset[TerminationReason] = frozenset(
    {TerminationReason.SLEEPING, TerminationReason.WAITING}
)
WAKEABLE_REASONS: frozenset[TerminationReason] = HIBERNATION_REASONS | {TerminationReason.CRASHED}
"""Suspended instances the wake scheduler relaunches when wake_at_ms comes: hibernations
(sleeping, waiting) and crashed launches whose relaunch backoff ends then. A paused instance
(wake_at NULL) is never claimed: only a resume relaunches it."""
HIBERNATION_BLOCKERS: frozenset[SignalType] = frozenset({SignalType.CANCEL, SignalType.PAUSE})
"""Pending instance-wide signals that keep an instance from hibernating: the launch must act on
them (a pending resume asks for nothing a hibernating instance would not do)."""


def check_hibernation(
    reason: TerminationReason, waiting_signal_name: str | None
) -> TerminationReason:
    """``reason`` as a member, if it is one a hibernation may have with that signal name."""
    reason = TerminationReason(reason)
    if reason not in HIBERNATION_REASONS:
        raise BadRequest(f"reason must be sleeping or waiting to hibernate, got {reason}")
    if reason is TerminationReason.WAITING and waiting_signal_name is None:
        raise BadRequest("waiting_signal_name is required to hibernate waiting on a signal")
    if reason is TerminationReason.SLEEPING and waiting_signal_name is not None:
        raise BadRequest("waiting_signal_name must be None to hibernate sleeping")
    return reason


def hibernation_blocked(pending: SignalType | None, signal_queued: bool) -> bool:
    """Whether a hibernation must not happen: a cancel or pause is pending (the launch has to
    act on it), or the awaited custom signal is already queued (the wait is over)."""
    return signal_queued or (pending is not None and SignalType(pending) in HIBERNATION_BLOCKERS)


# --------------------------------------------------------------------------- starts and images


def check_start(
    new: NewInstance, image_tenant: str | None, existing: InstanceRow | None
) -> InstanceRow:
    """What a start request that inserted nothing returns: the existing instance, or an error.

    ``image_tenant`` is None when the image does not exist (any more). An existing id is
    returned unchanged, so retries never duplicate, but not to another tenant, which would leak
    its data. A retry may come after the instance finished and its image was deleted: it still
    gets the instance if that instance's image is gone too (nothing names another image); the
    caller resolved the image for its tenant before the image was deleted.
    """
    if existing is None or (image_tenant is None and existing.image_id is not None):
        raise NotFound(f"image {new.image_id!r} not found")
    if image_tenant is not None and existing.tenant != image_tenant:
        raise Conflict(f"instance id {new.instance_id!r} is already in use")
    return existing


def check_image_deletable(
    image_id: str, image_tenant: str | None, caller_tenant: str | None, active_instances: int
) -> None:
    if image_tenant is None or (caller_tenant is not None and caller_tenant != image_tenant):
        raise NotFound(f"image {image_id!r} not found")
    if active_instances:
        raise InvalidState(
            f"image {image_id!r} is used by {active_instances} unfinished instance(s)"
        )


# --------------------------------------------------------------------------- signals

_SIGNAL_RANK: dict[SignalType, int] = {
    SignalType.CANCEL: 2,
    SignalType.PAUSE: 1,
    SignalType.RESUME: 1,
}


def signal_takes_slot(pending: SignalType | None, incoming: SignalType) -> bool:
    """Whether an incoming instance-wide signal replaces the one pending.

    Cancel outranks pause and resume: nothing replaces a pending cancel, and a cancel replaces
    either. Between pause and resume the latest wins. Repeating the pending signal is a no-op,
    so the slot keeps the first request's payload and time.
    """
    if pending is None:
        return True
    if pending is incoming:
        return False
    return _SIGNAL_RANK[incoming] >= _SIGNAL_RANK[pending]


def check_custom_signal_payload(payload: bytes) -> None:
    """Custom signal payloads are never empty: an empty checkpoint state is how a signal wait
    records that it timed out (msgpack nil, ``b"\\xc0"``, is the payload "nothing")."""
    if not payload:
        raise BadRequest(
            "a custom signal payload must not be empty; send msgpack nil (0xc0) for no payload"
        )


# --------------------------------------------------------------------------- replay


def replay_prefix(sizes: Iterable[int], budget_bytes: int) -> int:
    """How many leading checkpoint states fit in ``budget_bytes`` together.

    A restarted instance replays its history in order, so only a prefix helps: past the first
    state that does not fit it has to ask the server anyway.
    """
    used = 0
    count = 0
    for size in sizes:
        used += size
        if used > budget_bytes:
            break
        count += 1
    return count
