"""The partitions a worker holds: their in-flight records, offsets and commits."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from weir.streams.offsets import PartitionOffsets

__all__ = ["Partitions"]


class Partitions:
    """What one worker knows of its partitions, shared by its fetch loop and record tasks.

    ``slots`` bounds the records held at once (``max_in_flight``); a partition's
    tracker (``offsets``) says how far its commits may go while records finish out
    of order.
    """

    __slots__ = ("assigned", "committed", "inflight", "offsets", "revoking", "slots")

    def __init__(self, max_in_flight: int) -> None:
        self.slots = asyncio.Semaphore(max_in_flight)
        self.offsets: dict[TopicPartition, PartitionOffsets] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.inflight: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self.assigned: set[TopicPartition] = set()
        self.revoking: set[TopicPartition] = set()

    def takes(self, tp: TopicPartition) -> bool:
        """Whether new records of ``tp`` may start (assigned, and not being revoked)."""
        return tp in self.assigned and tp not in self.revoking

    def add(self, tps: Iterable[TopicPartition]) -> None:
        """Fresh trackers for newly assigned partitions (not yet taking records)."""
        for tp in tps:
            self.offsets[tp] = PartitionOffsets()
            self.inflight[tp] = set()

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.assigned.discard(tp)
            self.offsets.pop(tp, None)
            self.committed.pop(tp, None)
            self.inflight.pop(tp, None)

    def tasks(self, tps: Iterable[TopicPartition] | None = None) -> list[asyncio.Task[None]]:
        """The tasks in flight on ``tps`` (all partitions when ``None``)."""
        keys = self.inflight if tps is None else tps
        return [t for tp in keys for t in self.inflight.get(tp, ())]

    def finished(self, tp: TopicPartition, slots: int) -> None:
        """Give back a task's slots and forget it (called from inside the task)."""
        for _ in range(slots):
            self.slots.release()
        current = asyncio.current_task()
        if current is not None and tp in self.inflight:
            self.inflight[tp].discard(current)

    async def commit(
        self, consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition] | None = None
    ) -> None:
        """Commit ``tps`` (all when ``None``) up to each one's first unfinished record."""
        offsets = {}
        for tp in list(tps if tps is not None else self.offsets):
            tracker = self.offsets.get(tp)
            position = tracker.committable() if tracker else None
            if position is not None and position > self.committed.get(tp, -1):
                offsets[tp] = position
        if offsets:
            await consumer.commit(offsets)
            self.committed.update(offsets)

    def lag(self, consumer: AIOKafkaConsumer, topics: Collection[str]) -> int:
        """Records not yet finished on the held partitions of ``topics``."""
        total = 0
        for tp in list(self.assigned):
            if tp.topic not in topics:
                continue
            end = consumer.highwater(tp)
            tracker = self.offsets.get(tp)
            done = tracker.committable() if tracker is not None else None
            if end is not None and done is not None:
                total += max(0, end - done)
            elif end is not None:
                total += end - (self.committed.get(tp) or 0)
        return total

    def stuck_records(self, after_s: float) -> list[dict[str, object]]:
        """Records that have held their partition's commits for ``after_s`` seconds."""
        out: list[dict[str, object]] = []
        for tp, tracker in list(self.offsets.items()):
            if tp in self.assigned and (head := tracker.stuck(after_s)) is not None:
                offset, seconds = head
                out.append(
                    {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "offset": offset,
                        "seconds": round(seconds, 1),
                    }
                )
        return out
