"""In-process news that a signal was stored for an instance, so a connected instance gets a push.

Whoever stores a signal (the environment embedding a core, or the PostgreSQL listener relaying
a NOTIFY from another process) calls ``notify``; the core's push registry subscribes. It only
makes delivery faster: the instance still finds every signal through checkpoint and poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SignalStored:
    instance_id: str
    kind: Literal["signal", "custom"]
    """``signal``: the instance-wide slot (cancel, pause, resume); ``custom``: a named queue."""
    name: str | None = None
    """The custom signal's name."""
    signal_id: int | None = None
    """The custom signal's id, so one heard twice (in-process and via NOTIFY) is pushed once."""


Subscriber = Callable[[SignalStored], None]


class SignalNotifier:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` for every notification (synchronously); returns the unsubscribe."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber) if subscriber in self._subscribers else None

    def notify(self, event: SignalStored) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("signal subscriber failed for %s", event)

    def signal_stored(self, instance_id: str) -> None:
        self.notify(SignalStored(instance_id, "signal"))

    def custom_signal_stored(self, instance_id: str, name: str, signal_id: int | None = None) -> None:
        self.notify(SignalStored(instance_id, "custom", name, signal_id))
