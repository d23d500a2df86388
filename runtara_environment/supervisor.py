"""The supervisor: launches pending instances into free slots and acts on every exit.

- **Launching.** Pending rows are the queue (start, wake, resume and a woken signal wait all
  leave an instance pending), read highest priority first whenever something may have changed
  (``poke``) and every sweep interval, and launched while fewer than
  ``RUNTARA_MAX_CONCURRENT_INSTANCES`` processes are live.
- **Exits.** Each process's exit is seen at once (``process_runner``) and judged by
  ``exit_decisions`` against the row as the launch left it: a crash is suspended as crashed
  until its backoff ends (the wake scheduler relaunches it, durably), or fails once out of
  attempts.
- **Liveness and time.** A sweep kills silent launches (heartbeat timeout) and an execution
  timer stops launches that ran out of running time.
- **Restart.** ``recover`` adopts the live launches of an earlier environment process (pid plus
  start time) and treats dead ones as crashes; nothing is killed blindly.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from runtara_core.config import Settings
from runtara_core.errors import InvalidState, NotFound, RuntaraError
from runtara_core.instance_tokens import InstanceTokens
from runtara_core.persistence import Persistence
from runtara_core.persistence.rows import (
    EventType,
    InstanceFilter,
    InstanceOrder,
    InstanceRow,
    InstanceStatus,
    InstanceUpdate,
    NewEvent,
    ProcessExit,
    SignalType,
    TerminationReason,
)
from runtara_core.persistence.rules import Clock
from runtara_environment.exit_decisions import (
    KillReason,
    Verdict,
    crash_payload,
    decide_exit,
)
from runtara_environment.image_registry import ImageRegistry
from runtara_environment.process_runner import (
    InstanceProcess,
    LaunchSpec,
    ProcessLauncher,
    ResourceLimits,
    adopt,
    read_tail,
    reap_orphans,
    run_dir_of,
)

log = logging.getLogger(__name__)

ACTIVE = {InstanceStatus.PENDING, InstanceStatus.RUNNING}
RECENT_LAUNCHES = 100_000
"""Launches remembered for ``launched_since`` (a bounded window; older ones are forgotten)."""


@dataclass(frozen=True, slots=True)
class CoreEndpoint:
    """Where launches find the core, and how they check its certificate."""

    addr: str
    tls_ca: Path | None
    tls_insecure: bool


class Supervisor:
    def __init__(
        self,
        persistence: Persistence,
        settings: Settings,
        *,
        tokens: InstanceTokens,
        registry: ImageRegistry,
        core: CoreEndpoint,
        node_id: str,
        clock: Clock,
        launcher: ProcessLauncher,
        on_relaunch_scheduled: Callable[[int], None] = lambda _at: None,
    ) -> None:
        self._db = persistence
        self.launcher = launcher
        self._settings = settings
        self._tokens = tokens
        self._registry = registry
        self._core = core
        self.node_id = node_id
        self._clock = clock
        self._on_relaunch_scheduled = on_relaunch_scheduled
        self.live: dict[str, InstanceProcess] = {}
        self._launching: set[str] = set()
        self._settling: set[str] = set()
        """Instances whose launch just ended and whose exit is being handled."""
        self._kills: dict[str, KillReason] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        """Per live launch: its execution timeout, and its SIGKILL after a stop's grace."""
        self._kill_timers: dict[str, asyncio.TimerHandle] = {}
        self._exit_tasks: set[asyncio.Task[None]] = set()
        self._poked = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._launch_seq = 0
        self._recent_launches: deque[tuple[int, str]] = deque(maxlen=RECENT_LAUNCHES)
        """(sequence number, instance id) of the latest launches, for the run-directory retention."""

    @property
    def runs_dir(self) -> Path:
        return self._settings.data_dir.resolve() / "runs"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.recover()
        self._loops = [
            asyncio.create_task(self._launch_loop(), name="supervisor-launch"),
            asyncio.create_task(self._sweep_loop(), name="supervisor-sweep"),
        ]

    async def stop(self) -> None:
        """Stop supervising; live instance processes keep running (a restart adopts them)."""
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._exit_tasks):
            task.cancel()
        await asyncio.gather(*self._exit_tasks, return_exceptions=True)
        for process in self.live.values():
            process.close()
        self.live.clear()

    def poke(self) -> None:
        """Something may be pending (a start, a wake, a resume, a freed slot): look now."""
        self._poked.set()

    # ------------------------------------------------------------------ restart recovery

    async def recover(self) -> None:
        """Adopt the launches an earlier environment process left running; crash the dead."""
        offset = 0
        rows: list[InstanceRow] = []
        while True:
            page = await self._db.list_instances(
                InstanceFilter(
                    statuses=frozenset(ACTIVE),
                    node_id=self.node_id,
                    order=InstanceOrder.CREATED_ASC,
                    limit=1000,
                    offset=offset,
                )
            )
            rows.extend(page.items)
            offset += len(page.items)
            if not page.items or offset >= page.total:
                break
        adopted = crashed = 0
        for row in rows:
            if row.instance_id in self.live:
                continue
            process = None
            if row.pid is not None and row.pid_create_time is not None:
                process = adopt(
                    row.instance_id,
                    row.attempt,
                    row.launch_id if row.status is InstanceStatus.RUNNING else None,
                    row.pid,
                    row.pid_create_time,
                    run_dir=run_dir_of(self.runs_dir, row.instance_id),
                    stderr_tail_bytes=self._settings.stderr_tail_bytes,
                )
            if process is not None:
                if row.status is InstanceStatus.RUNNING:
                    # Its core went away with us: give it a full heartbeat timeout to reconnect.
                    await self._db.touch_heartbeat(row.instance_id)
                self._supervise(process, row)
                adopted += 1
            elif row.status is InstanceStatus.RUNNING:
                await self._handle_exit(row.instance_id, row.attempt, None, self._lost_exit(row.instance_id), None)
                crashed += 1
            # A pending row without a live process is simply launched again by the launch loop.
        if adopted or crashed:
            log.info("restart recovery: adopted %d live instance process(es), %d crashed while we were down", adopted, crashed)

    def _lost_exit(self, instance_id: str) -> ProcessExit:
        tail = read_tail(run_dir_of(self.runs_dir, instance_id) / "stderr.log", self._settings.stderr_tail_bytes)
        return ProcessExit(exit_code=None, stderr_tail=tail)

    # ------------------------------------------------------------------ launching

    async def _launch_loop(self) -> None:
        interval = self._settings.wake_sweep_interval_s
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._poked.wait()
            except TimeoutError:
                pass
            self._poked.clear()
            try:
                await self.launch_pending()
            except Exception:
                log.exception("launching pending instances failed; retrying in %gs", interval)

    def free_slots(self) -> int:
        return self._settings.max_concurrent_instances - len(self.live) - len(self._launching)

    async def launch_pending(self) -> None:
        while (free := self.free_slots()) > 0:
            busy = len(self.live) + len(self._launching) + len(self._settling)
            page = await self._db.list_instances(
                InstanceFilter(
                    statuses=frozenset({InstanceStatus.PENDING}),
                    node_id=self.node_id,
                    order=InstanceOrder.PRIORITY,
                    limit=min(free + busy, 10_000),
                )
            )
            busy_ids = self.live.keys() | self._launching | self._settling
            todo = [r for r in page.items if r.instance_id not in busy_ids]
            if not todo:
                return
            for row in todo[:free]:
                await self._launch(row)

    async def _launch(self, row: InstanceRow) -> None:
        instance_id = row.instance_id
        self._launching.add(instance_id)
        self._launch_seq += 1
        self._recent_launches.append((self._launch_seq, instance_id))
        try:
            try:
                spec = await self._launch_spec(row)
                process = await self.launcher.launch(spec)
            except (OSError, RuntaraError) as error:
                log.error("could not launch %s (attempt %d): %s", instance_id, row.attempt, error)
                kill = self._kills.pop(instance_id, None)
                failed = ProcessExit(exit_code=None, stderr_tail=f"launch failed: {error}")
                await self._handle_exit(instance_id, row.attempt, None, failed, kill)
                return
            self._supervise(process, row)
            # A database blip here must not lose the pid: an unrecorded launch cannot be adopted
            # after an environment restart (it would be judged crashed while it still runs).
            # Launches are sequential, so a late retry never overwrites a newer launch's pid.
            await self._retrying(f"recording the launch of {instance_id}", lambda: self._record_launch(process, row))
        finally:
            self._launching.discard(instance_id)

    async def _record_launch(self, process: InstanceProcess, row: InstanceRow) -> None:
        """The pid and the launched event; a refusal (the row moved on) is only logged, a
        database error raises (``_retrying`` sends it again)."""
        try:
            await self._db.record_process(row.instance_id, process.pid, process.create_time)
            await self._db.append_event(
                row.instance_id,
                NewEvent(EventType.LAUNCHED, subtype=f"attempt {row.attempt}", payload=str(process.pid).encode()),
            )
        except RuntaraError as error:
            log.warning("could not record the launch of %s: %s", row.instance_id, error)

    async def _launch_spec(self, row: InstanceRow) -> LaunchSpec:
        if row.image_id is None:
            raise NotFound(f"the image of instance {row.instance_id!r} was deleted")
        image = await self._db.get_image(row.image_id)
        if image is None:
            raise NotFound(f"image {row.image_id!r} of instance {row.instance_id!r} not found")
        location = self._registry.location(image)
        settings = self._settings
        return LaunchSpec(
            instance_id=row.instance_id,
            attempt=row.attempt,
            launch_id=secrets.token_hex(12),
            token=self._tokens.mint(row.instance_id, row.attempt),
            server_addr=self._core.addr,
            tls_ca=self._core.tls_ca,
            tls_insecure=self._core.tls_insecure,
            image_path=location.path,
            image_entrypoint=location.entrypoint,
            run_dir=run_dir_of(self.runs_dir, row.instance_id),
            env=dict(row.env),
            heartbeat_interval_s=settings.instance_heartbeat_interval_s
            or max(0.1, settings.heartbeat_timeout_ms / 3000),
            limits=ResourceLimits(settings.instance_memory_limit_bytes, settings.instance_cpu_limit_s),
        )

    def _supervise(self, process: InstanceProcess, row: InstanceRow) -> None:
        instance_id = process.instance_id
        self.live[instance_id] = process
        if row.timeout_ms is not None:
            # Running time of earlier launches, plus this one's so far (adopted: since its start).
            running_s = time.monotonic() - process.started_monotonic
            remaining_s = max(0.0, (row.timeout_ms - row.run_time_ms) / 1000 - running_s)
            loop = asyncio.get_running_loop()
            self._timers[instance_id] = loop.call_later(remaining_s, self._timed_out, process)
        if instance_id in self._kills:  # a stop that came while it was being launched
            self._terminate(process, self._kills[instance_id], self._settings.stop_grace_s)
        task = asyncio.create_task(self._await_exit(process), name=f"exit-{instance_id}")
        self._exit_tasks.add(task)
        task.add_done_callback(self._exit_tasks.discard)

    async def _await_exit(self, process: InstanceProcess) -> None:
        exit = await process.exited
        instance_id = process.instance_id
        if self.live.get(instance_id) is process:
            del self.live[instance_id]
        for timers in (self._timers, self._kill_timers):
            timer = timers.pop(instance_id, None)
            if timer is not None:
                timer.cancel()
        kill = self._kills.pop(instance_id, None)
        self._settling.add(instance_id)  # not relaunched before its exit is judged
        try:
            await self._retrying(
                f"recording the exit of {instance_id}", lambda: self._db.record_exit_metrics(instance_id, exit)
            )
            await self._retrying(
                f"handling the exit of {instance_id}",
                lambda: self._handle_exit(instance_id, process.attempt, process.launch_id, exit, kill),
            )
        finally:
            self._settling.discard(instance_id)
            self.poke()  # a slot is free

    @staticmethod
    async def _retrying(what: str, action: Callable[[], Awaitable[object]]) -> None:
        """Until it succeeds (a database blip must not strand an instance), with backoff."""
        delay = 0.2
        while True:
            try:
                await action()
                return
            except Exception:
                log.exception("%s failed; retrying in %.1fs", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _handle_exit(
        self, instance_id: str, attempt: int, launch_id: str | None, exit: ProcessExit, kill: KillReason | None
    ) -> None:
        row = await self._db.get_instance(instance_id)
        now = self._clock()
        decision = decide_exit(
            row,
            attempt,
            launch_id,
            exit,
            kill,
            now_ms=now,
            backoff_initial_ms=self._settings.crash_backoff_initial_ms,
            backoff_max_ms=self._settings.crash_backoff_max_ms,
        )
        if decision.verdict is Verdict.NOTHING or row is None:
            if row is not None and row.status is InstanceStatus.SUSPENDED:
                await self._cancel_if_asked(row, stopped=kill is KillReason.STOPPED)
            return
        payload = crash_payload(attempt, exit, kill)
        try:
            if decision.verdict is Verdict.RELAUNCH:
                assert decision.relaunch_at_ms is not None
                await self._db.transition(
                    instance_id,
                    ACTIVE,
                    InstanceStatus.SUSPENDED,
                    reason=decision.reason,
                    update=InstanceUpdate(attempt=attempt + 1, wake_at_ms=decision.relaunch_at_ms),
                    event=NewEvent(EventType.CRASHED, subtype=kill.value if kill else "crashed", payload=payload),
                    attempt=attempt,
                )
                log.warning(
                    "instance %s attempt %d crashed; relaunching in %d ms",
                    instance_id,
                    attempt,
                    decision.relaunch_at_ms - now,
                )
                self._on_relaunch_scheduled(decision.relaunch_at_ms)
            elif decision.verdict is Verdict.FAIL:
                event_type = EventType.TIMEOUT if kill is KillReason.TIMEOUT else EventType.CRASHED
                await self._db.transition(
                    instance_id,
                    ACTIVE,
                    InstanceStatus.FAILED,
                    reason=decision.reason,
                    update=InstanceUpdate(error=decision.error),
                    event=NewEvent(event_type, subtype=decision.reason.value if decision.reason else None, payload=payload),
                    attempt=attempt,
                )
                log.warning("instance %s failed: %s", instance_id, decision.error)
            elif decision.verdict is Verdict.CANCEL:
                await self._db.transition(
                    instance_id,
                    ACTIVE,
                    InstanceStatus.CANCELLED,
                    reason=decision.reason,
                    event=NewEvent(EventType.CANCELLED, subtype="stopped"),
                    attempt=attempt,
                )
        except InvalidState as error:
            log.info("instance %s moved on before its exit was handled: %s", instance_id, error)

    async def _cancel_if_asked(self, row: InstanceRow, *, stopped: bool = False) -> None:
        """A cancel that reached the slot, or a stop that reached the process (``stopped``), as
        the launch hibernated or paused: nobody is left to act on it, so it takes effect here.
        (Without this a stop whose SIGTERM met a launch that had just hibernated was lost: the
        instance slept on and completed, or waited for its signal forever.)"""
        pending = await self._db.pending_signal(row.instance_id)
        cancel = pending is not None and pending.signal_type is SignalType.CANCEL
        if not (cancel or stopped):
            return
        reason = TerminationReason.STOPPED if stopped else TerminationReason.CANCELLED
        try:
            await self._db.transition(
                row.instance_id,
                {InstanceStatus.SUSPENDED},
                InstanceStatus.CANCELLED,
                reason=reason,
                event=NewEvent(EventType.CANCELLED, subtype=reason.value),
            )
            if cancel:
                await self._db.ack_signal(row.instance_id, SignalType.CANCEL)
        except InvalidState:
            pass

    # ------------------------------------------------------------------ ending launches

    def stop_launch(self, instance_id: str, grace_s: float, reason: KillReason = KillReason.STOPPED) -> bool:
        """SIGTERM (the SDK turns it into cancellation), SIGKILL after ``grace_s``.

        True if a launch of ``instance_id`` is live or being launched here (it will be stopped).
        """
        process = self.live.get(instance_id)
        if process is None:
            if instance_id in self._launching:
                self._kills[instance_id] = reason
                return True
            return False
        self._terminate(process, reason, grace_s)
        return True

    def _terminate(self, process: InstanceProcess, reason: KillReason, grace_s: float) -> None:
        self._kills.setdefault(process.instance_id, reason)
        process.signal_group(signal.SIGTERM)
        if process.instance_id not in self._kill_timers:
            self._kill_timers[process.instance_id] = asyncio.get_running_loop().call_later(
                grace_s, self._kill_if_alive, process
            )

    @staticmethod
    def _kill_if_alive(process: InstanceProcess) -> None:
        if process.alive:
            log.warning("instance %s did not stop within its grace period: SIGKILL", process.instance_id)
            process.signal_group(signal.SIGKILL)

    def _timed_out(self, process: InstanceProcess) -> None:
        self._timers.pop(process.instance_id, None)
        if process.alive:
            log.warning("instance %s ran out of its execution timeout: stopping it", process.instance_id)
            self._terminate(process, KillReason.TIMEOUT, self._settings.stop_grace_s)

    # ------------------------------------------------------------------ sweeps

    async def _sweep_loop(self) -> None:
        interval = self._settings.supervisor_sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("supervisor sweep failed; retrying in %gs", interval)

    async def sweep(self) -> None:
        for process in list(self.live.values()):
            if process.adopted:
                process.sample()
        reap_orphans(self.live_pids() | self.launcher.own_pids(), forks_in_flight=self.launcher.forks_in_flight > 0)
        await self._kill_unregistered()
        cutoff = self._clock() - self._settings.heartbeat_timeout_ms
        for row in await self._db.find_stale_running(cutoff):
            process = self.live.get(row.instance_id)
            if process is not None:
                if row.instance_id not in self._kills:
                    log.warning("instance %s is silent past the heartbeat timeout: killing it", row.instance_id)
                    self._kills[row.instance_id] = KillReason.HEARTBEAT_TIMEOUT
                    process.signal_group(signal.SIGKILL)
            elif row.instance_id not in self._launching and not self._owned_elsewhere(row):
                await self._handle_exit(
                    row.instance_id, row.attempt, None, self._lost_exit(row.instance_id), KillReason.HEARTBEAT_TIMEOUT
                )

    async def _kill_unregistered(self) -> None:
        """A launch that has not registered within the heartbeat timeout (an image whose import
        hangs, say) would hold its slot forever: it is killed and handled as a crash."""
        deadline_s = self._settings.heartbeat_timeout_ms / 1000
        now = time.monotonic()
        overdue = {
            process.instance_id: process
            for process in self.live.values()
            if now - process.started_monotonic > deadline_s and process.instance_id not in self._kills
        }
        if not overdue:
            return
        page = await self._db.list_instances(
            InstanceFilter(statuses=frozenset({InstanceStatus.PENDING}), node_id=self.node_id, limit=10_000)
        )
        for row in page.items:
            process = overdue.get(row.instance_id)
            if process is not None and row.attempt == process.attempt:
                log.warning("instance %s did not register within %gs of its launch: killing it", row.instance_id, deadline_s)
                self._kills[row.instance_id] = KillReason.HEARTBEAT_TIMEOUT
                process.signal_group(signal.SIGKILL)

    def live_pids(self) -> set[int]:
        return {process.pid for process in self.live.values()}

    # ------------------------------------------------------------------ run directories in use

    def busy_instance_ids(self) -> set[str]:
        """Instances with a launch here that is live, being launched, or whose exit is being
        handled: their run directories are in use."""
        return set(self.live) | self._launching | self._settling

    def launch_mark(self) -> int:
        """A point in the sequence of launches, for ``launched_since``."""
        return self._launch_seq

    def launched_since(self, mark: int) -> set[str] | None:
        """Instances launched after ``mark``; None if that is further back than remembered.

        The run-directory retention reads instance rows, then deletes: an instance launched in
        between (a failed one resumed) may have a fresh run directory the rows do not show.
        """
        if mark == self._launch_seq:
            return set()
        if not self._recent_launches or self._recent_launches[0][0] > mark + 1:
            return None
        found: set[str] = set()
        for seq, instance_id in reversed(self._recent_launches):
            if seq <= mark:
                break
            found.add(instance_id)
        return found

    def _owned_elsewhere(self, row: InstanceRow) -> bool:
        """Launched by another environment node sharing the database: its supervisor's business."""
        return row.node_id is not None and row.node_id != self.node_id
