"""Retry partitions rest between polls (``weir.streams._quiet``), on the real broker."""

from __future__ import annotations

import asyncio
import collections
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from weir.core.errors import ModelTimeoutError
from weir.core.kafka import KafkaConnection
from weir.streams import RetryPolicy, WeirClient, Worker
from weir.streams._quiet import QuietPartitions
from weir.streams.pipeline import Pipeline
from weir.topics.admin import TopicAdmin
from weir.topics.names import PipelineTopics, TopicSpec

pytestmark = pytest.mark.kafka


async def _topics(kafka, *names: str) -> None:
    async with TopicAdmin(kafka) as admin:
        await admin.ensure([TopicSpec(n, kafka.partitions, 1) for n in names])


def _consumer(kafka, *topics: str) -> AIOKafkaConsumer:
    consumer = KafkaConnection.of(kafka).consumer(
        group_id=f"quiet-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    consumer.subscribe(list(topics))
    return consumer


async def _fetch_until(consumer, quiet, done, got: list[tuple[int, bytes]], timeout: float = 15):
    """getmany + tick, as the fetch loop does, until ``done()``; records go to ``got``."""
    async with asyncio.timeout(timeout):
        while not done():
            batches = await consumer.getmany(timeout_ms=100)
            quiet.tick(batches)
            for records in batches.values():
                got += [(r.partition, r.value) for r in records]


async def test_idle_retry_partitions_rest_and_what_comes_later_is_read_once_in_order(kafka):
    hot, retry = (f"quiet-{n}-{uuid.uuid4().hex[:6]}" for n in ("hot", "retry"))
    await _topics(kafka, hot, retry)
    consumer = _consumer(kafka, hot, retry)
    await consumer.start()
    producer = KafkaConnection.of(kafka).producer(acks="all", enable_idempotence=True)
    await producer.start()
    try:
        quiet = QuietPartitions(consumer, [retry], consumer.assignment, interval_s=0.3)
        resting = {TopicPartition(retry, p) for p in range(kafka.partitions)}
        got: list[tuple[int, bytes]] = []
        await _fetch_until(consumer, quiet, lambda: quiet.resting == resting, got)
        assert consumer.paused() == resting  # the hot topic is fetched every time

        # Records that land while the partition rests come at the next poll, and a
        # partition whose records flow stays until a fetch brings none: all of them, once.
        sent = [f"r{i}".encode() for i in range(30)]
        for i, value in enumerate(sent):
            await producer.send_and_wait(retry, value, partition=0)
            if i % 10 == 9:
                await asyncio.sleep(0.2)
        await producer.send_and_wait(hot, b"h", partition=1)
        await _fetch_until(consumer, quiet, lambda: len(got) >= len(sent) + 1, got)
        assert [v for p, v in got if v != b"h"] == sent
        assert (1, b"h") in got

        # Caught up again, it rests again.
        await _fetch_until(consumer, quiet, lambda: quiet.resting == resting, got)
        assert len(got) == len(sent) + 1
    finally:
        await producer.stop()
        await consumer.stop()


async def test_a_deferred_partition_is_left_paused_until_due(kafka):
    retry = f"quiet-deferred-{uuid.uuid4().hex[:6]}"
    await _topics(kafka, retry)
    consumer = _consumer(kafka, retry)
    await consumer.start()
    try:
        quiet = QuietPartitions(consumer, [retry], consumer.assignment, interval_s=0.3)
        everything = {TopicPartition(retry, p) for p in range(kafka.partitions)}
        got: list[tuple[int, bytes]] = []
        await _fetch_until(consumer, quiet, lambda: quiet.resting == everything, got)
        held = TopicPartition(retry, 2)
        quiet.defer(held)  # the fetch loop paused it (it is paused already)
        # Polls come and go; the deferred one stays paused and out of the resting set.
        for _ in range(10):  # 1 s: three polls
            quiet.tick(await consumer.getmany(timeout_ms=100))
            assert held in consumer.paused()
            assert held not in quiet.resting
        consumer.resume(held)
        quiet.due(held)
        await _fetch_until(consumer, quiet, lambda: held in quiet.resting, got)
    finally:
        await consumer.stop()


async def test_a_worker_rests_its_idle_retry_partitions_and_still_retries(kafka, pipeline_name):
    attempts: collections.Counter[int] = collections.Counter()
    p = Pipeline(pipeline_name, retry=RetryPolicy(initial_interval=0.1, maximum_attempts=3))

    @p.step(inline=True)
    def flaky(n: int) -> int:
        attempts[n] += 1
        if attempts[n] == 1 and n % 2:
            raise ModelTimeoutError(f"model slow for {n}")
        return n * 10

    topics = PipelineTopics(p.name)
    retry = {TopicPartition(t, n) for t in topics_of(p, topics) for n in range(kafka.partitions)}
    settings = kafka.model_copy(update={"retry_poll_ms": 250})
    async with Worker(p, settings) as worker, WeirClient(kafka) as client:
        async with asyncio.timeout(60):
            while not retry <= worker.assigned or not retry <= worker._consumer.paused():
                await asyncio.sleep(0.1)
        ids = await client.submit_many(p.name, [{"n": i} for i in range(20)])
        results = await client.wait_for(p.name, ids, timeout=60)
        assert [results[rid].value for rid in ids] == [i * 10 for i in range(20)]
        assert worker.stats.retried == 10
        # Caught up, they rest again; the step's own topic never does.
        async with asyncio.timeout(30):
            while not retry <= worker._consumer.paused():
                await asyncio.sleep(0.1)
        assert TopicPartition(topics.step("flaky"), 0) not in worker._consumer.paused()
    assert dict(attempts) == {i: 1 + i % 2 for i in range(20)}


def topics_of(p: Pipeline, topics: PipelineTopics) -> list[str]:
    """The retry topics of ``p``'s one step (two tiers for three attempts)."""
    return [topics.retry("flaky", n) for n in (1, 2)]
