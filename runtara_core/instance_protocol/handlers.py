"""The instance-protocol operations (DESIGN section 3), each a thin step over persistence.

Every op but ``register`` acts on the instance its connection registered as, so an instance can
reach only its own data. Writes are refused once this launch has ended (completed, failed,
hibernated, paused, cancelled): persistence would accept them, the lifecycle must not.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    HibernateResult,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    SignalOutcome,
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
SIGNAL_OUTCOMES: dict[SignalType, SignalOutcome] = {
    SignalType.CANCEL: SignalOutcome(
        InstanceStatus.CANCELLED,
        TerminationReason.CANCELLED,
        NewEvent(EventType.CANCELLED, subtype="acknowledged"),
    ),
    SignalType.PAUSE: SignalOutcome(
        InstanceStatus.SUSPENDED,
        TerminationReason.PAUSED,
        NewEvent(EventType.SUSPENDED, subtype="paused"),
    ),
}
"""What acknowledging an instance-wide signal does; resume only clears the slot."""
WAIT_ROUNDS = 3
"""Consume-then-hibernate attempts of one wait_signal before answering "ask again"."""


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
        row = await self._start(row, attempt, request.launch_id)
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

    async def _start(self, row: InstanceRow, attempt: int, launch_id: str | None) -> InstanceRow:
        """pending -> running for a new launch; a running instance re-registering is the same
        launch reconnecting (after a network blip or a core restart), if it proves it is."""
        if row.status is InstanceStatus.RUNNING:
            if row.launch_id != launch_id:
                raise Forbidden(
                    f"instance {row.instance_id!r} is running in another launch; this process "
                    "belongs to an earlier one (it hibernated or paused) and must exit"
                )
            await self._db.touch_heartbeat(row.instance_id, attempt=attempt)
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
                        launch_id=launch_id,
                    ),
                    event=NewEvent(EventType.STARTED, subtype=f"attempt {attempt}"),
                    attempt=attempt,
                )
            except InvalidState:
                latest = await self._db.get_instance(row.instance_id)
                if latest is None:
                    raise NotFound(f"instance {row.instance_id!r} not found") from None
                if (
                    latest.status is not InstanceStatus.RUNNING
                    or latest.attempt != attempt
                    or latest.launch_id != launch_id
                ):
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
            binding.instance_id, request.checkpoint_id, request.state, attempt=binding.attempt
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
            binding.instance_id, request.checkpoint_id, record.encode(), attempt=binding.attempt
        )
        if not result.saved:
            stored = SleepRecord.decode(result.state)
            if stored is None:
                raise Conflict(
                    f"checkpoint {request.checkpoint_id!r} was saved by something other than a "
                    "sleep; give this sleep its own checkpoint id"
                )
            record = stored  # a replay: the first call's wake time stands
        pending = result.pending_signal
        hibernate = request.may_hibernate and should_hibernate(
            record.wake_at_ms - now, self._hibernate_after
        )
        if hibernate:
            outcome = await self._hibernate(
                binding,
                TerminationReason.SLEEPING,
                record.wake_at_ms,
                None,
                f"sleep {request.checkpoint_id}",
            )
            hibernate, pending = outcome.hibernated, outcome.pending_signal
        return SleepResponse(
            wake_at_ms=record.wake_at_ms,
            hibernate=hibernate,
            pending_signal=pending_signal_message(pending),
        )

    async def wait_signal(self, request: WaitSignalRequest, session: Session) -> WaitSignalResponse:
        binding = active(session)
        for _ in range(WAIT_ROUNDS):
            consumed = await self._db.consume_custom_signal(
                binding.instance_id,
                request.name,
                request.checkpoint_id,
                attempt=binding.attempt,
                queued_by_ms=request.deadline_ms,
            )
            if consumed.found:
                if consumed.replayed and consumed.payload == TIMEOUT_STATE:
                    return WaitSignalResponse(found=False, timed_out=True)
                return WaitSignalResponse(found=True, payload=consumed.payload)
            if not request.may_hibernate or not should_hibernate(request.timeout_ms, self._hibernate_after):
                return WaitSignalResponse(found=False)
            wake_at = None if request.timeout_ms is None else self._clock() + request.timeout_ms
            outcome = await self._hibernate(
                binding,
                TerminationReason.WAITING,
                wake_at,
                request.name,
                f"wait_signal {request.name}",
            )
            blocking = outcome.pending_signal
            if outcome.hibernated or (
                blocking is not None and blocking.signal_type is not SignalType.RESUME
            ):
                return WaitSignalResponse(
                    found=False,
                    hibernate=outcome.hibernated,
                    pending_signal=pending_signal_message(blocking),
                )
            # A signal of this name was queued after the consume: take it now.
        return WaitSignalResponse(found=False)  # signals keep racing in: let the instance ask again

    async def _hibernate(
        self,
        binding: InstanceBinding,
        reason: TerminationReason,
        wake_at_ms: int | None,
        waiting_signal_name: str | None,
        what: str,
    ) -> HibernateResult:
        """Suspend this launch unless a cancel or pause is pending (the instance must act on
        it first) or, for a signal wait, a signal of that name came in meanwhile."""
        binding.suspending = True
        call = asyncio.ensure_future(
            self._db.hibernate(
                binding.instance_id,
                attempt=binding.attempt,
                reason=reason,
                wake_at_ms=wake_at_ms,
                waiting_signal_name=waiting_signal_name,
                event=NewEvent(EventType.SUSPENDED, subtype=str(reason), payload=what.encode()),
            )
        )
        try:
            try:
                outcome = await asyncio.shield(call)
            except asyncio.CancelledError:
                # The client gave up on the answer, but the hibernation may still commit: this
                # connection must know, or a resent request would act for a suspended launch.
                with contextlib.suppress(Exception):
                    if (await call).hibernated:
                        binding.end(f"hibernated ({reason})")
                raise
            if outcome.hibernated:
                binding.end(f"hibernated ({reason})")
            return outcome
        finally:
            binding.suspending = False

    # ------------------------------------------------------------------ instance-wide signals

    async def poll_signals(self, request: PollSignalsRequest, session: Session) -> PollSignalsResponse:
        binding = bound(session)
        pending = await self._db.pending_signal(binding.instance_id)
        return PollSignalsResponse(pending_signal=pending_signal_message(pending))

    async def ack_signal(self, request: AckSignalRequest, session: Session) -> Empty:
        """Acknowledge the pending signal and apply it (cancel: cancelled; pause: suspended),
        atomically: a cancel replacing a pause in the meantime is not lost."""
        binding = bound(session)
        signal = SignalType(request.signal_type)
        outcome = SIGNAL_OUTCOMES.get(signal)
        if binding.ended is None:
            acknowledged = await self._db.ack_signal(
                binding.instance_id, signal, outcome=outcome, attempt=binding.attempt
            )
            if acknowledged:
                if outcome is not None:
                    binding.end(str(outcome.reason))
                return Empty()
            if outcome is not None and await self._shows(binding, outcome):
                binding.end(str(outcome.reason))  # committed while its handler was cancelled
                return Empty()
        elif outcome is not None and binding.ended == str(outcome.reason):
            return Empty()  # a retry of the acknowledgement that ended this launch
        pending = await self._db.pending_signal(binding.instance_id)
        holding = pending.signal_type.value if pending else "nothing"
        raise InvalidState(
            f"no {signal} signal is pending for instance {binding.instance_id!r} (the slot holds "
            f"{holding}); acknowledge the signal that poll_signals returns"
        )

    async def _shows(self, binding: InstanceBinding, outcome: SignalOutcome) -> bool:
        """Whether this launch's instance already shows ``outcome`` (an acknowledgement retried)."""
        row = await self._db.get_instance(binding.instance_id)
        return (
            row is not None
            and row.attempt == binding.attempt
            and row.status is outcome.status
            and row.termination_reason is outcome.reason
        )

    # ------------------------------------------------------------------ events

    async def event(self, request: EventRequest, session: Session) -> Empty:
        kind = request.type
        payload = request.payload
        if payload is not None:
            self._check_state(payload, f"{kind} event payload")
        if kind == "heartbeat":
            binding = bound(session)
            if binding.ended is None:
                await self._db.touch_heartbeat(binding.instance_id, attempt=binding.attempt)
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
                attempt=binding.attempt,
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
        """completed / failed: first writer wins, only from running, only for this launch."""
        binding = bound(session)
        if binding.ended == str(status):
            return  # the same report again on this connection (its response was lost)
        binding = active(session)
        try:
            await self._db.transition(
                binding.instance_id,
                RUNNING,
                status,
                reason=reason,
                update=update,
                event=event,
                attempt=binding.attempt,
            )
        except InvalidState:
            # The same report may have committed while its handler was cancelled (the client
            # timed out): identical output or error on this attempt means it is a retry.
            row = await self._db.get_instance(binding.instance_id)
            if (
                row is None
                or row.status is not status
                or row.attempt != binding.attempt
                or any(getattr(row, name) != value for name, value in update.assignments().items())
            ):
                raise
        binding.end(str(status))

    async def _suspended_event(self, session: Session, payload: bytes | None) -> None:
        """An audit record that a hibernated launch is exiting: once, and only then."""
        binding = bound(session)
        exiting = binding.ended is not None and (
            binding.ended.startswith("hibernated") or binding.ended == str(TerminationReason.PAUSED)
        )
        if not exiting:
            raise InvalidState(
                "an instance suspends through sleep, wait_signal or acknowledging a pause; "
                "a 'suspended' event only records that a hibernated or paused launch is exiting"
            )
        if binding.exit_recorded:
            return
        await self._db.append_event(
            binding.instance_id, NewEvent(EventType.SUSPENDED, subtype="exiting", payload=payload)
        )
        binding.exit_recorded = True

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
            attempt=binding.attempt,
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
