"""Work-arounds for aiokafka behaviour, kept in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential,
)

from weir.core.kafka import KafkaConnection
from weir.topics._murmur2 import murmur2

__all__ = [
    "KeyPartitioner",
    "add_to_transaction",
    "left_transaction",
    "place",
    "read_until",
    "retrying",
    "rewind",
    "started_consumer",
    "stop_consumer",
]

log = logging.getLogger("weir.kafka")

T = TypeVar("T")


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


async def retrying(op: Callable[[], Awaitable[T]], *, what: str, timeout: float = 60.0) -> T:
    """Run ``op`` until it stops raising ``KafkaError`` (leaders moving, a broker restarting).

    Waits 0.1 s, doubling to 1 s, between tries; raises the last error rather than
    sleep past ``timeout`` seconds.
    """
    retry = AsyncRetrying(
        retry=retry_if_exception_type(KafkaError),
        wait=wait_exponential(multiplier=0.1, max=1.0),
        stop=stop_before_delay(timeout),
        before_sleep=lambda state: log.info(
            "%s failed (%s); retrying in %.1fs",
            what,
            state.outcome.exception() if state.outcome else None,
            state.upcoming_sleep,
        ),
        reraise=True,
    )
    # The iterator form: ``op`` may be a plain callable returning an awaitable (a lambda),
    # which ``AsyncRetrying.__call__`` would not await.
    async for attempt in retry:
        with attempt:
            return await op()
    raise AssertionError("unreachable: tenacity either returns or raises")


async def started_consumer(
    kafka: KafkaConnection, *, what: str, **options: Any
) -> AIOKafkaConsumer:
    """A started consumer; connection failures (a restarting broker) are retried.

    A consumer whose ``start()`` failed is not started again; a new one is made.
    """

    async def start() -> AIOKafkaConsumer:
        consumer = kafka.consumer(**options)
        try:
            await consumer.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await stop_consumer(consumer)
            raise
        return consumer

    return await retrying(start, what=what)


async def read_until(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Records of ``tp`` from the consumer's position up to (not including) ``end``.

    With ``read_committed``, positions jump over transaction markers, so the loop
    tests the position rather than counting records.
    """
    while await consumer.position(tp) < end:
        for record in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
            if record.offset < end:
                yield record


async def rewind(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
    """Seek ``tps`` to their first offsets, by number.

    ``seek_to_beginning()`` races aiokafka's own position reset of a freshly
    assigned partition: with ``auto_offset_reset="latest"`` the reset can land
    after the seek and skip everything.  An explicit ``seek`` cannot be undone.
    """
    begin = await retrying(lambda: consumer.beginning_offsets(tps), what="reading first offsets")
    for tp in tps:
        consumer.seek(tp, begin[tp])


async def place(consumer: AIOKafkaConsumer, tps: Iterable[TopicPartition]) -> None:
    """Seek newly assigned ``tps`` to their committed offsets (or their beginnings).

    Left to itself, aiokafka resolves a fresh partition's position with an
    offset lookup; if that lookup fails (NOT_LEADER right after the topic was
    created, or during a broker restart), the partition can sit without ever
    being fetched again.  Explicit seeks, retried here, leave it nothing to look up.
    """
    fresh = []
    for tp in tps:

        async def committed_offset(tp: TopicPartition = tp) -> int | None:
            return await consumer.committed(tp)  # type: ignore[no-any-return]

        committed = await retrying(committed_offset, what=f"reading the committed offset of {tp}")
        if committed is None:
            fresh.append(tp)
        else:
            consumer.seek(tp, committed)
    if fresh:
        await rewind(consumer, fresh)


def add_to_transaction(producer: AIOKafkaProducer, partitions: Iterable[TopicPartition]) -> None:
    """Have ``producer``'s open transaction register ``partitions`` now, before anything
    is sent to them.

    Sending to a partition a transaction has not registered costs that send a round trip
    to the coordinator first (``AddPartitionsToTxn``); registered ahead, the send goes
    straight to the partition.  aiokafka has no public call for it, so this uses its
    transaction manager (``tests/topics/test_transactions.py`` pins what this relies on).
    """
    manager = producer._txn_manager
    for tp in partitions:
        manager.maybe_add_partition_to_txn(tp)


def left_transaction(producer: AIOKafkaProducer) -> BaseException | None:
    """Why ``producer`` is no longer in the transaction it began (fenced, its sender
    failed), or ``None`` while it still is."""
    manager = producer._txn_manager
    if manager.is_in_transaction():
        return None
    ended: asyncio.Future[None] = manager.wait_for_transaction_end()
    error = ended.exception() if ended.done() and not ended.cancelled() else None
    if error is not None:
        return error
    left: BaseException = KafkaError(f"the transaction is no longer open ({manager.state.name})")
    return left


class KeyPartitioner:
    """aiokafka's default partitioner (Java's murmur2), with the hash of recent keys cached.

    Every message of a request carries the same key (its id) and a worker sends
    several of them (outputs, trace events, answers); aiokafka hashes each one in
    pure Python.  Same partitions as the default, hashed once per key, compiled
    (``weir.topics._murmur2``).
    """

    def __init__(self, size: int = 65536) -> None:
        self._size = size
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return int(DefaultPartitioner()(key, all_partitions, available))
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self._size:
                self._hashes.clear()  # cheaper than an LRU, and keys come in waves
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]
