"""The wake scheduler: hibernating instances go back to pending when their time comes.

It keeps the nearest wake time in memory and sleeps until then (a timer, not a fixed polling
period); every ``RUNTARA_WAKE_SWEEP_INTERVAL_S`` it re-reads the database anyway, to see wake
times written by other processes and signal waiters whose signal slipped in. Claiming is one
atomic conditional update per batch (``claim_due_wakeups``), so a wake is never lost or doubled,
even with several schedulers on one PostgreSQL. What it claims is pending: the supervisor
launches it.

Instances are claimed ``RUNTARA_WAKE_LEAD_MS`` before their wake time: a fresh process needs a
few hundred milliseconds to start, so it is launched early and the SDK sleeps the remainder in
process (a relaunch never finishes a sleep early: the stored ``wake_at`` decides).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from runtara_core.persistence import Persistence
from runtara_core.persistence.rules import Clock

log = logging.getLogger(__name__)

CLAIM_BATCH = 100


class WakeScheduler:
    def __init__(
        self,
        persistence: Persistence,
        *,
        clock: Clock,
        lead_ms: int,
        sweep_interval_s: float,
        on_claimed: Callable[[int], None],
    ) -> None:
        self._db = persistence
        self._clock = clock
        self._lead_ms = lead_ms
        self._sweep_s = sweep_interval_s
        self._on_claimed = on_claimed
        self._nearest: int | None = None
        self._noted: int | None = None
        """Wake times noted since the last database read began (that read may predate them)."""
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.claimed = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="wake-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def note_wake(self, wake_at_ms: int) -> None:
        """A wake time was just written here: wake earlier if it is the nearest."""
        self._noted = _earliest(self._noted, wake_at_ms)
        if self._nearest is None or wake_at_ms < self._nearest:
            self._nearest = wake_at_ms
            self._changed.set()

    async def _read_nearest(self) -> None:
        noted, self._noted = self._noted, None
        from_db = await self._db.next_wake_at()
        self._nearest = _earliest(_earliest(from_db, noted), self._noted)

    async def _run(self) -> None:
        next_sweep = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() >= next_sweep:
                    await self._sweep_signal_waiters()
                    await self._read_nearest()
                    next_sweep = loop.time() + self._sweep_s
                await self._claim_due()
            except Exception:
                log.exception("wake scheduler pass failed; retrying in %gs", self._sweep_s)
                self._nearest = None
                next_sweep = loop.time() + self._sweep_s
            wait_s = next_sweep - loop.time()
            if self._nearest is not None:
                wait_s = min(wait_s, (self._claimable_at(self._nearest) - self._clock()) / 1000)
            if wait_s > 0:
                try:
                    async with asyncio.timeout(wait_s):
                        await self._changed.wait()
                except TimeoutError:
                    pass
            self._changed.clear()  # before the next reads: a note during them wakes us again

    def _claimable_at(self, nearest: int) -> int:
        """When the nearest wake can be claimed: ``lead_ms`` early for a hibernated instance.
        One still inside the lead window after a claim pass took everything claimable is a
        crash backoff, which is never cut short: wait for its end."""
        early = nearest - self._lead_ms
        return early if early > self._clock() else nearest

    async def _claim_due(self) -> None:
        if self._nearest is None or self._nearest - self._lead_ms > self._clock():
            return
        while True:
            claimed = await self._db.claim_due_wakeups(self._clock(), CLAIM_BATCH, lead_ms=self._lead_ms)
            if claimed:
                self.claimed += len(claimed)
                log.debug("woke %d hibernating instance(s)", len(claimed))
                self._on_claimed(len(claimed))
            if len(claimed) < CLAIM_BATCH:
                break
        await self._read_nearest()

    async def _sweep_signal_waiters(self) -> None:
        claimed = await self._db.claim_signal_waiters(None, CLAIM_BATCH)
        if claimed:
            self.claimed += len(claimed)
            self._on_claimed(len(claimed))


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
