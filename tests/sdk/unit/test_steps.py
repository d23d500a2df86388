"""Stored step outcomes, and ``@step`` outside a workflow."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import pytest

from runtara_sdk.errors import SerializationError, StepError
from runtara_sdk.serialization import dumps
from runtara_sdk.steps import (
    STEP_OPTIONS,
    StepInfo,
    current_step,
    decode_outcome,
    encode_failure,
    encode_success,
    enter_step,
    leave_step,
    step,
    unwrap_step,
)

STEP_ID = "4:step:charge"


@dataclasses.dataclass
class Receipt:
    amount: int
    currency: str


class PaymentDeclined(Exception):
    """A module-level exception with plain args: rebuildable."""


class WithCode(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class NeedsKeyword(Exception):
    """Its args cannot rebuild it: ``__init__`` wants a keyword-only argument."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def raised(error: BaseException) -> BaseException:
    """The error with a traceback, as a failing step body would give it."""
    try:
        raise error
    except BaseException as caught:
        return caught


def replay(error: BaseException) -> BaseException:
    with pytest.raises(BaseException) as caught:
        decode_outcome(encode_failure(raised(error)), STEP_ID)
    return caught.value


# ---------------------------------------------------------------- stored outcomes


@pytest.mark.parametrize("value", [None, 0, "x", [1, {"a": b"\x00"}], {"k": [None, 2.5]}])
def test_success_round_trip(value: Any) -> None:
    assert decode_outcome(encode_success(value, "charge"), STEP_ID) == value


def test_success_round_trip_keeps_dataclass_type() -> None:
    back = decode_outcome(encode_success(Receipt(5, "EUR"), "charge"), STEP_ID)
    assert type(back) is Receipt and back == Receipt(5, "EUR")


def test_unserializable_success_names_the_step() -> None:
    with pytest.raises(SerializationError, match="the result of step 'charge'"):
        encode_success(object(), "charge")


def test_builtin_failure_is_raised_again_as_itself() -> None:
    error = replay(ValueError("x"))
    assert type(error) is ValueError
    assert error.args == ("x",)


def test_custom_failure_is_raised_again_as_itself() -> None:
    error = replay(PaymentDeclined("card 42", 3))
    assert type(error) is PaymentDeclined
    assert error.args == ("card 42", 3)


def test_failure_with_custom_init_is_rebuilt_from_its_args() -> None:
    error = replay(WithCode(402, "declined"))
    assert type(error) is WithCode
    assert (error.code, error.reason) == (402, "declined")


class Reworded(Exception):
    """An exception whose __init__ rewrites its message: its args do not rebuild it."""

    def __init__(self, code: int | str) -> None:
        super().__init__(f"failed with {code}")
        self.code = code


def test_failure_whose_init_reshapes_its_args_becomes_step_error_not_a_different_error() -> None:
    error = replay(Reworded(5))
    assert isinstance(error, StepError)
    assert error.message == "failed with 5" and error.type_name.endswith("Reworded")


def test_failure_note_names_the_step() -> None:
    error = replay(ValueError("x"))
    assert any(STEP_ID in note for note in error.__notes__)


def test_failure_with_unserializable_args_becomes_step_error() -> None:
    error = replay(PaymentDeclined(object()))
    assert type(error) is StepError
    assert isinstance(error, StepError)
    assert error.type_name == f"{__name__}.PaymentDeclined"
    assert error.message.startswith("<object object at")
    assert any(STEP_ID in note for note in error.__notes__)


def test_failure_whose_class_cannot_be_rebuilt_becomes_step_error() -> None:
    error = replay(NeedsKeyword("teapot", status=418))
    assert type(error) is StepError
    assert isinstance(error, StepError)
    assert error.type_name == f"{__name__}.NeedsKeyword"
    assert error.message == "teapot"
    assert str(error) == f"{__name__}.NeedsKeyword: teapot"


def test_failure_of_a_local_class_becomes_step_error() -> None:
    class LocalError(Exception):
        pass

    error = replay(LocalError("gone"))
    assert type(error) is StepError
    assert isinstance(error, StepError)
    assert "LocalError" in error.type_name
    assert error.message == "gone"


