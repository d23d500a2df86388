"""``Context``: the workflow API of DESIGN section 10 over one registered launch.

Every durable call takes the next position (see ``history``), then either replays (its
checkpoint is in the history: return the stored outcome, no round trip) or runs live. Only
live calls see cancellation and pause:
- cancel: the next live call (or a running wait) saves a "cancelled" marker at its position and
  raises ``Cancelled``; a replay raises it at the same position again, so cleanup code takes
  the same path after a crash.
- pause: live calls stop at their start; once no step is running the SDK acknowledges and the
  launch exits; a resume replays up to the same point.
Hibernation and pause end the launch without unwinding the workflow (like a crash would), so
``finally`` blocks run only for cancellation and real completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from runtara_core.errors import InvalidState, RuntaraError
from runtara_core.instance_protocol.decisions import TIMEOUT_STATE, SleepRecord
from runtara_core.wire.messages import MAX_DURATION_MS, PendingSignal
from runtara_sdk import serialization
from runtara_sdk.activity import Activity, Wait
from runtara_sdk.branches import Branch, branch_task_factory, current_branch, detached, enter_branch
from runtara_sdk.client import InstanceClient
from runtara_sdk.errors import Cancelled, LaunchEnded, NonDeterminismError, SerializationError, SignalTimeout, StepTimeout
from runtara_sdk.exit_codes import ExitCode
from runtara_sdk.failpoints import Failpoints
from runtara_sdk.history import CallId, CallKind, Lookup, ReplayHistory
from runtara_sdk.instance_signals import InstanceSignals
from runtara_sdk.steps import (
    StepInfo,
    current_step,
    StepOptions,
    call_body,
    decode_outcome,
    encode_failure,
    encode_success,
    enter_step,
    leave_step,
    unwrap_step,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SIBLING_TURNS = 2
"""Event-loop turns a wait lets pass before asking to hibernate, so that sibling branches
started in the same breath (``asyncio.gather``) have begun their steps."""

_current: contextvars.ContextVar[Context | None] = contextvars.ContextVar("runtara_context", default=None)

STATUS_EXIT_CODES = {
    "completed": ExitCode.COMPLETED,
    "failed": ExitCode.FAILED,
    "cancelled": ExitCode.CANCELLED,
    "suspended": ExitCode.SUSPENDED,
}


async def exit_code_from_status(client: InstanceClient) -> ExitCode:
    """After core refused this launch: the exit code its instance's status stands for."""
    try:
        status = await asyncio.wait_for(detached(client.status()), 5)
    except Exception:  # refused or unreachable: the environment decides from the database
        return ExitCode.LOST
    return STATUS_EXIT_CODES.get(status.status, ExitCode.LOST)


def current_context() -> Context | None:
    return _current.get()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def duration_ms(seconds: float, what: str) -> int:
    if not seconds >= 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {seconds!r}")
    return min(round(seconds * 1000), MAX_DURATION_MS)


async def forever() -> NoReturn:
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


class WorkflowLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``ctx.log``: tags records with the instance id and stays quiet while replaying (the
    lines were written by the launch that first ran that code)."""

    def __init__(self, context: Context) -> None:
        super().__init__(logging.getLogger("runtara.workflow"), {"instance_id": context.instance_id})
        self._context = context

    def isEnabledFor(self, level: int) -> bool:
        return not self._context.replaying and super().isEnabledFor(level)


class Context:
    """One launch of one workflow instance, as its code sees it."""

    def __init__(
        self,
        client: InstanceClient,
        signals: InstanceSignals,
        *,
        signal_wait_poll_s: float = 1.0,
        failpoints: Failpoints | None = None,
    ) -> None:
        registration = client.registration
        if registration is None:
            raise RuntimeError("the client must be connected (registered) before a Context is made")
        self.instance_id = client.instance_id
        self.attempt = registration.attempt
        self.log: logging.LoggerAdapter[logging.Logger] = WorkflowLogger(self)
        self._client = client
        self._signals = signals
        self._history = ReplayHistory(registration.checkpoints, registration.history_complete)
        self._activity = Activity()
        self._root = Branch()
        self._calls = 0
        self._poll_s = signal_wait_poll_s
        self._failpoints = failpoints or Failpoints()
        self._rng = random.Random()
        self._pauser: asyncio.Task[None] | None = None
        self.nondeterminism: NonDeterminismError | None = None
        self.finished: asyncio.Future[ExitCode] = asyncio.get_running_loop().create_future()
        """Set when the launch must end although the workflow has not returned (hibernated,
        paused, refused by core); the runner exits with it."""
        signals.note(registration.pending_signal)

    @contextlib.contextmanager
    def bound(self) -> Iterator[None]:
        """Make this the current context for tasks created inside the block."""
        token = _current.set(self)
        try:
            yield
        finally:
            _current.reset(token)

    def start(self, entry: Callable[..., Awaitable[T]], workflow_input: Any) -> asyncio.Task[T]:
        """Run ``entry(self, workflow_input)`` as the workflow's root branch; the tasks it starts
        become numbered branches (see ``branches``)."""
        loop = asyncio.get_running_loop()
        if loop.get_task_factory() is None:
            loop.set_task_factory(branch_task_factory)  # type: ignore[arg-type]

        async def root() -> T:
            enter_branch(self._root)
            return await entry(self, workflow_input)

        with self.bound():
            return loop.create_task(root())

    @property
    def cancelled(self) -> bool:
        """Whether a cancel has been requested (it is raised at the next SDK await)."""
        return self._signals.cancel_requested

    @property
    def replaying(self) -> bool:
        """Whether the workflow is still re-walking calls it made in an earlier launch."""
        return self._calls < self._history.calls

    # ------------------------------------------------------------------ positions and replay

    def _branch(self) -> Branch:
        return current_branch() or self._root

    def _next_call(self, kind: CallKind, name: str) -> CallId:
        if current_step() is not None:
            raise RuntimeError(
                f"ctx.{kind} {name!r} inside a step body: a step's body is one unit of work; "
                "sleep or wait in the workflow, between steps"
            )
        self._calls += 1
        call = CallId(self._branch().next_position(), kind, name)
        try:
            self._history.check(call)
        except NonDeterminismError as error:
            self.nondeterminism = self.nondeterminism or error
            raise
        return call

    async def _saved(self, checkpoint_id: str) -> bytes | None:
        found = self._history.lookup(checkpoint_id)
        if found is Lookup.ABSENT:
            return None
        if found is Lookup.ASK_CORE:
            response = await self._core(self._client.get_checkpoint(checkpoint_id))
            if not response.found or response.state is None:
                return None
            self._history.remember(checkpoint_id, response.state)
            return response.state
        return found

    async def _replay_cancel(self, call: CallId) -> None:
        """Raise ``Cancelled`` here if an earlier launch delivered it at this position."""
        if await self._saved(call.part("cancelled")) is not None:
            self._branch().mark_cancel_delivered()
            raise Cancelled(f"instance {self.instance_id} was cancelled (replayed at {call.checkpoint_id})")

    async def _live(self, call: CallId) -> None:
        """The start of a live call: deliver a cancel, or stop here while a pause is pending."""
        while True:
            if self._interrupting():
                await self._deliver_cancel(call)
            if not self._signals.pause_requested:
                return
            self._start_pausing()
            await self._signals.changed().wait()

    async def _deliver_cancel(self, call: CallId) -> NoReturn:
        self._branch().mark_cancel_delivered()
        await self._core(self._client.checkpoint(call.part("cancelled"), b""))
        raise Cancelled(f"instance {self.instance_id} was cancelled ({self._signals.cancel_source})")

    def _interrupting(self) -> bool:
        """A cancel is due in this branch: requested, and not yet raised here or below (every
        other branch still running gets it at its next SDK call too)."""
        return self._signals.cancel_requested and not self._branch().cancel_delivered

    # ------------------------------------------------------------------ talking to core

    async def _core(self, request: Awaitable[T]) -> T:
        """An RPC of this launch; if core says the launch is over, end it here (never returns)."""
        try:
            return await request
        except (LaunchEnded, InvalidState) as error:
            await self._launch_over(str(error))
            raise AssertionError("unreachable") from None

    async def _launch_over(self, reason: str) -> NoReturn:
        log.warning("instance %s: this launch is over: %s", self.instance_id, reason)
        await self.end(await exit_code_from_status(self._client))

    async def end(self, code: ExitCode) -> NoReturn:
        """End the launch with ``code``; the calling branch of the workflow parks forever."""
        if not self.finished.done():
            self.finished.set_result(code)
        await forever()

    def _note(self, pending: PendingSignal | None) -> None:
        self._signals.note(pending)

    # ------------------------------------------------------------------ steps

    async def step(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` as a durable step called ``name``."""
        function, options = unwrap_step(fn)
        return await self.run_step(name, function, args, kwargs, options)

    async def run_step(
        self, name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: StepOptions
    ) -> Any:
        if current_step() is not None:
            return await call_body(fn, args, kwargs)  # inside a step body: part of that step
        call = self._next_call(CallKind.STEP, name)
        await self._replay_cancel(call)
        state = await self._saved(call.checkpoint_id)
        if state is None:
            await self._live(call)
            async with self._activity.running():
                state = await self._execute(call, fn, args, kwargs, options)
                self._failpoints.reach("step.after_body")
                response = await self._core(self._client.checkpoint(call.checkpoint_id, state))
                self._failpoints.reach("step.after_checkpoint")
                self._note(response.pending_signal)
                if response.found:
                    state = response.state  # saved before (a history we could not see whole)
        return decode_outcome(state, call.checkpoint_id)

    async def _execute(
        self, call: CallId, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: StepOptions
    ) -> bytes:
        """Run the body with retries; the outcome to store (a value or the final failure)."""
        policy = options.policy
        failed_try = 0
        while True:
            info = StepInfo(call.checkpoint_id, call.name, self.instance_id, failed_try + 1, self.attempt)
            try:
                value = await self._try_body(call, fn, args, kwargs, options, info)
            except Exception as error:  # Cancelled and other BaseExceptions pass through
                failed_try += 1
                if not policy.should_retry(error, failed_try):
                    return encode_failure(error)
                description = f"{type(error).__qualname__}: {error}"
                self.log.info("step %s try %d failed (%s); retrying", call.checkpoint_id, failed_try, description)
                await self._core(self._client.retry_attempt(call.checkpoint_id, failed_try, description))
                await self._pause_for(call, policy.delay_s(failed_try, self._rng))
                continue
            try:
                return encode_success(value, call.name)
            except SerializationError as error:
                return encode_failure(error)

    async def _try_body(
        self,
        call: CallId,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: StepOptions,
        info: StepInfo,
    ) -> Any:
        token = enter_step(info)
        if options.timeout_s is None and not options.cancellable:
            try:  # the common case: the body runs in this task, no extra task or timer
                return await call_body(fn, args, kwargs)
            finally:
                leave_step(token)
        try:
            body = asyncio.ensure_future(call_body(fn, args, kwargs))  # copies the step's context
        finally:
            leave_step(token)
        try:
            async with asyncio.timeout(options.timeout_s) as limit:
                if options.cancellable:
                    return await self._interruptible(call, body)
                return await body
        except TimeoutError:
            if limit.expired():
                raise StepTimeout(f"step {call.name!r} try {info.attempt} ran longer than {options.timeout_s:g}s") from None
            raise
        finally:
            if not body.done():
                body.cancel()  # a sync body keeps running in its thread; its result is dropped

    async def _interruptible(self, call: CallId, body: asyncio.Future[Any]) -> Any:
        """Await a cancellable step's body; a cancel cancels it and is raised here."""
        while not body.done():
            if self._interrupting():
                body.cancel()
                await asyncio.gather(body, return_exceptions=True)
                await self._deliver_cancel(call)
            waiter = detached(self._signals.changed().wait())
            try:
                await asyncio.wait({body, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        return body.result()

    async def _pause_for(self, call: CallId, seconds: float) -> None:
        """A backoff pause inside a step; a cancel cuts it short."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._interrupting():
                await self._deliver_cancel(call)
            waiter = detached(self._signals.changed().wait())
            try:
                done, _ = await asyncio.wait({waiter}, timeout=left)
            finally:
                waiter.cancel()
            if not done:
                return

    # ------------------------------------------------------------------ durable sleep

    async def sleep(self, name: str, *, seconds: float) -> None:
        """Sleep durably: a relaunch sleeps only the remainder; long sleeps hibernate."""
        await self._sleep(name, duration_ms(seconds, "sleep"))

    async def sleep_until(self, name: str, when: datetime | float) -> None:
        """Sleep until ``when`` (an aware datetime, or Unix epoch seconds)."""
        target = when.timestamp() if isinstance(when, datetime) else float(when)
        await self._sleep(name, duration_ms(max(0.0, target - time.time()), "sleep_until"))

    async def _sleep(self, name: str, ms: int) -> None:
        call = self._next_call(CallKind.SLEEP, name)
        await self._replay_cancel(call)
        saved = await self._saved(call.checkpoint_id)
        wake_at: int | None = None
        if saved is not None:
            record = SleepRecord.decode(saved)
            if record is None:
                raise NonDeterminismError(f"checkpoint {call.checkpoint_id!r} does not hold a sleep record")
            wake_at = record.wake_at_ms
            if wake_at <= now_ms():
                return  # slept through in an earlier launch
        await self._live(call)

        def ask(may_hibernate: bool) -> Awaitable[Any]:
            return self._client.sleep(call.checkpoint_id, ms, may_hibernate=may_hibernate)

        with self._activity.waiting(Wait(CallKind.SLEEP, wake_at)) as wait:
            response = await self._ask_maybe_hibernating(wait, ask)
            wait.deadline_ms = response.wake_at_ms
            self._activity.deadline_changed()
            self._failpoints.reach("sleep.started")
            while (left := wait.deadline_ms - now_ms()) > 0:
                await self._wait_turn(call, wait, left / 1000, ask)

    async def _ask_maybe_hibernating(self, wait: Wait, ask: Callable[[bool], Awaitable[Any]]) -> Any:
        """Send a sleep or wait; hibernate if core may and does (then this never returns)."""
        if self._activity.may_offer(wait):
            for _ in range(SIBLING_TURNS):
                await asyncio.sleep(0)  # branches started with this one reach their first step
            async with self._activity.hibernation_attempt():
                if self._activity.claim_offer(wait):  # re-checked under the gate
                    response = await self._core(ask(True))
                    if response.hibernate:
                        self._failpoints.reach("hibernate.recorded")
                        log.info("instance %s hibernates", self.instance_id)
                        await self.end(ExitCode.SUSPENDED)  # holding the gate: no step starts now
                    self._note(response.pending_signal)
                    return response
        response = await self._core(ask(False))
        self._note(response.pending_signal)
        return response

    async def _wait_turn(
        self, call: CallId, wait: Wait, seconds: float, ask: Callable[[bool], Awaitable[Any]], *extra: asyncio.Event
    ) -> Any:
        """Wait up to ``seconds`` for a signal or the chance to hibernate; act on a cancel.

        Returns the response of a hibernation request core declined, else None."""
        if self._interrupting():
            await self._deliver_cancel(call)
        if self._signals.pause_requested:
            self._start_pausing()
        events = [self._signals.changed(), wait.may_hibernate, *extra]
        waiters = [detached(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._interrupting():
            await self._deliver_cancel(call)
        if self._signals.pause_requested:
            self._start_pausing()
        if wait.may_hibernate.is_set():
            return await self._ask_maybe_hibernating(wait, ask)
        return None

    # ------------------------------------------------------------------ signal waits

    async def wait_signal(self, name: str, timeout_s: float | None = None) -> Any:
        """The payload of the next custom signal called ``name``, delivered exactly once.

        Raises ``SignalTimeout`` after ``timeout_s`` (durably: a relaunch keeps the deadline).
        """
        call = self._next_call(CallKind.SIGNAL, name)
        await self._replay_cancel(call)
        saved = await self._saved(call.checkpoint_id)
        if saved is not None:
            return self._delivered(call, saved)
        await self._live(call)
        deadline = await self._signal_deadline(call, timeout_s)
        arrived = self._signals.custom_event(name)

        def ask(may_hibernate: bool) -> Awaitable[Any]:
            left = None if deadline is None else max(0, deadline - now_ms())
            return self._client.wait_signal(
                name, call.checkpoint_id, left, may_hibernate=may_hibernate, deadline_ms=deadline
            )

        def overdue() -> bool:
            return deadline is not None and now_ms() >= deadline

        with self._activity.waiting(Wait(CallKind.SIGNAL, deadline)) as wait:
            # Past the deadline a wait still gets a signal queued by then (a relaunch may come
            # late; core filters by the deadline), else it times out, whatever arrives later.
            if overdue():
                response = await self._core(ask(False))
                self._note(response.pending_signal)
            else:
                response = await self._ask_maybe_hibernating(wait, ask)
            while True:
                if response is not None:
                    if response.found:
                        self._failpoints.reach("signal.consumed")
                        return self._delivered(call, response.payload or b"")
                    if response.timed_out:
                        raise SignalTimeout(f"no {name!r} signal before the wait's timeout (recorded)")
                if overdue():
                    return await self._time_out(call)
                self._failpoints.reach("signal.waiting")
                arrived.clear()
                left = None if deadline is None else deadline - now_ms()
                turn = self._poll_s if left is None else min(self._poll_s, left / 1000)
                declined = await self._wait_turn(call, wait, turn, ask, arrived)
                response = declined if declined is not None else await self._core(ask(False))
                self._note(response.pending_signal)

    async def _signal_deadline(self, call: CallId, timeout_s: float | None) -> int | None:
        """A wait's deadline, stored once (as a sleep record) so a relaunch keeps it."""
        if timeout_s is None:
            return None
        deadline_id = call.part("deadline")
        saved = await self._saved(deadline_id)
        record = SleepRecord.decode(saved) if saved is not None else None
        if record is not None:
            return record.wake_at_ms
        response = await self._core(
            self._client.sleep(deadline_id, duration_ms(timeout_s, "wait_signal timeout"), may_hibernate=False)
        )
        self._note(response.pending_signal)
        return response.wake_at_ms

    async def _time_out(self, call: CallId) -> Any:
        """Record the timeout as the wait's checkpoint; a signal consumed first still wins."""
        response = await self._core(self._client.checkpoint(call.checkpoint_id, TIMEOUT_STATE))
        if response.found and response.state != TIMEOUT_STATE:
            return self._delivered(call, response.state)
        raise SignalTimeout(f"no {call.name!r} signal before the wait's timeout")

    def _delivered(self, call: CallId, payload: bytes) -> Any:
        if payload == TIMEOUT_STATE:
            raise SignalTimeout(f"no {call.name!r} signal before the wait's timeout (recorded)")
        return serialization.from_json(payload, f"the payload of signal {call.name!r}")

    # ------------------------------------------------------------------ pause

    def _start_pausing(self) -> None:
        if self._pauser is None or self._pauser.done():
            self._pauser = detached(self._pause_when_idle())

    async def _pause_when_idle(self) -> None:
        """Acknowledge the pause once no step runs; a cancel that replaced it is heard instead."""
        await self._activity.idle()
        if not self._signals.pause_requested:
            return
        delay = 0.1
        while True:
            try:
                await self._client.ack_signal("pause")
                break
            except InvalidState as refused:
                pending = await self._core(self._client.poll_signals())
                if pending is not None and pending.signal_type == "pause":
                    await self._launch_over(str(refused))  # refused for this launch, not the slot
                self._signals.replace(pending)  # a cancel replaced the pause, or it was withdrawn
                return
            except LaunchEnded as error:
                await self._launch_over(str(error))
            except RuntaraError as error:  # core could not store it now: the pause still stands
                log.warning("acknowledging the pause failed (%s); trying again in %.1fs", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.info("instance %s paused", self.instance_id)
        await self.end(ExitCode.SUSPENDED)

    # ------------------------------------------------------------------ events

    async def custom_event(self, subtype: str, payload: Any = None) -> None:
        """Record a custom event (JSON payload). Not sent again while replaying."""
        if self.replaying:
            return
        body = None if payload is None else serialization.to_json(payload, f"the payload of event {subtype!r}")
        await self._core(self._client.custom_event(subtype, body))
