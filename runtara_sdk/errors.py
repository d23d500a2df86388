"""Exceptions a workflow author sees, and the one the SDK uses to end a launch."""

from __future__ import annotations


class Cancelled(BaseException):
    """The instance was cancelled (a cancel signal, or SIGTERM from the environment).

    Raised at the workflow's next SDK await; ``finally`` blocks and ``except Cancelled`` run and
    may still call steps (for cleanup). A ``BaseException`` like ``asyncio.CancelledError``, so a
    broad ``except Exception`` does not swallow it by accident.
    """


class SignalTimeout(TimeoutError):
    """``ctx.wait_signal`` saw no signal before its timeout (durably: a replay times out too)."""


class NonRetryableError(Exception):
    """Raise (or subclass) inside a step to fail it at once, without retries."""


class NonDeterminismError(RuntimeError):
    """A replay asked for a different durable call than the history has at that position.

    The workflow code changed between launches (or its call order depends on something other
    than its input and its steps' results). The instance fails rather than mix results.
    """


class StepError(Exception):
    """A replayed step failure whose original exception type could not be rebuilt."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class StepTimeout(TimeoutError):
    """One try of a step ran longer than its ``timeout_s`` (retried like any other failure)."""


class SerializationError(TypeError):
    """A value cannot be stored (a step result, the workflow output, an event payload)."""


class ImageLoadError(Exception):
    """The image or its entrypoint cannot be loaded: the instance fails with this message."""


class LaunchEnded(Exception):
    """This launch may no longer act for its instance (hibernated, paused, finished, replaced,
    or the core is unreachable): the process must exit. Internal to the SDK."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
