"""What a step does when an attempt fails: retry later, fall back, or dead-letter.

The fields follow Temporal's retry policy, so they read the same to anyone
who has used it.  Retries never block a partition: a failed attempt is
re-queued on the step's delayed retry topic and the partition moves on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from weir.core.errors import PipelineDefinitionError, StepError, WeirError

__all__ = ["NO_RETRY", "Fallback", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded attempts, and errors never retried.

    >>> policy = RetryPolicy(initial_interval=1.0, backoff_coefficient=2.0, jitter=0.0)
    >>> [policy.delay(attempt) for attempt in (1, 2, 3)]
    [1.0, 2.0, 4.0]
    >>> policy.maximum_attempts
    3
    """

    initial_interval: float = 1.0
    """Seconds before the second attempt."""
    backoff_coefficient: float = 2.0
    """Each further delay is this many times the previous one."""
    maximum_interval: float | None = None
    """Cap on one delay; default 100 x ``initial_interval``."""
    maximum_attempts: int = 3
    """Attempts in all, the first included; 1 disables retries, 0 means unlimited."""
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""
    non_retryable_error_types: Sequence[str] = field(default_factory=tuple)
    """``error_type`` strings or exception class names that go straight to exhaustion."""

    def __post_init__(self) -> None:
        problems = []
        if self.initial_interval < 0:
            problems.append("initial_interval must be >= 0")
        if self.backoff_coefficient < 1:
            problems.append("backoff_coefficient must be >= 1")
        if self.maximum_interval is not None and self.maximum_interval < self.initial_interval:
            problems.append("maximum_interval must be >= initial_interval")
        if self.maximum_attempts < 0:
            problems.append("maximum_attempts must be >= 0 (0 = unlimited)")
        if not 0 <= self.jitter < 1:
            problems.append("jitter must be in [0, 1)")
        if isinstance(self.non_retryable_error_types, str):
            problems.append("non_retryable_error_types must be a list of names, not one string")
        if problems:
            raise PipelineDefinitionError(f"invalid RetryPolicy: {'; '.join(problems)}")
        object.__setattr__(self, "non_retryable_error_types", tuple(self.non_retryable_error_types))

    @property
    def cap(self) -> float:
        return (
            self.maximum_interval
            if self.maximum_interval is not None
            else 100 * self.initial_interval
        )

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        base = min(
            self.cap, self.initial_interval * self.backoff_coefficient ** (failed_attempt - 1)
        )
        if self.jitter and base:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return base

    def should_retry(self, error: BaseException, failed_attempt: int) -> bool:
        """Whether attempt ``failed_attempt`` failing with ``error`` earns another attempt."""
        if self.maximum_attempts and failed_attempt >= self.maximum_attempts:
            return False
        if isinstance(error, WeirError) and not error.retriable:
            return False
        return not self.is_non_retryable(error)

    def is_non_retryable(self, error: BaseException) -> bool:
        if not self.non_retryable_error_types:
            return False
        names = {type(error).__name__}
        if isinstance(error, WeirError):
            names.add(error.error_type)
        if isinstance(error, StepError) and error.__cause__ is not None:
            names.add(type(error.__cause__).__name__)
        return not names.isdisjoint(self.non_retryable_error_types)


NO_RETRY = RetryPolicy(maximum_attempts=1)
"""One attempt only: failures go straight to the fallback or the dead-letter topic."""


@dataclass(frozen=True)
class Fallback:
    """What a step outputs once its attempts are exhausted, instead of dead-lettering.

    Either a constant ``value``, or a ``function`` called with the step's own
    injected arguments (for example a cheaper local model).

    >>> Fallback(value={"answer": "a human will get back to you"}).value
    {'answer': 'a human will get back to you'}
    """

    value: Any = None
    function: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if self.function is not None and not callable(self.function):
            raise PipelineDefinitionError(f"Fallback function {self.function!r} is not callable")
