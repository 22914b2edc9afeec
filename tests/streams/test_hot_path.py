"""Root steps run in the ingress and final outputs are answered in place (no hop that only
moves data): a burst that mixes poison, a slow async step and fast inline steps is answered
once per request, and every input offset is committed once the worker stops."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from tests._kafka import read_results, read_topic
from weir.core.kafka import KafkaConnection
from weir.streams import RetryPolicy, WeirClient, Worker
from weir.streams.pipeline import Pipeline
from weir.topics._aiokafka import stop_consumer
from weir.topics.names import PipelineTopics

pytestmark = pytest.mark.kafka

N = 600


def _mixed(name: str) -> Pipeline:
    p = Pipeline(name, retry=RetryPolicy(maximum_attempts=1))

    @p.step(inline=True)
    def start(n: int) -> int:
        if n % 50 == 7:
            raise ValueError(f"poison {n}")
        return n + 1

    @p.step(depends_on=[start])
    async def slow(start: int) -> int:
        if start % 10 == 0:
            await asyncio.sleep(0.3)
        return start * 2

    @p.step(depends_on=[slow], inline=True)
    def finish(slow: int) -> dict[str, int]:
        return {"n": slow + 1}

    return p


async def test_a_mixed_burst_is_answered_once_and_committed(kafka, pipeline_name):
    pipeline = _mixed(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    garbage = [b"\x00\x01 not a request", b'{"payload": 3}', b"", b"\xff" * 40]
    async with Worker(pipeline, kafka) as worker, WeirClient(kafka) as client:
        # Answers go through the answers topic until this worker owns its partitions.
        answers = {TopicPartition(topics.answers, p) for p in range(kafka.partitions)}
        async with asyncio.timeout(60):
            while not answers <= worker.assigned:
                await asyncio.sleep(0.1)
        producer = KafkaConnection.of(kafka).producer()
        await producer.start()
        try:
            for i, raw in enumerate(garbage):  # bad input in the middle of the burst
                await producer.send_and_wait(topics.requests, raw, key=f"bad-{i}".encode())
            half = await client.submit_many(pipeline.name, [{"n": i} for i in range(N // 2)])
            # A poison envelope among an inline step's batches: dead-lettered, nothing else.
            await producer.send_and_wait(topics.step("finish"), b"\x00\x00not an envelope")
        finally:
            await producer.stop()
        rest = await client.submit_many(pipeline.name, [{"n": i} for i in range(N // 2, N)])
        ids = half + rest
        results, counts = await read_results(kafka, topics.results, N + len(garbage))
        answered_here = worker.stats.results
    assert set(ids) <= set(results)
    assert [rid for rid, c in counts.items() if c > 1] == [], "some requests answered twice"
    for i, rid in enumerate(ids):
        result = results[rid]
        if i % 50 == 7:
            assert result.status == "FAILURE" and result.failed_step == "start", result
        else:
            assert result.status == "SUCCESS", result
            assert result.value == {"n": (i + 1) * 2 + 1}
            assert result.path == ["start", "slow", "finish"]
    for i in range(len(garbage)):  # rejected at the door, and answered so
        assert results[f"bad-{i}"].status == "FAILURE"
        assert results[f"bad-{i}"].failed_step == "requests"
    assert answered_here >= N
    # Nothing crossed the hops that only moved data: the root's and the answers topics.
    assert await read_topic(kafka, topics.step("start"), idle_s=0.5) == []
    assert await read_topic(kafka, topics.answers, idle_s=0.5) == []
    dead = await read_topic(kafka, topics.dead_letter("start"), idle_s=0.5)
    assert len(dead) == len([i for i in range(N) if i % 50 == 7])
    poisoned = await read_topic(kafka, topics.dead_letter("finish"), idle_s=0.5)
    assert [d.value for d in poisoned] == [b"\x00\x00not an envelope"]
    # Every input was committed when the worker stopped: requests and step topics alike.
    consumer = KafkaConnection.of(kafka).consumer(
        group_id=topics.consumer_group,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        for topic in (topics.requests, topics.step("slow"), topics.step("finish")):
            tps = [TopicPartition(topic, p) for p in range(kafka.partitions)]
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                assert (await consumer.committed(tp) or 0) == ends[tp], tp
    finally:
        await stop_consumer(consumer)
