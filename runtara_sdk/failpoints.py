"""Failpoints: named places in a launch where a chaos test can make the process SIGKILL itself.

A kill from outside lands at a random moment, which rarely hits the narrow windows that matter
most: between a step's body and its checkpoint, just after the core recorded a hibernation,
between consuming a signal and returning it. A failpoint lands there every time, so a chaos
trial can say which window it tested. Off unless ``RUNTARA_FAILPOINTS`` names one (then each
``reach`` is a dictionary lookup); it is set per start through the start's ``env``.

Spec: comma-separated ``point#hit@launch``: die the ``hit``-th time ``point`` is reached in launch
attempt ``launch``. ``step.after_body#2@1`` kills the first launch between the second step's body
and its checkpoint. The kill is SIGKILL, as a power cut or the OOM killer would be: no finally,
no flush, no goodbye to the core.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

POINTS = frozenset(
    {
        "step.after_body",  # the body returned; its checkpoint is not sent yet
        "step.after_checkpoint",  # the checkpoint is saved; the workflow has not seen the result
        "sleep.started",  # an in-process sleep began (the core stored wake_at)
        "signal.waiting",  # an in-process signal wait began (nothing queued yet)
        "signal.consumed",  # the core consumed the signal and saved it; not returned yet
        "hibernate.recorded",  # the core marked the instance suspended; the process has not exited
    }
)


class FailpointSpecError(ValueError):
    """RUNTARA_FAILPOINTS does not parse; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Failpoint:
    point: str
    hit: int
    launch: int


def parse_failpoints(spec: str) -> tuple[Failpoint, ...]:
    """The failpoints a spec names (pure; raises FailpointSpecError)."""
    found = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, rest = part.partition("#")
        hit, _, launch = rest.partition("@")
        if point not in POINTS:
            raise FailpointSpecError(f"unknown failpoint {point!r} in {part!r}; known: {', '.join(sorted(POINTS))}")
        if not (hit.isdigit() and launch.isdigit() and int(hit) >= 1 and int(launch) >= 1):
            raise FailpointSpecError(f"failpoint {part!r} must look like point#HIT@LAUNCH with HIT, LAUNCH >= 1")
        found.append(Failpoint(point, int(hit), int(launch)))
    return tuple(found)


@dataclass
class Failpoints:
    """The failpoints armed for this launch, and how often each point was reached."""

    armed: dict[str, frozenset[int]] = field(default_factory=dict)
    reached: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_launch(cls, spec: str, launch_attempt: int) -> Failpoints:
        hits: dict[str, set[int]] = {}
        for failpoint in parse_failpoints(spec):
            if failpoint.launch == launch_attempt:
                hits.setdefault(failpoint.point, set()).add(failpoint.hit)
        return cls({point: frozenset(h) for point, h in hits.items()})

    def should_die(self, point: str) -> bool:
        """Count one arrival at ``point``; True when this arrival is armed (pure)."""
        hits = self.armed.get(point)
        if hits is None:
            return False
        count = self.reached[point] = self.reached.get(point, 0) + 1
        return count in hits

    def reach(self, point: str) -> None:
        if self.should_die(point):
            # Said first, so the run's stderr.log tells this death from a real crash.
            log.warning("failpoint %s#%d: SIGKILL", point, self.reached[point])
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
