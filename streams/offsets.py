"""Which offsets of a partition may be committed while messages finish out of order."""

from __future__ import annotations

import time
from collections import deque

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    """Offsets of one partition that are in flight; commits stop at the first unfinished one.

    Kafka commits a single position per partition, so finished work past a gap
    stays uncommitted until the gap closes; after a crash it is redelivered
    (at-least-once).  Offsets arrive in increasing order, which keeps this O(1)
    amortised per message.  With 5, 6 and 7 tracked, finishing 6 commits nothing;
    finishing 5 then makes 7 committable (``test_offsets`` holds the cases; this
    module is compiled, which doctest cannot look into).
    """

    __slots__ = ("_done", "_head_since", "_pending", "_position")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._position: int | None = None
        self._head_since = time.monotonic()

    def track(self, offset: int) -> None:
        if not self._pending:
            self._head_since = time.monotonic()
        self._pending.append(offset)

    def finish(self, offset: int) -> None:
        if self._pending and self._pending[0] == offset:
            self._head_since = time.monotonic()
            self._pending.popleft()
            self._position = offset + 1
            while self._pending and self._pending[0] in self._done:
                head = self._pending.popleft()
                self._done.discard(head)
                self._position = head + 1
        else:
            self._done.add(offset)

    def committable(self) -> int | None:
        """The next offset to commit (one past the last contiguous finished one)."""
        return self._position

    def stuck(self, after_s: float) -> tuple[int, float] | None:
        """``(offset, seconds)`` of the unfinished head when it has held commits ``after_s``."""
        if not self._pending:
            return None
        held = time.monotonic() - self._head_since
        return (self._pending[0], held) if held >= after_s else None

    @property
    def in_flight(self) -> int:
        return len(self._pending) - len(self._done)
