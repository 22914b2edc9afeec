"""No record holds its partition: records that cannot be dead-lettered as they are, and
joins that can never complete, end their request once and let the partition move on."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests._kafka import read_results, read_topic
from weir.core.config import WeirSettings
from weir.core.kafka import KafkaConnection
from weir.schemas.messages import DeadLetter
from weir.streams import Pipeline, WeirClient, Worker
from weir.streams.dead_letter import HEAD_BYTES, PAYLOAD_HEAD_HEADER
from weir.streams.ingress import REPLAY_HEADER
from weir.streams.replay import DeadLetterQueue
from weir.topics._aiokafka import stop_consumer
from weir.topics.names import INGRESS, PipelineTopics

pytestmark = pytest.mark.kafka

BEHIND = 20


def _pipeline(name: str) -> Pipeline:
    p = Pipeline(name)

    @p.step(inline=True)
    def double(n: int) -> int:
        return 2 * n

    return p


async def _produce_to_partition_0(
    settings: WeirSettings, topic: str, records: list[tuple[bytes, bytes]]
) -> None:
    """``(key, value)`` records, all on partition 0, gzip-compressed like a real producer."""
    producer = KafkaConnection.of(settings).producer(
        compression_type="gzip",
        max_request_size=8 * 1024 * 1024,
        acks="all",
    )
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value=value, key=key, partition=0)
    finally:
        await producer.stop()


async def _committed_reaches_end(settings: WeirSettings, group: str, topic: str) -> None:
    """The group's committed offset on ``topic`` partition 0 reaches its end offset."""
    tp = TopicPartition(topic, 0)
    consumer = KafkaConnection.of(settings).consumer()
    await consumer.start()
    try:
        end = (await consumer.end_offsets([tp]))[tp]
    finally:
        await stop_consumer(consumer)
    admin = KafkaConnection.of(settings).admin()
    await admin.start()
    try:
        committed = -1
        for _ in range(60):
            offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
            meta = offsets.get(tp)
            committed = meta.offset if meta is not None else -1
            if committed >= end:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"committed offset {committed} never reached the end {end}")
    finally:
        await admin.close()


def _requests(n: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"r-{i}".encode(), json.dumps({"request_id": f"r-{i}", "payload": {"n": i}}).encode())
        for i in range(n)
    ]


async def _answered_behind(settings: WeirSettings, pipeline: Pipeline, worker: Worker) -> None:
    topics = PipelineTopics(pipeline.name)
    results, counts = await read_results(settings, topics.results, BEHIND + 1)
    assert max(counts.values()) == 1
    for i in range(BEHIND):
        assert results[f"r-{i}"].value == 2 * i
    assert results["r-big"].status == "FAILURE"
    assert results["r-big"].error_type == "payload_too_large"
    await _committed_reaches_end(settings, topics.consumer_group, topics.requests)
    assert worker.stuck_records() == []


async def test_a_compressed_2mb_request_is_dead_lettered_bounded_and_the_partition_moves_on(
    kafka, pipeline_name
):
    pipeline = _pipeline(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    big = json.dumps({"request_id": "r-big", "payload": {"n": 1, "pad": "x" * 2_000_000}})
    async with Worker(pipeline, kafka) as worker:
        await _produce_to_partition_0(
            kafka, topics.requests, [(b"r-big", big.encode()), *_requests(BEHIND)]
        )
        await _answered_behind(kafka, pipeline, worker)
        dead = await read_topic(kafka, topics.dead_letter(INGRESS), until=1)
    assert len(dead) == 1
    record = dead[0]
    letter = DeadLetter.from_message(record.key, record.value, list(record.headers))
    assert letter.bounded and record.value is None
    assert letter.error_type == "payload_too_large"
    assert letter.original_error_type == "payload_too_large"
    assert letter.payload_bytes == len(big)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        topics.requests,
        0,
        0,
    )
    assert record.key == b"r-big"
    head = dict(record.headers)[PAYLOAD_HEAD_HEADER]
    assert head == big.encode()[:HEAD_BYTES]


