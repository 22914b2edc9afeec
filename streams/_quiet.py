"""Retry partitions, fetched now and then instead of in every fetch.

Every partition a fetch names costs time in it (aiokafka's request and response handling
and the broker's), and retry topics hold most of a worker's partitions (two tiers per
step by default: 24 of the 44 of a 3-step pipeline) while they are nearly always empty.
Measured on one broker, a consumer of 36 partitions saw a record 0.8-1.2 ms later than a
consumer of 4, and as early as it once the 32 idle ones were paused (BENCHMARKS.md).

So a retry partition that a fetch found with nothing new is paused ("resting"), and the
resting ones are resumed every ``retry_poll_ms`` until a fetch has covered them again
(aiokafka's ``last_poll_timestamp`` moved).  A retry record therefore waits at most that
much (plus one fetch) longer than its delay, which is a second or more; a partition whose
records flow stays resumed until a fetch brings nothing.  Partitions the fetch loop holds
until their head record is due (``defer``) are left to it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["QuietPartitions"]


class QuietPartitions:
    """Pauses caught-up partitions of the ``quiet`` topics between polls (see the module)."""

    __slots__ = (
        "_assigned",
        "_consumer",
        "_deferred",
        "_interval_s",
        "_next_s",
        "_quiet",
        "_resting",
        "_watched",
    )

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        quiet: Collection[str],
        assigned: Callable[[], Collection[TopicPartition]],
        *,
        interval_s: float,
    ) -> None:
        self._consumer = consumer
        self._quiet = frozenset(quiet)
        self._assigned = assigned
        """The partitions the worker has taken (tables restored; see ``Partitions``)."""
        self._interval_s = interval_s
        self._resting: set[TopicPartition] = set()
        """Paused here until the next poll."""
        self._watched: dict[TopicPartition, int | None] = {}
        """Resumed: their ``last_poll_timestamp`` when last seen; a change is a fetch."""
        self._deferred: set[TopicPartition] = set()
        """Paused by the fetch loop until their head record is due."""
        self._next_s = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._quiet) and self._interval_s > 0

    @property
    def resting(self) -> frozenset[TopicPartition]:
        return frozenset(self._resting)

    def tick(self, fetched: Mapping[TopicPartition, object]) -> None:
        """After each ``getmany``: rest what a fetch covered without records; every
        interval, wake what rests (and watch retry partitions newly taken)."""
        if self._watched:
            self._settle(fetched)
        now = time.monotonic()
        if now >= self._next_s:
            self._next_s = now + self._interval_s
            self._wake()

    def defer(self, tp: TopicPartition) -> None:
        """The fetch loop paused ``tp`` until its head record is due."""
        self._deferred.add(tp)
        self._resting.discard(tp)
        self._watched.pop(tp, None)

    def due(self, tp: TopicPartition) -> None:
        """The fetch loop resumed ``tp`` (its head record is due): watch it again."""
        self._deferred.discard(tp)
        self._watch(tp)

    def _settle(self, fetched: Mapping[TopicPartition, object]) -> None:
        consumer = self._consumer
        assignment = consumer.assignment()
        rest = []
        for tp, seen in list(self._watched.items()):
            if tp not in assignment:
                del self._watched[tp]
                continue
            polled = consumer.last_poll_timestamp(tp)
            if tp in fetched:
                self._watched[tp] = polled  # records flow: stay until a fetch brings none
            elif polled is not None and polled != seen:
                rest.append(tp)
        if rest:
            # Records fetched but not handed out yet are dropped with the pause and read
            # again from the same position at the next poll: nothing is skipped.
            consumer.pause(*rest)
            for tp in rest:
                del self._watched[tp]
            self._resting.update(rest)

    def _wake(self) -> None:
        consumer = self._consumer
        assignment = consumer.assignment()
        taken = self._assigned()
        self._resting &= assignment
        self._deferred &= assignment
        for tp in taken:
            if tp.topic in self._quiet and tp not in self._deferred and tp not in self._watched:
                self._watch(tp)

    def _watch(self, tp: TopicPartition) -> None:
        consumer = self._consumer
        if tp not in consumer.assignment():
            return
        if tp in self._resting:
            self._resting.discard(tp)
            consumer.resume(tp)
        self._watched[tp] = consumer.last_poll_timestamp(tp)
