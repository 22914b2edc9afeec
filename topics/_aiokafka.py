"""Work-arounds for aiokafka behaviour, kept in one place."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer

__all__ = ["stop_consumer"]


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
