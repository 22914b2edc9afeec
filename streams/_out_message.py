"""A message a handler wants written: a native class, so making one costs a C call.

It was a ``NamedTuple``; a request makes about seven of them (its next steps' inputs, its
trace events, its answer and marker), and each cost a Python-level ``__new__`` with keyword
parsing (about 0.8 us) and every field read a descriptor call.  Compiled, both are direct.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

__all__ = ["OutMessage"]


@final
class OutMessage:
    """A message to write: its topic, key, value and how it travels."""

    __slots__ = (
        "after",
        "ahead",
        "decoded",
        "fallback",
        "headers",
        "key",
        "landed",
        "partition",
        "topic",
        "value",
    )

    def __init__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        fallback: OutMessage | None = None,
        decoded: object = None,
        ahead: bool = False,
        after: bool = False,
        landed: Callable[[int, int], None] | None = None,
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.partition = partition
        """Explicit partition (changelogs); ``None``: by key."""
        self.fallback = fallback
        """Sent instead when the broker refuses this message as too large (a dead letter's
        bounded form)."""
        self.decoded = decoded
        """The object ``value`` was encoded from (an envelope), for a stage of this process
        that takes the message (``Outbox.shortcut``) without decoding it again.  With
        ``value`` ``None`` it is encoded (its ``encode()``) only when the message is sent:
        a message a shortcut takes is never encoded."""
        self.ahead = ahead
        """Acknowledged before the rest of the same send goes out: a dead letter before its
        request's FAILURE answer, so whoever reads the answer can list the letter."""
        self.after = after
        """Sent once the rest of the same send is acknowledged: a join's done marker after
        the join's outputs, so a crash between them cannot keep the marker and lose the
        outputs (their partitions may have other leaders than the marker's)."""
        self.landed = landed
        """Told ``(partition, offset)`` when the broker acknowledges the message (before its
        ``send_all`` returns): where a record run in place really is
        (``weir.streams._in_place``)."""

    def with_value(self, value: bytes) -> OutMessage:
        """The same message carrying ``value``."""
        return OutMessage(
            self.topic,
            self.key,
            value,
            self.headers,
            self.partition,
            self.fallback,
            self.decoded,
            self.ahead,
            self.after,
            self.landed,
        )

    def __repr__(self) -> str:
        # The value's size, not its bytes: a message may carry what must not be logged.
        size = "None" if self.value is None else f"{len(self.value)} bytes"
        return f"OutMessage(topic={self.topic!r}, key={self.key!r}, value={size})"
