"""When a failed step try is retried, and after how long: pure, so it is unit-tested alone."""

from __future__ import annotations

import random
from dataclasses import dataclass

from runtara_sdk.errors import NonRetryableError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 0
    """Tries after the first; a step runs at most ``retries + 1`` times per launch."""
    backoff_s: float = 1.0
    """Pause before the first retry; doubled before each further one."""
    max_backoff_s: float = 60.0
    jitter: float = 0.5
    """Each pause is drawn from [pause * (1 - jitter), pause], so many instances do not retry in step."""
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("retries and backoff must be >= 0 and jitter within [0, 1]")

    def should_retry(self, error: BaseException, failed_try: int) -> bool:
        if failed_try > self.retries or not isinstance(error, Exception):
            return False
        return not isinstance(error, (NonRetryableError, *self.non_retryable))

    def delay_s(self, failed_try: int, rng: random.Random) -> float:
        """The pause after try ``failed_try`` (1-based) failed."""
        # 2.0 ** (capped exponent): an int 2 ** n beyond 1023 would not convert to float (OverflowError)
        pause = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(failed_try - 1, 1023))
        return pause * rng.uniform(1 - self.jitter, 1.0)
