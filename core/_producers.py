"""The producer of the worker's data path, on aiokafka or on librdkafka (``confluent-kafka``).

Both implement ``DataProducer``: ``send`` waits only while the client's buffer is full and
returns a future of the acknowledgement (``Ack``: topic, partition, offset); a refused send
raises, and a failed delivery fails that future, with aiokafka's ``KafkaError`` family
(``MessageSizeTooLargeError`` for a message the broker will never take), so callers handle
one set of errors whichever client runs.  Keys go to the partition of Java's murmur2 on both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder

__all__ = [
    "MAX_REQUEST_BYTES",
    "Ack",
    "AiokafkaProducer",
    "Batches",
    "DataProducer",
    "Outgoing",
    "send_batches",
]

log = logging.getLogger("weir.kafka")


class Ack(Protocol):
    """Where the broker put a message (aiokafka's ``RecordMetadata`` is one)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


MAX_REQUEST_BYTES = 1_048_576
"""The largest message either client takes (aiokafka's ``max_request_size``, librdkafka's
``message.max.bytes``)."""

Partitioner = Callable[[bytes | None, list[int], list[int]], int]
"""An aiokafka partitioner: ``(key, all partitions, available partitions) -> partition``."""


class Outgoing(Protocol):
    """A message to send (``weir.streams.outbox.OutMessage`` is one)."""

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    @property
    def partition(self) -> int | None:
        """Explicit partition; ``None``: by key."""


Batches = list[tuple["asyncio.Future[Any]", list[int]]]
"""What ``send_batches`` handed to the client: per batch, the future of the ``Ack`` of its
first message (the others follow it at the next offsets of the same partition), and the
indexes of its messages in the list sent."""


class DataProducer(Protocol):
    """A started producer of the data path (idempotent, acks=all)."""

    async def start(self) -> None: ...
    async def stop(self) -> None:
        """Wait for what was sent (up to the request timeout), then close."""

    async def send(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a message; the future resolves to its ``Ack``."""

    async def send_batches(self, messages: Sequence[Outgoing]) -> Batches:
        """Queue ``messages``, in order within each partition, as few batches as it takes.

        A message the client refuses at once (too large) is a batch of its own whose
        future failed; an error raised here (no metadata for a topic, the producer
        closed) may leave some batches already queued.
        """

    async def flush(self) -> None:
        """Wait until every message sent so far is acknowledged or failed."""

    def partitions_for(self, topic: str) -> list[int] | None:
        """The partitions of ``topic`` as far as the producer knows them (``None``: not yet)."""


class AiokafkaProducer:
    """``DataProducer`` on an ``AIOKafkaProducer`` (its futures are returned as they are)."""

    def __init__(self, producer: AIOKafkaProducer, partitioner: Partitioner | None = None) -> None:
        self.client = producer
        self._partitioner = partitioner

    def __repr__(self) -> str:
        return f"AiokafkaProducer({self.client.client._bootstrap_servers!r})"

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    async def send(
        self,
        topic: str,
        *,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self.client.send(
            topic, value=value, key=key, headers=headers, partition=partition
        )
        return future

    async def send_batches(self, messages: Sequence[Outgoing]) -> Batches:
        return await send_batches(self.client, messages, self._partitioner)

    async def flush(self) -> None:
        await self.client.flush()

    def partitions_for(self, topic: str) -> list[int] | None:
        partitions = self.client.client.cluster.partitions_for_topic(topic)
        return sorted(partitions) if partitions else None


def _refused(size: int) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(
        MessageSizeTooLargeError(
            f"the message is {size} bytes serialized, more than the {MAX_REQUEST_BYTES} a"
            " request may carry"
        )
    )
    return future


_DEFAULT_PARTITIONER: Partitioner = DefaultPartitioner()
"""aiokafka's partitioner (stateless): murmur2 of the key, a random partition without one."""


async def send_batches(
    producer: AIOKafkaProducer,
    messages: Sequence[Outgoing],
    partitioner: Partitioner | None = None,
) -> Batches:
    """``DataProducer.send_batches`` on aiokafka, through its public batch API.

    One future and one callback per partition's batch instead of per message: per
    message, only an append to the batch (aiokafka's ``send`` awaits a coroutine, makes
    a future and resolves it, which cost ~10 µs of ~25 per message here).  Also used by
    transactional producers (the answer stage).  ``partitioner``: where a message without
    a partition goes (aiokafka's default partitioner when ``None``).
    """
    if partitioner is None:
        partitioner = _DEFAULT_PARTITIONER
    by_partition: dict[tuple[str, int], list[int]] = {}
    known: dict[str, tuple[list[int], list[int]]] = {}
    cluster = producer.client.cluster
    for i, m in enumerate(messages):
        partition = m.partition
        if partition is None:
            topic = m.topic
            parts = known.get(topic)
            if parts is None:
                every = cluster.partitions_for_topic(topic)
                if not every:
                    await producer.partitions_for(topic)  # waits for its metadata
                    every = cluster.partitions_for_topic(topic)
                available = cluster.available_partitions_for_topic(topic)
                parts = known[topic] = (sorted(every), sorted(available or every))
            partition = partitioner(m.key, parts[0], parts[1])
        where = (m.topic, partition)
        members = by_partition.get(where)
        if members is None:
            by_partition[where] = [i]
        else:
            members.append(i)
    batches: Batches = []
    estimate = DefaultRecordBatchBuilder.estimate_size_in_bytes
    for (topic, partition), members in by_partition.items():
        builder = producer.create_batch()
        held: list[int] = []
        for i in members:
            m = messages[i]
            headers = m.headers or []
            if held:
                fits = builder.append(timestamp=None, key=m.key, value=m.value, headers=headers)
                if fits is not None:
                    held.append(i)
                    continue
                # Full: this message opens the next batch.
                batches.append((await _queue(producer, builder, topic, partition), held))
                builder, held = producer.create_batch(), []
            # The first message of a batch always fits in it: too large for any request?
            size = estimate(m.key, m.value, headers)
            if size > MAX_REQUEST_BYTES:
                batches.append((_refused(size), [i]))
                continue
            builder.append(timestamp=None, key=m.key, value=m.value, headers=headers)
            held.append(i)
        if held:
            batches.append((await _queue(producer, builder, topic, partition), held))
    return batches


async def _queue(producer: AIOKafkaProducer, builder: Any, topic: str, partition: int) -> Any:
    # Waits while this partition's previous batch is not drained yet (sent, not acked).
    return await producer.send_batch(builder, topic, partition=partition)
