"""Work-arounds for aiokafka behaviour, kept in one place."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["rewind", "stop_consumer"]


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop ``consumer``, tolerating aiokafka's spurious ``CancelledError``.

    A group-less consumer stopped right after it started awaits its own
    cancelled housekeeping task and raises ``CancelledError`` (aiokafka 0.14,
    ``NoGroupCoordinator.close``).  Swallow that one, but never a real
    cancellation of the calling task.
    """
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def rewind(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    """Seek ``tps`` to their first offsets, by number.

    ``seek_to_beginning()`` races aiokafka's own position reset of a freshly
    assigned partition: with ``auto_offset_reset="latest"`` the reset can land
    after the seek and skip everything.  An explicit ``seek`` cannot be undone.
    """
    begin = await consumer.beginning_offsets(tps)
    for tp in tps:
        consumer.seek(tp, begin[tp])
