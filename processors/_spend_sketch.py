"""Where the cost ledger keeps the spend of budget keys it evicted: a count-min sketch.

Budget keys come from request fields (a tenant, an API key), so a flood of
made-up values could grow the ledger's table without end.  Past
``budget_max_keys`` the least recently used keys without a call in flight are
evicted, and their spend moves here: per UTC day, a count-min sketch (a few
rows of counters, each key hashed to one counter per row) in whole
nano-dollars, rounded up.  A counter only ever gains what other keys add to
it, so the smallest of a key's counters is never below its own spend: an
evicted key that comes back is counted *at least* what it spent — it may be
refused a little early (when other keys share its counters), never allowed to
overspend.  Memory is fixed: ``DEPTH * WIDTH`` counters per day, days older
than the longest window (a month) dropped.

>>> import datetime as dt
>>> s = SpendSketch()
>>> s.add("t/1", 0, Decimal("0.25"))
>>> s.estimate("t/1", since_ms=0) >= Decimal("0.25"), s.estimate("t/2", since_ms=0)
(True, Decimal('0'))
"""

from __future__ import annotations

import hashlib
from array import array
from decimal import ROUND_CEILING, Decimal

__all__ = ["SpendSketch"]

_DAY_MS = 24 * 3600 * 1000
_NANO = Decimal("1e-9")


class SpendSketch:
    """Over-estimates of evicted keys' spend, per UTC day."""

    DEPTH = 4
    WIDTH = 4096

    def __init__(self) -> None:
        self._days: dict[int, array[int]] = {}

    def _cells(self, key: str) -> list[int]:
        digest = hashlib.blake2b(key.encode(), digest_size=4 * self.DEPTH).digest()
        return [
            row * self.WIDTH + int.from_bytes(digest[4 * row : 4 * row + 4], "big") % self.WIDTH
            for row in range(self.DEPTH)
        ]

    def add(self, key: str, at_ms: int, cost: Decimal) -> None:
        """Count ``cost`` of ``key`` on the day of ``at_ms``."""
        if cost <= 0:
            return
        day = at_ms - at_ms % _DAY_MS
        counters = self._days.get(day)
        if counters is None:
            counters = self._days[day] = array("q", bytes(8 * self.DEPTH * self.WIDTH))
        nanos = int((cost / _NANO).to_integral_value(rounding=ROUND_CEILING))
        for cell in self._cells(key):
            counters[cell] += nanos

    def estimate(self, key: str, *, since_ms: int) -> Decimal:
        """At least what ``key`` spent in the days that overlap ``[since_ms, now]``."""
        first_day = since_ms - since_ms % _DAY_MS
        cells = self._cells(key)
        total = 0
        for day, counters in self._days.items():
            if day >= first_day:
                total += min(counters[c] for c in cells)
        return Decimal(total) * _NANO if total else Decimal(0)

    def forget_before(self, at_ms: int) -> None:
        """Drop the days that end before ``at_ms`` (no window reaches back that far)."""
        for day in [d for d in self._days if d + _DAY_MS <= at_ms]:
            del self._days[day]

    def __bool__(self) -> bool:
        return bool(self._days)
