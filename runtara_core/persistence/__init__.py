"""Durable state of Runtara: instances, checkpoints, events, signals, images.

``open_persistence(url)`` returns the ``Persistence`` for a ``sqlite:///`` or ``postgresql://``
URL, migrated and ready. Both backends honour the same contract (see ``base.Persistence``).
"""

from runtara_core.persistence.base import Persistence
from runtara_core.persistence.factory import open_persistence
from runtara_core.persistence.rows import (
    ACTIVE_STATUSES,
    NO_UPDATE,
    TERMINAL_STATUSES,
    UNSET,
    CheckpointRow,
    CheckpointSaveResult,
    CustomSignalConsumed,
    CustomSignalEnqueued,
    CustomSignalRow,
    EventRow,
    EventType,
    HibernateResult,
    ImageRow,
    InstanceFilter,
    InstanceOrder,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    NewImage,
    NewInstance,
    Page,
    ProcessExit,
    ReplayEntry,
    SignalOutcome,
    SignalRow,
    SignalType,
    TerminationReason,
)
from runtara_core.persistence.rules import Clock, wall_clock_ms

__all__ = [
    "ACTIVE_STATUSES",
    "NO_UPDATE",
    "TERMINAL_STATUSES",
    "UNSET",
    "CheckpointRow",
    "CheckpointSaveResult",
    "Clock",
    "CustomSignalConsumed",
    "CustomSignalEnqueued",
    "CustomSignalRow",
    "EventRow",
    "EventType",
    "HibernateResult",
    "ImageRow",
    "InstanceFilter",
    "InstanceOrder",
    "InstanceRow",
    "InstanceStatus",
    "InstanceUpdate",
    "NewEvent",
    "NewImage",
    "NewInstance",
    "Page",
    "Persistence",
    "ProcessExit",
    "ReplayEntry",
    "SignalOutcome",
    "SignalRow",
    "SignalType",
    "TerminationReason",
    "open_persistence",
    "wall_clock_ms",
]
