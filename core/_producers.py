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
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

__all__ = ["Ack", "AiokafkaProducer", "DataProducer"]

log = logging.getLogger("weir.kafka")


class Ack(Protocol):
    """Where the broker put a message (aiokafka's ``RecordMetadata`` is one)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


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

    async def flush(self) -> None:
        """Wait until every message sent so far is acknowledged or failed."""

    def partitions_for(self, topic: str) -> list[int] | None:
        """The partitions of ``topic`` as far as the producer knows them (``None``: not yet)."""


class AiokafkaProducer:
    """``DataProducer`` on an ``AIOKafkaProducer`` (its futures are returned as they are)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.client = producer

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

    async def flush(self) -> None:
        await self.client.flush()

    def partitions_for(self, topic: str) -> list[int] | None:
        partitions = self.client.client.cluster.partitions_for_topic(topic)
        return sorted(partitions) if partitions else None
