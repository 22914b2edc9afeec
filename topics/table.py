"""Reading a compacted topic into memory: every record up to the end, then the consumer to follow.

A step's cache and the model-call journal are both tables kept this way.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition

from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.topics._aiokafka import read_until, retrying, rewind, stop_consumer
from weir.topics.admin import TopicAdmin

__all__ = ["load_table"]


async def load_table(
    settings: WeirSettings, topic: str, take: Callable[[bytes | None, bytes | None], None]
) -> AIOKafkaConsumer:
    """Call ``take(key, value)`` for every record of ``topic`` as of now, partition by partition.

    Returns the started consumer, assigned to all partitions and positioned at their ends,
    for the caller to follow the topic with (and stop); on failure it is stopped.
    """
    async with TopicAdmin(settings) as admin:
        count = (await admin.partitions([topic])).get(topic, 0)
    consumer = KafkaConnection.of(settings).consumer(enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(tps)
        await rewind(consumer, tps)
        ends = await retrying(lambda: consumer.end_offsets(tps), what=f"reading {topic} ends")
        for tp in tps:
            async for record in read_until(consumer, tp, ends[tp]):
                take(record.key, record.value)
    except BaseException:
        await stop_consumer(consumer)
        raise
    return consumer
