"""The instance-protocol operations (DESIGN section 3), each a thin step over persistence.

Every op but ``register`` acts on the instance its connection registered as, so an instance can
reach only its own data. Writes are refused once this launch has ended (completed, failed,
hibernated, paused, cancelled): persistence would accept them, the lifecycle must not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from typing import Any

from runtara_core.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidState,
    NotFound,
    Unauthenticated,
)
from runtara_core.instance_protocol.binding import InstanceBinding, active, bound
from runtara_core.instance_protocol.decisions import (
    TIMEOUT_STATE,
    SleepRecord,
    history_state_budget,
    register_history,
    should_hibernate,
)
from runtara_core.instance_protocol.signal_push import ConnectedInstances
from runtara_core.instance_tokens import InstanceTokens
from runtara_core.persistence import Persistence
from runtara_core.persistence.rows import (
    UNSET,
    EventType,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    SignalRow,
    SignalType,
    TerminationReason,
)
from runtara_core.persistence.rules import Clock, wall_clock_ms
from runtara_core.transport.quic_server import Session
from runtara_core.wire.dispatch import Route, routes
from runtara_core.wire.messages import (
    AckSignalRequest,
    CheckpointRequest,
    CheckpointResponse,
    Empty,
    EventRequest,
    GetCheckpointRequest,
    GetCheckpointResponse,
    PendingSignal,
    PollSignalsRequest,
    PollSignalsResponse,
    RegisterRequest,
    RegisterResponse,
    RetryAttemptRequest,
    SleepRequest,
    SleepResponse,
    StatusRequest,
    StatusResponse,
    WaitSignalRequest,
    WaitSignalResponse,
)

log = logging.getLogger(__name__)

RUNNING = frozenset({InstanceStatus.RUNNING})
SIGNAL_OUTCOMES: dict[SignalType, tuple[InstanceStatus, TerminationReason, EventType]] = {
    SignalType.CANCEL: (InstanceStatus.CANCELLED, TerminationReason.CANCELLED, EventType.CANCELLED),
    SignalType.PAUSE: (InstanceStatus.SUSPENDED, TerminationReason.PAUSED, EventType.SUSPENDED),
}
"""What acknowledging an instance-wide signal does; resume only clears the slot."""


def pending_signal_message(row: SignalRow | None) -> PendingSignal | None:
    if row is None:
        return None
    return PendingSignal(signal_type=row.signal_type.value, payload=row.payload)


class InstanceService:
    def __init__(
        self,
        persistence: Persistence,
        tokens: InstanceTokens,
        connected: ConnectedInstances,
        *,
        max_frame_bytes: int,
        max_state_bytes: int,
        history_budget_bytes: int,
        hibernate_after_ms: int,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self._db = persistence
        self._tokens = tokens
        self._connected = connected
        self._max_frame = max_frame_bytes
        self._max_state = max_state_bytes
        self._history_budget = history_budget_bytes
        self._hibernate_after = hibernate_after_ms
        self._clock = clock
        self._registering: weakref.WeakKeyDictionary[Session, asyncio.Lock] = weakref.WeakKeyDictionary()

    def routes(self) -> dict[str, Route[Any, Session]]:
        return routes(
            Route(RegisterRequest, self.register),
            Route(CheckpointRequest, self.checkpoint),
            Route(GetCheckpointRequest, self.get_checkpoint),
            Route(SleepRequest, self.sleep),
            Route(WaitSignalRequest, self.wait_signal),
            Route(PollSignalsRequest, self.poll_signals),
            Route(AckSignalRequest, self.ack_signal),
            Route(EventRequest, self.event),
            Route(RetryAttemptRequest, self.retry_attempt),
            Route(StatusRequest, self.status),
        )

    # ------------------------------------------------------------------ register

    async def register(self, request: RegisterRequest, session: Session) -> RegisterResponse:
        instance_id, attempt = request.instance_id, request.attempt
        if not self._tokens.verify(request.token, instance_id, attempt):
            raise Unauthenticated(
                f"the token is not valid for instance {instance_id!r} attempt {attempt}; "
                "use the RUNTARA_INSTANCE_TOKEN the environment gave this launch"
            )
        # One register at a time per connection, so two cannot bind it to two instances.
        lock = self._registering.setdefault(session, asyncio.Lock())
        async with lock:
            return await self._register(request, session)

    async def _register(self, request: RegisterRequest, session: Session) -> RegisterResponse:
        instance_id, attempt = request.instance_id, request.attempt
        current = session.state
        if isinstance(current, InstanceBinding) and (
            current.instance_id != instance_id or current.attempt != attempt
        ):
            raise Forbidden(
                f"this connection is registered as instance {current.instance_id!r} attempt "
                f"{current.attempt}; open a new connection to act for another launch"
            )
        row = await self._db.get_instance(instance_id)
        if row is None:
            raise NotFound(f"instance {instance_id!r} not found")
        if row.attempt != attempt:
            raise Forbidden(
                f"this token is for attempt {attempt} but instance {instance_id!r} is on attempt "
                f"{row.attempt}: the process belongs to an earlier launch and must exit"
            )
        row = await self._start(row)
        history = await self._db.replay_history(
            instance_id, history_state_budget(self._max_frame, len(row.input), self._history_budget)
        )
        checkpoints, complete = register_history(history, self._max_frame, len(row.input))
        pending = await self._db.pending_signal(instance_id)
        if not isinstance(current, InstanceBinding):
            session.state = InstanceBinding(instance_id, attempt)
            self._connected.bind(session, instance_id)
        log.debug("instance %s attempt %d registered", instance_id, attempt)
        return RegisterResponse(
            input=row.input,
            attempt=row.attempt,
            checkpoints=checkpoints,
            history_complete=complete,
            pending_signal=pending_signal_message(pending),
        )

    async def _start(self, row: InstanceRow) -> InstanceRow:
        """pending -> running for a new launch; a running instance re-registering is the same
        launch reconnecting (after a network blip or a core restart)."""
        if row.status is InstanceStatus.RUNNING:
            await self._db.touch_heartbeat(row.instance_id)
            return row
        if row.status is InstanceStatus.PENDING:
            now = self._clock()
            try:
                return await self._db.transition(
                    row.instance_id,
                    {InstanceStatus.PENDING},
                    InstanceStatus.RUNNING,
                    update=InstanceUpdate(
                        started_at_ms=now if row.started_at_ms is None else UNSET,
                        heartbeat_at_ms=now,
                    ),
                    event=NewEvent(EventType.STARTED, subtype=f"attempt {row.attempt}"),
                )
            except InvalidState:
                latest = await self._db.get_instance(row.instance_id)
                if latest is None:
                    raise NotFound(f"instance {row.instance_id!r} not found") from None
                if latest.status is not InstanceStatus.RUNNING or latest.attempt != row.attempt:
                    raise
                return latest  # a concurrent register of this launch won
        reason = f" ({row.termination_reason})" if row.termination_reason else ""
        if row.is_terminal:
            raise InvalidState(
                f"instance {row.instance_id!r} is {row.status}{reason}; a finished instance "
                "cannot register (resume it through the environment to run it again)"
            )
        raise InvalidState(
            f"instance {row.instance_id!r} is {row.status}{reason}; the environment relaunches "
            "it when it wakes or is resumed"
        )

    # ------------------------------------------------------------------ checkpoints

    def _check_state(self, state: bytes, what: str) -> None:
        if len(state) > self._max_state:
            raise BadRequest(
                f"{what} is {len(state)} bytes; the limit is {self._max_state} "
                "(RUNTARA_MAX_CHECKPOINT_BYTES): store large data elsewhere and checkpoint a reference"
            )

    async def checkpoint(self, request: CheckpointRequest, session: Session) -> CheckpointResponse:
        binding = active(session)
        self._check_state(request.state, "checkpoint state")
        result = await self._db.save_checkpoint_if_absent(
            binding.instance_id, request.checkpoint_id, request.state
        )
        return CheckpointResponse(
            found=not result.saved,
            state=b"" if result.saved else result.state,
            pending_signal=pending_signal_message(result.pending_signal),
        )

    async def get_checkpoint(
        self, request: GetCheckpointRequest, session: Session
    ) -> GetCheckpointResponse:
        binding = bound(session)
        row = await self._db.get_checkpoint(binding.instance_id, request.checkpoint_id)
        if row is None:
            return GetCheckpointResponse(found=False)
        return GetCheckpointResponse(found=True, state=row.state)

    # ------------------------------------------------------------------ sleep and waits

    async def sleep(self, request: SleepRequest, session: Session) -> SleepResponse:
        binding = active(session)
        self._check_state(request.state, "sleep state")
        now = self._clock()
        record = SleepRecord(now + request.duration_ms, request.state)
        result = await self._db.save_checkpoint_if_absent(
            binding.instance_id, request.checkpoint_id, record.encode()
        )
        if not result.saved:
            stored = SleepRecord.decode(result.state)
            if stored is None:
                raise Conflict(
                    f"checkpoint {request.checkpoint_id!r} was saved by something other than a "
                    "sleep; give this sleep its own checkpoint id"
                )
            record = stored  # a replay: the first call's wake time stands
        hibernate = should_hibernate(record.wake_at_ms - now, self._hibernate_after)
        if hibernate:
            await self._hibernate(
                binding,
                TerminationReason.SLEEPING,
                InstanceUpdate(wake_at_ms=record.wake_at_ms),
                f"sleep {request.checkpoint_id}",
            )
        return SleepResponse(wake_at_ms=record.wake_at_ms, hibernate=hibernate)

    async def wait_signal(self, request: WaitSignalRequest, session: Session) -> WaitSignalResponse:
        binding = active(session)
        consumed = await self._db.consume_custom_signal(
            binding.instance_id, request.name, request.checkpoint_id
        )
        if consumed.found:
            if consumed.replayed and consumed.payload == TIMEOUT_STATE:
                return WaitSignalResponse(found=False, timed_out=True)
            return WaitSignalResponse(found=True, payload=consumed.payload)
        if not should_hibernate(request.timeout_ms, self._hibernate_after):
            return WaitSignalResponse(found=False)
        wake_at = None if request.timeout_ms is None else self._clock() + request.timeout_ms
        await self._hibernate(
            binding,
            TerminationReason.WAITING,
            InstanceUpdate(wake_at_ms=wake_at, waiting_signal_name=request.name),
            f"wait_signal {request.name}",
        )
        # A signal queued between the consume above and the hibernation found no waiter to
        # wake; this sweep wakes the instance for it (the process still exits as told).
        await self._db.claim_signal_waiters(binding.instance_id)
        return WaitSignalResponse(found=False, hibernate=True)

    async def _hibernate(
        self, binding: InstanceBinding, reason: TerminationReason, update: InstanceUpdate, what: str
    ) -> None:
        await self._db.transition(
            binding.instance_id,
            RUNNING,
            InstanceStatus.SUSPENDED,
            reason=reason,
            update=update,
            event=NewEvent(EventType.SUSPENDED, subtype=str(reason), payload=what.encode()),
        )
        binding.end(f"hibernated ({reason})")

    # ------------------------------------------------------------------ instance-wide signals

    async def poll_signals(self, request: PollSignalsRequest, session: Session) -> PollSignalsResponse:
        binding = bound(session)
        pending = await self._db.pending_signal(binding.instance_id)
        return PollSignalsResponse(pending_signal=pending_signal_message(pending))

    async def ack_signal(self, request: AckSignalRequest, session: Session) -> Empty:
        """Act on the signal first, then clear the slot: a crash between the two leaves the
        signal pending and the status changed, and the retried ack then only clears the slot."""
        binding = bound(session)
        signal = SignalType(request.signal_type)
        instance_id = binding.instance_id
        pending = await self._db.pending_signal(instance_id)
        if pending is None or pending.signal_type is not signal:
            if await self._already_acted(instance_id, signal):
                return Empty()
            holding = pending.signal_type.value if pending else "nothing"
            raise InvalidState(
                f"no {signal} signal is pending for instance {instance_id!r} (the slot holds "
                f"{holding}); acknowledge the signal that poll_signals returns"
            )
        if signal in SIGNAL_OUTCOMES:
            await self._end_by_signal(binding, signal)
        await self._db.ack_signal(instance_id, signal)
        return Empty()

    async def _end_by_signal(self, binding: InstanceBinding, signal: SignalType) -> None:
        status, reason, event = SIGNAL_OUTCOMES[signal]
        try:
            await self._db.transition(
                binding.instance_id,
                RUNNING,
                status,
                reason=reason,
                event=NewEvent(event, subtype=str(reason)),
            )
        except InvalidState:
            if not await self._already_acted(binding.instance_id, signal):
                raise
        binding.end(str(reason))

    async def _already_acted(self, instance_id: str, signal: SignalType) -> bool:
        """Whether the instance already shows the outcome of ``signal`` (a retried ack)."""
        row = await self._db.get_instance(instance_id)
        if row is None:
            return False
        if signal is SignalType.CANCEL:
            return row.status is InstanceStatus.CANCELLED
        if signal is SignalType.PAUSE:
            return (
                row.status is InstanceStatus.SUSPENDED
                and row.termination_reason is TerminationReason.PAUSED
            )
        return False

    # ------------------------------------------------------------------ events

    async def event(self, request: EventRequest, session: Session) -> Empty:
        kind = request.type
        payload = request.payload
        if payload is not None:
            self._check_state(payload, f"{kind} event payload")
        if kind == "heartbeat":
            binding = bound(session)
            if binding.ended is None:
                await self._db.touch_heartbeat(binding.instance_id)
        elif kind == "completed":
            await self._finish(
                session, InstanceStatus.COMPLETED, TerminationReason.COMPLETED,
                InstanceUpdate(output=payload), NewEvent(EventType.COMPLETED),
            )
        elif kind == "failed":
            error = (payload or b"").decode("utf-8", "replace").replace("\0", "") or "unknown error"
            await self._finish(
                session, InstanceStatus.FAILED, TerminationReason.APPLICATION_ERROR,
                InstanceUpdate(error=error), NewEvent(EventType.FAILED, payload=payload),
            )
        elif kind == "suspended":
            await self._suspended_event(session, payload)
        else:
            binding = active(session)
            if not request.subtype:
                raise BadRequest("event: a custom event needs a non-empty 'subtype'")
            await self._db.append_event(
                binding.instance_id,
                NewEvent(EventType.CUSTOM, subtype=request.subtype, payload=payload),
            )
        return Empty()

    async def _finish(
        self,
        session: Session,
        status: InstanceStatus,
        reason: TerminationReason,
        update: InstanceUpdate,
        event: NewEvent,
    ) -> None:
        """completed / failed: first writer wins, and only from running."""
        binding = bound(session)
        if binding.ended is not None and binding.ended != str(status):
            active(session)  # raises: this launch already ended another way
        try:
            await self._db.transition(
                binding.instance_id, RUNNING, status, reason=reason, update=update, event=event
            )
        except InvalidState:
            row = await self._db.get_instance(binding.instance_id)
            if row is None or row.status is not status:
                raise
            # The same report again (a retry after a lost response): already recorded.
        binding.end(str(status))

    async def _suspended_event(self, session: Session, payload: bytes | None) -> None:
        binding = bound(session)
        row = await self._db.get_instance(binding.instance_id)
        if row is None or row.status is not InstanceStatus.SUSPENDED:
            raise InvalidState(
                "an instance suspends through sleep, wait_signal or acknowledging a pause; "
                "a 'suspended' event only records that a suspended launch is exiting"
            )
        await self._db.append_event(
            binding.instance_id, NewEvent(EventType.SUSPENDED, subtype="exiting", payload=payload)
        )

    async def retry_attempt(self, request: RetryAttemptRequest, session: Session) -> Empty:
        binding = active(session)
        await self._db.append_event(
            binding.instance_id,
            NewEvent(
                EventType.RETRY_ATTEMPT,
                subtype=request.checkpoint_id,
                payload=json.dumps(
                    {"checkpoint_id": request.checkpoint_id, "attempt": request.attempt, "error": request.error}
                ).encode(),
            ),
        )
        return Empty()

    # ------------------------------------------------------------------ status

    async def status(self, request: StatusRequest, session: Session) -> StatusResponse:
        binding = bound(session)
        row = await self._db.get_instance(binding.instance_id)
        if row is None:
            raise NotFound(f"instance {binding.instance_id!r} not found")
        return StatusResponse(
            status=row.status.value,
            termination_reason=row.termination_reason.value if row.termination_reason else None,
            checkpoint_id=row.checkpoint_id,
            attempt=row.attempt,
            wake_at_ms=row.wake_at_ms,
        )
