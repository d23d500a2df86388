"""Which durable work is in flight, so that a launch hibernates or pauses only when idle.

A step body that runs while the process exits would run again after the relaunch; so the
SDK lets core hibernate the instance only when no step is running (``busy`` is zero) and the
wait asking for it is the one that ends first, and acknowledges a pause only once the running
steps have saved their results. Pure bookkeeping around asyncio events; no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from runtara_sdk.history import CallKind


@dataclass(eq=False)
class Wait:
    """An in-process sleep or signal wait of one workflow branch."""

    kind: CallKind
    deadline_ms: int | None = None
    offered: int = -1
    """The generation in which this wait last asked core to hibernate."""
    may_hibernate: asyncio.Event = field(default_factory=asyncio.Event)


class Activity:
    def __init__(self) -> None:
        self.busy = 0
        self.waits: list[Wait] = []
        self.generation = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._hibernating = asyncio.Lock()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """A step (or another op that must finish before the process may exit) is in flight."""
        async with self._hibernating:  # never start work while core may be suspending us
            self.busy += 1
            if self.busy == 1:
                self.generation += 1
                self._idle.clear()
        try:
            yield
        finally:
            self.busy -= 1
            if self.busy == 0:
                self._idle.set()
                self._offer()

    async def idle(self) -> None:
        """Until no step is running (and no hibernation is being asked for)."""
        while True:
            await self._idle.wait()
            async with self._hibernating:
                if self.busy == 0:
                    return

    @contextmanager
    def waiting(self, wait: Wait) -> Iterator[Wait]:
        self.waits.append(wait)
        self.generation += 1
        try:
            yield wait
        finally:
            self.waits.remove(wait)
            self.generation += 1
            self._offer()

    def may_offer(self, wait: Wait) -> bool:
        """Whether ``wait`` could ask core to hibernate now (``claim_offer`` decides)."""
        return not self.busy and self._chosen() is wait and wait.offered != self.generation

    def claim_offer(self, wait: Wait) -> bool:
        """Whether ``wait`` may ask core to hibernate now; marks it as having asked."""
        if not self.may_offer(wait):
            return False
        wait.offered = self.generation
        wait.may_hibernate.clear()
        return True

    @asynccontextmanager
    async def hibernation_attempt(self) -> AsyncIterator[None]:
        """While core decides whether to hibernate, no new step starts."""
        async with self._hibernating:
            yield

    def deadline_changed(self) -> None:
        self._offer()

    def _chosen(self) -> Wait | None:
        """The one wait that may hibernate: the only one, or the earliest of several sleeps
        (signal waits hibernate on their own name only, so two of them stay in-process)."""
        if not self.waits:
            return None
        if len(self.waits) == 1:
            return self.waits[0]
        if all(w.kind is CallKind.SLEEP and w.deadline_ms is not None for w in self.waits):
            return min(self.waits, key=lambda w: w.deadline_ms or 0)
        return None

    def _offer(self) -> None:
        chosen = self._chosen()
        if self.busy == 0 and chosen is not None and chosen.offered != self.generation:
            chosen.may_hibernate.set()
