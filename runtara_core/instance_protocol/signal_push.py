"""Pushes signals to the instances connected to this core, as soon as they are stored.

Subscribed to the ``SignalNotifier`` (and, on PostgreSQL, to NOTIFY from other processes).
Best effort by design: the instance also finds every signal through checkpoint and
poll_signals, so a push that is lost, or a notification that never came, costs only latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from runtara_core.persistence import Persistence
from runtara_core.signal_notifier import SignalStored
from runtara_core.transport.quic_server import Session
from runtara_core.wire.messages import CustomSignalPush, SignalPush

log = logging.getLogger(__name__)


class ConnectedInstances:
    def __init__(self, persistence: Persistence) -> None:
        self._persistence = persistence
        self._sessions: dict[str, set[Session]] = {}
        self._last_pushed: dict[str, tuple[str, int]] = {}
        self._pushed_custom: dict[str, deque[int]] = {}
        self._dirty: set[str] = set()
        self._refreshers: dict[str, asyncio.Task[None]] = {}

    def bind(self, session: Session, instance_id: str) -> None:
        sessions = self._sessions.setdefault(instance_id, set())
        if session not in sessions:
            sessions.add(session)
            session.on_close(lambda s: self._unbind(s, instance_id))

    def _unbind(self, session: Session, instance_id: str) -> None:
        sessions = self._sessions.get(instance_id)
        if sessions is None:
            return
        sessions.discard(session)
        if not sessions:
            del self._sessions[instance_id]
            self._last_pushed.pop(instance_id, None)
            self._pushed_custom.pop(instance_id, None)

    @property
    def connected_count(self) -> int:
        return len(self._sessions)

    def signal_stored(self, event: SignalStored) -> None:
        """Subscriber of the notifier; runs on the event loop and never blocks."""
        if event.instance_id not in self._sessions:
            return  # connected elsewhere, or not at all: it will poll
        if event.kind == "custom":
            if event.name is not None and self._first_hearing(event.instance_id, event.signal_id):
                self._send(event.instance_id, CustomSignalPush(name=event.name))
            return
        # The slot's content must be read: coalesce bursts into one read per instance.
        self._dirty.add(event.instance_id)
        if event.instance_id not in self._refreshers:
            self._refreshers[event.instance_id] = asyncio.create_task(self._push_slot(event.instance_id))

    def _first_hearing(self, instance_id: str, signal_id: int | None) -> bool:
        """False for a custom signal already pushed (heard in-process and through NOTIFY)."""
        if signal_id is None:
            return True
        seen = self._pushed_custom.setdefault(instance_id, deque(maxlen=64))
        if signal_id in seen:
            return False
        seen.append(signal_id)
        return True

    async def _push_slot(self, instance_id: str) -> None:
        try:
            while instance_id in self._dirty:
                self._dirty.discard(instance_id)
                pending = await self._persistence.pending_signal(instance_id)
                if pending is None:
                    continue
                key = (pending.signal_type.value, pending.created_at_ms)
                if self._last_pushed.get(instance_id) == key:
                    continue  # the same signal, heard twice (in-process and NOTIFY)
                push = SignalPush(signal_type=pending.signal_type.value, payload=pending.payload)
                if self._send(instance_id, push):
                    self._last_pushed[instance_id] = key
        except Exception:
            log.exception("could not read the pending signal of %r to push it", instance_id)
        finally:
            # Here, not in a done callback: a notification arriving between the loop's last
            # check and a callback run would find a finished task registered and be dropped.
            self._refreshers.pop(instance_id, None)
            self._dirty.discard(instance_id)

    def _send(self, instance_id: str, message: SignalPush | CustomSignalPush) -> bool:
        sent = False
        for session in list(self._sessions.get(instance_id, ())):
            sent = session.push(message) or sent
        return sent

    async def close(self) -> None:
        tasks = list(self._refreshers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sessions.clear()