def test_failure_record_whose_type_vanished_becomes_step_error() -> None:
    record = {"type": "no_such_module_rt:Gone", "message": "m", "args": ["m"], "traceback": ""}
    with pytest.raises(StepError) as caught:
        decode_outcome(dumps(["err", record], "x"), STEP_ID)
    assert caught.value.type_name == "no_such_module_rt.Gone"
    assert caught.value.message == "m"


def test_stored_traceback_mentions_the_raising_code() -> None:
    from runtara_sdk.serialization import loads

    kind, record = loads(encode_failure(raised(ValueError("boom"))))
    assert kind == "err"
    assert record["type"] == "builtins:ValueError"
    assert record["message"] == "boom"
    assert record["args"] == ["boom"]
    assert "ValueError: boom" in record["traceback"]
    assert "in raised" in record["traceback"]


@pytest.mark.parametrize("state", [dumps({"ok": 1}, "x"), dumps(["maybe", 1], "x"), dumps(["ok"], "x"), dumps(3, "x")])
def test_state_that_is_not_an_outcome(state: bytes) -> None:
    with pytest.raises(SerializationError, match=STEP_ID):
        decode_outcome(state, STEP_ID)


# ---------------------------------------------------------------- @step outside a workflow


async def test_async_step_outside_workflow_runs_the_function() -> None:
    calls: list[tuple[int, int]] = []

    @step
    async def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    assert await add(2, b=3) == 5
    assert await add(2, b=3) == 5
    assert calls == [(2, 3), (2, 3)]  # nothing memoized outside a workflow


async def test_sync_step_outside_workflow_returns_via_await() -> None:
    threads: list[int] = []

    @step(name="mul", retries=2)
    def mul(a: int, b: int) -> int:
        threads.append(threading.get_ident())
        return a * b

    pending = mul(4, 5)
    assert asyncio.iscoroutine(pending)
    assert await pending == 20
    assert threads and threads[0] != threading.get_ident()  # ran in a worker thread


async def test_step_outside_workflow_propagates_errors_without_retry() -> None:
    calls = 0

    @step(retries=3)
    async def boom() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("k")

    with pytest.raises(KeyError):
        await boom()
    assert calls == 1


def test_step_keeps_the_function_metadata_and_options() -> None:
    @step(name="custom", retries=2, backoff_s=0.5, timeout_s=3.0, non_retryable=(KeyError,), cancellable=True)
    async def fetch() -> None:
        """Docs."""

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Docs."
    function, options = unwrap_step(fetch)
    assert getattr(fetch, STEP_OPTIONS)[0] is function
    assert function.__name__ == "fetch" and function is not fetch
    assert options.name == "custom"
    assert options.policy.retries == 2 and options.policy.backoff_s == 0.5
    assert options.policy.non_retryable == (KeyError,)
    assert options.timeout_s == 3.0 and options.cancellable


def test_unwrap_plain_function_gives_defaults() -> None:
    def plain() -> None: ...

    function, options = unwrap_step(plain)
    assert function is plain
    assert options.name is None and options.policy.retries == 0 and not options.cancellable


def test_cancellable_sync_step_is_refused() -> None:
    with pytest.raises(TypeError, match="async"):

        @step(cancellable=True)
        def sync_body() -> None: ...


def test_invalid_retry_options_are_refused_at_decoration() -> None:
    with pytest.raises(ValueError):

        @step(retries=-1)
        async def body() -> None: ...


# ---------------------------------------------------------------- current_step, StepInfo


def info(step_id: str = STEP_ID) -> StepInfo:
    return StepInfo(step_id=step_id, name="charge", instance_id="wf-1", attempt=2, launch_attempt=3)


def test_current_step_is_none_outside_steps() -> None:
    assert current_step() is None


async def test_current_step_inside_and_after_a_step_body() -> None:
    token = enter_step(info())
    try:
        assert current_step() == info()
    finally:
        leave_step(token)
    assert current_step() is None


async def test_sync_step_body_sees_current_step_in_its_thread() -> None:
    """A sync body runs in a worker thread with this context, so it sees the step."""
    seen: list[StepInfo | None] = []

    @step
    def body() -> None:
        seen.append(current_step())

    token = enter_step(info())
    try:
        await body()  # inside a step: a plain call
    finally:
        leave_step(token)
    assert seen == [info()]


def test_idempotency_key_is_instance_and_step() -> None:
    assert info().idempotency_key == f"wf-1/{STEP_ID}"
    assert info("5:step:charge").idempotency_key != info().idempotency_key
