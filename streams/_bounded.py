"""A set that remembers its most recent members only, and says how many it forgot."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["RecentSet"]

K = TypeVar("K", bound=Hashable)


class RecentSet(Generic[K]):
    """At most ``maxlen`` members; adding one more forgets the oldest (``evicted`` counts them).

    >>> s = RecentSet[str](2)
    >>> s.add("a"), s.add("b"), s.add("a"), s.add("c")
    (True, True, False, True)
    >>> "a" in s, "b" in s, len(s), s.evicted
    (True, False, 2, 1)
    """

    __slots__ = ("_items", "evicted", "maxlen")

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self.evicted = 0
        self._items: OrderedDict[K, None] = OrderedDict()

    def add(self, item: K) -> bool:
        """Remember ``item`` as the newest; ``False`` if it was already a member."""
        if item in self._items:
            self._items.move_to_end(item)
            return False
        self._items[item] = None
        if len(self._items) > self.maxlen:
            self._items.popitem(last=False)
            self.evicted += 1
        return True

    def discard(self, item: K) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)
