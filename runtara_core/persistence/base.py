"""The ``Persistence`` contract: what the core and the environment may rely on from either backend.

Both implementations pass one conformance suite (tests/persistence). Writes that name an
instance raise ``NotFound`` when it does not exist; reads return None or an empty result.
Arguments are checked against their annotations first (``rows.value_check``): ids and names
are 1..255 bytes of UTF-8 without NUL, integers fit in int64, payloads are bytes; anything else
is a ``BadRequest``, the same on both backends.
Every method is safe to call from many asyncio tasks at once, and from several processes
sharing one database.

The launch fence: the writes an instance process makes (``save_checkpoint_if_absent``,
``consume_custom_signal``, ``append_event``, ``touch_heartbeat``, ``transition``,
``ack_signal``) take an optional keyword ``attempt``, the launch the caller speaks for. When
given, the write happens only if the instance is ``running`` on exactly that attempt, decided
in the write's own transaction (under the instance row lock on PostgreSQL); otherwise it raises
InvalidState naming the instance's status and attempt and the caller's attempt, and changes
nothing at all (see ``rules.check_launch``). A process of an earlier launch, still talking after
its instance was finished, suspended or relaunched, can so never write for the current one.
Without ``attempt`` these methods behave as they always did.
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
    HibernateResult,
    ImageRow,
    InstanceFilter,
    InstanceRow,
    InstanceStatus,
    InstanceStatusRow,
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
    async def get_instance_statuses(self, instance_ids: Collection[str]) -> list[InstanceStatusRow]:
        """Status, finish time and node of each named instance that exists, in no given order.

        For sweeps over things named by instance id (run directories): one query for many ids,
        without the rows' input and output. Unknown ids are left out; duplicates count once.
        """

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
        attempt: int | None = None,
    ) -> InstanceRow:
        """Compare and set: move to ``new`` only if the current status is one of ``expected``
        and, if ``attempt`` is given, the instance's attempt equals it.

        This is how every status change happens, so two actors can never both win a transition.
        ``reason`` replaces the termination reason (None clears it); ``update`` sets more columns
        (see ``rules.plan_transition`` for the defaults; an ``update.attempt`` is the new value,
        ``attempt`` the one required before); ``event`` is appended in the same transaction, and
        only if this call won. Returns the new row. Raises NotFound, or InvalidState naming the
        actual status (and, with ``attempt``, the actual and expected attempts) and the
        expected statuses; a refused call changes nothing.
        """

    @abstractmethod
    async def hibernate(
        self,
        instance_id: str,
        *,
        attempt: int,
        reason: TerminationReason,
        wake_at_ms: int | None,
        waiting_signal_name: str | None = None,
        event: NewEvent | None = None,
    ) -> HibernateResult:
        """Suspend the running launch ``attempt`` to sleep or wait, unless a signal is in the way.

        One transaction, under the instance row lock, so that no signal can slip in between the
        check and the suspension:
        - NotFound if the instance does not exist; InvalidState (the launch fence, see the module
          docstring) unless it is running on ``attempt``.
        - BadRequest, before anything is read, unless ``reason`` is sleeping (then
          ``waiting_signal_name`` must be None) or waiting (then it is required).
        - If the instance-wide slot holds cancel or pause, or ``waiting_signal_name`` names a
          custom signal that is queued unconsumed for the instance, nothing changes:
          hibernated=False.
        - Otherwise the instance moves from running to suspended with ``reason``, ``wake_at_ms``
          and ``waiting_signal_name`` (the other columns as ``rules.plan_transition`` sets
          them), ``event`` is appended, hibernated=True.
        ``pending_signal`` always reports the slot as read (a resume does not block but is
        reported); ``row`` is the instance as the call left it.

        Racing ``enqueue_custom_signal`` of the awaited name, either this call sees the signal
        (hibernated=False) or the enqueue comes after and wakes the instance to pending: an
        instance never stays suspended waiting on a name with a signal queued. Racing
        ``put_signal``, either this call reports the cancel or pause (hibernated=False) or the
        signal lands in the slot of the suspended instance (for the environment to act on).
        """

    # ------------------------------------------------------------------ liveness and metrics

    @abstractmethod
    async def touch_heartbeat(self, instance_id: str, *, attempt: int | None = None) -> None:
        """Refresh liveness. Writes heartbeat_at_ms only: beats do not add event rows.

        With ``attempt``, fenced: nothing is written unless the instance is running on it.
        """

    @abstractmethod
    async def record_process(self, instance_id: str, pid: int, pid_create_time: float) -> None:
        """Remember the launched process; pid plus create time identify it for adoption."""

    @abstractmethod
    async def record_exit_metrics(self, instance_id: str, exit: ProcessExit) -> None:
        """Fold what the supervisor measured about the launch that just ended into the instance.

        The metrics accumulate over launches (crash relaunches, wakes, resumes), in one atomic
        update so exits recorded concurrently all count: ``peak_rss_bytes`` becomes the larger
        of the stored and the new value, ``cpu_time_ms`` and ``run_time_ms`` add the new value
        (a stored NULL counting as 0). A None field of ``exit`` leaves its column alone.
        ``exit_code``, ``exit_signal`` and ``stderr_tail`` describe the latest launch: they are
        overwritten, None included. NotFound if the instance does not exist.
        """

    @abstractmethod
    async def find_stale_running(
        self, heartbeat_before_ms: int, limit: int = 1000
    ) -> list[InstanceRow]:
        """Running instances whose last sign of life (heartbeat, else start, else creation) is
        older than the cutoff: the supervisor treats them as crashed."""

    # ------------------------------------------------------------------ checkpoints

    @abstractmethod
    async def save_checkpoint_if_absent(
        self, instance_id: str, checkpoint_id: str, state: bytes, *, attempt: int | None = None
    ) -> CheckpointSaveResult:
        """Store ``state`` unless the checkpoint exists; either way return the stored state.

        Atomic: of concurrent writers exactly one gets saved=True and all get the same state.
        Counts as liveness (refreshes heartbeat_at_ms) and, when saved, records the instance's
        latest checkpoint id, in the same transaction. Also returns the pending signal.
        With ``attempt``, fenced: unless the instance is running on it, InvalidState and no
        save, no heartbeat (even if the checkpoint already exists).
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
    async def append_event(
        self, instance_id: str, event: NewEvent, *, attempt: int | None = None
    ) -> EventRow:
        """Log ``event``. With ``attempt``, fenced: no row unless the instance is running on it."""

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

    @abstractmethod
    async def count_events(self, instance_id: str, *, after_id: int = 0) -> int:
        """How many events of the instance have an id > after_id (a page's total)."""

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
    async def ack_signal(
        self,
        instance_id: str,
        signal_type: SignalType,
        *,
        outcome: SignalOutcome | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Clear the slot if ``signal_type`` is what is pending; False if it was not.

        One transaction, checking and clearing the slot atomically with the outcome:
        - If the slot does not hold ``signal_type`` (nothing, or a signal that replaced it, or
          no such instance), return False and change nothing.
        - With ``outcome``: compare and set from running (on ``attempt``, if given) to
          ``outcome.status`` with ``outcome.reason``, appending ``outcome.event``. If that fails,
          raise InvalidState as ``transition`` would and change nothing (the slot stays).
        - Without ``outcome`` but with ``attempt``: the launch fence (InvalidState, nothing
          changes, unless the instance is running on ``attempt``).
        - Then clear the slot and return True.
        A signal offered while the acknowledgement is in flight is therefore either seen by it
        (a cancel that replaced the pause: False, nothing changes) or lands after it committed
        (in the slot of the instance the outcome left, for the environment to act on).
        """

    # ------------------------------------------------------------------ custom signals

    @abstractmethod
    async def enqueue_custom_signal(
        self, instance_id: str, name: str, payload: bytes
    ) -> CustomSignalEnqueued:
        """Queue a named signal (FIFO per instance and name).

        In the same transaction an instance hibernating on this name is moved to pending, so
        the wake cannot be lost between the two. A ``hibernate`` racing this call is either
        woken here or sees the signal itself and does not hibernate (a hibernation made with
        ``transition`` instead needs its own ``claim_signal_waiters`` afterwards).
        """

    @abstractmethod
    async def consume_custom_signal(
        self,
        instance_id: str,
        name: str,
        checkpoint_id: str,
        *,
        attempt: int | None = None,
        queued_by_ms: int | None = None,
    ) -> CustomSignalConsumed:
        """Exactly-once delivery: take the oldest queued ``name`` and save it as the checkpoint.

        With ``queued_by_ms`` (a wait's deadline) only a signal queued by then counts: whether
        a wait got its signal depends on when the signal came, not on when a launch, perhaps
        relaunched after a crash, got round to asking.

        In one transaction: if the checkpoint exists its state is returned (replayed=True) and
        nothing is consumed; else the oldest unconsumed signal is marked consumed and its payload
        saved as ``checkpoint_id``; if none is queued nothing changes (found=False). Counts as
        liveness. With ``attempt``, fenced: unless the instance is running on it, InvalidState
        and nothing is consumed, replayed, saved or refreshed.
        """

    @abstractmethod
    async def list_custom_signals(
        self, instance_id: str, *, include_consumed: bool = False, limit: int = 100
    ) -> list[CustomSignalRow]:
        """Oldest first."""

    # ------------------------------------------------------------------ wake-ups

    @abstractmethod
    async def claim_due_wakeups(self, now_ms: int, limit: int = 100, *, lead_ms: int = 0) -> list[InstanceRow]:
        """Move due suspended instances to pending: those with a reason in
        ``rules.WAKEABLE_REASONS``: sleeping and waiting ones with wake_at <= now + lead (a fresh
        process takes a while to start; the SDK sleeps what is left), and crashed ones whose
        relaunch backoff has ended, wake_at <= now (a lead would shorten the backoff). Paused
        instances are never claimed.

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
        """The earliest wake time of any instance ``claim_due_wakeups`` would claim (a
        hibernation or a crash backoff), for the scheduler's timer."""

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
