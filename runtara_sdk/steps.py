"""``@step``: a function whose result is saved once and returned on every replay.

Also what a running step body may ask (``current_step()``), and how a step's outcome, a value
or a failure, is stored: ``["ok", value]`` or ``["err", {type, message, args, traceback}]``.
A failure is stored too, so a replay raises it again instead of running the body again.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from runtara_sdk import serialization
from runtara_sdk.branches import not_branching_while_set
from runtara_sdk.errors import SerializationError, StepError
from runtara_sdk.retry_policy import RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class StepOptions:
    name: str | None = None
    policy: RetryPolicy = RetryPolicy()
    timeout_s: float | None = None
    """Per try; an async body is cancelled, a sync one is abandoned in its thread."""
    cancellable: bool = False
    """Let a cancel interrupt the running body (async bodies only); by default it finishes."""


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a running step body may know about itself."""

    step_id: str
    name: str
    instance_id: str
    attempt: int
    """1 for the first try of this step in this launch, 2 for its first retry, ..."""
    launch_attempt: int

    @property
    def idempotency_key(self) -> str:
        """Stable across relaunches: pass it to external services so a re-run is not a repeat."""
        return f"{self.instance_id}/{self.step_id}"


_current: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar("runtara_step", default=None)
not_branching_while_set(_current)  # tasks a step body starts are part of the step


def current_step() -> StepInfo | None:
    """The step whose body is running here, or None outside step bodies."""
    return _current.get()


def enter_step(info: StepInfo) -> contextvars.Token[StepInfo | None]:
    return _current.set(info)


def leave_step(token: contextvars.Token[StepInfo | None]) -> None:
    _current.reset(token)


STEP_OPTIONS = "__runtara_step__"


@overload
def step(fn: Callable[P, Any], /) -> Callable[P, Any]: ...
@overload
def step(
    *,
    name: str | None = None,
    retries: int = 0,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    jitter: float = 0.5,
    timeout_s: float | None = None,
    non_retryable: tuple[type[BaseException], ...] = (),
    cancellable: bool = False,
) -> Callable[[Callable[P, Any]], Callable[P, Any]]: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    jitter: float = 0.5,
    timeout_s: float | None = None,
    non_retryable: tuple[type[BaseException], ...] = (),
    cancellable: bool = False,
) -> Any:
    """Make ``fn`` a durable step. Calling it returns an awaitable (sync functions too).

    Inside a workflow the call gets the next step id; outside one (a unit test, a plain
    script) it simply runs the function. A step called inside another step's body runs as a
    plain call: only the outer step is saved.
    """
    options = StepOptions(
        name=name,
        policy=RetryPolicy(retries, backoff_s, max_backoff_s, jitter, tuple(non_retryable)),
        timeout_s=timeout_s,
        cancellable=cancellable,
    )

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        if cancellable and not inspect.iscoroutinefunction(function):
            raise TypeError(f"@step(cancellable=True) needs an async function; {function.__qualname__} is sync")

        @functools.wraps(function)
        async def durable(*args: Any, **kwargs: Any) -> Any:
            from runtara_sdk.context import current_context

            context = current_context()
            if context is None or current_step() is not None:
                return await call_body(function, args, kwargs)
            return await context.run_step(options.name or function.__name__, function, args, kwargs, options)

        setattr(durable, STEP_OPTIONS, (function, options))
        return durable

    return decorate(fn) if fn is not None else decorate


def unwrap_step(fn: Callable[..., Any]) -> tuple[Callable[..., Any], StepOptions]:
    """The plain function and options behind a ``@step`` (defaults for a plain function)."""
    found = getattr(fn, STEP_OPTIONS, None)
    return found if found is not None else (fn, StepOptions())


async def call_body(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a step body: async on the loop, sync in a worker thread (with this context)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


# ---------------------------------------------------------------- stored outcomes


def encode_success(value: Any, step_name: str) -> bytes:
    return serialization.dumps(["ok", value], f"the result of step {step_name!r}")


def encode_failure(error: BaseException) -> bytes:
    cls = type(error)
    args: list[Any] | None = list(error.args)
    try:
        serialization.dumps(args, "exception arguments")
    except SerializationError:
        args = None
    record = {
        "type": serialization.class_path(cls),
        "message": str(error),
        "args": args,
        "traceback": "".join(traceback.format_exception(error)),
    }
    return serialization.dumps(["err", record], "a step failure")


def decode_outcome(state: bytes, step_id: str) -> Any:
    """The stored result, or raise the stored failure."""
    body = serialization.loads(state)
    if not (isinstance(body, list) and len(body) == 2 and body[0] in ("ok", "err")):
        raise SerializationError(f"checkpoint {step_id!r} does not hold a step outcome")
    if body[0] == "ok":
        return body[1]
    raise rebuild_failure(body[1], step_id)


def rebuild_failure(record: dict[str, Any], step_id: str) -> BaseException:
    """The recorded exception as its own type when it can be rebuilt, else ``StepError``."""
    type_path, message = str(record.get("type", "")), str(record.get("message", ""))
    error: BaseException | None = None
    args = record.get("args")
    if args is not None:
        try:
            target = serialization.resolve_class(type_path)
            if issubclass(target, Exception):
                error = target(*args)
                if str(error) != message:
                    error = None  # its __init__ reshapes its args: a rebuild would be a different error
        except Exception:
            error = None
    if error is None:
        error = StepError(type_path.replace(":", "."), message)
    error.add_note(f"(recorded when step {step_id!r} failed in an earlier launch)")
    return error
