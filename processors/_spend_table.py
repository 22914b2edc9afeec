"""Spend per budget key and hour, with a cap on the keys held exactly.

Budget keys come from request fields, so their number is capped: past
``max_keys`` the least recently used keys (none that a claim still holds) are
evicted, and their spend moves into a fixed-size sketch that can only
over-estimate it (``weir.processors._spend_sketch``).

>>> window_start("hour", 3_600_000 * 5 + 42)
18000000
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Literal

from weir.processors._spend_sketch import SpendSketch
from weir.schemas.messages import now_ms

__all__ = ["SpendTable", "Window", "window_start"]

log = logging.getLogger("weir.models")

Window = Literal["hour", "day", "month"]
_HOUR_MS = 3600 * 1000


def window_start(window: Window, at_ms: int) -> int:
    """Epoch ms where the UTC calendar ``window`` containing ``at_ms`` starts."""
    if window == "hour":
        return at_ms - at_ms % _HOUR_MS
    moment = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    if window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int(start.timestamp() * 1000)


class SpendTable:
    """Per budget key, spend per hour; exact for ``max_keys`` keys, over-estimated past them."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self._hours: collections.OrderedDict[str, dict[int, Decimal]] = collections.OrderedDict()
        """Per budget key, spend per hour; least recently used key first."""
        self._evicted = SpendSketch()
        """Spend of the keys evicted from ``_hours`` (an over-estimate; see ``_spend_sketch``)."""
        self._approximate: set[str] = set()
        """Keys in ``_hours`` made after evictions began: they may have spend in the sketch."""
        self.evicted_keys = 0
        """Budget keys moved out of memory since start."""

    @property
    def keys_in_memory(self) -> int:
        return len(self._hours)

    def add(self, key: str, at_ms: int, cost: Decimal, *, keep: Callable[[str], bool]) -> None:
        """Count ``cost`` for ``key`` at ``at_ms``; evicting never touches keys ``keep`` names."""
        hours = self._hours.get(key)
        if hours is None:
            hours = self._hours[key] = {}
            if self._evicted:
                self._approximate.add(key)
            self._evict(keep)
        else:
            self._hours.move_to_end(key)
        hour = window_start("hour", at_ms)
        hours[hour] = hours.get(hour, Decimal(0)) + cost
        # Keep about two months of hours per key.
        if len(hours) > 1600:
            for old in sorted(hours)[: len(hours) - 1600]:
                del hours[old]

    def _evict(self, keep: Callable[[str], bool]) -> None:
        """Move least recently used keys past ``max_keys`` into the sketch.

        Keys with a reservation (a call in flight) stay: their spend is about to change,
        so the table may exceed the cap by the number of keys with calls in flight.
        """
        limit = self.max_keys
        if len(self._hours) <= limit:
            return
        for key in list(self._hours):
            if len(self._hours) <= limit:
                break
            if keep(key):
                continue
            for hour, cost in self._hours.pop(key).items():
                self._evicted.add(key, hour, cost)
            self._approximate.discard(key)
            self.evicted_keys += 1
            if self.evicted_keys == 1 or self.evicted_keys % 10_000 == 0:
                log.warning(
                    "cost ledger: more than %d budget keys (budget_max_keys); %d evicted so far,"
                    " their spend kept as an over-estimate",
                    limit,
                    self.evicted_keys,
                )
        self._evicted.forget_before(window_start("month", now_ms()))

    def spent(self, key: str, window: Window, at_ms: int) -> Decimal:
        """What ``key`` spent in the ``window`` holding ``at_ms``: exact, or at least that."""
        start = window_start(window, at_ms)
        hours = self._hours.get(key)
        exact = sum((v for h, v in (hours or {}).items() if h >= start), Decimal(0))
        if hours is not None:
            self._hours.move_to_end(key)
        if self._evicted and (hours is None or key in self._approximate):
            return exact + self._evicted.estimate(key, since_ms=start)
        return exact
