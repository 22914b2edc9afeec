"""Wall-clock times as the wire formats carry them: epoch milliseconds and microseconds.

Compiled (``setup.py``): the hot path reads the clock several times a request, and a
compiled caller calls these natively (``weir.schemas.messages`` re-exports them).
"""

from __future__ import annotations

import time

__all__ = ["now_ms", "now_us"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def now_us() -> int:
    return time.time_ns() // 1_000
