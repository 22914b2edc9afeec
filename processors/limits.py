"""Per-endpoint limits (requests/min, tokens/min, concurrency) and observed latency.

Limits are enforced as back-pressure: a call waits for room (the step's own
timeout still bounds it) instead of piling requests onto a provider that will
answer 429.  Inside a worker, requests/min and tokens/min are the pipeline's:
each process keeps 1/N of them, N the live members of its consumer group
(``weir.processors.group_share``).  A call that cannot get room within the
endpoint's timeout fails with ``RateLimitedError``, which the step may retry.

>>> Limits(requests_per_minute=600).requests_per_minute
600
>>> stats = LatencyStats()
>>> for ms in (10, 20, 30, 40, 1000):
...     stats.observe(ms)
>>> stats.percentile(50)
30.0
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

from weir.core.errors import ConfigError, RateLimitedError

__all__ = ["LatencyStats", "Limits", "TokenBucket"]


@dataclass(frozen=True)
class Limits:
    """What a pipeline's workers together may send to an endpoint; ``None`` means unlimited.

    ``max_concurrency`` is per worker process (it also sizes the connection pool).
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    """Input and output tokens together (input estimated before the call, settled after)."""
    max_concurrency: int | None = None
    """Calls in flight at once (also the size of the HTTP connection pool)."""

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"Limits.{name} must be a positive integer or None, got {value!r}"
                )


class TokenBucket:
    """``per_minute`` units a minute, refilled continuously; may go into debt."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._level = self.capacity
        self._stamp = time.monotonic()
        self.share = 1

    def set_share(self, members: int) -> None:
        """Keep 1/``members`` of the limit (rate and burst): the rest is the other workers'."""
        members = max(1, members)
        if members == self.share:
            return
        self._refill()
        self.share = members
        self.capacity = self.per_minute / members
        self._rate = self.per_minute / members / 60.0
        self._level = min(self._level, self.capacity)

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self._rate)
        self._stamp = now

    async def take(self, amount: float, *, deadline: float, what: str) -> None:
        """Wait until ``amount`` is available and take it; ``RateLimitedError`` at ``deadline``."""
        amount = min(amount, self.capacity)  # one huge request must not wait forever
        while True:
            self._refill()
            if self._level >= amount:
                self._level -= amount
                return
            wait = (amount - self._level) / self._rate
            if time.monotonic() + wait > deadline:
                raise RateLimitedError(f"{what}: weir's own limit is reached; no room in time")
            await asyncio.sleep(min(wait, 0.25))

    def debit(self, amount: float) -> None:
        """Charge usage learnt after the call (output tokens); later calls wait for it."""
        self._refill()
        self._level -= amount


class LatencyStats:
    """Moving percentiles over an endpoint's last ``size`` successful calls (ms)."""

    def __init__(self, size: int = 200) -> None:
        self._window: deque[float] = deque(maxlen=size)

    def observe(self, ms: float) -> None:
        self._window.append(ms)

    @property
    def count(self) -> int:
        return len(self._window)

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (nearest rank), ``None`` before any call."""
        if not self._window:
            return None
        ordered = sorted(self._window)
        rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
        return float(ordered[rank])
