"""When a failed step try is retried and how long the SDK pauses first."""

from __future__ import annotations

import random

import pytest

from runtara_sdk.errors import Cancelled, NonRetryableError
from runtara_sdk.retry_policy import RetryPolicy


class Permanent(NonRetryableError):
    pass


class Declined(Exception):
    pass


class DeclinedHard(Declined):
    pass


def test_no_retries_by_default() -> None:
    assert not RetryPolicy().should_retry(ValueError("x"), 1)


def test_retries_count_bounds_the_tries() -> None:
    policy = RetryPolicy(retries=2)
    assert policy.should_retry(ValueError("x"), 1)
    assert policy.should_retry(ValueError("x"), 2)
    assert not policy.should_retry(ValueError("x"), 3)


def test_non_retryable_error_and_subclasses_fail_at_once() -> None:
    policy = RetryPolicy(retries=5)
    assert not policy.should_retry(NonRetryableError("no"), 1)
    assert not policy.should_retry(Permanent("no"), 1)


def test_non_retryable_types_and_their_subclasses() -> None:
    policy = RetryPolicy(retries=5, non_retryable=(Declined,))
    assert not policy.should_retry(Declined(), 1)
    assert not policy.should_retry(DeclinedHard(), 1)
    assert policy.should_retry(KeyError("k"), 1)


@pytest.mark.parametrize("error", [Cancelled(), KeyboardInterrupt(), SystemExit(1)])
def test_base_exceptions_are_never_retried(error: BaseException) -> None:
    assert not RetryPolicy(retries=5).should_retry(error, 1)


def test_delay_without_jitter_doubles() -> None:
    policy = RetryPolicy(retries=10, backoff_s=1.5, max_backoff_s=1000.0, jitter=0.0)
    rng = random.Random(1)
    assert [policy.delay_s(n, rng) for n in range(1, 5)] == [1.5, 3.0, 6.0, 12.0]


def test_delay_is_capped() -> None:
    policy = RetryPolicy(retries=100, backoff_s=1.0, max_backoff_s=10.0, jitter=0.0)
    rng = random.Random(1)
    assert policy.delay_s(4, rng) == 8.0
    assert policy.delay_s(5, rng) == 10.0
    assert policy.delay_s(60, rng) == 10.0


def test_delay_of_a_very_late_try_does_not_overflow() -> None:
    """2 ** 2000 does not fit a float: the cap must still apply."""
    policy = RetryPolicy(retries=5000, backoff_s=1.0, max_backoff_s=30.0, jitter=0.0)
    assert policy.delay_s(3000, random.Random(1)) == 30.0
    assert RetryPolicy(retries=5000, backoff_s=0.0, jitter=0.0).delay_s(3000, random.Random(1)) == 0.0


def test_jitter_stays_within_bounds_and_varies() -> None:
    policy = RetryPolicy(retries=10, backoff_s=2.0, max_backoff_s=100.0, jitter=0.5)
    rng = random.Random(42)
    delays = [policy.delay_s(3, rng) for _ in range(200)]  # pause 8.0 -> [4.0, 8.0]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 1
    assert min(delays) < 5.0 and max(delays) > 7.0


def test_jitter_is_reproducible_with_a_seed() -> None:
    policy = RetryPolicy(retries=3, jitter=1.0)
    first = [policy.delay_s(n, random.Random(7)) for n in (1, 2, 3)]
    again = [policy.delay_s(n, random.Random(7)) for n in (1, 2, 3)]
    assert first == again


def test_full_jitter_may_reach_zero_but_not_beyond_the_pause() -> None:
    policy = RetryPolicy(retries=3, backoff_s=1.0, jitter=1.0)
    rng = random.Random(3)
    assert all(0.0 <= policy.delay_s(1, rng) <= 1.0 for _ in range(100))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retries": -1},
        {"backoff_s": -0.1},
        {"max_backoff_s": -1.0},
        {"jitter": -0.01},
        {"jitter": 1.01},
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
