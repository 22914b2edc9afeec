"""The worker's Kafka clients as it configures them, and ending the tasks that use them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer

from weir.core.config import WeirSettings
from weir.core.kafka import DataProducer, KafkaConnection
from weir.topics._aiokafka import KeyPartitioner

__all__ = ["cancel", "drain", "worker_consumer", "worker_producer"]

log = logging.getLogger("weir.worker")


def worker_producer(settings: WeirSettings, partitioner: KeyPartitioner) -> DataProducer:
    """The one producer of a worker (idempotent, every in-sync replica acknowledges), on
    the client ``settings.kafka_client`` names."""
    return KafkaConnection.of(settings).data_producer(
        client_id=f"weir-{settings.worker_id}",
        linger_ms=settings.producer_linger_ms,
        batch_bytes=settings.producer_batch_bytes,
        request_timeout_ms=30000,
        partitioner=partitioner,
    )


def worker_consumer(settings: WeirSettings, group_id: str) -> AIOKafkaConsumer:
    """The one consumer of a worker, in the pipeline's group; commits are the worker's."""
    return KafkaConnection.of(settings).consumer(
        group_id=group_id,
        client_id=f"weir-{settings.worker_id}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.max_poll_records,
        # A slow model call must not cost the group its member: liveness is the
        # heartbeat, and the fetch loop keeps polling while tasks run.
        max_poll_interval_ms=300_000,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
        # A revocation waits up to shutdown_timeout_s for in-flight work; the group must
        # wait longer than that, or it expels this member while it still writes answers.
        rebalance_timeout_ms=int((settings.shutdown_timeout_s + 30) * 1000),
        isolation_level="read_committed",
    )


async def drain(tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
    """Wait for ``tasks`` up to ``timeout_s``; cancel the rest."""
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=timeout_s)
    for task in late:
        task.cancel()
    if late:
        log.warning("handing back %d unfinished message(s)", len(late))
        await asyncio.wait(late)


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel and await ``task``; an error it already ended with was logged when it ended."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        try:
            await task
        except Exception:
            log.debug("task %s had ended with an error", task.get_name(), exc_info=True)
