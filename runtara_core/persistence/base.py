"""The ``Persistence`` contract: what the core and the environment may rely on from either backend.

Both implementations pass one conformance suite (tests/persistence). Writes that name an
instance raise ``NotFound`` when it does not exist; reads return None or an empty result.
Arguments are checked against their annotations first (``rows.value_check``): ids and names
are 1..255 bytes of UTF-8 without NUL, integers fit in int64, payloads are bytes; anything else
is a ``BadRequest``, the same on both backends.
Every method is safe to call from many asyncio tasks at once, and from several processes
sharing one database.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from types import TracebackType
from typing import Any, Protocol, Self

from runtara_core.persistence.rows import (
    NO_UPDATE,
    CheckpointRow,
    CheckpointSaveResult,
    CustomSignalConsumed,
    CustomSignalEnqueued,
    CustomSignalRow,
    EventRow,
    ImageRow,
    InstanceFilter,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    NewImage,
    NewInstance,
    Page,
    ProcessExit,
    ReplayEntry,
    SignalRow,
    SignalType,
    TerminationReason,
    check_call,
)
from runtara_core.signal_notifier import Subscriber


class SignalListener(Protocol):
    async def close(self) -> None: ...


class Persistence(ABC):
    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check the arguments of every contract method a backend implements (``check_call``).

        Both backends then refuse the same inputs with the same BadRequest before any SQL, and
        a method cannot be added or changed without its arguments being checked.
        """
        super().__init_subclass__(**kwargs)
        for name in Persistence.__abstractmethods__:
            if name in cls.__dict__:
                setattr(cls, name, check_call(cls.__dict__[name]))

    # ------------------------------------------------------------------ lifecycle

    @abstractmethod
    async def migrate(self) -> list[str]:
        """Apply pending migrations (each once, each in its own transaction); returns their names.

        Safe when several processes start at once: they serialize and only one applies each.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections; the object is unusable afterwards."""

    async def listen_signals(self, subscriber: Subscriber) -> SignalListener | None:
        """Hear about signals stored by *other processes* (``subscriber`` runs on the event loop).

        None where the backend has no such channel (SQLite: one process owns the file in
        practice, and in-process writers use ``SignalNotifier`` directly).
        """
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ instances

    @abstractmethod
    async def create_instance(self, new: NewInstance) -> tuple[InstanceRow, bool]:
        """Create a pending instance of ``new.image_id``; returns the row and whether it is new.

        Idempotent on instance_id: an existing id returns the stored row with created=False and
        changes nothing, so retried start requests never make a duplicate. The tenant, image name
        and version are copied from the image (NotFound if it does not exist); an id already used
        by another tenant is a Conflict. An existing id whose image has since been deleted is
        still returned (see ``rules.check_start``).
        """

    @abstractmethod
    async def get_instance(self, instance_id: str) -> InstanceRow | None: ...

    @abstractmethod
    async def list_instances(self, filter: InstanceFilter) -> Page[InstanceRow]:
        """One page of matching instances plus the total number of matches."""

    @abstractmethod
    async def count_by_status(self, tenant: str | None = None) -> dict[InstanceStatus, int]:
        """Every status mapped to its count (zero included), for health and dashboards."""

    @abstractmethod
    async def transition(
        self,
        instance_id: str,
        expected: Collection[InstanceStatus],
        new: InstanceStatus,
        *,
        reason: TerminationReason | None = None,
        update: InstanceUpdate = NO_UPDATE,
        event: NewEvent | None = None,
    ) -> InstanceRow:
        """Compare and set: move to ``new`` only if the current status is one of ``expected``.

        This is how every status change happens, so two actors can never both win a transition.
        ``reason`` replaces the termination reason (None clears it); ``update`` sets more columns
        (see ``rules.plan_transition`` for the defaults); ``event`` is appended in the same
        transaction, and only if this call won. Returns the new row. Raises NotFound, or
        InvalidState naming the actual and expected statuses.
        """

    # ------------------------------------------------------------------ liveness and metrics

    @abstractmethod
    async def touch_heartbeat(self, instance_id: str) -> None:
        """Refresh liveness. Writes heartbeat_at_ms only: beats do not add event rows."""

    @abstractmethod
    async def record_process(self, instance_id: str, pid: int, pid_create_time: float) -> None:
        """Remember the launched process; pid plus create time identify it for adoption."""

    @abstractmethod
    async def record_exit_metrics(self, instance_id: str, exit: ProcessExit) -> None:
        """Store what the supervisor measured about the launch that just ended."""

    @abstractmethod
    async def find_stale_running(
        self, heartbeat_before_ms: int, limit: int = 1000
    ) -> list[InstanceRow]:
        """Running instances whose last sign of life (heartbeat, else start, else creation) is
        older than the cutoff: the supervisor treats them as crashed."""

    # ------------------------------------------------------------------ checkpoints

    @abstractmethod
    async def save_checkpoint_if_absent(
        self, instance_id: str, checkpoint_id: str, state: bytes
    ) -> CheckpointSaveResult:
        """Store ``state`` unless the checkpoint exists; either way return the stored state.

        Atomic: of concurrent writers exactly one gets saved=True and all get the same state.
        Counts as liveness (refreshes heartbeat_at_ms) and, when saved, records the instance's
        latest checkpoint id, in the same transaction. Also returns the pending signal.
        """

    @abstractmethod
    async def get_checkpoint(
        self, instance_id: str, checkpoint_id: str
    ) -> CheckpointRow | None: ...

    @abstractmethod
    async def list_checkpoints(
        self, instance_id: str, *, limit: int = 100, offset: int = 0, with_state: bool = False
    ) -> Page[CheckpointRow]:
        """Checkpoints in save order. States are left out unless asked for: they can be large."""

    @abstractmethod
    async def replay_history(self, instance_id: str, state_budget_bytes: int) -> list[ReplayEntry]:
        """Every checkpoint id in save order, with states while their running total fits the budget.

        A restarted instance gets its history with registration instead of one round trip per step.
        """

    # ------------------------------------------------------------------ events

    @abstractmethod
    async def append_event(self, instance_id: str, event: NewEvent) -> EventRow: ...

    @abstractmethod
    async def list_events(
        self, instance_id: str, *, after_id: int = 0, limit: int = 100
    ) -> list[EventRow]:
        """Events with id > after_id, oldest first: a cursor, so a watcher can poll without gaps.

        Gap-free per instance only: the events of one instance commit in id order, so once an
        id is visible every smaller id of that instance is too. Ids are shared by all
        instances, whose events commit in no such order, so a tenant-wide watch cannot use one
        cursor over several instances (that watch needs its own scheme; not built yet).
        """

    # ------------------------------------------------------------------ instance-wide signals

    @abstractmethod
    async def put_signal(
        self, instance_id: str, signal_type: SignalType, payload: bytes = b""
    ) -> SignalRow:
        """Offer a signal to the instance's single slot; returns the signal now pending.

        Precedence (``rules.signal_takes_slot``): cancel outranks pause and resume.
        """

    @abstractmethod
    async def pending_signal(self, instance_id: str) -> SignalRow | None: ...

    @abstractmethod
    async def ack_signal(self, instance_id: str, signal_type: SignalType) -> bool:
        """Clear the slot if ``signal_type`` is what is pending; False if it was not."""

    # ------------------------------------------------------------------ custom signals

    @abstractmethod
    async def enqueue_custom_signal(
        self, instance_id: str, name: str, payload: bytes
    ) -> CustomSignalEnqueued:
        """Queue a named signal (FIFO per instance and name).

        In the same transaction an instance hibernating on this name is moved to pending, so
        the wake cannot be lost between the two. A hibernation racing this call is either
        woken here or sees the signal in its own ``claim_signal_waiters``.
        """

    @abstractmethod
    async def consume_custom_signal(
        self, instance_id: str, name: str, checkpoint_id: str
    ) -> CustomSignalConsumed:
        """Exactly-once delivery: take the oldest queued ``name`` and save it as the checkpoint.

        In one transaction: if the checkpoint exists its state is returned (replayed=True) and
        nothing is consumed; else the oldest unconsumed signal is marked consumed and its payload
        saved as ``checkpoint_id``; if none is queued nothing changes (found=False). Counts as
        liveness.
        """

    @abstractmethod
    async def list_custom_signals(
        self, instance_id: str, *, include_consumed: bool = False, limit: int = 100
    ) -> list[CustomSignalRow]:
        """Oldest first."""

    # ------------------------------------------------------------------ wake-ups

    @abstractmethod
    async def claim_due_wakeups(self, now_ms: int, limit: int = 100) -> list[InstanceRow]:
        """Move due hibernating instances (sleeping or waiting, wake_at <= now) to pending.

        One atomic conditional update: concurrent claimers (several schedulers on one
        PostgreSQL) never get the same instance. Returns the claimed rows, in no set order.
        """

    @abstractmethod
    async def claim_signal_waiters(
        self, instance_id: str | None = None, limit: int = 100
    ) -> list[InstanceRow]:
        """Move instances hibernating on a signal name that now has a queued signal to pending.

        ``enqueue_custom_signal`` already wakes its waiter; this is the sweep that catches a
        signal queued just before its instance hibernated (pass the id right after
        hibernating, or None for a periodic sweep).
        """

    @abstractmethod
    async def next_wake_at(self) -> int | None:
        """The earliest wake time of any hibernating instance, for the scheduler's timer."""

    # ------------------------------------------------------------------ images

    @abstractmethod
    async def create_image(self, new: NewImage) -> ImageRow:
        """Register a new version of (tenant, name): previous highest + 1, atomic under concurrency.

        Conflict if the image_id is taken.
        """

    @abstractmethod
    async def get_image(self, image_id: str, tenant: str | None = None) -> ImageRow | None:
        """None also when ``tenant`` is given and the image belongs to another tenant."""

    @abstractmethod
    async def latest_image(self, tenant: str, name: str) -> ImageRow | None: ...

    @abstractmethod
    async def list_images(
        self, tenant: str | None = None, *, name: str | None = None
    ) -> list[ImageRow]:
        """Ordered by tenant, name, version; ``tenant=None`` lists every tenant."""

    @abstractmethod
    async def delete_image(self, image_id: str, tenant: str | None = None) -> None:
        """NotFound if absent (or another tenant's); InvalidState while non-terminal instances
        use it. Terminal instances keep their image name and version, their image_id becomes None.
        """

    @abstractmethod
    async def count_active_instances_for_image(self, image_id: str) -> int: ...
