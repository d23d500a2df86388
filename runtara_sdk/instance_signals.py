"""What core asked of this launch (cancel, pause) and which custom signals arrived.

Signals reach the SDK three ways: pushed by core, attached to responses (register, checkpoint,
sleep, wait_signal) and polled by the heartbeat. All three land here; waiters re-check after
``changed`` fires.
"""

from __future__ import annotations

import asyncio

from runtara_core.wire.messages import CustomSignalPush, PendingSignal, SignalPush


class InstanceSignals:
    def __init__(self) -> None:
        self.cancel_requested = False
        self.cancel_source = ""
        self.pause_requested = False
        self._changed = asyncio.Event()
        self._custom: dict[str, asyncio.Event] = {}

    def note(self, pending: PendingSignal | SignalPush | None) -> None:
        """The instance-wide slot as core reported it (cancel outranks pause)."""
        if pending is None:
            return
        if pending.signal_type == "cancel":
            self.request_cancel("cancel signal")
        elif pending.signal_type == "pause" and not self.cancel_requested and not self.pause_requested:
            self.pause_requested = True
            self._fire()

    def replace(self, pending: PendingSignal | None) -> None:
        """The slot as just polled, after an acknowledgement was refused (it changed meanwhile)."""
        self.pause_requested = False
        self.note(pending)
        self._fire()

    def request_cancel(self, source: str) -> None:
        if not self.cancel_requested:
            self.cancel_requested = True
            self.cancel_source = source
            self.pause_requested = False
            self._fire()

    def custom_arrived(self, push: CustomSignalPush) -> None:
        self.custom_event(push.name).set()

    def custom_event(self, name: str) -> asyncio.Event:
        return self._custom.setdefault(name, asyncio.Event())

    def on_push(self, push: SignalPush | CustomSignalPush) -> None:
        if isinstance(push, CustomSignalPush):
            self.custom_arrived(push)
        else:
            self.note(push)

    def changed(self) -> asyncio.Event:
        """An event set (and replaced) on every new request; wait on it, then re-check."""
        return self._changed

    def _fire(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
