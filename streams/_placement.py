"""Where the worker's producer sends a key: the partition of an answer, of a trace event."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer

from weir.core.kafka import DataProducer
from weir.streams._trace_batch import pack_traces
from weir.streams.outbox import OutMessage
from weir.topics._aiokafka import KeyPartitioner

__all__ = ["Placement"]

_FRESH_S = 1.0


class Placement:
    """The partitions the worker's producer would choose, as far as they are known yet."""

    __slots__ = ("_known", "_partitioner", "consumer", "producer")

    def __init__(self, partitioner: KeyPartitioner) -> None:
        self._partitioner = partitioner
        self.producer: DataProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self._known: dict[str, tuple[float, list[int]]] = {}
        """Partitions by topic, looked up at most every ``_FRESH_S`` (once per message cost
        more than a fetched batch's trace packing)."""

    def partition_of(self, topic: str, key: bytes) -> int | None:
        """The partition the producer sends ``key`` to on ``topic`` (``None``: not known yet)."""
        partitions = self.partitions(topic)
        return None if partitions is None else int(self._partitioner(key, partitions, partitions))

    def partitions(self, topic: str) -> list[int] | None:
        now = time.monotonic()
        known = self._known.get(topic)
        if known is not None and now - known[0] < _FRESH_S:
            return known[1]
        partitions = self._look_up(topic)
        if partitions is not None:
            self._known[topic] = (now, partitions)
        return partitions

    def _look_up(self, topic: str) -> list[int] | None:
        producer = self.producer
        if producer is None:
            return None
        # The consumer knows the partitions of what it reads (the producer only learns of a
        # topic once it has sent to it).
        partitions = None
        if self.consumer is not None:
            partitions = self.consumer.partitions_for_topic(topic)
        if not partitions:
            return producer.partitions_for(topic)
        return sorted(partitions)

    def pack_traces(self, messages: list[OutMessage], topic: str) -> list[OutMessage]:
        """A batch's messages with its trace events packed per trace partition."""
        partitions = self.partitions(topic)
        if partitions is None:
            return messages
        partitioner = self._partitioner
        return pack_traces(messages, topic, lambda key: partitioner(key, partitions, partitions))