async def test_a_dead_letter_the_topic_refuses_goes_bounded_and_the_partition_moves_on(
    kafka, pipeline_name
):
    """The dead-letter topic takes at most 4 KB (an operator's setting): a 20 KB bad request
    cannot be dead-lettered as it is, a permanent refusal by the broker."""
    pipeline = _pipeline(pipeline_name)
    topics = PipelineTopics(pipeline.name)
    dlq = topics.dead_letter(INGRESS)
    async with Worker(pipeline, kafka) as worker:
        admin = KafkaConnection.of(kafka).admin()
        await admin.start()
        try:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, dlq, {"max.message.bytes": "4096"})]
            )
        finally:
            await admin.close()
        bad = json.dumps({"request_id": "r-big", "payload": {"n": "not a number " * 1500}})
        await _produce_to_partition_0(
            kafka, topics.requests, [(b"r-big", bad.encode()), *_requests(BEHIND)]
        )
        results, _ = await read_results(kafka, topics.results, BEHIND + 1)
        assert all(results[f"r-{i}"].value == 2 * i for i in range(BEHIND))
        assert results["r-big"].status == "FAILURE"
        await _committed_reaches_end(kafka, topics.consumer_group, topics.requests)
        dead = await read_topic(kafka, dlq, until=1)
    letters = [DeadLetter.from_message(r.key, r.value, list(r.headers)) for r in dead]
    assert [(x.bounded, x.original_error_type) for x in letters] == [(True, "schema_invalid")]
    assert letters[0].payload_bytes == len(bad)
    assert worker.stats.dead_letter_failures == 0
    # A replay reads the record back from its source topic and re-injects it as it was.
    queue = DeadLetterQueue(kafka, pipeline.name)
    report = await queue.replay(await queue.entries(step=INGRESS))
    assert len(report.replayed) == 1, report
    requests = await read_topic(kafka, topics.requests, until=BEHIND + 2)
    replayed = [r for r in requests if REPLAY_HEADER in dict(r.headers or ())]
    assert [r.value for r in replayed] == [bad.encode()]


def _never_joined(name: str) -> Pipeline:
    p = Pipeline(name)

    @p.step(inline=True)
    def start(n: int) -> int:
        return n

    @p.step(depends_on=[start], inline=True)
    def fast(start: int) -> int:
        return start

    @p.step(depends_on=[start])
    async def slow(start: int) -> int:
        await asyncio.sleep(3.0)
        return start

    @p.step(depends_on=[fast, slow], inline=True)
    def both(fast: int, slow: int) -> int:
        return fast + slow

    return p


async def test_a_flood_of_waiting_joins_stays_within_the_cap_and_each_gets_one_answer(
    kafka, pipeline_name
):
    n, cap = 60, 5
    settings = kafka.model_copy(update={"max_waiting_joins": cap})
    pipeline = _never_joined(pipeline_name)
    async with Worker(pipeline, settings) as worker, WeirClient(settings) as client:
        ids = await client.submit_many(pipeline.name, [{"n": i} for i in range(n)])
        results, counts = await read_results(
            settings, PipelineTopics(pipeline.name).results, n, timeout=90
        )
        join = worker.runners["both"].join
        assert join is not None
        assert join.waiting() <= cap
    assert set(results) == set(ids)
    assert max(counts.values()) == 1, "a request was answered twice"
    evicted = [r for r in results.values() if r.error_type == "join_evicted"]
    answered = [r for r in results.values() if r.status == "SUCCESS"]
    assert len(evicted) + len(answered) == n
    assert len(evicted) >= n - cap
    for r in evicted:
        assert r.failed_step == "both"
        assert "'slow'" in (r.error_message or "") and str(cap) in (r.error_message or "")
    assert worker.stats.failures_by_type["join_evicted"] == len(evicted)
