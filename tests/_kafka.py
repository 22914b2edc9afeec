"""Reading topics back independently of the code under test."""

from __future__ import annotations

import asyncio
import collections
import time

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import Result
from weir.topics._aiokafka import rewind, stop_consumer


async def read_topic(
    settings: WeirSettings,
    topic: str,
    *,
    idle_s: float = 1.5,
    until: int | None = None,
    timeout: float = 120.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning, until ``until`` records or ``idle_s`` quiet."""
    consumer = KafkaConnection.of(settings).consumer(
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await rewind(consumer, tps)
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if batch:
                last = time.monotonic()
            elif until is None and time.monotonic() - last > idle_s:
                break
            if until is not None and len(records) >= until:
                # Keep reading a moment longer so duplicates would show up too.
                await asyncio.sleep(idle_s)
                for part in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(part)
                break
    finally:
        await stop_consumer(consumer)
    return records


async def read_results(
    settings: WeirSettings, topic: str, expected: int, *, timeout: float = 120.0
) -> tuple[dict[str, Result], collections.Counter[str]]:
    """Results by request id (first wins) and how many times each id was answered."""
    records = await read_topic(settings, topic, until=expected, timeout=timeout)
    counts: collections.Counter[str] = collections.Counter()
    results: dict[str, Result] = {}
    for record in records:
        result = Result.from_wire(record.value)
        counts[result.request_id] += 1
        results.setdefault(result.request_id, result)
    return results, counts
